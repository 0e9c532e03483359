"""Validation of envelopes against ``exchange/schemas/envelope-1.0.xsd`` (shipped in the package).

The XSD is checked once with xmlschema (meta-validation against the XSD 1.0
schema for schemas, local files only), then compiled to an
``lxml.etree.XMLSchema`` for the hot path: about 0.04 ms per envelope against
about 5 ms for xmlschema (PITFALLS.md). XSD 1.0 cannot tie ``Kind`` to the body
element, so :func:`validate` checks that co-constraint itself.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import re
import threading
import warnings
from importlib import resources
from pathlib import Path

from lxml import etree

from exchange.envelope.model import ENVELOPE_NS
from exchange.errors import ConfigError, SchemaError

# Files handed out by _packaged_schema stay valid until the interpreter exits.
_resources = contextlib.ExitStack()
atexit.register(_resources.close)


def _packaged_schema(name: str) -> Path:
    """A real file path for an XSD shipped in the package's ``schemas/`` folder.

    lxml and xmlschema read files by path; importlib.resources gives one for an ordinary install
    and extracts a temporary copy when the package is imported from a zip archive.
    """
    return _resources.enter_context(resources.as_file(resources.files("exchange") / "schemas" / name))


#: The XSD of schema version 1.0 of the envelope.
ENVELOPE_XSD: Path = _packaged_schema("envelope-1.0.xsd")

_ENVELOPE_TAG = f"{{{ENVELOPE_NS}}}Envelope"
_BODY_FOR_KIND = {"document": "Document", "status": "Status", "receipt": "Receipt"}
_NS_RE = re.compile(re.escape(f"{{{ENVELOPE_NS}}}"))
#: How many schema errors one SchemaError message lists (the rest are counted).
_MAX_REPORTED = 5


_compile_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _schema_document() -> etree._ElementTree:
    """Meta-validate the XSD once with xmlschema, then keep its parsed tree for compiling.

    xmlschema is used only here (and never on the hot path): its strict build
    catches schema mistakes that libxml2 tolerates, with readable messages.
    """
    import xmlschema  # a slow import, needed once
    from xmlschema.exceptions import XMLSchemaWarning

    try:
        with warnings.catch_warnings():
            # xmlschema only warns when an import or include fails (e.g. blocked remote
            # access); for our own schema any such warning is a defect, so it fails the load.
            warnings.simplefilter("error", XMLSchemaWarning)
            # allow="sandbox": only files beside the XSD may be read, never the network.
            xmlschema.XMLSchema10(str(ENVELOPE_XSD), validation="strict", allow="sandbox", defuse="always")
    except (OSError, xmlschema.XMLSchemaException, XMLSchemaWarning) as exc:
        raise ConfigError(
            f"the envelope schema {ENVELOPE_XSD} is missing or invalid: {exc}; "
            "reinstall the package (pip install --force-reinstall exchange-bus)"
        ) from exc
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    return etree.parse(str(ENVELOPE_XSD), parser)


# A compiled XMLSchema keeps a per-instance error log, so concurrent validations in
# several threads (e.g. a verifying thread pool) each get their own instance.
_local = threading.local()


def envelope_schema() -> etree.XMLSchema:
    """The compiled envelope XSD (built once per thread, cached)."""
    schema: etree.XMLSchema | None = getattr(_local, "schema", None)
    if schema is None:
        # Compiling from the one shared parsed tree is not thread-safe in lxml: a node's first burst
        # of verifications (worker threads) raced here and failed every message with
        # XMLSchemaParseError. Compile one thread at a time; validating stays per-thread and lock-free.
        with _compile_lock:
            schema = etree.XMLSchema(_schema_document())
        _local.schema = schema
    return schema


def validate(element: etree._Element) -> None:
    """Check an ``env:Envelope`` root against the XSD and the Kind/body rule; raise SchemaError."""
    if element.tag != _ENVELOPE_TAG:
        raise SchemaError(
            f"the root element is {_short(str(element.tag))}, not env:Envelope in namespace "
            f"{ENVELOPE_NS}; send an envelope of schema version 1.0 (docs/ENVELOPE.md)"
        )
    schema = envelope_schema()
    if not schema.validate(element):
        raise SchemaError(_describe(schema.error_log), detail={"errors": _errors(schema.error_log)})
    _check_kind_matches_body(element)


def _check_kind_matches_body(root: etree._Element) -> None:
    # After XSD validation the shape is known: Envelope/Signed/Header, whose last
    # element child is the body chosen by the xs:choice. find() rather than
    # indexing, since a tree built elsewhere may hold comments between elements.
    header = root.find(f"{{{ENVELOPE_NS}}}Signed/{{{ENVELOPE_NS}}}Header")
    assert header is not None  # guaranteed by the XSD
    kind = header.findtext(f"{{{ENVELOPE_NS}}}Kind")
    body = next(child for child in reversed(header) if isinstance(child.tag, str))
    expected = _BODY_FOR_KIND.get(kind or "")
    if etree.QName(body).localname != expected:
        raise SchemaError(
            f"Kind is {kind!r} but the header carries env:{etree.QName(body).localname}; "
            f"a {kind} envelope carries exactly one env:{expected} block",
            detail={"errors": [{"path": _path(body), "message": "Kind does not match the body element"}]},
        )


def _short(text: str) -> str:
    return _NS_RE.sub("env:", text)


def _path(element: etree._Element) -> str:
    return _short(element.getroottree().getpath(element))


def _errors(log: etree._ListErrorLog) -> list[dict[str, object]]:
    return [{"line": e.line, "path": _short(e.path or ""), "message": _short(e.message)} for e in log]


def _describe(log: etree._ListErrorLog) -> str:
    entries = list(log)
    parts = [f"{_short(e.path or '?')} (line {e.line}): {_short(e.message)}" for e in entries[:_MAX_REPORTED]]
    more = f" (and {len(entries) - _MAX_REPORTED} more)" if len(entries) > _MAX_REPORTED else ""
    return (
        "the envelope does not match the envelope schema 1.0 (exchange/schemas/envelope-1.0.xsd): "
        + "; ".join(parts or ["unknown error"])
        + more
        + "; fix these fields (see docs/ENVELOPE.md) and send again"
    )
