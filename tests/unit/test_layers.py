"""The layers of docs/ARCHITECTURE.md run one way: this test keeps the table true.

Every ``import`` in ``exchange/`` is read from the source (module level, inside
functions and under ``TYPE_CHECKING`` alike: a type-only import is still a
dependency of the reader), and each package may import only what sits below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "exchange"

#: package -> what it must never import (prefix match on the dotted name).
EDGES = ("exchange.gateway", "exchange.cli", "exchange.conformance", "exchange.devworld")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "exchange.envelope": (
        "exchange.signing",
        "exchange.store",
        "exchange.routing",
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.adapters",
        *EDGES,
        "aio_pika",
        "aiormq",
        "aiohttp",
    ),
    "exchange.signing": (
        "exchange.store",
        "exchange.routing",
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.adapters",
        *EDGES,
        "aio_pika",
        "aiormq",
        "aiohttp",
    ),
    "exchange.store": (
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.adapters",
        *EDGES,
        "aio_pika",
        "aiormq",
        "aiohttp",
    ),
    "exchange.routing": (
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.adapters",
        *EDGES,
        "aio_pika",
        "aiormq",
    ),
    "exchange.observability": (
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.adapters",
        *EDGES,
        "aio_pika",
        "aiormq",
    ),
    "exchange.adapters": (
        "exchange.service",
        "exchange.transport",
        "exchange.node",
        "exchange.gateway",
        "exchange.cli",
        "exchange.devworld",
        "aio_pika",
        "aiormq",
    ),
    # the use cases know no AMQP and no HTTP: they are what the transport and the edges call
    "exchange.service": ("exchange.transport", "exchange.node", *EDGES, "aio_pika", "aiormq", "aiohttp"),
    "exchange.transport": ("exchange.node", "exchange.adapters", *EDGES),
    "exchange.gateway": (
        "exchange.transport",
        "exchange.node",
        "exchange.cli",
        "exchange.conformance",
        "aio_pika",
        "aiormq",
    ),
    "exchange.tokens": ("exchange.gateway", "exchange.service", "exchange.transport", "exchange.node"),
    "exchange.node": ("exchange.cli", "exchange.conformance"),
}
#: The one module allowed to break a rule, and why.
EXEMPT = {
    # a deprecated re-export of the kit at its 0.1 location (exchange/adapters/conformance.py)
    ("exchange.adapters.conformance", "exchange.conformance"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str | None = None) -> set[str]:
    """Every dotted name ``path`` imports; ``package`` resolves relative imports (default: the file's own)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _violations() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        rules = [rule for prefix, rule in FORBIDDEN.items() if module == prefix or module.startswith(prefix + ".")]
        for imported in sorted(_imports(path)):
            for forbidden in (f for rule in rules for f in rule):
                if (imported == forbidden or imported.startswith(forbidden + ".")) and (
                    module,
                    forbidden,
                ) not in EXEMPT:
                    found.append(f"{module} imports {imported}")
    return found


def test_every_layer_imports_only_what_sits_below_it() -> None:
    assert _violations() == []


def test_only_the_edges_assemble_a_node() -> None:
    users = sorted(
        _module_name(p)
        for p in ROOT.rglob("*.py")
        if any(n == "exchange.node" or n.startswith("exchange.node.") for n in _imports(p))
    )
    assert all(u.startswith(("exchange.cli", "exchange.conformance")) for u in users), users


@pytest.mark.parametrize(
    "source, imported",
    [
        ("import aio_pika\n", "aio_pika"),
        ("def f():\n    from exchange.transport.relay import publish_confirmed\n", "exchange.transport.relay"),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from exchange.node import Node\n", "exchange.node"),
        ("from ..transport import consumer\n", "exchange.transport.consumer"),
    ],
)
def test_the_reader_sees_imports_wherever_they_are(tmp_path: Path, source: str, imported: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(source, encoding="utf-8")
    assert imported in _imports(probe, package="exchange.service_pkg")
