"""SQLite group commit: writes that queue up commit together, each with its own outcome.

The store contract (tests/integration/test_store_contract.py) runs everything through this
path too; these tests pin what batching itself must guarantee: one caller's failure or
cancellation never strands or undoes the others, nothing is acknowledged before its COMMIT,
and closing the store finishes what was queued. Also here: upgrading a database written
before outbox frames moved to their own table.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, text

from exchange.errors import StoreError
from exchange.store import Direction, MessageRecord, OutboxItem
from exchange.store.engines import TX_CACHE
from exchange.store.migrations import BASELINE_TABLES
from exchange.store.repository import SqlStore

A, B = "000.00.00.G01", "000.00.00.H01"


def message(mid: str) -> MessageRecord:
    xml = f"<envelope id='{mid}'/>".encode()
    return MessageRecord(
        message_id=mid,
        kind="document",
        operation="new",
        sender=A,
        recipients=(B,),
        direction=Direction.OUT,
        created_at=datetime.now(UTC),
        envelope_xml=xml,
        digest=hashlib.sha256(xml).hexdigest(),
    )


@pytest.fixture
async def store(tmp_path: Path):
    s = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await s.open()
    commits: list[int] = []
    event.listen(s._engine.writer, "commit", lambda conn: commits.append(1))  # type: ignore[union-attr]
    s.commits = commits  # type: ignore[attr-defined]
    yield s
    await s.close()


async def probe_table(store: SqlStore) -> None:
    await store._engine.write(  # type: ignore[union-attr]
        lambda conn: conn.execute(text("CREATE TABLE probe (n INTEGER PRIMARY KEY)"))
    )


def insert(n: int):
    return lambda conn: conn.execute(text("INSERT INTO probe (n) VALUES (:n)"), {"n": n}).rowcount


async def probe_rows(store: SqlStore) -> list[int]:
    return await store._engine.read(  # type: ignore[union-attr]
        lambda conn: [r.n for r in conn.execute(text("SELECT n FROM probe ORDER BY n"))]
    )


async def test_concurrent_writes_share_commits_and_keep_their_own_outcome(store: SqlStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(20)]
    # Each message submitted twice at once: one write creates it, the other finds it (a rollback
    # inside), which also sends the batch down its one-savepoint-per-write path.
    calls = [
        store.accept_outgoing(message(mid), [OutboxItem(mid, B, f"{B}.normal", b"frame", {})])
        for mid in ids
        for _ in range(2)
    ]
    results = await asyncio.gather(*calls)
    created: dict[str, list[bool]] = {}
    for mid, was_created in results:
        created.setdefault(mid, []).append(was_created)
    assert sorted(created) == sorted(ids)
    assert all(sorted(flags) == [False, True] for flags in created.values())
    assert len(store.commits) < len(calls) / 4  # type: ignore[attr-defined]
    outbox = await store.claim_outbox(100)
    assert sorted(i.message_id for i in outbox) == sorted(ids)  # one outbox row per message, not two
    report = await store.verify_journal()
    assert report.ok and report.entries == len(ids)  # the duplicates journaled nothing


async def test_a_failing_write_does_not_undo_the_others_in_its_batch(store: SqlStore) -> None:
    engine = store._engine
    assert engine is not None
    await probe_table(store)

    def fail(conn):
        conn.execute(text("INSERT INTO probe (n) VALUES (99)"))
        raise ValueError("this body fails after writing")

    results = await asyncio.gather(
        engine.write(insert(1)), engine.write(fail), engine.write(insert(2)), return_exceptions=True
    )
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], ValueError)
    assert await probe_rows(store) == [1, 2]  # the failed body's own insert was rolled back with it


async def test_a_caller_cancelled_while_queued_writes_nothing_and_strands_no_one(store: SqlStore) -> None:
    engine = store._engine
    assert engine is not None
    await probe_table(store)
    release = threading.Event()

    def slow(conn):  # holds the writer thread until released: the next writes queue meanwhile
        release.wait(10)
        return insert(0)(conn)

    first = asyncio.create_task(engine.write(slow))
    await asyncio.sleep(0.05)
    queued = [asyncio.create_task(engine.write(insert(n))) for n in (1, 2, 3)]
    await asyncio.sleep(0.05)
    queued[1].cancel()
    release.set()
    assert await first == 1
    assert await queued[0] == 1 and await queued[2] == 1
    with pytest.raises(asyncio.CancelledError):
        await queued[1]
    assert await probe_rows(store) == [0, 1, 3]


async def test_a_failure_outside_the_bodies_reaches_every_caller_and_the_writer_goes_on(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = store._engine
    assert engine is not None
    await probe_table(store)
    real = engine._run_batch  # type: ignore[attr-defined]

    def broken(fns):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(engine, "_run_batch", broken)
    results = await asyncio.gather(engine.write(insert(1)), engine.write(insert(2)), return_exceptions=True)
    assert all(isinstance(r, sqlite3.OperationalError) for r in results)
    monkeypatch.setattr(engine, "_run_batch", real)
    assert await engine.write(insert(3)) == 1  # the writer task survived
    assert await probe_rows(store) == [3]


async def test_closing_finishes_queued_writes_then_refuses_new_ones(tmp_path: Path) -> None:
    s = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await s.open()
    ids = [str(uuid.uuid4()) for _ in range(10)]
    writes = [asyncio.create_task(s.accept_outgoing(message(mid), [])) for mid in ids]
    await asyncio.sleep(0)  # queued, not yet run
    await s.close()
    assert [mid for mid, _ in await asyncio.gather(*writes)] == ids
    with pytest.raises(StoreError):
        await s.accept_outgoing(message(str(uuid.uuid4())), [])
    reopened = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await reopened.open()
    try:
        for mid in ids:
            assert await reopened.get_message(mid, Direction.OUT) is not None
    finally:
        await reopened.close()


async def test_a_database_with_frames_inline_in_the_outbox_is_upgraded_on_open(tmp_path: Path) -> None:
    """Databases written before outbox_frames (and before migrations): the waiting frames move over, nothing is lost."""
    path = tmp_path / "old.db"
    s = SqlStore(f"sqlite:///{path}")
    await s.open()
    await s.close()
    db = sqlite3.connect(path)
    # A database of that age has only the baseline's tables: drop what later revisions added.
    later = [
        name
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if name not in BASELINE_TABLES and not name.startswith("sqlite_")
    ]
    db.executescript("".join(f"DROP TABLE {name};" for name in later))
    db.executescript("""
        DROP TABLE outbox; DROP TABLE outbox_frames;
        CREATE TABLE outbox (id INTEGER PRIMARY KEY, message_id VARCHAR(64) NOT NULL,
            recipient VARCHAR(32) NOT NULL, routing_key VARCHAR(128) NOT NULL, body BLOB NOT NULL,
            headers TEXT NOT NULL, priority SMALLINT NOT NULL, created_at DATETIME NOT NULL,
            lease_until FLOAT, attempts INTEGER NOT NULL);
        CREATE INDEX ix_outbox_claim ON outbox (priority, id);
        INSERT INTO outbox VALUES (1, 'm1', 'B', 'B.normal', x'6672616d65', '{}', 0, '2026-11-26 00:00:00', NULL, 0);
        INSERT INTO outbox VALUES (2, 'm1', 'C', 'C.normal', x'6672616d65', '{}', 0, '2026-11-26 00:00:00', NULL, 0);
    """)
    db.close()
    upgraded = SqlStore(f"sqlite:///{path}")
    await upgraded.open()
    try:
        claimed = await upgraded.claim_outbox(10)
        assert [(i.recipient, i.body) for i in claimed] == [("B", b"frame"), ("C", b"frame")]
        await upgraded.mark_published([i.id for i in claimed])  # type: ignore[misc]
        assert await upgraded.outbox_stats() == (0, None)
    finally:
        await upgraded.close()
    db = sqlite3.connect(path)
    try:
        assert "body" not in {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        assert db.execute("SELECT count(*) FROM outbox_frames").fetchone() == (0,)
    finally:
        db.close()


async def test_a_rolled_back_write_leaves_no_stale_journal_head_for_the_rest_of_its_batch(store: SqlStore) -> None:
    """Bodies of one batch reuse the journal head the previous one appended (TX_CACHE); a body
    rolled back to its savepoint takes its appends with it, so the reuse must start over."""
    engine = store._engine
    assert engine is not None

    def poisons_the_head_then_fails(conn):
        conn.info[TX_CACHE]["journal_head"] = (999, "0" * 64)
        raise ValueError("rolled back")

    ids = [str(uuid.uuid4()) for _ in range(6)]
    calls = [store.accept_outgoing(message(mid), []) for mid in ids[:3]]
    calls.append(engine.write(poisons_the_head_then_fails))
    calls += [store.accept_outgoing(message(mid), []) for mid in ids[3:]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ValueError)
    report = await store.verify_journal()
    assert report.ok, report.problem
    assert report.entries == len(ids)
