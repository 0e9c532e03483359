"""Verifying envelopes: structure, algorithms, certificate trust, signature, then the signed model.

The order is deliberate (docs/SIGNING.md, "What is refused"):

1. hardened parse (no DTD, size and depth limits);
2. structure: one ``env:Signed`` under the root, one ``ds:Signature`` as its last
   child, one Header and one Manifest inside it, nothing else carrying the
   referenced Id (signature wrapping is refused before any cryptography);
3. the signature's shape and algorithms against the one pinned XMLDSig shape
   (:func:`exchange.signing.xmldsig.check_shape`: SHA-1, other transforms,
   InclusiveNamespaces, Object and the like are refused with a message);
4. the whole envelope against the XSD;
5. the certificate from X509Data checked against the trust store (chain,
   validity, key usage, CRL);
6. the reference digest over exactly that ``env:Signed`` (minus the signature)
   and the signature value over SignedInfo with that certificate's key;
7. the model read from that same ``env:Signed`` element, the node-set that was
   digested; the header's From agency must be the certificate's agency;
8. attachment sizes and SHA-256 digests recomputed over the bytes that travelled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from lxml import etree

from exchange.envelope.model import ENVELOPE_NS, SignedEnvelope
from exchange.envelope.parse import DEFAULT_LIMITS, XmlLimits, envelope_from_element, parse_xml
from exchange.envelope.schema import validate
from exchange.errors import (
    CertificateUsageError,
    SchemaError,
    SignatureError,
    SignatureMissingError,
    SignatureWrappingError,
)
from exchange.signing import xmldsig
from exchange.signing.keys import certificate_from_der
from exchange.signing.sign import check_attachments
from exchange.signing.trust import Clock, TrustedCertificate, TrustStore, check_agency, describe

_ENV = f"{{{ENVELOPE_NS}}}"
_ENVELOPE, _SIGNED, _HEADER, _MANIFEST = (_ENV + n for n in ("Envelope", "Signed", "Header", "Manifest"))
_SIGNATURE = xmldsig.SIGNATURE
#: Every element with an attribute whose local name is Id (any namespace) and whose value is ``$id``.
_ID_HOLDERS = etree.XPath("//*[@*[local-name() = 'Id'][. = $id]]")


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose signature, certificate and (if given) attachments checked out."""

    signed: SignedEnvelope
    signer_agency: str
    certificate: x509.Certificate


class Verifier:
    """Verifies envelopes against one trust store; safe to share between threads."""

    def __init__(
        self,
        trust: TrustStore,
        *,
        clock: Clock | None = None,
        limits: XmlLimits = DEFAULT_LIMITS,
        cert_cache_size: int = 512,
    ) -> None:
        self.trust = trust
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.limits = limits
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._cert_cache_size = cert_cache_size
        self._lock = threading.Lock()

    def verify(
        self, xml: bytes, attachment_data: Mapping[str, bytes] | None = None, *, limits: XmlLimits | None = None
    ) -> VerifiedEnvelope:
        """Verify signed envelope bytes (and attachment bytes by id, if given); raise a typed error otherwise."""
        root = parse_xml(xml, limits or self.limits)
        signed, signature = locate_signature(root)
        method = xmldsig.check_shape(signature, signed.get("Id") or "")
        # Schema first on the whole input: cheap, and it names the field at fault for ordinary mistakes.
        validate(root)
        leaf, chain = self._certificates(signature)
        # The key's size and curve are algorithm choices: refused as such (signature-weak-algorithm) before the
        # certificate is even looked up, and a key that does not fit SignatureMethod before any cryptography.
        public_key = xmldsig.check_key(leaf.public_key(), method)
        self.trust.check(leaf, chain, now=self._clock())
        xmldsig.verify(signed, signature, public_key, method)
        # Read only what was digested: this env:Signed (locate_signature made sure it is the only one, holds
        # exactly Header, Manifest and the signature, and alone carries the referenced Id). Trace is unsigned.
        envelope = envelope_from_element(signed, trace_from=root)
        check_agency(leaf, envelope.header.sender.code)
        if attachment_data is not None:
            check_attachments(envelope, attachment_data)
        return VerifiedEnvelope(
            signed=SignedEnvelope(xml=bytes(xml), envelope=envelope, attachment_data=dict(attachment_data or {})),
            signer_agency=envelope.header.sender.code,
            certificate=leaf,
        )

    def check_certificate(
        self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...] = (), *, agency_code: str | None = None
    ) -> TrustedCertificate:
        """The trust store check alone, at this verifier's clock (for tools that show a certificate)."""
        return self.trust.check(certificate, chain, agency_code=agency_code, now=self._clock())

    # -- steps ----------------------------------------------------------------------

    def _certificates(self, signature: etree._Element) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        texts = xmldsig.certificates_text(signature)
        if not texts:
            raise SignatureError(
                "the signature has no KeyInfo/X509Data/X509Certificate; envelopes must carry the signer's certificate"
            )
        certs = [self._certificate(text) for text in texts]
        # The leaf is the one end-entity certificate; the others may only be CA certificates (intermediates).
        leaves = [c for c in certs if not _is_ca(c)]
        if not leaves:
            # Only CA certificates: the first is what signed (the signer comes first in X509Data), and a CA
            # certificate may not sign envelopes (docs/SIGNING.md: certificate-usage).
            raise CertificateUsageError(
                f"the signer's certificate {describe(certs[0])} is a CA certificate; envelopes are signed by "
                "agency (end-entity) certificates only"
            )
        if len(leaves) != 1:
            raise SignatureError(
                f"X509Data holds {len(leaves)} end-entity certificates; it must hold exactly the signer's "
                "certificate, optionally followed by intermediate CA certificates"
            )
        leaf = leaves[0]
        return leaf, tuple(c for c in certs if c is not leaf)

    def _certificate(self, text: str) -> x509.Certificate:
        der = xmldsig.b64(text, "an X509Certificate")
        key = hashlib.sha256(der).hexdigest()
        with self._lock:
            cert = self._certs.get(key)
            if cert is not None:
                self._certs.move_to_end(key)
                return cert
        # cryptography decodes extensions and the key lazily: certificate_from_der decodes them all now, so a
        # damaged certificate is refused here (certificate-malformed) rather than failing later, untyped.
        cert = certificate_from_der(der)
        with self._lock:
            self._certs[key] = cert
            while len(self._certs) > self._cert_cache_size:
                self._certs.popitem(last=False)
        return cert


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def locate_signature(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    """``(env:Signed, ds:Signature)`` if the envelope has exactly the signed layout; else a typed refusal."""
    if root.tag != _ENVELOPE:
        raise SchemaError(f"the root element is {root.tag!s}, not env:Envelope; send an envelope 1.0")
    all_signed = list(root.iter(_SIGNED))
    direct = [c for c in xmldsig.element_children(root) if c.tag == _SIGNED]
    if not all_signed:
        raise SchemaError("the envelope has no env:Signed element; see docs/ENVELOPE.md")
    if len(all_signed) != 1 or len(direct) != 1:
        raise SignatureWrappingError(
            f"the envelope holds {len(all_signed)} env:Signed element(s), {len(direct)} of them under the root; "
            "exactly one, directly under env:Envelope, is allowed (signature wrapping)"
        )
    signed = direct[0]
    signatures = list(root.iter(_SIGNATURE))
    if not signatures:
        raise SignatureMissingError(
            f"envelope {signed.get('Id')} is not signed; unsigned envelopes are never delivered"
        )
    children = xmldsig.element_children(signed)
    if len(signatures) != 1 or not children or children[-1] is not signatures[0]:
        where = ", ".join(sorted({root.getroottree().getpath(s) for s in signatures}))
        raise SignatureWrappingError(
            f"the envelope holds {len(signatures)} ds:Signature element(s) at {where}; exactly one is allowed, "
            "as the last child of env:Signed"
        )
    for tag, name in ((_HEADER, "env:Header"), (_MANIFEST, "env:Manifest")):
        found = list(root.iter(tag))
        if len(found) != 1 or found[0].getparent() is not signed:
            raise SignatureWrappingError(
                f"the envelope holds {len(found)} {name} element(s); exactly one is allowed, inside env:Signed "
                "(a second, unsigned copy is a signature wrapping attempt)"
            )
    if [c.tag for c in children] != [_HEADER, _MANIFEST, _SIGNATURE]:
        raise SignatureWrappingError("env:Signed must hold exactly env:Header, env:Manifest and ds:Signature")
    signed_id = signed.get("Id")
    holders = _ID_HOLDERS(root, id=signed_id or "")
    if holders != [signed]:
        raise SignatureWrappingError(
            f"{len(holders)} elements carry Id {signed_id!r}; only env:Signed may (signature wrapping)"
        )
    return signed, signatures[0]
