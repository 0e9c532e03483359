"""The service's use cases on SQLite, without a broker: submit, receive, receipts, statuses, inbox, track.

``tests.factories.ServiceWorld`` plays the broker (it hands each outbox frame to
the recipient's node), so these tests check what the use cases do, not how AMQP
carries them; tests/integration runs the same code over RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange.adapters.base import DeliveryResult
from exchange.devworld import AgencySpec
from exchange.envelope.model import Operation, StatusCode
from exchange.errors import (
    BadRequestError,
    NotFoundError,
    NotHostedError,
    UnknownAgencyError,
)
from exchange.routing import frame
from exchange.store.base import Direction
from tests.factories import GOVERNMENT_OFFICE, HCMC, NGHE_AN, ServiceWorld, document

AGENCIES = (
    AgencySpec(GOVERNMENT_OFFICE, "Văn phòng Chính phủ", node="central", ec=True),
    AgencySpec(NGHE_AN, "UBND tỉnh Nghệ An", node="local", ec=True),
    AgencySpec(HCMC, "UBND Thành phố Hồ Chí Minh", node="local", adapter="scripted", ec=True),
)


@pytest.fixture
async def world(tmp_path: Path):
    w = await ServiceWorld.build(tmp_path, AGENCIES, ["central", "local"])
    try:
        yield w
    finally:
        await w.close()


async def _events(world: ServiceWorld, message_id: str, recipient: str) -> list[str]:
    timeline = await world.services["central"].store.timeline(message_id)
    return [e.event for e in timeline if e.recipient == recipient]


async def test_a_submitted_document_waits_in_the_outbox_once_per_recipient(world: ServiceWorld) -> None:
    central = world.services["central"]
    result = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN, HCMC, NGHE_AN], document())
    assert result.created and result.recipients == (NGHE_AN, HCMC)
    pending, _ = await central.store.outbox_stats()
    assert pending == 2


async def test_a_document_reaches_each_inbox_and_a_signed_receipt_closes_each_delivery(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN, HCMC], document("Công văn số 12"))
    await world.carry()

    inbox = await local.inbox(NGHE_AN)
    assert [e.message_id for e in inbox] == [sent.message_id]
    assert [m.envelope.header.document.subject for m in local.adapters[HCMC].delivered] == ["Công văn số 12"]
    states = {d.recipient: d.state for d in await central.store.deliveries(sent.message_id)}
    assert states == {NGHE_AN: "delivered", HCMC: "delivered"}


async def test_a_frame_carried_twice_is_handed_over_once(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    item = (await central.store.claim_outbox(10))[0]
    xml, attachments = frame.decode(item.body, max_bytes=1 << 20)
    await local.receive(HCMC, xml, attachments)
    await local.receive(HCMC, xml, attachments)
    assert len(local.adapters[HCMC].delivered) == 1


async def test_a_permanent_refusal_reaches_the_sender_as_a_failed_delivery(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    local.adapters[HCMC].script.append(DeliveryResult.permanent("no such department", "eoffice-refused"))
    sent = await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    await world.carry()
    states = {d.recipient: d.state for d in await central.store.deliveries(sent.message_id)}
    assert states == {HCMC: "failed"}
    assert local.adapters[HCMC].delivered == []


async def test_a_status_from_the_recipient_lands_in_the_senders_timeline(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
    await world.carry()
    await local.submit_status(NGHE_AN, sent.message_id, StatusCode.ACCEPTED, description="vào sổ 123")
    await world.carry()
    assert "status:03" in await _events(world, sent.message_id, NGHE_AN)
    track = await central.track(GOVERNMENT_OFFICE, sent.message_id)
    assert [d.status_code for d in track.deliveries] == ["03"]


async def test_a_revocation_acts_only_on_a_document_the_same_agency_sent(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
    await world.carry()
    revoke = await central.submit_document(
        GOVERNMENT_OFFICE, [NGHE_AN], document(relates_to=sent.message_id), operation=Operation.REVOKE
    )
    assert revoke.created
    with pytest.raises(NotFoundError):
        await local.submit_document(
            NGHE_AN, [GOVERNMENT_OFFICE], document(relates_to=sent.message_id), operation=Operation.REVOKE
        )


async def test_the_same_idempotency_key_submits_once(world: ServiceWorld) -> None:
    central = world.services["central"]
    first = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document(), idempotency_key="k-1")
    again = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document(), idempotency_key="k-1")
    assert again.message_id == first.message_id and not again.created
    assert (await central.store.outbox_stats())[0] == 1


@pytest.mark.parametrize(
    "sender, recipients, error",
    [
        (NGHE_AN, [GOVERNMENT_OFFICE], NotHostedError),  # central hosts no key for Nghệ An
        (GOVERNMENT_OFFICE, [], BadRequestError),
        (GOVERNMENT_OFFICE, ["000.00.00.H99"], UnknownAgencyError),
    ],
)
async def test_submissions_the_node_cannot_honour_are_refused_before_signing(
    world: ServiceWorld, sender: str, recipients: list[str], error: type[Exception]
) -> None:
    central = world.services["central"]
    with pytest.raises(error):
        await central.submit_document(sender, recipients, document())
    assert (await central.store.outbox_stats())[0] == 0


async def test_a_status_about_a_document_never_received_is_not_found(world: ServiceWorld) -> None:
    local = world.services["local"]
    with pytest.raises(NotFoundError):
        await local.submit_status(NGHE_AN, "4f1d5b0e-0000-4000-8000-000000000000", StatusCode.ACCEPTED)


async def test_the_receiving_node_keeps_the_document_as_incoming(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
    await world.carry()
    record = await local.store.get_message(sent.message_id, Direction.IN)
    assert record is not None and record.sender == GOVERNMENT_OFFICE and NGHE_AN in record.recipients
