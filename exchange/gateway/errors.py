"""Refusals only the HTTP edge makes, in the one hierarchy rooted in ExchangeError."""

from __future__ import annotations

from exchange.errors import BadRequestError, ExchangeError
from exchange.metadata.errors import JsonLimitError, MetadataError

__all__ = ["InternalError", "JsonLimitError", "MetadataError", "MethodNotAllowedError", "NotReadyError",
           "UnsupportedMediaTypeError"]


class UnsupportedMediaTypeError(BadRequestError):
    """The request body has a Content-Type this endpoint does not take."""

    code = "unsupported-media-type"
    http_status = 415


class MethodNotAllowedError(BadRequestError):
    """The path exists but not with this HTTP method."""

    code = "method-not-allowed"
    http_status = 405


class NotReadyError(ExchangeError):
    """The node cannot serve traffic yet (broker, store or keys unusable)."""

    code = "not-ready"
    http_status = 503
    transient = True


class InternalError(ExchangeError):
    """An unexpected failure; the details are in the node's log, never in the answer."""

    code = "internal-error"
    http_status = 500
