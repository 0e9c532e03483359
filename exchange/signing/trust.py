"""The trust store: which CAs the bus trusts, their CRLs, and the checks on a signer's certificate.

signxml trusts the public web CAs unless told otherwise and never checks
revocation (PITFALLS.md), so every certificate decision is made here, once,
with the CA certificates and CRLs loaded once and kept in memory. A
certificate is trusted when, at the verification time:

1. it chains to a trusted CA, directly or through one intermediate CA carried
   in the signature's X509Data (``UntrustedCertificateError``);
2. it and every CA on the path are within their validity (``CertificateExpiredError``);
3. it is an end-entity certificate allowed to sign: keyUsage digitalSignature or
   nonRepudiation, extendedKeyUsage (if present) allowing document signing
   (``CertificateUsageError``);
4. neither it nor the intermediate is on a CRL of its issuer (``CertificateRevokedError``);
5. it names exactly the expected agency, when one is expected (``AgencyMismatchError``).

CRL policy (docs/SIGNING.md): a CRL is used only if its issuer's key signed it.
A CRL past its nextUpdate still counts (what it lists stays revoked), and by
default a stale CRL makes every certificate of that issuer untrusted, because
the revocation state is unknown (fail closed); ``stale_crl="warn"`` accepts
with a logged warning instead. ``crl_grace`` tolerates publication delays.
An issuer without any CRL is accepted unless ``require_crl`` is set.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.errors import (
    AgencyMismatchError,
    CertificateExpiredError,
    CertificateRevokedError,
    CertificateUsageError,
    ConfigError,
    KeyMaterialError,
    UntrustedCertificateError,
)
from exchange.signing.keys import (
    CERTIFICATE_PARSE_ERRORS,
    agency_code_of,
    agency_codes_of,
    fingerprint,
    load_certificates,
)
from exchange.signing.pki import DOCUMENT_SIGNING

log = logging.getLogger(__name__)

#: Extended key usages that allow signing envelopes (when the extension is present at all).
SIGNING_EKUS = frozenset(
    {DOCUMENT_SIGNING, ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)

StaleCrlPolicy = Literal["refuse", "warn"]


def describe(cert: x509.Certificate) -> str:
    """One line naming a certificate for messages: subject, serial, issuer."""
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:#x}, issuer {cert.issuer.rfc4514_string()})"


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("the verification time must be timezone-aware")
    return now.astimezone(dt.UTC)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Name match and signature check; False rather than an exception for any mismatch."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    if not bc.ca:
        return False
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True  # RFC 5280 allows a CA without keyUsage; basicConstraints decides
    return ku.key_cert_sign


def _crl_is_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    if crl.issuer != issuer.subject:
        return False
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, UnsupportedAlgorithm):
        return False


@dataclass(frozen=True, slots=True)
class TrustedCertificate:
    """The outcome of a successful check: the certificate, its agency and how it was trusted."""

    certificate: x509.Certificate
    agency_code: str | None
    #: The trusted CA the path ends at.
    anchor: x509.Certificate
    #: The intermediate CA between the certificate and the anchor, if any.
    intermediate: x509.Certificate | None = None
    #: Whether a CRL of the issuer was consulted (False: the issuer publishes none here).
    crl_checked: bool = False


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Immutable contents of a trust store, swapped as a whole on reload (safe across threads)."""

    cas: tuple[x509.Certificate, ...]
    cas_by_subject: dict[bytes, tuple[x509.Certificate, ...]]
    #: CRLs by issuer name (DER); signatures not yet checked for issuers that are not trust anchors.
    crls_by_issuer: dict[bytes, tuple[x509.CertificateRevocationList, ...]]
    stamps: tuple[tuple[str, float], ...] = ()


def _name_key(name: x509.Name) -> bytes:
    return name.public_bytes()


def _build_snapshot(
    cas: Sequence[x509.Certificate],
    crls: Sequence[x509.CertificateRevocationList],
    stamps: tuple[tuple[str, float], ...] = (),
) -> _Snapshot:
    if not cas:
        raise ConfigError("the trust store has no CA certificate; give at least one CA file (ca_files / --ca)")
    by_subject: dict[bytes, list[x509.Certificate]] = {}
    for ca in cas:
        if not _is_ca(ca):
            raise ConfigError(
                f"trust store certificate {describe(ca)} is not a CA (basicConstraints CA:TRUE, keyCertSign); "
                "give CA certificates only, not agency certificates"
            )
        by_subject.setdefault(_name_key(ca.subject), []).append(ca)
    crl_map: dict[bytes, list[x509.CertificateRevocationList]] = {}
    for crl in crls:
        issuers = by_subject.get(_name_key(crl.issuer), [])
        if issuers and not any(_crl_is_signed_by(crl, ca) for ca in issuers):
            # A CRL that claims a trusted issuer but was not signed by it is forged or corrupt: never use it.
            raise ConfigError(
                f"the CRL of {crl.issuer.rfc4514_string()} is not signed by that CA; "
                "fetch it again from the CA (exchange pki crl)"
            )
        crl_map.setdefault(_name_key(crl.issuer), []).append(crl)
    return _Snapshot(
        cas=tuple(cas),
        cas_by_subject={k: tuple(v) for k, v in by_subject.items()},
        crls_by_issuer={k: tuple(v) for k, v in crl_map.items()},
        stamps=stamps,
    )


def load_crls(path: str | os.PathLike[str]) -> list[x509.CertificateRevocationList]:
    """The CRL(s) in a PEM or DER file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyMaterialError(f"cannot read CRL {path}: {exc.strerror or exc}; check crl_files / --crl") from exc
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            blocks = data.split(b"-----END X509 CRL-----")
            crls = [
                x509.load_pem_x509_crl(b + b"-----END X509 CRL-----\n")
                for b in blocks
                if b"-----BEGIN X509 CRL-----" in b
            ]
        else:
            crls = [x509.load_der_x509_crl(data)]
        for crl in crls:
            # Decoded lazily by cryptography: decode every part now, so a damaged CRL fails here, typed,
            # not in the middle of a verification.
            crl.issuer.rfc4514_string()
            crl.last_update_utc, crl.next_update_utc  # noqa: B018
            for extension in crl.extensions:
                extension.value  # noqa: B018
            for entry in crl:
                entry.serial_number, entry.revocation_date_utc  # noqa: B018
                for extension in entry.extensions:
                    extension.value  # noqa: B018
        return crls
    except CERTIFICATE_PARSE_ERRORS as exc:
        raise KeyMaterialError(f"{path} is not a readable CRL ({exc}); give a PEM or DER CRL") from exc


class TrustStore:
    """Trusted CA certificates and their CRLs, loaded once, with the checks on a signer's certificate."""

    def __init__(
        self,
        cas: Iterable[x509.Certificate],
        crls: Iterable[x509.CertificateRevocationList] = (),
        *,
        stale_crl: StaleCrlPolicy = "refuse",
        crl_grace: dt.timedelta = dt.timedelta(0),
        require_crl: bool = False,
    ) -> None:
        if stale_crl not in ("refuse", "warn"):
            raise ValueError(f"stale_crl must be 'refuse' or 'warn', not {stale_crl!r}")
        self.stale_crl = stale_crl
        self.crl_grace = crl_grace
        self.require_crl = require_crl
        self._snapshot = _build_snapshot(list(cas), list(crls))
        self._ca_paths: tuple[Path, ...] = ()
        self._crl_paths: tuple[Path, ...] = ()
        self._reload_interval: float | None = None
        self._next_stat = 0.0
        self._lock = threading.Lock()
        # Chain signatures never change for given certificates: cache path results by DER fingerprints.
        self._path_cache: dict[tuple[str, ...], tuple[x509.Certificate, x509.Certificate | None]] = {}
        self._crl_sig_cache: dict[tuple[int, str], bool] = {}

    @classmethod
    def from_paths(
        cls,
        cas: Iterable[str | os.PathLike[str]],
        crls: Iterable[str | os.PathLike[str]] = (),
        *,
        reload_interval: float | None = 60.0,
        **options: object,
    ) -> TrustStore:
        """Load CA certificate files (PEM, several per file allowed) and CRL files (PEM or DER).

        The files are re-read when their modification time changes, checked at
        most every ``reload_interval`` seconds (None: never), so a fresh CRL
        written by the CA is picked up without restarting the node.
        """
        ca_paths = tuple(Path(p) for p in cas)
        crl_paths = tuple(Path(p) for p in crls)
        ca_certs, crl_list, stamps = cls._read(ca_paths, crl_paths)
        store = cls(ca_certs, crl_list, **options)  # type: ignore[arg-type]
        store._ca_paths, store._crl_paths = ca_paths, crl_paths
        store._snapshot = _build_snapshot(ca_certs, crl_list, stamps)
        store._reload_interval = reload_interval
        store._next_stat = time.monotonic() + (reload_interval or 0)
        return store

    @staticmethod
    def _read(
        ca_paths: Sequence[Path], crl_paths: Sequence[Path]
    ) -> tuple[list[x509.Certificate], list[x509.CertificateRevocationList], tuple[tuple[str, float], ...]]:
        ca_certs = [c for p in ca_paths for c in load_certificates(p)]
        crl_list = [c for p in crl_paths for c in load_crls(p)]
        return ca_certs, crl_list, TrustStore._stamps(ca_paths, crl_paths)

    @staticmethod
    def _stamps(ca_paths: Sequence[Path], crl_paths: Sequence[Path]) -> tuple[tuple[str, float], ...]:
        out = []
        for p in (*ca_paths, *crl_paths):
            try:
                out.append((str(p), p.stat().st_mtime))
            except OSError:
                out.append((str(p), -1.0))
        return tuple(out)

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the files if one changed since loading; True if the store was reloaded.

        A file that became unreadable or invalid keeps the previous contents (and
        logs an error) rather than emptying the trust store under a running node.
        """
        if not (self._ca_paths or self._crl_paths):
            return False
        if not force and (self._reload_interval is None or time.monotonic() < self._next_stat):
            return False
        with self._lock:
            self._next_stat = time.monotonic() + (self._reload_interval or 0)
            stamps = self._stamps(self._ca_paths, self._crl_paths)
            if stamps == self._snapshot.stamps and not force:
                return False
            try:
                ca_certs, crl_list, stamps = self._read(self._ca_paths, self._crl_paths)
                snapshot = _build_snapshot(ca_certs, crl_list, stamps)
            except (ConfigError, KeyMaterialError) as exc:
                log.error("trust store reload failed, keeping the previous contents: %s", exc.message)
                return False
            self._snapshot = snapshot
            self._path_cache.clear()
            self._crl_sig_cache.clear()
            return True

    @property
    def cas(self) -> tuple[x509.Certificate, ...]:
        """The trusted CA certificates."""
        return self._snapshot.cas

    def ca_pem(self) -> bytes:
        """The trusted CAs as one PEM bundle (for tools such as xmlsec1)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._snapshot.cas)

    # -- the check ------------------------------------------------------------------

    def check(
        self,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        *,
        agency_code: str | None = None,
        now: dt.datetime | None = None,
    ) -> TrustedCertificate:
        """Check a signer's certificate (see the module docstring); raise the matching CertificateError."""
        self.reload_if_changed()
        at = _utc(now)
        snap = self._snapshot
        anchor, intermediate = self._path(snap, certificate, chain)
        for cert, role in ((anchor, "CA"), (intermediate, "intermediate CA"), (certificate, "certificate")):
            if cert is not None:
                self._check_validity(cert, role, at)
        self._check_usage(certificate)
        crl_checked = False
        if intermediate is not None:
            crl_checked = self._check_revocation(snap, intermediate, anchor, at)
            crl_checked = self._check_revocation(snap, certificate, intermediate, at) and crl_checked
        else:
            crl_checked = self._check_revocation(snap, certificate, anchor, at)
        code = agency_code_of(certificate)
        if agency_code is not None:
            check_agency(certificate, agency_code)
        return TrustedCertificate(
            certificate=certificate, agency_code=code, anchor=anchor, intermediate=intermediate, crl_checked=crl_checked
        )

    def _path(
        self, snap: _Snapshot, cert: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> tuple[x509.Certificate, x509.Certificate | None]:
        key = (fingerprint(cert), *(fingerprint(c) for c in chain))
        cached = self._path_cache.get(key)
        if cached is not None:
            return cached
        found = self._find_path(snap, cert, chain)
        if len(self._path_cache) > 4096:  # bounded: a flood of distinct certificates must not grow memory
            self._path_cache.clear()
        self._path_cache[key] = found
        return found

    @staticmethod
    def _find_path(
        snap: _Snapshot, cert: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> tuple[x509.Certificate, x509.Certificate | None]:
        for ca in snap.cas_by_subject.get(_name_key(cert.issuer), ()):
            if _issued_by(cert, ca):
                return ca, None
        # One intermediate level, carried in X509Data after the leaf.
        for inter in chain:
            if inter.subject != cert.issuer or not _issued_by(cert, inter):
                continue
            if not _is_ca(inter):
                raise UntrustedCertificateError(
                    f"{describe(inter)} issued the signer's certificate but is not a CA; the chain is invalid"
                )
            for ca in snap.cas_by_subject.get(_name_key(inter.issuer), ()):
                if _issued_by(inter, ca):
                    return ca, inter
        raise UntrustedCertificateError(
            f"the signer's certificate {describe(cert)} does not chain to a trusted CA; "
            "the sender's CA must be in this node's trust store ([pki] ca_files / --ca)"
        )

    @staticmethod
    def _check_validity(cert: x509.Certificate, role: str, at: dt.datetime) -> None:
        if at < cert.not_valid_before_utc:
            raise CertificateExpiredError(
                f"the signer's {role} {describe(cert)} is not valid before "
                f"{cert.not_valid_before_utc.isoformat()} (checked at {at.isoformat(timespec='seconds')}); "
                "check the clocks, or wait until the certificate starts"
            )
        if at > cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"the signer's {role} {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()} "
                f"(checked at {at.isoformat(timespec='seconds')}); the sender must renew it and sign again"
            )

    @staticmethod
    def _check_usage(cert: x509.Certificate) -> None:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is not None and bc.ca:
            raise CertificateUsageError(
                f"{describe(cert)} is a CA certificate; envelopes are signed by agency certificates only"
            )
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            raise CertificateUsageError(
                f"{describe(cert)} has no keyUsage extension; agency certificates must allow "
                "digitalSignature (or nonRepudiation)"
            ) from None
        if not (ku.digital_signature or ku.content_commitment):
            raise CertificateUsageError(
                f"{describe(cert)} is not allowed to sign (keyUsage lacks digitalSignature and nonRepudiation); "
                "issue the agency a signing certificate"
            )
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            return
        if not SIGNING_EKUS.intersection(eku):
            raise CertificateUsageError(
                f"{describe(cert)} has an extendedKeyUsage without document signing, email protection or "
                "anyExtendedKeyUsage; it is meant for something else (e.g. TLS)"
            )

    def _crls_for(self, snap: _Snapshot, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        out = []
        for crl in snap.crls_by_issuer.get(_name_key(issuer.subject), ()):
            key = (id(crl), fingerprint(issuer))
            ok = self._crl_sig_cache.get(key)
            if ok is None:
                ok = _crl_is_signed_by(crl, issuer)
                self._crl_sig_cache[key] = ok
            if ok:
                out.append(crl)
            elif issuer in snap.cas:
                # Cannot happen for anchors (refused at load); for intermediates it is a forged CRL.
                raise ConfigError(f"a CRL claiming issuer {issuer.subject.rfc4514_string()} is not signed by it")
        return out

    def _check_revocation(
        self, snap: _Snapshot, cert: x509.Certificate, issuer: x509.Certificate, at: dt.datetime
    ) -> bool:
        crls = self._crls_for(snap, issuer)
        if not crls:
            if self.require_crl:
                raise UntrustedCertificateError(
                    f"no CRL of {issuer.subject.rfc4514_string()} is loaded and this node requires one; "
                    "add the CA's CRL to [pki] crl_files (--crl)"
                )
            return False
        for crl in crls:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise CertificateRevokedError(
                    f"{describe(cert)} was revoked on {entry.revocation_date_utc.isoformat()}; "
                    "the sender must get a new certificate and sign again"
                )
        newest = max(crls, key=lambda c: c.last_update_utc)
        next_update = newest.next_update_utc
        if next_update is not None and at > next_update + self.crl_grace:
            message = (
                f"the newest CRL of {issuer.subject.rfc4514_string()} expired at {next_update.isoformat()}, so "
                "the revocation state is unknown; publish a fresh CRL (exchange pki crl) and install it"
            )
            if self.stale_crl == "refuse":
                raise UntrustedCertificateError(message)
            log.warning("%s (accepted: stale_crl=warn)", message)
        return True


def check_agency(certificate: x509.Certificate, expected: str) -> None:
    """Raise AgencyMismatchError unless ``certificate`` names exactly agency ``expected``."""
    san_codes, org_codes = agency_codes_of(certificate)
    code = agency_code_of(certificate)
    if code is None:
        named = sorted(san_codes | org_codes)
        raise AgencyMismatchError(
            f"{describe(certificate)} names "
            + (f"several agencies {named}" if named else "no agency")
            + f"; only a certificate of agency {expected} may sign its envelopes",
            detail={"expected": expected, "certificate_agencies": named},
        )
    if code != expected:
        raise AgencyMismatchError(
            f"the envelope is From agency {expected} but was signed with the certificate of agency {code} "
            f"({describe(certificate)}); each agency signs only its own envelopes",
            detail={"expected": expected, "certificate_agency": code},
        )


#: The type of an injectable clock (tests freeze time with it).
Clock = Callable[[], dt.datetime]
