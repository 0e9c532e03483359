"""One test per attack on the signature, each asserting its typed refusal.

Signed samples depend on keys generated per test session, so they are built
here; the two that need no trusted key (an unsigned envelope and an RSA-SHA1
signature, refused before any certificate check) are static files under
tests/data/hostile/signature/.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
from lxml import etree
from signxml import XMLSigner
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.model import (
    ENVELOPE_NS,
    Attachment,
    Envelope,
    new_message_id,
)
from exchange.errors import (
    AgencyMismatchError,
    AttachmentDigestError,
    AttachmentError,
    CertificateExpiredError,
    CertificateRevokedError,
    CertificateUsageError,
    SchemaError,
    SignatureError,
    SignatureMissingError,
    SignatureWrappingError,
    UntrustedCertificateError,
    WeakAlgorithmError,
)
from exchange.signing import pki
from exchange.signing.sign import Signer
from exchange.signing.trust import TrustStore
from exchange.signing.verify import Verifier
from tests.factories import Pki, envelope, pdf
from tests.factories import document as document_info

A, B = "000.00.00.G22", "000.00.00.H41"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"env": ENVELOPE_NS, "ds": DS}
HOSTILE = Path(__file__).resolve().parent.parent / "data" / "hostile" / "signature"
PDF = b"%PDF-1.7 official document bytes" * 100


def q(local: str) -> str:
    return f"{{{ENVELOPE_NS}}}{local}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    # A is the RSA signer, B the ECDSA one, under an ECDSA CA.
    return Pki.create(
        tmp_path_factory.mktemp("attack-pki"), {A: "Văn phòng Chính phủ", B: "UBND tỉnh Nghệ An"}, ec={B}, ec_ca=True
    )


def document(sender: str = A, recipient: str = B, subject: str = "Chỉ thị về phòng chống bão") -> Envelope:
    return envelope(sender, recipient, document_info(subject, promulgation=None), attachments=(pdf(PDF),))


@pytest.fixture
def signed(world: Pki) -> bytes:
    return world.signers[A].sign(document())


def tree(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def out(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def refuse(
    world: Pki, xml: bytes, error: type[Exception], match: str | None = None, data: dict[str, bytes] | None = None
) -> Exception:
    with pytest.raises(error, match=match) as info:
        world.verifier().verify(xml, {"att-1": PDF} if data is None else data)
    return info.value


# -- where the signature is --------------------------------------------------------------


def test_missing_signature_is_refused(world: Pki) -> None:
    unsigned = serialize(envelope_to_element(document()))
    refuse(world, unsigned, SignatureMissingError, "not signed")


@pytest.mark.parametrize("target", ["root", "header", "trace"])
def test_signature_moved_out_of_signed_is_refused(world: Pki, signed: bytes, target: str) -> None:
    root = tree(signed)
    sig = root.find("env:Signed/ds:Signature", NS)
    destination = {
        "root": root,
        "header": root.find("env:Signed/env:Header", NS),
        "trace": etree.SubElement(root, q("Trace")),
    }[target]
    destination.append(sig)
    refuse(world, out(root), SignatureWrappingError, "ds:Signature")


def test_signature_not_last_in_signed_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    s = root.find("env:Signed", NS)
    s.insert(0, s.find("ds:Signature", NS))
    refuse(world, out(root), SignatureWrappingError)


def test_second_signature_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    root.append(copy.deepcopy(root.find("env:Signed/ds:Signature", NS)))
    refuse(world, out(root), SignatureWrappingError, "2 ds:Signature")


# -- signature wrapping --------------------------------------------------------------------


def test_duplicated_header_inside_signed_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    s = root.find("env:Signed", NS)
    evil = copy.deepcopy(s.find("env:Header", NS))
    evil.find("env:Document/env:Subject", NS).text = "Lệnh giả mạo"
    s.insert(0, evil)  # a parser reading the first Header would see the evil one
    refuse(world, out(root), SignatureWrappingError, "2 env:Header")


def test_second_unsigned_header_outside_signed_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    evil = copy.deepcopy(root.find("env:Signed/env:Header", NS))
    evil.find("env:From", NS).set("code", B)
    trace = etree.SubElement(root, q("Trace"))
    trace.append(evil)
    refuse(world, out(root), SignatureWrappingError, "env:Header")


def test_second_signed_element_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    evil = copy.deepcopy(root.find("env:Signed", NS))
    evil.remove(evil.find("ds:Signature", NS))
    evil.set("Id", "s-" + new_message_id())
    root.insert(0, evil)
    refuse(world, out(root), SignatureWrappingError, "2 env:Signed")


def test_classic_wrapping_original_hidden_evil_where_the_verifier_looks(world: Pki, signed: bytes) -> None:
    """XSW: the signed original is tucked away, an evil Signed with the same Id takes its place."""
    root = tree(signed)
    original = root.find("env:Signed", NS)
    evil = copy.deepcopy(original)
    evil.find("env:Header/env:Document/env:Subject", NS).text = "Chuyển 10 tỷ đồng vào tài khoản X"
    root.remove(original)
    sig = original.find("ds:Signature", NS)
    original.remove(sig)
    # The signature moves to the evil element; the original (still referenced by Id) hides in ds:Object.
    obj = etree.SubElement(sig, f"{{{DS}}}Object")
    obj.append(original)
    evil.remove(evil.find("ds:Signature", NS))
    evil.append(sig)
    root.insert(0, evil)
    refuse(world, out(root), SignatureWrappingError)


def test_wrapping_with_the_original_renamed_is_refused(world: Pki, signed: bytes) -> None:
    """Same attack, the hidden original renamed so that only one env:Signed remains: the Id gives it away."""
    root = tree(signed)
    original = root.find("env:Signed", NS)
    evil = copy.deepcopy(original)
    evil.find("env:Header/env:Document/env:Subject", NS).text = "evil"
    hidden = copy.deepcopy(original)
    hidden.remove(hidden.find("ds:Signature", NS))
    for element in hidden.iter():  # rename everything, so that only the Id is left to give it away
        element.tag = q("Hidden" + etree.QName(element).localname)
    evil.find("ds:Signature", NS).append(etree.Element(f"{{{DS}}}Object"))
    evil.find("ds:Signature/ds:Object", NS).append(hidden)
    root.replace(original, evil)
    refuse(world, out(root), SignatureWrappingError, "carry Id")


def test_evil_signed_with_its_own_id_and_the_old_reference_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    s = root.find("env:Signed", NS)
    mid = new_message_id()
    s.set("Id", f"s-{mid}")
    s.find("env:Header/env:MessageId", NS).text = mid
    refuse(world, out(root), SignatureWrappingError, "references")


# -- tampering -------------------------------------------------------------------------------


def test_tampered_header_field_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    root.find("env:Signed/env:Header/env:Document/env:Subject", NS).text = "Nội dung đã bị sửa"
    err = refuse(world, out(root), SignatureError, "digest")
    assert type(err) is SignatureError


def test_tampered_recipient_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    root.find("env:Signed/env:Header/env:To", NS).set("code", "000.00.00.H29")
    assert type(refuse(world, out(root), SignatureError, "digest")) is SignatureError


def test_tampered_manifest_is_refused(world: Pki, signed: bytes) -> None:
    evil = PDF + b"malware"
    root = tree(signed)
    att = root.find("env:Signed/env:Manifest/env:Attachment", NS)
    att.set("size", str(len(evil)))
    att.set("sha256", Attachment.of("x", evil).sha256)
    assert type(refuse(world, out(root), SignatureError, "digest", data={"att-1": evil})) is SignatureError


def test_tampered_signature_value_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    value = root.find("env:Signed/ds:Signature/ds:SignatureValue", NS)
    raw = bytearray(__import__("base64").b64decode(value.text))
    raw[5] ^= 1
    value.text = __import__("base64").b64encode(bytes(raw)).decode()
    assert type(refuse(world, out(root), SignatureError, "does not verify")) is SignatureError


def test_tampered_attachment_bytes_are_refused(world: Pki, signed: bytes) -> None:
    refuse(world, signed, AttachmentDigestError, "altered", data={"att-1": PDF[:-1] + b"X"})


def test_truncated_attachment_is_refused(world: Pki, signed: bytes) -> None:
    refuse(world, signed, AttachmentDigestError, "bytes but the manifest says", data={"att-1": PDF[:-10]})


def test_missing_attachment_is_refused(world: Pki, signed: bytes) -> None:
    err = refuse(world, signed, AttachmentError, "missing", data={})
    assert not isinstance(err, AttachmentDigestError)


def test_extra_unlisted_attachment_is_refused(world: Pki, signed: bytes) -> None:
    refuse(world, signed, AttachmentError, "not in the signed manifest", data={"att-1": PDF, "att-2": b"x"})


# -- certificates ------------------------------------------------------------------------------


def test_certificate_of_another_agency_is_refused(world: Pki) -> None:
    """B's valid certificate signing an envelope From A."""
    forger = Signer(world.signers[B].key, world.signers[B].certificate, allow_invalid=True)
    xml = forger.sign(document(sender=A, recipient=B))
    refuse(world, xml, AgencyMismatchError, f"From agency {A}")


def test_certificate_substituted_in_x509data_is_refused(world: Pki, signed: bytes) -> None:
    """A's signature with B's (trusted) certificate in X509Data: the signature cannot verify with it."""
    root = tree(signed)
    cert_el = root.find("env:Signed/ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS)
    from cryptography.hazmat.primitives.serialization import Encoding

    cert_el.text = "".join(world.signers[B].certificate.public_bytes(Encoding.PEM).decode().splitlines()[1:-1])
    assert type(refuse(world, out(root), SignatureError)) is SignatureError


def test_expired_certificate_is_refused(world: Pki) -> None:
    key, cert = world.ca.issue(A, "expired", validity=dt.timedelta(days=-2), name_suffix="expired")
    xml = Signer.from_files(key, cert, allow_invalid=True).sign(document())
    refuse(world, xml, CertificateExpiredError, "expired at")


def test_not_yet_valid_certificate_is_refused(world: Pki) -> None:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    key, cert = world.ca.issue(A, "future", not_before=start, name_suffix="future")
    xml = Signer.from_files(key, cert, allow_invalid=True).sign(document())
    refuse(world, xml, CertificateExpiredError, "not valid before")


def test_revoked_certificate_is_refused(world: Pki) -> None:
    key, cert = world.ca.issue(A, "revoked", name_suffix="revoked")
    xml = Signer.from_files(key, cert).sign(document())
    world.ca.revoke(A, name_suffix="revoked")
    trust = TrustStore.from_paths([world.ca.cert_path], [world.ca.crl_path])
    with pytest.raises(CertificateRevokedError, match="revoked on"):
        Verifier(trust).verify(xml, {"att-1": PDF})


def test_certificate_from_an_untrusted_ca_is_refused(world: Pki, tmp_path: Path) -> None:
    # Same CA name as the trusted one: only the signature on the certificate tells them apart.
    rogue = pki.DevCA.create(
        tmp_path / "rogue", ec=True, name=world.ca.certificate.subject.rfc4514_string().split("CN=")[1].split(",")[0]
    )
    xml = Signer.from_files(*rogue.issue(A, "Văn phòng Chính phủ", ec=True)).sign(document())
    refuse(world, xml, UntrustedCertificateError, "does not chain to a trusted CA")


def test_certificate_without_digital_signature_usage_is_refused(world: Pki) -> None:
    key, cert = world.ca.issue(A, "encryption only", usages=("key_encipherment",), name_suffix="enc")
    xml = Signer.from_files(key, cert, allow_invalid=True).sign(document())
    refuse(world, xml, CertificateUsageError, "not allowed to sign")


def test_tls_only_extended_key_usage_is_refused(world: Pki) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from exchange.signing.keys import generate_key

    key = generate_key(ec_key=True)
    base = pki.make_agency_certificate(
        key.public_key(), A, "tls", ca_key=world.ca.key, ca_cert=world.ca.certificate, extended_key_usage=False
    )
    builder = x509.CertificateBuilder(
        issuer_name=base.issuer,
        subject_name=base.subject,
        public_key=base.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=base.not_valid_before_utc,
        not_valid_after=base.not_valid_after_utc,
        extensions=list(base.extensions),
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(world.ca.key, hashes.SHA256())
    xml = Signer(key, cert, allow_invalid=True).sign(document())
    refuse(world, xml, CertificateUsageError, "extendedKeyUsage")


# -- algorithms ----------------------------------------------------------------------------------


class _Sha1Signer(XMLSigner):
    """signxml refuses SHA-1 by default; an attacker's tool does not."""

    def check_deprecated_methods(self) -> None:
        return None


@pytest.mark.parametrize(
    "method,digest,match",
    [
        (SignatureMethod.RSA_SHA1, DigestAlgorithm.SHA256, "SHA-1"),
        (SignatureMethod.RSA_SHA256, DigestAlgorithm.SHA1, "SHA-1"),
        (SignatureMethod.RSA_SHA512, DigestAlgorithm.SHA256, "not allowed"),
        (SignatureMethod.RSA_SHA256, DigestAlgorithm.SHA512, "not allowed"),
    ],
)
def test_weak_or_unexpected_algorithms_are_refused(world: Pki, method, digest, match: str) -> None:
    a, env = world.signers[A], document()
    root = envelope_to_element(env)
    placeholder = etree.SubElement(root.find("env:Signed", NS), f"{{{DS}}}Signature", nsmap={"ds": DS})
    placeholder.set("Id", "placeholder")
    signed = _Sha1Signer(
        signature_algorithm=method,
        digest_algorithm=digest,
        c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
    ).sign(root, key=a.key, cert=[a.certificate], reference_uri=f"#s-{env.message_id}", id_attribute="Id")
    refuse(world, serialize(signed), WeakAlgorithmError, match)


def test_inclusive_c14n_is_refused(world: Pki) -> None:
    a, env = world.signers[A], document()
    root = envelope_to_element(env)
    etree.SubElement(root.find("env:Signed", NS), f"{{{DS}}}Signature", nsmap={"ds": DS}).set("Id", "placeholder")
    signed = XMLSigner(c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1).sign(
        root, key=a.key, cert=[a.certificate], reference_uri=f"#s-{env.message_id}", id_attribute="Id"
    )
    refuse(world, serialize(signed), WeakAlgorithmError, "canonicalization")


def test_extra_transform_is_refused(world: Pki, signed: bytes) -> None:
    root = tree(signed)
    transforms = root.find("env:Signed/ds:Signature/ds:SignedInfo/ds:Reference/ds:Transforms", NS)
    etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm="http://www.w3.org/TR/1999/REC-xpath-19991116")
    refuse(world, out(root), WeakAlgorithmError, "transforms")


# -- static samples ---------------------------------------------------------------------------------

STATIC = {
    "unsigned.xml": SignatureMissingError,
    "rsa_sha1.xml": WeakAlgorithmError,
    "not_an_envelope.xml": SchemaError,
}


@pytest.mark.parametrize("name,error", sorted(STATIC.items()))
def test_static_hostile_samples(world: Pki, name: str, error: type[Exception]) -> None:
    refuse(world, (HOSTILE / name).read_bytes(), error, data={})
