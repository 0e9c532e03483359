"""The JSON form of messages that the webhook and file-drop adapters show an E-Office.

One vocabulary both ways: what the webhook POSTs and what the file drop writes
to ``incoming/`` describe a message with the same keys an E-Office uses in the
metadata files it drops into ``outgoing/`` (and the same keys as ``exchange
sign`` metadata files), so an E-Office implementer learns one format.

Document and status metadata are decoded and encoded by the one codec,
:mod:`exchange.metadata` (the field names of ``document-metadata-1.json``, the
same as over HTTP); this module frames them for the adapters. Metadata files in
the legacy flat dialect (``number``, ``type``, ``steering``...) are still read
during the deprecation period (docs/API.md), and documents are written with the
schema's names plus the legacy flat keys until it ends.

Pure functions, no I/O. Parsing raises :class:`~exchange.errors.BadRequestError`
(or its subclasses ``metadata-invalid`` / ``json-limit-exceeded``) with a message
naming the offending key.
"""

from __future__ import annotations

import base64
from typing import Any

from exchange.envelope.model import (
    Attachment,
    DocumentInfo,
    Envelope,
    Operation,
    ReceiptInfo,
    StaffInfo,
    StatusCode,
    StatusInfo,
)
from exchange.metadata import (
    JsonLimits,
    decode_document,
    decode_operation,
    decode_staff,
    decode_status_code,
    encode_document,
    encode_staff,
)
from exchange.metadata.jsontext import parse_bounded

#: Version of the JSON form; an E-Office can refuse a version it does not know.
FORMAT_VERSION = 1


# -- envelope -> JSON -------------------------------------------------------------------


def document_json(doc: DocumentInfo) -> dict[str, Any]:
    """Document metadata with the schema's names (as over HTTP), plus the legacy flat keys while deprecated."""
    out = encode_document(doc)
    # Deprecated: the flat keys of the pre-schema dialect, kept for E-Offices that read them (docs/API.md).
    out.update(
        {
            "number": doc.code.number,
            "notation": doc.code.notation,
            "type": doc.document_type.type,
            "detail": doc.document_type.detail,
            "type_name": doc.document_type.name,
            "steering": int(doc.steering),
        }
    )
    return out


def staff_json(staff: StaffInfo | None) -> dict[str, str] | None:
    """Who produced a status, or None."""
    return encode_staff(staff)


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
    return {
        "id": a.id,
        "name": a.name,
        "media_type": a.media_type,
        "size": a.size,
        "sha256": a.sha256,
        "description": a.description,
    }


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
    return {
        "response_for": r.response_for,
        "outcome": r.outcome.value,
        "envelope_digest": r.envelope_digest,
        "reason_code": r.reason_code,
        "reason": r.reason,
    }


def b64(data: bytes) -> str:
    """Base64 text of ``data``."""
    return base64.b64encode(data).decode("ascii")


# -- JSON -> values ---------------------------------------------------------------------

#: A metadata file is small JSON, held to the same bounds as the gateway's metadata.
FORM_LIMITS = JsonLimits()


def load_form(raw: bytes, what: str = "metadata file") -> Any:
    """Decode a metadata file within the codec's limits.

    JsonLimitError (a BadRequestError) when it is over a limit; ``UnicodeDecodeError`` /
    ``json.JSONDecodeError`` (ValueError) when it is not UTF-8 JSON, which the file drop
    reads as "still being written".
    """
    return parse_bounded(raw, what, FORM_LIMITS)


def document_from_json(d: Any, path: str = "document.") -> DocumentInfo:
    """The DocumentInfo an E-Office describes (schema ``Document``, or the legacy flat dialect)."""
    return decode_document(d, path=path.rstrip("."), caller="filedrop", legacy=True, require_code=False)


def operation_from_json(value: Any) -> Operation:
    """``new`` (default), ``revoke``, ``update`` or ``replace``."""
    return decode_operation(value or None, "operation")


def status_code_from_json(value: Any) -> StatusCode:
    """A status code ``"03"`` (the legacy dialect's ``"3"`` and ``3`` too, deprecated)."""
    return decode_status_code(value, "code", caller="filedrop", legacy=True)


def staff_from_json(value: Any) -> StaffInfo | None:
    """``{"department", "staff", "email", "mobile"}`` (all optional), or None."""
    return decode_staff(value, "staff", caller="filedrop", legacy=True)
