"""The adapter conformance kit: the same checks, on a real bus, for every adapter.

Given an :class:`~exchange.conformance.probe.EOfficeProbe` (which plays
the E-Office behind one adapter kind), the kit generates a small world with the
development PKI, starts two real nodes on RabbitMQ under a private topology
prefix, and checks what a user of the adapter relies on::

    node "central"                                node "local"
    000.00.00.G22  (sender, recording adapter)    000.00.00.H41  adapter under test ◀▶ probe (E-Office)
                                                  000.00.00.H29  recording adapter (fan-out sibling)

The kit is in three modules: :mod:`~exchange.conformance.catalogue` (the checks, verdicts
and the report), :mod:`~exchange.conformance.world` (the world: nodes, probe, helpers that act
and observe) and :mod:`~exchange.conformance.checks` (each check a method of
:class:`ConformanceRun`, named for the behaviour it proves; its failure message says what the
adapter did wrong). This module gathers their public names. Run it with
:func:`run_conformance` (async) or through the pytest integration
(:func:`exchange.conformance.conformance_tests`).
"""

from __future__ import annotations

from exchange.conformance.catalogue import (
    CHECK_NAMES,
    CHECKS,
    HOST,
    MAX_ATTEMPTS,
    PEER,
    RETRY_DELAYS,
    SENDER,
    TRANSIENT_FAILURES,
    Check,
    CheckResult,
    ConformanceFailure,
    ConformanceReport,
    Verdict,
)
from exchange.conformance.checks import ConformanceRun, run_conformance, run_conformance_sync
from exchange.conformance.world import ConformanceWorld

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "HOST",
    "MAX_ATTEMPTS",
    "PEER",
    "RETRY_DELAYS",
    "SENDER",
    "TRANSIENT_FAILURES",
    "Check",
    "CheckResult",
    "ConformanceFailure",
    "ConformanceReport",
    "ConformanceRun",
    "ConformanceWorld",
    "Verdict",
    "run_conformance",
    "run_conformance_sync",
]
