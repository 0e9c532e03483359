"""Bounded fuzzing of the verifier: mutated signed envelopes give a typed refusal or the original, nothing else.

Mutations work on bytes (flips, cuts, splices of hostile fragments), on the tree (elements
removed, duplicated, moved, attributes rewritten, text replaced) and on the certificate's DER
inside X509Data. The property: ``Verifier.verify`` either raises an ExchangeError subclass,
or accepts an envelope whose signed header and manifest are exactly the original's (only the
unsigned Trace may differ). Any other exception (cryptography's, lxml's, a KeyError…) fails.

Reproducible and bounded: derandomized, no example database, a fixed number of examples.
"""

from __future__ import annotations

import base64
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from exchange.envelope.model import ENVELOPE_NS, Envelope, Hop, utcnow
from exchange.errors import ExchangeError
from exchange.signing.sign import sign_envelope
from exchange.signing.verify import Verifier
from tests.factories import Pki, envelope, pdf
from tests.factories import document as document_info

A, B = "000.00.00.G22", "000.00.00.H41"
DS = "http://www.w3.org/2000/09/xmldsig#"
PDF = b"%PDF-1.7 fuzzed" * 10
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

#: Fragments an attacker would try to splice in.
FRAGMENTS = [
    b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>",
    b"&e;",
    b"&#0;",
    b"&#x202E;",
    b"\x00",
    b"\xff\xfe",
    b"]]>",
    b"<![CDATA[x]]>",
    b"<?pi x?>",
    b"<!-- c -->",
    b"<ds:X509SubjectName>CN=x</ds:X509SubjectName>",
    b'<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#"/>',
    b'Id="s-x"',
    b' id="../../x"',
    b"<env:Attachment/>",
    b"<env:Header/>",
    b"\n",
    b"'",
    b'"',
    b"<",
    b">",
    b"=",
    b"xmlns:env='urn:other'",
    b"<x:y xmlns:x='urn:x'/>",
    b"A" * 300,
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, tuple[bytes, Envelope]], Verifier]:
    """One signed envelope per key type (with its model), and a verifier trusting their CA."""
    keys = Pki.create(tmp_path_factory.mktemp("fuzz-pki"), {c: f"Agency {c}" for c in (A, B)}, ec={A}, ec_ca=True)
    out: dict[str, tuple[bytes, Envelope]] = {}
    for name, code in (("ecdsa", A), ("rsa", B)):
        message = envelope(
            code,
            B if code == A else A,
            document_info("Chỉ thị <&> kiểm thử", promulgation=None),
            attachments=(pdf(PDF, "Quyết định.pdf"),),
            sender_name="Gửi",
            recipient_name="Nhận",
            trace=(Hop("node-a", utcnow()),),
        )
        out[name] = (sign_envelope(message, keys.signers[code], {"att-1": PDF}).xml, message)
    return out, keys.verifier()


# -- mutations -------------------------------------------------------------------------------------------------


def _byte_mutation(draw: st.DrawFn, xml: bytes) -> bytes:
    data = bytearray(xml)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "splice", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "splice":
            data[at:at] = draw(st.sampled_from(FRAGMENTS))
        else:
            del data[at:]
    return bytes(data)


def _tree_mutation(draw: st.DrawFn, xml: bytes) -> bytes:
    root = etree.fromstring(xml)
    elements = list(root.iter(etree.Element))
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(elements))
        op = draw(st.sampled_from(["remove", "duplicate", "move", "attribute", "text", "tail", "rename"]))
        parent = target.getparent()
        if op == "remove" and parent is not None:
            parent.remove(target)
        elif op == "duplicate" and parent is not None:
            parent.insert(draw(st.integers(0, len(parent))), etree.fromstring(etree.tostring(target, with_tail=False)))
        elif op == "move" and parent is not None:
            destination = draw(st.sampled_from(elements))
            if target not in destination.iterancestors() and destination is not target:
                destination.append(target)
        elif op == "attribute":
            name = draw(st.sampled_from(["Id", "id", "name", "size", "sha256", "code", "URI", "Algorithm", "{urn:x}a"]))
            target.set(
                name,
                draw(
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).filter(
                        lambda v: (
                            all(c in "\t\n\r" or ord(c) >= 0x20 for c in v) and "\ufffe" not in v and "\uffff" not in v
                        )
                    )
                ),
            )
        elif op in ("text", "tail"):
            value = draw(st.sampled_from(["", " ", "junk", "0" * 64, "AAAA", "s-x", "../x", "\u202e"]))
            setattr(target, op, value)
        elif op == "rename":
            target.tag = draw(
                st.sampled_from(
                    [
                        f"{{{DS}}}Object",
                        f"{{{ENVELOPE_NS}}}Signed",
                        "{urn:x}y",
                        f"{{{DS}}}X509SubjectName",
                        f"{{{ENVELOPE_NS}}}Attachment",
                    ]
                )
            )
        elements = list(root.iter(etree.Element))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _certificate_mutation(draw: st.DrawFn, xml: bytes) -> bytes:
    root = etree.fromstring(xml)
    cert = root.find(f".//{{{DS}}}X509Certificate")
    der = bytearray(base64.b64decode(cert.text))
    op = draw(st.sampled_from(["flip", "truncate", "version", "duplicate-extension"]))
    if op == "flip":
        for _ in range(draw(st.integers(1, 3))):
            der[draw(st.integers(0, len(der) - 1))] = draw(st.integers(0, 255))
    elif op == "truncate":
        del der[draw(st.integers(0, len(der) - 1)) :]
    elif op == "version":  # [0] EXPLICIT INTEGER 2 (v3) -> any other value
        at = der.index(b"\xa0\x03\x02\x01\x02") + 4
        der[at] = draw(st.integers(0, 255))
    else:  # give one id-ce extension (2.5.29.x) the OID of another: the same extension twice
        oids = [i for i in range(len(der) - 4) if der[i : i + 4] == b"\x06\x03\x55\x1d"]
        first, second = draw(st.permutations(oids))[:2]
        der[second + 4] = der[first + 4]
    cert.text = base64.b64encode(bytes(der)).decode()
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@FUZZ
@given(
    kind=st.sampled_from(["ecdsa", "rsa"]),
    mutation=st.sampled_from([_byte_mutation, _tree_mutation, _certificate_mutation]),
    data=st.data(),
)
def test_mutated_signed_envelopes_give_a_typed_refusal_or_the_original(world, kind, mutation, data) -> None:
    samples, verifier = world
    xml, original = samples[kind]
    hostile = mutation(data.draw, xml)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography warns about some damaged certificates before refusing them
        try:
            verified = verifier.verify(hostile, {"att-1": PDF})
        except ExchangeError as exc:
            assert exc.code and "\n" not in exc.message
            return
    env = verified.signed.envelope
    assert (env.header, env.attachments) == (original.header, original.attachments)
