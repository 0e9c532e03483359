"""Shared constants and small XML helpers of the edXML codec (no edXML logic here)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import TypeVar

from lxml import etree

from exchange.envelope.model import DocumentInfo, Priority, ResponseRef, SteeringType
from exchange.envelope.parse import XmlLimits
from exchange.errors import EdxmlError

EDXML_NS = "http://www.mic.gov.vn/TBT/QCVN_102_2016"
XMLDSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
XSD_NS = "http://www.w3.org/2001/XMLSchema"

#: libxml2 (without ``huge_tree``, which stays off) refuses any text node over
#: 10,000,000 characters, and each attachment is one base64 text node.
MAX_TEXT_NODE_CHARS = 10_000_000
#: The largest attachment an edXML package can carry here: 4 base64 characters per 3 bytes.
MAX_ATTACHMENT_BYTES = MAX_TEXT_NODE_CHARS // 4 * 3  # 7,500,000 bytes

#: Packages carry base64 attachments, so they get a larger budget than envelopes.
EDXML_LIMITS = XmlLimits(max_bytes=64 * 1024 * 1024, max_depth=32, max_elements=50_000)

#: edXML timestamps carry no zone; they are Vietnam time (UTC+7, no daylight saving).
VIETNAM_TZ = timezone(timedelta(hours=7), "ICT")

#: Maps an edXML DocumentId to the message id of the envelope that carried it (or None).
DocumentResolver = Callable[[str], "str | None"]
#: Maps a message id to the edXML DocumentId of the document it carried (or None).
DocumentIdLookup = Callable[[str], "str | None"]

# Namespace for document_key: fixed forever, or keys computed earlier stop matching.
_DOCUMENT_KEY_NS = uuid.UUID("5d0f6f4e-7a51-5b8e-9c51-0b7f4d1e2a10")

#: QCVN 102 says CodeNumber <= 11; the hub's SDK writes 14-digit timestamps and ``GW-<timestamp>-<n>``.
MAX_CODE_NUMBER = 64
_MAX_CODE_NUMBER, _MAX_CODE_NOTATION, _MAX_SUBJECT = MAX_CODE_NUMBER, 30, 500

# MessageHeader children in the order export writes them; extras of an unknown
# top-level element go after the last of these.
_SLOTS = (
    "From",
    "To",
    "Code",
    "PromulgationInfo",
    "DocumentType",
    "Subject",
    "Content",
    "SignerInfo",
    "DueDate",
    "ToPlaces",
    "OtherInfo",
    "ResponseFor",
    "SteeringType",
    "DocumentId",
)
_SLOT_RANK = {name: i for i, name in enumerate(_SLOTS)}
_UNKNOWN_RANK = len(_SLOTS)
_TRACE_RANK = {"TraceHeaderList": _UNKNOWN_RANK + 1, "Bussiness": _UNKNOWN_RANK + 2}

_SEGMENT_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\[(?P<index>\d+)\])?$")
_TO_RE = re.compile(r"^To\[(?P<code>[^\]/]+)\]$")
_DATE_RE = re.compile(r"^(\d{4})[/-](\d{2})[/-](\d{2})$")


def edxml_document_id(organ_id: str, promulgation_date: date, code: str) -> str:
    """The edXML DocumentId ``{OrganId},{yyyy/MM/dd},{number}/{notation}`` of a document."""
    return f"{organ_id},{promulgation_date:%Y/%m/%d},{code}"


def code_text(doc: DocumentInfo) -> str:
    """The edXML ``Code`` of a document as a ResponseFor writes it: ``number/notation``."""
    return f"{doc.code.number}/{doc.code.notation}" if doc.code.notation else doc.code.number


def reference_of(sender: str, doc: DocumentInfo, created_at: datetime) -> ResponseRef:
    """How an E-Office names ``doc`` in a ResponseFor; the DocumentId is derived when the document has none."""
    day: date = doc.promulgation.date if doc.promulgation else created_at.astimezone(VIETNAM_TZ).date()
    code = code_text(doc)
    return ResponseRef(
        organ_id=sender,
        code=code,
        promulgation_date=day,
        document_id=doc.document_id or edxml_document_id(sender, day, code),
    )


def document_key(document_id: str) -> str:
    """A stable UUID for an edXML DocumentId: what a status answering an unresolved document points to.

    It is not the message id of any envelope; the adapter should pass a resolver
    so that statuses point to the real document message.
    """
    return str(uuid.uuid5(_DOCUMENT_KEY_NS, document_id))


# -- small helpers -------------------------------------------------------------------


def _q(local: str) -> str:
    return f"{{{EDXML_NS}}}{local}"


def _sub(parent: etree._Element, local: str) -> etree._Element:
    return etree.SubElement(parent, _q(local))


def _leaf(parent: etree._Element, local: str, text: str) -> etree._Element:
    el = etree.SubElement(parent, _q(local))
    el.text = text or None
    return el


def _ours(el: etree._Element) -> bool:
    return isinstance(el.tag, str) and etree.QName(el).namespace in (EDXML_NS, None)


def _elements(parent: etree._Element, *, any_namespace: bool = False) -> list[etree._Element]:
    """Element children in the edXML namespace (or none: some writers drop it), or in any namespace."""
    return [c for c in parent if isinstance(c.tag, str) and (any_namespace or _ours(c))]


def _children(parent: etree._Element, local: str) -> list[etree._Element]:
    return [c for c in _elements(parent) if etree.QName(c).localname == local]


def _first(parent: etree._Element, local: str) -> etree._Element | None:
    found = _children(parent, local)
    return found[0] if found else None


def _require(parent: etree._Element, local: str, path: str) -> etree._Element:
    el = _first(parent, local)
    if el is None:
        raise EdxmlError(f"{path}/{local} is missing; see docs/EDXML.md for the package structure")
    return el


def _required_text(parent: etree._Element, local: str, path: str) -> str:
    text = _require(parent, local, path).text or ""
    if not text.strip():
        raise EdxmlError(f"{path}/{local} is empty; it is required")
    return text


def _opt_text(parent: etree._Element, local: str) -> str:
    el = _first(parent, local)
    return "" if el is None else el.text or ""


def _int(text: str | None, path: str) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        raise EdxmlError(f"{path} {text!r} is not a whole number") from None


_IntEnumT = TypeVar("_IntEnumT", Priority, SteeringType)


def _enum_int(enum: type[_IntEnumT], text: str | None, path: str) -> _IntEnumT:
    value = _int(text, path)
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(f"{m.value} ({m.name.lower()})" for m in enum)
        raise EdxmlError(f"{path} {value} is out of range: one of {allowed}") from None


def _date(text: str, path: str) -> date:
    m = _DATE_RE.match(text.strip())
    try:
        if m is None:
            raise ValueError
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise EdxmlError(f"{path} {text.strip()!r} is not a date written yyyy/MM/dd") from None


def _format_date(value: date) -> str:
    return f"{value:%Y/%m/%d}"


def _timestamp(text: str, path: str) -> datetime:
    """An edXML timestamp (``yyyy/MM/dd HH:mm:ss``, Vietnam time unless an offset is given), in UTC."""
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value.replace("/", "-", 2))
    except ValueError:
        raise EdxmlError(f"{path} {value!r} is not a timestamp written yyyy/MM/dd HH:mm:ss") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=VIETNAM_TZ)
    return parsed.astimezone(UTC)


def _format_timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"datetime {value!r} has no timezone")
    return value.astimezone(VIETNAM_TZ).strftime("%Y/%m/%d %H:%M:%S")


def _bare_cid(content_id: str) -> str:
    """A ContentId without its ``cid:`` prefixes: ``cid:X``, ``X`` and ``cid:cid:X`` are all ``X``."""
    value = content_id.strip()
    while value.lower().startswith("cid:"):
        value = value[4:].strip()
    return value


def _base64(text: str, path: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EdxmlError(f"{path} is not valid base64 ({exc}); the attachment bytes are corrupt") from None
