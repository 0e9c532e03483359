"""Keys, certificates and agency identities: loading, saving, and naming the agency.

A certificate names its agency in two places (docs/SIGNING.md, certificate
profile): a subjectAltName URI ``urn:qcvn102:agency:<code>`` (primary) and the
subject ``organizationIdentifier`` (OID 2.5.4.97). When both are present they
must agree; a certificate that names two agencies names none.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InternalError, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from exchange.errors import CertificateMalformedError, KeyMaterialError

#: The private keys the bus signs with (RSA ≥ 2048 or ECDSA P-256).
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: subjectAltName URI prefix that binds a certificate to a QCVN 102 agency code.
AGENCY_URI_PREFIX = "urn:qcvn102:agency:"
#: X.520 organizationIdentifier (2.5.4.97): the secondary place for the agency code.
ORGANIZATION_IDENTIFIER = NameOID.ORGANIZATION_IDENTIFIER

#: RSA keys smaller than this are refused for signing (NIST SP 800-131A).
MIN_RSA_BITS = 2048


def generate_key(*, ec_key: bool = False, rsa_bits: int = 3072) -> PrivateKey:
    """A fresh agency or CA key: RSA (3072 bits by default) or ECDSA P-256."""
    if ec_key:
        return ec.generate_private_key(ec.SECP256R1())
    if rsa_bits < MIN_RSA_BITS:
        raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {rsa_bits}")
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def check_signing_key(key: object, *, source: str = "the key") -> PrivateKey:
    """Return ``key`` if the bus can sign with it, else raise KeyMaterialError saying why."""
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyMaterialError(f"{source} is a {key.key_size}-bit RSA key; use at least {MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            # ECDSA-SHA256 is only defined for P-256 on the bus (interop with xmlsec and E-Office tools).
            raise KeyMaterialError(f"{source} is an EC key on {key.curve.name}; use P-256 (secp256r1)")
        return key
    raise KeyMaterialError(f"{source} is a {type(key).__name__}; the bus signs with RSA or ECDSA P-256 keys only")


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyMaterialError(
            f"cannot read {what} {path}: {exc.strerror or exc}; check the path and permissions"
        ) from exc


def load_private_key(path: str | os.PathLike[str], password: bytes | None = None) -> PrivateKey:
    """Load a PEM private key (PKCS#8 or traditional) usable for signing."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise KeyMaterialError(
            f"{path} is not a readable PEM private key ({exc}); give the agency's .key file"
            + (" and its password" if password is None else "")
        ) from exc
    return check_signing_key(key, source=str(path))


def save_private_key(key: PrivateKey, path: str | os.PathLike[str], password: bytes | None = None) -> Path:
    """Write ``key`` as PKCS#8 PEM with mode 0600, atomically (never world-readable, even briefly)."""
    algorithm: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm)
    return write_file_atomic(Path(path), pem, mode=0o600)


#: What cryptography raises for a certificate it cannot read: bad DER or PEM, an invalid version, a duplicated
#: extension, an unknown key or signature algorithm, an unsupported name type (measured by fuzzing DER bytes).
CERTIFICATE_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    InternalError,
    x509.DuplicateExtension,
    x509.InvalidVersion,
    x509.UnsupportedGeneralNameType,
)


def check_readable(cert: x509.Certificate) -> x509.Certificate:
    """``cert`` once every lazily decoded part of it has been decoded; CertificateMalformedError otherwise.

    cryptography decodes names, extensions and the key only when first asked for them, so a damaged
    certificate loads fine and fails later, anywhere, with cryptography's own exception. Asking for
    all of them here makes the failure happen once, at the door, as a typed error.
    """
    try:
        cert.version  # noqa: B018 - each access decodes (and checks) that part
        cert.serial_number  # noqa: B018
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.not_valid_before_utc  # noqa: B018
        cert.not_valid_after_utc  # noqa: B018
        cert.signature_hash_algorithm  # noqa: B018
        for extension in cert.extensions:
            extension.value  # noqa: B018
        cert.public_key()
    except CERTIFICATE_PARSE_ERRORS as exc:
        raise CertificateMalformedError(
            f"a certificate cannot be read ({_reason(exc)}); the sender's certificate is malformed: it must be reissued"
        ) from exc
    return cert


def certificate_from_der(der: bytes) -> x509.Certificate:
    """Load and fully decode a DER certificate from untrusted input; CertificateMalformedError if it cannot be."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except CERTIFICATE_PARSE_ERRORS as exc:
        raise CertificateMalformedError(
            f"an X509Certificate is not a readable DER certificate ({_reason(exc)}); "
            "the signature or the sender's certificate is damaged"
        ) from exc
    return check_readable(cert)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "…"


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """All PEM certificates in a file, in order (leaf first for an agency chain file), each fully decoded."""
    data = _read(path, "certificate file")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except CERTIFICATE_PARSE_ERRORS as exc:
        raise KeyMaterialError(
            f"{path} holds no readable PEM certificate ({_reason(exc)}); give a .pem certificate"
        ) from exc
    try:
        return [check_readable(c) for c in certs]
    except CertificateMalformedError as exc:
        raise KeyMaterialError(f"{path}: {exc.message}") from exc


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first PEM certificate of a file."""
    return load_certificates(path)[0]


def save_certificates(certs: x509.Certificate | Sequence[x509.Certificate], path: str | os.PathLike[str]) -> Path:
    """Write one certificate or a chain (leaf first) as PEM, mode 0644."""
    items = [certs] if isinstance(certs, x509.Certificate) else list(certs)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in items)
    return write_file_atomic(Path(path), pem, mode=0o644)


def write_file_atomic(path: Path, data: bytes, *, mode: int) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename, with ``mode``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so a key is never readable by others between write and chmod.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@functools.lru_cache(maxsize=1024)  # certificates hash and compare by their DER; every envelope asks again
def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (the cache key and what operators compare)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@functools.lru_cache(maxsize=1024)
def agency_codes_of(cert: x509.Certificate) -> tuple[frozenset[str], frozenset[str]]:
    """The agency codes a certificate names: ``(from subjectAltName URIs, from organizationIdentifier)``."""
    san_codes: set[str] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.lower().startswith(AGENCY_URI_PREFIX):
                san_codes.add(uri[len(AGENCY_URI_PREFIX) :])
    org_codes = {str(a.value) for a in cert.subject.get_attributes_for_oid(ORGANIZATION_IDENTIFIER)}
    return frozenset(san_codes), frozenset(org_codes)


def agency_code_of(cert: x509.Certificate) -> str | None:
    """The one agency code a certificate names, or None (no code, or two different codes).

    The subjectAltName URI is primary; organizationIdentifier is accepted alone
    (certificates from CAs that cannot write URIs) but must agree when both exist.
    """
    san_codes, org_codes = agency_codes_of(cert)
    codes = san_codes or org_codes
    if len(codes) != 1:
        return None
    (code,) = codes
    if san_codes and org_codes and org_codes != {code}:
        return None
    return code


def subject_name(cert: x509.Certificate) -> str:
    """The certificate holder's display name (commonName, else organizationName, else the RFC 4514 DN)."""
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attrs = cert.subject.get_attributes_for_oid(oid)
        if attrs:
            return str(attrs[0].value)
    return cert.subject.rfc4514_string()


def public_keys_match(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies ``key`` (compared as SubjectPublicKeyInfo DER)."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)


@dataclass(frozen=True, slots=True)
class AgencyIdentity:
    """What an agency signs with: its code and name, private key, certificate and intermediates."""

    code: str
    name: str
    key: PrivateKey
    certificate: x509.Certificate
    #: Intermediate CA certificates (not the root), sent in X509Data after the leaf.
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_files(
        cls, key_path: str | os.PathLike[str], cert_path: str | os.PathLike[str], *, password: bytes | None = None
    ) -> AgencyIdentity:
        """Load a key and a certificate file (leaf first, then intermediates) and check they belong together."""
        key = load_private_key(key_path, password)
        certs = load_certificates(cert_path)
        return cls.of(key, certs[0], certs[1:], source=str(cert_path))

    @classmethod
    def of(
        cls,
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: Iterable[x509.Certificate] = (),
        *,
        source: str = "the certificate",
    ) -> AgencyIdentity:
        """Build an identity from objects; refuses a key that the certificate does not certify."""
        check_signing_key(key)
        if not public_keys_match(key, certificate):
            raise KeyMaterialError(f"{source} does not certify this private key; pair each .key with its own .pem")
        code = agency_code_of(certificate)
        if code is None:
            raise KeyMaterialError(
                f"{source} names no single agency (subjectAltName {AGENCY_URI_PREFIX}<code> or "
                "organizationIdentifier); issue it with `exchange pki issue --code ...`"
            )
        return cls(code=code, name=subject_name(certificate), key=key, certificate=certificate, chain=tuple(chain))
