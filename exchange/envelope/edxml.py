"""The edXML codec: QCVN 102:2016 packages to envelopes and back.

E-Office systems speak edXML; the bus speaks envelopes (docs/ENVELOPE.md). This
module is the only place where edXML names appear. The shape follows the public
national-hub SDK sample (``edoc_new.edxml``) and the implementations that agree
with it::

    <edXML xmlns="http://www.mic.gov.vn/TBT/QCVN_102_2016" xmlns:xsi=… xmlns:xsd=…>
      <edXML:edXMLEnvelope xmlns:edXML="http://www.mic.gov.vn/TBT/QCVN_102_2016">
        <edXML:edXMLHeader>
          <edXML:MessageHeader>…</edXML:MessageHeader>   (a status package: <edXML:Status>)
          <edXML:TraceHeaderList>TraceHeader*, Bussiness</edXML:TraceHeaderList>
          <edXML:Signature/>
        </edXML:edXMLHeader>
        <edXML:edXMLBody><edXML:edXMLManifest version="1.0">Reference*</edXML:edXMLManifest></edXML:edXMLBody>
      </edXML:edXMLEnvelope>
      <AttachmentEncoded><Attachment>… base64 …</Attachment>*</AttachmentEncoded>
    </edXML>

Import is tolerant of the variants seen in the wild (a bare ``edXMLEnvelope``
root, ``Manifest`` for ``edXMLManifest``, ``DigitalSignature`` or an XMLDSig
``ds:Signature``, a status carried as a ``MessageHeader`` with a ``StatusCode``);
export always writes the shape above. docs/EDXML.md has the field mapping.

Everything an envelope has no field for is kept in ``DocumentInfo.extra`` as
``(path, text)`` pairs, the path being the element path below ``MessageHeader``
(``OtherInfo/SphereOfPromulgation``, ``ToPlaces/Place``, ``To[000.00.00.H41]/Email``)
or below ``TraceHeaderList`` (``Bussiness/BussinessDocReason``,
``TraceHeaderList/@id``), so export can put each value back where it came from.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

from lxml import etree

from exchange.envelope.codes import AGENCY_CODE_RE
from exchange.envelope.model import (
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
    ResponseRef,
    SignerInfo,
    StaffInfo,
    StatusCode,
    StatusInfo,
    SteeringType,
    new_message_id,
    utcnow,
)
from exchange.envelope.parse import XmlLimits, parse_xml
from exchange.errors import (
    AttachmentDigestError,
    AttachmentError,
    EdxmlError,
    InvalidAgencyCodeError,
    PayloadTooLargeError,
    UnknownAgencyError,
    XmlMalformedError,
)

__all__ = [
    "EDXML_LIMITS",
    "EDXML_NS",
    "MAX_ATTACHMENT_BYTES",
    "VIETNAM_TZ",
    "DocumentIdLookup",
    "DocumentResolver",
    "EdxmlPackage",
    "canonical_extra",
    "document_key",
    "code_text",
    "edxml_document_id",
    "reference_of",
    "export_package",
    "import_package",
]

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

_MAX_CODE_NUMBER, _MAX_CODE_NOTATION, _MAX_SUBJECT = 11, 30, 500

# MessageHeader children in the order export writes them; extras of an unknown
# top-level element go after the last of these.
_SLOTS = ("From", "To", "Code", "PromulgationInfo", "DocumentType", "Subject", "Content", "SignerInfo",
          "DueDate", "ToPlaces", "OtherInfo", "ResponseFor", "SteeringType", "DocumentId")
_SLOT_RANK = {name: i for i, name in enumerate(_SLOTS)}
_UNKNOWN_RANK = len(_SLOTS)
_TRACE_RANK = {"TraceHeaderList": _UNKNOWN_RANK + 1, "Bussiness": _UNKNOWN_RANK + 2}

_SEGMENT_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\[(?P<index>\d+)\])?$")
_TO_RE = re.compile(r"^To\[(?P<code>[^\]/]+)\]$")
_DATE_RE = re.compile(r"^(\d{4})[/-](\d{2})[/-](\d{2})$")


# -- public values -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdxmlPackage:
    """An imported edXML package: the envelope it maps to, attachment bytes, and raw extras.

    ``signature_xml`` is the package's own XMLDSig element, serialized as received
    (None when absent or empty). It is kept for audit only: it is never verified
    here and never re-emitted (see docs/EDXML.md). ``unresolved`` lists the edXML
    DocumentIds that the resolver could not map to a message id.
    """

    envelope: Envelope
    attachment_data: dict[str, bytes] = field(default_factory=dict)
    sha256: str = ""
    signature_xml: bytes | None = None
    signature_algorithm: str = ""
    unresolved: tuple[str, ...] = ()


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
    return ResponseRef(organ_id=sender, code=code, promulgation_date=day,
                       document_id=doc.document_id or edxml_document_id(sender, day, code))


def document_key(document_id: str) -> str:
    """A stable UUID for an edXML DocumentId: what a status answering an unresolved document points to.

    It is not the message id of any envelope; the adapter should pass a resolver
    so that statuses point to the real document message.
    """
    return str(uuid.uuid5(_DOCUMENT_KEY_NS, document_id))


# -- import --------------------------------------------------------------------------


def import_package(
    data: bytes,
    *,
    created_at: datetime | None = None,
    message_id: str | None = None,
    resolve: DocumentResolver | None = None,
    agencies: Container[str] | None = None,
    limits: XmlLimits = EDXML_LIMITS,
) -> EdxmlPackage:
    """Read an edXML document or status package into an envelope.

    ``message_id`` and ``created_at`` are the envelope's own (edXML has neither);
    they default to a new UUID and now. ``resolve`` maps an edXML DocumentId to a
    message id: it sets ``relates_to`` of revoke/update/replace documents and
    ``response_for`` of statuses. ``agencies`` (e.g. the Directory) refuses unknown
    agency codes. Raises EdxmlError (with the element path), AttachmentError,
    InvalidAgencyCodeError, UnknownAgencyError, PayloadTooLargeError and the
    hardened parser's XmlSecurityError / XmlTooLargeError / XmlMalformedError.
    """
    if created_at is not None and created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware (UTC)")
    root = _parse(data, limits)
    ctx = _Import(resolve=resolve, agencies=agencies)
    envelope_el, root_path = _envelope_element(root)
    header_el = _require(envelope_el, "edXMLHeader", root_path)
    header_path = f"{root_path}/edXMLHeader"
    mid, at = message_id or new_message_id(), created_at or utcnow()
    message_header = _first(header_el, "MessageHeader")
    status_el = _first(header_el, "Status")
    if status_el is None and message_header is not None and _first(message_header, "StatusCode") is not None:
        status_el = message_header  # a variant that writes the status as a MessageHeader
    if status_el is not None:
        path = f"{header_path}/{etree.QName(status_el).localname}"
        header = ctx.status_header(status_el, path, message_id=mid, created_at=at)
        envelope, attachment_data = Envelope(header=header), {}
    elif message_header is not None:
        header, trace = ctx.document_header(header_el, message_header, header_path, message_id=mid, created_at=at)
        attachments, attachment_data = _attachments(root, envelope_el, root_path)
        envelope = Envelope(header=header, attachments=attachments, trace=trace)
    else:
        raise EdxmlError(
            f"{header_path} has neither MessageHeader nor Status; this is not an edXML document or "
            "status package"
        )
    signature_xml, algorithm = _signature(header_el)
    return EdxmlPackage(
        envelope=envelope,
        attachment_data=attachment_data,
        sha256=hashlib.sha256(data).hexdigest(),
        signature_xml=signature_xml,
        signature_algorithm=algorithm,
        unresolved=tuple(ctx.unresolved),
    )


def _parse(data: bytes, limits: XmlLimits) -> etree._Element:
    try:
        return parse_xml(data, limits)
    except XmlMalformedError as exc:
        if "text node too long" in exc.message.lower():
            raise PayloadTooLargeError(
                f"a text node of the edXML package (an attachment's base64) is over {MAX_TEXT_NODE_CHARS:,} "
                f"characters: an attachment can be at most {MAX_ATTACHMENT_BYTES:,} bytes here; send larger "
                "files through another channel or split them",
                detail={"limit": MAX_ATTACHMENT_BYTES},
            ) from exc
        raise


def _envelope_element(root: etree._Element) -> tuple[etree._Element, str]:
    """The ``edXMLEnvelope`` element and its path, under an ``edXML`` wrapper or as the root itself."""
    name = etree.QName(root)
    if name.namespace == EDXML_NS and name.localname == "edXMLEnvelope":
        return root, "edXMLEnvelope"
    if name.localname == "edXML" and name.namespace in (EDXML_NS, None):
        envelope = _first(root, "edXMLEnvelope")
        if envelope is not None and etree.QName(envelope).namespace == EDXML_NS:
            return envelope, "edXML/edXMLEnvelope"
        raise EdxmlError(f"edXML has no edXMLEnvelope in namespace {EDXML_NS}; this is not an edXML package")
    raise EdxmlError(
        f"the root element is {root.tag}, not an edXML package (expected edXML or edXMLEnvelope in "
        f"namespace {EDXML_NS})"
    )


@dataclass
class _Import:
    """Per-call import state: the hooks and what they could not resolve."""

    resolve: DocumentResolver | None
    agencies: Container[str] | None
    unresolved: list[str] = field(default_factory=list)

    # -- agencies and references ---------------------------------------------------

    def agency(self, code: str, path: str, name: str = "") -> AgencyRef:
        try:
            ref = AgencyRef(code=code, name=name)
        except InvalidAgencyCodeError as exc:
            raise InvalidAgencyCodeError(f"{path}: {exc.message}") from exc
        if self.agencies is not None and code not in self.agencies:
            raise UnknownAgencyError(
                f"{path}: agency {code} is not in the directory; check the code or update the directory"
            )
        return ref

    def message_id_of(self, document_id: str) -> str | None:
        found = self.resolve(document_id) if self.resolve is not None and document_id else None
        if found is None and document_id:
            self.unresolved.append(document_id)
        return found

    def party(self, el: etree._Element, path: str, extra: list[tuple[str, str]] | None,
              key: str = "") -> AgencyRef:
        code = _required_text(el, "OrganId", path).strip()
        name_el = _first(el, "OrganName")
        agency = self.agency(code, f"{path}/OrganId", "" if name_el is None else name_el.text or "")
        if extra is not None:
            for child in _elements(el):
                local = etree.QName(child).localname
                if local not in ("OrganId", "OrganName"):
                    _capture(child, f"{key}/{local}", extra)
        return agency

    # -- document packages ---------------------------------------------------------

    def document_header(self, header_el: etree._Element, mh: etree._Element, header_path: str, *,
                        message_id: str, created_at: datetime) -> tuple[Header, tuple[Hop, ...]]:
        path = f"{header_path}/MessageHeader"
        extra: list[tuple[str, str]] = []
        sender: AgencyRef | None = None
        recipients: list[AgencyRef] = []
        values: dict[str, object] = {}
        response_for: list[ResponseRef] = []
        for child in _elements(mh):
            local = etree.QName(child).localname
            if local == "From":
                if sender is not None:
                    raise EdxmlError(f"{path} has more than one From; a document has one sender")
                sender = self.party(child, f"{path}/From", extra, "From")
            elif local == "To":
                to_path = f"{path}/To[{len(recipients) + 1}]"
                code = _required_text(child, "OrganId", to_path).strip()
                if any(r.code == code for r in recipients):
                    raise EdxmlError(f"{to_path}: recipient {code} is listed twice; list each agency once")
                recipients.append(self.party(child, to_path, extra, f"To[{code}]"))
            elif local == "Code":
                values["code"] = _code(child, f"{path}/Code", extra)
            elif local == "PromulgationInfo":
                values["promulgation"] = _promulgation(child, f"{path}/PromulgationInfo", extra)
            elif local == "DocumentType":
                values["document_type"] = _document_type(child, f"{path}/DocumentType", extra)
            elif local == "Subject":
                values["subject"] = child.text or ""
            elif local == "Content":
                values["content"] = child.text or ""
            elif local == "SignerInfo":
                values["signer"] = _signer(child, f"{path}/SignerInfo", extra)
            elif local == "DueDate":
                text = (child.text or "").strip()
                values["due_date"] = _date(text, f"{path}/DueDate") if text else None
            elif local == "OtherInfo":
                values["priority"] = _other_info(child, f"{path}/OtherInfo", extra)
            elif local == "ResponseFor":
                response_for.append(self.response_ref(child, f"{path}/ResponseFor[{len(response_for) + 1}]"))
            elif local == "SteeringType":
                values["steering"] = _enum_int(SteeringType, child.text, f"{path}/SteeringType")
            elif local == "DocumentId":
                values["document_id"] = (child.text or "").strip()
            else:
                _capture(child, local, extra)
        if sender is None:
            raise EdxmlError(f"{path}/From is missing; a document package names its sender")
        if not recipients:
            raise EdxmlError(f"{path}/To is missing; a document package names at least one recipient")
        subject = values.pop("subject", None)
        if not isinstance(subject, str) or not subject.strip():
            raise EdxmlError(f"{path}/Subject is missing or empty; every official document has a subject")
        if len(subject) > _MAX_SUBJECT:
            raise EdxmlError(f"{path}/Subject has {len(subject)} characters, over the {_MAX_SUBJECT} allowed")
        if "code" not in values:
            raise EdxmlError(f"{path}/Code is missing; a document package carries its number and notation")
        trace, operation, paper, target = self.trace(header_el, header_path, extra)
        document_id = str(values.get("document_id", ""))
        if operation in (Operation.REVOKE, Operation.UPDATE) and not target:
            target = document_id  # the package repeats the header of the document it acts on
        relates_to = self.message_id_of(target) if operation is not Operation.NEW and target else None
        document = DocumentInfo(
            subject=subject,
            response_for=tuple(response_for),
            relates_to=relates_to,
            paper=paper,
            extra=canonical_extra(extra),
            **values,  # type: ignore[arg-type]
        )
        header = Header(
            message_id=message_id, kind=Kind.DOCUMENT, sender=sender, recipients=tuple(recipients),
            created_at=created_at, operation=operation, document=document,
        )
        return header, trace

    def response_ref(self, el: etree._Element, path: str) -> ResponseRef:
        organ_id = _required_text(el, "OrganId", path).strip()
        self.agency(organ_id, f"{path}/OrganId")
        code = _required_text(el, "Code", path).strip()
        promulgation_date = _date(_required_text(el, "PromulgationDate", path), f"{path}/PromulgationDate")
        document_id_el = _first(el, "DocumentId")
        document_id = "" if document_id_el is None else (document_id_el.text or "").strip()
        return ResponseRef(organ_id=organ_id, code=code, promulgation_date=promulgation_date,
                           document_id=document_id)

    def trace(self, header_el: etree._Element, header_path: str, extra: list[tuple[str, str]]
              ) -> tuple[tuple[Hop, ...], Operation, bool, str]:
        """Hops, operation, paper flag and the target DocumentId from ``TraceHeaderList``."""
        trace_list = _first(header_el, "TraceHeaderList")
        if trace_list is None:
            return (), Operation.NEW, False, ""
        path = f"{header_path}/TraceHeaderList"
        for name, value in trace_list.attrib.items():
            if not name.startswith("{"):
                extra.append((f"TraceHeaderList/@{name}", value))
        hops: list[Hop] = []
        operation, paper, target = Operation.NEW, False, ""
        for child in _elements(trace_list):
            local = etree.QName(child).localname
            if local == "TraceHeader":
                hop_path = f"{path}/TraceHeader[{len(hops) + 1}]"
                code = _required_text(child, "OrganId", hop_path).strip()
                self.agency(code, f"{hop_path}/OrganId")
                at = _timestamp(_required_text(child, "Timestamp", hop_path), f"{hop_path}/Timestamp")
                hops.append(Hop(node=code, at=at))
            elif local == "Bussiness":
                operation, paper, target = _business(child, f"{path}/Bussiness", extra)
            else:
                _capture(child, f"TraceHeaderList/{local}", extra)
        return tuple(hops), operation, paper, target

    # -- status packages -----------------------------------------------------------

    def status_header(self, el: etree._Element, path: str, *, message_id: str, created_at: datetime) -> Header:
        from_el = _first(el, "From")
        if from_el is None:
            raise EdxmlError(f"{path}/From is missing; a status package names the agency reporting it")
        sender = self.party(from_el, f"{path}/From", None)
        ref_el = _first(el, "ResponseFor")
        if ref_el is None:
            raise EdxmlError(f"{path}/ResponseFor is missing; a status package names the document it answers")
        ref = self.response_ref(ref_el, f"{path}/ResponseFor")
        document_id = ref.document_id or edxml_document_id(ref.organ_id, ref.promulgation_date, ref.code)
        code = _required_text(el, "StatusCode", path).strip()
        try:
            status_code = StatusCode(code)
        except ValueError:
            raise EdxmlError(
                f"{path}/StatusCode {code!r} is not a status code (one of "
                f"{', '.join(c.value for c in StatusCode)})"
            ) from None
        description_el = _first(el, "Description")
        timestamp_el = _first(el, "Timestamp")
        timestamp_text = "" if timestamp_el is None else (timestamp_el.text or "").strip()
        staff_el = _first(el, "StaffInfo")
        status = StatusInfo(
            response_for=self.message_id_of(document_id) or document_key(document_id),
            code=status_code,
            description="" if description_el is None else description_el.text or "",
            staff=None if staff_el is None else _staff(staff_el),
            timestamp=_timestamp(timestamp_text, f"{path}/Timestamp") if timestamp_text else None,
            document_ref=ref,
        )
        # edXML statuses have no To: they go back to the agency that sent the document.
        return Header(
            message_id=message_id, kind=Kind.STATUS, sender=sender, recipients=(AgencyRef(ref.organ_id),),
            created_at=created_at, status=status,
        )


def _code(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> DocumentCode:
    number = _required_text(el, "CodeNumber", path).strip()
    notation_el = _first(el, "CodeNotation")
    notation = "" if notation_el is None else (notation_el.text or "").strip()
    if len(number) > _MAX_CODE_NUMBER:
        raise EdxmlError(f"{path}/CodeNumber {number!r} is longer than {_MAX_CODE_NUMBER} characters")
    if len(notation) > _MAX_CODE_NOTATION:
        raise EdxmlError(f"{path}/CodeNotation {notation!r} is longer than {_MAX_CODE_NOTATION} characters")
    _capture_rest(el, "Code", ("CodeNumber", "CodeNotation"), extra)
    return DocumentCode(number=number, notation=notation)


def _promulgation(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> Promulgation:
    place_el = _first(el, "Place")
    when = _date(_required_text(el, "PromulgationDate", path), f"{path}/PromulgationDate")
    _capture_rest(el, "PromulgationInfo", ("Place", "PromulgationDate"), extra)
    return Promulgation(place="" if place_el is None else place_el.text or "", date=when)


def _document_type(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> DocumentType:
    type_el, detail_el, name_el = _first(el, "Type"), _first(el, "TypeDetail"), _first(el, "TypeName")
    _capture_rest(el, "DocumentType", ("Type", "TypeDetail", "TypeName"), extra)
    return DocumentType(
        type=1 if type_el is None else _int(type_el.text, f"{path}/Type"),
        detail=0 if detail_el is None or not (detail_el.text or "").strip()
        else _int(detail_el.text, f"{path}/TypeDetail"),
        name="" if name_el is None else name_el.text or "",
    )


def _signer(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> SignerInfo:
    del path
    _capture_rest(el, "SignerInfo", ("Competence", "Position", "FullName"), extra)
    return SignerInfo(competence=_opt_text(el, "Competence"), position=_opt_text(el, "Position"),
                      full_name=_opt_text(el, "FullName"))


def _other_info(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> Priority:
    priority_el = _first(el, "Priority")
    _capture_rest(el, "OtherInfo", ("Priority",), extra)
    if priority_el is None or not (priority_el.text or "").strip():
        return Priority.NORMAL
    return _enum_int(Priority, priority_el.text, f"{path}/Priority")


def _business(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> tuple[Operation, bool, str]:
    """Operation, paper flag and the DocumentId acted on, from ``Bussiness``; the rest goes to extras."""
    operation, paper = Operation.NEW, False
    for child in _elements(el):
        local = etree.QName(child).localname
        text = (child.text or "").strip()
        if local == "BussinessDocType":
            code = _int(text, f"{path}/BussinessDocType")
            if not 0 <= code < len(Operation):
                raise EdxmlError(
                    f"{path}/BussinessDocType {code} is not 0 (new), 1 (revoke), 2 (update) or 3 (replace)"
                )
            operation = list(Operation)[code]
        elif local == "Paper":
            if text not in ("", "0", "1", "true", "false"):
                raise EdxmlError(f"{path}/Paper {text!r} is not 0 or 1")
            paper = text in ("1", "true")
        else:
            _capture(child, f"Bussiness/{local}", extra)
    target = ""
    if operation is Operation.REPLACE:
        for info_list in _children(el, "ReplacementInfoList"):
            for info in _children(info_list, "ReplacementInfo"):
                target = target or _opt_text(info, "DocumentId").strip()
        if not target:
            raise EdxmlError(
                f"{path}/ReplacementInfoList/ReplacementInfo/DocumentId is missing; a replace package names "
                "the document it replaces"
            )
    elif operation is not Operation.NEW:
        target = _opt_text(el, "DocumentId").strip()
    return operation, paper, target


def _staff(el: etree._Element) -> StaffInfo:
    return StaffInfo(department=_opt_text(el, "Department"), staff=_opt_text(el, "Staff"),
                     email=_opt_text(el, "Email"), mobile=_opt_text(el, "Mobile"))


def _attachments(root: etree._Element, envelope_el: etree._Element, root_path: str
                 ) -> tuple[tuple[Attachment, ...], dict[str, bytes]]:
    """The manifest's references, matched to the base64 ``Attachment`` elements by ContentId."""
    body = _first(envelope_el, "edXMLBody")
    references: list[tuple[str, etree._Element, str]] = []
    if body is not None:
        manifest = _first(body, "edXMLManifest")
        if manifest is None:
            manifest = _first(body, "Manifest")
        if manifest is not None:
            manifest_path = f"{root_path}/edXMLBody/{etree.QName(manifest).localname}"
            for i, ref in enumerate(_children(manifest, "Reference"), 1):
                path = f"{manifest_path}/Reference[{i}]"
                content_id = _bare_cid(_opt_text(ref, "ContentId") or ref.get(f"{{{XLINK_NS}}}href", ""))
                if not content_id:
                    raise AttachmentError(f"{path}/ContentId is missing; each reference names its attachment")
                if any(content_id == seen for seen, _, _ in references):
                    raise AttachmentError(f"{path}: ContentId {content_id!r} is listed twice in the manifest")
                references.append((content_id, ref, path))
    # Attachments sit beside edXMLEnvelope (inside AttachmentEncoded), or inside a bare-envelope root.
    holder = root if root is not envelope_el else envelope_el
    holder_path = "edXML" if root is not envelope_el else root_path
    encoded: dict[str, tuple[etree._Element, str]] = {}
    containers = [(holder, holder_path)] + [
        (c, f"{holder_path}/AttachmentEncoded[{i}]") for i, c in enumerate(_children(holder, "AttachmentEncoded"), 1)
    ]
    for container, container_path in containers:
        for i, att in enumerate(_children(container, "Attachment"), 1):
            path = f"{container_path}/Attachment[{i}]"
            content_id = _bare_cid(_required_text(att, "ContentId", path))
            if content_id in encoded:
                raise AttachmentError(f"{path}: ContentId {content_id!r} carries bytes twice")
            encoded[content_id] = (att, path)
    attachments: list[Attachment] = []
    data: dict[str, bytes] = {}
    for content_id, ref, ref_path in references:
        if content_id not in encoded:
            raise AttachmentError(
                f"{ref_path}: no Attachment carries the bytes of {content_id!r}; the package is incomplete"
            )
        att, att_path = encoded.pop(content_id)
        payload_el = _first(att, "ContentTransferEncoded")
        if payload_el is None:
            raise AttachmentError(f"{att_path}/ContentTransferEncoded is missing; it carries the base64 bytes")
        raw = _base64(payload_el.text or "", f"{att_path}/ContentTransferEncoded")
        name = _opt_text(ref, "AttachmentName") or _opt_text(att, "AttachmentName")
        if not name.strip():
            raise AttachmentError(f"{ref_path}/AttachmentName is missing; each attachment has a file name")
        media_type = (_opt_text(ref, "ContentType") or _opt_text(att, "ContentType")).strip()
        attachments.append(Attachment.of(
            name, raw, media_type or "application/octet-stream", id=content_id,
            description=_opt_text(ref, "Description"),
        ))
        data[content_id] = raw
    if encoded:
        stray = ", ".join(sorted(encoded))
        raise AttachmentError(f"attachments {stray} are not listed in the manifest; every file needs a Reference")
    return tuple(attachments), data


def _signature(header_el: etree._Element) -> tuple[bytes | None, str]:
    """The package's own signature element, verbatim, and its SignatureMethod (for audit only)."""
    for child in _elements(header_el, any_namespace=True):
        if etree.QName(child).localname not in ("Signature", "DigitalSignature"):
            continue
        if len(child) == 0 and not (child.text or "").strip():
            return None, ""  # the empty placeholder most packages carry
        methods = [m.get("Algorithm", "") for m in child.iter() if isinstance(m.tag, str)
                   and etree.QName(m).localname == "SignatureMethod"]
        return etree.tostring(child, encoding="UTF-8"), methods[0] if methods else ""
    return None, ""


# -- export --------------------------------------------------------------------------


def export_package(
    envelope: Envelope,
    attachment_data: Mapping[str, bytes],
    *,
    document_id_of: DocumentIdLookup | None = None,
) -> bytes:
    """Write a document or status envelope as an edXML package (UTF-8 bytes).

    Attachment bytes must match the manifest (size and SHA-256). Receipts have no
    edXML form (EdxmlError). No signature is emitted: a document package gets the
    empty ``Signature`` placeholder the national sample carries. ``document_id_of``
    maps ``relates_to`` (a message id) to the edXML DocumentId of a revoke /
    update / replace target when the extras do not already name it.
    """
    header = envelope.header
    if header.kind is Kind.RECEIPT:
        raise EdxmlError(
            "a transport receipt has no edXML form; E-Office systems learn delivery outcomes from the "
            "hub's sent-package listing, not from a package"
        )
    root = etree.Element(_q("edXML"), nsmap={None: EDXML_NS, "xsi": XSI_NS, "xsd": XSD_NS})
    env = etree.SubElement(root, _q("edXMLEnvelope"), nsmap={"edXML": EDXML_NS})
    header_el = etree.SubElement(env, _q("edXMLHeader"))
    try:
        if header.kind is Kind.STATUS:
            assert header.status is not None
            _export_status(header_el, header.sender, header.status)
        else:
            assert header.document is not None
            _export_document(header_el, envelope, header.document, document_id_of)
            etree.SubElement(header_el, _q("Signature"))
            _export_attachments(root, env, envelope.attachments, attachment_data)
    except ValueError as exc:
        # lxml refuses control characters XML 1.0 cannot carry.
        raise EdxmlError(
            f"envelope {header.message_id} cannot be written as edXML: {exc}; fix that field and retry"
        ) from exc
    etree.indent(root, space="  ")
    out = etree.tostring(root, encoding="UTF-8", xml_declaration=True)
    if len(out) > EDXML_LIMITS.max_bytes:
        raise PayloadTooLargeError(
            f"the edXML package would be {len(out):,} bytes, over the {EDXML_LIMITS.max_bytes:,} a package may "
            "have; send fewer or smaller attachments",
            detail={"size": len(out), "limit": EDXML_LIMITS.max_bytes},
        )
    return out


def _export_document(header_el: etree._Element, envelope: Envelope, doc: DocumentInfo,
                     document_id_of: DocumentIdLookup | None) -> None:
    header = envelope.header
    extra = _target_extras(header.operation, doc, header.recipients, document_id_of)
    groups = _group(extra)
    mh = etree.SubElement(header_el, _q("MessageHeader"))
    _export_party(mh, "From", header.sender, groups.pop("From", []))
    for recipient in header.recipients:
        _export_party(mh, "To", recipient, groups.pop(f"To[{recipient.code}]", []))
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
        _leaf(trace_header, "OrganId", hop.node)
        _leaf(trace_header, "Timestamp", _format_timestamp(hop.at))
    bussiness = _sub(trace_list, "Bussiness")
    _leaf(bussiness, "BussinessDocType", str(header.operation.edxml_code))
    _materialize_all(bussiness, business)
    _leaf(bussiness, "Paper", "1" if doc.paper else "0")
    _materialize_all(trace_list, [(k, v) for k, v in trace_attrs if not k.startswith("@")])


def _target_extras(operation: Operation, doc: DocumentInfo, recipients: Iterable[AgencyRef],
                   document_id_of: DocumentIdLookup | None) -> tuple[tuple[str, str], ...]:
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
        extra += tuple(("Bussiness/ReplacementInfoList/ReplacementInfo/OrganIdList/OrganId", r.code)
                       for r in recipients)
    elif operation in (Operation.REVOKE, Operation.UPDATE) and "Bussiness/DocumentId" not in keys:
        target = document_id_of(doc.relates_to) if document_id_of and doc.relates_to else None
        if target and target != doc.document_id:
            extra += (("Bussiness/DocumentId", target),)
    return extra


def _export_party(parent: etree._Element, local: str, agency: AgencyRef, pairs: list[tuple[str, str]]) -> None:
    el = _sub(parent, local)
    _leaf(el, "OrganId", agency.code)
    _materialize_all(el, [(k, v) for k, v in pairs if k == "OrganizationInCharge"])
    _leaf(el, "OrganName", agency.name)
    _materialize_all(el, [(k, v) for k, v in pairs if k != "OrganizationInCharge"])


def _export_status(header_el: etree._Element, sender: AgencyRef, status: StatusInfo) -> None:
    ref = status.document_ref
    if ref is None:
        raise EdxmlError(
            "a status needs the edXML identification of the document it answers (StatusInfo.document_ref: "
            "OrganId, Code, PromulgationDate, DocumentId) to be written as an edXML status package"
        )
    el = _sub(header_el, "Status")
    _export_party(el, "From", sender, [])
    r = _sub(el, "ResponseFor")
    _leaf(r, "OrganId", ref.organ_id)
    _leaf(r, "Code", ref.code)
    _leaf(r, "PromulgationDate", _format_date(ref.promulgation_date))
    _leaf(r, "DocumentId", ref.document_id or edxml_document_id(ref.organ_id, ref.promulgation_date, ref.code))
    if status.staff is not None:
        staff = _sub(el, "StaffInfo")
        _leaf(staff, "Department", status.staff.department)
        _leaf(staff, "Staff", status.staff.staff)
        _leaf(staff, "Email", status.staff.email)
        _leaf(staff, "Mobile", status.staff.mobile)
    _leaf(el, "StatusCode", status.code.value)
    if status.description:
        _leaf(el, "Description", status.description)
    if status.timestamp is not None:
        _leaf(el, "Timestamp", _format_timestamp(status.timestamp))


def _export_attachments(root: etree._Element, env: etree._Element, attachments: tuple[Attachment, ...],
                        attachment_data: Mapping[str, bytes]) -> None:
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
        _leaf(att, "ContentType", a.media_type)
        _leaf(att, "ContentId", cid)
        _leaf(att, "Description", a.description)
        _leaf(att, "ContentTransferEncoded", base64.b64encode(raw).decode("ascii"))
        _leaf(att, "AttachmentName", a.name)


# -- extras: element paths <-> (key, value) pairs ------------------------------------


def canonical_extra(extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``extra`` in the order export writes it (stable within a group): what import returns."""
    def rank(pair: tuple[str, str]) -> int:
        first = pair[0].split("/", 1)[0]
        if _TO_RE.match(first):
            return _SLOT_RANK["To"]
        return _SLOT_RANK.get(first, _TRACE_RANK.get(first, _UNKNOWN_RANK))
    return tuple(sorted(extra, key=rank))


def _capture(el: etree._Element, key: str, out: list[tuple[str, str]]) -> None:
    """Record ``el`` as extras: a leaf as ``(key, text)``, a container by its children's paths.

    A repeated container gets a ``[i]`` index (0-based among same-named siblings)
    so that export can rebuild the grouping; leaves are appended in order.
    Attributes are kept on containers only.
    """
    kids = _elements(el)
    if not kids:
        out.append((key, el.text or ""))
        return
    for name, value in el.attrib.items():
        if not name.startswith("{"):
            out.append((f"{key}/@{name}", value))
    names = [etree.QName(k).localname for k in kids]
    seen: dict[str, int] = {}
    for kid, name in zip(kids, names):
        index = seen.get(name, 0)
        seen[name] = index + 1
        if _elements(kid) and names.count(name) > 1:
            _capture(kid, f"{key}/{name}[{index}]", out)
        else:
            _capture(kid, f"{key}/{name}", out)


def _capture_rest(el: etree._Element, key: str, known: tuple[str, ...], out: list[tuple[str, str]]) -> None:
    for child in _elements(el):
        local = etree.QName(child).localname
        if local not in known:
            _capture(child, f"{key}/{local}", out)


def _group(extra: Iterable[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Extras by first path segment, the rest of the path as key, order kept."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in extra:
        first, _, rest = key.partition("/")
        groups.setdefault(first, []).append((rest, value))
    return groups


def _materialize_all(parent: etree._Element, pairs: Iterable[tuple[str, str]]) -> None:
    for key, value in pairs:
        _materialize(parent, key, value)


def _materialize(parent: etree._Element, key: str, value: str) -> None:
    """Put one extra back: intermediate segments are found or created, the last one appended.

    Keys that are not element paths (free-form extras from elsewhere) are not
    edXML fields and are skipped.
    """
    if not key:
        return
    *inner, last = key.split("/")
    steps: list[tuple[str, int]] = []
    for segment in inner:
        m = _SEGMENT_RE.match(segment)
        if m is None:
            return
        steps.append((m["name"], int(m["index"] or 0)))
    if last.startswith("@"):
        if _SEGMENT_RE.match(last[1:]) is None or "[" in last:
            return
    elif _SEGMENT_RE.match(last) is None or "[" in last:
        return
    for name, index in steps:
        same = _children(parent, name)
        while len(same) <= index:
            same.append(_sub(parent, name))
        parent = same[index]
    if last.startswith("@"):
        parent.set(last[1:], value)
    else:
        _leaf(parent, last, value)


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
    text = (_require(parent, local, path).text or "")
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
    return parsed.astimezone(timezone.utc)


def _format_timestamp(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"datetime {value!r} has no timezone")
    return value.astimezone(VIETNAM_TZ).strftime("%Y/%m/%d %H:%M:%S")


def _bare_cid(content_id: str) -> str:
    value = content_id.strip()
    return value[4:] if value.lower().startswith("cid:") else value


def _base64(text: str, path: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EdxmlError(f"{path} is not valid base64 ({exc}); the attachment bytes are corrupt") from None
