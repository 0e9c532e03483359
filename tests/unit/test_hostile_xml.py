"""Hostile XML: every attack under tests/data/hostile/xml/ raises its own typed error.

The table below is the sidecar: one row per file, with the error it must raise.
A file without a row fails the suite, so a new attack cannot be added untested.
Size, depth and element-count attacks are generated here rather than committed.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from exchange.envelope import parse as parse_module
from exchange.envelope.parse import DEFAULT_LIMITS, XmlLimits, parse_envelope, parse_xml
from exchange.errors import (
    EnvelopeError,
    SchemaError,
    XmlMalformedError,
    XmlSecurityError,
    XmlTooLargeError,
)

HOSTILE = Path(__file__).resolve().parents[1] / "data" / "hostile" / "xml"

#: file -> the error ``parse_envelope`` must raise for it.
EXPECTED: dict[str, type[EnvelopeError]] = {
    "xxe_file_entity.xml": XmlSecurityError,
    "xxe_network_entity.xml": XmlSecurityError,
    "billion_laughs.xml": XmlSecurityError,
    "external_dtd.xml": XmlSecurityError,
    "internal_dtd_no_entities.xml": XmlSecurityError,
    "parameter_entity.xml": XmlSecurityError,
    "processing_instruction.xml": XmlSecurityError,
    # XInclude is never processed; the xi:include element then fails the XSD.
    "xinclude_file.xml": SchemaError,
    "undefined_entity.xml": XmlMalformedError,
    "malformed.xml": XmlMalformedError,
    "non_utf8_garbage.bin": XmlMalformedError,
    # UTF-16 would hide "<!DOCTYPE" from the byte scan; the envelope is UTF-8 only.
    "utf16_xxe.xml": XmlMalformedError,
}

#: Files whose DTD must be refused even if the byte scan were bypassed.
DTD_FILES = [
    "xxe_file_entity.xml",
    "xxe_network_entity.xml",
    "billion_laughs.xml",
    "external_dtd.xml",
    "internal_dtd_no_entities.xml",
    "parameter_entity.xml",
]

PASSWD = Path("/etc/passwd")


def _passwd_markers() -> list[str]:
    """Distinctive lines of the local /etc/passwd, which must never leak into any result."""
    if not PASSWD.exists():
        return ["root:x:0:0"]
    lines = [line for line in PASSWD.read_text(errors="replace").splitlines() if line.count(":") >= 6]
    return lines[:5] or ["root:x:0:0"]


def _assert_no_leak(*texts: object) -> None:
    blob = "\n".join(str(t) for t in texts)
    for marker in _passwd_markers():
        assert marker not in blob
    assert "lollollol" not in blob  # no entity expansion either


def test_every_hostile_file_has_an_expected_error() -> None:
    on_disk = {p.name for p in HOSTILE.iterdir() if p.is_file()}
    assert on_disk == set(EXPECTED), "add each hostile file to EXPECTED with the error it must raise"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_file_raises_its_typed_error(name: str) -> None:
    data = (HOSTILE / name).read_bytes()
    with pytest.raises(EXPECTED[name]) as info:
        parse_envelope(data)
    err = info.value
    assert type(err) is EXPECTED[name]
    assert err.message and err.code
    _assert_no_leak(err, err.message, err.detail, err.to_problem())


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e is not SchemaError))
def test_hostile_file_is_refused_by_parse_xml_itself(name: str) -> None:
    with pytest.raises(EXPECTED[name]):
        parse_xml((HOSTILE / name).read_bytes())


def test_xinclude_is_not_processed() -> None:
    root = parse_xml((HOSTILE / "xinclude_file.xml").read_bytes())
    subject = root.find(".//{urn:exchange:envelope:1}Subject")
    assert subject is not None
    assert subject.text is None  # still the unexpanded xi:include element
    _assert_no_leak(etree.tostring(root, encoding="unicode"))


# -- second line of defence: the parser itself, with the byte scan switched off ---------


@pytest.fixture
def no_byte_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Disable the raw-bytes DTD scan, to prove the parser and the docinfo check hold alone."""
    monkeypatch.setattr(parse_module, "_DTD_MARKER", re.compile(rb"(?!x)x"))


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A local TCP server that records any connection: the parser must never open one."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.2)
    hits: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    hits.append(conn.recv(1024) or b"<connected>")
                except OSError:
                    hits.append(b"<connected>")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    stop.set()
    thread.join(2)
    server.close()


@pytest.mark.parametrize("name", DTD_FILES)
def test_dtd_refused_even_without_the_byte_scan(
    name: str, no_byte_scan: None, listener: tuple[int, list[bytes]]
) -> None:
    port, hits = listener
    data = (HOSTILE / name).read_bytes().replace(b"http://127.0.0.1:9/", f"http://127.0.0.1:{port}/".encode())
    with pytest.raises(XmlSecurityError) as info:
        parse_xml(data)
    _assert_no_leak(info.value, info.value.detail)
    assert hits == [], "the parser opened a network connection"


@pytest.mark.parametrize("name", ["xxe_file_entity.xml", "xxe_network_entity.xml", "billion_laughs.xml"])
def test_hardened_parser_never_expands_entities(name: str, listener: tuple[int, list[bytes]]) -> None:
    # The parser configuration alone, below every check of ours: entities stay unexpanded.
    port, hits = listener
    data = (HOSTILE / name).read_bytes().replace(b"http://127.0.0.1:9/", f"http://127.0.0.1:{port}/".encode())
    try:
        root = etree.fromstring(data, parse_module._parser())
    except etree.XMLSyntaxError:
        return  # refusing outright is fine too
    text = etree.tostring(root, encoding="unicode") + "".join(root.itertext())
    _assert_no_leak(text)
    assert len(text) < 10_000
    assert hits == []


# -- generated: size, depth, element count -------------------------------------------


def _envelope_padded_to(size: int) -> bytes:
    head = b'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="urn:exchange:envelope:1" version="1.0">'
    tail = b"</env:Envelope>"
    return head + b"a" * (size - len(head) - len(tail)) + tail


def test_oversize_is_refused_before_parsing() -> None:
    data = _envelope_padded_to(DEFAULT_LIMITS.max_bytes + 1)
    with pytest.raises(XmlTooLargeError) as info:
        parse_xml(data)
    assert info.value.detail["limit"] == DEFAULT_LIMITS.max_bytes
    # Not-even-XML of the same size is refused for its size, proving the check comes first.
    with pytest.raises(XmlTooLargeError):
        parse_xml(b"\xff" * (DEFAULT_LIMITS.max_bytes + 1))


def test_exactly_the_size_limit_is_accepted() -> None:
    data = _envelope_padded_to(DEFAULT_LIMITS.max_bytes)
    assert len(data) == DEFAULT_LIMITS.max_bytes
    assert parse_xml(data).tag == "{urn:exchange:envelope:1}Envelope"


def test_size_limit_is_configurable() -> None:
    data = _envelope_padded_to(200)
    with pytest.raises(XmlTooLargeError):
        parse_xml(data, XmlLimits(max_bytes=199))
    parse_xml(data, XmlLimits(max_bytes=200))


def _nested(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


def test_nesting_at_the_depth_limit_is_accepted() -> None:
    parse_xml(_nested(DEFAULT_LIMITS.max_depth))


@pytest.mark.parametrize("depth", [DEFAULT_LIMITS.max_depth + 1, 200, 100_000])
def test_over_deep_nesting_is_refused(depth: int) -> None:
    # 100_000 trips libxml2's own cap first; it must still read as "too large", not "malformed".
    with pytest.raises(XmlTooLargeError):
        parse_xml(_nested(depth))


def test_depth_limit_is_configurable() -> None:
    with pytest.raises(XmlTooLargeError):
        parse_xml(_nested(5), XmlLimits(max_depth=4))
    parse_xml(_nested(5), XmlLimits(max_depth=5))


def _flat(children: int) -> bytes:
    return b"<r>" + b"<c/>" * children + b"</r>"


def test_too_many_elements_is_refused() -> None:
    # The root counts: max_elements children plus the root is one too many.
    parse_xml(_flat(DEFAULT_LIMITS.max_elements - 1))
    with pytest.raises(XmlTooLargeError):
        parse_xml(_flat(DEFAULT_LIMITS.max_elements))


def test_element_limit_is_configurable() -> None:
    with pytest.raises(XmlTooLargeError):
        parse_xml(_flat(10), XmlLimits(max_elements=10))


@pytest.mark.parametrize("data", [b"", b"   \n", b"<a>", b"not xml at all", b"<a></b>"])
def test_empty_and_broken_input_is_malformed(data: bytes) -> None:
    with pytest.raises(XmlMalformedError):
        parse_xml(data)


def test_lowercase_or_spaced_doctype_marker_is_refused() -> None:
    for marker in (b"<!doctype a>", b"<! DOCTYPE a>", b'<!ENTITY x "y">'):
        with pytest.raises((XmlSecurityError,)):
            parse_xml(marker + b"<a/>")


def test_comments_are_dropped_and_do_not_count() -> None:
    root = parse_xml(b"<!-- before --><a><!-- inside --><b/></a>")
    assert [child.tag for child in root] == ["b"]


def test_processing_instruction_outside_the_root_is_refused() -> None:
    with pytest.raises(XmlSecurityError):
        parse_xml(b"<a/><?evil x?>")
