"""The RabbitMQ topology, declared from code and idempotently: three lane queues per node.

::

    {prefix}.route   direct   ──{code}.{lane}──▶ {prefix}.node.{node}.{lane}   quorum, one per lane and node
                              (one binding per hosted agency and lane)   │ x-delivery-limit exceeded / rejected
    {prefix}.dlx     fanout  ◀──────────────────────────────────────────┘ ──▶ {prefix}.dlq   quorum, keeps the reason
    {prefix}.retry   headers ──x-retry-delay=N──▶ {prefix}.retry.{N}s  classic, TTL N s
                                                   │ expired: dead-lettered with the original key
                                                   └──▶ {prefix}.route

Broker cost grows with the number of nodes, not of agencies: a quorum queue costs the
broker file handles and memory (about three handles per queue; 10,065 per-agency queues
took 30,291 handles and 2 GB, PITFALLS.md), a binding costs a row in a table. The
routing key stays ``{agency code}.{lane}``, so links between hubs (shovels bound to the
route exchange) and senders do not know or care which node hosts an agency.

The recipient of a message is the agency named by the routing key it was routed with
(``message.routing_key``): the broker sets it, a publisher cannot make a message bound
for one agency arrive under another's key without the route exchange's bindings
agreeing. The consumer checks it against the agencies the node hosts, and the service
checks it against the signed envelope's To list, which has the final word.

Retries are republished copies (the consumer acks the original), so the retry loop
always passes through an explicit publish: RabbitMQ drops messages that cycle through
dead-lettering with no rejection in the loop (PITFALLS.md). Quorum queues dead-letter
at-least-once, which needs ``overflow=reject-publish``; every lane queue has a DLX and
an explicit delivery limit.

Before this topology each agency had its own three queues, ``{prefix}.agency.{code}.{lane}``;
:func:`migrate_legacy` moves what is left in them into the node's lanes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import aiormq
import aiormq.abc
import pamqp.commands
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from pamqp.common import FieldTable

from exchange.routing.lanes import Lane, parse_routing_key, routing_key

log = structlog.get_logger("exchange.topology")

RETRY_HEADER = "x-retry-delay"

#: Channels used side by side to declare bindings. Bindings go out without waiting for
#: each answer (``nowait``) and one synchronous method per channel then proves they all
#: succeeded: the broker handles a channel's methods in order and closes the channel on
#: the first failure. One round trip per binding made 10,065 bindings take 27 s on a
#: loaded machine.
BIND_CHANNELS = 16


@dataclass(frozen=True, slots=True)
class Names:
    """Every name the topology uses, derived from one prefix."""

    prefix: str

    @property
    def route(self) -> str:
        return f"{self.prefix}.route"

    @property
    def retry(self) -> str:
        return f"{self.prefix}.retry"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    def node_queue(self, node: str, lane: Lane) -> str:
        return f"{self.prefix}.node.{node}.{lane.value}"

    def agency_queue(self, agency: str, lane: Lane) -> str:
        """The legacy per-agency queue (before the per-node topology); only migration uses it."""
        return f"{self.prefix}.agency.{agency}.{lane.value}"

    def migrated_marker(self, node: str) -> str:
        """An exchange whose existence records that ``node`` has emptied its legacy queues."""
        return f"{self.prefix}.node.{node}.migrated"

    def retry_queue(self, delay: int) -> str:
        return f"{self.prefix}.retry.{delay}s"


@dataclass(slots=True)
class Topology:
    """Declared exchanges and queues (kept as strong references: RobustConnection restores only what we hold)."""

    names: Names
    node: str
    route: AbstractExchange
    retry: AbstractExchange
    dlx: AbstractExchange
    dlq: AbstractQueue
    node_queues: dict[Lane, AbstractQueue]
    hosted: frozenset[str]
    retry_delays: tuple[int, ...]
    #: True when the DLQ existed before this declaration: the prefix has been used before,
    #: so legacy per-agency queues may exist (a fresh prefix cannot have any).
    prefix_existed: bool = False
    unbound: tuple[str, ...] = field(default=())

    def retry_delay(self, attempt: int) -> int:
        """Backoff before attempt ``attempt + 1`` (attempts count from 1)."""
        return self.retry_delays[min(max(attempt, 1), len(self.retry_delays)) - 1]

    def recipient_of(self, key: str | None) -> str | None:
        """The hosted agency a routing key names, or None (foreign, garbled or not hosted here)."""
        if not key:
            return None
        try:
            agency, _ = parse_routing_key(key)
        except ValueError:
            return None
        return agency if agency in self.hosted else None


def lane_queue_arguments(names: Names, delivery_limit: int) -> FieldTable:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dlx,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": delivery_limit,
    }


#: Kept under its old name: the legacy per-agency queues were declared with the same arguments.
agency_queue_arguments = lane_queue_arguments


async def _exists(connection: AbstractConnection, *, queue: str | None = None, exchange: str | None = None) -> bool:
    """Passive declare on a throw-away channel (a 404 closes the channel it happens on)."""
    channel = await connection.channel()
    try:
        if queue is not None:
            await channel.declare_queue(queue, passive=True)
        else:
            assert exchange is not None
            await channel.declare_exchange(exchange, passive=True)
        return True
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()


async def _on_channels(
    connection: AbstractConnection, jobs: Sequence[tuple[str, str, str]], *, bind: bool, channels: int = BIND_CHANNELS
) -> None:
    """(Un)bind ``(queue, exchange, key)`` triples over up to ``channels`` channels side by side."""
    if not jobs:
        return
    width = max(1, min(channels, len(jobs)))
    opened = [await connection.channel() for _ in range(width)]

    async def run(channel: AbstractChannel, part: Sequence[tuple[str, str, str]]) -> None:
        raw = await channel.get_underlay_channel()  # one method frame per binding, no aio-pika bookkeeping
        for i, (queue, exchange, key) in enumerate(part):
            if bind:
                await _bind_nowait(raw, queue, exchange, key)
            else:
                # queue.unbind has no nowait flag in AMQP 0-9-1: one round trip each (few, and rare)
                await raw.queue_unbind(queue, exchange, routing_key=key)
            if i % 500 == 499:
                await raw.basic_qos(prefetch_count=0)  # a synchronous method: paces the writes, surfaces errors
        # The answer to this synchronous method comes after every binding above was applied,
        # or the channel is closed with the first binding's error, which this then raises.
        await raw.basic_qos(prefetch_count=0)

    try:
        await asyncio.gather(*(run(c, jobs[i::width]) for i, c in enumerate(opened)))
    finally:
        for c in opened:
            if not c.is_closed:
                await c.close()


async def _bind_nowait(raw: aiormq.abc.AbstractChannel, queue: str, exchange: str, key: str) -> None:
    """queue.bind with nowait: the frame is written and no answer awaited.

    aiormq 6.9's ``queue_bind(nowait=True)`` still waits for a BindOk, which the broker never
    sends for nowait, so it hangs; the frame goes straight to the channel's write queue
    instead (frames of one channel keep their order there).
    """
    frame = pamqp.commands.Queue.Bind(queue=queue, exchange=exchange, routing_key=key, nowait=True)
    # the connection's write queue, which the channel writes to as well (aiormq.Channel.write_queue)
    await raw.connection.write_queue.put(aiormq.abc.ChannelFrame.marshall(channel_number=raw.number, frames=[frame]))


class BindingLedger:
    """Which agencies a node bound last time, kept in its data dir, to remove stale bindings at start.

    AMQP 0-9-1 cannot list bindings (only the management plugin can), so the node remembers
    what it bound, per broker URL (without credentials), prefix and node name.
    """

    def __init__(self, path: Path, scope: str) -> None:
        self.path = path
        self.scope = scope

    def _all(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def previous(self) -> set[str]:
        return set(self._all().get(self.scope, []))

    def record(self, agencies: Iterable[str]) -> None:
        data = self._all()
        data[self.scope] = sorted(agencies)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.path)


async def declare(
    channel: AbstractChannel,
    *,
    prefix: str,
    node: str,
    agencies: Sequence[str],
    retry_delays: tuple[int, ...],
    delivery_limit: int,
    connection: AbstractConnection | None = None,
    stale: Iterable[str] = (),
    bound: Iterable[str] | None = None,
) -> Topology:
    """Declare (or confirm) the topology of one node: exchanges, retry and dead-letter queues,
    the node's three lane queues and one binding per hosted agency and lane.

    ``stale`` names agencies this node bound before and hosts no more: their bindings are
    removed, so their messages stop landing here. ``bound`` names agencies bound at an
    earlier start: when the three lane queues already existed (durable queues keep their
    bindings across broker restarts) only the others are bound, so a restart of a node
    hosting 3,355 agencies does not redeclare 10,065 bindings; a lane queue created now
    (first start, or deleted by hand) gets every binding. With ``connection`` the bindings
    go over several channels side by side.
    """
    names = Names(prefix)
    hosted = frozenset(agencies)
    prefix_existed = connection is not None and await _exists(connection, queue=names.dlq)
    route = await channel.declare_exchange(names.route, aio_pika.ExchangeType.DIRECT, durable=True)
    retry = await channel.declare_exchange(names.retry, aio_pika.ExchangeType.HEADERS, durable=True)
    dlx = await channel.declare_exchange(names.dlx, aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(names.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx, routing_key="")
    for delay in retry_delays:
        q = await channel.declare_queue(
            names.retry_queue(delay),
            durable=True,
            arguments={"x-message-ttl": delay * 1000, "x-dead-letter-exchange": names.route},
        )
        await q.bind(retry, routing_key="", arguments={"x-match": "all", RETRY_HEADER: str(delay)})
    lanes_existed = connection is not None and all(
        [await _exists(connection, queue=names.node_queue(node, lane)) for lane in Lane]
    )
    args = lane_queue_arguments(names, delivery_limit)
    queues = {
        lane: await channel.declare_queue(names.node_queue(node, lane), durable=True, arguments=args) for lane in Lane
    }
    known = set(bound or ()) if lanes_existed else set()
    bindings = [(queues[lane].name, names.route, routing_key(a, lane)) for a in sorted(hosted - known) for lane in Lane]
    gone = sorted(set(stale) - hosted)
    unbindings = [(queues[lane].name, names.route, routing_key(a, lane)) for a in gone for lane in Lane]
    started = time.perf_counter()
    if connection is not None:
        await _on_channels(connection, bindings, bind=True)
        await _on_channels(connection, unbindings, bind=False)
    else:
        raw = await channel.get_underlay_channel()
        for queue_name, x, k in bindings:
            await raw.queue_bind(queue_name, x, routing_key=k)
        for queue_name, x, k in unbindings:
            await raw.queue_unbind(queue_name, x, routing_key=k)
    log.info(
        "topology.declared",
        node=node,
        agencies=len(hosted),
        bindings=len(bindings),
        unbound=len(gone),
        seconds=round(time.perf_counter() - started, 3),
    )
    return Topology(
        names,
        node,
        route,
        retry,
        dlx,
        dlq,
        queues,
        hosted,
        tuple(retry_delays),
        prefix_existed=prefix_existed,
        unbound=tuple(gone),
    )


def _copy(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
    """The message as it was published, for its new queue (the broker's own bookkeeping dropped)."""
    headers = {k: v for k, v in (message.headers or {}).items() if k != "x-delivery-count"}
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


async def _drain_legacy(
    connection: AbstractConnection,
    route: AbstractExchange,
    names: Names,
    agency: str,
    lane: Lane,
    *,
    confirm_timeout: float,
) -> tuple[int, bool]:
    """Move every message of one legacy queue to the route exchange under its own key, then delete the queue.

    The legacy queue is unbound first, so nothing new arrives in it while it drains; each
    message is acked only after the broker confirmed its copy (a crash in between leaves a
    duplicate, which the store's dedupe absorbs: never a loss).

    The queue is deleted only when a fresh declare says it holds no message and has no
    consumer. ``queue.delete`` with ``if_empty`` would say that atomically, but quorum
    queues refuse the flag, and with a *connection* error that takes the node's whole
    connection down (NOT_IMPLEMENTED, rabbitmq-server#2211, #10543). Nothing routes to
    the unbound queue any more, so the check cannot be overtaken by a publish through
    the route exchange; a queue another consumer still reads (an old node) is left for
    the next start. Returns (messages moved, whether the queue is gone).
    """
    from exchange.transport.relay import publish_confirmed

    name = names.agency_queue(agency, lane)
    key = routing_key(agency, lane)  # the queue named its recipient; the message's own key may be a retry's
    channel = await connection.channel()
    moved = 0
    try:
        queue = await channel.declare_queue(name, passive=True)
        state = queue.declaration_result  # the last count seen, refreshed after each pass below
        await queue.unbind(names.route, routing_key=key)
        for _ in range(40):
            while (message := await queue.get(no_ack=False, fail=False, timeout=confirm_timeout)) is not None:
                await publish_confirmed(route, _copy(message), routing_key=key, timeout=confirm_timeout)
                await message.ack()
                moved += 1
            # A fresh declare frame: aio-pika's declare_queue hands back the channel's first answer again.
            state = await (await channel.get_underlay_channel()).queue_declare(name, passive=True)
            if not state.message_count and not state.consumer_count:
                break
            if state.consumer_count:
                log.warning(
                    "topology.legacy_queue_kept",
                    queue=name,
                    messages=state.message_count,
                    consumers=state.consumer_count,
                    hint="a node of the old version still consumes it; the next start retries",
                )
                return moved, False
            # A quorum queue counts a message until the ack, which it applies asynchronously,
            # has gone through its log: look again shortly (and move anything that came back).
            await asyncio.sleep(0.25)
        else:
            log.warning(
                "topology.legacy_queue_kept",
                queue=name,
                messages=state.message_count,
                hint="it still reports messages after draining; the next start retries",
            )
            return moved, False
        await channel.queue_delete(name)
    finally:
        if not channel.is_closed:
            await channel.close()
    log.info("topology.legacy_queue_migrated", queue=name, moved=moved)
    return moved, True


async def migrate_legacy(
    connection: AbstractConnection, topology: Topology, *, confirm_timeout: float = 10.0, concurrency: int = 8
) -> int:
    """Empty and delete the legacy per-agency queues of the agencies this node hosts; returns messages moved.

    Runs once per node and prefix: when every legacy queue is gone it declares the node's
    ``migrated`` marker exchange, and later starts skip it. A prefix with no DLQ before this start was never
    used, so it has no legacy queues to look for. Publishes go through ``topology.route``
    (a channel with publisher confirms) with the legacy queue's routing key, which the
    node's lane queue is bound to.
    """
    names = topology.names
    marker = names.migrated_marker(topology.node)
    if not topology.prefix_existed or await _exists(connection, exchange=marker):
        if not topology.prefix_existed:
            await _declare_marker(connection, marker)
        return 0
    limit = asyncio.Semaphore(concurrency)
    found: list[tuple[str, Lane]] = []

    async def probe(agency: str, lane: Lane) -> None:
        async with limit:
            if await _exists(connection, queue=names.agency_queue(agency, lane)):
                found.append((agency, lane))

    await asyncio.gather(*(probe(a, lane) for a in sorted(topology.hosted) for lane in Lane))

    async def drain(agency: str, lane: Lane) -> tuple[int, bool]:
        async with limit:
            return await _drain_legacy(connection, topology.route, names, agency, lane, confirm_timeout=confirm_timeout)

    results = await asyncio.gather(*(drain(a, lane) for a, lane in found))
    moved = sum(n for n, _ in results)
    if all(gone for _, gone in results):  # else the next start looks again
        await _declare_marker(connection, marker)
    log.info("topology.migration_done", node=topology.node, legacy_queues=len(found), moved=moved)
    return moved


async def _declare_marker(connection: AbstractConnection, marker: str) -> None:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(marker, aio_pika.ExchangeType.FANOUT, durable=True)
    finally:
        await channel.close()
