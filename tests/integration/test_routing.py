"""End to end over the real RabbitMQ: routing, receipts, statuses, exactly-once, failures, lanes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from exchange.adapters.base import OutgoingFile
from exchange.adapters.recording import read_records
from exchange.devworld import AgencySpec
from exchange.envelope.model import (
    DocumentCode,
    DocumentInfo,
    Operation,
    Priority,
    StatusCode,
)
from exchange.routing import frame
from exchange.routing.lanes import Lane, routing_key
from exchange.service import record_of
from exchange.store.base import DeliveryState, Direction
from exchange.transport.topology import Names
from tests.conftest import rabbitmqctl, wait_for_broker
from tests.factories import envelope as make_envelope
from tests.integration.conftest import wait_for, wait_until

pytestmark = [pytest.mark.broker]

A, B, C, D = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29", "000.00.31.H41"


def agencies(tmp: Path, **opts) -> list[AgencySpec]:
    def rec(code: str, node: str) -> AgencySpec:
        return AgencySpec(
            code,
            f"agency {code}",
            node=node,
            adapter="recording",
            options={"path": str(tmp / f"{code}.jsonl"), **opts.get(code, {})},
        )

    return [rec(A, "central"), rec(B, "local"), rec(C, "local"), rec(D, "local")]


def doc(subject: str = "Chỉ thị về chuyển đổi số", priority: Priority = Priority.NORMAL, **kw) -> DocumentInfo:
    return DocumentInfo(code=DocumentCode("12", "CT-TTg"), subject=subject, priority=priority, **kw)


async def states(service, message_id: str) -> dict[str, DeliveryState]:
    return {d.recipient: d.state for d in await service.store.deliveries(message_id)}


async def all_delivered(service, message_id: str, recipients) -> bool:
    s = await states(service, message_id)
    return all(s.get(r) is DeliveryState.DELIVERED for r in recipients)


async def publish_raw(
    amqp_url: str, prefix: str, recipient: str, body: bytes, lane: Lane = Lane.NORMAL, message_id: str = "raw"
) -> None:
    """Publish bytes straight to an agency queue, as a misbehaving or hostile peer would."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(Names(prefix).route)
        await exchange.publish(
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{message_id}/{recipient}/raw{os.urandom(3).hex()}",
                headers={"x-recipient": recipient, "x-message-id": message_id},
            ),
            routing_key=routing_key(recipient, lane),
            timeout=10,
        )
    finally:
        await connection.close()


async def dead_letters(amqp_url: str, prefix: str) -> list[dict]:
    """Read (and put back) the dead-letter queue's messages' headers."""
    from exchange.cli.dlq import describe

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(Names(prefix).dlq, durable=True, passive=True)
        taken = []
        while (m := await queue.get(no_ack=False, fail=False, timeout=5)) is not None:
            taken.append(m)
        out = [describe(m) for m in taken]
        for m in taken:
            await m.nack(requeue=True)
        return out
    finally:
        await connection.close()


async def test_document_reaches_its_recipient_and_a_signed_receipt_comes_back(make_world, tmp_path) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    pdf = b"%PDF-1.7 " + os.urandom(70_000)
    result = await central.service.submit_document(A, [B], doc(), [OutgoingFile("ct.pdf", pdf, "application/pdf")])
    await wait_for(lambda: all_delivered(central.service, result.message_id, [B]), what="delivered receipt")
    (record,) = read_records(tmp_path / f"{B}.jsonl")
    assert record["message_id"] == result.message_id and record["sender"] == A
    assert record["attachments"] == {"ct.pdf": hashlib.sha256(pdf).hexdigest()}
    events = [t.event for t in await central.service.store.timeline(result.message_id)]
    # "queued" (the publish confirm) may be recorded after the receipt: the recipient can take the
    # copy before the confirm reaches the sender; the state never moves back (docs/ARCHITECTURE.md).
    assert events[0] == "submitted" and sorted(events[1:3]) == ["delivered", "queued"], events
    sent = await central.service.store.get_message(result.message_id, Direction.OUT)
    delivered = [t for t in await central.service.store.timeline(result.message_id) if t.event == "delivered"]
    assert delivered[0].detail == f"digest {sent.digest}"  # the receipt names exactly what was sent


async def test_an_adapter_that_wants_receipts_gets_each_one_once_and_none_is_answered(make_world, tmp_path) -> None:
    # A's E-Office takes receipts, and fails the first handover of each (the bus retries it).
    specs = agencies(tmp_path, **{A: {"receipts": True, "transient_failures": 1}, C: {"refuse": True}})
    world = make_world(specs, ["central", "local"], retry_delays=(1,), max_attempts=3)
    await world.start("local")
    central = await world.start("central")
    result = await central.service.submit_document(A, [B, C], doc())

    async def both_receipts_handed_over() -> bool:
        return len(read_records(tmp_path / f"{A}.jsonl")) >= 2

    await wait_for(both_receipts_handed_over, what="two receipts handed to A's E-Office")
    await asyncio.sleep(1.5)  # room for a wrong second handover or a receipt of a receipt
    got = {(r["kind"], r["receipt_for"], r["sender"], r["outcome"]) for r in read_records(tmp_path / f"{A}.jsonl")}
    assert got == {("receipt", result.message_id, B, "delivered"), ("receipt", result.message_id, C, "failed")}
    assert len(read_records(tmp_path / f"{A}.jsonl")) == 2  # each once, though the first try failed
    assert await states(central.service, result.message_id) == {B: DeliveryState.DELIVERED, C: DeliveryState.FAILED}
    sent_by_a = await central.service.store.list_sent(A)
    assert [m.kind for m in sent_by_a] == ["document"]  # no receipt was sent back for a receipt


async def test_fan_out_gives_each_recipient_its_own_delivery_and_statuses_come_back(make_world, tmp_path) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    local = await world.start("local")
    central = await world.start("central")
    result = await central.service.submit_document(A, [B, C, D], doc(steering=1))
    await wait_for(lambda: all_delivered(central.service, result.message_id, [B, C, D]), what="3 receipts")
    for code in (B, C, D):
        assert [r["message_id"] for r in read_records(tmp_path / f"{code}.jsonl")] == [result.message_id]

    for code, status in ((B, StatusCode.ACCEPTED), (C, StatusCode.ACCEPTED), (C, StatusCode.COMPLETED)):
        await local.service.submit_status(code, result.message_id, status, description="đã tiếp nhận")

    async def statuses_arrived() -> bool:
        d = {x.recipient: x.status_code for x in await central.service.store.deliveries(result.message_id)}
        return d.get(B) == "03" and d.get(C) == "06" and d.get(D) is None

    await wait_for(statuses_arrived, what="statuses in the sender's timeline")
    timeline = await central.service.store.timeline(result.message_id)
    assert [t.event for t in timeline if t.recipient == C and t.event.startswith("status:")] == [
        "status:03",
        "status:06",
    ]

    # The sender's E-Office is handed the statuses too: after its store records each one, so the last
    # can still be on its way when the timeline already shows it (seen with 4 pytest-xdist workers).
    def handed() -> list[str]:
        return sorted(r["status"] for r in read_records(tmp_path / f"{A}.jsonl") if r["kind"] == "status")

    await wait_until(lambda: len(handed()) >= 3, what="3 statuses handed to the sender's E-Office")
    assert handed() == ["03", "03", "06"]


async def test_revoke_and_replace_travel_as_documents_and_land_in_the_timeline(make_world, tmp_path) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    first = await central.service.submit_document(A, [B, C], doc())
    await wait_for(lambda: all_delivered(central.service, first.message_id, [B, C]), what="original delivered")
    replace = await central.service.submit_document(
        A, [B, C], doc("Chỉ thị (thay thế)", relates_to=first.message_id), operation=Operation.REPLACE
    )
    revoke = await central.service.submit_document(
        A, [B], doc("Thu hồi", relates_to=first.message_id), operation=Operation.REVOKE
    )
    await wait_for(lambda: all_delivered(central.service, replace.message_id, [B, C]), what="replace delivered")
    await wait_for(lambda: all_delivered(central.service, revoke.message_id, [B]), what="revoke delivered")
    ops = {(r["message_id"], r["operation"]) for r in read_records(tmp_path / f"{B}.jsonl")}
    assert ops == {(first.message_id, "new"), (replace.message_id, "replace"), (revoke.message_id, "revoke")}
    events = [(t.recipient, t.event) for t in await central.service.store.timeline(first.message_id)]
    assert (B, "replace-sent") in events and (C, "replace-sent") in events and (B, "revoke-sent") in events


async def test_duplicate_publish_is_delivered_once_and_receipts_stay_consistent(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    local = await world.start("local")
    central = await world.start("central")
    result = await central.service.submit_document(A, [B], doc())
    await wait_for(lambda: all_delivered(central.service, result.message_id, [B]), what="first delivery")
    sent = await central.service.store.get_message(result.message_id, Direction.OUT)
    for _ in range(3):
        await publish_raw(amqp_url, amqp_prefix, B, frame.encode(sent.envelope_xml, {}), message_id=result.message_id)
    await wait_until(lambda: local.consumer.handled >= 4, what="duplicates consumed")
    await asyncio.sleep(0.5)  # let the re-sent receipts arrive
    assert len(read_records(tmp_path / f"{B}.jsonl")) == 1
    timeline = await central.service.store.timeline(result.message_id)
    assert [t.event for t in timeline].count("delivered") == 1
    assert (await states(central.service, result.message_id))[B] is DeliveryState.DELIVERED


async def test_poison_and_tampered_messages_are_dead_lettered_never_delivered(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    await publish_raw(amqp_url, amqp_prefix, B, b"\x00garbage that is no frame", message_id="poison")

    # A correctly signed document whose subject is altered in flight; the sender tracks it.
    svc = central.service
    envelope = make_envelope(A, B, doc("Original subject"), sender_name="VPCP")
    signed = svc._sign(envelope, {})
    await svc.store.accept_outgoing(record_of(signed, Direction.OUT), [], track=True)
    tampered = signed.xml.replace(b"Original subject", b"Forged subject!!")
    assert tampered != signed.xml
    await publish_raw(amqp_url, amqp_prefix, B, frame.encode(tampered, {}), message_id=envelope.message_id)

    async def refused() -> bool:
        s = await states(svc, envelope.message_id)
        return s.get(B) is DeliveryState.FAILED

    await wait_for(refused, what="non-delivery receipt for the tampered document")
    dead = {d["message_id"]: d for d in await dead_letters(amqp_url, amqp_prefix)}
    assert dead["poison"]["reason_code"] == "frame-invalid"
    assert dead[envelope.message_id]["reason_code"].startswith("signature")
    assert read_records(tmp_path / f"{B}.jsonl") == []
    failed = [t for t in await svc.store.timeline(envelope.message_id) if t.event == "failed"]
    assert failed and failed[0].detail.startswith("signature")


async def test_envelope_signed_with_an_expired_certificate_is_refused_with_a_receipt(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    from datetime import timedelta

    from exchange.signing import pki
    from exchange.signing.sign import Signer, sign_envelope

    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    ca = pki.DevCA.load_or_create(tmp_path / "pki")
    key, cert = ca.issue(A, "VPCP (expired)", validity=timedelta(days=-1), name_suffix="expired")
    envelope = make_envelope(A, B, doc())
    signed = sign_envelope(envelope, Signer.from_files(key, cert, allow_invalid=True), {})
    await central.service.store.accept_outgoing(record_of(signed, Direction.OUT), [], track=True)
    await publish_raw(amqp_url, amqp_prefix, B, frame.encode(signed.xml, {}), message_id=envelope.message_id)
    await wait_for(lambda: _failed(central.service, envelope.message_id), what="refusal receipt")
    failed = [t for t in await central.service.store.timeline(envelope.message_id) if t.event == "failed"]
    assert "certificate-expired" in failed[0].detail
    assert read_records(tmp_path / f"{B}.jsonl") == []


async def _failed(service, message_id: str) -> bool:
    return (await states(service, message_id)).get(B) is DeliveryState.FAILED


async def test_transient_failures_retry_with_backoff_then_dead_letter_with_a_receipt(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    world = make_world(
        agencies(tmp_path, **{B: {"transient_failures": 2}, C: {"transient_failures": 99}, D: {"refuse": True}}),
        ["central", "local"],
        retry_delays=(1,),
        max_attempts=3,
    )
    await world.start("local")
    central = await world.start("central")
    result = await central.service.submit_document(A, [B, C, D], doc())

    async def settled() -> bool:
        s = await states(central.service, result.message_id)
        return (
            s.get(B) is DeliveryState.DELIVERED
            and s.get(C) is DeliveryState.FAILED
            and s.get(D) is DeliveryState.FAILED
        )

    await wait_for(settled, timeout=45, what="retry outcome")
    (rec,) = read_records(tmp_path / f"{B}.jsonl")
    assert rec["attempt"] == 3  # two transient failures, then delivered on the third try
    reasons = {
        t.recipient: t.detail for t in await central.service.store.timeline(result.message_id) if t.event == "failed"
    }
    assert reasons[C].startswith("retries-exhausted") and reasons[D].startswith("eoffice-refused")
    dead = {(d["recipient"], d["reason_code"]) for d in await dead_letters(amqp_url, amqp_prefix)}
    assert {(C, "retries-exhausted"), (D, "eoffice-refused")} <= dead


async def test_express_document_overtakes_a_backlog_of_normal_ones(make_world, tmp_path) -> None:
    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    await world.stop("local")  # its queues exist; nobody consumes: a backlog can build
    central = await world.start("central")
    svc = central.service
    for i in range(0, 1000, 100):
        await asyncio.gather(*(svc.submit_document(A, [B], doc(f"thường {i + j}")) for j in range(100)))
    express = await svc.submit_document(A, [B], doc("HỎA TỐC", priority=Priority.EXPRESS))

    async def outbox_empty() -> bool:
        return (await svc.store.outbox_stats())[0] == 0

    await wait_for(outbox_empty, timeout=60, what="backlog published")
    await world.start("local")
    await wait_until(lambda: len(read_records(tmp_path / f"{B}.jsonl")) >= 50, timeout=60, what="first deliveries")
    order = [r["message_id"] for r in read_records(tmp_path / f"{B}.jsonl")]
    assert express.message_id in order[:20], (
        f"express came at position {order.index(express.message_id) if express.message_id in order else 'never'}"
    )


@pytest.mark.slow
@pytest.mark.serial  # stops the shared RabbitMQ: deploy/test.sh runs it alone, after the parallel part
async def test_broker_restart_during_a_burst_loses_nothing_and_delivers_nothing_twice(make_world, tmp_path) -> None:
    total = 2000
    world = make_world(agencies(tmp_path), ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    svc = central.service
    ids: list[str] = []

    async def submit_all() -> None:
        for i in range(0, total, 50):
            ids.extend(
                r.message_id
                for r in await asyncio.gather(
                    *(svc.submit_document(A, [B], doc(f"văn bản {i + j}")) for j in range(50))
                )
            )

    submitting = asyncio.create_task(submit_all())
    await wait_until(lambda: len(read_records(tmp_path / f"{B}.jsonl")) >= 200, timeout=120, what="burst under way")
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await asyncio.sleep(2)
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(wait_for_broker)
    await submitting

    async def all_receipts() -> bool:
        counts = await svc.store.delivery_counts()
        return counts.get(DeliveryState.DELIVERED.value, 0) >= total

    await wait_for(all_receipts, timeout=240, what=f"{total} receipts")
    received = [r["message_id"] for r in read_records(tmp_path / f"{B}.jsonl")]
    assert len(set(received)) == total, "a document was lost"
    assert len(received) == total, f"{len(received) - total} documents were handed over twice"
    assert set(received) == set(ids)


@pytest.mark.slow
async def test_sigkill_of_the_receiving_node_loses_nothing_and_delivers_nothing_twice(make_world, tmp_path) -> None:
    total = 600
    specs = agencies(tmp_path)
    specs[1] = AgencySpec(B, "agency B", node="local", adapter="pull")  # the inbox is the store: exactly once
    world = make_world(specs, ["central", "local"])
    central = await world.start("central")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "exchange.cli.main", "serve", "--config", str(world.configs["local"])]
    with open(tmp_path / "local.log", "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        try:
            svc = central.service
            ids = []
            for i in range(0, total, 50):
                ids.extend(
                    r.message_id
                    for r in await asyncio.gather(
                        *(svc.submit_document(A, [B], doc(f"văn bản {i + j}")) for j in range(50))
                    )
                )

            async def some_delivered(n: int) -> bool:
                return (await svc.store.delivery_counts()).get("delivered", 0) >= n

            await wait_for(lambda: some_delivered(100), timeout=120, what="deliveries under way")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
            await wait_for(lambda: some_delivered(total), timeout=240, what=f"all {total} receipts after restart")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    from exchange.store import open_store

    store = open_store(world.config("local").store_url)
    await store.open()
    try:
        inbox = await store.list_inbox(B, include_acked=True, limit=10_000)
        report = await store.verify_journal()
    finally:
        await store.close()
    assert sorted(e.message_id for e in inbox) == sorted(ids)  # each exactly once in the E-Office's inbox
    assert report.ok
    for mid in ids[:50]:
        events = [t.event for t in await central.service.store.timeline(mid)]
        assert events.count("delivered") == 1


async def test_an_edxml_status_package_naming_the_document_by_document_id_reaches_the_sender(
    make_world, tmp_path
) -> None:
    # An E-Office never sees the bus's message ids: its status package names the document by edXML
    # DocumentId ({sender},{promulgation date},{number}/{notation}), as the national hub's packages do.
    from datetime import date

    from exchange.envelope.model import Promulgation
    from exchange.errors import NotFoundError

    world = make_world(agencies(tmp_path), ["central", "local"])
    local = await world.start("local")
    central = await world.start("central")
    sent = await central.service.submit_document(A, [B], doc(promulgation=Promulgation("Hà Nội", date(2024, 3, 15))))
    await wait_for(lambda: all_delivered(central.service, sent.message_id, [B]), what="delivered receipt")

    package = (Path(__file__).parent.parent / "data/edxml/status_03_accepted.edxml").read_bytes()
    status = await local.service.submit_edxml(B, package)

    async def accepted() -> bool:
        return {d.recipient: d.status_code for d in await central.service.store.deliveries(sent.message_id)} == {
            B: "03"
        }

    await wait_for(accepted, what="status 03 in the sender's timeline")
    received = [r for r in read_records(tmp_path / f"{A}.jsonl") if r["message_id"] == status.message_id]
    assert [r["status"] for r in received] == ["03"]

    unknown = package.replace(b"12/CT-TTg</edXML:DocumentId>", b"99/CT-TTg</edXML:DocumentId>")
    with pytest.raises(NotFoundError, match="99/CT-TTg"):
        await local.service.submit_edxml(B, unknown)

    # The sender's E-Office revokes the document with an edXML package that names it the same way.
    revoke = (Path(__file__).parent.parent / "data/edxml/document_revoke.edxml").read_bytes()
    revocation = await central.service.submit_edxml(A, revoke)
    record = await central.service.store.get_message(revocation.message_id)
    assert record is not None and (record.operation, record.relates_to) == ("revoke", sent.message_id)
    events = [t.event for t in await central.service.store.timeline(sent.message_id) if t.recipient == B]
    assert "revoke-sent" in events


async def test_a_refused_topology_is_logged_and_retried_until_the_operator_fixes_it(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    """A queue left over with other arguments makes the broker refuse the node's declaration
    (PRECONDITION_FAILED). The node says so, in the broker's words, and keeps trying; once
    the operator deletes the queue it connects without a restart."""
    from structlog.testing import capture_logs

    squatted = Names(amqp_prefix).node_queue("local", Lane.NORMAL)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(squatted, durable=True)  # a classic queue, not the quorum queue wanted
        world = make_world(agencies(tmp_path), ["local"])
        with capture_logs() as logs:
            local = await world.start("local", connected=False)
            await wait_until(
                lambda: any(e["event"] == "broker.setup_failed" for e in logs), timeout=30, what="broker.setup_failed"
            )
            await asyncio.sleep(1.5)
            assert not local._connected.is_set()
            failure = next(e for e in logs if e["event"] == "broker.setup_failed")
            assert "PRECONDITION_FAILED" in failure["detail"] and squatted in failure["detail"], failure
            await channel.queue_delete(squatted)
            await local.wait_connected(60)
        assert not [t for t in local._tasks if t.done() and t.exception() is not None], "a node task died"
        result = await world.service("local").submit_document(B, [C], doc())  # and it works
        await wait_for(lambda: all_delivered(world.service("local"), result.message_id, [C]), what="delivered")
    finally:
        await connection.close()


async def test_an_unexpected_error_while_receiving_gives_one_non_delivery_receipt_and_one_dead_letter(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    """A bug in the receive path (here: the verifier raising a library's own error, as a malformed
    certificate once made it) is answered once: a signed non-delivery receipt to the sender, a
    dead letter with the exception for the operator. It used to be requeued to the delivery limit
    (21 tracebacks) and dead-lettered by the broker with no receipt at all."""
    from exchange.service import RECEIVE_ERROR, RECEIVE_ERROR_TEXT

    world = make_world(agencies(tmp_path), ["central", "local"])
    local = await world.start("local")
    central = await world.start("central")
    real = local.service.verifier.verify
    calls = 0

    def verify(xml: bytes, parts):
        nonlocal calls
        if b"Poisoned subject" in xml:
            calls += 1
            raise ValueError("error parsing asn1 value: duplicate extension")
        return real(xml, parts)

    local.service.verifier.verify = verify
    result = await central.service.submit_document(A, [B], doc("Poisoned subject"))
    await wait_for(lambda: _failed(central.service, result.message_id), what="non-delivery receipt")
    failed = [t for t in await central.service.store.timeline(result.message_id) if t.event == "failed"]
    assert failed[0].detail == f"{RECEIVE_ERROR}: {RECEIVE_ERROR_TEXT}"  # no foreign exception text
    (dead,) = [d for d in await dead_letters(amqp_url, amqp_prefix) if d["message_id"] == result.message_id]
    assert dead["reason_code"] == RECEIVE_ERROR and "ValueError" in dead["reason"], dead
    assert calls == 1  # answered at the first occurrence, not retried
    # The node keeps working for everything else.
    ok = await central.service.submit_document(A, [B], doc("Chỉ thị bình thường"))
    await wait_for(lambda: all_delivered(central.service, ok.message_id, [B]), what="next document delivered")


async def _dlq_replay(config: Path, *args: str) -> tuple[int, str, str]:
    """Run the real `exchange dlq replay` without blocking the nodes running on this loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange.cli.main",
        "dlq",
        "replay",
        "--config",
        str(config),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_a_replayed_dead_letter_is_delivered_and_the_timeline_shows_replayed_then_delivered(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    """The runbook's step: the E-Office refused, the operator fixes it and replays the dead letter.
    The recipient must hand it over (its delivery had failed), and the sender must see it; a replay
    of a message that was delivered still delivers nothing twice."""
    world = make_world(agencies(tmp_path, **{B: {"refuse": True}}), ["central", "local"])
    local = await world.start("local")
    central = await world.start("central")
    result = await central.service.submit_document(A, [B], doc())
    mid = result.message_id
    await wait_for(lambda: _failed(central.service, mid), what="non-delivery receipt")

    async def dead_lettered() -> bool:
        return any(d["message_id"] == mid for d in await dead_letters(amqp_url, amqp_prefix))

    await wait_for(dead_lettered, what="the dead letter")
    adapter = local.service.adapters[B]
    adapter.options = {**adapter.options, "refuse": False}  # the recipient's E-Office is fixed

    code, out, err = await _dlq_replay(world.configs["local"], "--id", mid, "--reason", "TICKET-42 E-Office fixed")
    assert code == 0 and "replayed 1 message(s)" in out, out + err
    await wait_for(lambda: all_delivered(central.service, mid, [B]), what="delivered after the replay")
    (record,) = read_records(tmp_path / f"{B}.jsonl")
    assert record["message_id"] == mid
    timeline = [
        (t.event, t.detail) for t in await central.service.store.timeline(mid) if t.event not in ("submitted", "queued")
    ]
    assert [e for e, _ in timeline] == ["failed", "replayed", "delivered"], timeline
    assert timeline[1][1] == "TICKET-42 E-Office fixed"
    assert not await dead_lettered()

    # A dead letter of a copy that was in fact delivered (say the broker dead-lettered a redelivery):
    # replaying it is a duplicate at the recipient.
    sent = await central.service.store.get_message(mid, Direction.OUT)
    handled = local.consumer.handled
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        dlx = await channel.get_exchange(Names(amqp_prefix).dlx)
        await dlx.publish(
            aio_pika.Message(
                frame.encode(sent.envelope_xml, {}),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{mid}/{B}/dead",
                headers={
                    "x-message-id": mid,
                    "x-recipient": B,
                    "x-sender": A,
                    "x-attempt": 1,
                    "x-routing-key": routing_key(B, Lane.NORMAL),
                    "x-exchange-dead-code": "delivery_limit",
                },
            ),
            routing_key="",
            timeout=10,
        )
    finally:
        await connection.close()
    code, out, err = await _dlq_replay(world.configs["local"], "--id", mid, "--reason", "again")
    assert code == 0 and "replayed 1 message(s)" in out, out + err
    await wait_until(lambda: local.consumer.handled > handled, what="the second replay consumed")
    await asyncio.sleep(0.5)  # let a (wrong) second delivery or receipt land if there were one
    assert len(read_records(tmp_path / f"{B}.jsonl")) == 1
    events = [t.event for t in await central.service.store.timeline(mid)]
    assert events.count("delivered") == 1 and events.count("replayed") == 1, events
