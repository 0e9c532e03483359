"""Signing envelopes: XMLDSig enveloped, exclusive c14n, RSA-SHA256 or ECDSA-SHA256, X509Data.

The signature is the last child of ``env:Signed`` and references it by its Id
(``#s-<message id>``), so the header and manifest are covered and the unsigned
``env:Trace`` is not (docs/ENVELOPE.md). Attachment bytes are not in the XML:
:func:`sign_envelope` checks them against the manifest before signing, and the
signature covers their sizes and SHA-256 digests. The XMLDSig itself is
:mod:`exchange.signing.xmldsig` (the one pinned shape; signxml and xmlsec1 verify it).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping

from cryptography import x509
from lxml import etree

from exchange.envelope.build import envelope_to_element, serialize, signed_id
from exchange.envelope.model import ENVELOPE_NS, Envelope, SignedEnvelope
from exchange.envelope.schema import validate
from exchange.errors import (
    AgencyMismatchError,
    AttachmentDigestError,
    AttachmentError,
    CertificateExpiredError,
    CertificateUsageError,
    KeyMaterialError,
    SchemaError,
)
from exchange.signing import xmldsig
from exchange.signing.base import EnvelopeSigner
from exchange.signing.keys import AgencyIdentity, PrivateKey, load_certificates, load_private_key
from exchange.signing.pki import agency_files
from exchange.signing.trust import Clock
from exchange.signing.xmldsig import DS_NS, method_for

_SIGNED = f"{{{ENVELOPE_NS}}}Signed"


class Signer:
    """Signs envelopes for one agency with its key and certificate."""

    def __init__(
        self,
        key: PrivateKey,
        certificate: x509.Certificate,
        chain: Iterable[x509.Certificate] = (),
        *,
        allow_invalid: bool = False,
        clock: Clock | None = None,
    ) -> None:
        """Check that key and certificate belong together and name an agency.

        Unless ``allow_invalid``, also refuse a certificate that is not valid now
        or may not sign, and an envelope From another agency: better to fail here
        than to emit envelopes every recipient will refuse. ``allow_invalid``
        exists to produce such envelopes on purpose (tests, interop checks).
        """
        self.identity = AgencyIdentity.of(key, certificate, chain)
        self.allow_invalid = allow_invalid
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        if not allow_invalid:
            self._check_certificate()
        #: The XMLDSig SignatureMethod URI this signer emits (RSA-SHA256 or ECDSA-SHA256).
        self.signature_method = method_for(key)

    @classmethod
    def from_files(
        cls,
        key_path: str | os.PathLike[str],
        cert_path: str | os.PathLike[str],
        *,
        password: bytes | None = None,
        allow_invalid: bool = False,
    ) -> Signer:
        """Load a PEM key and a PEM certificate file (leaf first, then any intermediates)."""
        key = load_private_key(key_path, password)
        certs = load_certificates(cert_path)
        try:
            return cls(key, certs[0], certs[1:], allow_invalid=allow_invalid)
        except KeyMaterialError as exc:
            raise KeyMaterialError(f"{cert_path}: {exc.message}") from exc

    @classmethod
    def from_pki(
        cls, pki_dir: str | os.PathLike[str], code: str, *, name_suffix: str = "", allow_invalid: bool = False
    ) -> Signer:
        """The signer of agency ``code`` from a development CA directory (``exchange pki issue``)."""
        key_path, cert_path = agency_files(pki_dir, code, name_suffix)
        return cls.from_files(key_path, cert_path, allow_invalid=allow_invalid)

    # -- identity -------------------------------------------------------------------

    @property
    def agency_code(self) -> str:
        """The agency the certificate names."""
        return self.identity.code

    @property
    def certificate(self) -> x509.Certificate:
        return self.identity.certificate

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        return self.identity.chain

    @property
    def key(self) -> PrivateKey:
        return self.identity.key

    def _check_certificate(self) -> None:
        cert, now = self.certificate, self._clock()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateExpiredError(
                f"the signing certificate of {self.agency_code} is valid from {cert.not_valid_before_utc} "
                f"to {cert.not_valid_after_utc}, not now; install a current certificate"
            )
        try:
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            ku = None
        if ku is None or not (ku.digital_signature or ku.content_commitment):
            raise CertificateUsageError(
                f"the certificate of {self.agency_code} may not sign (keyUsage digitalSignature/nonRepudiation); "
                "issue a signing certificate"
            )

    # -- signing --------------------------------------------------------------------

    def sign_element(self, root: etree._Element) -> etree._Element:
        """Sign an unsigned ``env:Envelope`` root; returns a new signed root (the input is not changed)."""
        signed = root.find(_SIGNED)
        if signed is None or signed.get("Id") is None:
            raise SchemaError("the element to sign has no env:Signed with an Id; build it with envelope_to_element")
        if signed.find(f"{{{DS_NS}}}Signature") is not None:
            raise SchemaError("the envelope is already signed; sign the unsigned envelope once")
        signed_root = copy.deepcopy(root)
        self._sign_in_place(signed_root)
        return signed_root

    def _sign_in_place(self, root: etree._Element) -> None:
        signed = root.find(_SIGNED)
        if signed is None:  # the callers built or checked the layout; this keeps the contract explicit
            raise SchemaError("the element to sign has no env:Signed; build it with envelope_to_element")
        xmldsig.sign(signed, self.key, [self.certificate, *self.chain])

    def sign(self, envelope: Envelope) -> bytes:
        """Build, schema-validate and sign ``envelope``; the exact bytes to send (never pretty-print them)."""
        if not self.allow_invalid and envelope.header.sender.code != self.agency_code:
            raise AgencyMismatchError(
                f"the envelope is From {envelope.header.sender.code} but this signer holds the certificate of "
                f"{self.agency_code}; sign with the sending agency's own key"
            )
        root = envelope_to_element(envelope)
        validate(root)
        assert root.find(_SIGNED).get("Id") == signed_id(envelope.header.message_id)  # type: ignore[union-attr]
        self._sign_in_place(root)  # freshly built here, so no copy
        return serialize(root)


def check_attachments(envelope: Envelope, attachment_data: Mapping[str, bytes]) -> None:
    """Raise AttachmentError / AttachmentDigestError unless the bytes match the manifest exactly."""
    listed = {a.id for a in envelope.attachments}
    extra = sorted(set(attachment_data) - listed)
    if extra:
        raise AttachmentError(
            f"attachment parts {extra} are not in the signed manifest; every part must be listed and signed",
            detail={"extra": extra},
        )
    for a in envelope.attachments:
        data = attachment_data.get(a.id)
        if data is None:
            raise AttachmentError(
                f"attachment {a.id} ({a.name!r}) is listed in the manifest but its bytes are missing; "
                "send every listed attachment",
                detail={"missing": a.id},
            )
        if len(data) != a.size:
            raise AttachmentDigestError(
                f"attachment {a.id} ({a.name!r}) is {len(data)} bytes but the manifest says {a.size}; "
                "the bytes were altered or truncated",
                detail={"attachment": a.id},
            )
        digest = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(digest, a.sha256.lower()):
            raise AttachmentDigestError(
                f"attachment {a.id} ({a.name!r}) has SHA-256 {digest} but the manifest says {a.sha256}; "
                "the bytes were altered",
                detail={"attachment": a.id},
            )


def sign_envelope(envelope: Envelope, signer: EnvelopeSigner, attachment_data: Mapping[str, bytes]) -> SignedEnvelope:
    """Check attachments against the manifest, sign, and return what travels: XML bytes + attachment bytes."""
    check_attachments(envelope, attachment_data)
    xml = signer.sign(envelope)
    return SignedEnvelope(xml=xml, envelope=envelope, attachment_data=dict(attachment_data))
