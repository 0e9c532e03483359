"""Refusals of the metadata codec, in the one hierarchy rooted in ExchangeError."""

from __future__ import annotations

from exchange.errors import BadRequestError


class JsonLimitError(BadRequestError):
    """A JSON text is over a structural limit (size, nesting depth, length of a number, key count)."""

    code = "json-limit-exceeded"
    http_status = 400


class MetadataError(BadRequestError):
    """The document or status metadata is well-formed JSON but not a valid submission."""

    code = "metadata-invalid"
    http_status = 422
