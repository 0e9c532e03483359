"""Build the envelope XML (docs/ENVELOPE.md) from the typed model.

The output is unsigned: ``exchange.signing`` appends the enveloped
``ds:Signature`` as the last child of ``env:Signed``. :mod:`exchange.envelope.parse`
is the exact inverse of :func:`envelope_to_element`.
"""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime

from lxml import etree

from exchange.envelope.model import (
    ENVELOPE_NS,
    ENVELOPE_VERSION,
    AgencyRef,
    Attachment,
    DocumentInfo,
    Envelope,
    Header,
    Hop,
    ReceiptInfo,
    ResponseRef,
    StatusInfo,
    check_attachment_id,
    check_attachment_name,
)
from exchange.errors import SchemaError

_NSMAP = {"env": ENVELOPE_NS}


def _q(local: str) -> str:
    return f"{{{ENVELOPE_NS}}}{local}"


def signed_id(message_id: str) -> str:
    """The ``Id`` of an envelope's ``env:Signed`` element (what the signature references)."""
    return f"s-{message_id}"


def format_datetime(value: datetime) -> str:
    """UTC, ISO 8601, milliseconds and ``Z``: ``2026-11-24T05:00:00.000Z``.

    Sub-millisecond digits are dropped, so a datetime round-trips exactly only at
    millisecond precision (what :func:`exchange.envelope.model.utcnow` produces).
    """
    if value.tzinfo is None:
        # A naive datetime is ambiguous; guessing a zone would silently shift deadlines.
        raise ValueError(f"datetime {value!r} has no timezone; use an aware UTC datetime")
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def format_date(value: date) -> str:
    """A calendar day as ``YYYY-MM-DD``."""
    return value.isoformat()


def envelope_to_element(env: Envelope) -> etree._Element:
    """The unsigned ``env:Envelope`` root of ``env`` (Signed with Header and Manifest, optional Trace)."""
    try:
        root = etree.Element(_q("Envelope"), nsmap=_NSMAP)
        root.set("version", ENVELOPE_VERSION)
        signed = etree.SubElement(root, _q("Signed"))
        signed.set("Id", signed_id(env.header.message_id))
        _header(signed, env.header)
        manifest = etree.SubElement(signed, _q("Manifest"))
        for attachment in env.attachments:
            _attachment(manifest, attachment)
        if env.trace:
            trace = etree.SubElement(root, _q("Trace"))
            for hop in env.trace:
                _hop(trace, hop)
    except ValueError as exc:
        # lxml refuses control characters that XML 1.0 cannot carry; naive datetimes too.
        raise SchemaError(
            f"envelope {env.header.message_id} cannot be written as XML: {exc}; fix that field and retry"
        ) from exc
    return root


def serialize(element: etree._Element) -> bytes:
    """UTF-8 bytes with an XML declaration, never pretty-printed (whitespace is signed content)."""
    return etree.tostring(element, encoding="UTF-8", xml_declaration=True, pretty_print=False, with_tail=False)


# -- parts -------------------------------------------------------------------------


def _text(parent: etree._Element, local: str, text: str) -> etree._Element:
    child = etree.SubElement(parent, _q(local))
    child.text = text
    return child


def _attrs(element: etree._Element, **attributes: str) -> None:
    """Set the non-empty attributes only: empty optional values are omitted, as the XSD allows."""
    for name, value in attributes.items():
        if value:
            element.set(name, value)


def _agency(parent: etree._Element, local: str, agency: AgencyRef) -> None:
    element = etree.SubElement(parent, _q(local), code=agency.code)
    if agency.name:
        element.text = agency.name


def _header(signed: etree._Element, header: Header) -> None:
    h = etree.SubElement(signed, _q("Header"))
    _text(h, "MessageId", header.message_id)
    _text(h, "Kind", header.kind.value)
    _text(h, "Operation", header.operation.value)
    _text(h, "CreatedAt", format_datetime(header.created_at))
    if header.correlation_id:
        _text(h, "CorrelationId", header.correlation_id)
    _agency(h, "From", header.sender)
    for recipient in header.recipients:
        _agency(h, "To", recipient)
    if header.document is not None:
        _document(h, header.document)
    if header.status is not None:
        _status(h, header.status)
    if header.receipt is not None:
        _receipt(h, header.receipt)


def _document(header: etree._Element, doc: DocumentInfo) -> None:
    d = etree.SubElement(header, _q("Document"))
    if doc.document_id:
        _text(d, "DocumentId", doc.document_id)
    code = etree.SubElement(d, _q("Code"), number=doc.code.number)
    _attrs(code, notation=doc.code.notation)
    doc_type = etree.SubElement(
        d, _q("DocumentType"), type=str(doc.document_type.type), detail=str(doc.document_type.detail)
    )
    _attrs(doc_type, name=doc.document_type.name)
    _text(d, "Subject", doc.subject)
    if doc.content:
        _text(d, "Content", doc.content)
    if doc.promulgation is not None:
        etree.SubElement(d, _q("Promulgation"), place=doc.promulgation.place, date=format_date(doc.promulgation.date))
    if doc.signer is not None:
        signer = etree.SubElement(d, _q("Signer"))
        _attrs(signer, competence=doc.signer.competence, position=doc.signer.position, fullName=doc.signer.full_name)
    _text(d, "Priority", str(int(doc.priority)))
    _text(d, "SteeringType", str(int(doc.steering)))
    if doc.due_date is not None:
        _text(d, "DueDate", format_date(doc.due_date))
    if doc.relates_to:
        _text(d, "RelatesTo", doc.relates_to)
    for ref in doc.response_for:
        _response_ref(d, "ResponseFor", ref)
    _text(d, "Paper", "true" if doc.paper else "false")
    for name, value in doc.extra:
        extra = etree.SubElement(d, _q("Extra"), name=name)
        if value:
            extra.text = value
    _edxml_source(d, doc.source)


def _status(header: etree._Element, status: StatusInfo) -> None:
    s = etree.SubElement(header, _q("Status"), responseFor=status.response_for, code=status.code.value)
    if status.description:
        _text(s, "Description", status.description)
    if status.staff is not None:
        staff = etree.SubElement(s, _q("Staff"))
        _attrs(
            staff,
            department=status.staff.department,
            staff=status.staff.staff,
            email=status.staff.email,
            mobile=status.staff.mobile,
        )
    if status.timestamp is not None:
        _text(s, "Timestamp", format_datetime(status.timestamp))
    if status.document_ref is not None:
        _response_ref(s, "DocumentRef", status.document_ref)
    _edxml_source(s, status.source)


def _edxml_source(parent: etree._Element, source: bytes) -> None:
    """The edXML package a document or status was imported from (docs/EDXML.md), base64, when there is one."""
    if source:
        _text(parent, "EdxmlSource", base64.b64encode(source).decode("ascii"))


def _response_ref(parent: etree._Element, tag: str, ref: ResponseRef) -> None:
    r = etree.SubElement(
        parent, _q(tag), organId=ref.organ_id, code=ref.code, promulgationDate=format_date(ref.promulgation_date)
    )
    _attrs(r, documentId=ref.document_id)


def _receipt(header: etree._Element, receipt: ReceiptInfo) -> None:
    r = etree.SubElement(header, _q("Receipt"), responseFor=receipt.response_for, outcome=receipt.outcome.value)
    _attrs(r, envelopeDigest=receipt.envelope_digest, reasonCode=receipt.reason_code)
    if receipt.reason:
        _text(r, "Reason", receipt.reason)


def _attachment(manifest: etree._Element, a: Attachment) -> None:
    # The model checks these on construction; checked again because nothing signed may carry an id that
    # escapes a folder or a name that disguises a file (docs/ENVELOPE.md), however the value was made.
    element = etree.SubElement(
        manifest,
        _q("Attachment"),
        id=check_attachment_id(a.id),
        name=check_attachment_name(a.name),
        mediaType=a.media_type,
        size=str(a.size),
        sha256=a.sha256,
    )
    _attrs(element, description=a.description)


def _hop(trace: etree._Element, hop: Hop) -> None:
    etree.SubElement(trace, _q("Hop"), node=hop.node, at=format_datetime(hop.at))
