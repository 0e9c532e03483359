"""JSON request bodies to domain values: the gateway's side of the one metadata codec.

The decoding itself is ``exchange.metadata`` (shared with the file drop and
``exchange sign``); this module names what the HTTP endpoints read, each within
the bounded JSON limits of :mod:`exchange.metadata.jsontext`.
"""

from __future__ import annotations

from typing import Any

from exchange.metadata import (
    DocumentSubmission,
    StatusSubmission,
    check_text,
    decode_status,
    decode_submission,
)
from exchange.metadata import load_json as _load_json

__all__ = ["DocumentSubmission", "StatusSubmission", "check_text", "load_json", "parse_document", "parse_status"]


def load_json(raw: bytes, what: str) -> Any:
    """Parse a JSON body or part within the codec's limits; 400 ``bad-request`` / ``json-limit-exceeded``."""
    return _load_json(raw, what)


def parse_document(value: Any) -> DocumentSubmission:
    """The ``metadata`` JSON of a document submission (schema ``DocumentSubmission``) as domain values."""
    return decode_submission(value, path="metadata", caller="http")


def parse_status(value: Any) -> StatusSubmission:
    """The JSON body of a business status (schema ``StatusSubmission``: code 01-16, description, staff)."""
    return decode_status(value, path="status", caller="http")
