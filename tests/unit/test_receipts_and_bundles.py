"""Receipts checked against what was sent, and bundles received for several agencies at once (SQLite, no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.devworld import AgencySpec
from exchange.envelope.model import ReceiptOutcome
from exchange.routing import frame
from exchange.service import Received
from exchange.store.base import DeliveryState, Direction
from tests.factories import GOVERNMENT_OFFICE, HCMC, NGHE_AN, ServiceWorld, document

COMMUNE = "000.00.31.H41"
AGENCIES = (
    AgencySpec(GOVERNMENT_OFFICE, "Văn phòng Chính phủ", node="central", ec=True),
    AgencySpec(NGHE_AN, "UBND tỉnh Nghệ An", node="local", ec=True),
    AgencySpec(HCMC, "UBND Thành phố Hồ Chí Minh", node="local", ec=True),
    AgencySpec(COMMUNE, "UBND xã", node="local", ec=True),
)


@pytest.fixture
async def world(tmp_path: Path):
    w = await ServiceWorld.build(tmp_path, AGENCIES, ["central", "local"])
    try:
        yield w
    finally:
        await w.close()


async def _sent_frame(world: ServiceWorld, recipients: list[str]) -> tuple[str, bytes, dict[str, bytes]]:
    central = world.services["central"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, recipients, document())
    items = await central.store.claim_outbox(100)
    xml, parts = frame.decode(items[0].body, max_bytes=1 << 24)
    return sent.message_id, xml, parts


async def test_a_receipt_whose_digest_is_not_the_sent_envelopes_is_flagged_on_the_timeline(world) -> None:
    central, local = world.services["central"], world.services["local"]
    message_id, xml, parts = await _sent_frame(world, [NGHE_AN])
    received = local.verifier.verify(xml, parts).signed.envelope
    for digest in ("0" * 64, None):  # a wrong digest, then the right one for a second message
        if digest is None:
            message_id, xml, parts = await _sent_frame(world, [NGHE_AN])
            received = local.verifier.verify(xml, parts).signed.envelope
            digest = (await central.store.get_message(message_id, Direction.OUT)).digest
        _, item = local._receipt(
            NGHE_AN, received, GOVERNMENT_OFFICE, message_id, ReceiptOutcome.DELIVERED, digest=digest
        )
        rxml, rparts = frame.decode(item.body, max_bytes=1 << 24)
        assert (await central.receive(GOVERNMENT_OFFICE, rxml, rparts)).outcome is Received.DELIVERED
        events = [e.event for e in await central.store.timeline(message_id) if e.recipient == NGHE_AN]
        assert ("receipt-digest-mismatch" in events) is (digest == "0" * 64), events


async def test_a_bundle_is_verified_once_and_each_recipient_gets_its_own_outcome_exactly_once(world) -> None:
    local = world.services["local"]
    message_id, xml, parts = await _sent_frame(world, [NGHE_AN, HCMC])
    calls = 0
    verify = local.verifier.verify

    def counting(*args, **kwargs):
        nonlocal calls
        calls += 1
        return verify(*args, **kwargs)

    local.verifier.verify = counting  # type: ignore[method-assign]
    first = await local.receive_many([NGHE_AN, HCMC, COMMUNE, "000.00.00.G01"], xml, parts)
    assert calls == 1
    assert {code: r.outcome for code, r in first.items()} == {
        NGHE_AN: Received.DELIVERED,
        HCMC: Received.DELIVERED,
        COMMUNE: Received.PERMANENT,  # hosted here, but the signed To does not name it
        "000.00.00.G01": Received.PERMANENT,  # not hosted here
    }
    assert (first[COMMUNE].reason_code, first["000.00.00.G01"].reason_code) == (
        "recipient-mismatch",
        "agency-not-hosted",
    )
    again = await local.receive_many([NGHE_AN, HCMC], xml, parts)  # the broker redelivers the bundle
    assert {r.outcome for r in again.values()} == {Received.DUPLICATE}
    for code in (NGHE_AN, HCMC):
        assert [e.message_id for e in await local.inbox(code)] == [message_id]
    await world.carry()  # the receipts go back
    central = world.services["central"]
    states = {d.recipient: d.state for d in await central.store.deliveries(message_id)}
    assert states == {NGHE_AN: DeliveryState.DELIVERED, HCMC: DeliveryState.DELIVERED}


async def test_two_copies_of_one_message_taken_at_once_are_handed_over_once(world) -> None:
    """A shovel republishes what a stopped hub had not confirmed right behind the first copy: two workers
    take both at once. The second waits for the first and answers as a duplicate, never a second hand-over."""
    import asyncio

    from exchange.adapters.base import DeliveryResult

    local = world.services["local"]
    _, xml, parts = await _sent_frame(world, [NGHE_AN])
    handed: list[str] = []

    class SlowEOffice:
        wants_receipts = False

        async def stop(self) -> None:
            pass

        async def deliver(self, message):
            handed.append(message.envelope.message_id)
            await asyncio.sleep(0.2)  # the E-Office takes its time; the second copy arrives meanwhile
            return DeliveryResult.delivered()

    local.adapters[NGHE_AN] = SlowEOffice()  # type: ignore[assignment]
    first, second = await asyncio.gather(local.receive(NGHE_AN, xml, parts), local.receive(NGHE_AN, xml, parts))
    assert sorted([first.outcome, second.outcome]) == sorted([Received.DELIVERED, Received.DUPLICATE])
    assert len(handed) == 1
    assert local._in_hand == {}  # nothing left behind
