"""The far side of an adapter, simulated: what the conformance kit drives and observes.

The kit cannot know how an E-Office talks to a given adapter (an HTTP server for
a webhook, folders for a file drop, polling for the pull adapter), so each
adapter package provides an :class:`EOfficeProbe` that plays its E-Office: it
tells the kit which options to start the adapter with, reports what the
E-Office has received, can make the E-Office fail, and can send a document the
way that E-Office would. The kit then runs the same checks against every
adapter on a real bus.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

FailureKind = Literal["transient", "permanent"]


@dataclass(frozen=True, slots=True)
class ProbeContext:
    """What a probe is given to set up its E-Office."""

    agency: str  # the agency code the adapter hosts
    workdir: Path  # an empty private folder for the probe's files
    #: The running node's ExchangeService, for probes whose E-Office reads the bus in-process.
    #: The node starts after :meth:`EOfficeProbe.start` (it needs the options start returns), so
    #: use it from ``seen`` / ``fail_next`` / ``send`` on; inside ``start`` it is only a placeholder.
    service: Any
    #: The node's HTTP gateway and an API token of ``agency``, when the node serves HTTP.
    gateway_url: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class SeenMessage:
    """One message as the simulated E-Office received it."""

    message_id: str  # the bus message id, as the adapter conveyed it to the E-Office
    kind: str  # "document" or "status" (or "receipt" for adapters that want receipts)
    sender: str
    subject: str = ""  # documents
    status_code: str | None = None  # statuses
    attachments: Mapping[str, bytes] = field(default_factory=dict)  # name -> bytes


class EOfficeProbe(ABC):
    """Simulates the E-Office behind one adapter kind for the conformance kit."""

    #: The adapter kind (entry-point name) this probe plays the E-Office for.
    kind: ClassVar[str] = ""
    #: Which failures :meth:`fail_next` can inject ("transient", "permanent").
    can_fail: ClassVar[frozenset[str]] = frozenset()
    #: Whether :meth:`send` submits through the adapter's own outgoing path.
    can_send: ClassVar[bool] = False

    @abstractmethod
    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        """Set up the E-Office side; return the adapter's ``options`` for the node's TOML.

        Values must be strings, numbers, booleans or lists of them: they are written into
        ``[agencies.options]`` and read back, exactly as an operator's configuration is.
        """

    async def stop(self) -> None:
        """Tear the E-Office side down; safe to call twice."""

    @abstractmethod
    async def seen(self) -> list[SeenMessage]:
        """Everything the E-Office has received so far, one entry per handover it accepted.

        A handover the E-Office answered with an injected failure (:meth:`fail_next`) is not
        an entry: the kit counts entries per message id to prove exactly-once delivery.
        """

    def fail_next(self, outcome: FailureKind, times: int = 1) -> None:
        """Make the E-Office answer the next ``times`` handovers with ``outcome``.

        The kit calls it only while nothing else is in flight to the adapter, right before
        sending one document; a retry of that document is the next handover.
        """
        raise NotImplementedError(f"the {self.kind} probe cannot inject {outcome} failures")

    async def send(self, recipients: Sequence[str], subject: str, files: Mapping[str, bytes]) -> None:
        """Submit a document as this E-Office would (through the adapter's outgoing path)."""
        raise NotImplementedError(f"the {self.kind} adapter has no outgoing path of its own")
