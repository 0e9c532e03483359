"""The Store contract, written once and run against both backends (SQLite file, real PostgreSQL).

PostgreSQL tests use a database created for this session (unique name, dropped at the end) and
empty every table before each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.errors import NotFoundError
from exchange.store import (
    DeliveryState,
    Direction,
    InboxState,
    MessageRecord,
    OutboxItem,
    Store,
    open_store,
)
from exchange.store.journal import GENESIS, canonical_json, chain_hash
from exchange.store.repository import SqlStore
from exchange.store.tables import metadata
from exchange.store.urls import normalize_url

A, B, C = "000.00.00.G01", "000.00.00.H01", "000.00.00.H02"
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"


# -- fixtures ----------------------------------------------------------------------------------------


def _pg_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_SERVER}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str]:
    """A PostgreSQL database private to this test session, dropped afterwards."""
    if not _pg_up():
        pytest.fail("PostgreSQL does not answer on 127.0.0.1:5432 (deselect with -m 'not postgres')")
    name = f"exchange_store_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_database"))


@pytest.fixture
async def store_url(backend_url: str) -> str:
    """An empty store's URL on each backend."""
    url = backend_url
    if url.startswith("sqlite"):
        return url
    store = open_store(url)
    await store.open()
    await store.close()
    engine = create_async_engine(normalize_url(url))
    try:
        async with engine.begin() as conn:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def second_store(store_url: str) -> AsyncIterator[Store]:
    """Another store on the same database: its own engine, like a second process."""
    s = open_store(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


class _SyncConnection:
    """A synchronous connection with the awaitable ``execute`` of an async one (for :func:`raw_sql`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.execute(*args, **kwargs)


@contextlib.asynccontextmanager
async def raw_sql(url: str) -> AsyncIterator:
    """A connection outside the store, as an intruder (or an operator with psql) would have."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        sync_engine = create_engine(url)  # the stdlib driver, as the sqlite3 shell would
        try:
            with sync_engine.begin() as sync_conn:
                yield _SyncConnection(sync_conn)
        finally:
            sync_engine.dispose()
        return
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            yield conn
    finally:
        await engine.dispose()


# -- helpers -------------------------------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def message(
    mid: str | None = None,
    *,
    sender: str = A,
    recipients: tuple[str, ...] = (B, C),
    direction: Direction = Direction.OUT,
    kind: str = "document",
    created_at: datetime | None = None,
    priority: int = 0,
) -> MessageRecord:
    xml = f"<envelope id='{mid}'>secret body text</envelope>".encode()
    return MessageRecord(
        message_id=mid or str(uuid.uuid4()),
        kind=kind,
        operation="new",
        sender=sender,
        recipients=recipients,
        direction=direction,
        created_at=created_at or now(),
        envelope_xml=xml,
        digest=hashlib.sha256(xml).hexdigest(),
        priority=priority,
        subject="Công văn số 1",
        relates_to=None,
        correlation_id="corr-1",
    )


def items(m: MessageRecord, *, priority: int = 0) -> list[OutboxItem]:
    return [
        OutboxItem(m.message_id, r, f"{r}.normal", b"frame:" + m.message_id.encode(), {"h": "v"}, priority)
        for r in m.recipients
    ]


def receipt_for(original: MessageRecord, recipient: str) -> tuple[MessageRecord, OutboxItem]:
    rec = message(sender=recipient, recipients=(original.sender,), kind="receipt")
    return rec, OutboxItem(rec.message_id, original.sender, f"{original.sender}.express", b"receipt")


async def send_and_publish(store: Store, m: MessageRecord | None = None) -> MessageRecord:
    m = m or message()
    await store.accept_outgoing(m, items(m))
    claimed = await store.claim_outbox(100)
    await store.mark_published([i.id for i in claimed if i.id is not None and i.message_id == m.message_id])
    return m


async def receive_and_hand_over(store: Store, recipient: str = B) -> MessageRecord:
    m = message(sender=A, recipients=(recipient,), direction=Direction.IN)
    assert await store.accept_incoming(m, recipient)
    await store.complete_incoming(m.message_id, recipient, InboxState.HANDED_OVER)
    return m


async def states(store: Store, mid: str) -> dict[str, DeliveryState]:
    return {d.recipient: d.state for d in await store.deliveries(mid)}


# -- sending -------------------------------------------------------------------------------------------


async def test_accept_outgoing_stores_message_deliveries_outbox_and_attachments(store: Store) -> None:
    m = message()
    att = b"%PDF-1.7 attachment bytes"
    sha = hashlib.sha256(att).hexdigest()
    assert await store.accept_outgoing(m, items(m), attachments={sha: att}) == (m.message_id, True)

    assert await store.get_message(m.message_id, Direction.OUT) == m
    assert await store.get_message(m.message_id) == m
    assert await store.get_message(m.message_id, Direction.IN) is None
    assert await states(store, m.message_id) == {B: DeliveryState.SUBMITTED, C: DeliveryState.SUBMITTED}
    assert [(t.recipient, t.event) for t in await store.timeline(m.message_id)] == [(B, "submitted"), (C, "submitted")]
    count, age = await store.outbox_stats()
    assert count == 2 and age is not None and 0 <= age < 60
    assert await store.get_attachment(sha) == att
    assert await store.get_attachment("0" * 64) is None


async def test_same_attachment_is_stored_once_and_shared(store: Store) -> None:
    att = b"shared annex"
    sha = hashlib.sha256(att).hexdigest()
    for _ in range(2):
        m = message()
        assert (await store.accept_outgoing(m, items(m), attachments={sha: att}))[1]
    assert await store.get_attachment(sha) == att


async def test_idempotency_key_returns_the_first_message_id_and_writes_nothing(store: Store) -> None:
    first, second = message(), message()
    assert await store.accept_outgoing(first, items(first), idempotency_key="k-1") == (first.message_id, True)
    entries = (await store.verify_journal()).entries
    assert await store.accept_outgoing(second, items(second), idempotency_key="k-1") == (first.message_id, False)
    assert await store.get_message(second.message_id) is None
    assert await store.deliveries(second.message_id) == []
    assert (await store.outbox_stats())[0] == 2
    assert (await store.verify_journal()).entries == entries
    # The key is per sender.
    other = message(sender=C, recipients=(B,))
    assert await store.accept_outgoing(other, items(other), idempotency_key="k-1") == (other.message_id, True)


async def test_concurrent_uses_of_one_idempotency_key_create_one_message(store: Store, second_store: Store) -> None:
    msgs = [message() for _ in range(10)]
    results = await asyncio.gather(
        *(
            (store if i % 2 else second_store).accept_outgoing(m, items(m), idempotency_key="same")
            for i, m in enumerate(msgs)
        )
    )
    assert sum(created for _, created in results) == 1
    assert len({mid for mid, _ in results}) == 1
    assert (await store.outbox_stats())[0] == 2
    assert (await store.verify_journal()).ok


async def test_an_idempotency_key_keeps_the_fingerprint_of_its_first_request(store: Store) -> None:
    first, second = message(), message()
    assert await store.idempotency_entry(first.sender, "fp-1") is None
    await store.accept_outgoing(first, items(first), idempotency_key="fp-1", idempotency_fingerprint="a" * 64)
    # A second use, with another fingerprint, neither writes nor replaces the first one's.
    assert await store.accept_outgoing(
        second, items(second), idempotency_key="fp-1", idempotency_fingerprint="b" * 64
    ) == (first.message_id, False)
    entry = await store.idempotency_entry(first.sender, "fp-1")
    assert entry is not None and (entry.message_id, entry.fingerprint) == (first.message_id, "a" * 64)
    # A key stored without a fingerprint (as before fingerprints existed) answers with None.
    third = message()
    await store.accept_outgoing(third, items(third), idempotency_key="fp-2")
    entry = await store.idempotency_entry(third.sender, "fp-2")
    assert entry is not None and (entry.message_id, entry.fingerprint) == (third.message_id, None)
    # Nothing is written for a message that was already stored (the whole transaction rolls back).
    await store.accept_outgoing(third, items(third), idempotency_key="fp-3", idempotency_fingerprint="c" * 64)
    assert await store.idempotency_entry(third.sender, "fp-3") is None
    assert await store.idempotency_entry(C, "fp-1") is None  # keys are per sender


async def test_accepting_a_stored_message_again_writes_nothing(store: Store) -> None:
    m = message()
    assert (await store.accept_outgoing(m, items(m)))[1]
    assert await store.accept_outgoing(m, items(m)) == (m.message_id, False)
    assert (await store.outbox_stats())[0] == 2


async def test_untracked_messages_have_no_deliveries(store: Store) -> None:
    m = message(kind="receipt", recipients=(B,))
    await store.accept_outgoing(m, items(m), track=False)
    claimed = await store.claim_outbox(10)
    await store.mark_published([i.id for i in claimed if i.id is not None])
    assert await store.deliveries(m.message_id) == []
    assert await store.timeline(m.message_id) == []
    assert (await store.outbox_stats())[0] == 0


async def test_list_sent_is_newest_first_and_pages_with_before(store: Store) -> None:
    t0 = now() - timedelta(hours=1)
    sent = [message(created_at=t0 + timedelta(minutes=i)) for i in range(4)]
    for m in sent:
        await store.accept_outgoing(m, [])
    await store.accept_outgoing(message(sender=C), [])
    got = await store.list_sent(A, limit=2)
    assert [m.message_id for m in got] == [sent[3].message_id, sent[2].message_id]
    older = await store.list_sent(A, limit=10, before=got[-1].created_at)
    assert [m.message_id for m in older] == [sent[1].message_id, sent[0].message_id]


# -- outbox --------------------------------------------------------------------------------------------


async def test_claim_leases_items_and_release_makes_them_claimable_again(store: Store) -> None:
    m = message(recipients=(B, C, "000.00.00.H03"))
    await store.accept_outgoing(m, items(m))
    first = await store.claim_outbox(2)
    assert len(first) == 2 and all(i.id is not None and i.created_at is not None for i in first)
    assert first[0].body == b"frame:" + m.message_id.encode() and dict(first[0].headers) == {"h": "v"}
    rest = await store.claim_outbox(10)
    assert len(rest) == 1 and rest[0].id not in {i.id for i in first}
    assert await store.claim_outbox(10) == []  # everything is leased

    await store.release_outbox([first[0].id])  # type: ignore[list-item]
    again = await store.claim_outbox(10)
    assert [(i.id, i.attempts) for i in again] == [(first[0].id, 1)]


async def test_an_expired_lease_is_claimed_again(store: Store) -> None:
    m = message(recipients=(B,))
    await store.accept_outgoing(m, items(m))
    (item,) = await store.claim_outbox(10, lease_seconds=0.2)
    assert await store.claim_outbox(10) == []
    await asyncio.sleep(0.3)
    assert [i.id for i in await store.claim_outbox(10)] == [item.id]


async def test_claim_serves_higher_priority_first_then_oldest(store: Store) -> None:
    normal1, normal2, express = message(recipients=(B,)), message(recipients=(B,)), message(recipients=(B,))
    await store.accept_outgoing(normal1, items(normal1, priority=0))
    await store.accept_outgoing(normal2, items(normal2, priority=0))
    await store.accept_outgoing(express, items(express, priority=4))
    order = [i.message_id for i in await store.claim_outbox(10)]
    assert order == [express.message_id, normal1.message_id, normal2.message_id]


async def test_mark_published_drops_items_and_queues_tracked_deliveries(store: Store) -> None:
    m = message()
    await store.accept_outgoing(m, items(m))
    claimed = await store.claim_outbox(10)
    await store.mark_published([claimed[0].id])  # type: ignore[list-item]
    assert await states(store, m.message_id) == {
        claimed[0].recipient: DeliveryState.QUEUED,
        claimed[1].recipient: DeliveryState.SUBMITTED,
    }
    await store.mark_published([i.id for i in claimed])  # type: ignore[misc]
    await store.mark_published([i.id for i in claimed])  # type: ignore[misc]  # a repeat is harmless
    assert set((await states(store, m.message_id)).values()) == {DeliveryState.QUEUED}
    assert await store.outbox_stats() == (0, None)
    events = [(t.recipient, t.event) for t in await store.timeline(m.message_id)]
    assert sorted(events) == sorted([(B, "submitted"), (C, "submitted"), (B, "queued"), (C, "queued")])


async def test_each_recipient_gets_the_frame_until_its_own_publish(store: Store) -> None:
    """A fan-out message's frame is kept once for all its recipients and outlives a partial publish."""
    m = message()
    await store.accept_outgoing(m, items(m))
    first, second = await store.claim_outbox(10)
    await store.mark_published([first.id])  # type: ignore[list-item]
    await store.release_outbox([second.id])  # type: ignore[list-item]
    (again,) = await store.claim_outbox(10)
    assert (again.recipient, again.body) == (second.recipient, b"frame:" + m.message_id.encode())
    await store.mark_published([again.id])  # type: ignore[list-item]
    assert await store.outbox_stats() == (0, None)


async def test_outbox_items_of_one_message_must_share_its_frame(store: Store) -> None:
    m = message()
    a, b = items(m)
    with pytest.raises(ValueError, match="same frame"):
        await store.accept_outgoing(m, [a, OutboxItem(b.message_id, b.recipient, b.routing_key, b"another")])
    assert await store.get_message(m.message_id) is None


async def test_two_concurrent_claimers_never_get_the_same_item(store: Store, second_store: Store) -> None:
    for _ in range(40):
        m = message(recipients=(B, C, "000.00.00.H03", "000.00.00.H04", "000.00.00.H05"))
        await store.accept_outgoing(m, items(m))
    claimed: list[list[int]] = [[], []]

    async def relay(s: Store, out: list[int]) -> None:
        while batch := await s.claim_outbox(7):
            out.extend(i.id for i in batch if i.id is not None)
            await asyncio.sleep(0)
            await s.mark_published([i.id for i in batch if i.id is not None])

    await asyncio.gather(
        relay(store, claimed[0]),
        relay(second_store, claimed[1]),
        relay(store, claimed[0]),
        relay(second_store, claimed[1]),
    )
    everything = claimed[0] + claimed[1]
    assert len(everything) == 200 and len(set(everything)) == 200
    assert (await store.delivery_counts())["queued"] == 200
    assert (await store.verify_journal()).ok


# -- receiving -----------------------------------------------------------------------------------------


async def test_duplicate_incoming_is_recorded_once(store: Store) -> None:
    m = message(sender=A, recipients=(B, C), direction=Direction.IN)
    att = b"annex"
    shas = {hashlib.sha256(att).hexdigest(): att}
    assert await store.accept_incoming(m, B, attachments=shas) is True
    entries = (await store.verify_journal()).entries
    assert await store.accept_incoming(m, B, attachments=shas) is False
    assert (await store.verify_journal()).entries == entries
    assert await store.accept_incoming(m, C) is True  # another hosted recipient of the same envelope
    assert await store.incoming_state(m.message_id, B) is InboxState.RECEIVED
    assert await store.incoming_state(m.message_id, "000.00.00.H09") is None
    assert await store.get_message(m.message_id, Direction.IN) == m


async def test_concurrent_duplicates_have_exactly_one_winner(store: Store, second_store: Store) -> None:
    m = message(sender=A, recipients=(B,), direction=Direction.IN)
    results = await asyncio.gather(*((store if i % 2 else second_store).accept_incoming(m, B) for i in range(20)))
    assert sorted(results) == [False] * 19 + [True]
    assert (await store.verify_journal()).entries == 1


async def test_complete_incoming_hands_over_and_enqueues_the_receipt(store: Store) -> None:
    m = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(m, B)
    rec, item = receipt_for(m, B)
    await store.complete_incoming(m.message_id, B, InboxState.HANDED_OVER, receipt=(rec, item))
    assert await store.incoming_state(m.message_id, B) is InboxState.HANDED_OVER
    assert await store.get_message(rec.message_id, Direction.OUT) == rec
    assert await store.deliveries(rec.message_id) == []  # receipts are not tracked
    (claimed,) = await store.claim_outbox(10)
    assert (claimed.message_id, claimed.recipient, claimed.body) == (rec.message_id, A, b"receipt")
    assert [e.message_id for e in await store.list_inbox(B)] == [m.message_id]


async def test_complete_incoming_is_atomic_with_its_receipt(store: Store) -> None:
    m = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(m, B)
    rec, item = receipt_for(m, B)
    broken = MessageRecord(**{**{f: getattr(rec, f) for f in rec.__dataclass_fields__}, "direction": Direction.IN})
    with pytest.raises(ValueError):
        await store.complete_incoming(m.message_id, B, InboxState.HANDED_OVER, receipt=(broken, item))
    assert await store.incoming_state(m.message_id, B) is InboxState.RECEIVED
    assert await store.outbox_stats() == (0, None)
    assert await store.list_inbox(B) == []


async def test_complete_incoming_failed_and_unknown(store: Store) -> None:
    m = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(m, B)
    await store.complete_incoming(
        m.message_id, B, InboxState.FAILED, reason="adapter refused", receipt=receipt_for(m, B)
    )
    assert await store.incoming_state(m.message_id, B) is InboxState.FAILED
    assert await store.list_inbox(B, include_acked=True) == []
    # A later completion does not resurrect it, but its receipt still goes out.
    await store.complete_incoming(m.message_id, B, InboxState.HANDED_OVER, receipt=receipt_for(m, B))
    assert await store.incoming_state(m.message_id, B) is InboxState.FAILED
    assert (await store.outbox_stats())[0] == 2
    with pytest.raises(NotFoundError):
        await store.complete_incoming("no-such-id", B, InboxState.HANDED_OVER)


# -- sender-side tracking ------------------------------------------------------------------------------


async def test_record_event_on_an_unknown_delivery_returns_false_and_writes_nothing(store: Store) -> None:
    m = await send_and_publish(store)
    entries = (await store.verify_journal()).entries
    assert (
        await store.record_event(m.message_id, "000.00.00.H09", "delivered", at=now(), state=DeliveryState.DELIVERED)
        is False
    )
    assert await store.record_event("unknown", B, "status:03", at=now(), status_code="03") is False
    assert (await store.verify_journal()).entries == entries


async def test_delivery_state_never_moves_backwards(store: Store) -> None:
    m = message()
    await store.accept_outgoing(m, items(m))
    # The receipt overtakes the publish confirm.
    assert await store.record_event(
        m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED, detail="digest abc"
    )
    claimed = await store.claim_outbox(10)
    await store.mark_published([i.id for i in claimed])  # type: ignore[misc]
    assert await store.record_event(m.message_id, B, "queued", at=now(), state=DeliveryState.QUEUED)
    assert await store.record_event(m.message_id, B, "failed", at=now(), state=DeliveryState.FAILED)
    assert await store.record_event(m.message_id, B, "submitted", at=now(), state=DeliveryState.SUBMITTED)
    assert await states(store, m.message_id) == {B: DeliveryState.DELIVERED, C: DeliveryState.QUEUED}
    events = [t.event for t in await store.timeline(m.message_id) if t.recipient == B]
    assert events == ["submitted", "delivered", "queued", "queued", "failed", "submitted"]


async def test_failed_is_terminal_and_a_late_delivered_is_timeline_only(store: Store) -> None:
    m = await send_and_publish(store)
    t = now()
    assert await store.record_event(
        m.message_id, B, "failed", at=t, state=DeliveryState.FAILED, detail="adapter-error: gave up"
    )
    assert await store.record_event(
        m.message_id, B, "delivered", at=t + timedelta(seconds=1), state=DeliveryState.DELIVERED
    )
    (d,) = [d for d in await store.deliveries(m.message_id) if d.recipient == B]
    assert (d.state, d.reason, d.updated_at) == (DeliveryState.FAILED, "adapter-error: gave up", t)
    assert [e.event for e in await store.timeline(m.message_id) if e.recipient == B][-2:] == ["failed", "delivered"]


async def test_only_if_open_records_a_receipt_once(store: Store) -> None:
    """A receipt sent again (for a duplicate on the wire) finds the delivery closed and adds nothing."""
    m = await send_and_publish(store)
    assert await store.record_event(
        m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED, detail="digest abc", only_if_open=True
    )
    entries = (await store.verify_journal()).entries
    for outcome, state in (("delivered", DeliveryState.DELIVERED), ("failed", DeliveryState.FAILED)):
        assert await store.record_event(m.message_id, B, outcome, at=now(), state=state, only_if_open=True) is False
    assert [e.event for e in await store.timeline(m.message_id) if e.recipient == B].count("delivered") == 1
    assert (await store.verify_journal()).entries == entries
    assert await store.record_event(
        m.message_id, C, "failed", at=now(), state=DeliveryState.FAILED, only_if_open=True
    )  # C's delivery was still open
    assert await states(store, m.message_id) == {B: DeliveryState.DELIVERED, C: DeliveryState.FAILED}


async def test_business_statuses_update_the_code_in_any_state(store: Store) -> None:
    m = await send_and_publish(store)
    await store.record_event(m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED)
    await store.record_event(m.message_id, B, "status:03", at=now(), status_code="03", detail="đã đến")
    await store.record_event(m.message_id, B, "status:05", at=now(), status_code="05")
    await store.record_event(m.message_id, C, "failed", at=now(), state=DeliveryState.FAILED)
    await store.record_event(m.message_id, C, "status:02", at=now(), status_code="02")
    ds = {d.recipient: d for d in await store.deliveries(m.message_id)}
    assert (ds[B].state, ds[B].status_code) == (DeliveryState.DELIVERED, "05")
    assert (ds[C].state, ds[C].status_code) == (DeliveryState.FAILED, "02")
    statuses = [
        (t.event, t.status_code, t.detail)
        for t in await store.timeline(m.message_id)
        if t.recipient == B and t.status_code
    ]
    assert statuses == [("status:03", "03", "đã đến"), ("status:05", "05", "")]


async def test_a_status_arriving_late_does_not_replace_a_newer_one(store: Store) -> None:
    # Statuses travel independently: 06 (set later) may arrive before 03 (set earlier).
    m = await send_and_publish(store)
    t0 = now()
    await store.record_event(m.message_id, B, "status:06", at=t0 + timedelta(seconds=2), status_code="06")
    await store.record_event(m.message_id, B, "status:03", at=t0, status_code="03")
    (d,) = [d for d in await store.deliveries(m.message_id) if d.recipient == B]
    assert d.status_code == "06"
    assert [t.status_code for t in await store.timeline(m.message_id) if t.recipient == B and t.status_code] == [
        "03",
        "06",
    ]


async def test_delivery_counts_cover_every_state(store: Store) -> None:
    assert await store.delivery_counts() == {"submitted": 0, "queued": 0, "delivered": 0, "failed": 0}
    m = await send_and_publish(store)
    await store.record_event(m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED)
    other = message(recipients=(B,))
    await store.accept_outgoing(other, items(other))
    assert await store.delivery_counts() == {"submitted": 1, "queued": 1, "delivered": 1, "failed": 0}


# -- inbox ---------------------------------------------------------------------------------------------


async def test_list_inbox_pages_by_seq_and_ack_hides_entries(store: Store) -> None:
    got = [await receive_and_hand_over(store) for _ in range(5)]
    waiting = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(waiting, B)  # received, not handed over: not in the inbox yet
    receipt = message(sender=C, recipients=(B,), direction=Direction.IN, kind="receipt")
    await store.accept_incoming(receipt, B)
    await store.complete_incoming(receipt.message_id, B, InboxState.ACKED)  # bus receipts skip the inbox
    await receive_and_hand_over(store, C)  # another agency's inbox

    page1 = await store.list_inbox(B, limit=2)
    page2 = await store.list_inbox(B, limit=2, after_seq=page1[-1].seq)
    page3 = await store.list_inbox(B, limit=2, after_seq=page2[-1].seq)
    assert [e.message_id for e in page1 + page2 + page3] == [m.message_id for m in got]
    seqs = [e.seq for e in page1 + page2 + page3]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5 and seqs[0] > 0
    e = page1[0]
    assert (e.agency, e.sender, e.kind, e.state, e.subject, e.acked_at) == (
        B,
        A,
        "document",
        InboxState.HANDED_OVER,
        "Công văn số 1",
        None,
    )

    assert await store.ack_inbox(B, got[0].message_id) is True
    assert await store.ack_inbox(B, got[0].message_id) is True  # idempotent
    assert await store.ack_inbox(C, got[1].message_id) is False  # not C's
    assert await store.ack_inbox(B, waiting.message_id) is False  # not handed over yet
    assert await store.ack_inbox(B, "unknown") is False
    assert [x.message_id for x in await store.list_inbox(B)] == [m.message_id for m in got[1:]]
    everything = await store.list_inbox(B, include_acked=True)
    assert [x.message_id for x in everything] == [m.message_id for m in got]
    assert everything[0].state is InboxState.ACKED and everything[0].acked_at is not None

    assert await store.incoming_state(got[0].message_id, B) is InboxState.ACKED


async def test_inbox_entry_finds_one_entry_of_the_agency_only(store: Store) -> None:
    handed = await receive_and_hand_over(store)
    waiting = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(waiting, B)  # not handed over: not in the inbox
    entry = await store.inbox_entry(B, handed.message_id)
    assert entry is not None and entry == (await store.list_inbox(B))[0]
    assert await store.inbox_entry(C, handed.message_id) is None  # another agency's
    assert await store.inbox_entry(B, waiting.message_id) is None
    assert await store.inbox_entry(B, "unknown") is None
    await store.ack_inbox(B, handed.message_id)
    acked = await store.inbox_entry(B, handed.message_id)
    assert acked is not None and acked.state is InboxState.ACKED
    # The default in the Store base class (for other backends) gives the same answers.
    assert await Store.inbox_entry(store, B, handed.message_id) == acked
    assert await Store.inbox_entry(store, C, handed.message_id) is None


async def test_inbox_cursor_follows_hand_over_order_so_paging_never_skips(store: Store) -> None:
    early = message(sender=A, recipients=(B,), direction=Direction.IN)
    late = message(sender=A, recipients=(B,), direction=Direction.IN)
    await store.accept_incoming(early, B)
    await store.accept_incoming(late, B)
    await store.complete_incoming(late.message_id, B, InboxState.HANDED_OVER)
    (seen,) = await store.list_inbox(B)
    await store.complete_incoming(early.message_id, B, InboxState.HANDED_OVER)  # a retried hand-over
    assert [e.message_id for e in await store.list_inbox(B, after_seq=seen.seq)] == [early.message_id]


# -- credentials -----------------------------------------------------------------------------------------


async def test_tokens_map_to_their_agency(store: Store) -> None:
    h = hashlib.sha256(b"token-secret").hexdigest()
    await store.put_token(B, h, label="e-office")
    assert await store.agency_for_token(h) == B
    assert await store.agency_for_token("0" * 64) is None
    await store.put_token(C, h)  # re-issued to another agency
    assert await store.agency_for_token(h) == C


# -- journal ------------------------------------------------------------------------------------------------


async def exercise_everything(store: Store) -> None:
    """One of each state change."""
    m = message()
    await store.accept_outgoing(m, items(m), idempotency_key="j")
    claimed = await store.claim_outbox(10)
    await store.release_outbox([claimed[0].id])  # type: ignore[list-item]
    await store.mark_published([i.id for i in await store.claim_outbox(10)])  # type: ignore[misc]
    await store.record_event(m.message_id, B, "delivered", at=now(), state=DeliveryState.DELIVERED)
    await store.record_event(m.message_id, B, "status:03", at=now(), status_code="03")
    incoming = message(sender=C, recipients=(A,), direction=Direction.IN)
    await store.accept_incoming(incoming, A)
    await store.complete_incoming(incoming.message_id, A, InboxState.HANDED_OVER, receipt=receipt_for(incoming, A))
    await store.ack_inbox(A, incoming.message_id)
    await store.put_token(A, hashlib.sha256(b"the-token").hexdigest(), label="ops")


async def journal_rows(url: str) -> list:
    async with raw_sql(url) as conn:
        return (await conn.execute(text("SELECT seq, at, event, prev_hash, hash FROM journal ORDER BY seq"))).all()


async def test_journal_chains_every_state_change_and_verifies(store: Store, store_url: str) -> None:
    assert (await store.verify_journal()).ok and (await store.verify_journal()).entries == 0
    await exercise_everything(store)
    report = await store.verify_journal()
    rows = await journal_rows(store_url)
    assert report.ok and report.entries == len(rows) and report.head == rows[-1].hash
    actions = [json.loads(r.event)["action"] for r in rows]
    assert set(actions) >= {
        "accept_outgoing",
        "released",
        "published",
        "record_event",
        "accept_incoming",
        "complete_incoming",
        "ack_inbox",
        "put_token",
    }
    # The chain is what the documentation says it is.
    prev = GENESIS
    for r in rows:
        assert r.prev_hash == prev and r.hash == chain_hash(prev, r.event)
        assert canonical_json(json.loads(r.event)) == r.event
        prev = r.hash


async def test_journal_holds_no_secrets_or_content(store: Store, store_url: str) -> None:
    await exercise_everything(store)
    blob = "\n".join(r.event for r in await journal_rows(store_url))
    assert hashlib.sha256(b"the-token").hexdigest() not in blob
    assert "secret body text" not in blob and "Công văn" not in blob and "frame:" not in blob


async def test_an_altered_entry_is_reported(store: Store, store_url: str) -> None:
    await exercise_everything(store)
    async with raw_sql(store_url) as conn:
        await conn.execute(
            text('UPDATE journal SET event = replace(event, \'"kind":"document"\', \'"kind":"status"\') WHERE seq = 1')
        )
    report = await store.verify_journal()
    assert (report.ok, report.first_bad_seq) == (False, 1) and "altered" in report.problem


async def test_an_altered_entry_with_a_recomputed_hash_breaks_the_next_link(store: Store, store_url: str) -> None:
    await exercise_everything(store)
    rows = await journal_rows(store_url)
    forged = rows[2].event.replace('"state":"queued"', '"state":"delivered"')
    assert forged != rows[2].event
    async with raw_sql(store_url) as conn:
        await conn.execute(
            text("UPDATE journal SET event = :e, hash = :h WHERE seq = 3"),
            {"e": forged, "h": chain_hash(rows[2].prev_hash, forged)},
        )
    report = await store.verify_journal()
    assert (report.ok, report.first_bad_seq) == (False, 4)


async def test_a_removed_entry_is_reported(store: Store, store_url: str) -> None:
    await exercise_everything(store)
    async with raw_sql(store_url) as conn:
        await conn.execute(text("DELETE FROM journal WHERE seq = 3"))
    report = await store.verify_journal()
    assert (report.ok, report.first_bad_seq) == (False, 3) and "removed" in report.problem
    assert report.entries == len(await journal_rows(store_url))


async def test_inserted_entries_are_reported(store: Store, store_url: str) -> None:
    await exercise_everything(store)
    rows = await journal_rows(store_url)
    n = len(rows)
    # Forged in the middle: later entries renumbered to make room, the forgery chained correctly.
    forged = canonical_json(
        {"seq": 3, "at": rows[2].at, "action": "ack_inbox", "message_id": "x", "recipient": B, "data": {}}
    )
    async with raw_sql(store_url) as conn:
        await conn.execute(text("UPDATE journal SET seq = seq + 100000 WHERE seq >= 3"))
        await conn.execute(text("UPDATE journal SET seq = seq - 99999 WHERE seq >= 100000"))
        await conn.execute(
            text("INSERT INTO journal (seq, at, event, prev_hash, hash) VALUES (3, :at, :e, :p, :h)"),
            {"at": rows[2].at, "e": forged, "p": rows[1].hash, "h": chain_hash(rows[1].hash, forged)},
        )
    report = await store.verify_journal()
    assert (report.ok, report.first_bad_seq, report.entries) == (False, 4, n + 1)

    # Forged after the head with a made-up hash (on a clean journal).
    async with raw_sql(store_url) as conn:
        await conn.execute(text("DELETE FROM journal WHERE seq = 3"))
        await conn.execute(text("UPDATE journal SET seq = seq + 100000 WHERE seq >= 4"))
        await conn.execute(text("UPDATE journal SET seq = seq - 100001 WHERE seq >= 100000"))
    assert (await store.verify_journal()).ok
    async with raw_sql(store_url) as conn:
        await conn.execute(
            text("INSERT INTO journal (seq, at, event, prev_hash, hash) VALUES (:s, :at, '{}', :p, :h)"),
            {"s": n + 1, "at": rows[-1].at, "p": rows[-1].hash, "h": "f" * 64},
        )
    report = await store.verify_journal()
    assert (report.ok, report.first_bad_seq) == (False, n + 1)


async def test_concurrent_writers_never_fork_the_chain(store: Store, second_store: Store) -> None:
    async def work(s: Store, i: int) -> None:
        m = message()
        await s.accept_outgoing(m, items(m))
        await s.record_event(m.message_id, B, "status:02", at=now(), status_code="02")
        inc = message(sender=C, recipients=(A,), direction=Direction.IN)
        await s.accept_incoming(inc, A)
        await s.complete_incoming(inc.message_id, A, InboxState.HANDED_OVER, receipt=receipt_for(inc, A))

    await asyncio.gather(*(work(store if i % 2 else second_store, i) for i in range(30)))
    report = await store.verify_journal()
    assert report.ok and report.entries == 30 * 5


async def test_open_is_idempotent_and_safe_concurrently(store_url: str) -> None:
    fresh = None
    if store_url.startswith("postgresql"):
        fresh = f"exchange_store_{uuid.uuid4().hex[:12]}"
        await _pg_admin(f'CREATE DATABASE "{fresh}"')
        url = f"{PG_SERVER}/{fresh}"
    else:
        url = store_url.replace("store.db", "fresh.db")
    try:
        stores = [open_store(url) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].accept_outgoing(message(), [])
        await stores[0].open()  # a second open is a no-op
        for s in stores:
            await s.close()
        again = open_store(url)
        await again.open()
        assert (await again.verify_journal()).entries == 1
        await again.ping()
        await again.close()
    finally:
        if fresh:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')


# -- CLI and URLs -------------------------------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "exchange"
    proc = await asyncio.create_subprocess_exec(
        str(exe), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_journal_verify_cli_exit_codes(store: Store, store_url: str, tmp_path: Path) -> None:
    await exercise_everything(store)
    head = (await store.verify_journal()).head
    code, out = await run_cli("journal", "verify", "--store-url", store_url)
    assert code == 0 and "OK" in out and head in out

    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nname = "n"\n[store]\nurl = "{store_url}"\n[directory]\nfile = "d.toml"\n'
        '[pki]\nca_files = ["ca.pem"]\n',
        encoding="utf-8",
    )
    code, out = await run_cli("journal", "verify", "--config", str(config))
    assert code == 0 and head in out, out

    async with raw_sql(store_url) as conn:
        await conn.execute(text("DELETE FROM journal WHERE seq = 2"))
    code, out = await run_cli("journal", "verify", "--store-url", store_url)
    assert code == 1 and "TAMPERED at entry 2" in out and "journal-tampered" in out, out

    code, out = await run_cli("journal", "verify", "--store-url", f"sqlite:///{tmp_path / 'missing.db'}")
    assert code == 1 and "no store" in out


def test_store_urls_are_mapped_to_the_drivers_the_store_runs() -> None:
    # SQLite runs on the stdlib driver in the store's threads (no aiosqlite), PostgreSQL on asyncpg.
    assert normalize_url("sqlite:///var/x.db") == "sqlite+pysqlite:///var/x.db"
    assert normalize_url("sqlite+aiosqlite:///var/x.db") == "sqlite+pysqlite:///var/x.db"  # older configs
    assert normalize_url("sqlite+pysqlite:////abs/x.db") == "sqlite+pysqlite:////abs/x.db"
    assert normalize_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert normalize_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert isinstance(open_store("sqlite:///x.db"), SqlStore)
    from exchange.errors import StoreError

    with pytest.raises(StoreError) as err:
        normalize_url("mysql://root:hunter2@h/db")
    assert "hunter2" not in err.value.message
