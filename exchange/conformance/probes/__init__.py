"""E-Office probes of the built-in adapters (one :class:`~exchange.conformance.probe.EOfficeProbe` each).

``PROBES`` maps an adapter kind to its probe class, for the conformance kit.
"""

from __future__ import annotations

from exchange.conformance.probe import EOfficeProbe
from exchange.conformance.probes.edxml import EdxmlProbe
from exchange.conformance.probes.filedrop import FileDropProbe
from exchange.conformance.probes.pull import PullProbe
from exchange.conformance.probes.webhook import WebhookProbe

PROBES: dict[str, type[EOfficeProbe]] = {p.kind: p for p in (PullProbe, WebhookProbe, FileDropProbe, EdxmlProbe)}

__all__ = ["PROBES", "EdxmlProbe", "FileDropProbe", "PullProbe", "WebhookProbe"]
