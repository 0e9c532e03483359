"""Interoperability with xmlsec1 (libxmlsec1, the reference C implementation), both directions,
and the `exchange verify` command as a subprocess.

Needs the Debian package xmlsec1; installed on demand once, else these tests skip.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from exchange.envelope.build import envelope_to_element, serialize
from exchange.envelope.model import ENVELOPE_NS, Envelope
from exchange.signing import pki
from tests.factories import Pki, envelope, pdf
from tests.factories import document as document_info

A, B = "000.00.00.G22", "000.00.00.H41"
DS = "http://www.w3.org/2000/09/xmldsig#"
ID_ATTR = ["--id-attr:Id", f"{ENVELOPE_NS}:Signed"]
PDF = b"%PDF-1.7 interop" * 64
ALGORITHMS = {
    "rsa": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "ec": "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
}


@functools.lru_cache(maxsize=1)
def xmlsec1() -> str | None:
    """The xmlsec1 binary; one attempt to install the Debian package if it is missing."""
    found = shutil.which("xmlsec1")
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "xmlsec1"], capture_output=True, timeout=300, check=False)
        found = shutil.which("xmlsec1")
    return found


@pytest.fixture(scope="module")
def tool() -> str:
    path = xmlsec1()
    if path is None:
        pytest.skip(
            "xmlsec1 is not installed and `apt-get install -y xmlsec1` failed: install the Debian "
            "package xmlsec1 to run the interop tests"
        )
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(
        tmp_path_factory.mktemp("interop-pki"), {A: "Văn phòng Chính phủ", B: "UBND tỉnh Nghệ An"}, ec={B}
    )


def document(sender: str) -> Envelope:
    info = document_info("Thử liên thông xmlsec1 — ký số", promulgation=None)
    return envelope(
        sender, B if sender == A else A, info, attachments=(pdf(PDF),), sender_name="Gửi", recipient_name="Nhận"
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("code", [A, B], ids=["rsa", "ecdsa"])
def test_envelope_signed_by_exchange_verifies_with_xmlsec1(tool: str, keys: Pki, tmp_path: Path, code: str) -> None:
    xml = keys.signers[code].sign(document(code))
    path = tmp_path / "signed.xml"
    path.write_bytes(xml)
    proc = run(tool, "--verify", "--trusted-pem", str(keys.ca.cert_path), *ID_ATTR, str(path))
    assert proc.returncode == 0, proc.stderr
    # And xmlsec1 sees a tampered copy as broken, so the check above means something.
    path.write_bytes(xml.replace(b"xmlsec1", b"XMLSEC1"))
    assert run(tool, "--verify", "--trusted-pem", str(keys.ca.cert_path), *ID_ATTR, str(path)).returncode != 0


def template(envelope: Envelope, key_type: str) -> bytes:
    """The unsigned envelope with an XMLDSig template as Signed's last child, our algorithms throughout."""
    root = envelope_to_element(envelope)
    signed = root.find(f"{{{ENVELOPE_NS}}}Signed")
    sig = etree.SubElement(signed, f"{{{DS}}}Signature", nsmap={"ds": DS})
    info = etree.SubElement(sig, f"{{{DS}}}SignedInfo")
    etree.SubElement(info, f"{{{DS}}}CanonicalizationMethod", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    etree.SubElement(info, f"{{{DS}}}SignatureMethod", Algorithm=ALGORITHMS[key_type])
    ref = etree.SubElement(info, f"{{{DS}}}Reference", URI=f"#{signed.get('Id')}")
    transforms = etree.SubElement(ref, f"{{{DS}}}Transforms")
    etree.SubElement(
        transforms, f"{{{DS}}}Transform", Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"
    )
    etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#")
    etree.SubElement(ref, f"{{{DS}}}DigestMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#sha256")
    etree.SubElement(ref, f"{{{DS}}}DigestValue")
    etree.SubElement(sig, f"{{{DS}}}SignatureValue")
    key_info = etree.SubElement(sig, f"{{{DS}}}KeyInfo")
    etree.SubElement(etree.SubElement(key_info, f"{{{DS}}}X509Data"), f"{{{DS}}}X509Certificate")
    return serialize(root)


@pytest.mark.parametrize("code,key_type", [(A, "rsa"), (B, "ec")], ids=["rsa", "ecdsa"])
def test_envelope_signed_by_xmlsec1_verifies_with_exchange_and_the_cli(
    tool: str, keys: Pki, tmp_path: Path, code: str, key_type: str
) -> None:
    message = document(code)
    tmpl = tmp_path / "template.xml"
    tmpl.write_bytes(template(message, key_type))
    key, cert = keys.ca.agency_paths(code)
    signed_path = tmp_path / "signed-by-xmlsec1.xml"
    proc = run(tool, "--sign", "--privkey-pem", f"{key},{cert}", *ID_ATTR, "--output", str(signed_path), str(tmpl))
    assert proc.returncode == 0, proc.stderr
    xml = signed_path.read_bytes()

    verified = keys.verifier().verify(xml, {"att-1": PDF})
    assert verified.signed.envelope == message
    assert verified.signer_agency == code

    att_dir = tmp_path / "atts"
    att_dir.mkdir()
    (att_dir / "att-1").write_bytes(PDF)
    cli = run(
        sys.executable,
        "-m",
        "exchange.cli.main",
        "verify",
        str(signed_path),
        "--attachments-dir",
        str(att_dir),
        "--ca",
        str(keys.ca.cert_path),
        "--crl",
        str(keys.ca.crl_path),
    )
    assert cli.returncode == 0, cli.stderr
    assert f"signed by agency {code}" in cli.stdout and "attachments: 1 OK" in cli.stdout


def test_cli_verify_refusal_is_one_line_without_traceback(keys: Pki, tmp_path: Path) -> None:
    xml = keys.signers[A].sign(document(A))
    path = tmp_path / "tampered.xml"
    path.write_bytes(xml.replace("Thử liên thông".encode(), "Giả mạo".encode()))
    proc = run(sys.executable, "-m", "exchange.cli.main", "verify", str(path), "--ca", str(keys.ca.cert_path))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("exchange: error [signature-invalid]:"), proc.stderr
    assert "digest" in lines[0]


def test_cli_verify_with_an_untrusted_ca_names_the_reason(keys: Pki, tmp_path: Path) -> None:
    other = pki.DevCA.create(tmp_path / "other", ec=True)
    path = tmp_path / "signed.xml"
    path.write_bytes(keys.signers[B].sign(document(B)))
    proc = run(sys.executable, "-m", "exchange.cli.main", "verify", str(path), "--ca", str(other.cert_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("exchange: error [certificate-untrusted]:")
