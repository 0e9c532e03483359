"""edXML as real senders write it (DOMAIN.md "edXML as it is in the wild"): every shape imports, nothing is lost.

One fixture per shape in tests/data/edxml/wild/ (written for these tests from the
domain notes), imported with the directory beside them (aliases per agency).
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import zipfile
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.edxml import (
    EDXML_NS,
    MAX_CODE_NUMBER,
    EdxmlPackage,
    PackageSource,
    export_package,
    import_package,
    offered_file,
)
from exchange.envelope.edxml.files import unwrap_zip
from exchange.envelope.model import Attachment, Envelope, Header, Hop, Kind, StatusCode
from exchange.envelope.parse import parse_envelope
from exchange.errors import (
    AttachmentError,
    EdxmlError,
    InvalidAgencyCodeError,
    UnknownAgencyError,
)
from exchange.routing.directory import Directory

WILD = Path(__file__).resolve().parents[1] / "data" / "edxml" / "wild"
DIRECTORY = Directory.load(WILD / "directory.toml")
CREATED = datetime(2024, 3, 15, 3, 0, tzinfo=UTC)
MID = "6f9a8b7c-1d2e-4f30-8a4b-5c6d7e8f9a0b"
G22, H41, H29 = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29"

#: fixture -> (kind, sender, recipients, refused organ ids): what import must make of it.
EXPECTED: dict[str, tuple[Kind, str, tuple[str, ...], tuple[str, ...]]] = {
    "base64_wrapped_76_crlf.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "bussiness_first.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "code_number_gateway.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "code_number_sdk_timestamp.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "content_id_bare_on_both.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "content_id_cid_cid.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "content_id_cid_on_both.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "content_types_disagree_octet_stream.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "content_types_zip_wrapped.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "older_attachment_form.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_hub_system_from.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_null_trace_and_response_for.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_numeric_unit_to.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_partial_01_02_g22_response_for.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_partial_02_29_w00_trace.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "organ_id_partial_28_22_h17_from.edxml": (Kind.DOCUMENT, H41, (G22,), ()),
    "organ_id_partial_g12_to.edxml": (Kind.DOCUMENT, G22, (H29,), ()),
    "organ_id_tt2_to.edxml": (Kind.DOCUMENT, G22, (H29,), ()),
    "recipient_unmapped_one_of_two.edxml": (Kind.DOCUMENT, G22, (H41,), ("vxp.unknown.99",)),
    "response_for_empty.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "response_for_empty_children.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "signature_rsa_sha1_truncated_certificate.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "signature_unprefixed_qcvn_namespace.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "status_from_hub_alias.edxml": (Kind.STATUS, H41, (G22,), ()),
    "status_in_message_header.edxml": (Kind.STATUS, H41, (G22,), ()),
    "status_in_status_element.edxml": (Kind.STATUS, H41, (G22,), ()),
    "trace_with_business_and_staff.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "trace_without_organ_id.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "two_attachments_same_bytes.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
    "unmodelled_elements_carried.edxml": (Kind.DOCUMENT, G22, (H41,), ()),
}
FIXTURES = sorted(EXPECTED)


def wild(name: str) -> bytes:
    return (WILD / name).read_bytes()


def imported(name: str, **kwargs: object) -> EdxmlPackage:
    return import_package(wild(name), created_at=CREATED, message_id=MID, agencies=DIRECTORY, **kwargs)  # type: ignore[arg-type]


def normalised_c14n(data: bytes) -> bytes:
    """Exclusive C14N (no comments) after whitespace normalisation: whitespace-only text dropped, text stripped."""
    root = etree.fromstring(data)
    for el in root.iter():
        if isinstance(el.tag, str):
            el.text = (el.text or "").strip() or None
            el.tail = (el.tail or "").strip() or None
    return etree.tostring(root, method="c14n", exclusive=True, with_comments=False)


def nodes(data: bytes) -> Counter[tuple[str, str]]:
    """Every element of a package as (path of {namespace}local names, its stripped text), counted."""
    root = etree.fromstring(data)
    tree = root.getroottree()
    found: Counter[tuple[str, str]] = Counter()
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        path = "/".join(str(a.tag) for a in reversed([el, *el.iterancestors()]))
        text = " ".join((el.text or "").split())
        found[(path, text)] += 1
        for name, value in el.attrib.items():
            found[(f"{path}/@{name}", value)] += 1
    del tree
    return found


def test_every_wild_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in WILD.glob("*.edxml")) == FIXTURES
    assert len(FIXTURES) >= 25


@pytest.mark.parametrize("name", FIXTURES)
def test_every_wild_fixture_imports_as_documented(name: str) -> None:
    kind, sender, recipients, refused = EXPECTED[name]
    package = imported(name)
    h = package.envelope.header
    assert (h.kind, h.sender.code, tuple(r.code for r in h.recipients)) == (kind, sender, recipients)
    assert tuple(r.organ_id for r in package.refused) == refused
    # What import made is a valid bus envelope, and its source survives the envelope XML.
    data = serialize(envelope_to_element(package.envelope))
    _, parsed = parse_envelope(data)
    assert parsed == package.envelope
    source = h.document.source if h.document else h.status.source  # type: ignore[union-attr]
    parsed_source = parsed.header.document.source if parsed.header.document else parsed.header.status.source  # type: ignore[union-attr]
    assert source and parsed_source == source


@pytest.mark.parametrize("name", FIXTURES)
def test_every_element_and_text_of_the_input_appears_in_the_export(name: str) -> None:
    package = imported(name)
    bus_hops = (Hop("exchange", CREATED), Hop("exchange", CREATED.replace(minute=5)))
    for out in (
        export_package(package.envelope, package.attachment_data),
        export_package(package.envelope, package.attachment_data, hops=bus_hops),
    ):
        missing = nodes(wild(name)) - nodes(out)
        assert not missing, f"lost in the export: {sorted(missing)[:5]}"


@pytest.mark.parametrize("name", FIXTURES)
def test_export_of_an_unchanged_import_is_the_input_after_exclusive_c14n(name: str) -> None:
    package = imported(name)
    out = export_package(package.envelope, package.attachment_data)
    assert normalised_c14n(out) == normalised_c14n(wild(name))
    assert out == wild(name)  # stronger: byte for byte, the source is the package


@pytest.mark.parametrize("name", FIXTURES)
def test_the_source_carries_no_attachment_payload_twice(name: str) -> None:
    package = imported(name)
    h = package.envelope.header
    source = PackageSource.decode(h.document.source if h.document else h.status.source)  # type: ignore[union-attr]
    assert len(source.holes) == len(package.envelope.attachments)
    for data in package.attachment_data.values():
        assert base64.b64encode(data)[:40] not in source.skeleton


@pytest.mark.parametrize("name", [n for n in FIXTURES if not n.startswith("status_")])
def test_bus_hops_are_appended_after_the_senders_trace_headers(name: str) -> None:
    package = imported(name)
    at = datetime(2024, 3, 15, 2, 31, 7, tzinfo=UTC)
    out = export_package(package.envelope, package.attachment_data, hops=(Hop("exchange", at),))
    trace_list = etree.fromstring(out).find(f".//{{{EDXML_NS}}}TraceHeaderList")
    before = etree.fromstring(wild(name)).find(f".//{{{EDXML_NS}}}TraceHeaderList")
    assert trace_list is not None and before is not None
    names = [etree.QName(c).localname for c in trace_list]
    old = [etree.QName(c).localname for c in before]
    last = max(i for i, n in enumerate(old) if n == "TraceHeader")
    assert names == [*old[: last + 1], "TraceHeader", *old[last + 1 :]]
    hop = trace_list[last + 1]
    # A bus node is a relay, written as the hub writes its own relay hops: a Timestamp (Vietnam time) alone.
    assert [etree.QName(c).localname for c in hop] == ["Timestamp"] and hop[0].text == "2024/03/15 09:31:07"
    # Only the trace changed.
    hop.getparent().remove(hop)
    assert normalised_c14n(etree.tostring(trace_list.getroottree())) == normalised_c14n(wild(name))


def test_bus_path_keeps_trace_headers_content_ids_and_recipient_names() -> None:
    """As POST /v1/edxml → the recipient's edXML adapter: a new envelope around the same document."""
    name = "content_id_cid_cid.edxml"
    package = imported(name)
    h = package.envelope.header
    assert h.document is not None
    # The ingress node builds a new envelope: its own attachment ids, names from its directory, no trace.
    files = [(a, package.attachment_data[a.id]) for a in package.envelope.attachments]
    attachments = tuple(
        Attachment.of(a.name, data, a.media_type, id=f"att-{i:012d}") for i, (a, data) in enumerate(files)
    )
    bus = Envelope(
        Header(
            message_id=MID,
            kind=Kind.DOCUMENT,
            sender=replace(h.sender, name="VPCP"),
            recipients=tuple(replace(r, name="Nghệ An") for r in h.recipients),
            created_at=CREATED,
            document=h.document,
        ),
        attachments,
    )
    # ... signs it: the source travels in the signed envelope XML ...
    _, received = parse_envelope(serialize(envelope_to_element(bus)))
    data = {a.id: d for a, (_, d) in zip(attachments, files, strict=True)}
    out = export_package(received, data, hops=(Hop("exchange", CREATED), Hop("exchange", CREATED)))
    root = etree.fromstring(out)
    ns = {"e": EDXML_NS}
    assert root.xpath("//e:Reference/e:ContentId/text()", namespaces=ns) == ["cid:cid:x1"]
    assert root.xpath("//e:AttachmentEncoded/e:Attachment/e:ContentId/text()", namespaces=ns) == ["x1"]
    assert root.xpath("//e:To/e:OrganName/text()", namespaces=ns) == ["UBND tỉnh Nghệ An"]
    traces = root.xpath("//e:TraceHeaderList/e:TraceHeader", namespaces=ns)
    assert [t.findtext(f"{{{EDXML_NS}}}OrganId") for t in traces] == [G22, None, None]


def test_an_envelope_changed_since_import_is_written_from_the_model() -> None:
    package = imported("organ_id_hub_system_from.edxml")
    h = package.envelope.header
    assert h.document is not None
    changed = replace(package.envelope, header=replace(h, document=replace(h.document, subject="Đã sửa")))
    out = export_package(changed, package.attachment_data)
    again = import_package(out, created_at=CREATED, message_id=MID)
    assert again.envelope.header.document is not None and again.envelope.header.document.subject == "Đã sửa"
    assert again.envelope.header.sender.code == G22  # the model's agency, not the alias


# -- organ ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "element", "written", "agency"),
    [
        ("organ_id_hub_system_from.edxml", "MessageHeader/From/OrganId", "vxp.saas.03", G22),
        ("organ_id_numeric_unit_to.edxml", "MessageHeader/To[1]/OrganId", "020100107370", H41),
        ("organ_id_partial_g12_to.edxml", "MessageHeader/To[1]/OrganId", "G12", H29),
        ("organ_id_partial_28_22_h17_from.edxml", "MessageHeader/From/OrganId", "28.22.H17", H41),
        ("organ_id_partial_02_29_w00_trace.edxml", "TraceHeader[2]/OrganId", "02.29.W00", "000.00.00.H13"),
        ("organ_id_partial_01_02_g22_response_for.edxml", "ResponseFor[1]/OrganId", "01.02.G22", G22),
        ("organ_id_tt2_to.edxml", "MessageHeader/To[1]/OrganId", "001.00.20.TT2", H29),
        ("organ_id_null_trace_and_response_for.edxml", "TraceHeader[1]/OrganId", "null", None),
        ("organ_id_null_trace_and_response_for.edxml", "ResponseFor[1]/OrganId", "null", None),
        ("status_from_hub_alias.edxml", "MessageHeader/ResponseFor/OrganId", "vxp.saas.03", G22),
    ],
)
def test_organ_ids_map_through_directory_aliases_and_keep_what_was_written(
    name: str, element: str, written: str, agency: str | None
) -> None:
    package = imported(name)
    (use,) = [u for u in package.organ_ids if u.path.endswith(element)]
    assert (use.written, use.agency) == (written, agency)
    assert use.how == ("alias" if agency else "unmapped")
    assert f">{written}<".encode() in export_package(package.envelope, package.attachment_data)


def test_information_ids_that_map_to_nothing_are_kept_verbatim() -> None:
    package = imported("organ_id_null_trace_and_response_for.edxml")
    doc = package.envelope.header.document
    assert doc is not None and doc.response_for[0].organ_id == "null"
    assert [hop.node for hop in package.envelope.trace] == ["null"]


def test_a_recipient_that_maps_to_nothing_is_refused_alone_naming_its_element() -> None:
    package = imported("recipient_unmapped_one_of_two.edxml")
    (refused,) = package.refused
    assert refused.path == "edXML/edXMLEnvelope/edXMLHeader/MessageHeader/To[2]/OrganId"
    assert refused.code == InvalidAgencyCodeError.code and "vxp.unknown.99" in refused.reason
    assert [r.code for r in package.envelope.header.recipients] == [H41]


def test_a_package_whose_every_recipient_maps_to_nothing_is_refused() -> None:
    data = wild("recipient_unmapped_one_of_two.edxml").replace(b">000.00.00.H41<", b">vxp.unknown.98<")
    with pytest.raises(InvalidAgencyCodeError, match=r"MessageHeader/To\[1\]/OrganId: 'vxp.unknown.98'"):
        import_package(data, agencies=DIRECTORY)


def test_a_sender_or_status_recipient_that_maps_to_nothing_is_refused() -> None:
    with pytest.raises(InvalidAgencyCodeError, match=r"MessageHeader/From/OrganId: 'vxp.saas.03'"):
        import_package(wild("organ_id_hub_system_from.edxml"))  # no directory: no aliases
    with pytest.raises(InvalidAgencyCodeError, match=r"ResponseFor/OrganId: 'vxp.saas.03'"):
        import_package(wild("status_from_hub_alias.edxml").replace(b">020100107370<", b">000.00.00.H41<"))
    with pytest.raises(UnknownAgencyError, match=r"From/OrganId: agency 000.00.00.G29"):
        import_package(
            wild("bussiness_first.edxml").replace(b">000.00.00.G22<", b">000.00.00.G29<"), agencies=DIRECTORY
        )


def test_export_writes_the_id_the_peer_knows() -> None:
    package = imported("organ_id_numeric_unit_to.edxml")
    peer_ids = {H41: "vxp.nghean.01", "020100107370": "vxp.nghean.01"}
    from_source = export_package(package.envelope, package.attachment_data, organ_id_for=peer_ids.get)
    from_model = export_package(package.envelope, package.attachment_data, organ_id_for=peer_ids.get, use_source=False)
    for out in (from_source, from_model):
        assert etree.fromstring(out).findtext(f".//{{{EDXML_NS}}}To/{{{EDXML_NS}}}OrganId") == "vxp.nghean.01"
    # Unchanged, it writes back the id the package came with.
    assert b">020100107370<" in export_package(package.envelope, package.attachment_data)


def test_directory_aliases_load_from_json_and_may_not_name_two_agencies(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(
        '{"agency": [{"code": "000.00.00.G22", "name": "VPCP", "node": "n", "aliases": ["vxp.saas.03"]}]}',
        encoding="utf-8",
    )
    assert Directory.load(tmp_path / "d.json").resolve_organ_id("vxp.saas.03") == G22
    (tmp_path / "two.toml").write_text(
        '[[agency]]\ncode = "000.00.00.G22"\nnode = "n"\naliases = ["x"]\n'
        '[[agency]]\ncode = "000.00.00.H41"\nnode = "n"\naliases = ["x"]\n',
        encoding="utf-8",
    )
    with pytest.raises(Exception, match="alias 'x'"):
        Directory.load(tmp_path / "two.toml")


# -- codes, traces, ResponseFor --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "number"),
    [("code_number_sdk_timestamp.edxml", "20240315093000"), ("code_number_gateway.edxml", "GW-20240315093000-17")],
)
def test_long_code_numbers_are_kept_verbatim(name: str, number: str) -> None:
    doc = imported(name).envelope.header.document
    assert doc is not None and doc.code.number == number


def test_code_number_over_the_bound_is_refused_naming_it() -> None:
    too_long = b">" + b"7" * (MAX_CODE_NUMBER + 1) + b"<"
    data = wild("code_number_gateway.edxml").replace(b">GW-20240315093000-17<", too_long)
    with pytest.raises(EdxmlError, match=r"MessageHeader/Code/CodeNumber .* longer than 64"):
        import_package(data, agencies=DIRECTORY)


def test_trace_headers_without_organ_id_or_with_more_children_are_kept_in_order() -> None:
    package = imported("trace_without_organ_id.edxml")
    assert [hop.node for hop in package.envelope.trace] == [G22]
    assert any("TraceHeader[2] has no OrganId" in n for n in package.notes)
    extra = imported("trace_with_business_and_staff.edxml")
    assert extra.carried == (
        "edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader[1]/Business",
        "edXML/edXMLEnvelope/edXMLHeader/TraceHeaderList/TraceHeader[1]/StaffInfo",
    )


@pytest.mark.parametrize("name", ["response_for_empty.edxml", "response_for_empty_children.edxml"])
def test_an_empty_response_for_is_absent(name: str) -> None:
    doc = imported(name).envelope.header.document
    assert doc is not None and doc.response_for == ()


# -- attachments -------------------------------------------------------------------------------------


def test_the_older_attachment_form_imports_attachments_and_content() -> None:
    package = imported("older_attachment_form.edxml")
    names = [(a.id, a.name, a.media_type) for a in package.envelope.attachments]
    assert names == [
        ("attachment-1", "to-trinh.pdf", "application/pdf"),
        ("attachment-2", "phu-luc.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ]
    assert package.attachment_data["attachment-1"].startswith(b"%PDF-1.4")
    doc = package.envelope.header.document
    assert doc is not None and doc.content == "Đề nghị các cơ quan triển khai."
    # The MessageHeader's Content wins; the body's stays in the package and comes back.
    assert "Nội dung văn bản theo mẫu cũ." in export_package(package.envelope, package.attachment_data).decode()


def test_both_content_types_are_kept() -> None:
    package = imported("content_types_disagree_octet_stream.edxml")
    (a,) = package.envelope.attachments
    assert a.media_type == "application/pdf"
    assert package.content_types[a.id] == ("application/pdf", "application/octet-stream")
    fresh = export_package(package.envelope, package.attachment_data, use_source=False)
    assert (
        etree.fromstring(fresh).findtext(
            f"{{{EDXML_NS}}}AttachmentEncoded/{{{EDXML_NS}}}Attachment/{{{EDXML_NS}}}ContentType"
        )
        == "application/octet-stream"
    )


def test_a_zip_wrapped_attachment_keeps_its_bytes_and_is_offered_unwrapped() -> None:
    package = imported("content_types_zip_wrapped.edxml")
    (a,) = package.envelope.attachments
    raw = package.attachment_data[a.id]
    assert raw.startswith(b"PK\x03\x04") and a.media_type == "application/pdf"
    offered = offered_file(package.envelope.header.document, a, raw)
    assert offered.unwrapped and offered.name == "quyet-dinh.pdf" and offered.media_type == "application/pdf"
    assert offered.data.startswith(b"%PDF-1.4")
    plain = imported("content_id_cid_on_both.edxml")
    (p,) = plain.envelope.attachments
    assert offered_file(plain.envelope.header.document, p, plain.attachment_data[p.id]).unwrapped is False


@pytest.mark.parametrize(
    ("name", "manifest", "encoded"),
    [
        ("content_id_cid_on_both.edxml", "cid:x1", "cid:x1"),
        ("content_id_bare_on_both.edxml", "x1", "x1"),
        ("content_id_cid_cid.edxml", "cid:cid:x1", "x1"),
    ],
)
def test_content_ids_match_with_or_without_cid_and_come_back_as_written(name: str, manifest: str, encoded: str) -> None:
    package = imported(name)
    assert [a.id for a in package.envelope.attachments] == ["x1"]
    root = etree.fromstring(export_package(package.envelope, package.attachment_data))
    ns = {"e": EDXML_NS}
    assert root.xpath("//e:Reference/e:ContentId/text()", namespaces=ns) == [manifest]
    assert root.xpath("//e:AttachmentEncoded/e:Attachment/e:ContentId/text()", namespaces=ns) == [encoded]


# -- signatures, unmodelled elements, statuses ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("signature_unprefixed_qcvn_namespace.edxml", "not XMLDSig"),
        ("signature_rsa_sha1_truncated_certificate.edxml", "truncated"),
    ],
)
def test_legacy_signatures_are_kept_as_evidence_and_reported_never_trusted(name: str, note: str) -> None:
    package = imported(name)
    sig = package.signature
    assert sig is not None and sig.algorithm.endswith("rsa-sha1")
    assert any(note in n for n in sig.notes) and any("SHA-1" in n for n in sig.notes)
    assert any("never verified" in n for n in sig.notes)
    assert sig.xml in wild(name) or etree.fromstring(sig.xml) is not None
    assert export_package(package.envelope, package.attachment_data) == wild(name)


def test_unmodelled_elements_are_carried_verbatim_and_listed() -> None:
    package = imported("unmodelled_elements_carried.edxml")
    assert set(package.carried) == {
        "edXML/ExtraInfo",
        "edXML/edXMLEnvelope/edXMLHeader/HubInfo",
        "edXML/edXMLEnvelope/edXMLHeader/Audit",
        "edXML/edXMLEnvelope/edXMLHeader/MessageHeader/IssuingNumber",
    }
    out = export_package(package.envelope, package.attachment_data, hops=(Hop("exchange", CREATED),))
    for text in ("ghi chú của phần mềm gửi", "kiểm tra", "VB-0042", "<edXML:HubId>vxp</edXML:HubId>"):
        assert text in out.decode()


@pytest.mark.parametrize("name", ["status_in_message_header.edxml", "status_in_status_element.edxml"])
def test_both_status_forms_import(name: str) -> None:
    status = imported(name).envelope.header.status
    assert status is not None and status.code is StatusCode.ACCEPTED and status.description == "Đã tiếp nhận"
    assert status.staff is not None and status.staff.staff == "Lê Văn Hùng"


def test_a_status_written_on_the_bus_is_the_hubs_message_header_form() -> None:
    package = imported("status_in_status_element.edxml")
    out = export_package(package.envelope, {}, use_source=False)
    header = etree.fromstring(out).find(f".//{{{EDXML_NS}}}edXMLHeader")
    assert header is not None and [etree.QName(c).localname for c in header] == ["MessageHeader"]
    mh = header[0]
    assert [etree.QName(c).localname for c in mh] == [
        "From",
        "ResponseFor",
        "StaffInfo",
        "StatusCode",
        "Description",
        "Timestamp",
    ]
    assert [etree.QName(c).localname for c in mh[0]] == [
        "OrganId",
        "OrganizationInCharge",
        "OrganName",
        "OrganAdd",
        "Email",
        "Telephone",
        "Fax",
        "Website",
    ]
    again = import_package(out, created_at=CREATED, message_id=MID)
    assert again.envelope == package.envelope
    # A status without staff or timestamp comes back as it was, too.
    h = package.envelope.header
    assert h.status is not None
    bare = replace(
        package.envelope, header=replace(h, status=replace(h.status, staff=None, timestamp=None, description=""))
    )
    again = import_package(export_package(bare, {}, use_source=False), created_at=CREATED, message_id=MID)
    assert again.envelope == bare


# -- hostile and mutated packages ------------------------------------------------------------------------


def zipped(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (zipped([("bomb.pdf", b"\0" * 5_000_000)]), "more than|unzips to"),
        (zipped([("a.pdf", b"%PDF a"), ("b.pdf", b"%PDF b")]), "holds 2 entries"),
        (zipped([("../../etc/cron.d/x", b"* * * * * root sh")]), "has a path"),
        (zipped([("dir/a.pdf", b"%PDF")]), "has a path"),
        (b"PK\x03\x04 not really a zip", "not a ZIP"),
    ],
)
def test_unwrapping_is_bounded(archive: bytes, reason: str) -> None:
    with pytest.raises(AttachmentError, match=reason):
        unwrap_zip(archive)


def test_a_zip_that_breaks_a_bound_is_offered_as_the_zip_itself() -> None:
    package = imported("content_types_zip_wrapped.edxml")
    (a,) = package.envelope.attachments
    bomb = zipped([("quyet-dinh.pdf", b"\0" * 5_000_000)])
    bad = replace(a, size=len(bomb), sha256=hashlib.sha256(bomb).hexdigest())
    doc = package.envelope.header.document
    assert doc is not None
    doc = replace(doc, extra=(("edxml:transfer-type/" + bad.sha256, "application/zip"),))
    offered = offered_file(doc, bad, bomb)
    assert not offered.unwrapped and offered.data == bomb
    assert offered.name == "quyet-dinh.pdf.zip" and offered.media_type == "application/zip" and offered.reason


def test_filedrop_writes_the_unwrapped_file_and_describes_it() -> None:
    from exchange.adapters.base import Incoming
    from exchange.adapters.filedrop import incoming_files

    package = imported("content_types_zip_wrapped.edxml")
    message = Incoming(agency=H41, envelope=package.envelope, xml=b"<signed/>", attachments=package.attachment_data)
    files = incoming_files(message)
    assert files["quyet-dinh.pdf"].startswith(b"%PDF-1.4")
    import json

    (entry,) = json.loads(files["message.json"])["attachments"]
    assert entry["packed"]["media_type"] == "application/zip" and entry["size"] == len(files["quyet-dinh.pdf"])


HYPOTHESIS_SEEDS = [
    n
    for n in FIXTURES
    if n
    in (
        "content_types_zip_wrapped.edxml",
        "older_attachment_form.edxml",
        "status_in_message_header.edxml",
        "unmodelled_elements_carried.edxml",
        "signature_unprefixed_qcvn_namespace.edxml",
    )
]


def test_mutated_packages_raise_only_typed_errors() -> None:
    from hypothesis import HealthCheck, given, seed, settings
    from hypothesis import strategies as st

    from exchange.errors import ExchangeError

    samples = [wild(n) for n in HYPOTHESIS_SEEDS]
    tags = sorted({m.encode() for s in samples for m in re.findall(r"</?[A-Za-z:]+", s.decode())})

    @seed(20241201)
    @settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.sampled_from(samples),
        st.lists(
            st.tuples(
                st.integers(0, 4),
                st.integers(0, 10_000),
                st.integers(0, 200),
                st.binary(max_size=12),
                st.sampled_from(tags),
            ),
            min_size=1,
            max_size=4,
        ),
    )
    def run(sample: bytes, edits: list[tuple[int, int, int, bytes, bytes]]) -> None:
        data = bytearray(sample)
        for op, at, length, junk, tag in edits:
            at %= max(len(data), 1)
            if op == 0:
                del data[at : at + length]
            elif op == 1:
                data[at:at] = junk
            elif op == 2:
                data[at:at] = data[at : at + length]
            elif op == 3:
                data[at:at] = tag + b">" + junk + tag.replace(b"<", b"</", 1) + b">"
            else:
                data[at : at + len(junk)] = junk
        try:
            package = import_package(bytes(data), agencies=DIRECTORY)
        except ExchangeError:
            return
        export_package(package.envelope, package.attachment_data)  # what imports also exports

    run()


async def test_the_edxml_adapter_hands_over_the_senders_package_with_the_bus_hops(tmp_path: Path) -> None:
    from exchange.adapters.base import Incoming, Outcome
    from exchange.adapters.edxml import EdxmlAdapter
    from tests.unit.adapter_fakes import FakeBus

    package = imported("trace_with_business_and_staff.edxml")
    adapter = EdxmlAdapter(H41, {"root": str(tmp_path / "eoffice"), "watch": False}, FakeBus())
    await adapter.start()
    try:
        message = Incoming(agency=H41, envelope=package.envelope, xml=b"<signed/>", attachments=package.attachment_data)
        assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    finally:
        await adapter.stop()
    delivered = (tmp_path / "eoffice" / "incoming" / f"{MID}.edxml").read_bytes()
    assert not nodes(wild("trace_with_business_and_staff.edxml")) - nodes(delivered)
    ns = {"e": EDXML_NS}
    root = etree.fromstring(delivered)
    traces = root.xpath("//e:TraceHeaderList/e:TraceHeader", namespaces=ns)
    assert len(traces) == 3 and traces[0].find("e:Business/e:BusinessCode", ns).text == "SEND"
    # The E-Office can answer it: the standard DocumentId was added, as the adapter does for every document.
    assert root.xpath("//e:MessageHeader/e:DocumentId/text()", namespaces=ns) == ["000.00.00.G22,2024/03/15,12/CV-VPCP"]


@pytest.mark.parametrize("name", [n for n in FIXTURES if n.startswith("status_")])
def test_a_status_package_gets_no_trace_from_the_bus_hops(name: str) -> None:
    package = imported(name)
    assert export_package(package.envelope, {}, hops=(Hop("exchange", CREATED),)) == wild(name)


async def test_the_edxml_adapter_maps_its_own_alias_through_the_nodes_directory(tmp_path: Path) -> None:
    """An E-Office that writes its hub-world id (28.22.H17) as From is the agency the directory says."""
    from exchange.adapters.edxml import EdxmlAdapter
    from tests.unit.adapter_fakes import FakeBus

    class DirectoryBus(FakeBus):
        directory = DIRECTORY

        async def submit_edxml(self, package: bytes, *, idempotency_key: str | None = None):  # type: ignore[override]
            imported = import_package(package, agencies=DIRECTORY)
            result = self._result(idempotency_key, [r.code for r in imported.envelope.header.recipients])
            self.submissions.append(("edxml", {"package": package, "message_id": result.message_id}))
            return result

    bus = DirectoryBus(agency=H41)
    adapter = EdxmlAdapter(H41, {"root": str(tmp_path / "eoffice"), "watch": False}, bus)
    await adapter.start()
    try:
        (tmp_path / "eoffice" / "outgoing" / "p.edxml").write_bytes(wild("organ_id_partial_28_22_h17_from.edxml"))
        assert await adapter.scan_once() == 1
    finally:
        await adapter.stop()
    assert [kind for kind, _ in bus.submissions] == ["edxml"]
    assert list((tmp_path / "eoffice" / "error").iterdir()) == []


async def test_the_edxml_adapter_can_write_qcvn_codes_for_an_eoffice_that_knows_no_aliases(tmp_path: Path) -> None:
    from exchange.adapters.base import Incoming, Outcome
    from exchange.adapters.edxml import EdxmlAdapter
    from exchange.errors import AdapterError
    from tests.unit.adapter_fakes import FakeBus

    class DirectoryBus(FakeBus):
        directory = DIRECTORY

    package = imported("organ_id_hub_system_from.edxml")
    adapter = EdxmlAdapter(
        H41, {"root": str(tmp_path / "eoffice"), "watch": False, "organ_ids": "codes"}, DirectoryBus(agency=H41)
    )
    await adapter.start()
    try:
        message = Incoming(agency=H41, envelope=package.envelope, xml=b"<signed/>", attachments=package.attachment_data)
        assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    finally:
        await adapter.stop()
    delivered = (tmp_path / "eoffice" / "incoming" / f"{MID}.edxml").read_bytes()
    assert etree.fromstring(delivered).findtext(f".//{{{EDXML_NS}}}From/{{{EDXML_NS}}}OrganId") == G22
    with pytest.raises(AdapterError, match="organ_ids"):
        await EdxmlAdapter(H41, {"root": str(tmp_path / "x"), "watch": False, "organ_ids": "hub"}, FakeBus()).start()
