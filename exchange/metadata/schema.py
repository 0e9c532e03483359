"""The versioned JSON Schema of the metadata codec, and its form as OpenAPI 3.0 components."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

from exchange.metadata.codec import SCHEMA_VERSION

SCHEMA_FILE = f"document-metadata-{SCHEMA_VERSION}.json"


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("exchange.metadata").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def metadata_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) document, as shipped in the package (a fresh copy)."""
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


def _rewrite_refs(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (
                v.replace("#/$defs/", "#/components/schemas/")
                if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_refs(v) for v in value]
    return value


def openapi_components() -> dict[str, Any]:
    """The schema's definitions as OpenAPI ``components/schemas`` (references rewritten)."""
    components: dict[str, Any] = _rewrite_refs(copy.deepcopy(metadata_schema()["$defs"]))
    return components
