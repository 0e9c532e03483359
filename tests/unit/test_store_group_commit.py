"""SQLite group commit: writes that queue up commit together, each with its own outcome.

The store contract (tests/integration/test_store_contract.py) runs everything
through this path too; these tests pin what batching itself must guarantee.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, text

from exchange.store import Direction, MessageRecord, OutboxItem
from exchange.store.sql import SqlStore

A, B = "000.00.00.G01", "000.00.00.H01"


def message(mid: str) -> MessageRecord:
    xml = f"<envelope id='{mid}'/>".encode()
    return MessageRecord(message_id=mid, kind="document", operation="new", sender=A, recipients=(B,),
                         direction=Direction.OUT, created_at=datetime.now(UTC), envelope_xml=xml,
                         digest=hashlib.sha256(xml).hexdigest())


@pytest.fixture
async def store(tmp_path: Path):
    s = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await s.open()
    commits: list[int] = []
    event.listen(s._engine.writer, "commit", lambda conn: commits.append(1))  # type: ignore[union-attr]
    s.commits = commits  # type: ignore[attr-defined]
    yield s
    await s.close()


async def test_concurrent_writes_share_commits_and_keep_their_own_outcome(store: SqlStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(20)]
    # Each message submitted twice at once: one write creates it, the other finds it (a rollback inside).
    calls = [store.accept_outgoing(message(mid), [OutboxItem(mid, B, f"{B}.normal", b"frame", {})])
             for mid in ids for _ in range(2)]
    results = await asyncio.gather(*calls)
    created = {}
    for mid, was_created in results:
        created.setdefault(mid, []).append(was_created)
    assert sorted(created) == sorted(ids)
    assert all(sorted(flags) == [False, True] for flags in created.values())
    assert len(store.commits) < len(calls) / 4  # type: ignore[attr-defined]
    outbox = await store.claim_outbox(100)
    assert sorted(i.message_id for i in outbox) == sorted(ids)  # one outbox row per message, not two
    report = await store.verify_journal()
    assert report.ok and report.entries >= len(ids)


async def test_a_failing_write_does_not_undo_the_others_in_its_batch(store: SqlStore) -> None:
    engine = store._engine
    assert engine is not None
    await engine.write(lambda conn: conn.execute(text("CREATE TABLE probe (n INTEGER PRIMARY KEY)")))

    def insert(n: int):
        return lambda conn: conn.execute(text("INSERT INTO probe (n) VALUES (:n)"), {"n": n}).rowcount

    def fail(conn):
        conn.execute(text("INSERT INTO probe (n) VALUES (99)"))
        raise ValueError("this body fails after writing")

    results = await asyncio.gather(engine.write(insert(1)), engine.write(fail), engine.write(insert(2)),
                                   return_exceptions=True)
    assert len(store.commits) == 1 + 2  # type: ignore[attr-defined]  # CREATE, then insert(1), then the other two
    assert results[0] == 1 and results[2] == 1
    assert isinstance(results[1], ValueError)
    rows = await engine.read(lambda conn: [r.n for r in conn.execute(text("SELECT n FROM probe ORDER BY n"))])
    assert rows == [1, 2]  # the failed body's own insert was rolled back with it


async def test_a_cancelled_caller_does_not_strand_the_rest_of_its_batch(store: SqlStore) -> None:
    ids = [str(uuid.uuid4()) for _ in range(10)]
    tasks = [asyncio.create_task(store.accept_outgoing(message(mid), [])) for mid in ids]
    await asyncio.sleep(0)  # all queued
    tasks[0].cancel()
    done = await asyncio.gather(*tasks[1:])
    assert [mid for mid, _ in done] == ids[1:]
    for mid in ids[1:]:
        assert await store.get_message(mid, Direction.OUT) is not None
