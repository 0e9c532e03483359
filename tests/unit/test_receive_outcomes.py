"""The service's receive path on SQLite, without a broker: what it answers for each case.

Two agencies on one node: what A sends lands in the outbox as a frame; the test unpacks it
as the transport would and feeds it to ``receive`` for B, then feeds B's receipts back to A.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange.adapters.recording import read_records
from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.envelope.model import DocumentCode, DocumentInfo
from exchange.envelope.parse import parse_envelope
from exchange.errors import StoreError
from exchange.node import build_service
from exchange.routing import frame
from exchange.service import RECEIVE_ERROR, RECEIVE_ERROR_TEXT, ExchangeService, Received, Replay
from exchange.store.base import DeliveryState, InboxState

A, B = "000.00.00.G22", "000.00.00.H41"


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[ExchangeService]:
    specs = [
        AgencySpec(
            code, f"agency {code}", node="n", adapter="recording", options={"path": str(tmp_path / f"{code}.jsonl")}
        )
        for code in (A, B)
    ]
    config = build_world(tmp_path, specs, [NodeSpec("n", http_port=0)])["n"]
    svc = await build_service(load_config(config))
    from exchange.adapters.recording import RecordingAdapter

    for code in (A, B):
        adapter = RecordingAdapter(code, {"path": str(tmp_path / f"{code}.jsonl")}, svc.handle(code))
        await adapter.start()
        svc.adapters[code] = adapter
    try:
        yield svc
    finally:
        await svc.store.close()


async def take_outbox(svc: ExchangeService) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """(recipient, xml, attachments) of everything in the outbox, removed from it."""
    items = await svc.store.claim_outbox(100)
    await svc.store.mark_published([i.id for i in items if i.id is not None])
    return [(i.recipient, *frame.decode(i.body, max_bytes=10**8)) for i in items]


async def send(svc: ExchangeService) -> tuple[str, bytes, dict[str, bytes]]:
    result = await svc.submit_document(A, [B], DocumentInfo(code=DocumentCode("1", "CT-TTg"), subject="Chỉ thị"))
    (item,) = await take_outbox(svc)
    assert item[0] == B
    return result.message_id, item[1], item[2]


async def deliver_receipts(svc: ExchangeService) -> list:
    """Feed every receipt in the outbox to its recipient (the sender); return their headers."""
    receipts = []
    for recipient, xml, parts in await take_outbox(svc):
        _, env = parse_envelope(xml)
        receipts.append(env.header.receipt)
        assert (await svc.receive(recipient, xml, parts)).outcome is Received.DELIVERED
    return receipts


async def events(svc: ExchangeService, mid: str) -> list[tuple[str, str]]:
    return [(t.event, t.detail) for t in await svc.store.timeline(mid) if t.event not in ("submitted", "queued")]


async def test_an_unexpected_error_in_verification_is_answered_once_with_a_signed_non_delivery_receipt(
    service: ExchangeService,
) -> None:
    mid, xml, parts = await send(service)

    def broken(*_a, **_k):
        raise ValueError("duplicate extension in a certificate (the library's own words)")

    real, service.verifier.verify = service.verifier.verify, broken
    result = await service.receive(B, xml, parts)
    service.verifier.verify = real
    assert result.outcome is Received.PERMANENT and result.reason_code == RECEIVE_ERROR
    assert "ValueError" in result.reason  # the operator's dead letter says what broke
    (receipt,) = await deliver_receipts(service)
    assert (receipt.outcome.value, receipt.reason_code, receipt.reason) == ("failed", RECEIVE_ERROR, RECEIVE_ERROR_TEXT)
    (delivery,) = await service.store.deliveries(mid)
    assert delivery.state is DeliveryState.FAILED
    assert "library" not in delivery.reason  # the recipient's exception does not cross agencies


async def test_an_unexpected_error_after_the_dedupe_key_is_taken_fails_the_delivery_with_a_receipt(
    service: ExchangeService, tmp_path: Path
) -> None:
    mid, xml, parts = await send(service)

    async def broken(*_a, **_k):
        raise KeyError("a bug in the handover")

    service._hand_over = broken  # type: ignore[method-assign]
    result = await service.receive(B, xml, parts)
    assert result.outcome is Received.PERMANENT and result.reason_code == RECEIVE_ERROR
    assert await service.store.incoming_state(mid, B) is InboxState.FAILED
    (receipt,) = await deliver_receipts(service)
    assert receipt.reason_code == RECEIVE_ERROR
    assert read_records(tmp_path / f"{B}.jsonl") == []
    # A redelivery of the same copy is a duplicate of a failed message: no second receipt.
    assert (await service.receive(B, xml, parts)).outcome is Received.DUPLICATE
    assert await take_outbox(service) == []


async def test_an_unexpected_error_on_an_unreadable_envelope_is_permanent_with_a_reason(
    service: ExchangeService,
) -> None:
    def broken(*_a, **_k):
        raise RuntimeError("verifier bug")

    service.verifier.verify = broken
    result = await service.receive(B, b"<not an envelope", {})
    assert result.outcome is Received.PERMANENT and result.reason_code == RECEIVE_ERROR
    assert "RuntimeError" in result.reason and "no non-delivery receipt" in result.reason
    assert await take_outbox(service) == []


async def test_a_store_outage_is_not_answered_but_raised_for_the_transport_to_hold(service: ExchangeService) -> None:
    _, xml, parts = await send(service)

    async def down(*_a, **_k):
        raise StoreError("the store is down")

    service.store.accept_incoming = down  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        await service.receive(B, xml, parts)


async def test_a_replayed_failed_delivery_is_delivered_and_the_sender_sees_replayed_then_delivered(
    service: ExchangeService, tmp_path: Path
) -> None:
    mid, xml, parts = await send(service)
    adapter = service.adapters[B]
    adapter.options = {**adapter.options, "refuse": True}
    assert (await service.receive(B, xml, parts)).outcome is Received.PERMANENT
    await deliver_receipts(service)
    assert (await service.store.deliveries(mid))[0].state is DeliveryState.FAILED
    adapter.options = {**adapter.options, "refuse": False}  # the E-Office is fixed
    # A plain redelivery is still a duplicate ...
    assert (await service.receive(B, xml, parts)).outcome is Received.DUPLICATE
    # ... an operator's replay is delivered.
    replay = Replay(1, "TICKET-7 E-Office fixed")
    assert (await service.receive(B, xml, parts, replay=replay)).outcome is Received.DELIVERED
    assert len(read_records(tmp_path / f"{B}.jsonl")) == 1
    await deliver_receipts(service)
    timeline = await events(service, mid)
    assert [e for e, _ in timeline] == ["failed", "replayed", "delivered"], timeline
    assert timeline[1][1] == "TICKET-7 E-Office fixed"
    (delivery,) = await service.store.deliveries(mid)
    assert delivery.state is DeliveryState.DELIVERED and delivery.reason == ""
    # Replaying it again (it was delivered) delivers nothing twice and changes nothing.
    assert (await service.receive(B, xml, parts, replay=Replay(2, "again"))).outcome is Received.DUPLICATE
    await deliver_receipts(service)
    assert len(read_records(tmp_path / f"{B}.jsonl")) == 1
    assert [e for e, _ in await events(service, mid)] == ["failed", "replayed", "delivered"]


async def test_a_replay_that_fails_again_shows_replayed_then_failed(service: ExchangeService) -> None:
    mid, xml, parts = await send(service)
    adapter = service.adapters[B]
    adapter.options = {**adapter.options, "refuse": True}
    await service.receive(B, xml, parts)
    await deliver_receipts(service)
    result = await service.receive(B, xml, parts, replay=Replay(1, "try once more"))
    assert result.outcome is Received.PERMANENT
    await deliver_receipts(service)
    assert [e for e, _ in await events(service, mid)] == ["failed", "replayed", "failed"]
    assert (await service.store.deliveries(mid))[0].state is DeliveryState.FAILED


async def test_a_replay_of_a_failed_delivery_older_than_the_replay_window_is_still_delivered(
    service: ExchangeService, tmp_path: Path
) -> None:
    from datetime import timedelta

    _, xml, parts = await send(service)
    adapter = service.adapters[B]
    adapter.options = {**adapter.options, "refuse": True}
    await service.receive(B, xml, parts)
    adapter.options = {**adapter.options, "refuse": False}
    later = service.clock() + timedelta(seconds=service.limits.replay_window_seconds + 60)
    service.clock = lambda: later
    assert (await service.receive(B, xml, parts, replay=Replay(1, "late fix"))).outcome is Received.DELIVERED
    assert len(read_records(tmp_path / f"{B}.jsonl")) == 1


async def test_an_envelope_outside_the_configured_replay_window_is_refused_with_a_receipt(
    service: ExchangeService, tmp_path: Path
) -> None:
    from dataclasses import replace
    from datetime import timedelta

    _, xml, parts = await send(service)
    service.limits = replace(service.limits, replay_window_seconds=3600)
    later = service.clock() + timedelta(hours=2)
    service.clock = lambda: later
    result = await service.receive(B, xml, parts)
    assert (result.outcome, result.reason_code) == (Received.PERMANENT, "envelope-stale")
    (receipt,) = await deliver_receipts(service)
    assert receipt.reason_code == "envelope-stale" and "3600 s" in receipt.reason
    assert read_records(tmp_path / f"{B}.jsonl") == []
