"""The one metadata codec: bounded JSON decoding, document/status metadata <-> domain values, the JSON Schema."""

from exchange.metadata.codec import (
    SCHEMA_VERSION,
    DocumentSubmission,
    StatusSubmission,
    check_text,
    decode_document,
    decode_operation,
    decode_staff,
    decode_status,
    decode_status_code,
    decode_submission,
    encode_document,
    encode_staff,
    encode_status,
)
from exchange.metadata.errors import JsonLimitError, MetadataError
from exchange.metadata.jsontext import DEFAULT_LIMITS, JsonLimits, load_json

__all__ = [
    "DEFAULT_LIMITS",
    "SCHEMA_VERSION",
    "DocumentSubmission",
    "JsonLimitError",
    "JsonLimits",
    "MetadataError",
    "StatusSubmission",
    "check_text",
    "decode_document",
    "decode_operation",
    "decode_staff",
    "decode_status",
    "decode_status_code",
    "decode_submission",
    "encode_document",
    "encode_staff",
    "encode_status",
    "load_json",
]
