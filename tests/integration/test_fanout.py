"""National scale over the real RabbitMQ: the per-node topology, fan-out, migration of legacy queues."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import aio_pika
import aiormq
import pytest

from exchange.adapters.base import OutgoingFile
from exchange.adapters.recording import read_records
from exchange.devworld import AgencySpec, NodeSpec, build_world, national_specs
from exchange.envelope.model import DocumentCode, DocumentInfo, Priority
from exchange.routing.lanes import Lane, routing_key
from exchange.routing.national import GOVERNMENT_OFFICE
from exchange.store.base import DeliveryState
from exchange.transport.topology import Names, agency_queue_arguments
from tests.conftest import rabbitmqctl
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.broker]

A, B, C, D = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29", "000.00.31.H41"


def doc(subject: str = "Chỉ thị về chuyển đổi số", priority: Priority = Priority.NORMAL) -> DocumentInfo:
    return DocumentInfo(code=DocumentCode("12", "CT-TTg"), subject=subject, priority=priority)


def rec(tmp: Path, code: str, node: str) -> AgencySpec:
    return AgencySpec(
        code,
        f"agency {code}",
        node=node,
        adapter="recording",
        options={"path": str(tmp / "eoffice" / f"{code}.jsonl")},
        ec=True,
    )


def broker_queues(vhost: str, prefix: str) -> list[str]:
    out = rabbitmqctl("list_queues", "-p", vhost, "name", "--no-table-headers", "--quiet")
    return sorted(n.strip() for n in out.splitlines() if n.strip().startswith(f"{prefix}."))


async def states(service, message_id: str) -> dict[str, DeliveryState]:
    return {d.recipient: d.state for d in await service.store.deliveries(message_id)}


async def queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        try:
            await channel.declare_queue(name, passive=True)
            return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    finally:
        await connection.close()


async def test_a_directive_to_500_agencies_reaches_each_once_on_three_queues_and_every_receipt_returns(
    tmp_path, amqp_url, amqp_prefix, amqp_vhost
) -> None:
    from exchange.config import load_config
    from exchange.node import Node

    specs, nodes = national_specs(tmp_path, "central", communes=466)  # 34 provinces + 466 communes
    recipients = [s.code for s in specs if s.node == "recipients"]
    assert len(recipients) == 500
    # Both nodes share this process (and a broker other work may be loading): confirms of a
    # 500-copy burst may take longer than the default 10 s, and a timed-out copy is published again.
    configs = build_world(
        tmp_path,
        specs,
        [NodeSpec(n, amqp_url=amqp_url, prefix=amqp_prefix, http_port=0, confirm_timeout=30.0) for n in nodes],
    )
    started: list[Node] = []
    try:
        for name in ("recipients", "national"):
            node = Node(load_config(configs[name]), serve_http=False, workers=16)
            started.append(node)
            await node.start()
            await node.wait_connected(60)
        national = started[1].service
        attachment = os.urandom(64 * 1024)
        result = await national.submit_document(
            GOVERNMENT_OFFICE, recipients, doc(), [OutgoingFile("chi-thi.pdf", attachment, "application/pdf")]
        )

        async def all_receipts() -> bool:
            s = await states(national, result.message_id)
            return len(s) == 500 and all(v is DeliveryState.DELIVERED for v in s.values())

        await wait_for(all_receipts, timeout=120, what="500 delivered receipts")
        relay = started[1].relay
        assert relay is not None and (relay.published, relay.copies) == (500, 1)  # one copy for the node
        handed = Counter()
        for code in recipients:
            for r in read_records(tmp_path / "eoffice" / f"{code}.jsonl"):
                handed[(r["recipient"], r["message_id"])] += 1
        assert handed == Counter({(code, result.message_id): 1 for code in recipients})
        # Broker cost follows nodes, not agencies: 3 lanes per node, the DLQ, the retry queues.
        queues = broker_queues(amqp_vhost, amqp_prefix)
        assert len(queues) == 3 * len(nodes) + 1 + len(NodeSpec("x").retry_delays), queues
    finally:
        for node in reversed(started):
            await node.stop()
        await _delete_prefix(amqp_url, amqp_prefix, amqp_vhost)


async def _delete_prefix(amqp_url: str, prefix: str, vhost: str) -> None:
    """Remove this test's queues now (the session's vhost goes at the end, but the broker is shared)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        for name in broker_queues(vhost, prefix):
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.close()
    finally:
        await connection.close()


async def _declare_legacy_topology(amqp_url: str, prefix: str, agencies: list[str], delivery_limit: int) -> None:
    """What a node of the per-agency topology left behind: route, DLX, DLQ and three queues per agency."""
    names = Names(prefix)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        route = await channel.declare_exchange(names.route, aio_pika.ExchangeType.DIRECT, durable=True)
        dlx = await channel.declare_exchange(names.dlx, aio_pika.ExchangeType.FANOUT, durable=True)
        dlq = await channel.declare_queue(names.dlq, durable=True, arguments={"x-queue-type": "quorum"})
        await dlq.bind(dlx, routing_key="")
        for agency in agencies:
            for lane in Lane:
                q = await channel.declare_queue(
                    names.agency_queue(agency, lane),
                    durable=True,
                    arguments=agency_queue_arguments(names, delivery_limit),
                )
                await q.bind(route, routing_key=routing_key(agency, lane))
    finally:
        await connection.close()


async def test_messages_left_in_legacy_per_agency_queues_are_moved_delivered_once_and_the_queues_deleted(
    make_world, tmp_path, amqp_url, amqp_prefix, amqp_vhost
) -> None:
    world = make_world(
        [rec(tmp_path, A, "central"), rec(tmp_path, B, "local"), rec(tmp_path, C, "local"), rec(tmp_path, D, "local")],
        ["central", "local"],
    )
    await _declare_legacy_topology(amqp_url, amqp_prefix, [B, C, D], world.config("local").amqp.delivery_limit)
    central = await world.start("central")
    assert central.relay is not None
    central.relay.bundle_max = 1  # as the per-agency release published: a copy per recipient
    svc = central.service
    # Documents for B and C (normal and express lanes) published while only the legacy queues exist.
    sent = [await svc.submit_document(A, [B, C], doc(f"văn bản {i}")) for i in range(4)]
    sent.append(await svc.submit_document(A, [B], doc("HỎA TỐC", priority=Priority.EXPRESS)))

    async def outbox_empty() -> bool:
        return (await svc.store.outbox_stats())[0] == 0

    await wait_for(outbox_empty, what="documents published into the legacy queues")
    legacy = [Names(amqp_prefix).agency_queue(code, lane) for code in (B, C, D) for lane in Lane]
    assert all([await queue_exists(amqp_url, q) for q in legacy])

    local = await world.start("local")
    assert local.migration is not None
    moved = await local.migration
    assert moved == 9  # 4 documents x 2 recipients + 1 express

    async def all_delivered() -> bool:
        for r in sent:
            s = await states(svc, r.message_id)
            if not s or any(v is not DeliveryState.DELIVERED for v in s.values()):
                return False
        return True

    await wait_for(all_delivered, what="receipts for every migrated document")
    for code, expected in ((B, 5), (C, 4), (D, 0)):
        ids = [r["message_id"] for r in read_records(tmp_path / "eoffice" / f"{code}.jsonl")]
        assert len(ids) == expected and len(set(ids)) == expected, (code, ids)
    assert not [q for q in legacy if await queue_exists(amqp_url, q)], "legacy queues left behind"
    assert not [q for q in broker_queues(amqp_vhost, amqp_prefix) if ".agency." in q]

    # A second start finds the marker and does not look for legacy queues again.
    await world.stop("local")
    again = await world.start("local")
    assert await again.migration == 0


async def test_bindings_of_an_agency_the_node_no_longer_hosts_are_removed_at_start(
    tmp_path, amqp_url, amqp_prefix
) -> None:
    from exchange.config import load_config
    from exchange.node import Node

    def world(d_node: str) -> dict[str, Path]:
        specs = [rec(tmp_path, A, "central"), rec(tmp_path, B, "local"), rec(tmp_path, D, d_node)]
        return build_world(
            tmp_path,
            specs,
            [
                NodeSpec(n, amqp_url=amqp_url, prefix=amqp_prefix, http_port=0)
                for n in ("central", "local", "elsewhere")
            ],
        )

    async def routable(code: str) -> bool:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(Names(amqp_prefix).route)
            try:
                await exchange.publish(
                    aio_pika.Message(b"probe", message_id=os.urandom(4).hex()),
                    routing_key=routing_key(code, Lane.NORMAL),
                    mandatory=True,
                    timeout=10,
                )
                return True
            except aio_pika.exceptions.DeliveryError:
                return False
        finally:
            await connection.close()

    configs = world("local")
    node = Node(load_config(configs["local"]), serve_http=False)
    await node.start()
    await node.wait_connected(30)
    await node.stop()
    assert await routable(D)  # (the probe waits in local's lane and is dead-lettered as not hosted)

    configs = world("elsewhere")  # D moved to another node, which has not started yet
    node = Node(load_config(configs["local"]), serve_http=False)
    await node.start()
    await node.wait_connected(30)
    try:
        assert node.topology is not None and node.topology.unbound == (D,)
        assert not await routable(D), "the node still takes D's messages"
        assert await routable(B)
    finally:
        await node.stop()


async def test_the_recipient_is_the_routing_key_not_a_header(make_world, tmp_path, amqp_url, amqp_prefix) -> None:
    """A header naming another agency changes nothing: the node resolves the recipient from the
    routing key it was routed with, and the signed To list has the last word."""
    from exchange.envelope.model import AgencyRef, Envelope, Header, Kind, new_message_id, utcnow
    from exchange.routing import frame

    world = make_world(
        [rec(tmp_path, A, "central"), rec(tmp_path, B, "local"), rec(tmp_path, C, "local")], ["central", "local"]
    )
    await world.start("local")
    central = await world.start("central")
    svc = central.service
    envelope = Envelope(
        Header(
            message_id=new_message_id(),
            kind=Kind.DOCUMENT,
            sender=AgencyRef(A),
            recipients=(AgencyRef(C),),
            created_at=utcnow(),
            document=doc(),
        )
    )
    body = frame.encode(svc._sign(envelope, {}).xml, {})
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(Names(amqp_prefix).route)
        # Routed to B, headers claiming C (to whom the envelope is really addressed).
        await exchange.publish(
            aio_pika.Message(
                body,
                message_id=f"{envelope.message_id}/x/1",
                headers={
                    "x-recipient": C,
                    "x-routing-key": routing_key(C, Lane.NORMAL),
                    "x-message-id": envelope.message_id,
                },
            ),
            routing_key=routing_key(B, Lane.NORMAL),
            timeout=10,
        )
    finally:
        await connection.close()
    from tests.integration.test_routing import dead_letters

    async def dead() -> bool:
        return any(d["message_id"] == envelope.message_id for d in await dead_letters(amqp_url, amqp_prefix))

    await wait_for(dead, what="the misrouted copy dead-lettered")
    (entry,) = [d for d in await dead_letters(amqp_url, amqp_prefix) if d["message_id"] == envelope.message_id]
    assert entry["reason_code"] == "recipient-mismatch"
    assert read_records(tmp_path / "eoffice" / f"{B}.jsonl") == []
    assert read_records(tmp_path / "eoffice" / f"{C}.jsonl") == []


async def test_one_copy_serves_every_agency_of_a_node_and_each_recipient_retries_and_dead_letters_alone(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    """A fan-out to three agencies of one node is one AMQP message; each recipient's outcome is its own."""
    from tests.integration.test_routing import dead_letters

    flaky = AgencySpec(
        C,
        "flaky",
        node="local",
        adapter="recording",
        ec=True,
        options={"path": str(tmp_path / "eoffice" / f"{C}.jsonl"), "transient_failures": 1},
    )
    refusing = AgencySpec(
        D,
        "refusing",
        node="local",
        adapter="recording",
        ec=True,
        options={"path": str(tmp_path / "eoffice" / f"{D}.jsonl"), "refuse": "no such register"},
    )
    world = make_world([rec(tmp_path, A, "central"), rec(tmp_path, B, "local"), flaky, refusing], ["central", "local"])
    await world.start("local")
    central = await world.start("central")
    svc = central.service
    result = await svc.submit_document(A, [B, C, D], doc())

    async def settled() -> bool:
        s = await states(svc, result.message_id)
        return (
            s.get(B) is DeliveryState.DELIVERED
            and s.get(C) is DeliveryState.DELIVERED
            and s.get(D) is DeliveryState.FAILED
        )

    await wait_for(settled, what="B and C delivered, D failed")
    assert central.relay is not None
    assert (central.relay.published, central.relay.copies) == (3, 1)  # three recipients, one copy
    handed = {code: [r["message_id"] for r in read_records(tmp_path / "eoffice" / f"{code}.jsonl")] for code in (B, C)}
    assert handed == {B: [result.message_id], C: [result.message_id]}  # C on its second attempt
    assert read_records(tmp_path / "eoffice" / f"{D}.jsonl") == []

    async def dead() -> bool:
        return any(d["message_id"] == result.message_id for d in await dead_letters(amqp_url, amqp_prefix))

    await wait_for(dead, what="D's dead letter")
    (entry,) = [d for d in await dead_letters(amqp_url, amqp_prefix) if d["message_id"] == result.message_id]
    # D's own copy: its recipient and routing key, so `dlq replay` sends it to D alone.
    assert (entry["recipient"], entry["routing_key"]) == (D, routing_key(D, Lane.NORMAL))
    timeline = (await svc.track(A, result.message_id)).timeline
    assert [e.event for e in timeline if e.recipient == C].count("delivered") == 1


async def test_a_bundle_header_can_narrow_a_copy_but_never_widen_it(
    make_world, tmp_path, amqp_url, amqp_prefix
) -> None:
    """Listing an agency the signed To does not name, or routing by one the bundle does not list, delivers nothing
    extra: the signed envelope and the routing key keep the last word."""
    from exchange.envelope.model import AgencyRef, Envelope, Header, Kind, new_message_id, utcnow
    from exchange.routing import frame
    from tests.integration.test_routing import dead_letters

    world = make_world(
        [rec(tmp_path, A, "central"), rec(tmp_path, B, "local"), rec(tmp_path, C, "local")], ["central", "local"]
    )
    await world.start("local")
    central = await world.start("central")
    svc = central.service

    def signed_to(*codes: str) -> tuple[str, bytes]:
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.DOCUMENT,
                sender=AgencyRef(A),
                recipients=tuple(AgencyRef(c) for c in codes),
                created_at=utcnow(),
                document=doc(),
            )
        )
        return envelope.message_id, frame.encode(svc._sign(envelope, {}).xml, {})

    widened, body_b = signed_to(B)  # addressed to B only, bundled for B and C
    unlisted, body_c = signed_to(B, C)  # routed by B, listing only C
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(Names(amqp_prefix).route)
        for mid, body, listed in ((widened, body_b, f"{B},{C}"), (unlisted, body_c, C)):
            await exchange.publish(
                aio_pika.Message(
                    body, message_id=f"{mid}/bundle/1", headers={"x-message-id": mid, "x-recipients": listed}
                ),
                routing_key=routing_key(B, Lane.NORMAL),
                timeout=10,
            )
    finally:
        await connection.close()

    async def both_dead() -> bool:
        ids = [d["message_id"] for d in await dead_letters(amqp_url, amqp_prefix)]
        return widened in ids and unlisted in ids

    await wait_for(both_dead, what="the refused parts dead-lettered")
    letters = {
        (d["message_id"], d["recipient"]): d["reason_code"]
        for d in await dead_letters(amqp_url, amqp_prefix)
        if d["message_id"] in (widened, unlisted)
    }
    assert letters == {(widened, C): "recipient-mismatch", (unlisted, B): "bundle-invalid"}
    # B got the document addressed to it; C got nothing (not from the widened bundle, not from the other).
    assert [r["message_id"] for r in read_records(tmp_path / "eoffice" / f"{B}.jsonl")] == [widened]
    assert read_records(tmp_path / "eoffice" / f"{C}.jsonl") == []
