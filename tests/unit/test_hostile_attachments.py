"""Hostile attachment ids and names: refused where they enter, and never able to write outside a folder.

Each file under tests/data/hostile/attachments/ is an unsigned envelope carrying one hostile
manifest entry; the table below is its sidecar (the error it must raise). The same files are
signed here with a trusted agency's key (bypassing the builder, as an attacker holding a key
would) to show the verifier refuses them too. The adapter tests then take the model's own
checks away, to show the file writers confine themselves even if a bad id got through.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lxml import etree

from exchange.adapters import safe_files
from exchange.adapters.base import Incoming, Outcome
from exchange.adapters.filedrop import FileDropAdapter, incoming_files, safe_file_name
from exchange.adapters.recording import RecordingAdapter
from exchange.cli.main import main as cli
from exchange.envelope.model import ENVELOPE_NS, Attachment
from exchange.envelope.parse import envelope_from_element, parse_envelope, parse_xml
from exchange.errors import AttachmentError, EnvelopeError, SchemaError, UnsafePathError, XmlMalformedError
from exchange.signing import pki, xmldsig
from exchange.signing.sign import Signer
from exchange.signing.verify import Verifier
from tests.factories import Pki, envelope
from tests.factories import document as document_info
from tests.factories import incoming as handed_over
from tests.unit.adapter_fakes import HOST, PEER, FakeBus

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile" / "attachments"
PAYLOAD = b"pwned"  # the bytes every hostile manifest entry describes (size 5, its SHA-256)

#: file -> the error ``parse_envelope`` (and the verifier, once signed) must raise for it.
EXPECTED: dict[str, type[EnvelopeError]] = {
    "id_traversal_name_dots.xml": SchemaError,
    "id_traversal_name_message_json.xml": SchemaError,
    "id_absolute.xml": SchemaError,
    "id_backslash_traversal.xml": SchemaError,
    "id_dot_dot.xml": SchemaError,
    # XML 1.0 cannot carry U+0001 at all, not even as a character reference.
    "id_control_char.xml": XmlMalformedError,
    "name_bidi_override.xml": SchemaError,
    "name_bidi_isolate.xml": SchemaError,
    "name_zero_width_space.xml": SchemaError,
    "name_newline.xml": SchemaError,
}


def test_every_hostile_sample_has_an_expected_error() -> None:
    assert sorted(p.name for p in HOSTILE.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_sample_is_refused_by_the_parser(name: str) -> None:
    with pytest.raises(EXPECTED[name]):
        parse_envelope((HOSTILE / name).read_bytes())


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, Verifier]:
    root = tmp_path_factory.mktemp("hostile-attachments-pki")
    keys = Pki.create(root, {PEER: "Văn phòng Chính phủ"}, ec={PEER}, ec_ca=True)
    return keys.signers[PEER], keys.verifier()


def sign_as_attacker(xml: bytes, signer: Signer) -> bytes:
    """A valid signature by a trusted agency over whatever the attacker wrote (no builder, no XSD)."""
    root = etree.fromstring(xml)
    xmldsig.sign(root.find(f"{{{ENVELOPE_NS}}}Signed"), signer.key, [signer.certificate])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e is SchemaError))
def test_validly_signed_hostile_manifest_is_refused_by_the_verifier(signer, name: str) -> None:
    key, verifier = signer
    signed = sign_as_attacker((HOSTILE / name).read_bytes(), key)
    root = parse_xml(signed)
    attachment = root.find(f".//{{{ENVELOPE_NS}}}Attachment")
    with pytest.raises(SchemaError, match="Attachment"):
        verifier.verify(signed, {attachment.get("id"): PAYLOAD})


def test_the_parser_refuses_them_even_without_the_xsd() -> None:
    for name, attr in (("id_traversal_name_dots.xml", "id"), ("name_bidi_override.xml", "name")):
        root = parse_xml((HOSTILE / name).read_bytes())
        with pytest.raises(AttachmentError, match=f"attachment {attr}"):
            envelope_from_element(root)  # validate() skipped on purpose


# -- the model and the builder -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["../../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "-a", "a b", "a\x00", "cid:x", "x" * 129]
)
def test_the_builder_refuses_an_attachment_id_outside_the_pattern(bad_id: str) -> None:
    with pytest.raises(AttachmentError, match="attachment id"):
        Attachment.of("qd.pdf", b"x", id=bad_id)


@pytest.mark.parametrize(
    "good_id", ["att-1", "a0", "7f0c2a1e-4b7d-4c1a-9a51-2f3c8d9e0b11", "part1@vpcp.gov.vn", "x" * 128, "a..b", "A_b+c"]
)
def test_usual_attachment_ids_are_accepted(good_id: str) -> None:
    assert Attachment.of("qd.pdf", b"x", id=good_id).id == good_id


@pytest.mark.parametrize(
    "bad_name",
    [
        "\u202egpj.exe",
        "invoice\u2067fdp.exe",
        "a\u200eb",
        "a\u061cb",
        "qd\u200b.pdf",
        "a\ufeffb",
        "a\nb",
        "a\tb",
        "a\x85b",
        "a\u2028b",
        "",
    ],
)
def test_the_builder_refuses_bidi_control_and_invisible_characters_in_names(bad_name: str) -> None:
    with pytest.raises(AttachmentError, match="attachment"):
        Attachment.of(bad_name, b"x")


def test_vietnamese_names_are_accepted() -> None:
    for name in ("Quyết định 12.pdf", "Quye\u0302\u0301t đi\u0323nh.pdf", "phụ lục (1).xlsx"):  # NFC and NFD
        assert Attachment.of(name, b"x").name == name


def test_the_gateway_refuses_a_bidi_file_name_before_reading_the_part() -> None:
    from exchange.gateway.uploads import _file_name

    with pytest.raises(AttachmentError, match="U\\+202E"):
        _file_name("%E2%80%AEgpj.exe")  # RFC 7578 percent-encoded U+202E
    assert _file_name("Quy%E1%BA%BFt%20%C4%91%E1%BB%8Bnh.pdf") == "Quyết định.pdf"


# -- the file-drop adapter: even a bad id that got through cannot escape ------------------------------


def forged(attachment_id: str, name: str, data: bytes = PAYLOAD) -> Attachment:
    """An attachment the model would refuse (its checks bypassed), as if a bug had let it through."""
    a = Attachment.of("placeholder.bin", data, id="att-1")
    object.__setattr__(a, "id", attachment_id)
    object.__setattr__(a, "name", name)
    return a


def incoming(*attachments: Attachment) -> Incoming:
    message = envelope(PEER, HOST, document_info("Quyết định", promulgation=None), attachments=attachments)
    return handed_over(message, {a.id: PAYLOAD for a in attachments}, xml=b"<evidence/>")


def every_file(top: Path) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()}


@pytest.fixture
async def filedrop(tmp_path: Path, start_adapter) -> FileDropAdapter:
    options = {"root": str(tmp_path / "site" / "eoffice"), "watch": False}
    return await start_adapter(FileDropAdapter(HOST, options, FakeBus()))


@pytest.mark.parametrize(
    "attachment_id,name,file",
    [
        ("../../../pwned", "...", "attachment-1"),
        ("../../pwned", "message.json", "attachment-1.json"),
        ("../../pwned", "envelope.xml", "attachment-1.xml"),
        ("/tmp/pwned", "", "attachment-1"),
        ("..\\..\\pwned", "...", "attachment-1"),
    ],
)
async def test_file_drop_never_writes_outside_its_folder(
    filedrop, tmp_path: Path, attachment_id: str, name: str, file: str
) -> None:
    message = incoming(forged(attachment_id, name))
    assert (await filedrop.deliver(message)).outcome is Outcome.DELIVERED
    folder = filedrop.folders.incoming / message.message_id
    assert every_file(tmp_path) == {
        f"site/eoffice/incoming/{message.message_id}/{f}" for f in ("message.json", "envelope.xml", file)
    }
    meta = json.loads((folder / "message.json").read_bytes())
    assert meta["kind"] == "document"  # not replaced by an attachment
    assert [e["file"] for e in meta["attachments"]] == [file]
    assert (folder / file).read_bytes() == PAYLOAD
    assert (folder / "envelope.xml").read_bytes() == b"<evidence/>"


def test_fallback_names_are_unique_and_not_taken_from_the_id() -> None:
    message = incoming(
        forged("../a", "..."),
        forged("../b", "..."),
        forged("c", "MESSAGE.JSON"),
        forged("d", "attachment-1"),
        forged("e", "Qd.pdf"),
        forged("f", "qd.PDF"),
    )
    files = incoming_files(message)
    assert sorted(files) == sorted(
        [
            "message.json",
            "envelope.xml",
            "attachment-1",
            "attachment-2",
            "attachment-3.JSON",
            "attachment-4",
            "Qd.pdf",
            "attachment-6.PDF",
        ]
    )
    assert all("/" not in f and ".." not in f for f in files)


@pytest.mark.parametrize(
    "raw,clean",
    [
        ("\u202egpj.exe", "_gpj.exe"),
        ("..", ""),
        ("...", ""),
        (" . ", ""),
        ("CON", ""),
        ("nul.txt", ""),
        ("a/b/../c.pdf", "c.pdf"),
        ("report.pdf.", "report.pdf"),
        ("a:b*c?.txt", "a_b_c_.txt"),
        ("đ" * 300 + ".pdf", "đ" * 98 + ".pdf"),
    ],
)
def test_safe_file_name(raw: str, clean: str) -> None:
    assert safe_file_name(raw) == clean
    assert len(safe_file_name(raw).encode()) <= 200


async def test_file_drop_never_sends_a_file_reached_through_a_link_out_of_its_folder(filedrop, tmp_path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----")
    os.symlink(secret, filedrop.folders.outgoing / "link")
    (filedrop.folders.outgoing / "x.json").write_text(
        json.dumps(
            {"to": [PEER], "document": {"number": "1", "subject": "x"}, "attachments": [{"file": "link/key.pem"}]}
        )
    )
    assert await filedrop.scan_once() == 1
    assert filedrop.bus.submissions == []
    reason = (filedrop.folders.error / "x.reason.txt").read_text()
    assert "outside outgoing/" in reason
    assert (secret / "key.pem").exists()  # not moved out of its place either


@pytest.mark.parametrize(
    "listed", [{"file": "a.txt", "name": "\u202egpj.exe"}, {"file": "\u202egpj.exe"}], ids=["name", "file-name"]
)
async def test_file_drop_refuses_a_bidi_name_in_a_drop(filedrop, listed: dict) -> None:
    (filedrop.folders.outgoing / listed["file"]).write_bytes(PAYLOAD)
    (filedrop.folders.outgoing / "x.json").write_text(
        json.dumps({"to": [PEER], "document": {"number": "1", "subject": "x"}, "attachments": [listed]})
    )
    assert await filedrop.scan_once() == 1
    assert filedrop.bus.submissions == []
    assert "attachment-invalid" in (filedrop.folders.error / "x.reason.txt").read_text()


# -- the shared helper -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "/abs", "a\\b", "a\x00b", "x" * 256])
def test_check_component_refuses_anything_but_one_plain_name(name: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_files.check_component(name)


def test_atomic_writes_refuse_a_path_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnsafePathError):
        safe_files.atomic_write_dir(tmp_path / "m", {"ok.txt": b"1", "../escape.txt": b"2"})
    assert list(tmp_path.iterdir()) == []


def test_a_planted_link_is_replaced_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"original")
    folder = tmp_path / "folder"
    folder.mkdir()
    os.symlink(outside, folder / "result.json")
    safe_files.atomic_write_file(folder / "result.json", b"new")
    assert outside.read_bytes() == b"original"
    assert not (folder / "result.json").is_symlink() and (folder / "result.json").read_bytes() == b"new"
    os.symlink(outside, folder / "planted")
    with pytest.raises(OSError), safe_files.open_dir(folder) as fd:
        safe_files.write_new_file(fd, "planted", b"x")
    assert outside.read_bytes() == b"original"


def test_confined_resolves_links(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "up")
    assert safe_files.confined(tmp_path / "root", "a", "b.txt") == tmp_path / "root" / "a" / "b.txt"
    for parts in (("up", "x"), ("..", "x"), ("/etc/passwd",)):
        with pytest.raises(UnsafePathError):
            safe_files.confined(tmp_path / "root", *parts)


async def test_recording_adapter_does_not_write_through_a_planted_link(tmp_path: Path, start_adapter) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"original\n")
    os.symlink(target, tmp_path / "records.jsonl")
    adapter = await start_adapter(RecordingAdapter(HOST, {"path": str(tmp_path / "records.jsonl")}, FakeBus()))
    result = await adapter.deliver(incoming(Attachment.of("a.txt", PAYLOAD, id="att-1")))
    assert result.outcome is Outcome.TRANSIENT
    assert target.read_bytes() == b"original\n"


# -- exchange sign ----------------------------------------------------------------------------------------


def test_exchange_sign_refuses_a_traversing_attachment_id(tmp_path: Path, capsys) -> None:
    ca = pki.DevCA.create(tmp_path / "pki", ec=True)
    key, cert = ca.issue(PEER, "Văn phòng Chính phủ", ec=True)
    (tmp_path / "qd.pdf").write_bytes(PAYLOAD)
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "from": PEER,
                "to": [HOST],
                "document": {"number": "1", "subject": "x"},
                "attachments": [{"file": "qd.pdf", "id": "../../../pwned"}],
            }
        )
    )
    out = tmp_path / "out" / "deep"
    code = cli(
        [
            "sign",
            "--key",
            str(key),
            "--cert",
            str(cert),
            "--meta",
            str(meta),
            "--attach",
            str(tmp_path / "qd.pdf"),
            "--out",
            str(out / "e.xml"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "[attachment-invalid]" in err and "attachment id" in err
    assert not (tmp_path / "pwned").exists() and not out.exists()


def test_exchange_sign_writes_attachment_copies_by_id(tmp_path: Path, capsys) -> None:
    ca = pki.DevCA.create(tmp_path / "pki", ec=True)
    key, cert = ca.issue(PEER, "Văn phòng Chính phủ", ec=True)
    (tmp_path / "qd.pdf").write_bytes(PAYLOAD)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"from": PEER, "to": [HOST], "document": {"number": "1", "subject": "x"}}))
    code = cli(
        [
            "sign",
            "--key",
            str(key),
            "--cert",
            str(cert),
            "--meta",
            str(meta),
            "--attach",
            str(tmp_path / "qd.pdf"),
            "--out",
            str(tmp_path / "out" / "e.xml"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "e.attachments" / "att-1").read_bytes() == PAYLOAD
    assert cli(["verify", str(tmp_path / "out" / "e.xml"), "--ca", str(ca.cert_path)]) == 0
