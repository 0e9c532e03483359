"""The transport maps the service's answer to AMQP: ack, retry copy or dead letter; never a requeue loop."""

from __future__ import annotations

import pytest

from exchange.config import LimitsConfig
from exchange.errors import StoreError
from exchange.routing import frame
from exchange.routing.lanes import Lane
from exchange.service import RECEIVE_ERROR, Received, ReceiveResult, Replay
from exchange.transport.consumer import Consumer

B = "000.00.00.H41"


class Message:
    def __init__(self, body: bytes, headers: dict | None = None) -> None:
        self.body = body
        self.headers = {"x-attempt": 1, "x-message-id": "m1", "x-recipient": B, **(headers or {})}
        self.correlation_id = None
        self.routing_key = f"{B}.normal"
        self.content_type = frame.CONTENT_TYPE
        self.message_id = "m1/x/1"
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nack(self, requeue: bool = True) -> None:
        self.settled.append(f"nack requeue={requeue}")


class Exchange:
    def __init__(self) -> None:
        self.published: list = []

    async def publish(self, message, routing_key, *, mandatory=True, timeout=None):
        self.published.append(message)


class Service:
    limits = LimitsConfig()

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.calls: list[tuple] = []

    async def receive(self, recipient, xml, attachments, *, attempt=1, replay=None, hops=()):
        self.calls.append((recipient, xml, attachments, attempt, replay))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def consumer(service: Service) -> tuple[Consumer, Exchange, Exchange]:
    retry, dlx = Exchange(), Exchange()
    return Consumer(service, None, retry, dlx, confirm_timeout=5), retry, dlx  # type: ignore[arg-type]


async def test_an_error_escaping_the_service_is_dead_lettered_once_and_acked_not_requeued() -> None:
    service = Service(RuntimeError("a bug"))
    c, retry, dlx = consumer(service)
    message = Message(frame.encode(b"<envelope/>", {}))
    await c._process(message, B, Lane.NORMAL)  # type: ignore[arg-type]
    assert message.settled == ["ack"]
    (dead,) = dlx.published
    assert dead.headers["x-exchange-dead-code"] == RECEIVE_ERROR
    assert "RuntimeError: a bug" in dead.headers["x-exchange-dead-reason"]
    assert retry.published == []


async def test_a_store_outage_holds_the_message_and_retries_in_place(monkeypatch) -> None:
    sleeps: list[float] = []

    async def no_sleep(delay: float) -> None:
        sleeps.append(delay)

    monkeypatch.setattr("exchange.transport.consumer.asyncio.sleep", no_sleep)
    service = Service(StoreError("down"), StoreError("down"), ReceiveResult(Received.DELIVERED, message_id="m1"))
    c, retry, dlx = consumer(service)
    message = Message(frame.encode(b"<envelope/>", {}))
    await c._process(message, B, Lane.NORMAL)  # type: ignore[arg-type]
    assert message.settled == ["ack"] and len(service.calls) == 3 and len(sleeps) == 2
    assert dlx.published == [] and retry.published == []


async def test_a_garbage_body_is_dead_lettered_by_the_transport_without_reaching_the_service() -> None:
    service = Service()
    c, _, dlx = consumer(service)
    message = Message(b"\x00garbage")
    await c._process(message, B, Lane.NORMAL)  # type: ignore[arg-type]
    assert service.calls == [] and message.settled == ["ack"]
    assert dlx.published[0].headers["x-exchange-dead-code"] == "frame-invalid"


@pytest.mark.parametrize("outcome", [Received.DELIVERED, Received.DUPLICATE])
async def test_delivered_and_duplicate_are_acked_and_nothing_is_published(outcome: Received) -> None:
    c, retry, dlx = consumer(Service(ReceiveResult(outcome, message_id="m1")))
    message = Message(frame.encode(b"<envelope/>", {"a1": b"data"}))
    await c._process(message, B, Lane.NORMAL)  # type: ignore[arg-type]
    assert message.settled == ["ack"] and retry.published == [] and dlx.published == []


async def test_the_transport_unpacks_the_frame_and_passes_the_operators_replay() -> None:
    service = Service(ReceiveResult(Received.DELIVERED))
    c, _, _ = consumer(service)
    message = Message(
        frame.encode(b"<envelope/>", {"a1": b"data"}), {"x-replays": 2, "x-replay-reason": "TICKET-9", "x-attempt": 1}
    )
    await c._process(message, B, Lane.NORMAL)  # type: ignore[arg-type]
    ((recipient, xml, parts, attempt, replay),) = service.calls
    assert (recipient, xml, parts, attempt) == (B, b"<envelope/>", {"a1": b"data"}, 1)
    assert replay == Replay(2, "TICKET-9")


async def test_a_plain_delivery_carries_no_replay() -> None:
    service = Service(ReceiveResult(Received.DELIVERED))
    c, _, _ = consumer(service)
    await c._process(Message(frame.encode(b"<envelope/>", {})), B, Lane.NORMAL)  # type: ignore[arg-type]
    assert service.calls[0][4] is None
