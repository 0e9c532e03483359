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
class IdempotencyEntry:
    """What an idempotency key of a sender was first used for."""

    message_id: str
    #: The fingerprint of the first request (None for keys used before fingerprints were stored).
    fingerprint: str | None = None


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
class VxpSystem:
    """An E-Office system speaking the national hub's client protocol (exchange.gateway.vxp).

    ``sealed`` is its shared secret encrypted at rest (never the plaintext); ``key_id`` names
    the sealing key, so a secret sealed under another key is reported instead of misread.
    """

    system_id: str
    agency: str
    sealed: str
    key_id: str
    created_at: datetime
    rotated_at: datetime | None = None


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
        idempotency_fingerprint: str | None = None,
    ) -> tuple[str, bool]:
        """Persist a signed outgoing envelope and its outbox items in one transaction.

        With ``track`` a delivery row per recipient starts in SUBMITTED (documents
        and statuses; receipts are not tracked). ``attachments`` maps sha256 to
        bytes (content-addressed). If ``idempotency_key`` was already used by the
        same sender, nothing is written and the earlier message id is returned
        with ``created=False``. ``idempotency_fingerprint`` (with a key) is kept with
        the key, in the same transaction, for :meth:`idempotency_entry`.
        """

    @abstractmethod
    async def idempotency_entry(self, sender: str, key: str) -> IdempotencyEntry | None:
        """The message id and request fingerprint ``sender``'s idempotency ``key`` was first used with."""

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

    @abstractmethod
    async def reopen_incoming(self, message_id: str, recipient: str, *, reason: str) -> bool:
        """Move a FAILED incoming pair back to RECEIVED: an operator replays its dead letter.

        Returns False, writing nothing, unless the pair is FAILED (a replay of a delivered
        message must never hand it over twice; of two replays at once, one wins).
        """

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
        reopen: bool = False,
        replay: bool = False,
    ) -> bool:
        """Append to the timeline; update the delivery's state/status if given.

        Returns False if the delivery (message_id, recipient) is unknown, or, with
        ``only_if_open``, already DELIVERED or FAILED (then nothing is written: a receipt
        sent again is not a second event). A state never moves backwards (a late QUEUED
        after DELIVERED is timeline-only), with two exceptions:

        * ``reopen`` (with ``state`` FAILED) lets FAILED replace DELIVERED: the recipient's
          E-Office refused, after hand-over, what its channel took in (the hub protocol's ``fail``);
        * ``replay`` writes only if the delivery is FAILED and moves it to ``state`` (a dead
          letter the recipient's operator replayed runs again), clearing its failure reason.
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
    async def list_sent(
        self, sender: str, *, limit: int = 100, before: datetime | None = None
    ) -> list[MessageRecord]: ...

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

    # -- national hub protocol (exchange.gateway.vxp) ---------------------------
    @abstractmethod
    async def put_vxp_system(self, system: VxpSystem, *, rotate: bool = False) -> None:
        """Create a system (ConflictError if it exists) or, with ``rotate``, replace its secret (NotFoundError
        if it does not exist, ConflictError if it is another agency's). The journal records ids, never secrets."""

    @abstractmethod
    async def get_vxp_system(self, system_id: str) -> VxpSystem | None: ...

    @abstractmethod
    async def list_vxp_systems(self) -> list[VxpSystem]: ...

    @abstractmethod
    async def remember_vxp_signature(
        self, system_id: str, signature: str, *, expires_at: datetime, now: datetime
    ) -> bool:
        """Record a request signature until ``expires_at``; False if it is already recorded (a replay).

        Entries past their expiry are purged on the way, so the table holds at most one signature
        per request of the last timestamp window.
        """

    # -- operator figures ------------------------------------------------------
    @abstractmethod
    async def delivery_counts(self) -> dict[str, int]:
        """Number of deliveries per DeliveryState value (for metrics)."""

    @abstractmethod
    async def waiting_deliveries(self) -> dict[str, tuple[int, float]]:
        """Per recipient agency with deliveries not yet closed by a receipt (submitted or queued):
        (how many, seconds the oldest has waited since its last state change). For metrics."""
