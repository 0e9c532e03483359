"""Certificates no CA would issue, made by editing the DER of a real one and signing it again.

cryptography's builder refuses to write a duplicated extension or an invalid version, so
the TBSCertificate is edited as bytes (same-length edits only) and re-signed with the CA key.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

#: Two private-enterprise OIDs whose DER differs in the last byte only.
OID_A = "1.3.6.1.4.1.55555.1"
OID_B = "1.3.6.1.4.1.55555.2"


def _tlv_bounds(data: bytes, i: int) -> tuple[int, int]:
    """(start of content, end) of the DER element at ``i``."""
    first = data[i + 1]
    if first < 0x80:
        return i + 2, i + 2 + first
    n = first & 0x7F
    start = i + 2 + n
    return start, start + int.from_bytes(data[i + 2 : start], "big")


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return bytes([0x06, len(out)]) + bytes(out)


def resign(cert: x509.Certificate, ca_key, old: bytes, new: bytes) -> bytes:
    """DER of ``cert`` with the first ``old`` in its TBSCertificate replaced by ``new`` (same length), re-signed."""
    assert len(old) == len(new)
    der = cert.public_bytes(serialization.Encoding.DER)
    body, _ = _tlv_bounds(der, 0)
    _, tbs_end = _tlv_bounds(der, body)
    tbs = der[body:tbs_end]
    assert tbs.count(old) >= 1, "the bytes to edit are not in the TBSCertificate"
    tbs = tbs.replace(old, new, 1)
    _, alg_end = _tlv_bounds(der, tbs_end)
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        signature = ca_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(ca_key, rsa.RSAPrivateKey)
        signature = ca_key.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
    return _tlv(0x30, tbs + der[tbs_end:alg_end] + _tlv(0x03, b"\x00" + signature))


def with_invalid_version(cert: x509.Certificate, ca_key) -> bytes:
    """``cert`` claiming X.509 version 8 (the field holds 7), which no parser accepts."""
    return resign(cert, ca_key, b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x07")


def with_duplicated_extension(cert: x509.Certificate, ca_key, issuer: x509.Certificate) -> bytes:
    """``cert`` carrying the same (unknown) extension twice, signed by ``issuer``'s key."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(issuer.subject)
        .public_key(cert.public_key())
        .serial_number(cert.serial_number)
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    builder = builder.add_extension(
        x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_A), b"\x05\x00"), False
    ).add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_B), b"\x05\x00"), False)
    two = builder.sign(ca_key, hashes.SHA256())
    return resign(two, ca_key, _oid_der(OID_B), _oid_der(OID_A))
