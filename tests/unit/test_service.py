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
from exchange.envelope.model import Operation, ReceiptOutcome, StatusCode
from exchange.envelope.parse import parse_envelope
from exchange.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    NotHostedError,
    UnknownAgencyError,
)
from exchange.routing import frame
from exchange.service import ExchangeService, Received
from exchange.store.base import DeliveryState, Direction
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


# -- receive: the service's answer for each case, and the receipt it leaves for the sender ----------------


async def _frames(service: ExchangeService) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """(recipient, xml, attachments) of everything in ``service``'s outbox, taken out as the relay would."""
    items = await service.store.claim_outbox(100)
    await service.store.mark_published([i.id for i in items if i.id is not None])
    return [(i.recipient, *frame.decode(i.body, max_bytes=1 << 20)) for i in items]


async def _receipts(service: ExchangeService) -> list[ReceiptOutcome]:
    """The outcomes of the receipts waiting in ``service``'s outbox (taken out)."""
    return [parse_envelope(xml)[1].header.receipt.outcome for _, xml, _ in await _frames(service)]


async def _states(world: ServiceWorld, message_id: str) -> dict[str, DeliveryState]:
    return {d.recipient: d.state for d in await world.services["central"].store.deliveries(message_id)}


@pytest.mark.parametrize(
    "answer, received, receipts",
    [
        (DeliveryResult.delivered(), Received.DELIVERED, [ReceiptOutcome.DELIVERED]),
        (DeliveryResult.transient("E-Office busy", "eoffice-busy"), Received.TRANSIENT, []),
        (
            DeliveryResult.permanent("no such department", "eoffice-refused"),
            Received.PERMANENT,
            [ReceiptOutcome.FAILED],
        ),
    ],
    ids=["delivered", "transient", "permanent"],
)
async def test_the_e_offices_answer_is_the_receive_outcome_and_decides_the_receipt(
    world: ServiceWorld, answer: DeliveryResult, received: Received, receipts: list[ReceiptOutcome]
) -> None:
    central, local = world.services["central"], world.services["local"]
    local.adapters[HCMC].script.append(answer)
    await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    ((recipient, xml, attachments),) = await _frames(central)
    result = await local.receive(recipient, xml, attachments)
    assert result.outcome is received
    assert result.reason_code == answer.reason_code
    assert await _receipts(local) == receipts  # a transient answer tells the sender nothing yet


async def test_a_second_copy_is_a_duplicate_and_the_delivered_receipt_is_sent_again(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    ((recipient, xml, attachments),) = await _frames(central)
    assert (await local.receive(recipient, xml, attachments)).outcome is Received.DELIVERED
    again = await local.receive(recipient, xml, attachments, attempt=2)
    assert again.outcome is Received.DUPLICATE and again.reason_code == "duplicate"
    # The first receipt may have been lost with the connection that made the sender resend.
    assert await _receipts(local) == [ReceiptOutcome.DELIVERED, ReceiptOutcome.DELIVERED]


async def test_a_transient_handover_is_delivered_on_the_transports_next_attempt(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    local.adapters[HCMC].script.append(DeliveryResult.transient("E-Office busy", "eoffice-busy"))
    sent = await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    ((recipient, xml, attachments),) = await _frames(central)
    assert (await local.receive(recipient, xml, attachments, attempt=1)).outcome is Received.TRANSIENT
    assert (await local.receive(recipient, xml, attachments, attempt=2)).outcome is Received.DELIVERED
    assert len(local.adapters[HCMC].delivered) == 1
    await world.carry()
    assert await _states(world, sent.message_id) == {HCMC: DeliveryState.DELIVERED}


async def test_a_transient_answer_on_the_last_attempt_fails_the_delivery_with_a_receipt(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    local.adapters[HCMC].script.append(DeliveryResult.transient("E-Office busy", "eoffice-busy"))
    sent = await central.submit_document(GOVERNMENT_OFFICE, [HCMC], document())
    ((recipient, xml, attachments),) = await _frames(central)
    result = await local.receive(recipient, xml, attachments, attempt=local.max_attempts)
    assert result.outcome is Received.PERMANENT and result.reason_code == "retries-exhausted"
    await world.carry()
    assert await _states(world, sent.message_id) == {HCMC: DeliveryState.FAILED}
    assert local.adapters[HCMC].delivered == []


async def test_the_delivery_stays_open_until_the_recipients_receipt_arrives(world: ServiceWorld) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
    ((recipient, xml, attachments),) = await _frames(central)
    assert (await local.receive(recipient, xml, attachments)).outcome is Received.DELIVERED
    # Handed over at the recipient, but the sender only knows once the signed receipt is back.
    assert await _states(world, sent.message_id) == {NGHE_AN: DeliveryState.QUEUED}
    ((back_to, receipt_xml, parts),) = await _frames(local)
    assert back_to == GOVERNMENT_OFFICE
    assert (await central.receive(back_to, receipt_xml, parts)).outcome is Received.DELIVERED
    assert await _states(world, sent.message_id) == {NGHE_AN: DeliveryState.DELIVERED}
    assert "delivered" in await _events(world, sent.message_id, NGHE_AN)


# -- revoke, update, replace ------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [Operation.REVOKE, Operation.UPDATE, Operation.REPLACE])
async def test_an_operation_on_a_sent_document_reaches_the_recipient_and_the_originals_timeline(
    world: ServiceWorld, operation: Operation
) -> None:
    central, local = world.services["central"], world.services["local"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document("Công văn số 12"))
    await world.carry()
    acting = await central.submit_document(
        GOVERNMENT_OFFICE, [NGHE_AN], document("Công văn số 12 (mới)", relates_to=sent.message_id), operation=operation
    )
    await world.carry()
    record = await local.store.get_message(acting.message_id, Direction.IN)
    assert record is not None and record.operation == operation.value and record.relates_to == sent.message_id
    assert f"{operation.value}-sent" in await _events(world, sent.message_id, NGHE_AN)
    assert await _states(world, acting.message_id) == {NGHE_AN: DeliveryState.DELIVERED}


async def test_a_revocation_cannot_itself_be_replaced(world: ServiceWorld) -> None:
    central = world.services["central"]
    sent = await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document())
    revoke = await central.submit_document(
        GOVERNMENT_OFFICE, [NGHE_AN], document(relates_to=sent.message_id), operation=Operation.REVOKE
    )
    with pytest.raises(ConflictError, match="is a revocation"):
        await central.submit_document(
            GOVERNMENT_OFFICE, [NGHE_AN], document(relates_to=revoke.message_id), operation=Operation.REPLACE
        )


async def test_a_replacement_must_name_the_document_it_replaces(world: ServiceWorld) -> None:
    central = world.services["central"]
    with pytest.raises(BadRequestError, match="relates_to"):
        await central.submit_document(GOVERNMENT_OFFICE, [NGHE_AN], document(), operation=Operation.REPLACE)
    assert (await central.store.outbox_stats())[0] == 0
