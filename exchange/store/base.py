"""The store contract: tracking and evidence for one node (or a cluster sharing PostgreSQL).

One interface, two backends from the same code (SQLite embedded, PostgreSQL for
clusters). Every method that changes state also appends to the hash-chained
journal in the same transaction, so the journal is complete by construction.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime


class Direction(str, enum.Enum):
    OUT = "out"  # sent by an agency hosted here
    IN = "in"  # received for an agency hosted here


class DeliveryState(str, enum.Enum):
    """Transport state of one (message, recipient) pair on the sender's side."""

    SUBMITTED = "submitted"  # in the outbox, not yet confirmed by the broker
    QUEUED = "queued"  # broker confirmed the publish
    DELIVERED = "delivered"  # recipient's signed receipt says delivered
    FAILED = "failed"  # non-delivery receipt, or dead-lettered


class InboxState(str, enum.Enum):
    """State of one incoming (message, recipient) pair on the recipient's side."""

    RECEIVED = "received"  # verified and recorded (dedupe key taken), not yet handed over
    HANDED_OVER = "handed_over"  # the agency's adapter took it
    ACKED = "acked"  # the E-Office acknowledged it (pull)
    FAILED = "failed"  # refused permanently; a non-delivery receipt was sent


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One envelope as stored: the signed XML is the evidence, the rest is for queries."""

    message_id: str
    kind: str  # exchange.envelope.model.Kind value
    operation: str
    sender: str  # agency code
    recipients: tuple[str, ...]
    direction: Direction
    created_at: datetime
    envelope_xml: bytes
    digest: str  # sha256 hex of envelope_xml
    priority: int = 0
    subject: str = ""
    relates_to: str | None = None  # document a status/receipt/revoke/update/replace refers to
    correlation_id: str = ""
    #: The edXML DocumentId of a document (given by its E-Office, else derived): how E-Offices name it.
    document_id: str = ""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A publish waiting for the broker's confirm. ``id`` is assigned by the store."""

    message_id: str
    recipient: str
    routing_key: str
    body: bytes  # the transport frame (signed XML + attachments)
    headers: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    id: int | None = None
    created_at: datetime | None = None
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class Delivery:
    """The current state of one (message, recipient) pair on the sender's side."""

    message_id: str
    recipient: str
    state: DeliveryState
    updated_at: datetime
    status_code: str | None = None  # last business status (01-16), if any
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One move of a delivery: transport state or business status, with its time."""

    message_id: str
    recipient: str
    event: str  # e.g. "submitted", "queued", "delivered", "failed", "status:03", "revoke-sent"
    at: datetime
    status_code: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One incoming envelope for a hosted agency."""

    agency: str
    message_id: str
    kind: str
    sender: str
    state: InboxState
    received_at: datetime
    subject: str = ""
    priority: int = 0
    acked_at: datetime | None = None
    seq: int = 0  # monotonic cursor for paging


@dataclass(frozen=True, slots=True)
class JournalReport:
    """Result of checking the hash chain end to end."""

    entries: int
    ok: bool
    first_bad_seq: int | None = None
    problem: str = ""
    head: str = ""  # hash of the last entry


class Store(ABC):
    """Persistence for messages, deliveries, outbox, inbox/dedupe and the journal."""

    # -- lifecycle -----------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if missing (idempotent)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreError if the store is unusable (readiness probe)."""

    # -- sending -------------------------------------------------------------
    @abstractmethod
    async def accept_outgoing(
        self,
        message: MessageRecord,
        outbox: Sequence[OutboxItem],
        *,
        attachments: Mapping[str, bytes] | None = None,
        idempotency_key: str | None = None,
        track: bool = True,
    ) -> tuple[str, bool]:
        """Persist a signed outgoing envelope and its outbox items in one transaction.

        With ``track`` a delivery row per recipient starts in SUBMITTED (documents
        and statuses; receipts are not tracked). ``attachments`` maps sha256 to
        bytes (content-addressed). If ``idempotency_key`` was already used by the
        same sender, nothing is written and the earlier message id is returned
        with ``created=False``.
        """

    @abstractmethod
    async def claim_outbox(self, limit: int, *, lease_seconds: float = 30.0) -> list[OutboxItem]:
        """Oldest unpublished items not leased by another relay; leases them."""

    @abstractmethod
    async def mark_published(self, ids: Sequence[int]) -> None:
        """Confirmed by the broker: drop from the outbox, tracked deliveries move to QUEUED."""

    @abstractmethod
    async def release_outbox(self, ids: Sequence[int]) -> None:
        """Publishing failed: clear the lease so another attempt picks them up (attempts+1)."""

    @abstractmethod
    async def outbox_stats(self) -> tuple[int, float | None]:
        """(items waiting, age in seconds of the oldest or None)."""

    # -- receiving -----------------------------------------------------------
    @abstractmethod
    async def accept_incoming(
        self, message: MessageRecord, recipient: str, *, attachments: Mapping[str, bytes] | None = None
    ) -> bool:
        """Record an incoming envelope for ``recipient`` (state RECEIVED).

        Returns False, writing nothing, when (message_id, recipient) is already
        recorded: the dedupe key.
        """

    @abstractmethod
    async def incoming_state(self, message_id: str, recipient: str) -> InboxState | None: ...

    @abstractmethod
    async def complete_incoming(
        self,
        message_id: str,
        recipient: str,
        state: InboxState,
        *,
        receipt: tuple[MessageRecord, OutboxItem] | None = None,
        reason: str = "",
    ) -> None:
        """Move an incoming pair to HANDED_OVER or FAILED and enqueue its receipt atomically."""

    # -- sender-side tracking ------------------------------------------------
    @abstractmethod
    async def record_event(
        self,
        message_id: str,
        recipient: str,
        event: str,
        *,
        at: datetime,
        state: DeliveryState | None = None,
        status_code: str | None = None,
        detail: str = "",
        only_if_open: bool = False,
    ) -> bool:
        """Append to the timeline; update the delivery's state/status if given.

        Returns False if the delivery (message_id, recipient) is unknown, or, with
        ``only_if_open``, already DELIVERED or FAILED (then nothing is written: a receipt
        sent again is not a second event). A state never moves backwards (a late QUEUED
        after DELIVERED is timeline-only).
        """

    @abstractmethod
    async def deliveries(self, message_id: str) -> list[Delivery]: ...

    @abstractmethod
    async def timeline(self, message_id: str) -> list[TimelineEntry]: ...

    @abstractmethod
    async def get_message(self, message_id: str, direction: Direction | None = None) -> MessageRecord | None: ...

    @abstractmethod
    async def find_document(self, document_id: str, direction: Direction, agency: str) -> MessageRecord | None:
        """The newest document with this edXML DocumentId that ``agency`` sent (OUT) or received (IN)."""

    @abstractmethod
    async def list_sent(self, sender: str, *, limit: int = 100, before: datetime | None = None) -> list[MessageRecord]: ...

    @abstractmethod
    async def get_attachment(self, sha256: str) -> bytes | None: ...

    # -- inbox (pull) --------------------------------------------------------
    @abstractmethod
    async def list_inbox(
        self, agency: str, *, include_acked: bool = False, limit: int = 100, after_seq: int = 0
    ) -> list[InboxEntry]:
        """Handed-over (and optionally acked) incoming envelopes of ``agency``, oldest first."""

    async def inbox_entry(self, agency: str, message_id: str) -> InboxEntry | None:
        """One handed-over (or acked) entry of ``agency``'s inbox, or None.

        This default pages through the inbox; a backend answers it with one indexed query.
        """
        after = 0
        while entries := await self.list_inbox(agency, include_acked=True, limit=1000, after_seq=after):
            for entry in entries:
                if entry.message_id == message_id:
                    return entry
            after = entries[-1].seq
        return None

    @abstractmethod
    async def ack_inbox(self, agency: str, message_id: str) -> bool:
        """Mark as acknowledged by the E-Office; False if not in this agency's inbox."""

    # -- journal ---------------------------------------------------------------
    @abstractmethod
    async def verify_journal(self) -> JournalReport: ...

    # -- credentials -----------------------------------------------------------
    @abstractmethod
    async def put_token(self, agency: str, token_hash: str, label: str = "") -> None: ...

    @abstractmethod
    async def agency_for_token(self, token_hash: str) -> str | None: ...

    # -- operator figures ------------------------------------------------------
    @abstractmethod
    async def delivery_counts(self) -> dict[str, int]:
        """Number of deliveries per DeliveryState value (for metrics)."""

    @abstractmethod
    async def waiting_deliveries(self) -> dict[str, tuple[int, float]]:
        """Per recipient agency with deliveries not yet closed by a receipt (submitted or queued):
        (how many, seconds the oldest has waited since its last state change). For metrics."""
