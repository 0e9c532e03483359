"""One exception hierarchy for every refusal the bus makes.

Each class carries a stable machine-readable ``code`` (used in problem+json
bodies, non-delivery receipts, metrics labels and CLI output), the HTTP status
that fits it, and a message that tells the user what to do next.
"""

from __future__ import annotations

import re

# Line breaks of every kind (CR, LF, VT, FF, NEL, U+2028/9) and the other C0/C1 controls: an error message is
# printed on one terminal line, written to one log line and sent in one problem+json detail, and part of it
# often comes from outside (a library's message, a file name), where a control character could also move the
# cursor or recolour a terminal, and a bidi control could reorder what the reader sees.
_BREAKS = re.compile(r"\s*[\r\n\v\f\x85\u2028\u2029]+\s*")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def one_line(text: str) -> str:
    """``text`` as one line: line breaks become a space, other controls and bidi marks ``\\xNN``/``\\uNNNN``."""
    text = _BREAKS.sub(" ", str(text)).replace("\t", " ")
    return _CONTROLS.sub(_escape, text).strip()


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class ExchangeError(Exception):
    """Root of every error the bus raises on purpose.

    The message is always one line (:func:`one_line`), whoever built it: CLI
    output, log events and problem+json details rely on that.
    """

    code: str = "exchange-error"
    http_status: int = 500
    #: Whether retrying the same operation later may succeed.
    transient: bool = False

    def __init__(self, message: str, *, detail: dict[str, object] | None = None) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message
        self.detail = detail or {}

    @property
    def message(self) -> str:
        """The one-line message (what the CLI prints after ``exchange: error [<code>]:``)."""
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        # Whoever renders it (CLI, problem+json, a receipt's reason) gets one line, even if code
        # elsewhere replaces the message after construction.
        self._message = one_line(value)

    def to_problem(self) -> dict[str, object]:
        """The RFC 9457 problem+json body for this error."""
        body: dict[str, object] = {
            "type": f"urn:exchange:error:{self.code}",
            "title": self.code.replace("-", " "),
            "status": self.http_status,
            "detail": self.message,  # one line, however it was set (the property normalises it)
            "code": self.code,
        }
        if self.detail:
            body["extra"] = self.detail
        return body


# --- configuration -----------------------------------------------------------


class ConfigError(ExchangeError):
    """The node's configuration is missing, unreadable or inconsistent."""

    code = "config-invalid"


class PortInUseError(ConfigError):
    """The gateway's HTTP port is taken by another process."""

    code = "port-in-use"


# --- XML and envelope --------------------------------------------------------


class EnvelopeError(ExchangeError):
    """An envelope could not be accepted."""

    code = "envelope-invalid"
    http_status = 400


class XmlSecurityError(EnvelopeError):
    """The XML carries a construct we never accept (DTD, entity, external reference)."""

    code = "xml-forbidden-construct"


class XmlTooLargeError(EnvelopeError):
    """The XML exceeds a size, depth or element-count limit."""

    code = "xml-too-large"
    http_status = 413


class XmlMalformedError(EnvelopeError):
    """The bytes are not well-formed XML."""

    code = "xml-malformed"


class SchemaError(EnvelopeError):
    """The envelope is well-formed but does not match the envelope XSD."""

    code = "schema-invalid"
    http_status = 422


class InvalidAgencyCodeError(EnvelopeError):
    """An agency code does not have the QCVN 102 shape NNN.NN.NN.XNN."""

    code = "agency-code-invalid"
    http_status = 422


class AttachmentError(EnvelopeError):
    """An attachment is missing, oversized, or its bytes do not match the manifest."""

    code = "attachment-invalid"
    http_status = 422


class AttachmentDigestError(AttachmentError):
    """An attachment's SHA-256 differs from the signed manifest: the bytes were altered."""

    code = "attachment-digest-mismatch"


class PayloadTooLargeError(EnvelopeError):
    """A request or attachment is bigger than the configured limit."""

    code = "payload-too-large"
    http_status = 413


class EdxmlError(EnvelopeError):
    """An edXML (QCVN 102:2016) package could not be read or written."""

    code = "edxml-invalid"
    http_status = 422


# --- signatures and trust ----------------------------------------------------


class SignatureError(ExchangeError):
    """A signature is missing, malformed, or does not verify."""

    code = "signature-invalid"
    http_status = 422


class SignatureMissingError(SignatureError):
    """The envelope carries no signature; unsigned envelopes are never delivered."""

    code = "signature-missing"


class SignatureWrappingError(SignatureError):
    """The signature does not cover exactly the envelope's header and manifest."""

    code = "signature-wrapping"


class WeakAlgorithmError(SignatureError):
    """The signature uses an algorithm we refuse (SHA-1, or anything not allow-listed)."""

    code = "signature-weak-algorithm"


class CertificateError(SignatureError):
    """The signer's certificate cannot be trusted."""

    code = "certificate-invalid"


class UntrustedCertificateError(CertificateError):
    """The signer's certificate does not chain to the trust store."""

    code = "certificate-untrusted"


class CertificateExpiredError(CertificateError):
    """The signer's certificate is outside its validity period."""

    code = "certificate-expired"


class CertificateRevokedError(CertificateError):
    """The signer's certificate is listed on a CRL."""

    code = "certificate-revoked"


class CertificateUsageError(CertificateError):
    """The signer's certificate is not allowed to sign (key usage)."""

    code = "certificate-usage"


class CertificateMalformedError(CertificateError):
    """A certificate in the signature cannot be read at all (bad DER, invalid version, duplicated extension...)."""

    code = "certificate-malformed"


class AgencyMismatchError(CertificateError):
    """The signer's certificate names another agency than the envelope's From."""

    code = "certificate-agency-mismatch"


class KeyMaterialError(ExchangeError):
    """A key or certificate file is missing or unreadable."""

    code = "key-unavailable"


# --- routing, delivery, store ------------------------------------------------


class UnknownAgencyError(ExchangeError):
    """An agency code is not in the directory."""

    code = "agency-unknown"
    http_status = 422


class NotHostedError(ExchangeError):
    """The agency exists but is not hosted by this node."""

    code = "agency-not-hosted"
    http_status = 422


class BrokerUnavailableError(ExchangeError):
    """RabbitMQ cannot be reached; accepted documents wait in the outbox."""

    code = "broker-unavailable"
    http_status = 503
    transient = True


class StoreError(ExchangeError):
    """The store failed."""

    code = "store-error"
    http_status = 503
    transient = True


class NotFoundError(ExchangeError):
    """The requested message, delivery or inbox entry does not exist (for this agency)."""

    code = "not-found"
    http_status = 404


class ConflictError(ExchangeError):
    """The request conflicts with the current state (e.g. revoking a revoked document)."""

    code = "conflict"
    http_status = 409


class JournalTamperedError(ExchangeError):
    """The hash-chained journal does not verify: an entry was altered, removed or inserted."""

    code = "journal-tampered"


# --- gateway -----------------------------------------------------------------


class AuthError(ExchangeError):
    """The caller did not prove who it is."""

    code = "unauthenticated"
    http_status = 401


class ForbiddenError(ExchangeError):
    """The caller is authenticated but acts for another agency than its own."""

    code = "forbidden"
    http_status = 403


class BadRequestError(ExchangeError):
    """The request is malformed."""

    code = "bad-request"
    http_status = 400


# --- adapters ----------------------------------------------------------------


class AdapterError(ExchangeError):
    """An adapter failed to start or is misconfigured."""

    code = "adapter-error"


class UnsafePathError(ExchangeError):
    """A file name from a message or a drop would leave the folder it must be written in (or read from)."""

    code = "path-unsafe"
    http_status = 422
