"""Export: an envelope to an edXML package the hub's library reads (docs/EDXML.md).

An envelope imported from a package carries that package's source
(:mod:`exchange.envelope.edxml.source`): export then gives the package back as the
sender wrote it, byte for byte, and changes only what the bus must: it appends
a TraceHeader per bus hop, adds the DocumentId the E-Office will answer by when
the package had none, and rewrites organ ids through ``organ_id_for``. An
envelope written on the bus (or changed since import) is written from the model.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from lxml import etree

from exchange.envelope.codes import AGENCY_CODE_RE
from exchange.envelope.edxml._common import (
    _SLOT_RANK,
    _TO_RE,
    EDXML_LIMITS,
    EDXML_NS,
    MAX_ATTACHMENT_BYTES,
    XLINK_NS,
    XSD_NS,
    XSI_NS,
    DocumentIdLookup,
    _bare_cid,
    _children,
    _first,
    _format_date,
    _format_timestamp,
    _leaf,
    _q,
    _sub,
    edxml_document_id,
)
from exchange.envelope.edxml.extras import _group, _materialize_all
from exchange.envelope.edxml.source import PackageSource
from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentInfo,
    Envelope,
    Hop,
    Kind,
    Operation,
    StatusInfo,
)
from exchange.envelope.parse import parse_xml
from exchange.errors import AttachmentDigestError, AttachmentError, EdxmlError, ExchangeError, PayloadTooLargeError

__all__ = ["OrganIdFor", "export_package"]

#: Maps an organ id (an agency code, or an id as a package wrote it) to the id the receiving E-Office knows
#: that agency by; None keeps it.
OrganIdFor = Callable[[str], "str | None"]

#: The contact fields of a From / To, in the order the hub's library writes them (OrganName after the first).
_CONTACTS = ("OrganizationInCharge", "OrganAdd", "Email", "Telephone", "Fax", "Website")


# -- export --------------------------------------------------------------------------


def export_package(
    envelope: Envelope,
    attachment_data: Mapping[str, bytes],
    *,
    document_id_of: DocumentIdLookup | None = None,
    hops: Sequence[Hop] = (),
    organ_id_for: OrganIdFor | None = None,
    use_source: bool = True,
) -> bytes:
    """Write a document or status envelope as an edXML package (UTF-8 bytes).

    Attachment bytes must match the manifest (size and SHA-256). Receipts have no
    edXML form (EdxmlError). ``hops`` are the bus's own hops, appended as
    TraceHeaders after the sender's. ``organ_id_for`` rewrites organ ids for the
    receiving E-Office. ``document_id_of`` maps ``relates_to`` (a message id) to
    the edXML DocumentId of a revoke / update / replace target when the extras do
    not already name it. With ``use_source`` (default) an imported envelope is
    written from the package it came from (see the module docstring).
    """
    header = envelope.header
    if header.kind is Kind.RECEIPT:
        raise EdxmlError(
            "a transport receipt has no edXML form; E-Office systems learn delivery outcomes from the "
            "hub's sent-package listing, not from a package"
        )
    blob = header.document.source if header.document is not None else header.status.source if header.status else b""
    if blob and use_source:
        out = _export_from_source(envelope, attachment_data, blob, hops, organ_id_for)
        if out is not None:
            return _checked_size(out)
    root = etree.Element(_q("edXML"), nsmap={None: EDXML_NS, "xsi": XSI_NS, "xsd": XSD_NS})
    env = etree.SubElement(root, _q("edXMLEnvelope"), nsmap={"edXML": EDXML_NS})
    header_el = etree.SubElement(env, _q("edXMLHeader"))
    rename = organ_id_for or (lambda code: None)
    try:
        if header.kind is Kind.STATUS:
            assert header.status is not None
            _export_status(header_el, header.sender, header.status, header.created_at, rename)
        else:
            assert header.document is not None
            _export_document(header_el, envelope, header.document, document_id_of, hops, rename)
            etree.SubElement(header_el, _q("Signature"))
            _export_attachments(root, env, envelope.attachments, attachment_data, header.document)
    except ValueError as exc:
        # lxml refuses control characters XML 1.0 cannot carry.
        raise EdxmlError(
            f"envelope {header.message_id} cannot be written as edXML: {exc}; fix that field and retry"
        ) from exc
    etree.indent(root, space="  ")
    return _checked_size(etree.tostring(root, encoding="UTF-8", xml_declaration=True))


def _checked_size(out: bytes) -> bytes:
    if len(out) > EDXML_LIMITS.max_bytes:
        raise PayloadTooLargeError(
            f"the edXML package would be {len(out):,} bytes, over the {EDXML_LIMITS.max_bytes:,} a package may "
            "have; send fewer or smaller attachments",
            detail={"size": len(out), "limit": EDXML_LIMITS.max_bytes},
        )
    return out


# -- from the package's source -----------------------------------------------------------


class _AnyOrgan:
    """A mapper that accepts every organ id: re-reading a source must not depend on the directory."""

    def resolve_organ_id(self, organ_id: str) -> str | None:
        return "000.00.00.A00"


def _export_from_source(
    envelope: Envelope,
    attachment_data: Mapping[str, bytes],
    blob: bytes,
    hops: Sequence[Hop],
    organ_id_for: OrganIdFor | None,
) -> bytes | None:
    """The package the envelope was imported from, with the bus's changes; None if the envelope was changed."""
    from exchange.envelope.edxml.reader import import_package  # reader imports nothing from here

    source = PackageSource.decode(blob)
    by_sha: dict[str, bytes] = {}
    for a in envelope.attachments:
        raw = attachment_data.get(a.id)
        if raw is None:
            raise AttachmentError(f"attachment {a.id} ({a.name}) has no bytes; pass them in attachment_data")
        if len(raw) != a.size or hashlib.sha256(raw).hexdigest() != a.sha256:
            raise AttachmentDigestError(
                f"attachment {a.id} ({a.name}) does not match its manifest entry (size or SHA-256); "
                "the bytes were altered or belong to another file"
            )
        by_sha[a.sha256] = raw
    if any(hole.sha256 not in by_sha for hole in source.holes):
        return None  # the attachments were changed since import: written from the model
    original = source.restore(by_sha)
    h = envelope.header
    try:
        again = import_package(
            original, created_at=h.created_at, message_id=h.message_id, agencies=_AnyOrgan(), keep_source=False
        )
    except ExchangeError:
        return None  # cannot happen for a source this codec cut; written from the model then
    add_document_id = ""
    if h.document is not None:
        if again.envelope.header.document is None:
            return None
        mine, theirs = h.document, again.envelope.header.document
        if mine.document_id and not theirs.document_id:
            add_document_id = mine.document_id
            theirs = replace(theirs, document_id=mine.document_id)
        if _comparable(mine) != _comparable(theirs) or h.operation is not again.envelope.header.operation:
            return None
        if sorted(a.sha256 for a in envelope.attachments) != sorted(a.sha256 for a in again.envelope.attachments):
            return None
    elif h.status is not None:
        status = again.envelope.header.status
        if status is None or _status_fields(h.status) != _status_fields(status):
            return None
    if h.document is None:
        hops = ()  # a status package has no trace: the hub's library reads none there
    if not hops and not add_document_id and organ_id_for is None:
        return original
    root = parse_xml(original, EDXML_LIMITS)
    tree_header = _find_header(root)
    if tree_header is None:
        return None
    try:
        if organ_id_for is not None:
            for el in root.iter():
                if isinstance(el.tag, str) and etree.QName(el).localname == "OrganId" and el.text:
                    written = el.text.strip()
                    new = organ_id_for(written)
                    if new and new != written:
                        el.text = new
        if add_document_id:
            mh = _first(tree_header, "MessageHeader")
            if mh is not None:
                _leaf_like(mh, "DocumentId", add_document_id)
        if hops:
            _append_hops(tree_header, hops, organ_id_for)
    except ValueError as exc:
        raise EdxmlError(f"envelope {h.message_id} cannot be written as edXML: {exc}") from exc
    return etree.tostring(root, encoding="UTF-8", xml_declaration=True)


def _comparable(doc: DocumentInfo) -> DocumentInfo:
    """The document's modelled fields (extras, source and the bus's relates_to aside)."""
    return replace(doc, extra=(), relates_to=None)


def _status_fields(status: StatusInfo) -> tuple[object, ...]:
    return (status.code, status.description, status.staff, status.timestamp, status.document_ref)


def _find_header(root: etree._Element) -> etree._Element | None:
    envelope = root if etree.QName(root).localname == "edXMLEnvelope" else _first(root, "edXMLEnvelope")
    return None if envelope is None else _first(envelope, "edXMLHeader")


def _leaf_like(parent: etree._Element, local: str, text: str) -> etree._Element:
    """A child in the parent's own namespace (the sender's prefix, or none)."""
    namespace = etree.QName(parent).namespace
    el = etree.SubElement(parent, f"{{{namespace}}}{local}" if namespace else local)
    el.text = text or None
    return el


def _append_hops(header_el: etree._Element, hops: Sequence[Hop], organ_id_for: OrganIdFor | None) -> None:
    """Append one TraceHeader per bus hop after the sender's TraceHeaders (before Bussiness when there are none).

    A hop names an organ only when its node is an agency code; the bus's relay
    nodes are written as the hub writes its own relay hops: a Timestamp alone.
    """
    trace_list = _first(header_el, "TraceHeaderList")
    if trace_list is None:
        trace_list = _leaf_like(header_el, "TraceHeaderList", "")
        message_header = _first(header_el, "MessageHeader")
        if message_header is None:
            message_header = _first(header_el, "Status")
        if message_header is not None:
            message_header.addnext(trace_list)
    existing = _children(trace_list, "TraceHeader")
    business = _children(trace_list, "Bussiness")
    anchor = existing[-1] if existing else None
    for hop in hops:
        namespace = etree.QName(trace_list).namespace
        el = etree.Element(f"{{{namespace}}}TraceHeader" if namespace else "TraceHeader")
        if AGENCY_CODE_RE.match(hop.node):
            _leaf_like(el, "OrganId", (organ_id_for(hop.node) if organ_id_for else None) or hop.node)
        _leaf_like(el, "Timestamp", _format_timestamp(hop.at))
        if anchor is not None:
            anchor.addnext(el)
        elif business:
            business[0].addprevious(el)
        else:
            trace_list.append(el)
        anchor = el


# -- from the model ----------------------------------------------------------------------


def _export_document(
    header_el: etree._Element,
    envelope: Envelope,
    doc: DocumentInfo,
    document_id_of: DocumentIdLookup | None,
    hops: Sequence[Hop],
    rename: OrganIdFor,
) -> None:
    header = envelope.header
    extra = _target_extras(header.operation, doc, header.recipients, document_id_of)
    groups = _group(extra)
    mh = etree.SubElement(header_el, _q("MessageHeader"))
    _export_party(mh, "From", header.sender, groups.pop("From", []), rename)
    for recipient in header.recipients:
        _export_party(mh, "To", recipient, groups.pop(f"To[{recipient.code}]", []), rename)
    code = _sub(mh, "Code")
    _leaf(code, "CodeNumber", doc.code.number)
    _leaf(code, "CodeNotation", doc.code.notation)
    _materialize_all(code, groups.pop("Code", []))
    if doc.promulgation is not None:
        promulgation = _sub(mh, "PromulgationInfo")
        _leaf(promulgation, "Place", doc.promulgation.place)
        _leaf(promulgation, "PromulgationDate", _format_date(doc.promulgation.date))
        _materialize_all(promulgation, groups.pop("PromulgationInfo", []))
    doc_type = _sub(mh, "DocumentType")
    _leaf(doc_type, "Type", str(doc.document_type.type))
    _leaf(doc_type, "TypeDetail", str(doc.document_type.detail))
    _leaf(doc_type, "TypeName", doc.document_type.name)
    _materialize_all(doc_type, groups.pop("DocumentType", []))
    _leaf(mh, "Subject", doc.subject)
    if doc.content:
        _leaf(mh, "Content", doc.content)
    if doc.signer is not None:
        signer = _sub(mh, "SignerInfo")
        _leaf(signer, "Competence", doc.signer.competence)
        _leaf(signer, "Position", doc.signer.position)
        _leaf(signer, "FullName", doc.signer.full_name)
        _materialize_all(signer, groups.pop("SignerInfo", []))
    if doc.due_date is not None:
        _leaf(mh, "DueDate", _format_date(doc.due_date))
    _materialize_all(mh, [("ToPlaces" + ("/" + rest if rest else ""), v) for rest, v in groups.pop("ToPlaces", [])])
    other = _sub(mh, "OtherInfo")
    _leaf(other, "Priority", str(int(doc.priority)))
    _materialize_all(other, groups.pop("OtherInfo", []))
    for ref in doc.response_for:
        r = _sub(mh, "ResponseFor")
        _leaf(r, "OrganId", ref.organ_id)
        _leaf(r, "Code", ref.code)
        _leaf(r, "PromulgationDate", _format_date(ref.promulgation_date))
        if ref.document_id:
            _leaf(r, "DocumentId", ref.document_id)
    _leaf(mh, "SteeringType", str(int(doc.steering)))
    if doc.document_id:
        _leaf(mh, "DocumentId", doc.document_id)
    trace_attrs = groups.pop("TraceHeaderList", [])
    business = groups.pop("Bussiness", [])
    for first, pairs in groups.items():
        if first in _SLOT_RANK or _TO_RE.match(first):
            continue  # a group for a slot that was not written (e.g. SignerInfo extras without a signer)
        _materialize_all(mh, [(first + ("/" + rest if rest else ""), v) for rest, v in pairs])

    trace_list = _sub(header_el, "TraceHeaderList")
    _materialize_all(trace_list, [(k, v) for k, v in trace_attrs if k.startswith("@")])
    for hop in envelope.trace:
        if not AGENCY_CODE_RE.match(hop.node):
            continue  # the bus's own relay hops are node names, not agencies: they stay on the bus
        trace_header = _sub(trace_list, "TraceHeader")
        _leaf(trace_header, "OrganId", rename(hop.node) or hop.node)
        _leaf(trace_header, "Timestamp", _format_timestamp(hop.at))
    for hop in hops:  # the bus's hops for this delivery, as the hub writes its relay hops
        trace_header = _sub(trace_list, "TraceHeader")
        if AGENCY_CODE_RE.match(hop.node):
            _leaf(trace_header, "OrganId", rename(hop.node) or hop.node)
        _leaf(trace_header, "Timestamp", _format_timestamp(hop.at))
    bussiness = _sub(trace_list, "Bussiness")
    _leaf(bussiness, "BussinessDocType", str(header.operation.edxml_code))
    _materialize_all(bussiness, business)
    _leaf(bussiness, "Paper", "1" if doc.paper else "0")
    _materialize_all(trace_list, [(k, v) for k, v in trace_attrs if not k.startswith("@")])


def _target_extras(
    operation: Operation, doc: DocumentInfo, recipients: Iterable[AgencyRef], document_id_of: DocumentIdLookup | None
) -> tuple[tuple[str, str], ...]:
    """The extras, plus the edXML identification of the target looked up from ``relates_to`` if missing."""
    extra = doc.extra
    keys = [k for k, _ in extra]
    if operation is Operation.REPLACE and not any(k.startswith("Bussiness/ReplacementInfoList") for k in keys):
        target = document_id_of(doc.relates_to) if document_id_of and doc.relates_to else None
        if not target:
            raise EdxmlError(
                "a replace document must name the document it replaces in edXML: set relates_to and pass "
                "document_id_of, or carry Bussiness/ReplacementInfoList/ReplacementInfo/DocumentId in extra"
            )
        extra += (("Bussiness/ReplacementInfoList/ReplacementInfo/DocumentId", target),)
        extra += tuple(
            ("Bussiness/ReplacementInfoList/ReplacementInfo/OrganIdList/OrganId", r.code) for r in recipients
        )
    elif operation in (Operation.REVOKE, Operation.UPDATE) and "Bussiness/DocumentId" not in keys:
        target = document_id_of(doc.relates_to) if document_id_of and doc.relates_to else None
        if target and target != doc.document_id:
            extra += (("Bussiness/DocumentId", target),)
    return extra


def _export_party(
    parent: etree._Element, local: str, agency: AgencyRef, pairs: list[tuple[str, str]], rename: OrganIdFor
) -> None:
    el = _sub(parent, local)
    _leaf(el, "OrganId", rename(agency.code) or agency.code)
    _materialize_all(el, [(k, v) for k, v in pairs if k == "OrganizationInCharge"])
    _leaf(el, "OrganName", agency.name)
    _materialize_all(el, [(k, v) for k, v in pairs if k != "OrganizationInCharge"])


def _export_status(
    header_el: etree._Element, sender: AgencyRef, status: StatusInfo, created_at: object, rename: OrganIdFor
) -> None:
    """The status as the hub, its SDK and E-Offices write it: inside ``edXMLHeader/MessageHeader``.

    ``From`` carries all its contact fields (empty when the bus does not know them:
    the hub's library reads each one), then ResponseFor, StaffInfo, StatusCode,
    Description and Timestamp.
    """
    del created_at
    ref = status.document_ref
    if ref is None:
        raise EdxmlError(
            "a status needs the edXML identification of the document it answers (StatusInfo.document_ref: "
            "OrganId, Code, PromulgationDate, DocumentId) to be written as an edXML status package"
        )
    el = _sub(header_el, "MessageHeader")
    from_el = _sub(el, "From")
    _leaf(from_el, "OrganId", rename(sender.code) or sender.code)
    _leaf(from_el, "OrganizationInCharge", "")
    _leaf(from_el, "OrganName", sender.name)
    for field_name in _CONTACTS[1:]:
        _leaf(from_el, field_name, "")
    r = _sub(el, "ResponseFor")
    _leaf(r, "OrganId", rename(ref.organ_id) or ref.organ_id)
    _leaf(r, "Code", ref.code)
    _leaf(r, "PromulgationDate", _format_date(ref.promulgation_date))
    _leaf(r, "DocumentId", ref.document_id or edxml_document_id(ref.organ_id, ref.promulgation_date, ref.code))
    staff = _sub(el, "StaffInfo")
    _leaf(staff, "Department", status.staff.department if status.staff else "")
    _leaf(staff, "Staff", status.staff.staff if status.staff else "")
    _leaf(staff, "Email", status.staff.email if status.staff else "")
    _leaf(staff, "Mobile", status.staff.mobile if status.staff else "")
    _leaf(el, "StatusCode", status.code.value)
    _leaf(el, "Description", status.description)
    if status.timestamp is not None:
        _leaf(el, "Timestamp", _format_timestamp(status.timestamp))


def _export_attachments(
    root: etree._Element,
    env: etree._Element,
    attachments: tuple[Attachment, ...],
    attachment_data: Mapping[str, bytes],
    doc: DocumentInfo,
) -> None:
    from exchange.envelope.edxml.reader import TRANSFER_TYPE_KEY

    packed = {k[len(TRANSFER_TYPE_KEY) :]: v for k, v in doc.extra if k.startswith(TRANSFER_TYPE_KEY)}
    body = _sub(env, "edXMLBody")
    manifest = _sub(body, "edXMLManifest")
    manifest.set("version", "1.0")
    if not attachments:
        return
    encoded = _sub(root, "AttachmentEncoded")
    for a in attachments:
        raw = attachment_data.get(a.id)
        if raw is None:
            raise AttachmentError(f"attachment {a.id} ({a.name}) has no bytes; pass them in attachment_data")
        if len(raw) != a.size or hashlib.sha256(raw).hexdigest() != a.sha256:
            raise AttachmentDigestError(
                f"attachment {a.id} ({a.name}) does not match its manifest entry (size or SHA-256); "
                "the bytes were altered or belong to another file"
            )
        if len(raw) > MAX_ATTACHMENT_BYTES:
            raise PayloadTooLargeError(
                f"attachment {a.id} ({a.name}) is {len(raw):,} bytes; an edXML package carries at most "
                f"{MAX_ATTACHMENT_BYTES:,} bytes per attachment",
                detail={"size": len(raw), "limit": MAX_ATTACHMENT_BYTES},
            )
        cid = _bare_cid(a.id)
        ref = etree.SubElement(manifest, _q("Reference"), nsmap={"xlink": XLINK_NS})
        ref.set(f"{{{XLINK_NS}}}href", f"cid:{cid}")
        ref.set(f"{{{XLINK_NS}}}role", "XLinkRole")
        ref.set(f"{{{XLINK_NS}}}type", "simple")
        _leaf(ref, "Description", a.description)
        _leaf(ref, "AttachmentName", a.name)
        _leaf(ref, "ContentType", a.media_type)
        _leaf(ref, "ContentId", f"cid:{cid}")
        att = _sub(encoded, "Attachment")
        # How the base64 is packed (application/zip: a ZIP wrapping the file), as imported; else the file's type.
        _leaf(att, "ContentType", packed.get(a.sha256, a.media_type))
        _leaf(att, "ContentId", cid)
        _leaf(att, "Description", a.description)
        _leaf(att, "ContentTransferEncoded", base64.b64encode(raw).decode("ascii"))
        _leaf(att, "AttachmentName", a.name)
