"""Refusals of the hub protocol: ExchangeErrors that also carry the hub's ``ErrorCode``.

Every answer of ``/vxp/`` is the hub's JSON ``{status, ErrorCode, ErrorDesc, data}``;
``ErrorCode`` ``"0"`` is success (the SDK tests exactly that). A refusal also carries
our stable ``code`` (the ExchangeError code) beside it and a fitting HTTP status.
docs/API.md lists the table.
"""

from __future__ import annotations

from exchange.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    EnvelopeError,
    ExchangeError,
    ForbiddenError,
    NotFoundError,
    PayloadTooLargeError,
    StoreError,
    UnknownAgencyError,
)

#: ErrorCode of a successful answer.
OK_CODE = "0"


class VxpError(ExchangeError):
    """A refusal specific to the hub protocol."""

    hub_code: str = "99"


class VxpAuthError(VxpError, AuthError):
    """The call's signed headers are missing or malformed."""

    code = "vxp-auth-missing"
    http_status = 401
    hub_code = "1"


class VxpSystemUnknownError(VxpAuthError):
    """No secret exists on this node for the call's ``systemid``."""

    code = "vxp-system-unknown"
    hub_code = "2"


class VxpSignatureError(VxpAuthError):
    """``XroadVnpt-hash-header`` is not the HMAC of the signed headers under the system's secret."""

    code = "vxp-signature-invalid"
    hub_code = "3"


class VxpTimestampError(VxpAuthError):
    """The signed ``timestamp`` is malformed or outside the accepted window."""

    code = "vxp-timestamp-stale"
    hub_code = "4"


class VxpReplayError(VxpAuthError):
    """This exact signed request was already accepted."""

    code = "vxp-replayed"
    hub_code = "5"


class VxpSecretUnreadableError(VxpAuthError):
    """The stored secret was sealed under another key (the agency's signing key changed)."""

    code = "vxp-secret-unreadable"
    hub_code = "2"


class VxpHeaderMismatchError(VxpError, BadRequestError):
    """A header sent in clear disagrees with its signed value."""

    code = "vxp-header-mismatch"
    http_status = 400
    hub_code = "6"


class VxpHashFileError(VxpError, BadRequestError):
    """``hash-file`` is not the SHA-256 of the uploaded package."""

    code = "vxp-hash-file-mismatch"
    http_status = 400
    hub_code = "7"


class VxpBadRequestError(VxpError, BadRequestError):
    """A call parameter is missing or has no allowed value."""

    code = "vxp-bad-request"
    http_status = 400
    hub_code = "8"


class VxpNotFoundError(VxpError, NotFoundError):
    """No such document for the caller's agency (also: another system's docId)."""

    code = "vxp-not-found"
    http_status = 404
    hub_code = "9"


class VxpStatusUnknownError(VxpError, BadRequestError):
    """``updateStatus`` was given a word the hub does not have."""

    code = "vxp-status-unknown"
    http_status = 400
    hub_code = "10"


def hub_code(exc: ExchangeError) -> str:
    """The hub ErrorCode for any refusal (the bus's own errors fall into a few coarse codes)."""
    if isinstance(exc, VxpError):
        return exc.hub_code
    if isinstance(exc, NotFoundError):
        return VxpNotFoundError.hub_code
    if isinstance(exc, PayloadTooLargeError):
        return "12"
    if isinstance(exc, (EnvelopeError, UnknownAgencyError)):
        return "11"  # the package itself was refused (edXML, XML, agency codes, attachments)
    if isinstance(exc, (ForbiddenError, AuthError)):
        return "13"
    if isinstance(exc, ConflictError):
        return "14"
    if isinstance(exc, BadRequestError):
        return VxpBadRequestError.hub_code
    if isinstance(exc, StoreError) or exc.transient:
        return "98"
    return "99"
