"""The verifier's refusals are typed, documented and one line: malformed certificates, X509Data's shape,
CA certificates and other curves as signers, oversized files for `exchange verify`, multi-line library errors.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from lxml import etree

from exchange.cli.main import main as cli
from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.model import (
    ENVELOPE_NS,
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    Envelope,
    Header,
    Kind,
    new_message_id,
    utcnow,
)
from exchange.errors import (
    CertificateMalformedError,
    CertificateUsageError,
    ExchangeError,
    KeyMaterialError,
    SignatureError,
    WeakAlgorithmError,
    XmlMalformedError,
)
from exchange.signing import pki, xmldsig
from exchange.signing.sign import Signer
from exchange.signing.trust import TrustStore
from exchange.signing.verify import Verifier
from tests.unit.hostile_certs import with_duplicated_extension, with_invalid_version

A, B = "000.00.00.G22", "000.00.00.H41"
DS = xmldsig.DS_NS
NS = {"env": ENVELOPE_NS, "ds": DS}
PDF = b"%PDF-1.7 verifier hardening" * 20


@dataclass
class World:
    ca: pki.DevCA
    trust: TrustStore
    signer: Signer  # ECDSA P-256, agency A
    rsa: Signer  # RSA, agency B

    def verifier(self) -> Verifier:
        return Verifier(self.trust)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    ca = pki.DevCA.create(tmp_path_factory.mktemp("hardening-pki"), ec=True)
    signer = Signer.from_files(*ca.issue(A, "Văn phòng Chính phủ", ec=True))
    rsa_signer = Signer.from_files(*ca.issue(B, "UBND tỉnh Nghệ An"))
    return World(ca, TrustStore.from_paths([ca.cert_path], [ca.crl_path]), signer, rsa_signer)


def document(sender: str = A) -> Envelope:
    return Envelope(
        Header(
            message_id=new_message_id(),
            kind=Kind.DOCUMENT,
            sender=AgencyRef(sender),
            recipients=(AgencyRef(B if sender == A else A),),
            created_at=utcnow(),
            document=DocumentInfo(code=DocumentCode("12", "CT-TTg"), subject="Chỉ thị"),
        ),
        attachments=(Attachment.of("qd.pdf", PDF, "application/pdf", id="att-1"),),
    )


def out(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def with_certificate(xml: bytes, der: bytes) -> bytes:
    """The signed envelope with X509Certificate replaced (KeyInfo is outside SignedInfo's reference)."""
    root = etree.fromstring(xml)
    root.find(".//ds:X509Certificate", NS).text = base64.b64encode(der).decode()
    return out(root)


# -- point 2: malformed certificates are typed -----------------------------------------------------------


def malformed(world: World) -> dict[str, bytes]:
    leaf = world.signer.certificate
    return {
        "duplicated-extension": with_duplicated_extension(leaf, world.ca.key, world.ca.certificate),
        "invalid-version": with_invalid_version(leaf, world.ca.key),
        "truncated": leaf.public_bytes(serialization.Encoding.DER)[:-40],
    }


@pytest.mark.parametrize("case", ["duplicated-extension", "invalid-version", "truncated"])
def test_a_malformed_certificate_is_a_typed_certificate_error(world: World, case: str) -> None:
    xml = with_certificate(world.signer.sign(document()), malformed(world)[case])
    with pytest.raises(CertificateMalformedError) as info:
        world.verifier().verify(xml, {"att-1": PDF})
    assert info.value.code == "certificate-malformed" and "\n" not in info.value.message


@pytest.mark.parametrize("case", ["duplicated-extension", "invalid-version"])
def test_exchange_verify_prints_one_line_for_a_malformed_certificate(
    world: World, case: str, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "e.xml"
    path.write_bytes(with_certificate(world.signer.sign(document()), malformed(world)[case]))
    assert cli(["verify", str(path), "--ca", str(world.ca.cert_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("exchange: error [certificate-malformed]: ") and err.count("\n") == 1


def test_a_malformed_ca_file_is_a_key_material_error(world: World, tmp_path: Path) -> None:
    bad_ca = x509.load_der_x509_certificate(
        with_duplicated_extension(world.ca.certificate, world.ca.key, world.ca.certificate),
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(bad_ca.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(KeyMaterialError, match="cannot be read"):
        TrustStore.from_paths([path])


# -- point 6: X509Data holds X509Certificate elements and nothing else --------------------------------------


def _add(local: str, ns: str = DS, text: str | None = None, **attrs: str):
    def mutate(x509_data: etree._Element) -> None:
        etree.SubElement(x509_data, f"{{{ns}}}{local}", **attrs).text = text

    return mutate


def _text(x509_data: etree._Element) -> None:
    x509_data.text = "junk"


def _tail(x509_data: etree._Element) -> None:
    x509_data[0].tail = "junk"


def _cert_attribute(x509_data: etree._Element) -> None:
    x509_data[0].set("Id", "c1")


def _cert_child(x509_data: etree._Element) -> None:
    etree.SubElement(x509_data[0], f"{{{DS}}}X509SubjectName").text = "CN=x"


def _signed_info_text(x509_data: etree._Element) -> None:
    signature = x509_data.getparent().getparent()
    signature.find("ds:SignedInfo", NS).find("ds:SignatureMethod", NS).tail = "junk"


@pytest.mark.parametrize(
    "mutate",
    [
        _add("X509SubjectName", text="CN=Văn phòng Chính phủ"),
        _add("X509IssuerSerial"),
        _add("X509SKI", text="AAAA"),
        _add("Foreign", ns="urn:attacker"),
        _text,
        _tail,
        _cert_attribute,
        _cert_child,
        _signed_info_text,
    ],
    ids=[
        "subject-name",
        "issuer-serial",
        "ski",
        "foreign",
        "text",
        "tail",
        "attribute",
        "child",
        "text-in-signed-info",
    ],
)
def test_x509data_outside_the_pinned_shape_is_refused(world: World, mutate) -> None:
    root = etree.fromstring(world.signer.sign(document()))
    mutate(root.find(".//ds:X509Data", NS))
    with pytest.raises(SignatureError, match=r"X509|text|attributes") as info:
        world.verifier().verify(out(root), {"att-1": PDF})
    assert info.value.code == "signature-invalid"


def test_whitespace_between_signature_elements_is_fine(world: World) -> None:
    root = etree.fromstring(world.signer.sign(document()))
    x509_data = root.find(".//ds:X509Data", NS)
    x509_data.text, x509_data[0].tail = "\n  ", "\n"
    assert world.verifier().verify(out(root), {"att-1": PDF}).signer_agency == A


# -- point 7: the documented codes ---------------------------------------------------------------------------


def sign_raw(envelope: Envelope, key, certificates: list[x509.Certificate]) -> bytes:
    root = envelope_to_element(envelope)
    xmldsig.sign(root.find(f"{{{ENVELOPE_NS}}}Signed"), key, certificates)
    return serialize(root)


def test_a_ca_certificate_as_signer_is_certificate_usage(world: World) -> None:
    xml = sign_raw(document(), world.ca.key, [world.ca.certificate])
    with pytest.raises(CertificateUsageError, match="CA certificate"):
        world.verifier().verify(xml, {"att-1": PDF})


def test_an_intermediate_ca_certificate_as_signer_is_certificate_usage(world: World, tmp_path: Path) -> None:
    inter = pki.DevCA.create(tmp_path / "inter", ec=True, issuer=world.ca, name="Intermediate")
    xml = sign_raw(document(), inter.key, [inter.certificate])
    with pytest.raises(CertificateUsageError) as info:
        world.verifier().verify(xml, {"att-1": PDF})
    assert info.value.code == "certificate-usage"


def test_a_p384_key_is_signature_weak_algorithm(world: World) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = pki.make_agency_certificate(
        key.public_key(), A, "Văn phòng Chính phủ", ca_key=world.ca.key, ca_cert=world.ca.certificate
    )
    # Sign the pinned shape with P-256, then put a real P-384 ECDSA-SHA256 value and certificate in its place.
    root = etree.fromstring(world.signer.sign(document()))
    signature = root.find(".//ds:Signature", NS)
    r, s = decode_dss_signature(key.sign(xmldsig.c14n(signature.find("ds:SignedInfo", NS)), ec.ECDSA(hashes.SHA256())))
    signature.find("ds:SignatureValue", NS).text = base64.b64encode(
        r.to_bytes(48, "big") + s.to_bytes(48, "big")
    ).decode()
    signature.find(".//ds:X509Certificate", NS).text = base64.b64encode(
        cert.public_bytes(serialization.Encoding.DER)
    ).decode()
    with pytest.raises(WeakAlgorithmError, match="secp384r1") as info:
        world.verifier().verify(out(root), {"att-1": PDF})
    assert info.value.code == "signature-weak-algorithm"


def test_a_key_that_does_not_fit_the_method_stays_signature_invalid(world: World) -> None:
    root = etree.fromstring(world.signer.sign(document()))
    root.find(".//ds:X509Certificate", NS).text = base64.b64encode(
        world.rsa.certificate.public_bytes(serialization.Encoding.DER)
    ).decode()
    with pytest.raises(SignatureError, match=r"not RSA|not an EC key") as info:
        world.verifier().verify(out(root), {"att-1": PDF})
    assert info.value.code == "signature-invalid"


# -- point 8: exchange verify checks the size before reading ---------------------------------------------------


def test_exchange_verify_refuses_a_big_file_by_its_size(tmp_path: Path, world: World, capsys) -> None:
    big = tmp_path / "big.xml"
    with big.open("wb") as f:
        f.truncate(200 * 1024 * 1024)  # sparse: costs no disk, and must cost no memory either
    assert cli(["verify", str(big), "--ca", str(world.ca.cert_path)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"exchange: error [xml-too-large]: {big} is 209715200 bytes, over the envelope limit of "
        "1048576 bytes; it is not an envelope (attachments travel beside the XML, not inside it)\n"
    )


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_exchange_verify_reads_a_device_bounded(world: World, capsys) -> None:
    assert cli(["verify", "/dev/zero", "--ca", str(world.ca.cert_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("exchange: error [xml-too-large]: /dev/zero holds more than") and err.count("\n") == 1


# -- point 10: one error, one line ---------------------------------------------------------------------------


def test_a_nul_byte_gives_a_one_line_error(tmp_path: Path, world: World, capsys) -> None:
    path = tmp_path / "nul.xml"
    path.write_bytes(b"<?xml version='1.0'?><env:Envelope xmlns:env='urn:exchange:envelope:1'>\x00</env:Envelope>")
    assert cli(["verify", str(path), "--ca", str(world.ca.cert_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("exchange: error [xml-malformed]: ") and err.count("\n") == 1
    assert "Char 0x0 out of allowed range, line 1" in err


def test_every_error_message_and_problem_detail_is_one_line() -> None:
    error = XmlMalformedError("first\nsecond\r\nthird\u2028fourth \x1b[31mred \u202eevil")
    assert error.message == "first second third fourth \\x1b[31mred \\u202eevil" == str(error)
    assert error.to_problem()["detail"] == error.message

    class Later(ExchangeError):
        pass

    late = Later("ok")
    late.message = "changed\nafterwards"  # what the CLI prints and problem+json carries stay one line
    assert late.message == late.to_problem()["detail"] == "changed afterwards"
    assert json.dumps(late.to_problem()).count("\\n") == 0
