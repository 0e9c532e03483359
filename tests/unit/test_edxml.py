"""The edXML codec: QCVN 102:2016 packages <-> envelopes, both directions, lossless.

Sample packages live in tests/data/edxml/ (shaped like the national hub's public
SDK sample); hostile ones in tests/data/hostile/edxml/, each with the error it
must raise in the HOSTILE table below.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from lxml import etree

from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.edxml import (
    EDXML_NS,
    MAX_ATTACHMENT_BYTES,
    EdxmlPackage,
    document_key,
    edxml_document_id,
    export_package,
    import_package,
)
from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    Envelope,
    Header,
    Hop,
    Kind,
    Operation,
    Priority,
    ReceiptInfo,
    ReceiptOutcome,
    ResponseRef,
    StaffInfo,
    StatusCode,
    SteeringType,
    new_message_id,
)
from exchange.envelope.parse import XmlLimits, parse_envelope
from exchange.errors import (
    AttachmentDigestError,
    AttachmentError,
    EdxmlError,
    EnvelopeError,
    ExchangeError,
    InvalidAgencyCodeError,
    PayloadTooLargeError,
    UnknownAgencyError,
    XmlMalformedError,
    XmlSecurityError,
)

DATA = Path(__file__).resolve().parents[1] / "data"
SAMPLES = DATA / "edxml"
HOSTILE = DATA / "hostile" / "edxml"

ORIGINAL_ID = "000.00.00.G22,2024/03/15,12/CT-TTg"
ORIGINAL_UUID = "6f9a8b7c-1d2e-4f30-8a4b-5c6d7e8f9a0b"
CREATED = datetime(2024, 3, 15, 3, 0, tzinfo=UTC)

#: file -> the error import_package must raise for it.
HOSTILE_EXPECTED: dict[str, type[ExchangeError]] = {
    "xxe_file_entity.edxml": XmlSecurityError,
    "billion_laughs.edxml": XmlSecurityError,
    "bad_base64.edxml": EdxmlError,
    "missing_subject.edxml": EdxmlError,
    "malformed_agency_code.edxml": InvalidAgencyCodeError,
    "manifest_without_bytes.edxml": AttachmentError,
    "unlisted_attachment.edxml": AttachmentError,
    "text_before_xml_declaration.edxml": XmlMalformedError,
    "undeclared_prefix.edxml": XmlMalformedError,
    "template_placeholder_base64.edxml": EdxmlError,
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def canonical(data: bytes) -> str:
    """C14N 2.0 with whitespace-only text dropped: element-for-element comparison."""
    return etree.canonicalize(data.decode("utf-8"), strip_text=True)


def imported(name: str, **kwargs: object) -> EdxmlPackage:
    return import_package(sample(name), created_at=CREATED, message_id=new_message_id(), **kwargs)  # type: ignore[arg-type]


def with_text(data: bytes, old: str, new: str) -> bytes:
    text = data.decode("utf-8")
    assert old in text, old
    return text.replace(old, new, 1).encode("utf-8")


# -- import: the national sample document ---------------------------------------------


def test_sample_document_maps_to_a_document_envelope() -> None:
    message_id = new_message_id()
    package = import_package(sample("document_new.edxml"), created_at=CREATED, message_id=message_id)
    header = package.envelope.header
    assert header.message_id == message_id and header.created_at == CREATED
    assert header.kind is Kind.DOCUMENT and header.operation is Operation.NEW
    assert header.sender == AgencyRef("000.00.00.G22", "Văn phòng Chính phủ")
    assert header.recipients == (
        AgencyRef("000.00.00.H41", "UBND tỉnh Nghệ An"),
        AgencyRef("000.00.00.H29", "UBND Thành phố Hồ Chí Minh"),
    )
    doc = header.document
    assert doc is not None
    assert doc.code == DocumentCode("12", "CT-TTg")
    assert doc.subject.startswith("Về việc tăng cường công tác phòng, chống thiên tai")
    assert (doc.document_type.type, doc.document_type.detail, doc.document_type.name) == (1, 0, "Chỉ thị")
    assert doc.promulgation is not None
    assert (doc.promulgation.place, doc.promulgation.date) == ("Hà Nội", date(2024, 3, 15))
    assert doc.signer is not None and doc.signer.full_name == "Trần Văn Minh"
    assert doc.signer.competence == "KT. THỦ TƯỚNG" and doc.signer.position == "PHÓ THỦ TƯỚNG"
    assert doc.content.startswith("Thủ tướng Chính phủ yêu cầu")
    assert doc.priority is Priority.URGENT and doc.steering is SteeringType.DIRECTIVE
    assert doc.due_date == date(2024, 4, 15)
    assert doc.document_id == ORIGINAL_ID
    assert doc.relates_to is None and doc.response_for == () and doc.paper is False
    extra = doc.extra
    assert ("OtherInfo/SphereOfPromulgation", "Liên thông văn bản quốc gia") in extra
    assert ("OtherInfo/TyperNotation", "NN") in extra
    assert ("OtherInfo/PromulgationAmount", "2") in extra and ("OtherInfo/PageAmount", "4") in extra
    assert [v for k, v in extra if k == "OtherInfo/Appendixes/Appendix"] == [
        "Phụ lục I: Danh sách các tỉnh, thành phố thực hiện",
        "Phụ lục II: Mẫu báo cáo",
    ]
    assert [v for k, v in extra if k == "ToPlaces/Place"][1] == "UBND các tỉnh, thành phố trực thuộc Trung ương"
    assert ("From/OrganizationInCharge", "Chính phủ") in extra
    assert ("From/Website", "https://chinhphu.example.vn") in extra
    assert ("To[000.00.00.H41]/Fax", "") in extra  # present but empty is kept too
    assert ("Bussiness/BussinessDocReason", "Văn bản điện tử mới") in extra
    assert ("Bussiness/StaffInfo/Staff", "Nguyễn Thị Lan") in extra
    assert ("TraceHeaderList/@actor", "http://schemas.xmlsoap.org/soap/actor/next") in extra


def test_trace_headers_become_hops_in_utc() -> None:
    package = imported("document_new.edxml")
    # edXML timestamps are Vietnam time (UTC+7) without a zone.
    assert package.envelope.trace == (Hop("000.00.00.G22", datetime(2024, 3, 15, 2, 30, tzinfo=UTC)),)


def test_attachment_bytes_and_digests_are_preserved() -> None:
    package = imported("document_new.edxml")
    attachments = package.envelope.attachments
    assert [(a.id, a.name, a.media_type, a.description) for a in attachments] == [
        (
            "7f0c2a1e-4b7d-4c1a-9a51-2f3c8d9e0b11",
            "12-CT-TTg.pdf",
            "application/pdf",
            "Chỉ thị số 12/CT-TTg (bản ký số)",
        ),
        ("c3d9e5b2-1a0f-4e6d-8b7c-5a4f3e2d1c00", "Phu-luc-I.txt", "text/plain", "Phụ lục I kèm theo Chỉ thị"),
    ]
    assert set(package.attachment_data) == {a.id for a in attachments}
    for a in attachments:
        raw = package.attachment_data[a.id]
        assert a.size == len(raw) and a.sha256 == hashlib.sha256(raw).hexdigest()
    assert package.attachment_data[attachments[0].id].startswith(b"%PDF-1.4")
    assert bytes(range(256)) in package.attachment_data[attachments[1].id]
    # The bytes come back out identical.
    again = import_package(export_package(package.envelope, package.attachment_data))
    assert again.attachment_data == package.attachment_data
    assert again.envelope.attachments == attachments


def test_defaults_are_a_fresh_message_id_and_now() -> None:
    a, b = import_package(sample("document_new.edxml")), import_package(sample("document_new.edxml"))
    assert a.envelope.message_id != b.envelope.message_id
    assert a.envelope.header.created_at.tzinfo is not None
    assert a.sha256 == hashlib.sha256(sample("document_new.edxml")).hexdigest()


def test_imported_envelope_is_a_valid_bus_envelope() -> None:
    package = imported("document_new.edxml")
    xml = serialize(envelope_to_element(package.envelope))
    _, parsed = parse_envelope(xml, XmlLimits(max_bytes=4 * 1024 * 1024))
    assert parsed == package.envelope


# -- round trips --------------------------------------------------------------------------


ROUND_TRIP_SAMPLES = [
    "document_new.edxml",
    "document_revoke.edxml",
    "document_update.edxml",
    "document_replace.edxml",
    "status_03_accepted.edxml",
]


@pytest.mark.parametrize("name", ROUND_TRIP_SAMPLES)
def test_export_of_import_is_element_for_element_the_package(name: str) -> None:
    package = imported(name)
    assert canonical(export_package(package.envelope, package.attachment_data)) == canonical(sample(name))


@pytest.mark.parametrize("name", ROUND_TRIP_SAMPLES)
def test_import_of_export_is_the_envelope(name: str) -> None:
    package = imported(name, resolve=lambda document_id: "0e0b1c3a-1111-4222-8333-444455556666")
    envelope = package.envelope
    again = import_package(
        export_package(envelope, package.attachment_data),
        created_at=CREATED,
        message_id=envelope.message_id,
        resolve=lambda d: "0e0b1c3a-1111-4222-8333-444455556666",
    )
    assert again.envelope == envelope
    assert again.attachment_data == package.attachment_data


def test_bus_envelope_round_trips_through_edxml() -> None:
    """An envelope written on the bus (not imported) survives export then import."""
    data = b"%PDF-1.7 bus-originated"
    attachment = Attachment.of("bao-cao.pdf", data, "application/pdf", id="att-0123456789ab", description="Báo cáo")
    document = DocumentInfo(
        code=DocumentCode("45", "BC-UBND"),
        subject="Báo cáo kết quả thực hiện Chỉ thị số 12/CT-TTg",
        content="Ủy ban nhân dân tỉnh Nghệ An báo cáo…",
        priority=Priority.EXPRESS_DEADLINE,
        steering=SteeringType.REPORT,
        due_date=date(2024, 4, 1),
        document_id="000.00.00.H41,2024/03/18,45/BC-UBND",
        response_for=(ResponseRef("000.00.00.G22", "12/CT-TTg", date(2024, 3, 15), ORIGINAL_ID),),
        paper=True,
        extra=(("OtherInfo/PageAmount", "2"),),
    )
    envelope = Envelope(
        header=Header(
            message_id=new_message_id(),
            kind=Kind.DOCUMENT,
            sender=AgencyRef("000.00.00.H41", "UBND tỉnh Nghệ An"),
            recipients=(AgencyRef("000.00.00.G22", "Văn phòng Chính phủ"),),
            created_at=CREATED,
            document=document,
        ),
        attachments=(attachment,),
        trace=(Hop("000.00.00.H41", datetime(2024, 3, 18, 1, 0, 5, tzinfo=UTC)),),
    )
    out = export_package(envelope, {attachment.id: data})
    again = import_package(out, created_at=CREATED, message_id=envelope.message_id)
    assert again.envelope == envelope
    assert again.attachment_data == {attachment.id: data}


def test_bus_relay_hops_are_not_exported() -> None:
    package = imported("document_new.edxml")
    relayed = package.envelope.with_hop("node-hanoi", datetime(2024, 3, 15, 2, 31, tzinfo=UTC))
    again = import_package(export_package(relayed, package.attachment_data))
    assert again.envelope.trace == package.envelope.trace


# -- BussinessDocType, relates_to ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "operation", "code"),
    [
        ("document_new.edxml", Operation.NEW, "0"),
        ("document_revoke.edxml", Operation.REVOKE, "1"),
        ("document_update.edxml", Operation.UPDATE, "2"),
        ("document_replace.edxml", Operation.REPLACE, "3"),
    ],
)
def test_bussiness_doc_type_maps_to_operation(name: str, operation: Operation, code: str) -> None:
    package = imported(name)
    assert package.envelope.header.operation is operation
    out = etree.fromstring(export_package(package.envelope, package.attachment_data))
    assert out.findtext(f".//{{{EDXML_NS}}}BussinessDocType") == code


@pytest.mark.parametrize("name", ["document_revoke.edxml", "document_update.edxml", "document_replace.edxml"])
def test_relates_to_is_resolved_from_the_edxml_document_id(name: str) -> None:
    original = new_message_id()
    asked: list[str] = []

    def resolve(document_id: str) -> str | None:
        asked.append(document_id)
        return original if document_id == ORIGINAL_ID else None

    package = imported(name, resolve=resolve)
    assert asked == [ORIGINAL_ID]
    assert package.envelope.header.document is not None
    assert package.envelope.header.document.relates_to == original
    assert package.unresolved == ()


def test_unresolved_target_leaves_relates_to_empty_and_is_reported() -> None:
    package = imported("document_replace.edxml")
    doc = package.envelope.header.document
    assert doc is not None and doc.relates_to is None
    assert package.unresolved == (ORIGINAL_ID,)
    # The edXML identification is still carried, so nothing is lost.
    assert ("Bussiness/ReplacementInfoList/ReplacementInfo/DocumentId", ORIGINAL_ID) in doc.extra
    assert [v for k, v in doc.extra if k.endswith("OrganIdList/OrganId")] == ["000.00.00.H41", "000.00.00.H29"]


def test_update_keeps_its_receiver_list_grouped() -> None:
    package = imported("document_update.edxml")
    doc = package.envelope.header.document
    assert doc is not None
    assert ("Bussiness/BussinessDocumentInfo/ReceiverList/Receiver[1]/OrganId", "000.00.00.H41") in doc.extra
    assert doc.priority is Priority.VERY_URGENT and doc.due_date == date(2024, 4, 30)


def test_replace_export_looks_up_the_replaced_document() -> None:
    package = imported("document_new.edxml")
    assert package.envelope.header.document is not None
    original = new_message_id()
    replacing = replace(
        package.envelope,
        header=replace(
            package.envelope.header,
            operation=Operation.REPLACE,
            document=replace(package.envelope.header.document, relates_to=original),
        ),
    )
    with pytest.raises(EdxmlError, match="replace"):
        export_package(replacing, package.attachment_data)
    out = export_package(
        replacing, package.attachment_data, document_id_of=lambda mid: ORIGINAL_ID if mid == original else None
    )
    again = import_package(out, resolve=lambda d: original if d == ORIGINAL_ID else None)
    assert again.envelope.header.operation is Operation.REPLACE
    assert again.envelope.header.document is not None and again.envelope.header.document.relates_to == original


def test_bussiness_doc_type_out_of_range_is_refused() -> None:
    data = with_text(sample("document_new.edxml"), "<edXML:BussinessDocType>0<", "<edXML:BussinessDocType>4<")
    with pytest.raises(EdxmlError, match="Bussiness/BussinessDocType"):
        import_package(data)


# -- priority, steering ---------------------------------------------------------------------


@pytest.mark.parametrize("priority", list(Priority))
def test_priority_maps_both_ways(priority: Priority) -> None:
    data = with_text(sample("document_new.edxml"), "<edXML:Priority>1<", f"<edXML:Priority>{int(priority)}<")
    package = import_package(data)
    assert package.envelope.header.document is not None
    assert package.envelope.header.document.priority is priority
    assert canonical(export_package(package.envelope, package.attachment_data)) == canonical(data)


@pytest.mark.parametrize("steering", list(SteeringType))
def test_steering_type_maps_both_ways(steering: SteeringType) -> None:
    data = with_text(sample("document_new.edxml"), "<edXML:SteeringType>1<", f"<edXML:SteeringType>{int(steering)}<")
    package = import_package(data)
    assert package.envelope.header.document is not None
    assert package.envelope.header.document.steering is steering
    assert canonical(export_package(package.envelope, package.attachment_data)) == canonical(data)


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("<edXML:Priority>1<", "<edXML:Priority>5<", "OtherInfo/Priority"),
        ("<edXML:Priority>1<", "<edXML:Priority>khẩn<", "OtherInfo/Priority"),
        ("<edXML:SteeringType>1<", "<edXML:SteeringType>3<", "MessageHeader/SteeringType"),
        ("<edXML:DueDate>2024/04/15<", "<edXML:DueDate>15/04/2024<", "MessageHeader/DueDate"),
        ("<edXML:PromulgationDate>2024/03/15<", "<edXML:PromulgationDate>2024/02/30<", "PromulgationDate"),
        ("<edXML:CodeNumber>12<", "<edXML:CodeNumber>" + "1" * 65 + "<", "Code/CodeNumber"),
        ("<edXML:Timestamp>2024/03/15 09:30:00<", "<edXML:Timestamp>hôm qua<", "TraceHeader[1]/Timestamp"),
    ],
)
def test_out_of_range_values_are_refused_with_their_path(old: str, new: str, path: str) -> None:
    with pytest.raises(EdxmlError, match=re.escape(path)):
        import_package(with_text(sample("document_new.edxml"), old, new))


def test_subject_over_500_characters_is_refused() -> None:
    data = re.sub(
        rb"<edXML:Subject>[^<]*<", ("<edXML:Subject>" + "V" * 501 + "<").encode(), sample("document_new.edxml"), count=1
    )
    with pytest.raises(EdxmlError, match="Subject has 501 characters"):
        import_package(data)


# -- status packages ------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(StatusCode))
def test_status_package_maps_each_status_code(code: StatusCode) -> None:
    document_message = new_message_id()
    data = with_text(sample("status_03_accepted.edxml"), "<edXML:StatusCode>03<", f"<edXML:StatusCode>{code.value}<")
    package = import_package(data, created_at=CREATED, resolve=lambda d: document_message if d == ORIGINAL_ID else None)
    header = package.envelope.header
    assert header.kind is Kind.STATUS and header.document is None
    assert header.sender == AgencyRef("000.00.00.H41", "UBND tỉnh Nghệ An")
    assert header.recipients == (AgencyRef("000.00.00.G22"),)  # back to the document's sender
    status = header.status
    assert status is not None
    assert status.code is code and status.response_for == document_message
    assert status.document_ref == ResponseRef("000.00.00.G22", "12/CT-TTg", date(2024, 3, 15), ORIGINAL_ID)
    assert status.description == "Đã tiếp nhận và vào sổ văn bản đến số 1024"
    assert status.staff == StaffInfo("Văn phòng UBND tỉnh", "Lê Văn Hùng", "hung.lv@nghean.example.vn", "0900000002")
    assert status.timestamp == datetime(2024, 3, 15, 7, 5, tzinfo=UTC)
    assert package.envelope.attachments == () and package.attachment_data == {}
    assert canonical(export_package(package.envelope, {})) == canonical(data)


def test_status_for_an_unknown_document_points_to_its_stable_key() -> None:
    package = imported("status_03_accepted.edxml")
    assert package.envelope.header.status is not None
    assert package.envelope.header.status.response_for == document_key(ORIGINAL_ID)
    assert package.unresolved == (ORIGINAL_ID,)
    assert document_key(ORIGINAL_ID) == document_key(ORIGINAL_ID)
    uuid.UUID(document_key(ORIGINAL_ID))


def test_status_without_document_id_derives_it() -> None:
    data = re.sub(rb"\s*<edXML:DocumentId>[^<]*</edXML:DocumentId>", b"", sample("status_03_accepted.edxml"))
    asked: list[str] = []

    def resolve(document_id: str) -> str | None:
        asked.append(document_id)
        return None

    import_package(data, resolve=resolve)
    assert asked == [edxml_document_id("000.00.00.G22", date(2024, 3, 15), "12/CT-TTg")] == [ORIGINAL_ID]


def test_unknown_status_code_is_refused() -> None:
    data = with_text(sample("status_03_accepted.edxml"), "<edXML:StatusCode>03<", "<edXML:StatusCode>07<")
    with pytest.raises(EdxmlError, match="StatusCode '07'"):
        import_package(data)


def test_status_written_as_a_message_header_is_accepted() -> None:
    data = sample("status_03_accepted.edxml").replace(b"edXML:Status>", b"edXML:MessageHeader>")
    package = import_package(data)
    assert package.envelope.header.status is not None
    assert package.envelope.header.status.code is StatusCode.ACCEPTED


def test_status_export_needs_the_edxml_document_reference() -> None:
    package = imported("status_03_accepted.edxml")
    header = package.envelope.header
    assert header.status is not None
    bare = replace(package.envelope, header=replace(header, status=replace(header.status, document_ref=None)))
    with pytest.raises(EdxmlError, match="document_ref"):
        export_package(bare, {})


def test_receipt_has_no_edxml_form() -> None:
    receipt = Envelope(
        header=Header(
            message_id=new_message_id(),
            kind=Kind.RECEIPT,
            sender=AgencyRef("000.00.00.H41"),
            recipients=(AgencyRef("000.00.00.G22"),),
            created_at=CREATED,
            receipt=ReceiptInfo(response_for=new_message_id(), outcome=ReceiptOutcome.DELIVERED),
        )
    )
    with pytest.raises(EdxmlError, match="receipt"):
        export_package(receipt, {})


# -- signatures ---------------------------------------------------------------------------


def test_empty_signature_is_accepted() -> None:
    package = imported("document_new.edxml")
    assert package.signature_xml is None and package.signature_algorithm == ""


def test_rsa_sha1_signature_is_kept_verbatim_for_import_only() -> None:
    signed = import_package(sample("document_signed_rsa_sha1.edxml"), created_at=CREATED, message_id=ORIGINAL_UUID)
    unsigned = import_package(sample("document_new.edxml"), created_at=CREATED, message_id=ORIGINAL_UUID)
    assert signed.signature_algorithm == "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
    assert signed.signature_xml is not None
    kept = etree.fromstring(signed.signature_xml)
    assert kept.tag == "{http://www.w3.org/2000/09/xmldsig#}Signature"
    assert kept.findtext(".//{http://www.w3.org/2000/09/xmldsig#}X509SubjectName", "").startswith("CN=Văn phòng")
    # The signature changes nothing in the envelope; it is passed on verbatim as evidence with the package,
    # and an envelope written from the model (not imported) never carries one.
    assert signed.envelope == unsigned.envelope
    out = export_package(signed.envelope, signed.attachment_data)
    assert out == sample("document_signed_rsa_sha1.edxml")
    fresh = export_package(signed.envelope, signed.attachment_data, use_source=False)
    assert b"xmldsig" not in fresh and b"SignatureValue" not in fresh
    placeholder = etree.fromstring(fresh).find(f".//{{{EDXML_NS}}}Signature")
    assert placeholder is not None and len(placeholder) == 0


def test_digital_signature_variant_is_accepted() -> None:
    data = with_text(sample("document_new.edxml"), "<edXML:Signature/>", "<edXML:DigitalSignature/>")
    assert import_package(data).signature_xml is None


# -- variants seen in the wild ----------------------------------------------------------


def test_bare_envelope_root_and_manifest_variant_are_accepted() -> None:
    text = sample("document_new.edxml").decode()
    # Move AttachmentEncoded inside a bare edXMLEnvelope root, and call the manifest "Manifest".
    encoded = text[text.index("  <AttachmentEncoded>") : text.index("</edXML>")]
    envelope = text[text.index("  <edXML:edXMLEnvelope") : text.index("  <AttachmentEncoded>")]
    envelope = envelope.replace(
        "</edXML:edXMLEnvelope>",
        encoded.replace("<AttachmentEncoded>", f'<AttachmentEncoded xmlns="{EDXML_NS}">') + "</edXML:edXMLEnvelope>",
    )
    envelope = envelope.replace("edXML:edXMLManifest", "edXML:Manifest")
    package = import_package(('<?xml version="1.0" encoding="utf-8"?>\n' + envelope.strip()).encode())
    reference = imported("document_new.edxml")
    assert package.envelope.attachments == reference.envelope.attachments
    assert package.attachment_data == reference.attachment_data


# -- agencies -----------------------------------------------------------------------------


def test_unknown_recipient_is_refused_alone_when_a_directory_is_given() -> None:
    package = import_package(sample("document_new.edxml"), agencies={"000.00.00.G22", "000.00.00.H41"})
    assert [r.code for r in package.envelope.header.recipients] == ["000.00.00.H41"]
    (refused,) = package.refused
    assert refused.path.endswith("MessageHeader/To[2]/OrganId") and refused.organ_id == "000.00.00.H29"
    assert refused.code == UnknownAgencyError.code and "not in the directory" in refused.reason
    with pytest.raises(UnknownAgencyError, match=r"To\[1\]/OrganId: agency 000.00.00.H41"):
        import_package(sample("document_new.edxml"), agencies={"000.00.00.G22"})
    with pytest.raises(UnknownAgencyError, match=r"From/OrganId: agency 000.00.00.G22"):
        import_package(sample("document_new.edxml"), agencies={"000.00.00.H41", "000.00.00.H29"})


def test_duplicate_recipient_is_refused() -> None:
    data = with_text(sample("document_new.edxml"), "<edXML:OrganId>000.00.00.H29<", "<edXML:OrganId>000.00.00.H41<")
    with pytest.raises(EdxmlError, match="listed twice"):
        import_package(data)


# -- hostile packages and limits ----------------------------------------------------------


def test_every_hostile_package_has_an_expected_error() -> None:
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(HOSTILE_EXPECTED)


@pytest.mark.parametrize(("name", "error"), sorted(HOSTILE_EXPECTED.items()))
def test_hostile_package_is_refused(name: str, error: type[EnvelopeError]) -> None:
    with pytest.raises(error) as caught:
        import_package((HOSTILE / name).read_bytes())
    assert type(caught.value) is error
    assert "root:" not in caught.value.message  # nothing from /etc/passwd leaks into the message


def test_bad_base64_names_the_element() -> None:
    with pytest.raises(EdxmlError, match=r"edXML/AttachmentEncoded\[1\]/Attachment\[1\]/ContentTransferEncoded"):
        import_package((HOSTILE / "bad_base64.edxml").read_bytes())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text_before_xml_declaration.edxml", "not well-formed: Start tag expected"),
        ("undeclared_prefix.edxml", "Namespace prefix edXML on edXMLEnvelope is not defined"),
        ("template_placeholder_base64.edxml", r"Attachment\[1\]/ContentTransferEncoded is not valid base64"),
    ],
)
def test_malformed_packages_from_the_wild_are_refused_with_a_clear_error(name: str, message: str) -> None:
    with pytest.raises(ExchangeError, match=message):
        import_package((HOSTILE / name).read_bytes())


def test_missing_subject_names_the_path() -> None:
    with pytest.raises(EdxmlError, match="edXML/edXMLEnvelope/edXMLHeader/MessageHeader/Subject is missing"):
        import_package((HOSTILE / "missing_subject.edxml").read_bytes())


def test_malformed_agency_code_names_the_path() -> None:
    with pytest.raises(InvalidAgencyCodeError, match=r"MessageHeader/From/OrganId"):
        import_package((HOSTILE / "malformed_agency_code.edxml").read_bytes())


def test_export_refuses_bytes_that_do_not_match_the_manifest() -> None:
    package = imported("document_new.edxml")
    first = package.envelope.attachments[0].id
    with pytest.raises(AttachmentDigestError):
        export_package(package.envelope, {**package.attachment_data, first: b"%PDF-1.4 forged"})
    with pytest.raises(AttachmentError, match="has no bytes"):
        export_package(package.envelope, {k: v for k, v in package.attachment_data.items() if k != first})


def test_attachment_over_the_text_node_limit_is_refused_both_ways() -> None:
    package = imported("document_new.edxml")
    big = b"\0" * (MAX_ATTACHMENT_BYTES + 1)
    attachment = Attachment.of("lon.bin", big, id="big")
    envelope = replace(package.envelope, attachments=(attachment,))
    with pytest.raises(PayloadTooLargeError, match="7,500,000"):
        export_package(envelope, {"big": big})
    # Exactly at the limit still works.
    at_limit = b"\0" * MAX_ATTACHMENT_BYTES
    ok = Attachment.of("vua.bin", at_limit, id="ok")
    out = export_package(replace(package.envelope, attachments=(ok,)), {"ok": at_limit})
    assert import_package(out).attachment_data == {"ok": at_limit}
    # A package written elsewhere with a bigger text node is refused on import.
    oversized = out.replace(b"AAAA</ContentTransferEncoded>", b"AAAAAAAA</ContentTransferEncoded>", 1)
    with pytest.raises(PayloadTooLargeError):
        import_package(oversized)
