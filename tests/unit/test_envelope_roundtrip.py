"""Envelope model <-> XML: exact round trips, the XML layout of docs/ENVELOPE.md, XSD refusals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from exchange.envelope.build import envelope_to_element, format_datetime, serialize
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
)
from exchange.envelope.parse import envelope_from_element, parse_envelope, parse_xml
from exchange.envelope.schema import envelope_schema, validate
from exchange.errors import SchemaError

NS = {"env": ENVELOPE_NS}
MID = "9b2c5a4e-3f6d-4c1a-9e0b-7d8f6a5b4c3d"
OTHER = "1f0e2d3c-4b5a-4968-8776-655443322110"
AT = datetime(2026, 11, 24, 5, 0, 0, 123000, tzinfo=UTC)
GOV = AgencyRef("000.00.00.G22", "Văn phòng Chính phủ")
NGHE_AN = AgencyRef("000.00.00.H41", "UBND tỉnh Nghệ An")
HCMC = AgencyRef("000.00.00.H29", "UBND Thành phố Hồ Chí Minh")
SUBJECT = "Về việc tăng cường công tác phòng, chống thiên tai — bão số 3 (Yagi) ở Hà Nội, Nghệ An"


def _q(local: str) -> str:
    return f"{{{ENVELOPE_NS}}}{local}"


# -- fixtures: each kind, minimal and with every optional field ------------------------


def minimal_document() -> Envelope:
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.DOCUMENT,
            sender=AgencyRef("000.00.00.G22"),
            recipients=(AgencyRef("000.00.00.H41"),),
            created_at=AT,
            document=DocumentInfo(code=DocumentCode("12"), subject="x"),
        )
    )


def full_document() -> Envelope:
    pdf = Attachment.of(
        "Quyết định 12.pdf", b"%PDF-1.7 \x00\xff", "application/pdf", id="att-1", description="Bản chính có chữ ký số"
    )
    xlsx = Attachment.of("phụ lục.xlsx", b"", "application/vnd.ms-excel", id="att-2")
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.DOCUMENT,
            sender=GOV,
            recipients=(NGHE_AN, HCMC),
            created_at=AT,
            operation=Operation.REPLACE,
            correlation_id="4bf92f3577b34da6a3ce929d0e0e4736",
            document=DocumentInfo(
                code=DocumentCode("12345678901", "CT-TTg/VPCP-KGVX-ĐMDN-ABCDEFGHIJ"[:30]),
                subject=SUBJECT,
                document_type=DocumentType(type=2, detail=7, name="Chỉ thị"),
                promulgation=Promulgation("Hà Nội", date(2026, 11, 24)),
                signer=SignerInfo("KT. THỦ TƯỚNG", "PHÓ THỦ TƯỚNG", "Trần Hồng Hà"),
                content="  Nội dung\nnhiều dòng\r\n\tcó tab & <ký tự> \"đặc biệt\" 'nữa'  ",
                priority=Priority.EXPRESS_DEADLINE,
                steering=SteeringType.REPORT,
                due_date=date(2026, 12, 1),
                document_id="000.00.00.G22,2026/11/24,12/CT-TTg",
                relates_to=OTHER,
                response_for=(
                    ResponseRef(
                        "000.00.00.H41", "45/UBND-VX", date(2026, 11, 1), "000.00.00.H41,2026/11/01,45/UBND-VX"
                    ),
                    ResponseRef("000.00.00.H29", "7/TTr", date(2026, 10, 2)),
                ),
                paper=True,
                extra=(
                    ("SphereOfPromulgation", "Toàn quốc"),
                    ("PageAmount", "3"),
                    ("Empty", ""),
                    ("TyperNotation", "  NV\n"),
                    ("SphereOfPromulgation", "lặp lại"),
                ),
                source=b"exchange-edxml-source/1\n{}\n\x00\xff",  # opaque bytes (docs/EDXML.md)
            ),
        ),
        attachments=(pdf, xlsx),
        trace=(Hop("node-a", AT), Hop("node-hà-nội", AT + timedelta(milliseconds=10))),
    )


def minimal_status() -> Envelope:
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.STATUS,
            sender=NGHE_AN,
            recipients=(GOV,),
            created_at=AT,
            status=StatusInfo(response_for=OTHER, code=StatusCode.ARRIVED),
        )
    )


def full_status() -> Envelope:
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.STATUS,
            sender=NGHE_AN,
            recipients=(GOV,),
            created_at=AT,
            correlation_id="corr-1",
            status=StatusInfo(
                response_for=OTHER,
                code=StatusCode.CHANGE_REFUSED,
                description="Không đồng ý thu hồi văn bản",
                staff=StaffInfo("Văn phòng UBND tỉnh", "Nguyễn Thị Hương", "huong@nghean.gov.vn", "+84 912 345 678"),
                timestamp=AT - timedelta(hours=1),
                document_ref=ResponseRef(
                    "000.00.00.G22", "12/CT-TTg", date(2024, 3, 15), "000.00.00.G22,2024/03/15,12/CT-TTg"
                ),
                source=b"<edXML/>",
            ),
        ),
        attachments=(Attachment.of("biên bản.pdf", b"scan", "application/pdf", id="att-x"),),
        trace=(Hop("node-b", AT),),
    )


def minimal_receipt() -> Envelope:
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.RECEIPT,
            sender=NGHE_AN,
            recipients=(GOV,),
            created_at=AT,
            receipt=ReceiptInfo(response_for=OTHER, outcome=ReceiptOutcome.DELIVERED),
        )
    )


def full_receipt() -> Envelope:
    return Envelope(
        Header(
            message_id=MID,
            kind=Kind.RECEIPT,
            sender=NGHE_AN,
            recipients=(GOV,),
            created_at=AT,
            correlation_id="c",
            operation=Operation.NEW,
            receipt=ReceiptInfo(
                response_for=OTHER,
                outcome=ReceiptOutcome.FAILED,
                envelope_digest="ab" * 32,
                reason_code="signature-invalid",
                reason="Chữ ký không hợp lệ: chứng thư hết hạn",
            ),
        ),
        trace=(Hop("relay", AT),),
    )


ALL: dict[str, Callable[[], Envelope]] = {
    f.__name__: f for f in (minimal_document, full_document, minimal_status, full_status, minimal_receipt, full_receipt)
}


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())
def test_element_round_trip_is_exact(make: Callable[[], Envelope]) -> None:
    env = make()
    element = envelope_to_element(env)
    validate(element)
    assert envelope_from_element(element) == env


@pytest.mark.parametrize("make", ALL.values(), ids=ALL.keys())
def test_bytes_round_trip_through_the_hardened_parser(make: Callable[[], Envelope]) -> None:
    env = make()
    data = serialize(envelope_to_element(env))
    root, parsed = parse_envelope(data)
    assert parsed == env
    # Serialising what was parsed gives the very same bytes: nothing is normalised away.
    assert serialize(root) == data
    assert serialize(envelope_to_element(parsed)) == data


def test_full_fixtures_really_set_every_optional_field() -> None:
    # Guards the round-trip test itself: a "full" fixture that left a field at its default
    # would let a dropped field go unnoticed.
    doc = full_document().header.document
    assert doc is not None
    for name in DocumentInfo.__slots__:
        assert getattr(doc, name) != getattr(minimal_document().header.document, name), name
    status = full_status().header.status
    assert status is not None and all(getattr(status, n) not in (None, "") for n in StatusInfo.__slots__)
    receipt = full_receipt().header.receipt
    assert receipt is not None and all(getattr(receipt, n) not in (None, "") for n in ReceiptInfo.__slots__)


def test_vietnamese_text_survives_as_utf8() -> None:
    data = serialize(envelope_to_element(full_document()))
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert SUBJECT.encode("utf-8") in data
    assert "Văn phòng Chính phủ".encode() in data
    assert b"&#" not in data.replace(b"&#13;", b"")  # no needless character references


def test_layout_matches_docs_envelope_md() -> None:
    root = envelope_to_element(full_document())
    assert root.tag == _q("Envelope") and root.get("version") == "1.0"
    assert root.nsmap == {"env": ENVELOPE_NS}
    assert [c.tag for c in root] == [_q("Signed"), _q("Trace")]
    signed = root[0]
    assert signed.get("Id") == f"s-{MID}"
    assert [c.tag for c in signed] == [_q("Header"), _q("Manifest")]
    header = signed[0]
    assert [etree.QName(c).localname for c in header] == [
        "MessageId",
        "Kind",
        "Operation",
        "CreatedAt",
        "CorrelationId",
        "From",
        "To",
        "To",
        "Document",
    ]
    assert header.findtext("env:CreatedAt", namespaces=NS) == "2026-11-24T05:00:00.123Z"
    assert header.find("env:From", NS).get("code") == "000.00.00.G22"
    assert [etree.QName(c).localname for c in header.find("env:Document", NS)] == [
        "DocumentId",
        "Code",
        "DocumentType",
        "Subject",
        "Content",
        "Promulgation",
        "Signer",
        "Priority",
        "SteeringType",
        "DueDate",
        "RelatesTo",
        "ResponseFor",
        "ResponseFor",
        "Paper",
        "Extra",
        "Extra",
        "Extra",
        "Extra",
        "Extra",
        "EdxmlSource",
    ]
    assert root.find("env:Trace/env:Hop", NS).attrib == {"node": "node-a", "at": "2026-11-24T05:00:00.123Z"}


def test_empty_optional_values_are_omitted() -> None:
    root = envelope_to_element(minimal_document())
    header = root[0][0]
    assert [etree.QName(c).localname for c in header] == [
        "MessageId",
        "Kind",
        "Operation",
        "CreatedAt",
        "From",
        "To",
        "Document",
    ]
    assert [etree.QName(c).localname for c in header.find("env:Document", NS)] == [
        "Code",
        "DocumentType",
        "Subject",
        "Priority",
        "SteeringType",
        "Paper",
    ]
    assert header.find("env:Document/env:Code", NS).attrib == {"number": "12"}
    assert header.find("env:Document/env:DocumentType", NS).attrib == {"type": "1", "detail": "0"}
    assert header.find("env:From", NS).text is None
    assert root.find("env:Trace", NS) is None
    assert len(root.find("env:Signed/env:Manifest", NS)) == 0
    receipt = envelope_to_element(minimal_receipt()).find(".//env:Receipt", NS)
    assert receipt.attrib == {"responseFor": OTHER, "outcome": "delivered"} and len(receipt) == 0


def test_never_pretty_printed() -> None:
    data = serialize(envelope_to_element(full_document()))
    body = data.split(b"?>", 1)[1]
    assert b">\n<" not in body and b">  <" not in body
    # Without newlines in any text, the only one is what lxml writes after the declaration.
    assert serialize(envelope_to_element(full_receipt())).count(b"\n") == 1


def test_datetimes_are_written_in_utc_with_milliseconds() -> None:
    hanoi = timezone(timedelta(hours=7))
    assert format_datetime(datetime(2026, 11, 24, 12, 0, tzinfo=hanoi)) == "2026-11-24T05:00:00.000Z"
    assert format_datetime(datetime(2026, 11, 24, 5, 0, 0, 999999, tzinfo=UTC)) == "2026-11-24T05:00:00.999Z"
    with pytest.raises(ValueError):
        format_datetime(datetime(2026, 11, 24))
    # A non-UTC datetime round-trips to the same instant, now in UTC.
    env = minimal_status()
    local = Envelope(
        Header(**{**{n: getattr(env.header, n) for n in Header.__slots__}, "created_at": AT.astimezone(hanoi)})
    )
    parsed = envelope_from_element(envelope_to_element(local))
    assert parsed == local and parsed.header.created_at.tzinfo == UTC


def test_offset_datetimes_from_other_writers_are_read_as_utc() -> None:
    root = envelope_to_element(minimal_document())
    root.find(".//env:CreatedAt", NS).text = "2026-11-24T12:00:00.123+07:00"
    validate(root)
    assert envelope_from_element(root).header.created_at == AT


def test_signed_element_alone_gives_the_model_with_trace_from_the_root() -> None:
    env = full_document()
    root = envelope_to_element(env)
    signed = root[0]
    assert envelope_from_element(signed) == Envelope(env.header, env.attachments, ())
    assert envelope_from_element(signed, trace_from=root) == env
    # The verifier hands over a detached copy: it must read the same.
    detached = etree.fromstring(etree.tostring(signed))
    assert envelope_from_element(detached, trace_from=root) == env


def test_signed_id_must_name_the_message() -> None:
    root = envelope_to_element(minimal_document())
    root[0].set("Id", f"s-{OTHER}")
    with pytest.raises(SchemaError, match="Id"):
        envelope_from_element(root)


def test_wrong_root_is_refused() -> None:
    with pytest.raises(SchemaError):
        envelope_from_element(etree.Element("Envelope"))
    with pytest.raises(SchemaError, match="not env:Envelope"):
        validate(etree.Element("{urn:other}Envelope"))


def test_unsigned_and_signed_shapes_both_validate() -> None:
    root = envelope_to_element(full_document())
    validate(root)
    ds = "http://www.w3.org/2000/09/xmldsig#"
    etree.SubElement(root[0], f"{{{ds}}}Signature", nsmap={"ds": ds})
    validate(root)
    assert envelope_from_element(root) == full_document()


def test_control_characters_are_refused_with_a_schema_error() -> None:
    env = minimal_document()
    bad = DocumentInfo(code=DocumentCode("1"), subject="bell\x07")
    env = Envelope(Header(**{**{n: getattr(env.header, n) for n in Header.__slots__}, "document": bad}))
    with pytest.raises(SchemaError):
        envelope_to_element(env)


def test_schema_is_compiled_once() -> None:
    assert envelope_schema() is envelope_schema()


# -- XSD refusals ------------------------------------------------------------------------


def _mutate(make: Callable[[], Envelope], change: Callable[[etree._Element], None]) -> etree._Element:
    root = envelope_to_element(make())
    validate(root)  # the unmutated envelope is valid, so the refusal is the mutation's
    change(root)
    return root


def _set_attr(path: str, name: str, value: str) -> Callable[[etree._Element], None]:
    return lambda root: root.find(path, NS).set(name, value)


def _set_text(path: str, value: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        root.find(path, NS).text = value

    return change


def _remove(path: str) -> Callable[[etree._Element], None]:
    def change(root: etree._Element) -> None:
        for element in root.findall(path, NS):
            element.getparent().remove(element)

    return change


def _add_ds_lookalike(root: etree._Element) -> None:
    etree.SubElement(root[0], "{urn:evil}Signature")


def _duplicate_attachment_id(root: etree._Element) -> None:
    root.findall(".//env:Attachment", NS)[1].set("id", "att-1")


HEADER = "env:Signed/env:Header"
DOC = f"{HEADER}/env:Document"

REFUSALS: dict[str, tuple[Callable[[], Envelope], Callable[[etree._Element], None], str]] = {
    "bad agency code": (full_document, _set_attr(f"{HEADER}/env:From", "code", "000.00.00.g22"), "From"),
    "short agency code": (full_document, _set_attr(f"{HEADER}/env:To", "code", "00.00.00.H41"), "To"),
    "bad status code": (full_status, _set_attr(f"{HEADER}/env:Status", "code", "07"), "Status"),
    "priority 7": (full_document, _set_text(f"{DOC}/env:Priority", "7"), "Priority"),
    "steering 3": (full_document, _set_text(f"{DOC}/env:SteeringType", "3"), "SteeringType"),
    "subject of 501 chars": (full_document, _set_text(f"{DOC}/env:Subject", "ệ" * 501), "Subject"),
    "empty subject": (minimal_document, _set_text(f"{DOC}/env:Subject", ""), "Subject"),
    "missing To": (full_document, _remove(f"{HEADER}/env:To"), "To"),
    "missing body": (full_document, _remove(DOC), "Header"),
    "code number of 65": (full_document, _set_attr(f"{DOC}/env:Code", "number", "1" * 65), "Code"),
    "notation of 31": (full_document, _set_attr(f"{DOC}/env:Code", "notation", "N" * 31), "Code"),
    "message id not a uuid": (full_document, _set_text(f"{HEADER}/env:MessageId", "12345"), "MessageId"),
    "relates to not a uuid": (full_document, _set_text(f"{DOC}/env:RelatesTo", "x"), "RelatesTo"),
    "uppercase sha256": (full_document, _set_attr(".//env:Attachment", "sha256", "AB" * 32), "Attachment"),
    "short sha256": (full_document, _set_attr(".//env:Attachment", "sha256", "ab" * 31), "Attachment"),
    "negative size": (full_document, _set_attr(".//env:Attachment", "size", "-1"), "Attachment"),
    "duplicate attachment id": (full_document, _duplicate_attachment_id, "Manifest"),
    "naive created at": (full_document, _set_text(f"{HEADER}/env:CreatedAt", "2026-11-24T05:00:00"), "CreatedAt"),
    "unknown kind": (full_document, _set_text(f"{HEADER}/env:Kind", "memo"), "Kind"),
    "unknown outcome": (full_receipt, _set_attr(f"{HEADER}/env:Receipt", "outcome", "lost"), "Receipt"),
    "correlation id with a space": (full_document, _set_text(f"{HEADER}/env:CorrelationId", "a b"), "CorrelationId"),
    "wrong version": (full_document, lambda r: r.set("version", "2.0"), "Envelope"),
    "missing Signed Id": (full_document, lambda r: r[0].attrib.pop("Id"), "Signed"),
    "foreign element where the signature goes": (full_document, _add_ds_lookalike, "Signed"),
    "kind/body mismatch document->status": (full_document, _set_text(f"{HEADER}/env:Kind", "status"), "Document"),
    "kind/body mismatch receipt->document": (full_receipt, _set_text(f"{HEADER}/env:Kind", "document"), "Receipt"),
}


@pytest.mark.parametrize("case", REFUSALS.keys())
def test_xsd_refuses(case: str) -> None:
    make, change, where = REFUSALS[case]
    root = _mutate(make, change)
    with pytest.raises(SchemaError) as info:
        validate(root)
    # The message names the offending element so a sender can fix it.
    assert where in info.value.message
    assert info.value.detail["errors"]
    # And the bytes path refuses the same way.
    with pytest.raises(SchemaError):
        parse_envelope(serialize(root))


def test_subject_of_500_vietnamese_chars_is_accepted() -> None:
    # The limit counts characters, not UTF-8 bytes (500 × "ệ" is 1500 bytes).
    root = _mutate(full_document, _set_text(f"{DOC}/env:Subject", "ệ" * 500))
    validate(root)
    assert envelope_from_element(root).header.document.subject == "ệ" * 500


def test_schema_error_message_gives_the_element_path() -> None:
    root = _mutate(full_document, _set_text(f"{DOC}/env:Priority", "7"))
    with pytest.raises(SchemaError) as info:
        validate(root)
    message = info.value.message
    assert "/env:Envelope/env:Signed/env:Header/env:Document/env:Priority" in message
    assert "{urn:" not in message  # namespaces shortened to the env: prefix


def test_parse_xml_then_validate_accepts_what_build_wrote() -> None:
    data = serialize(envelope_to_element(full_status()))
    validate(parse_xml(data))


# -- property: any model the XSD accepts round-trips exactly ---------------------------

# Every character XML 1.0 can carry (no C0 controls but tab/newline/CR, no surrogates, no U+FFFE/F).
_xml_char = st.one_of(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
    st.sampled_from("\t\n\r"),
)
_text = st.text(_xml_char, max_size=40)
_nonempty = st.text(_xml_char, min_size=1, max_size=40)
_uuid = st.uuids().map(str)
# Attachment ids and names have their own rules (docs/ENVELOPE.md): the id pattern, no control or format characters.
_attachment_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,15}", fullmatch=True)
_attachment_names = st.text(
    st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Zl", "Zp"), blacklist_characters="\ufffe\uffff"),
    min_size=1,
    max_size=40,
)
_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2199, 12, 31))
_instants = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2199, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
)
_codes = st.builds(
    lambda a, b, c, letter, d: f"{a:03d}.{b:02d}.{c:02d}.{letter}{d:02d}",
    st.integers(0, 999),
    st.integers(0, 99),
    st.integers(0, 99),
    st.sampled_from("GHKX"),
    st.integers(1, 99),
)
_agencies = st.builds(AgencyRef, _codes, _text)
_documents = st.builds(
    DocumentInfo,
    code=st.builds(DocumentCode, st.text(_xml_char, max_size=11), st.text(_xml_char, max_size=30)),
    subject=st.text(_xml_char, min_size=1, max_size=500),
    document_type=st.builds(DocumentType, st.integers(0, 99), st.integers(0, 99), _text),
    promulgation=st.none() | st.builds(Promulgation, _text, _dates),
    signer=st.none() | st.builds(SignerInfo, _text, _text, _text),
    content=_text,
    priority=st.sampled_from(Priority),
    steering=st.sampled_from(SteeringType),
    due_date=st.none() | _dates,
    document_id=_text,
    relates_to=st.none() | _uuid,
    response_for=st.lists(st.builds(ResponseRef, _text, _text, _dates, _text), max_size=3).map(tuple),
    paper=st.booleans(),
    extra=st.lists(st.tuples(_nonempty, _text), max_size=3).map(tuple),
)
_statuses = st.builds(
    StatusInfo,
    _uuid,
    st.sampled_from(StatusCode),
    _text,
    st.none() | st.builds(StaffInfo, _text, _text, _text, _text),
    st.none() | _instants,
)
_receipts = st.builds(
    ReceiptInfo,
    _uuid,
    st.sampled_from(ReceiptOutcome),
    st.sampled_from(["", "0" * 64, "ab" * 32]),
    st.text(_xml_char, max_size=20),
    _text,
)


@st.composite
def _envelopes(draw: st.DrawFn) -> Envelope:
    kind = draw(st.sampled_from(Kind))
    body = {
        Kind.DOCUMENT: {"document": draw(_documents)},
        Kind.STATUS: {"status": draw(_statuses)},
        Kind.RECEIPT: {"receipt": draw(_receipts)},
    }[kind]
    header = Header(
        message_id=draw(_uuid),
        kind=kind,
        sender=draw(_agencies),
        recipients=tuple(draw(st.lists(_agencies, min_size=1, max_size=3))),
        created_at=draw(_instants),
        operation=draw(st.sampled_from(Operation)),
        correlation_id=draw(st.sampled_from(["", "4bf92f3577b34da6a3ce929d0e0e4736", "x-1"])),
        **body,
    )
    ids = draw(st.lists(_attachment_ids, unique=True, max_size=3))
    attachments = tuple(
        Attachment(
            id=i,
            name=draw(_attachment_names),
            media_type=draw(st.sampled_from(["application/pdf", "text/plain"])),
            size=draw(st.integers(0, 2**40)),
            sha256=draw(st.sampled_from(["0" * 64, "f" * 64])),
            description=draw(_text),
        )
        for i in ids
    )
    trace = tuple(draw(st.lists(st.builds(Hop, _nonempty, _instants), max_size=3)))
    return Envelope(header, attachments, trace)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_envelopes())
def test_any_valid_envelope_round_trips_through_bytes(env: Envelope) -> None:
    data = serialize(envelope_to_element(env))
    _, parsed = parse_envelope(data)
    assert parsed == env


# -- the schema file itself ------------------------------------------------------------

REMOTE_IMPORT = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:x">
  <xs:import namespace="urn:y" schemaLocation="http://127.0.0.1:9/y.xsd"/>
  <xs:element name="a" type="xs:string"/>
</xs:schema>"""
BROKEN = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:x">
  <xs:element name="a" type="xs:noSuchType"/>
</xs:schema>"""


@pytest.mark.parametrize("text", [REMOTE_IMPORT, BROKEN], ids=["remote-import", "unknown-type"])
def test_schema_file_is_meta_validated_locally(text: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exchange.envelope import schema as schema_module
    from exchange.errors import ConfigError

    path = tmp_path / "envelope-1.0.xsd"
    path.write_text(text)
    monkeypatch.setattr(schema_module, "ENVELOPE_XSD", path)
    schema_module._schema_document.cache_clear()
    try:
        with pytest.raises(ConfigError):
            schema_module._schema_document()
    finally:
        schema_module._schema_document.cache_clear()
