"""The adapter conformance kit: prove an adapter keeps the contract, on a real bus.

An adapter package provides an :class:`EOfficeProbe` (its E-Office, simulated)
and runs the kit in one line of a test module::

    from exchange.conformance import conformance_tests
    from my_adapter.probe import MyProbe

    TestMyAdapterConformance = conformance_tests(MyProbe)

or from code with ``await run_conformance(MyProbe, amqp_url=..., workdir=...)``.
See docs/ADAPTERS.md. Importing this package is cheap: the kit (aio-pika, the
node) and pytest are loaded only when used. The kit's modules: ``catalogue`` (the
checks and the report), ``world`` (the bus it builds) and ``checks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exchange.conformance.probe import EOfficeProbe, FailureKind, ProbeContext, SeenMessage

if TYPE_CHECKING:
    from exchange.conformance.catalogue import CHECKS, ConformanceReport, Verdict
    from exchange.conformance.checks import run_conformance
    from exchange.conformance.plugin import ConformanceTests, conformance_tests

__all__ = [
    "CHECKS",
    "ConformanceReport",
    "ConformanceTests",
    "EOfficeProbe",
    "FailureKind",
    "ProbeContext",
    "SeenMessage",
    "Verdict",
    "conformance_tests",
    "run_conformance",
]

_LAZY = {
    "CHECKS": "catalogue",
    "ConformanceReport": "catalogue",
    "Verdict": "catalogue",
    "run_conformance": "checks",
    "ConformanceTests": "plugin",
    "conformance_tests": "plugin",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
