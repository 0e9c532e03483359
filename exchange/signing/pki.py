"""A development certificate authority: CA, agency certificates, revocation, CRL.

For development, tests and demos only: production agencies bring certificates
from their own CA (the trust store takes any CA that follows the profile in
docs/SIGNING.md). Layout under one directory::

    <dir>/ca.pem  ca.key (0600)  index.json  crl.pem
    <dir>/agencies/<code>[-<suffix>].pem  <code>[-<suffix>].key (0600)

``index.json`` records every certificate issued (serial, agency, validity,
revocation); the CRL is rebuilt from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from exchange.envelope.codes import check_agency_code
from exchange.errors import KeyMaterialError
from exchange.signing.keys import (
    AGENCY_URI_PREFIX,
    PrivateKey,
    PublicKey,
    generate_key,
    load_certificate,
    load_certificates,
    load_private_key,
    save_certificates,
    save_private_key,
    write_file_atomic,
)

#: id-kp-documentSigning (RFC 9336): the extended key usage our agency certificates carry.
DOCUMENT_SIGNING = ObjectIdentifier("1.3.6.1.5.5.7.3.36")
#: Key usages of an agency certificate (digitalSignature + nonRepudiation, critical).
AGENCY_KEY_USAGE: tuple[str, ...] = ("digital_signature", "content_commitment")
DEFAULT_CA_NAME = "Exchange Development CA"
#: Clock skew tolerated between nodes: certificates start being valid this long before issuance.
BACKDATE = dt.timedelta(minutes=5)
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{0,32}$")
_KEY_USAGE_FIELDS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def key_usage(*names: str) -> x509.KeyUsage:
    """A KeyUsage extension from field names (cryptography's spelling: ``content_commitment`` = nonRepudiation)."""
    unknown = set(names) - set(_KEY_USAGE_FIELDS)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}; use {_KEY_USAGE_FIELDS}")
    return x509.KeyUsage(**{f: f in names for f in _KEY_USAGE_FIELDS})


def make_ca_certificate(
    key: PrivateKey,
    name: str,
    *,
    validity: dt.timedelta = dt.timedelta(days=3650),
    issuer_key: PrivateKey | None = None,
    issuer: x509.Certificate | None = None,
    path_length: int | None = None,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed root (path length 1, so one intermediate level) or an intermediate."""
    now = now or _now()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Exchange development PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    signing_key = issuer_key or key
    if path_length is None:
        path_length = 1 if issuer is None else 0
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage("key_cert_sign", "crl_sign"), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()), critical=False)
    )
    return builder.sign(signing_key, hashes.SHA256())


def make_agency_certificate(
    public_key: PublicKey,
    code: str,
    name: str,
    *,
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    validity: dt.timedelta = dt.timedelta(days=365),
    not_before: dt.datetime | None = None,
    usages: Collection[str] = AGENCY_KEY_USAGE,
    extended_key_usage: bool = True,
    san: bool = True,
    organization_identifier: bool = True,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """An agency certificate following the profile in docs/SIGNING.md.

    ``validity`` counts from ``not_before`` (default: a few minutes ago). A negative
    ``validity`` makes a certificate that expired that long ago after a year of
    life: handy for testing refusals, and the only way to get one since a
    certificate cannot end before it starts.
    """
    check_agency_code(code)
    now = now or _now()
    if validity < dt.timedelta(0):
        not_after = now + validity
        start = not_before or (not_after - dt.timedelta(days=365))
    else:
        start = not_before or (now - BACKDATE)
        not_after = start + validity
    attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"), x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)]
    if organization_identifier:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_IDENTIFIER, code))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(*usages), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"{AGENCY_URI_PREFIX}{code}")]),
            critical=False,
        )
    if extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def agency_files(directory: str | os.PathLike[str], code: str, name_suffix: str = "") -> tuple[Path, Path]:
    """``(key, certificate)`` paths of an agency under a CA directory: ``agencies/<code>[-<suffix>].key|.pem``."""
    check_agency_code(code)  # also keeps the code safe as a file name
    if not _SUFFIX.match(name_suffix):
        raise ValueError(f"name suffix {name_suffix!r} may only use letters, digits, _ and -")
    stem = f"{code}-{name_suffix}" if name_suffix else code
    agencies = Path(directory) / "agencies"
    return agencies / f"{stem}.key", agencies / f"{stem}.pem"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """One line of ``index.json``: a certificate the development CA issued."""

    serial: str  # lowercase hex
    code: str
    name: str
    file: str  # relative to the CA directory
    key_type: str  # "rsa" or "ec-p256"
    not_before: str
    not_after: str
    revoked_at: str | None = None
    reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


class DevCA:
    """The development CA in one directory (see the module docstring for the layout)."""

    def __init__(
        self, directory: Path, key: PrivateKey, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...] = ()
    ) -> None:
        self.dir = Path(directory)
        self.key = key
        self.certificate = certificate
        #: Certificates above this CA up to (excluding) the root, for an intermediate CA.
        self.chain = chain
        #: The index held in memory while a batch() is open (written once when it closes).
        self._batched: dict | None = None

    # -- paths ----------------------------------------------------------------------

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def crl_path(self) -> Path:
        return self.dir / "crl.pem"

    @property
    def index_path(self) -> Path:
        return self.dir / "index.json"

    def agency_paths(self, code: str, name_suffix: str = "") -> tuple[Path, Path]:
        """``(key, certificate)`` paths of an agency's files."""
        return agency_files(self.dir, code, name_suffix)

    # -- creating and loading -------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        ec: bool = False,
        name: str = DEFAULT_CA_NAME,
        validity: dt.timedelta = dt.timedelta(days=3650),
        issuer: DevCA | None = None,
        rsa_bits: int = 3072,
    ) -> DevCA:
        """Create a CA (RSA 3072 or EC P-256) in an empty directory; with ``issuer``, an intermediate CA."""
        d = Path(directory)
        if (d / "ca.pem").exists() or (d / "ca.key").exists():
            raise KeyMaterialError(f"{d} already holds a CA (ca.pem/ca.key); use it, or choose an empty directory")
        key = generate_key(ec_key=ec, rsa_bits=rsa_bits)
        cert = make_ca_certificate(
            key,
            name,
            validity=validity,
            issuer_key=issuer.key if issuer else None,
            issuer=issuer.certificate if issuer else None,
        )
        d.mkdir(parents=True, exist_ok=True)
        save_private_key(key, d / "ca.key")
        above = issuer.chain if issuer else ()
        # ca.pem holds the CA certificate, then (for a deeper intermediate) those above it except the root.
        save_certificates([cert, *above], d / "ca.pem")
        ca = cls(d, key, cert, tuple(above))
        ca._save_index({"version": 1, "crl_number": 0, "certificates": []})
        ca.write_crl()
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DevCA:
        """Open an existing CA directory."""
        d = Path(directory)
        certs = load_certificates(d / "ca.pem")
        key = load_private_key(d / "ca.key")
        ca = cls(d, key, certs[0], tuple(certs[1:]))
        if not ca.index_path.exists():
            ca._save_index({"version": 1, "crl_number": 0, "certificates": []})
        return ca

    @classmethod
    def load_or_create(
        cls, directory: str | os.PathLike[str], *, ec: bool = False, name: str = DEFAULT_CA_NAME
    ) -> DevCA:
        """Open the CA in ``directory``, creating it first if there is none."""
        d = Path(directory)
        if (d / "ca.pem").exists():
            return cls.load(d)
        return cls.create(d, ec=ec, name=name)

    # -- index ----------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[DevCA]:
        """Issue many certificates with one index write when the block ends.

        Each issue() rewrites index.json; a national world issues 3,355 certificates, and
        rewriting a growing index each time made that quadratic (minutes instead of seconds).
        """
        self._batched = self._load_index()
        try:
            yield self
        finally:
            index, self._batched = self._batched, None
            self._save_index(index)

    def _load_index(self) -> dict[str, Any]:
        if self._batched is not None:
            return self._batched
        try:
            index: dict[str, Any] = json.loads(self.index_path.read_text(encoding="utf-8"))
            return index
        except FileNotFoundError:
            return {"version": 1, "crl_number": 0, "certificates": []}
        except (OSError, ValueError) as exc:
            raise KeyMaterialError(f"{self.index_path} is unreadable ({exc}); restore it from a backup") from exc

    def _save_index(self, index: dict) -> None:
        if self._batched is not None:
            self._batched = index
            return
        write_file_atomic(self.index_path, json.dumps(index, indent=2, ensure_ascii=False).encode() + b"\n", mode=0o644)

    def entries(self) -> list[IssuedCertificate]:
        """Every certificate this CA issued, oldest first."""
        return [IssuedCertificate(**e) for e in self._load_index()["certificates"]]

    # -- issuing ----------------------------------------------------------------------

    def issue(
        self,
        code: str,
        name: str,
        *,
        ec: bool = False,
        validity: dt.timedelta = dt.timedelta(days=365),
        not_before: dt.datetime | None = None,
        exist_ok: bool = False,
        replace: bool = False,
        name_suffix: str = "",
        usages: Collection[str] = AGENCY_KEY_USAGE,
        extended_key_usage: bool = True,
        rsa_bits: int = 3072,
    ) -> tuple[Path, Path]:
        """Generate a key and issue an agency certificate; returns ``(key path, certificate path)``.

        With ``exist_ok`` an existing, unrevoked pair is returned as is; with
        ``replace`` an existing pair is overwritten (revoke the old one first if
        it may have leaked). The certificate file holds the leaf, then this CA's
        certificate if it is an intermediate, so verifiers can build the chain.
        """
        key_path, cert_path = self.agency_paths(code, name_suffix)
        if key_path.exists() and cert_path.exists() and not replace:
            current = load_certificate(cert_path)
            if exist_ok and not self._is_revoked(current.serial_number):
                return key_path, cert_path
            raise KeyMaterialError(
                f"{cert_path} already exists{' and is revoked' if self._is_revoked(current.serial_number) else ''}; "
                "pass --replace (replace=True) to issue a new one"
            )
        key = generate_key(ec_key=ec, rsa_bits=rsa_bits)
        cert = make_agency_certificate(
            key.public_key(),
            code,
            name,
            ca_key=self.key,
            ca_cert=self.certificate,
            validity=validity,
            not_before=not_before,
            usages=usages,
            extended_key_usage=extended_key_usage,
        )
        save_private_key(key, key_path)
        intermediates = [self.certificate, *self.chain] if self.is_intermediate else []
        save_certificates([cert, *intermediates], cert_path)
        self._record(cert, code, name, cert_path, "ec-p256" if ec else "rsa")
        return key_path, cert_path

    @property
    def is_intermediate(self) -> bool:
        return self.certificate.issuer != self.certificate.subject

    def _record(self, cert: x509.Certificate, code: str, name: str, path: Path, key_type: str) -> None:
        index = self._load_index()
        index["certificates"].append(
            asdict(
                IssuedCertificate(
                    serial=format(cert.serial_number, "x"),
                    code=code,
                    name=name,
                    file=os.path.relpath(path, self.dir),
                    key_type=key_type,
                    not_before=cert.not_valid_before_utc.isoformat(),
                    not_after=cert.not_valid_after_utc.isoformat(),
                )
            )
        )
        self._save_index(index)

    def _is_revoked(self, serial: int) -> bool:
        return any(e.revoked and int(e.serial, 16) == serial for e in self.entries())

    # -- revocation -----------------------------------------------------------------

    def revoke(
        self,
        code: str,
        *,
        name_suffix: str | None = None,
        serial: int | None = None,
        reason: x509.ReasonFlags = x509.ReasonFlags.key_compromise,
    ) -> list[IssuedCertificate]:
        """Revoke the active certificates of an agency (all of them, or one file / serial), then rewrite the CRL."""
        check_agency_code(code)
        index = self._load_index()
        revoked: list[IssuedCertificate] = []
        now = _now().isoformat()
        wanted_file = None
        if name_suffix is not None:
            wanted_file = os.path.relpath(self.agency_paths(code, name_suffix)[1], self.dir)
        for entry in index["certificates"]:
            if entry["code"] != code or entry["revoked_at"] is not None:
                continue
            if wanted_file is not None and entry["file"] != wanted_file:
                continue
            if serial is not None and int(entry["serial"], 16) != serial:
                continue
            entry["revoked_at"] = now
            entry["reason"] = reason.value
            revoked.append(IssuedCertificate(**entry))
        if not revoked:
            raise KeyMaterialError(f"no active certificate of agency {code} to revoke; see `exchange pki list`")
        self._save_index(index)
        self.write_crl()
        return revoked

    def write_crl(
        self,
        *,
        next_update: dt.timedelta = dt.timedelta(days=30),
        now: dt.datetime | None = None,
        path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write a CRL of every revoked certificate, signed by this CA, valid ``next_update`` from now."""
        now = now or _now()
        index = self._load_index()
        index["crl_number"] = int(index.get("crl_number", 0)) + 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - BACKDATE)
            .next_update(now + next_update)
            .add_extension(x509.CRLNumber(index["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for entry in index["certificates"]:
            if entry["revoked_at"] is None:
                continue
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(entry["serial"], 16))
                .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
            )
            if entry.get("reason"):
                revoked = revoked.add_extension(x509.CRLReason(x509.ReasonFlags(entry["reason"])), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        crl = builder.sign(self.key, hashes.SHA256())
        target = Path(path) if path is not None else self.crl_path
        write_file_atomic(target, crl.public_bytes(serialization.Encoding.PEM), mode=0o644)
        self._save_index(index)
        return target


def issue_agency_key(*, ec: bool = False, rsa_bits: int = 3072) -> PrivateKey:
    """A new agency signing key: RSA (3072 bits by default) or ECDSA P-256."""
    return generate_key(ec_key=ec, rsa_bits=rsa_bits)


def revoked_serials(crls: Iterable[x509.CertificateRevocationList]) -> set[int]:
    """Serial numbers listed on any of ``crls`` (a convenience for tools and tests)."""
    return {r.serial_number for crl in crls for r in crl}
