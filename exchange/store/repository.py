"""The one Store implementation: SQLAlchemy Core on SQLite (embedded) or PostgreSQL (clusters).

Same statements on both backends (each operation is one synchronous Core body
run in one transaction); how a body reaches the database is the engine's
(:mod:`exchange.store.engines`). On PostgreSQL: ``FOR UPDATE SKIP LOCKED`` for
competing outbox relays, ``pg_advisory_xact_lock`` around schema migration and
around each journal append (several processes share one chain), retry on
deadlock/serialization failure.

Every write method appends its journal entries as the LAST step of its
transaction: on PostgreSQL the advisory lock is then held only for "read head,
insert entries, commit", and a lock holder never waits for any other lock.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import String, Text, and_, delete, func, literal, or_, select, tuple_, update
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from exchange.errors import ConflictError, NotFoundError, StoreError
from exchange.store import migrations
from exchange.store.base import (
    Delivery,
    DeliveryState,
    Direction,
    IdempotencyEntry,
    InboxEntry,
    InboxState,
    JournalReport,
    MessageRecord,
    OutboxItem,
    Store,
    TimelineEntry,
    VxpSystem,
)
from exchange.store.engines import TX_CACHE, _Engine, _PostgresEngine, _SqliteEngine
from exchange.store.journal import GENESIS, ChainVerifier, JournalEvent, chain
from exchange.store.statements import (
    _ADVISORY_LOCK,
    _CLOSED,
    _COMPLETE_INBOX,
    _DELIVERIES_OF,
    _DELIVERY_STATE,
    _DELIVERY_STATE_FOR_UPDATE,
    _ENTER_FROM,
    _INBOX_ENTER_FROM,
    _INBOX_STATE,
    _INSERT_ATTACHMENT,
    _INSERT_DELIVERY,
    _INSERT_FRAME,
    _INSERT_IDEMPOTENCY,
    _INSERT_INBOX,
    _INSERT_JOURNAL,
    _INSERT_MESSAGE,
    _INSERT_OUTBOX,
    _INSERT_TIMELINE,
    _INSERT_VXP_REPLAY,
    _JOURNAL_HEAD,
    _LATEST_STATUS_AT,
    _MESSAGE_BY_ID,
    _MESSAGE_BY_ID_DIR,
    _PRESENT_ATTACHMENTS,
    _REOPEN_INBOX,
    _SET_INBOX_SEQ,
    _VISIBLE,
    JOURNAL_LOCK_KEY,
)
from exchange.store.tables import (
    UtcDateTime,
    api_tokens,
    attachments,
    deliveries,
    idempotency,
    idempotency_requests,
    inbox,
    journal,
    messages,
    outbox,
    outbox_frames,
    timeline,
    vxp_replay,
    vxp_systems,
)
from exchange.store.urls import _safe, normalize_url

T = TypeVar("T")

#: SQLSTATEs after which the whole transaction is simply run again.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_MAX_ATTEMPTS = 5


def _now() -> datetime:
    return datetime.now(UTC)


class _Rollback(Exception):
    """Raised inside a write to roll it back and still return ``value`` to the caller."""

    def __init__(self, value: object) -> None:
        super().__init__("rollback")
        self.value = value


@dataclass(slots=True)
class _Pending:
    """What one write transaction will journal at its end."""

    events: list[JournalEvent] = field(default_factory=list)
    #: (index into events, agency, message_id): inbox entries whose paging cursor is that entry's seq.
    cursors: list[tuple[int, str, str]] = field(default_factory=list)


def _inbox_entry(r: Any) -> InboxEntry:
    return InboxEntry(
        agency=r.agency,
        message_id=r.message_id,
        kind=r.kind,
        sender=r.sender,
        state=InboxState(r.state),
        received_at=r.received_at,
        subject=r.subject,
        priority=r.priority,
        acked_at=r.acked_at,
        seq=r.seq,
    )


class SqlStore(Store):
    """:class:`~exchange.store.base.Store` on SQLite or PostgreSQL, with the same statements on both.

    Each operation is one synchronous SQLAlchemy Core body run in one transaction by the
    backend's :class:`_Engine`; write bodies collect journal events that are chained and
    inserted as the transaction's last step.
    """

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout: float = 30.0) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        self._pool_size = pool_size
        self._busy_timeout = busy_timeout
        self._synchronous = "FULL"
        if not self.is_postgres:
            sync = parsed.query.get("synchronous")
            if sync:
                value = str(sync).upper()
                if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
                    raise StoreError(f"store URL: synchronous={sync!r}; use normal, full or extra")
                self._synchronous = value
                parsed = parsed.difference_update_query(["synchronous"])
        self._url = parsed
        self._engine: _Engine | None = None

    def __repr__(self) -> str:
        return f"SqlStore({_safe(self.url)!r})"

    # -- transactions -------------------------------------------------------------------------

    def _require(self) -> _Engine:
        if self._engine is None:
            raise StoreError("the store is not open; call open() first")
        return self._engine

    async def _write(self, fn: Callable[[Connection, _Pending], T]) -> T:
        """Run ``fn`` in one write transaction, append its journal entries, commit.

        ``fn`` may raise :class:`_Rollback` to write nothing and return a value. The whole
        transaction is retried on a PostgreSQL deadlock / serialization failure or a dropped
        connection; any other database failure becomes :class:`StoreError`.
        """
        engine = self._require()

        def body(conn: Connection) -> T:
            pending = _Pending()
            result = fn(conn, pending)
            if pending.events:
                self._append_journal(conn, pending)
            return result

        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                return await engine.write(body)
            except _Rollback as rb:
                return rb.value  # type: ignore[return-value]
            except DBAPIError as exc:
                if attempt < _MAX_ATTEMPTS and self._retryable(exc):
                    await asyncio.sleep(0.01 * 2**attempt)
                    continue
                raise self._store_error(exc) from exc
            except SQLAlchemyError as exc:
                raise self._store_error(exc) from exc
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        """Run queries (SQLite: on a reader connection beside the writer)."""
        try:
            return await self._require().read(fn)
        except SQLAlchemyError as exc:
            raise self._store_error(exc) from exc

    @staticmethod
    def _retryable(exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in _RETRY_SQLSTATES

    def _store_error(self, exc: Exception) -> StoreError:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        return StoreError(
            f"the store at {_safe(self.url)} failed ({type(exc).__name__}: {detail}); "
            "check that the database is reachable and writable, then retry",
        )

    def _append_journal(self, conn: Connection, pending: _Pending) -> None:
        """Chain the pending events after the head. Must be the transaction's last step."""
        if self.is_postgres:
            # Serialize appenders across processes; released at commit. On SQLite, BEGIN
            # IMMEDIATE already holds the database's write lock.
            conn.execute(_ADVISORY_LOCK, {"k": JOURNAL_LOCK_KEY})
        # Within one SQLite transaction (a group-commit batch) only this connection writes, so
        # the head it appended last is still the head: the engine keeps it in TX_CACHE, which it
        # empties at every BEGIN and every savepoint rollback.
        cache = conn.info.get(TX_CACHE)
        head = cache.get("journal_head") if cache is not None else None
        if head is None:
            row = conn.execute(_JOURNAL_HEAD).first()
            head = (row.seq, row.hash) if row else (0, GENESIS)
        entries = chain(pending.events, head_seq=head[0], head_hash=head[1], at=_now())
        rows = [{"seq": e.seq, "at": e.at, "event": e.event, "prev_hash": e.prev_hash, "hash": e.hash} for e in entries]
        conn.execute(_INSERT_JOURNAL, rows[0] if len(rows) == 1 else rows)
        if cache is not None:
            cache["journal_head"] = (entries[-1].seq, entries[-1].hash)
        # Allocated under the journal lock, so cursors grow in commit order: a client paging with
        # after_seq cannot skip an entry that committed late.
        for index, agency, message_id in pending.cursors:
            conn.execute(_SET_INBOX_SEQ, {"a": agency, "m": message_id, "seq": entries[index].seq})

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self, *, migrate_schema: bool = True) -> None:
        """Connect and bring the schema to this version's (safe when several processes open at once).

        An empty database gets the whole schema; one written by an earlier version is upgraded
        in place (:mod:`exchange.store.migrations`). ``migrate_schema=False`` only connects
        (``exchange store version`` looks before it upgrades).
        """
        if self._engine is not None:
            return
        try:
            if self.is_postgres:
                self._engine = _PostgresEngine(self._url, self._pool_size)
            else:
                self._engine = _SqliteEngine(self._url, synchronous=self._synchronous, busy_timeout=self._busy_timeout)
        except OSError as exc:
            raise StoreError(f"cannot open the store at {_safe(self.url)}: {exc}") from exc

        def migrate(conn: Connection) -> None:
            # One write transaction: on PostgreSQL under the schema lock, on SQLite under BEGIN IMMEDIATE.
            migrations.upgrade(conn, postgres=self.is_postgres)

        if not migrate_schema:
            return
        try:
            await self._engine.write(migrate)
        except StoreError:
            await self.close()
            raise
        except SQLAlchemyError as exc:
            await self.close()
            raise self._store_error(exc) from exc

    async def schema_state(self) -> migrations.SchemaState:
        """Where the database's schema stands against this version (reads only; the store must be open)."""
        return await self._read(lambda conn: migrations.state(conn))

    async def upgrade_schema(self) -> migrations.UpgradeResult:
        """Bring the schema to this version's head (what :meth:`open` does unless told not to)."""
        engine = self._require()
        try:
            return await engine.write(lambda conn: migrations.upgrade(conn, postgres=self.is_postgres))
        except SQLAlchemyError as exc:
            raise self._store_error(exc) from exc

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute(select(literal(1))).scalar_one())

    # -- sending -----------------------------------------------------------------------------

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
        def tx(conn: Connection, pending: _Pending) -> tuple[str, bool]:
            if idempotency_key is not None:
                taken = conn.execute(
                    _INSERT_IDEMPOTENCY,
                    {
                        "sender": message.sender,
                        "key": idempotency_key,
                        "message_id": message.message_id,
                        "created_at": _now(),
                    },
                ).first()
                if taken is None:  # used before (PostgreSQL: waits for a racing first use to commit)
                    earlier = conn.execute(
                        select(idempotency.c.message_id).where(
                            idempotency.c.sender == message.sender, idempotency.c.key == idempotency_key
                        )
                    ).scalar_one()
                    raise _Rollback((earlier, False))
                if idempotency_fingerprint is not None:
                    conn.execute(
                        idempotency_requests.insert(),
                        {"sender": message.sender, "key": idempotency_key, "fingerprint": idempotency_fingerprint},
                    )
            if not self._store_outgoing(conn, pending, message, outbox, attachments, track):
                raise _Rollback((message.message_id, False))
            return message.message_id, True

        return await self._write(tx)

    def _store_outgoing(
        self,
        conn: Connection,
        pending: _Pending,
        message: MessageRecord,
        items: Sequence[OutboxItem],
        attachment_data: Mapping[str, bytes] | None,
        track: bool,
    ) -> bool:
        """Message, attachments, deliveries, outbox rows; False if the message was already stored."""
        if message.direction is not Direction.OUT:
            raise ValueError("accept_outgoing takes messages with direction OUT")
        now = _now()
        if not self._insert_message(conn, message, now):
            return False
        shas = self._store_attachments(conn, attachment_data, now)
        recipients = list(dict.fromkeys(message.recipients))
        if track and recipients:
            conn.execute(
                _INSERT_DELIVERY,
                [
                    {
                        "message_id": message.message_id,
                        "recipient": r,
                        "state": DeliveryState.SUBMITTED.value,
                        "status_code": None,
                        "reason": "",
                        "updated_at": now,
                    }
                    for r in recipients
                ],
            )
            conn.execute(
                _INSERT_TIMELINE,
                [
                    {
                        "message_id": message.message_id,
                        "recipient": r,
                        "event": DeliveryState.SUBMITTED.value,
                        "at": now,
                        "status_code": None,
                        "detail": "",
                    }
                    for r in recipients
                ],
            )
        if items:
            if any(i.message_id != message.message_id or i.body != items[0].body for i in items):
                raise ValueError("outbox items of one message carry that message's id and the same frame")
            conn.execute(_INSERT_FRAME, {"message_id": message.message_id, "body": items[0].body})
            conn.execute(
                _INSERT_OUTBOX,
                [
                    {
                        "message_id": i.message_id,
                        "recipient": i.recipient,
                        "routing_key": i.routing_key,
                        "headers": json.dumps(dict(i.headers), separators=(",", ":")),
                        "priority": i.priority,
                        "created_at": now,
                        "lease_until": None,
                        "attempts": 0,
                    }
                    for i in items
                ],
            )
        pending.events.append(
            JournalEvent(
                "accept_outgoing",
                message.message_id,
                None,
                {
                    "kind": message.kind,
                    "operation": message.operation,
                    "sender": message.sender,
                    "recipients": list(message.recipients),
                    "digest": message.digest,
                    "relates_to": message.relates_to,
                    "attachments": shas,
                    "tracked": track,
                    "outbox": [i.recipient for i in items],
                },
            )
        )
        return True

    @staticmethod
    def _insert_message(conn: Connection, m: MessageRecord, now: datetime) -> bool:
        return (
            conn.execute(
                _INSERT_MESSAGE,
                {
                    "message_id": m.message_id,
                    "direction": m.direction.value,
                    "kind": m.kind,
                    "operation": m.operation,
                    "sender": m.sender,
                    "recipients": json.dumps(list(m.recipients), separators=(",", ":")),
                    "created_at": m.created_at,
                    "stored_at": now,
                    "envelope_xml": m.envelope_xml,
                    "digest": m.digest,
                    "priority": m.priority,
                    "subject": m.subject,
                    "relates_to": m.relates_to,
                    "correlation_id": m.correlation_id,
                    "document_id": m.document_id,
                },
            ).first()
            is not None
        )

    @staticmethod
    def _store_attachments(conn: Connection, data: Mapping[str, bytes] | None, now: datetime) -> list[str]:
        """Content-addressed: bytes already stored under the same SHA-256 are not sent again."""
        if not data:
            return []
        shas = sorted(data)
        present = set(conn.execute(_PRESENT_ATTACHMENTS, {"shas": shas}).scalars())
        missing = [s for s in shas if s not in present]
        if missing:
            conn.execute(
                _INSERT_ATTACHMENT,
                [{"sha256": s, "size": len(data[s]), "data": data[s], "stored_at": now} for s in missing],
            )
        return shas

    async def claim_outbox(self, limit: int, *, lease_seconds: float = 30.0) -> list[OutboxItem]:
        """Unleased items, most urgent priority first, then oldest; leased for ``lease_seconds``."""
        if limit <= 0:
            return []

        def tx(conn: Connection, _pending: _Pending) -> list[OutboxItem]:
            now = time.time()
            candidates = (
                select(outbox.c.id)
                .where(or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now))
                .order_by(outbox.c.priority.desc(), outbox.c.id)
                .limit(limit)
            )
            if self.is_postgres:
                # Competing relays (other processes) skip each other's rows instead of waiting.
                candidates = candidates.with_for_update(skip_locked=True)
            chosen = candidates.cte("chosen")
            rows = conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(select(chosen.c.id)))
                .values(lease_until=now + lease_seconds)
                .returning(*outbox.c)
            ).all()
            rows = sorted(rows, key=lambda r: (-r.priority, r.id))
            frames = {
                f.message_id: bytes(f.body)
                for f in conn.execute(
                    select(outbox_frames).where(outbox_frames.c.message_id.in_({r.message_id for r in rows}))
                )
            }
            return [
                OutboxItem(
                    message_id=r.message_id,
                    recipient=r.recipient,
                    routing_key=r.routing_key,
                    body=frames[r.message_id],
                    headers=json.loads(r.headers),
                    priority=r.priority,
                    id=r.id,
                    created_at=r.created_at,
                    attempts=r.attempts,
                )
                for r in rows
            ]

        return await self._write(tx)

    async def mark_published(self, ids: Sequence[int]) -> None:
        """Drop confirmed items; tracked SUBMITTED deliveries move to QUEUED (ids already gone are ignored)."""
        if not ids:
            return

        def tx(conn: Connection, pending: _Pending) -> None:
            gone = conn.execute(
                delete(outbox)
                .where(outbox.c.id.in_(list(ids)))
                .returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient)
            ).all()
            if not gone:
                return
            gone = sorted(gone, key=lambda r: r.id)
            conn.execute(
                delete(outbox_frames).where(
                    outbox_frames.c.message_id.in_({r.message_id for r in gone}),
                    ~select(outbox.c.id).where(outbox.c.message_id == outbox_frames.c.message_id).exists(),
                )
            )
            pairs = list(dict.fromkeys((r.message_id, r.recipient) for r in gone))
            now = _now()
            key = tuple_(deliveries.c.message_id, deliveries.c.recipient)
            moved = {
                (r.message_id, r.recipient)
                for r in conn.execute(
                    update(deliveries)
                    .where(key.in_(pairs), deliveries.c.state == DeliveryState.SUBMITTED.value)
                    .values(state=DeliveryState.QUEUED.value, updated_at=now)
                    .returning(deliveries.c.message_id, deliveries.c.recipient)
                )
            }
            # Timeline rows for tracked deliveries only, whatever their state (a receipt may have won the race).
            conn.execute(
                timeline.insert().from_select(
                    ["message_id", "recipient", "event", "at", "status_code", "detail"],
                    select(
                        deliveries.c.message_id,
                        deliveries.c.recipient,
                        literal(DeliveryState.QUEUED.value, String()),
                        literal(now, UtcDateTime()),
                        literal(None, String()),
                        literal("", Text()),
                    ).where(key.in_(pairs)),
                )
            )
            pending.events.extend(
                JournalEvent(
                    "published",
                    r.message_id,
                    r.recipient,
                    {"state": DeliveryState.QUEUED.value} if (r.message_id, r.recipient) in moved else {},
                )
                for r in gone
            )

        await self._write(tx)

    async def release_outbox(self, ids: Sequence[int]) -> None:
        if not ids:
            return

        def tx(conn: Connection, pending: _Pending) -> None:
            rows = conn.execute(
                update(outbox)
                .where(outbox.c.id.in_(list(ids)))
                .values(lease_until=None, attempts=outbox.c.attempts + 1)
                .returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient, outbox.c.attempts)
            ).all()
            pending.events.extend(
                JournalEvent("released", r.message_id, r.recipient, {"attempts": r.attempts})
                for r in sorted(rows, key=lambda r: r.id)
            )

        await self._write(tx)

    async def outbox_stats(self) -> tuple[int, float | None]:
        row = await self._read(lambda conn: conn.execute(select(func.count(), func.min(outbox.c.created_at))).one())
        count, oldest = row[0], row[1]
        if oldest is None:
            return int(count), None
        if isinstance(oldest, str):  # SQLite may hand back the aggregate as raw text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
        return int(count), max(0.0, (_now() - oldest).total_seconds())

    # -- receiving ---------------------------------------------------------------------------

    async def accept_incoming(
        self, message: MessageRecord, recipient: str, *, attachments: Mapping[str, bytes] | None = None
    ) -> bool:
        if message.direction is not Direction.IN:
            raise ValueError("accept_incoming takes messages with direction IN")

        def tx(conn: Connection, pending: _Pending) -> bool:
            now = _now()
            taken = conn.execute(
                _INSERT_INBOX,
                {
                    "agency": recipient,
                    "message_id": message.message_id,
                    "seq": None,
                    "state": InboxState.RECEIVED.value,
                    "kind": message.kind,
                    "sender": message.sender,
                    "subject": message.subject,
                    "priority": message.priority,
                    "received_at": now,
                    "handed_at": None,
                    "acked_at": None,
                    "reason": "",
                },
            ).first()
            if taken is None:
                raise _Rollback(False)  # the dedupe key: seen before, write nothing
            self._insert_message(conn, message, now)  # one row shared by all hosted recipients
            shas = self._store_attachments(conn, attachments, now)
            pending.events.append(
                JournalEvent(
                    "accept_incoming",
                    message.message_id,
                    recipient,
                    {
                        "kind": message.kind,
                        "operation": message.operation,
                        "sender": message.sender,
                        "digest": message.digest,
                        "relates_to": message.relates_to,
                        "attachments": shas,
                    },
                )
            )
            return True

        return await self._write(tx)

    async def incoming_state(self, message_id: str, recipient: str) -> InboxState | None:
        state = await self._read(
            lambda conn: conn.execute(_INBOX_STATE, {"a": recipient, "m": message_id}).scalar_one_or_none()
        )
        return InboxState(state) if state is not None else None

    async def complete_incoming(
        self,
        message_id: str,
        recipient: str,
        state: InboxState,
        *,
        receipt: tuple[MessageRecord, OutboxItem] | None = None,
        reason: str = "",
    ) -> None:
        """Move RECEIVED to HANDED_OVER, FAILED or ACKED (HANDED_OVER to ACKED) and enqueue the receipt.

        A repeated completion leaves the state as it is but still enqueues the receipt.
        Raises NotFoundError if the pair was never accepted.
        """
        if state not in _INBOX_ENTER_FROM:
            raise ValueError(f"complete_incoming cannot move an incoming message to {state.value}")

        def tx(conn: Connection, pending: _Pending) -> None:
            key = {"a": recipient, "m": message_id}
            row = conn.execute(_COMPLETE_INBOX[state], {**key, "reason": reason, "now": _now()}).first()
            if row is None:
                if conn.execute(_INBOX_STATE, key).first() is None:
                    raise NotFoundError(f"no incoming message {message_id} for {recipient} was recorded")
            else:
                data: dict[str, Any] = {"state": state.value}
                if reason:
                    data["reason"] = reason[:500]
                if receipt is not None:
                    data["receipt"] = receipt[0].message_id
                if state is InboxState.HANDED_OVER:
                    pending.cursors.append((len(pending.events), recipient, message_id))
                pending.events.append(JournalEvent("complete_incoming", message_id, recipient, data))
            if receipt is not None:
                self._store_outgoing(conn, pending, receipt[0], [receipt[1]], None, track=False)

        await self._write(tx)

    async def reopen_incoming(self, message_id: str, recipient: str, *, reason: str) -> bool:
        def tx(conn: Connection, pending: _Pending) -> bool:
            row = conn.execute(_REOPEN_INBOX, {"a": recipient, "m": message_id, "reason": reason[:500]}).first()
            if row is None:
                raise _Rollback(False)
            pending.events.append(
                JournalEvent(
                    "reopen_incoming",
                    message_id,
                    recipient,
                    {"state": InboxState.RECEIVED.value, "reason": reason[:500]},
                )
            )
            return True

        return await self._write(tx)

    # -- sender-side tracking -------------------------------------------------------------------

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
        """Timeline always; state only forward (SUBMITTED < QUEUED < DELIVERED, FAILED and DELIVERED terminal).

        ``reopen`` (with ``state`` FAILED) also moves a DELIVERED delivery to FAILED: the recipient's
        E-Office refused, after hand-over, what its channel took in. ``replay``: only a FAILED
        delivery, moved to ``state`` (a replayed dead letter).
        """

        def tx(conn: Connection, pending: _Pending) -> bool:
            where = (deliveries.c.message_id == message_id, deliveries.c.recipient == recipient)
            key = {"m": message_id, "r": recipient}
            # SQLite: BEGIN IMMEDIATE already excludes other writers.
            query = _DELIVERY_STATE_FOR_UPDATE if self.is_postgres else _DELIVERY_STATE
            current = conn.execute(query, key).scalar_one_or_none()
            reopening = reopen and state is DeliveryState.FAILED
            closed = _CLOSED - {DeliveryState.DELIVERED.value} if reopening else _CLOSED
            if (
                current is None
                or (only_if_open and current in closed)
                or (replay and current != DeliveryState.FAILED.value)
            ):
                raise _Rollback(False)
            values: dict[str, Any] = {}
            if state is None:
                allowed: frozenset[DeliveryState] = frozenset()
            elif reopening:  # state is FAILED
                allowed = _ENTER_FROM[state] | {DeliveryState.DELIVERED}
            else:
                allowed = _ENTER_FROM[state]
            moved = state is not None and (replay or DeliveryState(current) in allowed)
            if moved:
                assert state is not None
                values.update(state=state.value, updated_at=at)
                if state is DeliveryState.FAILED:
                    values["reason"] = detail
                elif replay:
                    values["reason"] = ""
            if status_code is not None:
                # Statuses may arrive out of order (each travels on its own): the current one is
                # the latest by the time the recipient set it, not the last to arrive.
                latest = conn.execute(_LATEST_STATUS_AT, key).scalar_one_or_none()
                if latest is None or at >= latest:
                    values.update(status_code=status_code, updated_at=at)
            if values:
                conn.execute(update(deliveries).where(*where).values(**values))
            conn.execute(
                _INSERT_TIMELINE,
                {
                    "message_id": message_id,
                    "recipient": recipient,
                    "event": event,
                    "at": at,
                    "status_code": status_code,
                    "detail": detail,
                },
            )
            data: dict[str, Any] = {"event": event, "event_at": at.astimezone(UTC).isoformat()}
            if moved:
                assert state is not None
                data["state"] = state.value
            if status_code is not None:
                data["status_code"] = status_code
            pending.events.append(JournalEvent("record_event", message_id, recipient, data))
            return True

        return await self._write(tx)

    async def deliveries(self, message_id: str) -> list[Delivery]:
        rows = await self._read(lambda conn: conn.execute(_DELIVERIES_OF, {"m": message_id}).all())
        return [
            Delivery(
                message_id=r.message_id,
                recipient=r.recipient,
                state=DeliveryState(r.state),
                updated_at=r.updated_at,
                status_code=r.status_code,
                reason=r.reason,
            )
            for r in rows
        ]

    async def timeline(self, message_id: str) -> list[TimelineEntry]:
        """Oldest first (by event time, then by recording order)."""
        rows = await self._read(
            lambda conn: conn.execute(
                select(timeline).where(timeline.c.message_id == message_id).order_by(timeline.c.at, timeline.c.id)
            ).all()
        )
        return [
            TimelineEntry(
                message_id=r.message_id,
                recipient=r.recipient,
                event=r.event,
                at=r.at,
                status_code=r.status_code,
                detail=r.detail,
            )
            for r in rows
        ]

    async def get_message(self, message_id: str, direction: Direction | None = None) -> MessageRecord | None:
        """With ``direction`` None, the outgoing copy wins when a node both sent and received it."""
        if direction is None:
            query, params = _MESSAGE_BY_ID, {"m": message_id}
        else:
            query, params = _MESSAGE_BY_ID_DIR, {"m": message_id, "d": direction.value}
        rows = await self._read(lambda conn: conn.execute(query, params).all())
        if not rows:
            return None
        return _message(min(rows, key=lambda r: r.direction != Direction.OUT.value))  # stable: first wins ties

    async def find_document(self, document_id: str, direction: Direction, agency: str) -> MessageRecord | None:
        if not document_id:
            return None
        rows = await self._read(
            lambda conn: conn.execute(
                select(messages)
                .where(
                    messages.c.document_id == document_id,
                    messages.c.direction == direction.value,
                    messages.c.kind == "document",
                )
                .order_by(messages.c.created_at.desc())
            ).all()
        )
        for r in rows:
            record = _message(r)
            if (record.sender == agency) if direction is Direction.OUT else (agency in record.recipients):
                return record
        return None

    async def list_sent(self, sender: str, *, limit: int = 100, before: datetime | None = None) -> list[MessageRecord]:
        """Newest first."""
        query = select(messages).where(messages.c.sender == sender, messages.c.direction == Direction.OUT.value)
        if before is not None:
            query = query.where(messages.c.created_at < before)
        query = query.order_by(messages.c.created_at.desc(), messages.c.message_id.desc()).limit(limit)
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [_message(r) for r in rows]

    async def get_attachment(self, sha256: str) -> bytes | None:
        data = await self._read(
            lambda conn: conn.execute(
                select(attachments.c.data).where(attachments.c.sha256 == sha256)
            ).scalar_one_or_none()
        )
        return bytes(data) if data is not None else None

    # -- inbox (pull) ---------------------------------------------------------------------------

    async def list_inbox(
        self, agency: str, *, include_acked: bool = False, limit: int = 100, after_seq: int = 0
    ) -> list[InboxEntry]:
        """Ordered by ``seq``, which is assigned at hand-over: entries not yet handed over are not listed."""
        states = _VISIBLE if include_acked else (InboxState.HANDED_OVER.value,)
        query = (
            select(inbox)
            .where(inbox.c.agency == agency, inbox.c.seq > after_seq, inbox.c.state.in_(states))
            .order_by(inbox.c.seq)
            .limit(limit)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [_inbox_entry(r) for r in rows]

    async def inbox_entry(self, agency: str, message_id: str) -> InboxEntry | None:
        query = select(inbox).where(
            inbox.c.agency == agency, inbox.c.message_id == message_id, inbox.c.state.in_(_VISIBLE)
        )
        row = await self._read(lambda conn: conn.execute(query).first())
        return _inbox_entry(row) if row is not None else None

    async def ack_inbox(self, agency: str, message_id: str) -> bool:
        """True also when it was already acknowledged (idempotent)."""

        def tx(conn: Connection, pending: _Pending) -> bool:
            where = (inbox.c.agency == agency, inbox.c.message_id == message_id)
            row = conn.execute(
                update(inbox)
                .where(*where, inbox.c.state == InboxState.HANDED_OVER.value)
                .values(state=InboxState.ACKED.value, acked_at=_now())
                .returning(inbox.c.message_id)
            ).first()
            if row is None:
                state = conn.execute(select(inbox.c.state).where(*where, inbox.c.seq.is_not(None))).scalar_one_or_none()
                raise _Rollback(state == InboxState.ACKED.value)
            pending.events.append(JournalEvent("ack_inbox", message_id, agency, {"state": InboxState.ACKED.value}))
            return True

        return await self._write(tx)

    # -- journal ------------------------------------------------------------------------------

    async def verify_journal(self, *, page: int = 5000) -> JournalReport:
        """Recompute the chain end to end, ``page`` entries per query (memory stays flat)."""

        def verify(conn: Connection) -> JournalReport:
            verifier = ChainVerifier()
            last = 0
            while True:
                rows = conn.execute(
                    select(journal).where(journal.c.seq > last).order_by(journal.c.seq).limit(page)
                ).all()
                for r in rows:
                    verifier.feed(r.seq, r.at, r.event, r.prev_hash, r.hash)
                if len(rows) < page:
                    return verifier.report()
                last = rows[-1].seq

        async def first_seq() -> int | None:
            return await self._read(lambda conn: conn.execute(select(func.min(journal.c.seq))).scalar())

        low = await first_seq()
        if low is not None and low < 1:
            # An entry numbered below 1 was inserted: the walk from seq > 0 would never see it.
            return JournalReport(
                entries=0,
                ok=False,
                first_bad_seq=low,
                problem=f"entry {low} is out of sequence (expected 1): inserted into the journal",
            )
        return await self._read(verify)

    # -- credentials ----------------------------------------------------------------------------

    async def put_token(self, agency: str, token_hash: str, label: str = "") -> None:
        """Store (or re-assign) a token by its hash; the journal records the agency and label only."""

        def tx(conn: Connection, pending: _Pending) -> None:
            updated = conn.execute(
                update(api_tokens)
                .where(api_tokens.c.token_hash == token_hash)
                .values(agency=agency, label=label)
                .returning(api_tokens.c.token_hash)
            ).first()
            if updated is None:
                conn.execute(
                    api_tokens.insert().values(token_hash=token_hash, agency=agency, label=label, created_at=_now())
                )
            pending.events.append(JournalEvent("put_token", None, agency, {"label": label}))

        await self._write(tx)

    async def idempotency_entry(self, sender: str, key: str) -> IdempotencyEntry | None:
        return await self._read(
            lambda conn: _idempotency_entry(
                conn.execute(
                    select(idempotency.c.message_id, idempotency_requests.c.fingerprint)
                    .select_from(
                        idempotency.outerjoin(
                            idempotency_requests,
                            and_(
                                idempotency_requests.c.sender == idempotency.c.sender,
                                idempotency_requests.c.key == idempotency.c.key,
                            ),
                        )
                    )
                    .where(idempotency.c.sender == sender, idempotency.c.key == key)
                ).first()
            )
        )

    async def agency_for_token(self, token_hash: str) -> str | None:
        return await self._read(
            lambda conn: conn.execute(
                select(api_tokens.c.agency).where(api_tokens.c.token_hash == token_hash)
            ).scalar_one_or_none()
        )

    # -- national hub protocol (exchange.gateway.vxp) ----------------------------------------------

    async def put_vxp_system(self, system: VxpSystem, *, rotate: bool = False) -> None:
        """Create, or with ``rotate`` re-seal, a system's secret; the journal records ids and key id only."""

        def tx(conn: Connection, pending: _Pending) -> None:
            current = conn.execute(
                select(vxp_systems.c.agency).where(vxp_systems.c.system_id == system.system_id)
            ).scalar_one_or_none()
            if rotate:
                if current is None:
                    raise NotFoundError(
                        f"no hub system {system.system_id} exists; create it with "
                        "`exchange vxp secret create --system ID --agency CODE`"
                    )
                if current != system.agency:
                    raise ConflictError(
                        f"hub system {system.system_id} belongs to agency {current}, not "
                        f"{system.agency}; rotate it with --agency {current}"
                    )
                conn.execute(
                    update(vxp_systems)
                    .where(vxp_systems.c.system_id == system.system_id)
                    .values(sealed=system.sealed, key_id=system.key_id, rotated_at=_now())
                )
            else:
                if current is not None:
                    raise ConflictError(
                        f"hub system {system.system_id} already exists (agency {current}); "
                        "give it a new secret with `exchange vxp secret rotate`"
                    )
                conn.execute(
                    vxp_systems.insert().values(
                        system_id=system.system_id,
                        agency=system.agency,
                        sealed=system.sealed,
                        key_id=system.key_id,
                        created_at=system.created_at,
                        rotated_at=None,
                    )
                )
            pending.events.append(
                JournalEvent(
                    "vxp_rotate" if rotate else "vxp_create",
                    None,
                    system.agency,
                    {"system_id": system.system_id, "key_id": system.key_id},
                )
            )

        await self._write(tx)

    async def get_vxp_system(self, system_id: str) -> VxpSystem | None:
        row = await self._read(
            lambda conn: conn.execute(select(vxp_systems).where(vxp_systems.c.system_id == system_id)).first()
        )
        return _vxp_system(row) if row is not None else None

    async def list_vxp_systems(self) -> list[VxpSystem]:
        rows = await self._read(
            lambda conn: conn.execute(select(vxp_systems).order_by(vxp_systems.c.agency, vxp_systems.c.system_id)).all()
        )
        return [_vxp_system(r) for r in rows]

    async def remember_vxp_signature(
        self, system_id: str, signature: str, *, expires_at: datetime, now: datetime
    ) -> bool:
        """One transaction: purge expired signatures, then insert this one unless present (not journaled)."""

        def tx(conn: Connection, _pending: _Pending) -> bool:
            conn.execute(delete(vxp_replay).where(vxp_replay.c.expires_at < now))
            row = conn.execute(
                _INSERT_VXP_REPLAY, {"system_id": system_id, "signature": signature, "expires_at": expires_at}
            ).first()
            return row is not None

        return await self._write(tx)

    # -- operator figures -----------------------------------------------------------------------

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._read(
            lambda conn: conn.execute(select(deliveries.c.state, func.count()).group_by(deliveries.c.state)).all()
        )
        counts = {s.value: 0 for s in DeliveryState}
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def waiting_deliveries(self) -> dict[str, tuple[int, float]]:
        open_states = (DeliveryState.SUBMITTED.value, DeliveryState.QUEUED.value)
        rows = await self._read(
            lambda conn: conn.execute(
                select(deliveries.c.recipient, func.count(), func.min(deliveries.c.updated_at))
                .where(deliveries.c.state.in_(open_states))
                .group_by(deliveries.c.recipient)
            ).all()
        )
        now, out = _now(), {}
        for recipient, count, oldest in rows:
            if isinstance(oldest, str):  # SQLite may hand back the aggregate as raw text
                oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
            out[recipient] = (int(count), max(0.0, (now - oldest).total_seconds()))
        return out


def _idempotency_entry(r: Any) -> IdempotencyEntry | None:
    return None if r is None else IdempotencyEntry(r.message_id, r.fingerprint)


def _vxp_system(r: Any) -> VxpSystem:
    return VxpSystem(
        system_id=r.system_id,
        agency=r.agency,
        sealed=r.sealed,
        key_id=r.key_id,
        created_at=r.created_at,
        rotated_at=r.rotated_at,
    )


def _message(r: Any) -> MessageRecord:
    return MessageRecord(
        message_id=r.message_id,
        kind=r.kind,
        operation=r.operation,
        sender=r.sender,
        recipients=tuple(json.loads(r.recipients)),
        direction=Direction(r.direction),
        created_at=r.created_at,
        envelope_xml=bytes(r.envelope_xml),
        digest=r.digest,
        priority=r.priority,
        subject=r.subject,
        relates_to=r.relates_to,
        correlation_id=r.correlation_id,
        document_id=r.document_id,
    )
