"""Import: an edXML package as real senders write it, to an envelope (docs/EDXML.md).

Tolerant of every shape listed in docs/EDXML.md ("Tolerated deviations"), and
lossless: what the model has no field for stays in the package's source
(:mod:`exchange.envelope.edxml.source`), carried inside the envelope, and the
element paths of the unmodelled parts are listed in ``EdxmlPackage.carried``.
What cannot be read is refused with a typed error whose message starts with the
element's path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container
from dataclasses import dataclass, field, replace
from datetime import datetime

from lxml import etree

from exchange.envelope.edxml._common import (
    _MAX_CODE_NOTATION,
    _MAX_CODE_NUMBER,
    _MAX_SUBJECT,
    EDXML_LIMITS,
    EDXML_NS,
    MAX_ATTACHMENT_BYTES,
    MAX_TEXT_NODE_CHARS,
    XLINK_NS,
    XMLDSIG_NS,
    DocumentResolver,
    _bare_cid,
    _base64,
    _children,
    _date,
    _elements,
    _enum_int,
    _first,
    _int,
    _opt_text,
    _require,
    _required_text,
    _timestamp,
    document_key,
    edxml_document_id,
)
from exchange.envelope.edxml.extras import _capture, _capture_rest, canonical_extra
from exchange.envelope.edxml.ids import OrganIdMapper, OrganIdUse, RefusedRecipient, map_organ_id, refusal
from exchange.envelope.edxml.source import PackageSource
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
    AttachmentError,
    EdxmlError,
    ExchangeError,
    PayloadTooLargeError,
    XmlMalformedError,
)

__all__ = ["EdxmlPackage", "LegacySignature", "import_package"]

#: Children of the wrapper, envelope and header that the reader understands; any other is carried verbatim.
_KNOWN_ROOT = {"edXMLEnvelope", "AttachmentEncoded", "Attachment"}
_KNOWN_ENVELOPE = {"edXMLHeader", "edXMLBody", "edXMLAttachments", "AttachmentEncoded", "Attachment"}
_KNOWN_HEADER = {"MessageHeader", "Status", "TraceHeaderList", "Signature", "DigitalSignature"}
_KNOWN_BODY = {"edXMLManifest", "Manifest", "Content"}


@dataclass(frozen=True, slots=True)
class LegacySignature:
    """The package's own signature, kept verbatim as evidence: never verified, never a reason to refuse.

    ``notes`` say why it could not be trusted even if it verified (an unprefixed
    ``Signature`` in the QCVN namespace is not XMLDSig at all, rsa-sha1, inclusive
    c14n, ``URI=""``, a certificate too short to be one).
    """

    xml: bytes
    element: str
    algorithm: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EdxmlPackage:
    """An imported edXML package: the envelope it maps to, its attachment bytes, and what import noticed.

    ``signature_xml`` / ``signature_algorithm`` / ``signature`` describe the package's
    own signature (None when absent or an empty placeholder); it stays in the
    package's source and is never trusted (docs/EDXML.md). ``unresolved`` lists the
    edXML DocumentIds the resolver could not map to a message id. ``organ_ids``
    lists every organ id with the agency it maps to; ``refused`` the recipients
    (``To``) the bus cannot route to, each with its error, which are left out of
    the envelope. ``carried`` names the elements the model has no field for (kept
    verbatim in the source); ``notes`` the tolerated deviations met.
    """

    envelope: Envelope
    attachment_data: dict[str, bytes] = field(default_factory=dict)
    sha256: str = ""
    signature_xml: bytes | None = None
    signature_algorithm: str = ""
    unresolved: tuple[str, ...] = ()
    organ_ids: tuple[OrganIdUse, ...] = ()
    refused: tuple[RefusedRecipient, ...] = ()
    carried: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    signature: LegacySignature | None = None
    #: attachment id -> (manifest ContentType, AttachmentEncoded ContentType), as written.
    content_types: dict[str, tuple[str, str]] = field(default_factory=dict)


# -- import --------------------------------------------------------------------------


def import_package(
    data: bytes,
    *,
    created_at: datetime | None = None,
    message_id: str | None = None,
    resolve: DocumentResolver | None = None,
    agencies: Container[str] | OrganIdMapper | None = None,
    limits: XmlLimits = EDXML_LIMITS,
    keep_source: bool = True,
) -> EdxmlPackage:
    """Read an edXML document or status package into an envelope.

    ``message_id`` and ``created_at`` are the envelope's own (edXML has neither);
    they default to a new UUID and now. ``resolve`` maps an edXML DocumentId to a
    message id: it sets ``relates_to`` of revoke/update/replace documents and
    ``response_for`` of statuses. ``agencies`` is the directory: with
    ``resolve_organ_id`` (exchange.routing.directory.Directory) it maps aliases;
    a plain container of codes only refuses unknown codes; None accepts any QCVN
    code. The package's source is kept in the envelope unless ``keep_source`` is
    False. Raises EdxmlError (with the element path), AttachmentError,
    InvalidAgencyCodeError, UnknownAgencyError, PayloadTooLargeError and the
    hardened parser's XmlSecurityError / XmlTooLargeError / XmlMalformedError. A
    recipient that cannot be mapped is not an error while another one can: it is
    listed in ``refused``.
    """
    if created_at is not None and created_at.tzinfo is None:
        raise ValueError("created_at must be timezone-aware (UTC)")
    root = _parse(data, limits)
    ctx = _Import(resolve=resolve, agencies=agencies)
    envelope_el, root_path = _envelope_element(root)
    header_el = _require(envelope_el, "edXMLHeader", root_path)
    header_path = f"{root_path}/edXMLHeader"
    ctx.note_unknown(root, envelope_el, header_el, root_path)
    mid, at = message_id or new_message_id(), created_at or utcnow()
    message_header = _first(header_el, "MessageHeader")
    status_el = _first(header_el, "Status")
    if status_el is None and message_header is not None and _first(message_header, "StatusCode") is not None:
        status_el = message_header  # the hub's own form: the status inside MessageHeader
    payloads: list[tuple[str, bytes]] = []
    content_types: dict[str, tuple[str, str]] = {}
    if status_el is not None:
        path = f"{header_path}/{etree.QName(status_el).localname}"
        header = ctx.status_header(status_el, path, message_id=mid, created_at=at)
        envelope = Envelope(header=header)
        attachment_data: dict[str, bytes] = {}
    elif message_header is not None:
        header, trace = ctx.document_header(header_el, message_header, header_path, message_id=mid, created_at=at)
        attachments, attachment_data, payloads, content_types = _attachments(root, envelope_el, root_path, ctx)
        if ctx.attachment_extra and header.document is not None:
            header = replace(
                header, document=replace(header.document, extra=header.document.extra + tuple(ctx.attachment_extra))
            )
        if header.document is not None and not header.document.content:
            body_content = _body_content(envelope_el)
            if body_content:
                ctx.notes.append(f"{root_path}/edXMLBody/Content read as the document's content (older form)")
                header = replace(header, document=replace(header.document, content=body_content))
        envelope = Envelope(header=header, attachments=attachments, trace=trace)
    else:
        raise EdxmlError(
            f"{header_path} has neither MessageHeader nor Status; this is not an edXML document or status package"
        )
    signature = _signature(header_el, header_path)
    if keep_source:
        blob = PackageSource.cut(data, payloads).encode()
        h = envelope.header
        if h.document is not None:
            h = replace(h, document=replace(h.document, source=blob))
        elif h.status is not None:
            h = replace(h, status=replace(h.status, source=blob))
        envelope = replace(envelope, header=h)
    return EdxmlPackage(
        envelope=envelope,
        attachment_data=attachment_data,
        sha256=hashlib.sha256(data).hexdigest(),
        signature_xml=signature.xml if signature else None,
        signature_algorithm=signature.algorithm if signature else "",
        unresolved=tuple(ctx.unresolved),
        organ_ids=tuple(ctx.uses),
        refused=tuple(ctx.refused),
        carried=tuple(ctx.carried),
        notes=tuple(ctx.notes),
        signature=signature,
        content_types=content_types,
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
        f"the root element is {root.tag!s}, not an edXML package (expected edXML or edXMLEnvelope in "
        f"namespace {EDXML_NS})"
    )


@dataclass
class _Import:
    """Per-call import state: the hooks, and what import mapped, refused, carried and noticed."""

    resolve: DocumentResolver | None
    agencies: Container[str] | OrganIdMapper | None
    unresolved: list[str] = field(default_factory=list)
    uses: list[OrganIdUse] = field(default_factory=list)
    refused: list[RefusedRecipient] = field(default_factory=list)
    carried: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    refused_errors: list[ExchangeError] = field(default_factory=list)
    attachment_extra: list[tuple[str, str]] = field(default_factory=list)

    # -- organ ids and references --------------------------------------------------

    def organ_id(self, written: str, path: str) -> str | None:
        """Record one organ id; the agency code it maps to, or None."""
        code, how = map_organ_id(written, self.agencies)
        self.uses.append(OrganIdUse(path=path, written=written, agency=code, how=how))
        return code

    def agency(self, written: str, path: str, name: str = "") -> AgencyRef:
        """An id the bus routes on: mapped to an agency, or refused naming ``path``."""
        code = self.organ_id(written, path)
        if code is None:
            raise refusal(path, written, self.uses[-1].how)
        return AgencyRef(code=code, name=name)

    def message_id_of(self, document_id: str) -> str | None:
        found = self.resolve(document_id) if self.resolve is not None and document_id else None
        if found is None and document_id:
            self.unresolved.append(document_id)
        return found

    def party(self, el: etree._Element, path: str, extra: list[tuple[str, str]] | None, key: str = "") -> AgencyRef:
        written = _required_text(el, "OrganId", path).strip()
        name_el = _first(el, "OrganName")
        agency = self.agency(written, f"{path}/OrganId", "" if name_el is None else name_el.text or "")
        if extra is not None:
            for child in _elements(el):
                local = etree.QName(child).localname
                if local not in ("OrganId", "OrganName"):
                    _capture(child, f"{key or 'To[' + agency.code + ']'}/{local}", extra)
        return agency

    def note_unknown(
        self, root: etree._Element, envelope_el: etree._Element, header_el: etree._Element, root_path: str
    ) -> None:
        """List the wrapper / envelope / header children the model has no place for (kept in the source)."""
        levels = [(envelope_el, root_path, _KNOWN_ENVELOPE), (header_el, f"{root_path}/edXMLHeader", _KNOWN_HEADER)]
        if root is not envelope_el:
            levels.insert(0, (root, "edXML", _KNOWN_ROOT))
        body = _first(envelope_el, "edXMLBody")
        if body is not None:
            levels.append((body, f"{root_path}/edXMLBody", _KNOWN_BODY))
        for parent, path, known in levels:
            for child in _elements(parent, any_namespace=True):
                name = etree.QName(child)
                if name.localname not in known or name.namespace not in (None, EDXML_NS, XMLDSIG_NS):
                    self.carried.append(f"{path}/{name.localname}")

    # -- document packages ---------------------------------------------------------

    def document_header(
        self, header_el: etree._Element, mh: etree._Element, header_path: str, *, message_id: str, created_at: datetime
    ) -> tuple[Header, tuple[Hop, ...]]:
        path = f"{header_path}/MessageHeader"
        extra: list[tuple[str, str]] = []
        sender: AgencyRef | None = None
        recipients: list[AgencyRef] = []
        written_to: list[str] = []
        values: dict[str, object] = {}
        response_for: list[ResponseRef] = []
        for child in _elements(mh, any_namespace=True):
            name = etree.QName(child)
            local = name.localname
            if name.namespace not in (None, EDXML_NS):
                self.carried.append(f"{path}/{local}")
                continue
            if local == "From":
                if sender is not None:
                    raise EdxmlError(f"{path} has more than one From; a document has one sender")
                sender = self.party(child, f"{path}/From", extra, "From")
            elif local == "To":
                to_path = f"{path}/To[{len(written_to) + 1}]"
                written = _required_text(child, "OrganId", to_path).strip()
                if written in written_to:
                    raise EdxmlError(f"{to_path}: recipient {written} is listed twice; list each agency once")
                written_to.append(written)
                try:
                    recipient = self.party(child, to_path, extra)
                except ExchangeError as exc:
                    # Per recipient: the others still get the document; the caller reports this one.
                    self.refused.append(RefusedRecipient(f"{to_path}/OrganId", written, exc.code, exc.message))
                    self.refused_errors.append(exc)
                    continue
                if any(r.code == recipient.code for r in recipients):
                    self.refused.append(
                        RefusedRecipient(
                            f"{to_path}/OrganId",
                            written,
                            "edxml-duplicate-recipient",
                            f"{to_path}/OrganId: {written} names {recipient.code}, "
                            "already a recipient; it is sent once",
                        )
                    )
                    continue
                recipients.append(recipient)
            elif local == "Code":
                values["code"] = self.code(child, f"{path}/Code", extra)
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
                ref = self.response_ref(child, f"{path}/ResponseFor[{len(response_for) + 1}]", route=False)
                if ref is not None:
                    response_for.append(ref)
            elif local == "SteeringType":
                text = (child.text or "").strip()
                if text:
                    values["steering"] = _enum_int(SteeringType, text, f"{path}/SteeringType")
            elif local == "DocumentId":
                values["document_id"] = (child.text or "").strip()
            else:
                self.carried.append(f"{path}/{local}")
                _capture(child, local, extra)
        if sender is None:
            raise EdxmlError(f"{path}/From is missing; a document package names its sender")
        if not recipients:
            if self.refused_errors:
                raise self.refused_errors[0]  # no recipient left: the package as a whole is refused
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
            message_id=message_id,
            kind=Kind.DOCUMENT,
            sender=sender,
            recipients=tuple(recipients),
            created_at=created_at,
            operation=operation,
            document=document,
        )
        return header, trace

    def code(self, el: etree._Element, path: str, extra: list[tuple[str, str]]) -> DocumentCode:
        number = _required_text(el, "CodeNumber", path).strip()
        notation_el = _first(el, "CodeNotation")
        notation = "" if notation_el is None else (notation_el.text or "").strip()
        if len(number) > _MAX_CODE_NUMBER:
            raise EdxmlError(f"{path}/CodeNumber {number[:80]!r} is longer than {_MAX_CODE_NUMBER} characters")
        if len(number) > 11:
            self.notes.append(f"{path}/CodeNumber has {len(number)} characters (QCVN 102 says at most 11)")
        if len(notation) > _MAX_CODE_NOTATION:
            raise EdxmlError(f"{path}/CodeNotation {notation!r} is longer than {_MAX_CODE_NOTATION} characters")
        _capture_rest(el, "Code", ("CodeNumber", "CodeNotation"), extra)
        return DocumentCode(number=number, notation=notation)

    def response_ref(self, el: etree._Element, path: str, *, route: bool) -> ResponseRef | None:
        """A ResponseFor; None when it is empty (``<ResponseFor/>`` means there is none).

        With ``route`` (a status goes back to that organ) the OrganId must map to an
        agency; otherwise it is information and kept as written, mapped or not.
        """
        if not any((c.text or "").strip() or len(c) for c in _elements(el)) and not (el.text or "").strip():
            self.notes.append(f"{path} is empty: read as absent")
            return None
        organ_id = _required_text(el, "OrganId", path).strip()
        if route:
            self.agency(organ_id, f"{path}/OrganId")
        else:
            self.organ_id(organ_id, f"{path}/OrganId")
        code = _required_text(el, "Code", path).strip()
        promulgation_date = _date(_required_text(el, "PromulgationDate", path), f"{path}/PromulgationDate")
        document_id_el = _first(el, "DocumentId")
        document_id = "" if document_id_el is None else (document_id_el.text or "").strip()
        return ResponseRef(organ_id=organ_id, code=code, promulgation_date=promulgation_date, document_id=document_id)

    def trace(
        self, header_el: etree._Element, header_path: str, extra: list[tuple[str, str]]
    ) -> tuple[tuple[Hop, ...], Operation, bool, str]:
        """Hops, operation, paper flag and the target DocumentId from ``TraceHeaderList``.

        A TraceHeader without OrganId (a hub's own relay hop) or with more children
        stays in the source as written; only OrganId + Timestamp become a Hop.
        """
        trace_list = _first(header_el, "TraceHeaderList")
        if trace_list is None:
            return (), Operation.NEW, False, ""
        path = f"{header_path}/TraceHeaderList"
        for name, value in trace_list.attrib.items():
            if not name.startswith("{"):
                extra.append((f"TraceHeaderList/@{name}", value))
        hops: list[Hop] = []
        operation, paper, target = Operation.NEW, False, ""
        index = 0
        for child in _elements(trace_list):
            local = etree.QName(child).localname
            if local == "TraceHeader":
                index += 1
                hop_path = f"{path}/TraceHeader[{index}]"
                organ_el = _first(child, "OrganId")
                organ = "" if organ_el is None else (organ_el.text or "").strip()
                stamp = _opt_text(child, "Timestamp").strip()
                at = _timestamp(stamp, f"{hop_path}/Timestamp") if stamp else None
                if organ:
                    self.organ_id(organ, f"{hop_path}/OrganId")
                else:
                    self.notes.append(f"{hop_path} has no OrganId (a relay hop): kept in the source")
                others = [
                    etree.QName(c).localname
                    for c in _elements(child)
                    if etree.QName(c).localname not in ("OrganId", "Timestamp")
                ]
                if others:
                    self.carried.extend(f"{hop_path}/{o}" for o in others)
                if organ and at is not None:
                    hops.append(Hop(node=organ, at=at))
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
        ref = None if ref_el is None else self.response_ref(ref_el, f"{path}/ResponseFor", route=True)
        if ref is None:
            raise EdxmlError(f"{path}/ResponseFor is missing or empty; a status package names the document it answers")
        recipient = self.uses[_last_use(self.uses, f"{path}/ResponseFor/OrganId")].agency
        document_id = ref.document_id or edxml_document_id(ref.organ_id, ref.promulgation_date, ref.code)
        code = _required_text(el, "StatusCode", path).strip()
        try:
            status_code = StatusCode(code)
        except ValueError:
            raise EdxmlError(
                f"{path}/StatusCode {code!r} is not a status code (one of {', '.join(c.value for c in StatusCode)})"
            ) from None
        description_el = _first(el, "Description")
        timestamp_el = _first(el, "Timestamp")
        timestamp_text = "" if timestamp_el is None else (timestamp_el.text or "").strip()
        staff_el = _first(el, "StaffInfo")
        known = {"From", "ResponseFor", "StatusCode", "Description", "Timestamp", "StaffInfo"}
        self.carried.extend(
            f"{path}/{etree.QName(c).localname}"
            for c in _elements(el, any_namespace=True)
            if etree.QName(c).localname not in known
        )
        status = StatusInfo(
            response_for=self.message_id_of(document_id) or document_key(document_id),
            code=status_code,
            description="" if description_el is None else description_el.text or "",
            staff=None if staff_el is None else _staff(staff_el),
            timestamp=_timestamp(timestamp_text, f"{path}/Timestamp") if timestamp_text else None,
            document_ref=ref,
        )
        # edXML statuses have no To: they go back to the agency that sent the document.
        assert recipient is not None
        return Header(
            message_id=message_id,
            kind=Kind.STATUS,
            sender=sender,
            recipients=(AgencyRef(recipient),),
            created_at=created_at,
            status=status,
        )


def _last_use(uses: list[OrganIdUse], path: str) -> int:
    return max(i for i, u in enumerate(uses) if u.path == path)


def _body_content(envelope_el: etree._Element) -> str:
    body = _first(envelope_el, "edXMLBody")
    return "" if body is None else _opt_text(body, "Content")


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
        detail=0
        if detail_el is None or not (detail_el.text or "").strip()
        else _int(detail_el.text, f"{path}/TypeDetail"),
        name="" if name_el is None else name_el.text or "",
    )


def _signer(el: etree._Element, path: str, extra: list[tuple[str, str]]) -> SignerInfo:
    del path
    _capture_rest(el, "SignerInfo", ("Competence", "Position", "FullName"), extra)
    return SignerInfo(
        competence=_opt_text(el, "Competence"), position=_opt_text(el, "Position"), full_name=_opt_text(el, "FullName")
    )


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


def _staff(el: etree._Element) -> StaffInfo | None:
    """The StaffInfo of a status; None when every field is empty (the hub's form always writes the element)."""
    staff = StaffInfo(
        department=_opt_text(el, "Department"),
        staff=_opt_text(el, "Staff"),
        email=_opt_text(el, "Email"),
        mobile=_opt_text(el, "Mobile"),
    )
    return None if staff == StaffInfo() else staff


#: The extras key that records how an attachment's base64 is packed (AttachmentEncoded's ContentType),
#: by the SHA-256 of its bytes (ids change on the bus, bytes do not). Not an element path: written back
#: only by this codec. See :mod:`exchange.envelope.edxml.files`.
TRANSFER_TYPE_KEY = "edxml:transfer-type/"


def _attachments(
    root: etree._Element, envelope_el: etree._Element, root_path: str, ctx: _Import
) -> tuple[tuple[Attachment, ...], dict[str, bytes], list[tuple[str, bytes]], dict[str, tuple[str, str]]]:
    """Attachments, their bytes, the base64 payloads (for the source) and both ContentTypes by id.

    The manifest's references are matched to the base64 ``Attachment`` elements by
    ContentId with every ``cid:`` prefix removed (``cid:X``, ``X`` and ``cid:cid:X``
    are one id); the ids as written stay in the source. The older form
    ``edXMLEnvelope/edXMLAttachments/Attachment`` is read too.
    """
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
    if holder is not envelope_el:
        containers += [
            (c, f"{root_path}/AttachmentEncoded[{i}]")
            for i, c in enumerate(_children(envelope_el, "AttachmentEncoded"), 1)
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
    payloads: list[tuple[str, bytes]] = []
    types: dict[str, tuple[str, str]] = {}
    extra: list[tuple[str, str]] = []
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
        payloads.append((payload_el.text or "", raw))
        name = _opt_text(ref, "AttachmentName") or _opt_text(att, "AttachmentName")
        if not name.strip():
            raise AttachmentError(f"{ref_path}/AttachmentName is missing; each attachment has a file name")
        file_type = _opt_text(ref, "ContentType").strip()
        packed_type = _opt_text(att, "ContentType").strip()
        types[content_id] = (file_type, packed_type)
        if file_type and packed_type and file_type.lower() != packed_type.lower():
            ctx.notes.append(
                f"{att_path}/ContentType {packed_type!r} differs from the manifest's {file_type!r}: both kept"
            )
        attachment = Attachment.of(
            name,
            raw,
            file_type or packed_type or "application/octet-stream",
            id=content_id,
            description=_opt_text(ref, "Description"),
        )
        if packed_type and packed_type != attachment.media_type:
            extra.append((TRANSFER_TYPE_KEY + attachment.sha256, packed_type))
        attachments.append(attachment)
        data[content_id] = raw
    if encoded:
        stray = ", ".join(sorted(encoded))
        raise AttachmentError(f"attachments {stray} are not listed in the manifest; every file needs a Reference")
    older = _first(envelope_el, "edXMLAttachments")
    if older is not None:
        ctx.notes.append(f"{root_path}/edXMLAttachments: the older attachment form")
        for i, att in enumerate(_children(older, "Attachment"), 1):
            path = f"{root_path}/edXMLAttachments/Attachment[{i}]"
            payload_el = _first(att, "AttachmentData")
            if payload_el is None:
                raise AttachmentError(f"{path}/AttachmentData is missing; it carries the base64 bytes")
            raw = _base64(payload_el.text or "", f"{path}/AttachmentData")
            payloads.append((payload_el.text or "", raw))
            name = _opt_text(att, "AttachmentName").strip()
            if not name:
                raise AttachmentError(f"{path}/AttachmentName is missing; each attachment has a file name")
            content_id = _bare_cid(_opt_text(att, "ContentId")) or f"attachment-{i}"
            if content_id in data:
                raise AttachmentError(f"{path}: attachment id {content_id!r} is used twice")
            size_text = _opt_text(att, "AttachmentSize").strip()
            if size_text and size_text.isdigit() and int(size_text) != len(raw):
                ctx.notes.append(f"{path}/AttachmentSize says {size_text}, the data has {len(raw)} bytes")
            file_type = _opt_text(att, "AttachmentType").strip()
            types[content_id] = (file_type, "")
            attachments.append(Attachment.of(name, raw, file_type or "application/octet-stream", id=content_id))
            data[content_id] = raw
    ctx.attachment_extra = extra
    return tuple(attachments), data, payloads, types


_WEAK_METHODS = ("rsa-sha1", "dsa-sha1", "hmac-sha1")


def _signature(header_el: etree._Element, header_path: str) -> LegacySignature | None:
    """The package's own signature, verbatim, with why it cannot be trusted (for audit only)."""
    for child in _elements(header_el, any_namespace=True):
        name = etree.QName(child)
        if name.localname not in ("Signature", "DigitalSignature"):
            continue
        if len(child) == 0 and not (child.text or "").strip():
            return None  # the empty placeholder most packages carry
        notes: list[str] = []
        if name.namespace != XMLDSIG_NS:
            notes.append(
                f"{name.localname} is in namespace {name.namespace or '(none)'}, not XMLDSig: it is not a "
                "signature any verifier reads"
            )
        methods = [
            m.get("Algorithm", "")
            for m in child.iter()
            if isinstance(m.tag, str) and etree.QName(m).localname == "SignatureMethod"
        ]
        algorithm = methods[0] if methods else ""
        if any(algorithm.endswith(w) for w in _WEAK_METHODS):
            notes.append(f"SignatureMethod {algorithm} is SHA-1, refused as a signature on the bus")
        for m in child.iter():
            if not isinstance(m.tag, str):
                continue
            local = etree.QName(m).localname
            if local == "CanonicalizationMethod" and "xml-c14n-" in m.get("Algorithm", ""):
                notes.append(f"inclusive c14n ({m.get('Algorithm')})")
            elif local == "Reference" and m.get("URI") == "":
                notes.append('Reference URI="" (the whole document, whatever it is)')
            elif local == "X509Certificate":
                cert = "".join((m.text or "").split())
                if len(cert) < 200:
                    notes.append(f"X509Certificate has {len(cert)} characters: truncated, not a certificate")
        if not methods:
            notes.append("no SignatureMethod")
        notes.append("kept verbatim as evidence; never verified or trusted")
        return LegacySignature(
            xml=etree.tostring(child, encoding="UTF-8"),
            element=f"{header_path}/{name.localname}",
            algorithm=algorithm,
            notes=tuple(dict.fromkeys(notes)),
        )
    return None
