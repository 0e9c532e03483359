"""Signing benchmark: the envelope path beside the raw cryptographic floor, measured in the same run.

An envelope with a ~5 KB header (long subject and content) and one attachment,
measured once with 64 KB and once with 1 MB. For RSA-3072 and ECDSA P-256 it prints:

- sign ops/s: ``sign_envelope`` (build, XSD validation, attachment re-hash, pinned XMLDSig);
- verify ops/s: ``Verifier.verify`` (hardened parse, structure and algorithm checks,
  trust store, pinned XMLDSig, XSD validation, model, attachment re-hash);
- beside each, the raw floor: lxml exclusive c14n of the same Signed element,
  SHA-256 of it and of the attachment bytes, and one raw cryptography sign / verify
  with the same key (for verify, also parsing the received bytes and canonicalising
  SignedInfo, which any verifier of those bytes must do); and the ratio envelope/raw;
- for comparison, the XMLDSig step alone done by signxml, the general engine the
  bus used before ``exchange.signing.xmldsig`` (same key, same shape);
- schema validation alone: compiled lxml XMLSchema vs xmlschema.

    python benchmarks/bench_signing.py [--seconds 1.5]      (about 30 s in total)
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from lxml import etree

from exchange.envelope.build import envelope_to_element
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
from exchange.envelope.schema import ENVELOPE_XSD, validate
from exchange.signing import pki
from exchange.signing.sign import Signer, sign_envelope
from exchange.signing.trust import TrustStore
from exchange.signing.verify import Verifier

A, B = "000.00.00.G22", "000.00.00.H41"


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per second of ``fn`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


#: The attachment sizes the issue asks for, each measured on its own envelope.
SIZES = {"64 KB": 64 * 1024, "1 MB": 1024 * 1024}


def sample(sender: str, size: int) -> tuple[Envelope, dict[str, bytes]]:
    blob = hashlib.sha256(b"seed").digest() * (size // 32)
    subject = (
        "Về việc triển khai thực hiện Chỉ thị của Thủ tướng Chính phủ về tăng cường công tác phòng, "
        "chống thiên tai, tìm kiếm cứu nạn năm 2026 "
    )[:480]
    content = (
        "Nội dung văn bản: các bộ, ngành, địa phương chủ động rà soát phương án ứng phó, bảo đảm an toàn "
        "cho người dân và tài sản của Nhà nước. "
    ) * 28
    atts = (Attachment.of("phu-luc.pdf", blob, "application/pdf", id="att-1"),)
    env = Envelope(
        Header(
            message_id=new_message_id(),
            kind=Kind.DOCUMENT,
            sender=AgencyRef(sender, "Văn phòng Chính phủ"),
            recipients=(AgencyRef(B if sender == A else A, "UBND tỉnh Nghệ An"),),
            created_at=utcnow(),
            document=DocumentInfo(code=DocumentCode("12", "CT-TTg"), subject=subject, content=content),
        ),
        attachments=atts,
    )
    return env, {"att-1": blob}


def bench_key(label: str, signer: Signer, verifier: Verifier, seconds: float, size_label: str) -> None:
    env, data = sample(signer.agency_code, SIZES[size_label])
    signed = sign_envelope(env, signer, data)
    header_bytes = len(
        etree.tostring(envelope_to_element(env).find(f"{{{ENVELOPE_NS}}}Signed"), method="c14n", exclusive=True)
    )
    key = signer.key
    # What each side canonicalises: the unsigned Signed when signing, the received one when verifying.
    unsigned_el = envelope_to_element(env).find(f"{{{ENVELOPE_NS}}}Signed")
    signed_el = etree.fromstring(signed.xml).find(f"{{{ENVELOPE_NS}}}Signed")
    blobs = list(data.values())

    def raw_digest(element: etree._Element) -> bytes:
        c14n = etree.tostring(element, method="c14n", exclusive=True)
        for blob in blobs:
            hashlib.sha256(blob).digest()
        return hashlib.sha256(c14n).digest()

    # A verifier is handed bytes: whatever it is, it parses them, canonicalises the signed element and
    # SignedInfo, hashes them and the attachment, and checks one signature value. That is its floor.
    def raw_received() -> bytes:
        signed_rx = etree.fromstring(signed.xml).find(f"{{{ENVELOPE_NS}}}Signed")
        raw_digest(signed_rx)
        return etree.tostring(signed_rx[-1][0], method="c14n", exclusive=True)

    if isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(raw_received(), ec.ECDSA(hashes.SHA256()))

        def raw_sign() -> None:
            key.sign(raw_digest(unsigned_el), ec.ECDSA(hashes.SHA256()))

        def raw_verify() -> None:
            key.public_key().verify(sig, raw_received(), ec.ECDSA(hashes.SHA256()))
    else:
        sig = key.sign(raw_received(), padding.PKCS1v15(), hashes.SHA256())

        def raw_sign() -> None:
            key.sign(raw_digest(unsigned_el), padding.PKCS1v15(), hashes.SHA256())

        def raw_verify() -> None:
            key.public_key().verify(sig, raw_received(), padding.PKCS1v15(), hashes.SHA256())

    try:
        from signxml import SignatureConfiguration, XMLSigner, XMLVerifier
        from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
    except ImportError:  # a development extra (pip install -e '.[dev]')
        XMLSigner = None
    if XMLSigner is not None:
        method = (
            SignatureMethod.ECDSA_SHA256 if isinstance(key, ec.EllipticCurvePrivateKey) else SignatureMethod.RSA_SHA256
        )
        sx_signer = XMLSigner(
            signature_algorithm=method,
            digest_algorithm=DigestAlgorithm.SHA256,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        )
        sx_config = SignatureConfiguration(
            location=f"./{{{ENVELOPE_NS}}}Signed/",
            expect_references=1,
            signature_methods=frozenset({method}),
            digest_algorithms=frozenset({DigestAlgorithm.SHA256}),
        )
        ref = f"#{signed_el.get('Id')}"

        def signxml_sign() -> None:
            root = envelope_to_element(env)
            placeholder = etree.SubElement(
                root.find(f"{{{ENVELOPE_NS}}}Signed"), "{http://www.w3.org/2000/09/xmldsig#}Signature", Id="placeholder"
            )
            sx_signer.sign(root, key=key, cert=[signer.certificate], reference_uri=ref, id_attribute="Id")
            placeholder.getparent().remove(placeholder)

        def signxml_verify() -> None:
            XMLVerifier().verify(signed.xml, x509_cert=signer.certificate, id_attribute="Id", expect_config=sx_config)

    s_env = rate(lambda: sign_envelope(env, signer, data), seconds)
    s_raw = rate(raw_sign, seconds / 2)
    v_env = rate(lambda: verifier.verify(signed.xml, data), seconds)
    v_raw = rate(raw_verify, seconds / 2)
    print(f"{label}: signed part {header_bytes} B, XML {len(signed.xml)} B, attachment {size_label}")
    print(
        f"  sign    {s_env:8.1f} ops/s   raw floor {s_raw:8.1f} ops/s   overhead x{s_raw / s_env:5.2f}   "
        f"({1000 / s_env:6.2f} ms vs {1000 / s_raw:6.2f} ms)"
    )
    print(
        f"  verify  {v_env:8.1f} ops/s   raw floor {v_raw:8.1f} ops/s   overhead x{v_raw / v_env:5.2f}   "
        f"({1000 / v_env:6.2f} ms vs {1000 / v_raw:6.2f} ms)"
    )
    if XMLSigner is not None:
        s_sx, v_sx = rate(signxml_sign, seconds / 2), rate(signxml_verify, seconds / 2)
        print(
            f"  signxml alone (XMLDSig step only, general engine): sign {1000 / s_sx:6.2f} ms   "
            f"verify {1000 / v_sx:6.2f} ms"
        )
    else:
        print("  (signxml comparison skipped: signxml is not installed; pip install -e '.[dev]')")


def bench_schema(seconds: float) -> None:
    import xmlschema

    env, _ = sample(A, SIZES["64 KB"])
    root = envelope_to_element(env)
    compiled = rate(lambda: validate(root), seconds / 2)
    schema = xmlschema.XMLSchema10(str(ENVELOPE_XSD), allow="local")  # local files only, never the network
    slow = rate(lambda: schema.is_valid(root), seconds / 2)
    print(
        f"schema validation of the same envelope: lxml compiled {1e6 / compiled:8.1f} us   "
        f"xmlschema {1e6 / slow:8.1f} us   (x{compiled / slow:.0f})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; ``argv`` as for the command line (``exchange bench signing`` passes the rest)."""
    parser = argparse.ArgumentParser(
        prog="bench_signing", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement (default 1.5)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    with tempfile.TemporaryDirectory() as d:
        ca = pki.DevCA.create(Path(d))
        rsa_signer = Signer.from_files(*ca.issue(A, "Văn phòng Chính phủ"))
        ec_signer = Signer.from_files(*ca.issue(B, "UBND tỉnh Nghệ An", ec=True))
        verifier = Verifier(TrustStore.from_paths([ca.cert_path], [ca.crl_path]))
        started = time.perf_counter()
        for size_label in SIZES:
            bench_key("RSA-3072 / RSA-SHA256", rsa_signer, verifier, args.seconds, size_label)
            bench_key("ECDSA P-256 / ECDSA-SHA256", ec_signer, verifier, args.seconds, size_label)
        bench_schema(args.seconds)
        print(
            "(raw floor = lxml exclusive c14n of Signed + SHA-256 of it and of the attachments + one "
            "cryptography sign/verify; for verify also lxml parsing the received bytes and c14n of SignedInfo; "
            f"total {time.perf_counter() - started:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
