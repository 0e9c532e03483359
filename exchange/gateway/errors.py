"""Refusals only the HTTP edge makes, in the one hierarchy rooted in ExchangeError."""

from __future__ import annotations

from exchange.errors import BadRequestError, ExchangeError
from exchange.metadata.errors import JsonLimitError, MetadataError

__all__ = [
    "IdempotencyKeyReusedError",
    "InternalError",
    "JsonLimitError",
    "MalformedRequestError",
    "MetadataError",
    "MethodNotAllowedError",
    "NotReadyError",
    "RequestLineTooLongError",
    "UnsupportedMediaTypeError",
]


class UnsupportedMediaTypeError(BadRequestError):
    """The request body has a Content-Type this endpoint does not take."""

    code = "unsupported-media-type"
    http_status = 415


class MethodNotAllowedError(BadRequestError):
    """The path exists but not with this HTTP method."""

    code = "method-not-allowed"
    http_status = 405


class MalformedRequestError(BadRequestError):
    """aiohttp could not parse the request (request line, headers, framing)."""

    code = "http-malformed"
    http_status = 400


class RequestLineTooLongError(BadRequestError):
    """The request line or one header is over aiohttp's line limit (8190 bytes)."""

    code = "http-line-too-long"
    http_status = 400


class IdempotencyKeyReusedError(BadRequestError):
    """An Idempotency-Key the agency already used, sent with a different request."""

    code = "idempotency-key-reused"
    http_status = 422


class NotReadyError(ExchangeError):
    """The node cannot serve traffic yet (broker, store or keys unusable)."""

    code = "not-ready"
    http_status = 503
    transient = True


class InternalError(ExchangeError):
    """An unexpected failure; the details are in the node's log, never in the answer."""

    code = "internal-error"
    http_status = 500
