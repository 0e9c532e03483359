"""Fill a store through the public Store API, as a node would: how the frozen stores beside this file were made.

``store-6a6adb3.*.sql`` are stores written by the code at commit 6a6adb3 (the last schema
before migrations), frozen so the migration tests never need git. To freeze a store of
another release the same way::

    git archive <commit> exchange | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old .venv/bin/python tests/data/store/fill_store.py sqlite:////tmp/old.db
    sqlite3 /tmp/old.db .dump > tests/data/store/store-<commit>.sqlite.sql
    # PostgreSQL: fill a scratch database, then
    pg_dump --inserts --no-owner --no-privileges --no-comments DB | grep -v '^\\' > store-<commit>.postgresql.sql

(It uses only calls that existed at 6a6adb3; tests/integration/test_store_migrations.py
checks what it wrote.)
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from datetime import UTC, datetime, timedelta

import exchange
from exchange.store import DeliveryState, Direction, InboxState, MessageRecord, OutboxItem, open_store

A, B, C = "000.00.00.G01", "000.00.00.H01", "000.00.00.H02"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def message(
    mid: str, direction: Direction, sender: str, recipients: tuple[str, ...], subject: str = "Công văn số 12"
) -> MessageRecord:
    xml = f"<envelope id='{mid}'>{subject}</envelope>".encode()
    return MessageRecord(
        message_id=mid,
        kind="document",
        operation="new",
        sender=sender,
        recipients=recipients,
        direction=direction,
        created_at=T0,
        envelope_xml=xml,
        digest=hashlib.sha256(xml).hexdigest(),
        priority=2,
        subject=subject,
        correlation_id="corr-1",
        document_id="12/CV-UBND",
    )


async def fill(url: str) -> None:
    store = open_store(url)
    await store.open()
    try:
        attachment = b"%PDF-1.7 old attachment\x00\xff"
        sha = hashlib.sha256(attachment).hexdigest()
        items = [
            OutboxItem(
                message_id="m-out-1",
                recipient=r,
                routing_key=f"{r}.normal",
                body=b"frame-1" * 10,
                headers={"x-lane": "normal"},
                priority=2,
            )
            for r in (B, C)
        ]
        sent = message("m-out-1", Direction.OUT, A, (B, C))
        assert await store.accept_outgoing(sent, items, attachments={sha: attachment}, idempotency_key="idem-1") == (
            "m-out-1",
            True,
        )
        claimed = await store.claim_outbox(1)  # one published, the other left waiting in the outbox
        await store.mark_published([claimed[0].id])  # type: ignore[list-item]
        await store.record_event(
            "m-out-1",
            claimed[0].recipient,
            "delivered",
            at=T0 + timedelta(seconds=5),
            state=DeliveryState.DELIVERED,
            detail="receipt r-1",
        )
        await store.record_event(
            "m-out-1",
            claimed[0].recipient,
            "status:03",
            at=T0 + timedelta(seconds=9),
            status_code="03",
            detail="Đã phân công",
        )
        assert await store.accept_incoming(
            message("m-in-1", Direction.IN, C, (A,), "Báo cáo"), A, attachments={sha: attachment}
        )
        await store.complete_incoming("m-in-1", A, InboxState.HANDED_OVER)
        await store.put_token(A, "f" * 64, "E-Office of G01")
        report = await store.verify_journal()
        assert report.ok, report
        print(f"exchange from {exchange.__file__}: {report.entries} journal entries, head {report.head}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(fill(sys.argv[1]))
