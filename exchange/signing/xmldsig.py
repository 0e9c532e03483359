"""The one XMLDSig shape the bus emits and accepts, signed and checked without a general engine.

XMLDSig allows any number of references, transforms (XPath, XSLT, base64),
canonicalisations and key sources; most signature vulnerabilities live in that
generality. The bus needs exactly one shape (docs/SIGNING.md, "What is signed"):

    ds:Signature                                   last child of env:Signed
      ds:SignedInfo
        ds:CanonicalizationMethod  exclusive c14n   (no InclusiveNamespaces)
        ds:SignatureMethod         RSA-SHA256 | ECDSA-SHA256
        ds:Reference URI="#<Id of env:Signed>"
          ds:Transforms            enveloped-signature, exclusive c14n
          ds:DigestMethod          SHA-256
          ds:DigestValue
      ds:SignatureValue
      ds:KeyInfo/ds:X509Data/ds:X509Certificate+   nothing else in X509Data; text only in the values

This module signs and verifies that shape directly with lxml's exclusive c14n and
the cryptography library. Anything else is refused by :func:`check_shape` before
any cryptography, so no input can steer which bytes are digested. It is
interoperable with xmlsec1 and signxml in both directions (tests/unit/test_xmldsig.py,
tests/integration/test_xmlsec_interop.py), and it avoids the fixed cost of a general
engine, which re-serialises and re-parses the document several times per call
(benchmarks/bench_signing.py prints both).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from lxml import etree

from exchange.errors import SignatureError, SignatureWrappingError, WeakAlgorithmError

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
ECDSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"
#: Signature methods accepted on the bus.
SIGNATURE_METHODS = frozenset({RSA_SHA256, ECDSA_SHA256})
#: The reference transforms, in order.
TRANSFORMS = (ENVELOPED, EXC_C14N)
#: The smallest RSA modulus accepted (NIST SP 800-131A: 2048 bits until 2030).
MIN_RSA_BITS = 2048

_DS = f"{{{DS_NS}}}"
SIGNATURE = _DS + "Signature"
_SIGNED_INFO, _C14N_METHOD, _SIG_METHOD, _REFERENCE = (
    _DS + n for n in ("SignedInfo", "CanonicalizationMethod", "SignatureMethod", "Reference")
)
_TRANSFORMS, _TRANSFORM, _DIGEST_METHOD, _DIGEST_VALUE = (
    _DS + n for n in ("Transforms", "Transform", "DigestMethod", "DigestValue")
)
_SIGNATURE_VALUE, _KEY_INFO, _X509_DATA, _X509_CERT = (
    _DS + n for n in ("SignatureValue", "KeyInfo", "X509Data", "X509Certificate")
)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def c14n(element: etree._Element) -> bytes:
    """Exclusive XML canonicalisation 1.0 without comments of ``element``'s subtree."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def method_for(key: PrivateKey | PublicKey) -> str:
    """RSA-SHA256 for RSA keys, ECDSA-SHA256 for P-256 keys."""
    return ECDSA_SHA256 if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) else RSA_SHA256


# -- signing ------------------------------------------------------------------------


def sign(target: etree._Element, key: PrivateKey, certificates: Sequence[x509.Certificate]) -> etree._Element:
    """Append an enveloped signature over ``target`` (which must carry an ``Id``) as its last child.

    ``certificates``: the signer's certificate first, then any intermediate CA
    certificates, all written to X509Data. Returns the ``ds:Signature`` element.
    """
    ref_id = target.get("Id")
    if not ref_id:
        raise SignatureError("the element to sign has no Id attribute to reference")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        raise WeakAlgorithmError(f"an RSA key of {key.key_size} bits is too small; use at least {MIN_RSA_BITS}")
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(key.curve, ec.SECP256R1):
        raise WeakAlgorithmError(f"the EC key is on {key.curve.name}; the bus signs with P-256 (secp256r1)")
    digest = hashlib.sha256(c14n(target)).digest()  # before the signature exists: the enveloped transform

    signature = etree.SubElement(target, SIGNATURE, nsmap={"ds": DS_NS})
    info = etree.SubElement(signature, _SIGNED_INFO)
    etree.SubElement(info, _C14N_METHOD, Algorithm=EXC_C14N)
    etree.SubElement(info, _SIG_METHOD, Algorithm=method_for(key))
    reference = etree.SubElement(info, _REFERENCE, URI=f"#{ref_id}")
    transforms = etree.SubElement(reference, _TRANSFORMS)
    for algorithm in TRANSFORMS:
        etree.SubElement(transforms, _TRANSFORM, Algorithm=algorithm)
    etree.SubElement(reference, _DIGEST_METHOD, Algorithm=SHA256)
    etree.SubElement(reference, _DIGEST_VALUE).text = base64.b64encode(digest).decode("ascii")

    signed_info = c14n(info)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signed_info, ec.ECDSA(hashes.SHA256())))
        size = (key.curve.key_size + 7) // 8
        value = r.to_bytes(size, "big") + s.to_bytes(size, "big")  # XMLDSig wants r || s, not DER
    else:
        value = key.sign(signed_info, padding.PKCS1v15(), hashes.SHA256())
    etree.SubElement(signature, _SIGNATURE_VALUE).text = base64.b64encode(value).decode("ascii")
    x509_data = etree.SubElement(etree.SubElement(signature, _KEY_INFO), _X509_DATA)
    for cert in certificates:
        der = cert.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, _X509_CERT).text = base64.b64encode(der).decode("ascii")
    return signature


# -- verifying ----------------------------------------------------------------------


def element_children(parent: etree._Element) -> list[etree._Element]:
    """The element children of ``parent`` (comments and processing instructions left out)."""
    return [c for c in parent if isinstance(c.tag, str)]


def _expect(parent: etree._Element, tags: Sequence[str], what: str) -> list[etree._Element]:
    children = element_children(parent)
    if [c.tag for c in children] != list(tags):
        found = ", ".join(etree.QName(c).localname for c in children) or "nothing"
        wanted = ", ".join(etree.QName(t).localname for t in tags) or "nothing"
        raise SignatureError(f"{what} holds {found}; exactly {wanted} is allowed (docs/SIGNING.md)")
    return children


def _algorithm(element: etree._Element, what: str) -> str:
    algorithm = element.get("Algorithm")
    if not algorithm:
        raise SignatureError(f"the signature has no {what} algorithm; it is malformed")
    return algorithm


def weak(what: str, algorithm: str, allowed: str) -> WeakAlgorithmError:
    """The refusal of an algorithm outside the allow-list, with SHA-1 named as such."""
    sha1 = "sha1" in algorithm.lower()
    return WeakAlgorithmError(
        f"the signature uses {what} {algorithm}"
        + (" (SHA-1 is broken and refused on the bus)" if sha1 else ", which is not allowed")
        + f"; sign with {allowed}",
        detail={"algorithm": algorithm},
    )


def check_shape(signature: etree._Element, ref_id: str) -> str:
    """Refuse anything but the pinned shape and algorithms, before any cryptography; returns the method.

    Algorithms are checked before the element layout so that a signature made
    with SHA-1 or inclusive c14n is reported as such, not as "malformed".
    """
    signed_info = signature.find(_SIGNED_INFO)
    if signed_info is None:
        raise SignatureError("the signature has no SignedInfo; it is malformed")
    c14n_method = signed_info.find(_C14N_METHOD)
    method_el = signed_info.find(_SIG_METHOD)
    references = signed_info.findall(_REFERENCE)
    if c14n_method is None or method_el is None:
        raise SignatureError("SignedInfo lacks CanonicalizationMethod or SignatureMethod; it is malformed")
    canonicalization = _algorithm(c14n_method, "CanonicalizationMethod")
    if canonicalization != EXC_C14N:
        raise weak("canonicalization", canonicalization, f"exclusive c14n ({EXC_C14N})")
    method = _algorithm(method_el, "SignatureMethod")
    if method not in SIGNATURE_METHODS:
        raise weak("signature method", method, "RSA-SHA256 or ECDSA-SHA256")
    if len(references) != 1:
        raise SignatureWrappingError(
            f"the signature has {len(references)} references; exactly one, to env:Signed, is allowed"
        )
    reference = references[0]
    digest_el = reference.find(_DIGEST_METHOD)
    if digest_el is None:
        raise SignatureError("the reference has no DigestMethod; it is malformed")
    digest = _algorithm(digest_el, "DigestMethod")
    if digest != SHA256:
        raise weak("digest", digest, "SHA-256")
    transforms = tuple(t.get("Algorithm", "") for t in reference.findall(f"{_TRANSFORMS}/{_TRANSFORM}"))
    if transforms != TRANSFORMS:
        unknown = [t for t in transforms if t not in TRANSFORMS]
        raise WeakAlgorithmError(
            f"the reference transforms are {list(transforms)}; exactly enveloped-signature then exclusive c14n "
            "are allowed" + (f" ({unknown} refused)" if unknown else ""),
            detail={"transforms": list(transforms)},
        )
    uri = reference.get("URI")
    if uri != f"#{ref_id}":
        raise SignatureWrappingError(
            f"the signature references {uri!r}, not env:Signed ({'#' + ref_id!r}); it does not cover the envelope"
        )

    # The layout, element by element: no Object, no Manifest, no InclusiveNamespaces, no extra KeyInfo.
    _, _, key_info = _expect(signature, (_SIGNED_INFO, _SIGNATURE_VALUE, _KEY_INFO), "ds:Signature")
    _expect(signed_info, (_C14N_METHOD, _SIG_METHOD, _REFERENCE), "ds:SignedInfo")
    _expect(c14n_method, (), "ds:CanonicalizationMethod")
    _expect(method_el, (), "ds:SignatureMethod")
    transforms_el, _, _ = _expect(reference, (_TRANSFORMS, _DIGEST_METHOD, _DIGEST_VALUE), "ds:Reference")
    for transform in _expect(transforms_el, (_TRANSFORM, _TRANSFORM), "ds:Transforms"):
        _expect(transform, (), "ds:Transform")
    _expect(digest_el, (), "ds:DigestMethod")
    (x509_data,) = _expect(key_info, (_X509_DATA,), "ds:KeyInfo")
    _check_x509_data(x509_data)
    _check_no_stray_text(signature)
    return method


def _check_x509_data(x509_data: etree._Element) -> None:
    """X509Data holds X509Certificate elements only (the signer's, then intermediates), each plain base64 text.

    No X509SubjectName, X509IssuerSerial, X509SKI, X509CRL or foreign element: the verifier reads only the
    certificates, so anything else would be signed-looking content nobody checks.
    """
    children = element_children(x509_data)
    if not children or any(c.tag != _X509_CERT for c in children):
        found = ", ".join(etree.QName(c).localname for c in children) or "nothing"
        raise SignatureError(
            f"ds:X509Data holds {found}; exactly X509Certificate elements (the signer's "
            "certificate, then any intermediate CA certificate) are allowed (docs/SIGNING.md)"
        )
    for element in (x509_data, *children):
        if len(element.attrib):
            raise SignatureError(
                f"ds:{etree.QName(element).localname} carries attributes "
                f"({', '.join(sorted(element.attrib))}); it has none in the pinned shape"
            )
        if element is not x509_data and len(element):
            _expect(element, (), "ds:X509Certificate")  # raises, naming what is inside


#: The elements of the pinned shape whose text is a value; everywhere else only whitespace may stand.
_VALUE_ELEMENTS = frozenset({_DIGEST_VALUE, _SIGNATURE_VALUE, _X509_CERT})


def _check_no_stray_text(signature: etree._Element) -> None:
    """Refuse text inside ds:Signature other than the three values (whitespace between elements is fine).

    The signature's own tail belongs to env:Signed and is covered by the enveloped transform.
    """
    for element in signature.iter():
        text, tail = element.text, element.tail
        if text and element.tag not in _VALUE_ELEMENTS and not text.isspace():
            raise SignatureError(
                f"ds:{etree.QName(element).localname} holds text {text.strip()[:40]!r}; only "
                "DigestValue, SignatureValue and X509Certificate carry text in the pinned shape"
            )
        if tail and element is not signature and not tail.isspace():
            raise SignatureError(
                f"text {tail.strip()[:40]!r} follows ds:{etree.QName(element).localname} inside "
                "ds:Signature; nothing but whitespace may stand between the signature's elements"
            )


def check_key(public_key: object, method: str) -> PublicKey:
    """``public_key`` if it fits ``method`` and the bus's key sizes; else a typed refusal (docs/SIGNING.md).

    A key that does not match SignatureMethod is ``signature-invalid``; an RSA key under
    :data:`MIN_RSA_BITS` bits or an EC key on another curve than P-256 is ``signature-weak-algorithm``.
    """
    if method == RSA_SHA256:
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise SignatureError("SignatureMethod is RSA-SHA256 but the certificate's key is not RSA")
        if public_key.key_size < MIN_RSA_BITS:
            raise WeakAlgorithmError(
                f"the certificate's RSA key has {public_key.key_size} bits; at least {MIN_RSA_BITS} are required"
            )
        return public_key
    if method == ECDSA_SHA256:
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise SignatureError("SignatureMethod is ECDSA-SHA256 but the certificate's key is not an EC key")
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise WeakAlgorithmError(
                f"the certificate's EC key is on {public_key.curve.name}; ECDSA-SHA256 on the bus is P-256 "
                "(secp256r1) only: issue the agency a P-256 or RSA key",
                detail={"curve": public_key.curve.name},
            )
        return public_key
    raise WeakAlgorithmError(f"signature method {method} is not allowed")  # check_shape allows nothing else


def certificates_text(signature: etree._Element) -> list[str]:
    """The base64 texts of X509Data's certificates, in document order."""
    return [t.text or "" for t in signature.findall(f"{_KEY_INFO}/{_X509_DATA}/{_X509_CERT}")]


def b64(text: str | None, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not valid base64 ({exc}); the signature is damaged") from exc


def digest_without(target: etree._Element, signature: etree._Element) -> bytes:
    """SHA-256 of exclusive c14n of ``target`` with ``signature`` removed: the enveloped-signature transform.

    The signature node alone is removed; text after it stays, as in the XPath data
    model (lxml keeps an element's tail with the element, so it is handed over to the
    preceding node while the signature is out). The tree is restored afterwards.
    """
    parent = signature.getparent()
    assert parent is not None
    index = parent.index(signature)
    tail = signature.tail
    previous = signature.getprevious()
    saved = previous.tail if previous is not None else parent.text
    if tail:
        if previous is not None:
            previous.tail = (saved or "") + tail
        else:
            parent.text = (saved or "") + tail
    parent.remove(signature)
    try:
        return hashlib.sha256(c14n(target)).digest()
    finally:
        if previous is not None:
            previous.tail = saved
        else:
            parent.text = saved
        parent.insert(index, signature)
        signature.tail = tail


def verify(target: etree._Element, signature: etree._Element, public_key: PublicKey, method: str) -> None:
    """Check the reference digest over ``target`` and the signature value over SignedInfo with ``public_key``.

    ``signature`` must have passed :func:`check_shape` (which returned ``method``)
    and be a descendant of ``target``. Raises SignatureError on any mismatch.
    """
    public_key = check_key(public_key, method)
    signed_info = signature.find(_SIGNED_INFO)
    assert signed_info is not None
    expected = b64(signed_info.findtext(f"{_REFERENCE}/{_DIGEST_VALUE}"), "DigestValue")
    if not hmac.compare_digest(digest_without(target, signature), expected):
        raise SignatureError(
            "the signed content does not match the signature's digest: the header or manifest was altered after signing"
        )
    value = b64(signature.findtext(_SIGNATURE_VALUE), "SignatureValue")
    data = c14n(signed_info)
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(value, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            if len(value) != 64:
                raise SignatureError(f"an ECDSA P-256 SignatureValue is 64 bytes (r || s), not {len(value)}")
            der = encode_dss_signature(int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big"))
            public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature value does not verify with the signer's certificate: SignedInfo was altered or "
            "another key signed"
        ) from exc
