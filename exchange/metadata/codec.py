"""The one codec for document and status metadata: JSON values <-> domain values.

Every channel an E-Office uses decodes metadata here: the HTTP gateway
(``POST /v1/documents``, ``POST /v1/inbox/{id}/status``), the file-drop adapter's
metadata files (through ``exchange.adapters.jsonform``) and ``exchange sign``
metadata files. The field names are those of the versioned JSON Schema
``exchange/metadata/document-metadata-1.json`` (also served in the gateway's
OpenAPI document), and the encoder writes the same names back out (``GET
/v1/inbox/{id}``, the webhook body, the file drop's ``message.json``).

Strict on purpose: an unknown field is refused (a typo such as ``priorty`` must
not silently send a normal-priority document), and every refusal is a
:class:`~exchange.metadata.errors.MetadataError` naming the field.

The *legacy dialect* (flat ``number``/``notation``/``type``/``detail``/``type_name``,
``steering``, ``extra`` as pairs or a table, numbers and status codes written as
strings, dates with ``/``) was what the file drop and ``exchange sign`` read before
version 1 of the schema. Callers that used to take it pass ``legacy=True`` for
the deprecation period: it is mapped to the schema's names, and a deprecation
warning is logged once per caller and field (docs/API.md has the mapping and the
removal plan).
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal, overload

import structlog

from exchange.envelope.codes import check_agency_code
from exchange.envelope.model import (
    DocumentCode,
    DocumentInfo,
    DocumentType,
    Operation,
    Priority,
    Promulgation,
    ResponseRef,
    SignerInfo,
    StaffInfo,
    StatusCode,
    StatusInfo,
    SteeringType,
)
from exchange.errors import InvalidAgencyCodeError
from exchange.metadata.errors import MetadataError

log = structlog.get_logger("exchange.metadata")

#: Version of the metadata schema (``document-metadata-<n>.json``).
SCHEMA_VERSION = 1

#: Field limits from QCVN 102 (DOMAIN.md) and sane bounds for free text.
MAX_SUBJECT = 500
MAX_CODE_NUMBER = 11
MAX_CODE_NOTATION = 30
MAX_NAME = 200
MAX_TEXT = 2000
MAX_CONTENT = 100_000
MAX_RECIPIENTS = 500
MAX_EXTRA = 100
MAX_RESPONSE_FOR = 100

#: Fields of a document's metadata (the schema's ``Document``).
DOCUMENT_FIELDS = frozenset(
    {
        "subject",
        "code",
        "document_type",
        "promulgation",
        "signer",
        "content",
        "priority",
        "steering_type",
        "due_date",
        "document_id",
        "relates_to",
        "response_for",
        "paper",
        "extra",
    }
)
#: Fields of an HTTP document submission (the schema's ``DocumentSubmission``): a document plus how to send it.
SUBMISSION_FIELDS = DOCUMENT_FIELDS | {"recipients", "operation", "descriptions"}
#: Fields of a business status (the schema's ``StatusSubmission``).
STATUS_FIELDS = frozenset({"code", "description", "staff"})
STAFF_FIELDS = ("department", "staff", "email", "mobile")

#: Legacy flat document keys -> (schema field, sub-field or None).
LEGACY_DOCUMENT_KEYS: Mapping[str, tuple[str, str | None]] = {
    "number": ("code", "number"),
    "notation": ("code", "notation"),
    "type": ("document_type", "type"),
    "detail": ("document_type", "detail"),
    "type_name": ("document_type", "name"),
    "steering": ("steering_type", None),
}

#: Characters XML 1.0 cannot carry: refused here, or signing would fail on them later.
_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


# -- deprecation ------------------------------------------------------------------------


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()  # the file drop decodes in worker threads


def deprecated(caller: str, field_path: str, use: str) -> None:
    """Log, once per ``caller`` and field, that ``field_path`` is legacy dialect and ``use`` replaces it."""
    key = (caller, field_path)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    log.warning(
        "metadata.deprecated",
        caller=caller,
        field=field_path,
        use=use,
        schema=f"document-metadata-{SCHEMA_VERSION}",
        hint="the legacy metadata dialect is accepted until the next major release; see docs/API.md",
    )


def reset_deprecation_warnings() -> None:
    """Forget which deprecations were logged (tests)."""
    with _warned_lock:
        _warned.clear()


# -- values -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DocumentSubmission:
    """What a submit request asks for: recipients (may be empty for revoke/update/replace), metadata, operation."""

    recipients: tuple[str, ...]
    document: DocumentInfo
    operation: Operation = Operation.NEW
    #: Attachment descriptions by file name (edXML Attachment Description).
    descriptions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusSubmission:
    """A business status an agency sends about a document it received."""

    code: StatusCode
    description: str = ""
    staff: StaffInfo | None = None


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Who decodes (for deprecation warnings) and whether the legacy dialect is accepted."""

    caller: str
    legacy: bool

    def old(self, field_path: str, use: str) -> None:
        deprecated(self.caller, field_path, use)


HTTP = _Ctx("http", False)


def check_text(value: str, path: str) -> str:
    """``value`` if XML can carry it, else MetadataError naming ``path``."""
    if _NOT_XML.search(value):
        raise MetadataError(f"{path} contains control characters that XML cannot carry", detail={"field": path})
    return value


def _object(value: Any, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MetadataError(f"{path} must be a JSON object", detail={"field": path})
    unknown = sorted(str(k) for k in set(value) - allowed)
    if unknown:
        raise MetadataError(
            f"{path} has unknown field(s) {unknown[:10]}; known fields are {sorted(allowed)}",
            detail={"field": f"{path}.{unknown[0]}"},
        )
    return value


def _str(
    obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx, *, required: bool = False, max_len: int = MAX_TEXT
) -> str:
    where = f"{path}.{key}"
    value = obj.get(key)
    if value is None:
        if required:
            raise MetadataError(f"{where} is required", detail={"field": where})
        return ""
    if ctx.legacy and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**12:
        ctx.old(where, f"{where} as a string")
        value = str(value)
    if not isinstance(value, str):
        raise MetadataError(f"{where} must be a string", detail={"field": where})
    value = value.strip()
    if required and not value:
        raise MetadataError(f"{where} must not be empty", detail={"field": where})
    if len(value) > max_len:
        raise MetadataError(
            f"{where} is {len(value)} characters; at most {max_len} are allowed", detail={"field": where}
        )
    return check_text(value, where)


def _int(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx, low: int, high: int, default: int) -> int:
    where = f"{path}.{key}"
    value = obj.get(key, default)
    if ctx.legacy and isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 3:
        ctx.old(where, f"{where} as a JSON integer")
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MetadataError(f"{where} must be an integer from {low} to {high}", detail={"field": where})
    return value


@overload
def _date(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx, *, required: Literal[True]) -> date: ...
@overload
def _date(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx, *, required: bool = False) -> date | None: ...
def _date(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx, *, required: bool = False) -> date | None:
    where = f"{path}.{key}"
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, date) and not isinstance(value, datetime):  # a TOML date (exchange sign)
        return value
    if ctx.legacy and isinstance(value, str) and "/" in value:
        ctx.old(where, f"{where} written YYYY-MM-DD")
        value = value.replace("/", "-")
    try:
        if not isinstance(value, str) or len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise MetadataError(f"{where} must be a date YYYY-MM-DD", detail={"field": where}) from None


def _bool(obj: Mapping[str, Any], key: str, path: str, ctx: _Ctx) -> bool:
    where = f"{path}.{key}"
    value = obj.get(key, False)
    if ctx.legacy and value in (0, 1) and not isinstance(value, bool):
        ctx.old(where, f"{where} as true or false")
        value = bool(value)
    if not isinstance(value, bool):
        raise MetadataError(f"{where} must be true or false", detail={"field": where})
    return value


def _agency(value: Any, path: str) -> str:
    try:
        return check_agency_code(value)
    except InvalidAgencyCodeError as exc:
        raise InvalidAgencyCodeError(f"{path}: {exc.message}", detail={"field": path}) from None


def _message_id(value: str, where: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise MetadataError(f"{where} must be a message id (UUID)", detail={"field": where}) from None


# -- legacy dialect ---------------------------------------------------------------------


def _upgrade_document(value: Any, path: str, ctx: _Ctx) -> Any:
    """A legacy-dialect document object rewritten with the schema's names (warning once per field)."""
    if not ctx.legacy or not isinstance(value, Mapping):
        return value
    out = dict(value)
    for old, (new, sub) in LEGACY_DOCUMENT_KEYS.items():
        if old not in out:
            continue
        target = f"{new}.{sub}" if sub else new
        ctx.old(f"{path}.{old}", f"{path}.{target}")
        moved = out.pop(old)
        if sub is None:
            if new in out and out[new] != moved:
                raise MetadataError(
                    f"{path} has both {old} (legacy) and {new}; send only {new}", detail={"field": f"{path}.{old}"}
                )
            out[new] = moved
            continue
        group = out.get(new)
        if group is None:
            group = out[new] = {}
        elif not isinstance(group, Mapping):
            raise MetadataError(f"{path}.{new} must be a JSON object", detail={"field": f"{path}.{new}"})
        else:
            group = out[new] = dict(group)
        if sub in group and group[sub] != moved:  # both spellings (an echoed message.json): must agree
            raise MetadataError(
                f"{path} has both {old} (legacy) and {target}; send only {target}", detail={"field": f"{path}.{old}"}
            )
        group[sub] = moved
    extra = out.get("extra")
    if isinstance(extra, Mapping):
        ctx.old(f"{path}.extra", f'{path}.extra as a list of {{"name", "value"}} objects')
        out["extra"] = [{"name": k, "value": v} for k, v in extra.items()]
    elif isinstance(extra, list) and any(isinstance(e, (list, tuple)) for e in extra):
        ctx.old(f"{path}.extra", f'{path}.extra as a list of {{"name", "value"}} objects')
        out["extra"] = [
            {"name": e[0], "value": e[1]} if isinstance(e, (list, tuple)) and len(e) == 2 else e for e in extra
        ]
    for key in ("due_date", "relates_to", "promulgation", "signer"):
        if key in out and out[key] in ("", None):  # the legacy encoder wrote null / "" for "not set"
            out.pop(key)
    return out


# -- decoding ---------------------------------------------------------------------------


def _document(value: Any, path: str, ctx: _Ctx, allowed: frozenset[str], require_code: bool) -> DocumentInfo:
    m = _object(_upgrade_document(value, path, ctx), path, allowed)
    relates_to = _str(m, "relates_to", path, ctx, max_len=64) or None
    if relates_to is not None:
        relates_to = _message_id(relates_to, f"{path}.relates_to")
    raw_code = m.get("code")
    if raw_code is None and not require_code:
        raw_code = {}
    code = _object(raw_code, f"{path}.code", frozenset({"number", "notation"}))
    doc_type = _object(m.get("document_type", {}), f"{path}.document_type", frozenset({"type", "detail", "name"}))
    promulgation = None
    if m.get("promulgation") is not None:
        pr = _object(m["promulgation"], f"{path}.promulgation", frozenset({"place", "date"}))
        promulgation = Promulgation(
            _str(pr, "place", f"{path}.promulgation", ctx, required=True, max_len=MAX_NAME),
            _date(pr, "date", f"{path}.promulgation", ctx, required=True),
        )
    signer = None
    if m.get("signer") is not None:
        s = _object(m["signer"], f"{path}.signer", frozenset({"competence", "position", "full_name"}))
        signer = SignerInfo(
            *(_str(s, k, f"{path}.signer", ctx, max_len=MAX_NAME) for k in ("competence", "position", "full_name"))
        )
    responses = m.get("response_for", [])
    if not isinstance(responses, list) or len(responses) > MAX_RESPONSE_FOR:
        raise MetadataError(
            f"{path}.response_for must be a list of at most {MAX_RESPONSE_FOR} references",
            detail={"field": f"{path}.response_for"},
        )
    response_for = []
    for i, r in enumerate(responses):
        rp = f"{path}.response_for[{i}]"
        r = _object(r, rp, frozenset({"organ_id", "code", "promulgation_date", "document_id"}))
        response_for.append(
            ResponseRef(
                _agency(r.get("organ_id"), f"{rp}.organ_id"),
                _str(r, "code", rp, ctx, required=True, max_len=64),
                _date(r, "promulgation_date", rp, ctx, required=True),
                _str(r, "document_id", rp, ctx, max_len=MAX_NAME),
            )
        )
    extras = m.get("extra", [])
    if not isinstance(extras, list) or len(extras) > MAX_EXTRA:
        raise MetadataError(
            f'{path}.extra must be a list of at most {MAX_EXTRA} {{"name", "value"}} objects',
            detail={"field": f"{path}.extra"},
        )
    extra = []
    for i, e in enumerate(extras):
        ep = f"{path}.extra[{i}]"
        e = _object(e, ep, frozenset({"name", "value"}))
        extra.append(
            (_str(e, "name", ep, ctx, required=True, max_len=MAX_NAME), _str(e, "value", ep, ctx, max_len=MAX_TEXT))
        )
    return DocumentInfo(
        code=DocumentCode(
            _str(code, "number", f"{path}.code", ctx, required=require_code, max_len=MAX_CODE_NUMBER),
            _str(code, "notation", f"{path}.code", ctx, max_len=MAX_CODE_NOTATION),
        ),
        subject=_str(m, "subject", path, ctx, required=True, max_len=MAX_SUBJECT),
        document_type=DocumentType(
            _int(doc_type, "type", f"{path}.document_type", ctx, 0, 999, 1),
            _int(doc_type, "detail", f"{path}.document_type", ctx, 0, 999, 0),
            _str(doc_type, "name", f"{path}.document_type", ctx, max_len=MAX_NAME),
        ),
        promulgation=promulgation,
        signer=signer,
        content=_str(m, "content", path, ctx, max_len=MAX_CONTENT),
        priority=Priority(_int(m, "priority", path, ctx, 0, 4, 0)),
        steering=SteeringType(_int(m, "steering_type", path, ctx, 0, 2, 0)),
        due_date=_date(m, "due_date", path, ctx),
        document_id=_str(m, "document_id", path, ctx, max_len=MAX_NAME),
        relates_to=relates_to,
        response_for=tuple(response_for),
        paper=_bool(m, "paper", path, ctx),
        extra=tuple(extra),
    )


def decode_document(
    value: Any, *, path: str = "document", caller: str = "http", legacy: bool = False, require_code: bool = True
) -> DocumentInfo:
    """A document's metadata (the schema's ``Document``) as a DocumentInfo.

    ``require_code`` is False only for the legacy callers (file drop, ``exchange sign``), which never
    required ``code.number``; it becomes required there when the legacy dialect is removed.
    """
    return _document(value, path, _Ctx(caller, legacy), DOCUMENT_FIELDS, require_code)


def decode_operation(value: Any, path: str = "operation") -> Operation:
    """``new`` (when absent), ``revoke``, ``update`` or ``replace``."""
    if value is None:
        return Operation.NEW
    try:
        return Operation(value)
    except ValueError:
        raise MetadataError(f"{path} must be one of {[o.value for o in Operation]}", detail={"field": path}) from None


def decode_submission(value: Any, *, path: str = "metadata", caller: str = "http") -> DocumentSubmission:
    """The ``metadata`` JSON of an HTTP document submission (the schema's ``DocumentSubmission``)."""
    ctx = _Ctx(caller, False)
    m = _object(value, path, SUBMISSION_FIELDS)
    raw_recipients = m.get("recipients", [])
    if not isinstance(raw_recipients, list) or len(raw_recipients) > MAX_RECIPIENTS:
        raise MetadataError(
            f"{path}.recipients must be a list of at most {MAX_RECIPIENTS} agency codes",
            detail={"field": f"{path}.recipients"},
        )
    recipients = tuple(_agency(r, f"{path}.recipients[{i}]") for i, r in enumerate(raw_recipients))
    operation = decode_operation(m.get("operation"), f"{path}.operation")
    document = _document({k: v for k, v in m.items() if k in DOCUMENT_FIELDS}, path, ctx, DOCUMENT_FIELDS, True)
    if operation is Operation.NEW:
        if document.relates_to is not None:
            raise MetadataError(
                f"{path}.relates_to is only for revoke, update and replace", detail={"field": f"{path}.relates_to"}
            )
        if not recipients:
            raise MetadataError(
                f"{path}.recipients must name at least one agency code", detail={"field": f"{path}.recipients"}
            )
    elif document.relates_to is None:
        raise MetadataError(
            f"a {operation.value} must name the message id of the document it acts on in {path}.relates_to",
            detail={"field": f"{path}.relates_to"},
        )
    descriptions = m.get("descriptions", {})
    if not isinstance(descriptions, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in descriptions.items()
    ):
        raise MetadataError(
            f"{path}.descriptions must map file names to texts of at most {MAX_TEXT} characters",
            detail={"field": f"{path}.descriptions"},
        )
    for k, v in descriptions.items():
        check_text(v, f"{path}.descriptions[{k!r}]")
    return DocumentSubmission(recipients, document, operation, dict(descriptions))


def decode_status_code(
    value: Any, path: str = "status.code", *, caller: str = "http", legacy: bool = False
) -> StatusCode:
    """A status code ``"01"``..``"16"``; the legacy dialect also took ``3`` and ``"3"``."""
    if (
        legacy
        and ((isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str))
        and len(str(value)) == 1
    ):
        deprecated(caller, path, f'{path} as a two-digit string such as "03"')
        value = str(value).zfill(2)
    if isinstance(value, str):
        try:
            return StatusCode(value)
        except ValueError:
            pass
    raise MetadataError(f"{path} must be a status code, one of {[c.value for c in StatusCode]}", detail={"field": path})


def decode_staff(
    value: Any, path: str = "status.staff", *, caller: str = "http", legacy: bool = False
) -> StaffInfo | None:
    """Who produced a status: ``{"department", "staff", "email", "mobile"}`` (all optional), or None."""
    if value is None:
        return None
    ctx = _Ctx(caller, legacy)
    s = _object(value, path, frozenset(STAFF_FIELDS))
    return StaffInfo(*(_str(s, k, path, ctx, max_len=MAX_NAME) for k in STAFF_FIELDS))


def decode_status(
    value: Any,
    *,
    path: str = "status",
    caller: str = "http",
    legacy: bool = False,
    context_fields: frozenset[str] = frozenset(),
) -> StatusSubmission:
    """A business status (the schema's ``StatusSubmission``: code 01-16, description, staff).

    ``context_fields`` are keys the caller's own envelope keeps beside the status (the file drop's
    ``kind``, ``response_for``...): allowed here, read by the caller.
    """
    ctx = _Ctx(caller, legacy)
    m = _object(value, path, STATUS_FIELDS | context_fields)
    code = decode_status_code(m.get("code"), f"{path}.code", caller=caller, legacy=legacy)
    staff = decode_staff(m.get("staff"), f"{path}.staff", caller=caller, legacy=legacy)
    return StatusSubmission(code, _str(m, "description", path, ctx, max_len=MAX_TEXT), staff)


# -- encoding ---------------------------------------------------------------------------


def _day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_document(d: DocumentInfo) -> dict[str, Any]:
    """A DocumentInfo with the schema's field names (what ``decode_document`` reads back)."""
    return {
        "subject": d.subject,
        "code": {"number": d.code.number, "notation": d.code.notation},
        "document_type": {"type": d.document_type.type, "detail": d.document_type.detail, "name": d.document_type.name},
        "promulgation": {"place": d.promulgation.place, "date": _day(d.promulgation.date)} if d.promulgation else None,
        "signer": {"competence": d.signer.competence, "position": d.signer.position, "full_name": d.signer.full_name}
        if d.signer
        else None,
        "content": d.content,
        "priority": int(d.priority),
        "steering_type": int(d.steering),
        "due_date": _day(d.due_date),
        "document_id": d.document_id,
        "relates_to": d.relates_to,
        "response_for": [
            {
                "organ_id": r.organ_id,
                "code": r.code,
                "promulgation_date": _day(r.promulgation_date),
                "document_id": r.document_id,
            }
            for r in d.response_for
        ],
        "paper": d.paper,
        "extra": [{"name": k, "value": v} for k, v in d.extra],
    }


def encode_staff(s: StaffInfo | None) -> dict[str, str] | None:
    """Who produced a status, or None."""
    if s is None:
        return None
    return {"department": s.department, "staff": s.staff, "email": s.email, "mobile": s.mobile}


def encode_status(s: StatusInfo, timestamp: str | None) -> dict[str, Any]:
    """A received status: the document's message id, code, description, staff and ``timestamp`` (rendered)."""
    return {
        "response_for": s.response_for,
        "code": s.code.value,
        "description": s.description,
        "staff": encode_staff(s.staff),
        "timestamp": timestamp,
    }
