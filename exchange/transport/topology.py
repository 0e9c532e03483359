"""The RabbitMQ topology, declared from code and idempotently.

::

    {prefix}.route   direct   ──{code}.{lane}──▶ {prefix}.agency.{code}.{lane}   quorum, one per lane
                                                   │ x-delivery-limit exceeded / rejected
    {prefix}.dlx     fanout  ◀─────────────────────┘ ──▶ {prefix}.dlq           quorum, keeps the reason
    {prefix}.retry   headers ──x-retry-delay=N──▶ {prefix}.retry.{N}s  classic, TTL N s
                                                   │ expired: dead-lettered with the original key
                                                   └──▶ {prefix}.route

Retries are republished copies (the consumer acks the original), so the retry
loop always passes through an explicit publish: RabbitMQ drops messages that
cycle through dead-lettering with no rejection in the loop (PITFALLS.md).
Quorum queues dead-letter at-least-once, which needs ``overflow=reject-publish``;
every agency queue has a DLX and an explicit delivery limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from exchange.routing.lanes import Lane, routing_key

RETRY_HEADER = "x-retry-delay"


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

    def agency_queue(self, agency: str, lane: Lane) -> str:
        return f"{self.prefix}.agency.{agency}.{lane.value}"

    def retry_queue(self, delay: int) -> str:
        return f"{self.prefix}.retry.{delay}s"


@dataclass(slots=True)
class Topology:
    """Declared exchanges (kept as strong references: RobustConnection restores only what we hold)."""

    names: Names
    route: AbstractExchange
    retry: AbstractExchange
    dlx: AbstractExchange
    dlq: AbstractQueue
    agency_queues: dict[tuple[str, Lane], AbstractQueue]
    retry_delays: tuple[int, ...]

    def retry_delay(self, attempt: int) -> int:
        """Backoff before attempt ``attempt + 1`` (attempts count from 1)."""
        return self.retry_delays[min(max(attempt, 1), len(self.retry_delays)) - 1]


def agency_queue_arguments(names: Names, delivery_limit: int) -> dict[str, object]:
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": names.dlx,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
        "x-delivery-limit": delivery_limit,
    }


async def declare(
    channel: AbstractChannel,
    *,
    prefix: str,
    agencies: list[str],
    retry_delays: tuple[int, ...],
    delivery_limit: int,
) -> Topology:
    """Declare (or confirm) the whole topology for the agencies this node hosts."""
    names = Names(prefix)
    route = await channel.declare_exchange(names.route, aio_pika.ExchangeType.DIRECT, durable=True)
    retry = await channel.declare_exchange(names.retry, aio_pika.ExchangeType.HEADERS, durable=True)
    dlx = await channel.declare_exchange(names.dlx, aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(names.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx, routing_key="")
    for delay in retry_delays:
        q = await channel.declare_queue(
            names.retry_queue(delay), durable=True,
            arguments={"x-message-ttl": delay * 1000, "x-dead-letter-exchange": names.route},
        )
        await q.bind(retry, routing_key="", arguments={"x-match": "all", RETRY_HEADER: str(delay)})
    queues: dict[tuple[str, Lane], AbstractQueue] = {}
    args = agency_queue_arguments(names, delivery_limit)
    for agency in agencies:
        for lane in Lane:
            q = await channel.declare_queue(names.agency_queue(agency, lane), durable=True, arguments=args)
            await q.bind(route, routing_key=routing_key(agency, lane))
            queues[(agency, lane)] = q
    return Topology(names, route, retry, dlx, dlq, queues, tuple(retry_delays))
