"""The JSON form of messages that the webhook and file-drop adapters show an E-Office.

One vocabulary both ways: what the webhook POSTs and what the file drop writes
to ``incoming/`` describe a message with the same keys an E-Office uses in the
metadata files it drops into ``outgoing/`` (and the same keys as ``exchange
sign`` metadata files), so an E-Office implementer learns one format.

Pure functions, no I/O. Parsing raises :class:`~exchange.errors.BadRequestError`
with a message naming the offending key.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from exchange.envelope.model import (
    Attachment,
    DocumentCode,
    DocumentInfo,
    DocumentType,
    Envelope,
    Operation,
    Priority,
    Promulgation,
    ReceiptInfo,
    ResponseRef,
    SignerInfo,
    StaffInfo,
    StatusCode,
    StatusInfo,
    SteeringType,
)
from exchange.errors import BadRequestError

#: Version of the JSON form; an E-Office can refuse a version it does not know.
FORMAT_VERSION = 1


# -- envelope -> JSON -------------------------------------------------------------------


def document_json(doc: DocumentInfo) -> dict[str, Any]:
    """Document metadata with the keys an E-Office also uses to send one."""
    return {
        "number": doc.code.number,
        "notation": doc.code.notation,
        "subject": doc.subject,
        "type": doc.document_type.type,
        "detail": doc.document_type.detail,
        "type_name": doc.document_type.name,
        "promulgation": ({"place": doc.promulgation.place, "date": doc.promulgation.date.isoformat()}
                         if doc.promulgation else None),
        "signer": ({"competence": doc.signer.competence, "position": doc.signer.position,
                    "full_name": doc.signer.full_name} if doc.signer else None),
        "content": doc.content,
        "priority": int(doc.priority),
        "steering": int(doc.steering),
        "due_date": doc.due_date.isoformat() if doc.due_date else None,
        "document_id": doc.document_id,
        "relates_to": doc.relates_to,
        "response_for": [
            {"organ_id": r.organ_id, "code": r.code, "promulgation_date": r.promulgation_date.isoformat(),
             "document_id": r.document_id}
            for r in doc.response_for
        ],
        "paper": doc.paper,
        "extra": [[k, v] for k, v in doc.extra],
    }


def staff_json(staff: StaffInfo | None) -> dict[str, str] | None:
    """Who produced a status, or None."""
    if staff is None:
        return None
    return {"department": staff.department, "staff": staff.staff, "email": staff.email, "mobile": staff.mobile}


def status_json(status: StatusInfo) -> dict[str, Any]:
    """A business status: the document's message id, the code (01-16), description, staff, time."""
    return {
        "response_for": status.response_for,
        "code": status.code.value,
        "description": status.description,
        "staff": staff_json(status.staff),
        "timestamp": status.timestamp.isoformat() if status.timestamp else None,
    }


def attachment_json(a: Attachment) -> dict[str, Any]:
    """One manifest entry (the bytes travel beside it: base64 in a webhook, a file in a folder)."""
    return {"id": a.id, "name": a.name, "media_type": a.media_type, "size": a.size, "sha256": a.sha256,
            "description": a.description}


def message_json(envelope: Envelope, *, recipient: str, attempt: int = 1) -> dict[str, Any]:
    """Everything the E-Office needs about one incoming message, except bytes (attachments, evidence)."""
    h = envelope.header
    return {
        "format": FORMAT_VERSION,
        "message_id": h.message_id,
        "kind": h.kind.value,
        "operation": h.operation.value,
        "sender": {"code": h.sender.code, "name": h.sender.name},
        "recipient": recipient,
        "recipients": [r.code for r in h.recipients],
        "created_at": h.created_at.isoformat(),
        "correlation_id": h.correlation_id,
        "attempt": attempt,
        "document": document_json(h.document) if h.document else None,
        "status": status_json(h.status) if h.status else None,
        "receipt": receipt_json(h.receipt) if h.receipt else None,
        "attachments": [attachment_json(a) for a in envelope.attachments],
    }


def receipt_json(r: ReceiptInfo) -> dict[str, Any]:
    """A signed receipt for a document the agency sent (only for adapters that want receipts)."""
    return {"response_for": r.response_for, "outcome": r.outcome.value, "envelope_digest": r.envelope_digest,
            "reason_code": r.reason_code, "reason": r.reason}


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


# -- JSON -> values ---------------------------------------------------------------------


def _obj(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise BadRequestError(f"{key} must be a JSON object")
    return value


def _str(d: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = d.get(key, default)
    if value is None:
        raise BadRequestError(f"{path}{key} is required")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise BadRequestError(f"{path}{key} must be a string")
    return str(value)


def _int(d: Mapping[str, Any], key: str, path: str, default: int) -> int:
    value = d.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadRequestError(f"{path}{key} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise BadRequestError(f"{path}{key} must be an integer, not {value!r}") from None


def _date(value: Any, key: str) -> date:
    try:
        return date.fromisoformat(str(value).replace("/", "-"))
    except ValueError:
        raise BadRequestError(f"{key} must be a date written yyyy-mm-dd, not {value!r}") from None


def _enum(enum: type, value: int, key: str):
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(str(int(m)) for m in enum)
        raise BadRequestError(f"{key} must be one of {allowed}, not {value}") from None


def document_from_json(d: Any, path: str = "document.") -> DocumentInfo:
    """The DocumentInfo an E-Office describes (keys of :func:`document_json`; subject required)."""
    d = _obj(d, path.rstrip("."))
    subject = _str(d, "subject", path)
    if not subject.strip():
        raise BadRequestError(f"{path}subject must not be empty")
    prom = d.get("promulgation")
    signer = d.get("signer")
    extra = d.get("extra") or []
    if isinstance(extra, Mapping):
        extra = list(extra.items())
    if not isinstance(extra, Sequence) or isinstance(extra, str):
        raise BadRequestError(f"{path}extra must be a list of [path, value] pairs")
    try:
        extra_pairs = tuple((str(k), str(v)) for k, v in extra)
    except (TypeError, ValueError):
        raise BadRequestError(f"{path}extra must be a list of [path, value] pairs") from None
    refs = d.get("response_for") or []
    if not isinstance(refs, Sequence) or isinstance(refs, str):
        raise BadRequestError(f"{path}response_for must be a list")
    response_for = []
    for i, r in enumerate(refs):
        rp = f"{path}response_for[{i}]."
        r = _obj(r, rp.rstrip("."))
        response_for.append(ResponseRef(_str(r, "organ_id", rp), _str(r, "code", rp),
                                        _date(_str(r, "promulgation_date", rp), f"{rp}promulgation_date"),
                                        _str(r, "document_id", rp, "")))
    if prom is not None:
        prom = _obj(prom, f"{path}promulgation")
    if signer is not None:
        signer = _obj(signer, f"{path}signer")
    return DocumentInfo(
        code=DocumentCode(_str(d, "number", path, ""), _str(d, "notation", path, "")),
        subject=subject,
        document_type=DocumentType(_int(d, "type", path, 1), _int(d, "detail", path, 0),
                                   _str(d, "type_name", path, "")),
        promulgation=(Promulgation(_str(prom, "place", f"{path}promulgation.", ""),
                                   _date(_str(prom, "date", f"{path}promulgation."), f"{path}promulgation.date"))
                      if prom else None),
        signer=(SignerInfo(_str(signer, "competence", path, ""), _str(signer, "position", path, ""),
                           _str(signer, "full_name", path, "")) if signer else None),
        content=_str(d, "content", path, ""),
        priority=_enum(Priority, _int(d, "priority", path, 0), f"{path}priority"),
        steering=_enum(SteeringType, _int(d, "steering", path, 0), f"{path}steering"),
        due_date=_date(d["due_date"], f"{path}due_date") if d.get("due_date") else None,
        document_id=_str(d, "document_id", path, ""),
        relates_to=str(d["relates_to"]) if d.get("relates_to") else None,
        response_for=tuple(response_for),
        paper=bool(d.get("paper", False)),
        extra=extra_pairs,
    )


def operation_from_json(value: Any) -> Operation:
    """``new`` (default), ``revoke``, ``update`` or ``replace``."""
    try:
        return Operation(str(value or "new"))
    except ValueError:
        raise BadRequestError(
            f"operation must be one of {', '.join(o.value for o in Operation)}, not {value!r}") from None


def status_code_from_json(value: Any) -> StatusCode:
    """A status code written ``"03"``, ``"3"`` or ``3``."""
    try:
        return StatusCode(str(value).zfill(2))
    except ValueError:
        raise BadRequestError(
            f"code must be a status code ({', '.join(c.value for c in StatusCode)}), not {value!r}") from None


def staff_from_json(value: Any) -> StaffInfo | None:
    """``{"department", "staff", "email", "mobile"}`` (all optional), or None."""
    if value is None:
        return None
    s = _obj(value, "staff")
    return StaffInfo(*(_str(s, k, "staff.", "") for k in ("department", "staff", "email", "mobile")))
