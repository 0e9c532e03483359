"""The trust seam: what the use cases sign and verify with.

:class:`~exchange.signing.sign.Signer` and :class:`~exchange.signing.verify.Verifier` are the
implementations; the service, the node and :func:`~exchange.signing.sign.sign_envelope` are typed
against these two Protocols, so a signer held elsewhere (a hardware module, a test's stand-in)
needs only what is listed here. Type-only imports: reading the contract loads neither lxml nor
cryptography.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from cryptography import x509

    from exchange.envelope.model import Envelope
    from exchange.signing.verify import VerifiedEnvelope


class EnvelopeSigner(Protocol):
    """Signs envelopes From one agency with that agency's key."""

    @property
    def agency_code(self) -> str:
        """The agency the signing certificate names."""
        ...

    @property
    def certificate(self) -> x509.Certificate:
        """The signing certificate (readiness and the expiry gauges read its validity)."""
        ...

    def sign(self, envelope: Envelope) -> bytes:
        """The signed envelope XML, the exact bytes to send."""
        ...


class EnvelopeVerifier(Protocol):
    """Checks signed envelope bytes against a trust store; shared between threads."""

    def verify(self, xml: bytes, attachment_data: Mapping[str, bytes] | None = None) -> VerifiedEnvelope:
        """The verified envelope, or a typed ``SignatureError`` / ``EnvelopeError``."""
        ...
