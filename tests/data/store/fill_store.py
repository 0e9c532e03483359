"""Fill a store with the exchange code at commit 6a6adb3 (run with PYTHONPATH at a checkout of it)."""
import asyncio, hashlib, sys
from datetime import UTC, datetime, timedelta

import exchange
print("exchange from", exchange.__file__, file=sys.stderr)
from exchange.store import open_store, MessageRecord, OutboxItem, Direction, DeliveryState, InboxState

A, B, C = "000.00.00.G01", "000.00.00.H01", "000.00.00.H02"
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)

def msg(mid, direction, sender, recipients, kind="document", subject="Công văn số 12"):
    xml = f"<envelope id='{mid}'>{subject}</envelope>".encode()
    return MessageRecord(message_id=mid, kind=kind, operation="new", sender=sender, recipients=recipients,
                         direction=direction, created_at=T0, envelope_xml=xml, digest=hashlib.sha256(xml).hexdigest(),
                         priority=2, subject=subject, correlation_id="corr-1", document_id="12/CV-UBND")

async def main(url):
    s = open_store(url)
    await s.open()
    att = b"%PDF-1.7 old attachment\x00\xff"
    sha = hashlib.sha256(att).hexdigest()
    m1 = msg("m-out-1", Direction.OUT, A, (B, C))
    items = [OutboxItem(message_id="m-out-1", recipient=r, routing_key=f"{r}.normal", body=b"frame-1" * 10,
                        headers={"x-lane": "normal"}, priority=2) for r in (B, C)]
    assert await s.accept_outgoing(m1, items, attachments={sha: att}, idempotency_key="idem-1") == ("m-out-1", True)
    claimed = await s.claim_outbox(1)
    await s.mark_published([claimed[0].id])
    await s.record_event("m-out-1", claimed[0].recipient, "delivered", at=T0 + timedelta(seconds=5),
                         state=DeliveryState.DELIVERED, detail="receipt r-1")
    await s.record_event("m-out-1", claimed[0].recipient, "status:03", at=T0 + timedelta(seconds=9),
                         status_code="03", detail="Đã phân công")
    m2 = msg("m-in-1", Direction.IN, C, (A,), subject="Báo cáo")
    assert await s.accept_incoming(m2, A, attachments={sha: att})
    await s.complete_incoming("m-in-1", A, InboxState.HANDED_OVER)
    await s.put_token(A, "f" * 64, "E-Office of G01")
    report = await s.verify_journal()
    assert report.ok, report
    print("entries", report.entries, report.head)
    await s.close()

asyncio.run(main(sys.argv[1]))
