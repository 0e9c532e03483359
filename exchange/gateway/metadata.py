"""JSON request bodies to domain values: document metadata and business statuses.

Pure functions, strict on purpose: an unknown field is refused (a typo such as
``priorty`` must not silently send a normal-priority document), and every
refusal is a MetadataError naming the field, so the E-Office can fix its request.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

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
    SteeringType,
)
from exchange.errors import BadRequestError, InvalidAgencyCodeError
from exchange.gateway.errors import MetadataError

#: Field limits from QCVN 102 (DOMAIN.md) and sane bounds for free text.
MAX_SUBJECT = 500
MAX_CODE_NUMBER = 11
MAX_CODE_NOTATION = 30
MAX_TEXT = 2000
MAX_CONTENT = 100_000
MAX_RECIPIENTS = 500

DOCUMENT_FIELDS = frozenset({
    "recipients", "subject", "code", "document_type", "promulgation", "signer", "content", "priority",
    "steering_type", "due_date", "document_id", "response_for", "paper", "operation", "relates_to",
    "descriptions",
})
STATUS_FIELDS = frozenset({"code", "description", "staff"})

#: Characters XML 1.0 cannot carry: refused here, or signing would fail on them later.
_NOT_XML = re.compile("[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def check_text(value: str, path: str) -> str:
    """``value`` if XML can carry it, else MetadataError naming ``path``."""
    if _NOT_XML.search(value):
        raise MetadataError(f"{path} contains control characters that XML cannot carry",
                            detail={"field": path})
    return value


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
    code: StatusCode
    description: str = ""
    staff: StaffInfo | None = None


def load_json(raw: bytes, what: str) -> Any:
    """Parse a JSON body or part; BadRequestError (400) if it is not JSON at all."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"the {what} is not valid UTF-8 JSON ({exc}); send a JSON object") from None


def _object(value: Any, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MetadataError(f"{path} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise MetadataError(f"{path} has unknown field(s) {unknown}; known fields are {sorted(allowed)}",
                            detail={"field": f"{path}.{unknown[0]}"})
    return value


def _str(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False, max_len: int = MAX_TEXT) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            raise MetadataError(f"{path}.{key} is required", detail={"field": f"{path}.{key}"})
        return ""
    if not isinstance(value, str):
        raise MetadataError(f"{path}.{key} must be a string", detail={"field": f"{path}.{key}"})
    value = value.strip()
    if required and not value:
        raise MetadataError(f"{path}.{key} must not be empty", detail={"field": f"{path}.{key}"})
    if len(value) > max_len:
        raise MetadataError(f"{path}.{key} is {len(value)} characters; at most {max_len} are allowed",
                            detail={"field": f"{path}.{key}"})
    return check_text(value, f"{path}.{key}")


def _int(obj: Mapping[str, Any], key: str, path: str, low: int, high: int, default: int) -> int:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MetadataError(f"{path}.{key} must be an integer from {low} to {high}", detail={"field": f"{path}.{key}"})
    return value


def _date(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> date | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise MetadataError(f"{path}.{key} must be a date YYYY-MM-DD", detail={"field": f"{path}.{key}"}) from None


def _agency(value: Any, path: str) -> str:
    try:
        return check_agency_code(value)
    except InvalidAgencyCodeError as exc:
        raise InvalidAgencyCodeError(f"{path}: {exc.message}", detail={"field": path}) from None


def parse_document(value: Any) -> DocumentSubmission:
    """The ``metadata`` JSON of a document submission (see docs/API.md) as domain values."""
    p = "metadata"
    m = _object(value, p, DOCUMENT_FIELDS)
    raw_recipients = m.get("recipients", [])
    if not isinstance(raw_recipients, list) or len(raw_recipients) > MAX_RECIPIENTS:
        raise MetadataError(f"{p}.recipients must be a list of at most {MAX_RECIPIENTS} agency codes",
                            detail={"field": f"{p}.recipients"})
    recipients = tuple(_agency(r, f"{p}.recipients[{i}]") for i, r in enumerate(raw_recipients))
    try:
        operation = Operation(m.get("operation", "new"))
    except ValueError:
        raise MetadataError(f"{p}.operation must be one of {[o.value for o in Operation]}",
                            detail={"field": f"{p}.operation"}) from None
    relates_to = _str(m, "relates_to", p, max_len=64) or None
    if relates_to is not None:
        try:
            relates_to = str(uuid.UUID(relates_to))
        except ValueError:
            raise MetadataError(f"{p}.relates_to must be a message id (UUID)",
                                detail={"field": f"{p}.relates_to"}) from None
    if operation is Operation.NEW:
        if relates_to is not None:
            raise MetadataError(f"{p}.relates_to is only for revoke, update and replace",
                                detail={"field": f"{p}.relates_to"})
        if not recipients:
            raise MetadataError(f"{p}.recipients must name at least one agency code",
                                detail={"field": f"{p}.recipients"})
    elif relates_to is None:
        raise MetadataError(f"a {operation.value} must name the message id of the document it acts on "
                            f"in {p}.relates_to", detail={"field": f"{p}.relates_to"})

    code = _object(m.get("code"), f"{p}.code", frozenset({"number", "notation"}))
    doc_type = _object(m.get("document_type", {}), f"{p}.document_type", frozenset({"type", "detail", "name"}))
    promulgation = None
    if m.get("promulgation") is not None:
        pr = _object(m["promulgation"], f"{p}.promulgation", frozenset({"place", "date"}))
        promulgation = Promulgation(_str(pr, "place", f"{p}.promulgation", required=True, max_len=200),
                                    _date(pr, "date", f"{p}.promulgation", required=True))  # type: ignore[arg-type]
    signer = None
    if m.get("signer") is not None:
        s = _object(m["signer"], f"{p}.signer", frozenset({"competence", "position", "full_name"}))
        signer = SignerInfo(_str(s, "competence", f"{p}.signer", max_len=200),
                            _str(s, "position", f"{p}.signer", max_len=200),
                            _str(s, "full_name", f"{p}.signer", max_len=200))
    responses = m.get("response_for", [])
    if not isinstance(responses, list):
        raise MetadataError(f"{p}.response_for must be a list", detail={"field": f"{p}.response_for"})
    response_for = []
    for i, r in enumerate(responses):
        rp = f"{p}.response_for[{i}]"
        r = _object(r, rp, frozenset({"organ_id", "code", "promulgation_date", "document_id"}))
        response_for.append(ResponseRef(_agency(r.get("organ_id"), f"{rp}.organ_id"),
                                        _str(r, "code", rp, required=True, max_len=64),
                                        _date(r, "promulgation_date", rp, required=True),  # type: ignore[arg-type]
                                        _str(r, "document_id", rp, max_len=200)))
    paper = m.get("paper", False)
    if not isinstance(paper, bool):
        raise MetadataError(f"{p}.paper must be true or false", detail={"field": f"{p}.paper"})
    descriptions = m.get("descriptions", {})
    if not isinstance(descriptions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= MAX_TEXT for k, v in descriptions.items()):
        raise MetadataError(f"{p}.descriptions must map file names to texts of at most {MAX_TEXT} characters",
                            detail={"field": f"{p}.descriptions"})
    for k, v in descriptions.items():
        check_text(v, f"{p}.descriptions[{k!r}]")

    document = DocumentInfo(
        code=DocumentCode(_str(code, "number", f"{p}.code", required=True, max_len=MAX_CODE_NUMBER),
                          _str(code, "notation", f"{p}.code", max_len=MAX_CODE_NOTATION)),
        subject=_str(m, "subject", p, required=True, max_len=MAX_SUBJECT),
        document_type=DocumentType(_int(doc_type, "type", f"{p}.document_type", 0, 999, 1),
                                   _int(doc_type, "detail", f"{p}.document_type", 0, 999, 0),
                                   _str(doc_type, "name", f"{p}.document_type", max_len=200)),
        promulgation=promulgation,
        signer=signer,
        content=_str(m, "content", p, max_len=MAX_CONTENT),
        priority=Priority(_int(m, "priority", p, 0, 4, 0)),
        steering=SteeringType(_int(m, "steering_type", p, 0, 2, 0)),
        due_date=_date(m, "due_date", p),
        document_id=_str(m, "document_id", p, max_len=200),
        relates_to=relates_to,
        response_for=tuple(response_for),
        paper=paper,
    )
    return DocumentSubmission(recipients, document, operation, dict(descriptions))


def parse_status(value: Any) -> StatusSubmission:
    """The JSON body of a business status (code 01-16, description, staff)."""
    p = "status"
    m = _object(value, p, STATUS_FIELDS)
    try:
        code = StatusCode(m.get("code"))
    except ValueError:
        raise MetadataError(f"{p}.code must be one of {[c.value for c in StatusCode]}",
                            detail={"field": f"{p}.code"}) from None
    staff = None
    if m.get("staff") is not None:
        s = _object(m["staff"], f"{p}.staff", frozenset({"department", "staff", "email", "mobile"}))
        staff = StaffInfo(*(_str(s, k, f"{p}.staff", max_len=200) for k in ("department", "staff", "email", "mobile")))
    return StatusSubmission(code, _str(m, "description", p, max_len=MAX_TEXT), staff)
