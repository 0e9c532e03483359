"""The OpenAPI document the gateway serves is valid OpenAPI 3.0 and carries the metadata schema."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate

from exchange.gateway.app import _yaml_text, load_openapi, load_openapi_text
from exchange.metadata.schema import metadata_schema, openapi_components


def test_the_served_openapi_document_is_valid() -> None:
    served = load_openapi()
    validate(served)
    validate(yaml.safe_load(_yaml_text(served)))  # the YAML form as served, parsed back


def test_the_served_document_carries_the_metadata_schema_as_components() -> None:
    schemas = load_openapi()["components"]["schemas"]
    components = openapi_components()
    assert set(metadata_schema()["$defs"]) <= set(schemas)
    for name, schema in components.items():
        assert schemas[name] == schema
    # Every reference resolves inside the document, none into the JSON Schema file's $defs.
    text = _yaml_text(load_openapi())
    assert "#/$defs/" not in text


def test_every_field_description_in_the_hand_written_part_is_one_value() -> None:
    """YAML flow mappings split an unquoted description at its commas into extra keys."""
    spec = yaml.safe_load(load_openapi_text())

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("integer", "string", "boolean", "number"):
                assert all(v is not None for v in node.values()), node  # "1 directive" as a key has no value
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
