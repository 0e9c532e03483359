"""Store benchmark: the outbox path of a sending node, beside raw sqlite3 in the same run.

Per message: ``accept_outgoing`` (a 4 KB signed envelope, a 64 KB attachment, one
recipient, its 70 KB frame in the outbox, journal entry) from ``--concurrency``
submitters at once, while a relay loop claims 100 at a time and marks them published
(as after the broker's confirms). Reported: messages/s until every one is published.

The baseline is what any durable store must at least do for the same bytes: plain
sqlite3, WAL, synchronous=FULL, one INSERT of the envelope, attachment and frame and
one COMMIT per message, then a DELETE of the frame, from one thread.

    python benchmarks/bench_store.py [--messages 2000] [--concurrency 16] [--postgres postgresql://…]

PostgreSQL runs when its server answers (default postgresql://postgres@127.0.0.1:5432),
in a database created for the run and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.store import Direction, MessageRecord, OutboxItem
from exchange.store.sql import SqlStore

A, B = "000.00.00.G22", "000.00.00.H41"
XML, ATTACHMENT, FRAME = 4 * 1024, 64 * 1024, 70 * 1024


def raw_sqlite(path: Path, count: int) -> float:
    """Messages/s of the durable minimum, for the same bytes."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE m (id TEXT PRIMARY KEY, xml BLOB, attachment BLOB)")
    db.execute("CREATE TABLE f (id TEXT PRIMARY KEY, frame BLOB)")
    started = time.perf_counter()
    for _ in range(count):
        mid = uuid.uuid4().hex
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO m VALUES (?, ?, ?)", (mid, os.urandom(XML), os.urandom(ATTACHMENT)))
        db.execute("INSERT INTO f VALUES (?, ?)", (mid, os.urandom(FRAME)))
        db.execute("COMMIT")
        db.execute("DELETE FROM f WHERE id = ?", (mid,))
    elapsed = time.perf_counter() - started
    db.close()
    return count / elapsed


def message() -> tuple[MessageRecord, OutboxItem, dict[str, bytes]]:
    mid = str(uuid.uuid4())
    xml = os.urandom(XML)
    attachment = os.urandom(ATTACHMENT)
    record = MessageRecord(
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
    item = OutboxItem(mid, B, f"{B}.normal", os.urandom(FRAME), {"x-sender": A})
    return record, item, {hashlib.sha256(attachment).hexdigest(): attachment}


async def store_loop(url: str, count: int, concurrency: int) -> float:
    """Messages/s through accept_outgoing, claim_outbox and mark_published."""
    store = SqlStore(url)
    await store.open()
    try:
        made = [message() for _ in range(count)]
        queue = iter(made)
        published = 0
        submitting = True

        async def submitter() -> None:
            for record, item, attachments in queue:
                await store.accept_outgoing(record, [item], attachments=attachments)

        async def relay() -> None:
            nonlocal published
            while published < count:
                items = await store.claim_outbox(100)
                if items:
                    await store.mark_published([i.id for i in items if i.id is not None])
                    published += len(items)
                elif not submitting:
                    raise RuntimeError(f"the outbox is empty after {published} of {count} messages")
                else:
                    await asyncio.sleep(0.005)

        started = time.perf_counter()
        relaying = asyncio.create_task(relay())
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submitting = False
        await relaying
        return count / (time.perf_counter() - started)
    finally:
        await store.close()


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    with (
        contextlib.suppress(OSError),
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1),
    ):
        return True
    return False


async def postgres_loop(server: str, count: int, concurrency: int) -> float:
    import asyncpg

    name = f"exchange_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{server}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            return await store_loop(f"{server}/{name}", count, concurrency)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def run(count: int, concurrency: int, postgres: str) -> None:
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print(f"raw sqlite3: {count} messages …", file=sys.stderr)
        raw = raw_sqlite(root / "raw.db", count)
        for sync in ("full", "normal"):
            print(f"store, SQLite synchronous={sync}: {count} messages …", file=sys.stderr)
            rows.append(
                (
                    f"store, SQLite synchronous={sync}",
                    await store_loop(f"sqlite:///{root / f'store-{sync}.db'}?synchronous={sync}", count, concurrency),
                )
            )
    if postgres and _reachable(postgres):
        print(f"store, PostgreSQL: {count} messages …", file=sys.stderr)
        rows.append(("store, PostgreSQL", await postgres_loop(postgres.rstrip("/"), count, concurrency)))
    else:
        print(f"(PostgreSQL at {postgres} does not answer: skipped)", file=sys.stderr)
    print()
    print(f"{'measure':42} {'msg/s':>8}   vs raw")
    print(f"{'raw sqlite3, synchronous=full (baseline)':42} {raw:8.0f}")
    for label, rate in rows:
        print(f"{label:42} {rate:8.0f}   {rate / raw:5.2f}")
    print(
        f"\n{count} messages of {XML // 1024} KB envelope + {ATTACHMENT // 1024} KB attachment + "
        f"{FRAME // 1024} KB frame; {concurrency} concurrent submitters, relay batches of 100"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432",
        help="PostgreSQL server URL (no database); empty to skip",
    )
    args = parser.parse_args(argv)
    asyncio.run(run(args.messages, args.concurrency, args.postgres))
    return 0


if __name__ == "__main__":
    sys.exit(main())
