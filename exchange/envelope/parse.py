"""Hardened parsing of envelope XML, and the model read back from it.

Every byte that arrives from outside goes through :func:`parse_xml`: a size
limit before the parser sees anything, no DTD of any kind (so no entities, no
external references, no billion laughs), no network, no processing
instructions, then depth and element-count limits. :func:`envelope_from_element`
is the exact inverse of :func:`exchange.envelope.build.envelope_to_element`.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime

from lxml import etree

from exchange.envelope.build import signed_id
from exchange.envelope.model import (
    ENVELOPE_NS,
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    DocumentType,
    Envelope,
    Header,
    Hop,
    Kind,
    Operation,
    Priority,
    Promulgation,
    ReceiptInfo,
    ReceiptOutcome,
    ResponseRef,
    SignerInfo,
    StaffInfo,
    StatusCode,
    StatusInfo,
    SteeringType,
    check_attachment_id,
    check_attachment_name,
)
from exchange.envelope.schema import validate
from exchange.errors import SchemaError, XmlMalformedError, XmlSecurityError, XmlTooLargeError, one_line


@dataclass(frozen=True, slots=True)
class XmlLimits:
    """Bounds on untrusted XML, checked before and right after parsing."""

    max_bytes: int = 1024 * 1024
    max_depth: int = 32
    max_elements: int = 10_000


DEFAULT_LIMITS = XmlLimits()

# A DTD is the door to every entity attack; nothing on the bus needs one, so its
# mere presence is refused before libxml2 reads a byte. The bytes are checked as
# UTF-8 first, so a UTF-16 document cannot hide the marker from this scan.
_DTD_MARKER = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY|ATTLIST|ELEMENT|NOTATION)", re.IGNORECASE)

# lxml parsers must not be used by two threads at once; one per thread is cheap.
_local = threading.local()


def _parser() -> etree.XMLParser:
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,  # keeps libxml2's own expansion and depth limits on
            remove_comments=True,  # exclusive c14n drops them anyway; they carry nothing
            remove_pis=False,  # kept so that we can refuse them (they would be signed content)
            remove_blank_text=False,  # whitespace is signed content
            strip_cdata=True,
            recover=False,
            encoding="utf-8",  # the envelope is UTF-8; ignore a lying encoding declaration
        )
        _local.parser = parser
    return parser


def parse_xml(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> etree._Element:
    """Parse untrusted XML bytes into an element, refusing anything dangerous or oversized.

    Raises XmlTooLargeError (size, depth, element count), XmlSecurityError (DTD,
    entity, processing instruction) or XmlMalformedError (not UTF-8 / not
    well-formed).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"parse_xml takes bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > limits.max_bytes:
        raise XmlTooLargeError(
            f"the XML is {len(data)} bytes, over the limit of {limits.max_bytes}; "
            "send large content as attachments, not inside the envelope",
            detail={"size": len(data), "limit": limits.max_bytes},
        )
    if not data.strip():
        raise XmlMalformedError("the XML is empty; send a complete envelope document")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise XmlMalformedError(
            f"the XML is not valid UTF-8 (byte {exc.start}: {exc.reason}); encode the envelope as UTF-8"
        ) from exc
    if _DTD_MARKER.search(data):
        raise XmlSecurityError(
            "the XML contains a DTD or entity declaration (<!DOCTYPE / <!ENTITY); envelopes must not "
            "carry any DTD: remove it and send the plain document"
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        # libxml2's messages may hold a newline (e.g. "Char 0x0 out of allowed range\n, line 1"): one line only.
        reason = re.sub(r"\s+,", ",", one_line(exc.msg or "syntax error")).rstrip(" ,")
        if "depth" in reason.lower():
            # libxml2's own nesting cap (256 without huge_tree) fired before ours could.
            raise XmlTooLargeError(
                f"the XML nests deeper than {limits.max_depth} elements; an envelope is shallow, "
                "check what produced this document",
                detail={"limit": limits.max_depth},
            ) from exc
        if "amplification" in reason.lower():
            # libxml2's entity-expansion guard (billion laughs) fired: an attack, not a typo.
            raise XmlSecurityError(
                "the XML expands entities beyond any sane size (billion laughs); envelopes must not "
                "carry any DTD or entity: remove them"
            ) from exc
        raise XmlMalformedError(
            f"the XML is not well-formed: {reason} (line {exc.lineno}); check how the envelope was written"
        ) from exc
    _check_tree(root, limits)
    return root


def _check_tree(root: etree._Element, limits: XmlLimits) -> None:
    docinfo = root.getroottree().docinfo
    # Belt and braces: the byte scan above should make these impossible.
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        raise XmlSecurityError("the XML declares a DTD; envelopes must not carry any DTD: remove it")
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        if isinstance(sibling, etree._ProcessingInstruction):
            raise _pi_error(sibling)
    for node in root.iter(etree.ProcessingInstruction, etree.Entity):
        if isinstance(node, etree._ProcessingInstruction):
            raise _pi_error(node)
        raise XmlSecurityError(f"the XML contains an entity reference {node}; replace it with its text")
    # One walk for both limits; stops at the first excess so a hostile tree costs little.
    depth = count = 0
    for event, _ in etree.iterwalk(root, events=("start", "end")):
        if event == "end":
            depth -= 1
            continue
        depth += 1
        count += 1
        if depth > limits.max_depth:
            raise XmlTooLargeError(
                f"the XML nests deeper than {limits.max_depth} elements; an envelope is shallow, "
                "check what produced this document",
                detail={"limit": limits.max_depth},
            )
        if count > limits.max_elements:
            raise XmlTooLargeError(
                f"the XML has more than {limits.max_elements} elements; split the content or send it as attachments",
                detail={"limit": limits.max_elements},
            )


def _pi_error(node: etree._ProcessingInstruction) -> XmlSecurityError:
    return XmlSecurityError(
        f"the XML contains a processing instruction <?{node.target} …?>; envelopes carry none: remove it"
    )


def parse_envelope(data: bytes, limits: XmlLimits = DEFAULT_LIMITS) -> tuple[etree._Element, Envelope]:
    """Parse, validate against the XSD, and read the model: ``(root element, envelope)``.

    This does NOT verify the signature; trust only what ``exchange.signing`` returns.
    """
    root = parse_xml(data, limits)
    validate(root)
    return root, envelope_from_element(root)


# -- the model from the tree -----------------------------------------------------------


def _q(local: str) -> str:
    return f"{{{ENVELOPE_NS}}}{local}"


_ENVELOPE, _SIGNED, _TRACE = _q("Envelope"), _q("Signed"), _q("Trace")


def envelope_from_element(element: etree._Element, *, trace_from: etree._Element | None = None) -> Envelope:
    """Read the model from an ``env:Envelope`` root or from its ``env:Signed`` element alone.

    After signature verification pass the verified ``Signed`` element, and the
    root as ``trace_from`` if the (unsigned, informational) trace is wanted.
    The element should have passed :func:`exchange.envelope.schema.validate`;
    anything that does not fit the model raises SchemaError.
    """
    if element.tag == _ENVELOPE:
        root: etree._Element | None = element
        signed = _child(element, "Signed")
    elif element.tag == _SIGNED:
        root, signed = None, element
    else:
        raise SchemaError(f"expected env:Envelope or env:Signed, got {element.tag!s}; send an envelope 1.0")
    trace_root = trace_from if trace_from is not None else root
    try:
        header = _header(_child(signed, "Header"))
        if signed.get("Id") != signed_id(header.message_id):
            # The signature references Signed by this Id; it must name this message.
            raise SchemaError(
                f"env:Signed has Id {signed.get('Id')!r}, expected {signed_id(header.message_id)!r}; "
                "the signed part does not belong to this message"
            )
        manifest = _child(signed, "Manifest")
        attachments = tuple(_attachment(a) for a in manifest.iterchildren(_q("Attachment")))
        trace: tuple[Hop, ...] = ()
        if trace_root is not None and (trace_el := trace_root.find(_TRACE)) is not None:
            trace = tuple(Hop(_attr(h, "node"), _datetime(_attr(h, "at"))) for h in trace_el.iterchildren(_q("Hop")))
    except (ValueError, TypeError) as exc:
        # The model's own checks (UUID, recipients, kind/body, enums) refuse what the XSD let through.
        raise SchemaError(f"the envelope does not fit the model: {exc}; validate it against the XSD") from exc
    return Envelope(header=header, attachments=attachments, trace=trace)


def _child(parent: etree._Element, local: str) -> etree._Element:
    child = parent.find(_q(local))
    if child is None:
        raise SchemaError(f"env:{etree.QName(parent).localname} has no env:{local}; see docs/ENVELOPE.md")
    return child


def _text(parent: etree._Element, local: str) -> str:
    """The text of a required child; an empty element reads as ""."""
    return _child(parent, local).text or ""


def _opt_text(parent: etree._Element, local: str) -> str | None:
    child = parent.find(_q(local))
    return None if child is None else (child.text or "")


def _attr(element: etree._Element, name: str) -> str:
    value = element.get(name)
    if value is None:
        raise SchemaError(f"env:{etree.QName(element).localname} has no {name} attribute; see docs/ENVELOPE.md")
    return value


def _datetime(text: str) -> datetime:
    # XSD types derived from xs:dateTime collapse whitespace, so it may surround the value.
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"datetime {text!r} has no timezone")
    return value.astimezone(UTC)


def _date(text: str) -> date:
    return date.fromisoformat(text.strip())


def _bool(text: str) -> bool:
    value = text.strip()
    if value not in ("true", "false", "1", "0"):
        raise ValueError(f"{text!r} is not an xs:boolean")
    return value in ("true", "1")


def _agency(element: etree._Element) -> AgencyRef:
    return AgencyRef(code=_attr(element, "code"), name=element.text or "")


def _header(h: etree._Element) -> Header:
    kind = Kind(_text(h, "Kind"))
    document = status = receipt = None
    if (d := h.find(_q("Document"))) is not None:
        document = _document(d)
    if (s := h.find(_q("Status"))) is not None:
        status = _status(s)
    if (r := h.find(_q("Receipt"))) is not None:
        receipt = _receipt(r)
    return Header(
        message_id=_text(h, "MessageId"),
        kind=kind,
        sender=_agency(_child(h, "From")),
        recipients=tuple(_agency(to) for to in h.iterchildren(_q("To"))),
        created_at=_datetime(_text(h, "CreatedAt")),
        operation=Operation(_text(h, "Operation")),
        correlation_id=_opt_text(h, "CorrelationId") or "",
        document=document,
        status=status,
        receipt=receipt,
    )


def _document(d: etree._Element) -> DocumentInfo:
    code = _child(d, "Code")
    doc_type = _child(d, "DocumentType")
    promulgation = d.find(_q("Promulgation"))
    signer = d.find(_q("Signer"))
    due = _opt_text(d, "DueDate")
    return DocumentInfo(
        code=DocumentCode(number=_attr(code, "number"), notation=code.get("notation", "")),
        subject=_text(d, "Subject"),
        document_type=DocumentType(
            type=int(_attr(doc_type, "type")), detail=int(_attr(doc_type, "detail")), name=doc_type.get("name", "")
        ),
        promulgation=None
        if promulgation is None
        else Promulgation(place=_attr(promulgation, "place"), date=_date(_attr(promulgation, "date"))),
        signer=None
        if signer is None
        else SignerInfo(
            competence=signer.get("competence", ""),
            position=signer.get("position", ""),
            full_name=signer.get("fullName", ""),
        ),
        content=_opt_text(d, "Content") or "",
        priority=Priority(int(_text(d, "Priority"))),
        steering=SteeringType(int(_text(d, "SteeringType"))),
        due_date=None if due is None else _date(due),
        document_id=_opt_text(d, "DocumentId") or "",
        relates_to=_opt_text(d, "RelatesTo"),
        response_for=tuple(_response_ref(r) for r in d.iterchildren(_q("ResponseFor"))),
        paper=_bool(_text(d, "Paper")),
        extra=tuple((_attr(e, "name"), e.text or "") for e in d.iterchildren(_q("Extra"))),
        source=_edxml_source(d),
    )


def _status(s: etree._Element) -> StatusInfo:
    staff = s.find(_q("Staff"))
    timestamp = _opt_text(s, "Timestamp")
    return StatusInfo(
        response_for=_attr(s, "responseFor"),
        code=StatusCode(_attr(s, "code")),
        description=_opt_text(s, "Description") or "",
        staff=None
        if staff is None
        else StaffInfo(
            department=staff.get("department", ""),
            staff=staff.get("staff", ""),
            email=staff.get("email", ""),
            mobile=staff.get("mobile", ""),
        ),
        timestamp=None if timestamp is None else _datetime(timestamp),
        document_ref=None if (ref := s.find(_q("DocumentRef"))) is None else _response_ref(ref),
        source=_edxml_source(s),
    )


def _edxml_source(parent: etree._Element) -> bytes:
    """The base64 ``env:EdxmlSource`` of a document or status (the edXML package it came from), or b""."""
    text = _opt_text(parent, "EdxmlSource")
    return b"" if not text else base64.b64decode("".join(text.split()), validate=True)


def _response_ref(r: etree._Element) -> ResponseRef:
    return ResponseRef(
        organ_id=_attr(r, "organId"),
        code=_attr(r, "code"),
        promulgation_date=_date(_attr(r, "promulgationDate")),
        document_id=r.get("documentId", ""),
    )


def _receipt(r: etree._Element) -> ReceiptInfo:
    return ReceiptInfo(
        response_for=_attr(r, "responseFor"),
        outcome=ReceiptOutcome(_attr(r, "outcome")),
        envelope_digest=r.get("envelopeDigest", ""),
        reason_code=r.get("reasonCode", ""),
        reason=_opt_text(r, "Reason") or "",
    )


def _attachment(a: etree._Element) -> Attachment:
    # Checked here, not only by the XSD and the model: the id names files on the recipient's side and the
    # name is shown to people, so a tree that skipped validation must not slip one through either.
    return Attachment(
        id=check_attachment_id(_attr(a, "id")),
        name=check_attachment_name(_attr(a, "name")),
        media_type=_attr(a, "mediaType"),
        size=int(_attr(a, "size").strip()),
        sha256=_attr(a, "sha256"),
        description=a.get("description", ""),
    )
