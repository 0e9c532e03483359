"""The pinned XMLDSig core against signxml, an independent general implementation.

Both directions must interoperate, and on any mutation of a signed envelope our
verifier may be stricter than signxml but never more lenient. xmlsec1 is the
third implementation (tests/integration/test_xmlsec_interop.py).
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.model import ENVELOPE_NS, Envelope
from exchange.errors import ExchangeError, SignatureError, WeakAlgorithmError
from exchange.signing import pki, xmldsig
from exchange.signing.sign import Signer
from exchange.signing.verify import Verifier
from tests.factories import Pki, envelope, pdf
from tests.factories import document as document_info

A, B = "000.00.00.G22", "000.00.00.H41"
DS = xmldsig.DS_NS
SIGNED = f"{{{ENVELOPE_NS}}}Signed"
PDF = b"%PDF-1.7 pinned xmldsig" * 50
CODES = {"rsa": A, "ecdsa": B}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[pki.DevCA, dict[str, Signer], Verifier]:
    keys = Pki.create(
        tmp_path_factory.mktemp("xmldsig-pki"), {A: "Văn phòng Chính phủ", B: "UBND tỉnh Nghệ An"}, ec={B}
    )
    return keys.ca, {"rsa": keys.signers[A], "ecdsa": keys.signers[B]}, keys.verifier()


def document(sender: str) -> Envelope:
    info = document_info("Quyết định — kiểm tra chữ ký <&>", number="7", notation="QĐ-UBND", promulgation=None)
    return envelope(
        sender, B if sender == A else A, info, attachments=(pdf(PDF),), sender_name="Gửi", recipient_name="Nhận"
    )


def signxml_accepts(xml: bytes, signer: Signer) -> bool:
    """signxml's verdict, pinned to the same certificate, location and algorithms."""
    config = SignatureConfiguration(
        location=f"./{SIGNED}/",
        expect_references=1,
        signature_methods=frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.ECDSA_SHA256}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
    )
    try:
        XMLVerifier().verify(xml, x509_cert=signer.certificate, id_attribute="Id", expect_config=config)
    except Exception:  # noqa: BLE001 - any refusal counts as a refusal
        return False
    return True


def ours_accepts(xml: bytes, verifier: Verifier) -> bool:
    try:
        verifier.verify(xml, {"att-1": PDF})
    except ExchangeError:
        return False
    return True


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_our_signature_verifies_with_signxml(world, kind: str) -> None:
    _, signers, _ = world
    xml = signers[kind].sign(document(CODES[kind]))
    assert signxml_accepts(xml, signers[kind])


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_a_signxml_signature_verifies_with_ours(world, kind: str) -> None:
    _, signers, verifier = world
    signer = signers[kind]
    root = envelope_to_element(document(CODES[kind]))
    signed = root.find(SIGNED)
    placeholder = etree.SubElement(signed, f"{{{DS}}}Signature", nsmap={"ds": DS}, Id="placeholder")
    method = SignatureMethod.ECDSA_SHA256 if kind == "ecdsa" else SignatureMethod.RSA_SHA256
    out = XMLSigner(
        signature_algorithm=method,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    ).sign(root, key=signer.key, cert=[signer.certificate], reference_uri=f"#{signed.get('Id')}", id_attribute="Id")
    signed.remove(placeholder)
    verified = verifier.verify(serialize(out), {"att-1": PDF})
    assert verified.signer_agency == CODES[kind]
    assert verified.signed.envelope.header.document.subject == "Quyết định — kiểm tra chữ ký <&>"


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_text_after_the_signature_is_covered_as_the_enveloped_transform_says(world, kind: str) -> None:
    """The transform removes the Signature node only; text after it stays signed (lxml keeps it as a tail)."""
    _, signers, verifier = world
    root = envelope_to_element(document(CODES[kind]))
    signed = root.find(SIGNED)
    signed[-1].tail = "\n"  # the Manifest's tail: Signed's last text, present when signing
    signature = xmldsig.sign(signed, signers[kind].key, [signers[kind].certificate])
    # Move that text after the signature: the same node-set once the signature is removed.
    signed[-2].tail, signature.tail = None, "\n"
    xml = serialize(root)
    assert ours_accepts(xml, verifier) and signxml_accepts(xml, signers[kind])
    # Text added after the signature once signed is content that was not signed.
    tampered = xml.replace(b"</ds:Signature>\n", b"</ds:Signature>\nx")
    assert not ours_accepts(tampered, verifier) and not signxml_accepts(tampered, signers[kind])


def test_verification_leaves_the_tree_as_it_was(world) -> None:
    _, signers, _ = world
    xml = signers["rsa"].sign(document(A))
    root = etree.fromstring(xml)
    signed = root.find(SIGNED)
    signature = signed[-1]
    signature.tail = "\n"
    before = etree.tostring(root)
    with pytest.raises(SignatureError):  # the tail was added after signing
        xmldsig.verify(signed, signature, signers["rsa"].certificate.public_key(), xmldsig.RSA_SHA256)
    assert etree.tostring(root) == before


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_never_more_lenient_than_signxml_on_mutations(world, kind: str) -> None:
    """Flip bytes all over a signed envelope: whatever we accept, signxml accepts too."""
    _, signers, verifier = world
    xml = signers[kind].sign(document(CODES[kind]))
    assert ours_accepts(xml, verifier)
    rng = random.Random(20261126)
    accepted = 0
    for _ in range(150):
        pos = rng.randrange(len(xml))
        mutated = xml[:pos] + bytes([rng.choice(b" \n\"'<>=/abcdefXYZ019+")]) + xml[pos + 1 :]
        if mutated == xml:
            continue
        if ours_accepts(mutated, verifier):
            accepted += 1
            assert signxml_accepts(mutated, signers[kind]), mutated
    # Only changes outside what is signed (the XML declaration, Trace, insignificant whitespace) can pass.
    assert accepted < 40


def _refuse(world, kind: str, mutate, error: type[Exception], match: str) -> None:
    _, signers, verifier = world
    root = etree.fromstring(signers[kind].sign(document(CODES[kind])))
    mutate(root.find(f"{SIGNED}/{{{DS}}}Signature"))
    with pytest.raises(error, match=match):
        verifier.verify(etree.tostring(root), {"att-1": PDF})


def _add(parent_path: str, local: str, ns: str = DS, **attrs: str):
    def mutate(signature: etree._Element) -> None:
        parent = signature if parent_path == "." else signature.find(parent_path, {"ds": DS})
        etree.SubElement(parent, f"{{{ns}}}{local}", **attrs)

    return mutate


@pytest.mark.parametrize(
    "mutate,match",
    [
        (_add(".", "Object"), "ds:Signature holds SignedInfo, SignatureValue, KeyInfo, Object"),
        (
            _add(
                "ds:SignedInfo/ds:CanonicalizationMethod", "InclusiveNamespaces", ns=xmldsig.EXC_C14N, PrefixList="env"
            ),
            "CanonicalizationMethod holds InclusiveNamespaces",
        ),
        (
            _add(
                "ds:SignedInfo/ds:Reference/ds:Transforms/ds:Transform[2]",
                "InclusiveNamespaces",
                ns=xmldsig.EXC_C14N,
                PrefixList="env",
            ),
            "Transform holds InclusiveNamespaces",
        ),
        (_add("ds:KeyInfo", "KeyName"), "KeyInfo holds X509Data, KeyName"),
        (_add("ds:SignedInfo/ds:Reference", "Extra"), "Reference holds Transforms, DigestMethod, DigestValue, Extra"),
    ],
    ids=["object", "inclusive-namespaces", "transform-inclusive-namespaces", "key-name", "reference-extra"],
)
def test_anything_outside_the_pinned_shape_is_refused(world, mutate, match: str) -> None:
    _refuse(world, "rsa", mutate, SignatureError, match)


def test_ecdsa_signature_value_must_be_r_concatenated_with_s(world) -> None:
    import base64

    def der_value(signature: etree._Element) -> None:
        value = signature.find(f"{{{DS}}}SignatureValue")
        value.text = base64.b64encode(b"\x30" + bytes(69)).decode()

    _refuse(world, "ecdsa", der_value, SignatureError, "64 bytes")


def test_a_method_that_does_not_match_the_key_is_refused(world) -> None:
    _, signers, _ = world
    root = etree.fromstring(signers["ecdsa"].sign(document(B)))
    signed = root.find(SIGNED)
    with pytest.raises(SignatureError, match="not RSA"):
        xmldsig.verify(signed, signed[-1], signers["ecdsa"].certificate.public_key(), xmldsig.RSA_SHA256)


def _self_signed(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weak")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_small_rsa_and_other_curves_are_refused_both_ways(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    root = envelope_to_element(document(A))
    for key, match in ((small, "1024 bits"), (p384, "secp384r1")):
        with pytest.raises(WeakAlgorithmError, match=match):
            xmldsig.sign(root.find(SIGNED), key, [_self_signed(key)])
    # A 1024-bit signature made by another tool is refused on verification too.
    placeholder = etree.SubElement(root.find(SIGNED), f"{{{DS}}}Signature", nsmap={"ds": DS}, Id="placeholder")
    out = XMLSigner(
        signature_algorithm=SignatureMethod.RSA_SHA256,
        digest_algorithm=DigestAlgorithm.SHA256,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    ).sign(
        root, key=small, cert=[_self_signed(small)], reference_uri=f"#{root.find(SIGNED).get('Id')}", id_attribute="Id"
    )
    placeholder.getparent().remove(placeholder)
    signed = out.find(SIGNED)
    with pytest.raises(WeakAlgorithmError, match="1024 bits"):
        xmldsig.verify(signed, signed[-1], small.public_key(), xmldsig.RSA_SHA256)
