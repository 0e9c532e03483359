"""Verifying envelopes: structure, algorithms, certificate trust, signature, then the signed model.

The order is deliberate (docs/SIGNING.md, "What is refused"):

1. hardened parse (no DTD, size and depth limits);
2. structure: one ``env:Signed`` under the root, one ``ds:Signature`` as its last
   child, one Header and one Manifest inside it, nothing else carrying the
   referenced Id (signature wrapping is refused before any cryptography);
3. algorithms read from SignedInfo against an allow-list (SHA-1 and anything
   unexpected refused with a message, before signxml sees the document);
4. the certificate from X509Data checked against the trust store (chain,
   validity, key usage, CRL);
5. signxml verification with that certificate, the signature location, the
   reference count and the algorithms all pinned;
6. the model rebuilt only from ``VerifyResult.signed_xml`` and schema-validated;
   the header's From agency must be the certificate's agency;
7. attachment sizes and SHA-256 digests recomputed over the bytes that travelled.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from lxml import etree
from signxml import SignatureConfiguration, XMLVerifier
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidDigest, InvalidInput, InvalidSignature, SignXMLException

from exchange.envelope.model import ENVELOPE_NS, ENVELOPE_VERSION, SignedEnvelope
from exchange.envelope.parse import DEFAULT_LIMITS, XmlLimits, envelope_from_element, parse_xml
from exchange.envelope.schema import validate
from exchange.errors import (
    SchemaError,
    SignatureError,
    SignatureMissingError,
    SignatureWrappingError,
    WeakAlgorithmError,
)
from exchange.signing.sign import DS_NS, EXC_C14N, check_attachments
from exchange.signing.trust import Clock, TrustedCertificate, TrustStore, check_agency, describe

#: Signature algorithms accepted on the bus.
SIGNATURE_METHODS = frozenset({SignatureMethod.RSA_SHA256, SignatureMethod.ECDSA_SHA256})
DIGEST_METHODS = frozenset({DigestAlgorithm.SHA256})
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
#: The reference transforms, in order, that docs/ENVELOPE.md prescribes.
TRANSFORMS = (ENVELOPED, EXC_C14N.value)

_ENV = f"{{{ENVELOPE_NS}}}"
_DS = f"{{{DS_NS}}}"
_ENVELOPE, _SIGNED, _HEADER, _MANIFEST, _TRACE = (_ENV + n for n in ("Envelope", "Signed", "Header", "Manifest",
                                                                      "Trace"))
_SIGNATURE = _DS + "Signature"

#: Pinned signxml expectations: the signature sits directly in env:Signed (not ".//" = anywhere).
EXPECT = SignatureConfiguration(
    location=f"./{_SIGNED}/",
    expect_references=1,
    signature_methods=SIGNATURE_METHODS,
    digest_algorithms=DIGEST_METHODS,
)

_local = threading.local()


def _signxml_parser() -> etree.XMLParser:
    # signxml re-parses its own serialisations; give it the same hardening as parse_xml (one per thread).
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        _local.parser = parser
    return parser


@dataclass(frozen=True, slots=True)
class VerifiedEnvelope:
    """An envelope whose signature, certificate and (if given) attachments checked out."""

    signed: SignedEnvelope
    signer_agency: str
    certificate: x509.Certificate


class Verifier:
    """Verifies envelopes against one trust store; safe to share between threads."""

    def __init__(self, trust: TrustStore, *, clock: Clock | None = None, limits: XmlLimits = DEFAULT_LIMITS,
                 cert_cache_size: int = 512) -> None:
        self.trust = trust
        self._clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.limits = limits
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._cert_cache_size = cert_cache_size
        self._lock = threading.Lock()

    def verify(self, xml: bytes, attachment_data: Mapping[str, bytes] | None = None, *,
               limits: XmlLimits | None = None) -> VerifiedEnvelope:
        """Verify signed envelope bytes (and attachment bytes by id, if given); raise a typed error otherwise."""
        root = parse_xml(xml, limits or self.limits)
        signed, signature = locate_signature(root)
        reference_uri = check_algorithms(signature, signed.get("Id") or "")
        # Schema first on the whole input: cheap, and it names the field at fault for ordinary mistakes.
        validate(root)
        leaf, chain = self._certificates(signature)
        self.trust.check(leaf, chain, now=self._clock())
        result = self._signxml_verify(root, leaf)
        signed_xml = result.signed_xml
        if signed_xml is None or signed_xml.tag != _SIGNED or f"#{signed_xml.get('Id')}" != reference_uri:
            raise SignatureWrappingError(
                f"the signature covers {getattr(signed_xml, 'tag', 'nothing')!r}, not the envelope's env:Signed; "
                "the envelope was rearranged after signing"
            )
        envelope_root = _rebuild(signed_xml, root)
        validate(envelope_root)
        envelope = envelope_from_element(signed_xml, trace_from=envelope_root)
        check_agency(leaf, envelope.header.sender.code)
        if attachment_data is not None:
            check_attachments(envelope, attachment_data)
        return VerifiedEnvelope(
            signed=SignedEnvelope(xml=bytes(xml), envelope=envelope, attachment_data=dict(attachment_data or {})),
            signer_agency=envelope.header.sender.code,
            certificate=leaf,
        )

    def check_certificate(self, certificate: x509.Certificate, chain: tuple[x509.Certificate, ...] = (),
                          *, agency_code: str | None = None) -> TrustedCertificate:
        """The trust store check alone, at this verifier's clock (for tools that show a certificate)."""
        return self.trust.check(certificate, chain, agency_code=agency_code, now=self._clock())

    # -- steps ----------------------------------------------------------------------

    def _certificates(self, signature: etree._Element) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        texts = signature.findall(f"{_DS}KeyInfo/{_DS}X509Data/{_DS}X509Certificate")
        if not texts:
            raise SignatureError(
                "the signature has no KeyInfo/X509Data/X509Certificate; envelopes must carry the signer's "
                "certificate"
            )
        certs = [self._certificate(t.text or "") for t in texts]
        # The leaf is the one end-entity certificate; the others may only be CA certificates (intermediates).
        leaves = [c for c in certs if not _is_ca(c)]
        if len(leaves) != 1:
            raise SignatureError(
                f"X509Data holds {len(leaves)} end-entity certificates; it must hold exactly the signer's "
                "certificate, optionally followed by intermediate CA certificates"
            )
        leaf = leaves[0]
        return leaf, tuple(c for c in certs if c is not leaf)

    def _certificate(self, text: str) -> x509.Certificate:
        try:
            der = base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SignatureError(f"an X509Certificate is not valid base64 ({exc}); the signature is damaged") from exc
        key = hashlib.sha256(der).hexdigest()
        with self._lock:
            cert = self._certs.get(key)
            if cert is not None:
                self._certs.move_to_end(key)
                return cert
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise SignatureError(f"an X509Certificate is not a DER certificate ({exc}); the signature is damaged") \
                from exc
        with self._lock:
            self._certs[key] = cert
            while len(self._certs) > self._cert_cache_size:
                self._certs.popitem(last=False)
        return cert

    @staticmethod
    def _signxml_verify(root: etree._Element, leaf: x509.Certificate):  # -> signxml VerifyResult
        try:
            return XMLVerifier().verify(
                root,
                x509_cert=leaf,  # already checked against our trust store; never signxml's certifi default
                id_attribute="Id",
                parser=_signxml_parser(),
                expect_config=EXPECT,
            )
        except InvalidDigest as exc:
            raise SignatureError(
                "the signed content does not match the signature's digest: the header or manifest was "
                f"altered after signing ({exc})"
            ) from exc
        except InvalidSignature as exc:
            raise SignatureError(
                f"the signature value does not verify with the certificate {describe(leaf)}: SignedInfo was "
                f"altered or another key signed ({exc})"
            ) from exc
        except InvalidInput as exc:
            text = str(exc)
            if "forbidden by configuration" in text:
                raise WeakAlgorithmError(f"signature algorithm refused: {text}") from exc
            if "Ambiguous reference" in text or "Unable to resolve reference" in text:
                raise SignatureWrappingError(f"the signature reference is ambiguous or dangling: {text}") from exc
            raise SignatureError(f"the signature is malformed: {text}") from exc
        except etree.DocumentInvalid as exc:
            raise SignatureError(f"ds:Signature does not match the XMLDSig schema: {exc}") from exc
        except (SignXMLException, ValueError, binascii.Error) as exc:
            raise SignatureError(f"the signature cannot be checked: {exc}") from exc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _elements(parent: etree._Element) -> list[etree._Element]:
    return [c for c in parent if isinstance(c.tag, str)]


def locate_signature(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    """``(env:Signed, ds:Signature)`` if the envelope has exactly the signed layout; else a typed refusal."""
    if root.tag != _ENVELOPE:
        raise SchemaError(f"the root element is {root.tag}, not env:Envelope; send an envelope 1.0")
    all_signed = list(root.iter(_SIGNED))
    direct = [c for c in _elements(root) if c.tag == _SIGNED]
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
    children = _elements(signed)
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
    holders = [e for e in root.iter() if isinstance(e.tag, str)
               and any(etree.QName(a).localname == "Id" and v == signed_id for a, v in e.attrib.items())]
    if holders != [signed]:
        raise SignatureWrappingError(
            f"{len(holders)} elements carry Id {signed_id!r}; only env:Signed may (signature wrapping)"
        )
    return signed, signatures[0]


def _algorithm(element: etree._Element | None, what: str) -> str:
    if element is None or not element.get("Algorithm"):
        raise SignatureError(f"the signature has no {what}; it is malformed")
    return element.get("Algorithm", "")


def _weak(what: str, algorithm: str, allowed: str) -> WeakAlgorithmError:
    sha1 = "sha1" in algorithm.lower()
    return WeakAlgorithmError(
        f"the signature uses {what} {algorithm}"
        + (" (SHA-1 is broken and refused on the bus)" if sha1 else ", which is not allowed")
        + f"; sign with {allowed}",
        detail={"algorithm": algorithm},
    )


def check_algorithms(signature: etree._Element, signed_id: str) -> str:
    """Refuse any algorithm outside the allow-list, before any cryptography; returns the reference URI."""
    signed_info = signature.find(f"{_DS}SignedInfo")
    if signed_info is None:
        raise SignatureError("the signature has no SignedInfo; it is malformed")
    c14n = _algorithm(signed_info.find(f"{_DS}CanonicalizationMethod"), "CanonicalizationMethod")
    if c14n != EXC_C14N.value:
        raise _weak("canonicalization", c14n, f"exclusive c14n ({EXC_C14N.value})")
    method = _algorithm(signed_info.find(f"{_DS}SignatureMethod"), "SignatureMethod")
    if method not in {m.value for m in SIGNATURE_METHODS}:
        raise _weak("signature method", method, "RSA-SHA256 or ECDSA-SHA256")
    references = signed_info.findall(f"{_DS}Reference")
    if len(references) != 1:
        raise SignatureWrappingError(
            f"the signature has {len(references)} references; exactly one, to env:Signed, is allowed"
        )
    reference = references[0]
    digest = _algorithm(reference.find(f"{_DS}DigestMethod"), "DigestMethod")
    if digest not in {d.value for d in DIGEST_METHODS}:
        raise _weak("digest", digest, "SHA-256")
    transforms = tuple(t.get("Algorithm", "") for t in reference.findall(f"{_DS}Transforms/{_DS}Transform"))
    if transforms != TRANSFORMS:
        unknown = [t for t in transforms if t not in TRANSFORMS]
        raise WeakAlgorithmError(
            f"the reference transforms are {list(transforms)}; exactly enveloped-signature then exclusive c14n "
            "are allowed" + (f" ({unknown} refused)" if unknown else ""),
            detail={"transforms": list(transforms)},
        )
    uri = reference.get("URI")
    if uri != f"#{signed_id}":
        raise SignatureWrappingError(
            f"the signature references {uri!r}, not env:Signed ({'#' + signed_id!r}); it does not cover the envelope"
        )
    return uri


def _rebuild(signed_xml: etree._Element, original: etree._Element) -> etree._Element:
    """A fresh env:Envelope around the verified Signed, with a copy of the (unsigned, informational) Trace."""
    root = etree.Element(_ENVELOPE, nsmap={"env": ENVELOPE_NS})
    root.set("version", ENVELOPE_VERSION)
    root.append(signed_xml)
    trace = original.find(_TRACE)
    if trace is not None:
        root.append(copy.deepcopy(trace))
    return root

