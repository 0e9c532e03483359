"""The adapter contract: how one agency's E-Office connects to the bus.

An adapter hosts one agency's connection. It is started and stopped by the
node, receives incoming envelopes through :meth:`Adapter.deliver`, and submits
outgoing documents and statuses through the :class:`BusHandle` it was given.

``deliver`` answers one of three things (as Holodeck B2B's delivery interface
does): delivered, transient failure (the bus retries with backoff) or
permanent failure (the bus dead-letters and sends the sender a signed
non-delivery receipt). The bus, not the adapter, owns retries, receipts and the
journal, so an adapter stays small.

Delivery is at-least-once *into the adapter* only across a crash in the few
milliseconds between ``deliver`` returning and the store recording it; every
incoming message therefore carries its message id, which push adapters pass on
as an idempotency key (the webhook's ``Idempotency-Key`` header, the file drop's
file name) so that the E-Office sees each document exactly once.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from exchange.envelope.model import DocumentInfo, Envelope, Operation, StaffInfo, StatusCode
from exchange.errors import AdapterError


class Outcome(str, enum.Enum):
    """What became of one handover to an adapter."""

    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The answer of :meth:`Adapter.deliver`."""

    outcome: Outcome
    reason_code: str = ""
    reason: str = ""

    @classmethod
    def delivered(cls) -> DeliveryResult:
        return cls(Outcome.DELIVERED)

    @classmethod
    def transient(cls, reason: str, code: str = "adapter-transient") -> DeliveryResult:
        return cls(Outcome.TRANSIENT, code, reason)

    @classmethod
    def permanent(cls, reason: str, code: str = "adapter-refused") -> DeliveryResult:
        return cls(Outcome.PERMANENT, code, reason)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A verified envelope for the adapter's agency: a document, a status, or a receipt."""

    agency: str  # the recipient hosted by this adapter
    envelope: Envelope
    xml: bytes  # the exact signed bytes, for an E-Office that keeps evidence
    attachments: Mapping[str, bytes] = field(default_factory=dict)  # by manifest id
    attempt: int = 1

    @property
    def message_id(self) -> str:
        return self.envelope.message_id


@dataclass(frozen=True, slots=True)
class OutgoingFile:
    """An attachment an E-Office submits."""

    name: str
    data: bytes
    media_type: str = "application/octet-stream"
    description: str = ""


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What the bus answers to a submission."""

    message_id: str
    created: bool  # False when an idempotency key matched an earlier submission
    recipients: tuple[str, ...]
    created_at: datetime | None = None
    #: Recipients of an edXML package the bus cannot route to: ``{"organ_id", "element", "code", "reason"}`` each.
    refused: tuple[Mapping[str, str], ...] = ()


class BusHandle(Protocol):
    """What an adapter may ask of the bus, always on behalf of its own agency."""

    @property
    def agency(self) -> str: ...

    async def submit_document(
        self,
        recipients: Sequence[str],
        document: DocumentInfo,
        files: Sequence[OutgoingFile] = (),
        *,
        operation: Operation = Operation.NEW,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Sign and send a document (or a revoke / update / replace of one)."""

    async def submit_status(
        self,
        document_message_id: str,
        code: StatusCode,
        *,
        description: str = "",
        staff: StaffInfo | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """Send a business status (01-16) about a document this agency received."""

    async def submit_edxml(self, package: bytes, *, idempotency_key: str | None = None) -> SubmitResult:
        """Import a QCVN 102 edXML package (document or status) and send it."""


class Adapter(ABC):
    """Base of every adapter. Subclasses set ``kind`` and implement ``deliver``.

    Adapters are found through the ``exchange.adapters`` entry-point group and
    configured per agency in the node's TOML (``adapter = "webhook"`` plus an
    ``[agencies.options]`` table passed as ``options``).
    """

    #: The name used in configuration and in the entry point.
    kind: ClassVar[str] = ""
    #: Whether envelopes of kind "receipt" are handed over too: the signed receipts that
    #: come back for what this agency sent (most E-Offices only want documents and
    #: statuses; tracking shows receipts anyway). A class attribute, or set per instance
    #: from the options in ``start()``. A receipt is never answered with a receipt.
    wants_receipts: bool = False

    def __init__(self, agency: str, options: Mapping[str, Any], bus: BusHandle) -> None:
        self.agency = agency
        self.options = dict(options)
        self.bus = bus

    def bool_option(self, key: str, default: bool = False) -> bool:
        """``options[key]`` as a TOML boolean; AdapterError naming the option for anything else."""
        value = self.options.get(key, default)
        if not isinstance(value, bool):
            raise AdapterError(f"{self.kind} adapter of {self.agency}: options.{key} must be true or false")
        return value

    async def start(self) -> None:
        """Open connections, start watchers. Raise AdapterError with a clear message if misconfigured."""

    async def stop(self) -> None:
        """Stop watchers and release resources; must be safe to call twice."""

    @abstractmethod
    async def deliver(self, message: Incoming) -> DeliveryResult:
        """Hand one incoming envelope to the E-Office. Never raise for an E-Office refusal:
        answer ``permanent``; an unexpected exception counts as transient."""
