"""Signing and verification round trips, the certificate profile, the dev CA, trust store and CLI.

Keys are generated once per test session into temporary directories; none is committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from exchange.cli.main import main as cli
from exchange.envelope.model import (
    ENVELOPE_NS,
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    Envelope,
    Header,
    Hop,
    Kind,
    ReceiptInfo,
    ReceiptOutcome,
    StatusCode,
    StatusInfo,
    new_message_id,
    utcnow,
)
from exchange.errors import (
    AgencyMismatchError,
    AttachmentDigestError,
    AttachmentError,
    CertificateExpiredError,
    ConfigError,
    KeyMaterialError,
    UntrustedCertificateError,
)
from exchange.signing import pki
from exchange.signing.keys import AgencyIdentity, agency_code_of, generate_key
from exchange.signing.sign import Signer, sign_envelope
from exchange.signing.trust import TrustStore
from exchange.signing.verify import Verifier

G22, H41, H29 = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"env": ENVELOPE_NS, "ds": DS}
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40
XLSX = b"PK\x03\x04" + b"\x00" * 1000


@dataclass
class World:
    ca: pki.DevCA
    trust: TrustStore
    signers: dict[str, Signer]


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    ca = pki.DevCA.create(tmp_path_factory.mktemp("pki"))
    signers = {}
    for code, ec in ((G22, False), (H41, True)):
        key, cert = ca.issue(code, f"Agency {code}", ec=ec)
        signers[code] = Signer.from_files(key, cert)
    return World(ca, TrustStore.from_paths([ca.cert_path], [ca.crl_path]), signers)


def envelope(
    kind: Kind, sender: str = G22, recipient: str = H41, *, attachments: tuple[Attachment, ...] = ()
) -> Envelope:
    body: dict[str, object] = {}
    if kind is Kind.DOCUMENT:
        body["document"] = DocumentInfo(code=DocumentCode("12", "CT-TTg"), subject="Về việc phòng, chống bão số 3")
    elif kind is Kind.STATUS:
        body["status"] = StatusInfo(response_for=new_message_id(), code=StatusCode.ACCEPTED, description="Đã vào sổ")
    else:
        body["receipt"] = ReceiptInfo(
            response_for=new_message_id(), outcome=ReceiptOutcome.DELIVERED, envelope_digest="ab" * 32
        )
    header = Header(
        message_id=new_message_id(),
        kind=kind,
        sender=AgencyRef(sender, "Gửi"),
        recipients=(AgencyRef(recipient, "Nhận"),),
        created_at=utcnow(),
        **body,
    )  # type: ignore[arg-type]
    return Envelope(header, attachments)


def with_files() -> tuple[tuple[Attachment, ...], dict[str, bytes]]:
    a1 = Attachment.of("Quyết định.pdf", PDF, "application/pdf", id="att-1")
    a2 = Attachment.of("phụ lục.xlsx", XLSX, "application/vnd.ms-excel", id="att-2")
    return (a1, a2), {"att-1": PDF, "att-2": XLSX}


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("sender", [G22, H41], ids=["rsa", "ecdsa"])
def test_signed_envelope_verifies_and_rebuilds_the_same_model(world: World, kind: Kind, sender: str) -> None:
    recipient = H41 if sender == G22 else G22
    atts, data = with_files()
    env = envelope(kind, sender, recipient, attachments=atts)
    signed = sign_envelope(env, world.signers[sender], data)
    verified = Verifier(world.trust).verify(signed.xml, data)
    assert verified.signed.envelope == env
    assert verified.signer_agency == sender
    assert verified.certificate == world.signers[sender].certificate
    assert verified.signed.xml == signed.xml
    assert verified.signed.attachment_data == data


@pytest.mark.parametrize("sender,method", [(G22, "rsa-sha256"), (H41, "ecdsa-sha256")])
def test_signature_has_the_prescribed_layout_and_algorithms(world: World, sender: str, method: str) -> None:
    env = envelope(Kind.DOCUMENT, sender, H29)
    xml = world.signers[sender].sign(env)
    root = etree.fromstring(xml)
    signed = root.find("env:Signed", NS)
    assert signed is not None and signed.get("Id") == f"s-{env.message_id}"
    assert [etree.QName(c).localname for c in signed] == ["Header", "Manifest", "Signature"]
    sig = signed[-1]
    assert (
        sig.find("ds:SignedInfo/ds:CanonicalizationMethod", NS).get("Algorithm")
        == "http://www.w3.org/2001/10/xml-exc-c14n#"
    )
    assert sig.find("ds:SignedInfo/ds:SignatureMethod", NS).get("Algorithm").endswith(method)
    (ref,) = sig.findall("ds:SignedInfo/ds:Reference", NS)
    assert ref.get("URI") == f"#s-{env.message_id}"
    assert [t.get("Algorithm") for t in ref.findall("ds:Transforms/ds:Transform", NS)] == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ]
    assert ref.find("ds:DigestMethod", NS).get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#sha256"
    assert sig.find("ds:KeyInfo/ds:X509Data/ds:X509Certificate", NS) is not None
    assert b"sha1" not in xml.lower()
    assert b"\n  <" not in xml  # never pretty-printed


def test_trace_hops_can_be_appended_without_breaking_the_signature(world: World) -> None:
    env = envelope(Kind.DOCUMENT)
    xml = world.signers[G22].sign(env)
    root = etree.fromstring(xml)
    trace = etree.SubElement(root, f"{{{ENVELOPE_NS}}}Trace")
    etree.SubElement(trace, f"{{{ENVELOPE_NS}}}Hop", node="relay-1", at="2026-11-24T05:00:00.010Z")
    relayed = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    verified = Verifier(world.trust).verify(relayed, {})
    assert verified.signed.envelope.trace == (Hop("relay-1", dt.datetime(2026, 11, 24, 5, 0, 0, 10000, tzinfo=dt.UTC)),)


def test_verify_without_attachment_data_skips_the_attachment_check(world: World) -> None:
    atts, data = with_files()
    signed = sign_envelope(envelope(Kind.DOCUMENT, attachments=atts), world.signers[G22], data)
    assert Verifier(world.trust).verify(signed.xml).signed.attachment_data == {}


def test_certificate_carrying_an_intermediate_ca_verifies(world: World, tmp_path: Path) -> None:
    inter = pki.DevCA.create(tmp_path / "inter", issuer=world.ca, ec=True, name="Provincial CA")
    key, cert = inter.issue(H29, "UBND TP HCM")
    signer = Signer.from_files(key, cert)
    assert len(signer.chain) == 1
    env = envelope(Kind.STATUS, H29, G22)
    verified = Verifier(world.trust).verify(signer.sign(env), {})
    assert verified.signer_agency == H29


# -- the signer's own refusals -----------------------------------------------------------


def test_signer_refuses_an_envelope_from_another_agency(world: World) -> None:
    with pytest.raises(AgencyMismatchError):
        world.signers[G22].sign(envelope(Kind.DOCUMENT, sender=H41, recipient=G22))


def test_sign_envelope_checks_attachments_against_the_manifest(world: World) -> None:
    atts, data = with_files()
    env = envelope(Kind.DOCUMENT, attachments=atts)
    with pytest.raises(AttachmentDigestError):
        sign_envelope(env, world.signers[G22], {**data, "att-1": PDF[:-1] + b"!"})
    with pytest.raises(AttachmentDigestError):
        sign_envelope(env, world.signers[G22], {**data, "att-1": PDF + b"!"})
    with pytest.raises(AttachmentError):
        sign_envelope(env, world.signers[G22], {"att-1": PDF})
    with pytest.raises(AttachmentError):
        sign_envelope(env, world.signers[G22], {**data, "att-9": b""})


def test_signer_refuses_an_expired_certificate_unless_told_otherwise(world: World, tmp_path: Path) -> None:
    key, cert = world.ca.issue(G22, "expired", validity=dt.timedelta(days=-1), name_suffix="exp-signer")
    with pytest.raises(CertificateExpiredError):
        Signer.from_files(key, cert)
    assert Signer.from_files(key, cert, allow_invalid=True).agency_code == G22


def test_signer_refuses_a_key_that_the_certificate_does_not_certify(world: World, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    from exchange.signing.keys import save_private_key

    save_private_key(generate_key(ec_key=True), other)
    with pytest.raises(KeyMaterialError, match="does not certify"):
        Signer.from_files(other, world.ca.agency_paths(G22)[1])


def test_missing_key_file_is_a_key_material_error(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="cannot read"):
        Signer.from_files(tmp_path / "nope.key", tmp_path / "nope.pem")


# -- certificate profile and dev CA -----------------------------------------------------


def test_agency_certificate_profile(world: World) -> None:
    key_path, cert_path = world.ca.agency_paths(G22)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert agency_code_of(cert) == G22
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:qcvn102:agency:{G22}"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    assert not ku.value.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(world.ca.key_path).st_mode) == 0o600


def test_agency_code_from_organization_identifier_alone_and_conflicts(world: World) -> None:
    key = generate_key(ec_key=True)
    org_only = pki.make_agency_certificate(
        key.public_key(), H29, "x", ca_key=world.ca.key, ca_cert=world.ca.certificate, san=False
    )
    assert agency_code_of(org_only) == H29
    neither = pki.make_agency_certificate(
        key.public_key(),
        H29,
        "x",
        ca_key=world.ca.key,
        ca_cert=world.ca.certificate,
        san=False,
        organization_identifier=False,
    )
    assert agency_code_of(neither) is None
    with pytest.raises(KeyMaterialError, match="names no single agency"):
        AgencyIdentity.of(key, neither)


def test_dev_ca_index_revocation_and_reissue(tmp_path: Path) -> None:
    ca = pki.DevCA.create(tmp_path / "ca", ec=True)
    ca.issue(G22, "VPCP", ec=True)
    assert ca.issue(G22, "VPCP", ec=True, exist_ok=True) == ca.agency_paths(G22)
    with pytest.raises(KeyMaterialError, match="already exists"):
        ca.issue(G22, "VPCP", ec=True)
    (entry,) = ca.revoke(G22)
    assert entry.revoked
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(entry.serial, 16)) is not None
    assert crl.is_signature_valid(ca.certificate.public_key())
    # A revoked pair is not silently reused.
    with pytest.raises(KeyMaterialError, match="revoked"):
        ca.issue(G22, "VPCP", ec=True, exist_ok=True)
    ca.issue(G22, "VPCP", ec=True, replace=True)
    index = json.loads(ca.index_path.read_text())
    assert [e["revoked_at"] is not None for e in index["certificates"]] == [True, False]
    assert pki.DevCA.load_or_create(ca.dir).certificate == ca.certificate


# -- trust store ------------------------------------------------------------------------


def test_trust_store_reloads_a_rewritten_crl(tmp_path: Path) -> None:
    ca = pki.DevCA.create(tmp_path / "ca", ec=True)
    _, cert_path = ca.issue(G22, "VPCP", ec=True)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    store = TrustStore.from_paths([ca.cert_path], [ca.crl_path], reload_interval=None)
    assert store.check(cert, agency_code=G22).crl_checked
    ca.revoke(G22)
    os.utime(ca.crl_path, (0, 1e9))  # a distinct mtime even on coarse file systems
    assert store.reload_if_changed(force=True)
    from exchange.errors import CertificateRevokedError

    with pytest.raises(CertificateRevokedError):
        store.check(cert)


def test_stale_crl_is_refused_by_default_and_accepted_with_warn(tmp_path: Path) -> None:
    ca = pki.DevCA.create(tmp_path / "ca", ec=True)
    _, cert_path = ca.issue(G22, "VPCP", ec=True)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca.write_crl(next_update=dt.timedelta(days=1))
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    with pytest.raises(UntrustedCertificateError, match="revocation state is unknown"):
        TrustStore.from_paths([ca.cert_path], [ca.crl_path]).check(cert, now=later)
    assert TrustStore.from_paths([ca.cert_path], [ca.crl_path], stale_crl="warn").check(cert, now=later)
    assert TrustStore.from_paths([ca.cert_path], [ca.crl_path], crl_grace=dt.timedelta(days=2)).check(cert, now=later)


def test_issuer_without_crl_is_accepted_unless_a_crl_is_required(tmp_path: Path) -> None:
    ca = pki.DevCA.create(tmp_path / "ca", ec=True)
    _, cert_path = ca.issue(G22, "VPCP", ec=True)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert not TrustStore.from_paths([ca.cert_path]).check(cert).crl_checked
    with pytest.raises(UntrustedCertificateError, match="requires one"):
        TrustStore.from_paths([ca.cert_path], require_crl=True).check(cert)


def test_crl_not_signed_by_its_ca_is_refused_at_load(tmp_path: Path) -> None:
    ca = pki.DevCA.create(tmp_path / "ca", ec=True, name="Same Name CA")
    impostor = pki.DevCA.create(tmp_path / "impostor", ec=True, name="Same Name CA")
    with pytest.raises(ConfigError, match="not signed by that CA"):
        TrustStore.from_paths([ca.cert_path], [impostor.crl_path])


def test_agency_certificate_in_the_trust_store_is_a_config_error(world: World) -> None:
    with pytest.raises(ConfigError, match="not a CA"):
        TrustStore.from_paths([world.ca.agency_paths(G22)[1]])


def test_verifier_clock_is_injectable(world: World) -> None:
    env = envelope(Kind.DOCUMENT)
    xml = world.signers[G22].sign(env)
    far_future = dt.datetime.now(dt.UTC) + dt.timedelta(days=4000)
    with pytest.raises(CertificateExpiredError):
        Verifier(world.trust, clock=lambda: far_future).verify(xml)


# -- CLI --------------------------------------------------------------------------------


def test_cli_pki_sign_and_verify_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert cli(["pki", "init", "--dir", str(d), "--ec"]) == 0
    assert cli(["pki", "issue", "--dir", str(d), "--code", G22, "--name", "Văn phòng Chính phủ", "--ec"]) == 0
    assert cli(["pki", "list", "--dir", str(d)]) == 0
    assert G22 in capsys.readouterr().out
    meta = tmp_path / "meta.toml"
    meta.write_text(
        f"""
kind = "document"
from = {{ code = "{G22}", name = "Văn phòng Chính phủ" }}
to = [ {{ code = "{H41}", name = "UBND tỉnh Nghệ An" }} ]
[document]
number = "12"
notation = "CT-TTg"
subject = "Về việc phòng, chống bão"
priority = 3
promulgation = {{ place = "Hà Nội", date = 2026-11-24 }}
[[attachments]]
file = "qd.pdf"
description = "Bản chính"
""",
        encoding="utf-8",
    )
    pdf = tmp_path / "qd.pdf"
    pdf.write_bytes(PDF)
    out = tmp_path / "out" / "env.xml"
    assert (
        cli(
            [
                "sign",
                "--key",
                str(d / "agencies" / f"{G22}.key"),
                "--cert",
                str(d / "agencies" / f"{G22}.pem"),
                "--meta",
                str(meta),
                "--attach",
                str(pdf),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "out" / "env.attachments" / "att-1").read_bytes() == PDF
    capsys.readouterr()
    assert cli(["verify", str(out), "--ca", str(d / "ca.pem"), "--crl", str(d / "crl.pem")]) == 0
    text = capsys.readouterr().out
    assert f"signed by agency {G22}" in text and "attachments: 1 OK" in text
    assert hashlib.sha256(PDF).hexdigest() in text
    # Tampered attachment bytes: one line, exit 1.
    (tmp_path / "out" / "env.attachments" / "att-1").write_bytes(PDF + b"x")
    assert cli(["verify", str(out), "--ca", str(d / "ca.pem")]) == 1
    assert "attachment-digest-mismatch" in capsys.readouterr().err
    assert cli(["pki", "revoke", "--dir", str(d), "--code", G22]) == 0
    (tmp_path / "out" / "env.attachments" / "att-1").write_bytes(PDF)
    assert cli(["verify", str(out), "--ca", str(d / "ca.pem"), "--crl", str(d / "crl.pem")]) == 1
    assert "certificate-revoked" in capsys.readouterr().err
