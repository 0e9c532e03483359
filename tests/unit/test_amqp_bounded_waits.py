"""Waits on aiormq that can go unanswered are bounded: publishes (relay) and acks (consumer).

aiormq 6.9 can leave a publish waiting forever on a connection that dropped between
queueing the frame and writing it (its ``timeout=`` does not cover that wait). Before
``publish_confirmed``, that one publish held the relay's whole batch, and the relay
never drained its outbox again after a broker restart. The broker-restart test in
tests/integration/test_routing.py covers the real thing; this pins the bound itself.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import aio_pika
import pytest

from exchange.config import LimitsConfig
from exchange.routing import frame
from exchange.store import Direction, MessageRecord, OutboxItem
from exchange.store.sql import SqlStore
from exchange.transport.relay import OutboxRelay, publish_confirmed

A, B = "000.00.00.G01", "000.00.00.H01"


class HungExchange:
    """An exchange whose publish neither confirms nor honours its own timeout."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish(self, message, routing_key, *, mandatory=True, timeout=None):
        self.calls += 1
        await asyncio.Event().wait()


async def test_publish_confirmed_gives_up_when_the_client_never_answers() -> None:
    with pytest.raises(TimeoutError):
        await publish_confirmed(HungExchange(), aio_pika.Message(b"frame"), routing_key="k", timeout=0.05)


async def test_the_relay_releases_an_item_whose_confirm_never_comes(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'exchange.db'}")
    await store.open()
    try:
        xml = b"<envelope/>"
        record = MessageRecord(
            message_id="m1",
            kind="document",
            operation="new",
            sender=A,
            recipients=(B,),
            direction=Direction.OUT,
            created_at=datetime.now(UTC),
            envelope_xml=xml,
            digest=hashlib.sha256(xml).hexdigest(),
        )
        await store.accept_outgoing(record, [OutboxItem("m1", B, f"{B}.normal", b"frame", {})])
        relay = OutboxRelay(store, asyncio.Event(), confirm_timeout=0.05)
        relay.exchange = HungExchange()  # type: ignore[assignment]
        assert await asyncio.wait_for(relay.drain_once(), 10) == (0, 1)
        (again,) = await store.claim_outbox(10)  # released, not stuck under a lease
        assert (again.message_id, again.attempts) == ("m1", 1)
    finally:
        await store.close()


class HungMessage:
    """An incoming message whose ack, like a publish, never completes (the connection dropped)."""

    body = frame.encode(b"<envelope/>", {})
    headers: ClassVar[dict[str, object]] = {"x-attempt": 1, "x-message-id": "m1", "x-sender": A}
    correlation_id = None
    routing_key = f"{B}.normal"

    async def ack(self) -> None:
        await asyncio.Event().wait()

    async def nack(self, requeue: bool = True) -> None:
        await asyncio.Event().wait()


async def test_a_consumer_worker_is_not_held_by_an_ack_that_never_completes() -> None:
    from exchange.routing.lanes import Lane
    from exchange.service import Received, ReceiveResult
    from exchange.transport.consumer import Consumer

    class Service:
        limits = LimitsConfig()

        async def receive(self, recipient, xml, attachments, *, attempt=1, replay=None):
            return ReceiveResult(Received.DELIVERED, message_id="m1")

    consumer = Consumer(Service(), None, None, None, confirm_timeout=0.05)  # type: ignore[arg-type]
    await asyncio.wait_for(consumer._process(HungMessage(), B, Lane.NORMAL), 10)  # type: ignore[arg-type]
    assert consumer.handled == 0  # not counted: the broker will redeliver it, and dedupe absorbs that
