"""E-Office probes of the built-in adapters (one :class:`~exchange.adapters.conformance.probe.EOfficeProbe` each).

``PROBES`` maps an adapter kind to its probe class, for the conformance kit.
"""

from __future__ import annotations

from exchange.adapters.conformance.probe import EOfficeProbe
from exchange.adapters.conformance.probes.edxml import EdxmlProbe
from exchange.adapters.conformance.probes.filedrop import FileDropProbe
from exchange.adapters.conformance.probes.pull import PullProbe
from exchange.adapters.conformance.probes.webhook import WebhookProbe

PROBES: dict[str, type[EOfficeProbe]] = {p.kind: p for p in (PullProbe, WebhookProbe, FileDropProbe, EdxmlProbe)}

__all__ = ["PROBES", "EdxmlProbe", "FileDropProbe", "PullProbe", "WebhookProbe"]
