"""Dead letters: list, replay and discard them, for `exchange dlq` and the operator console alike.

Listing takes messages off the dead-letter queue without acknowledging them and puts them back
afterwards, so it changes nothing. Replaying republishes the chosen messages to their agency
queue with publisher confirms and only then removes them from the dead-letter queue; the reason
travels with the message (``x-replays``, ``x-replay-reason``). The recipient's node hands a
replayed message over again only if its delivery there had failed; a replay of one that was
delivered stays a duplicate. Discarding removes the chosen messages from the dead-letter queue
for good (the sender's timeline keeps the failure). Both need a reason from the operator.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import aio_pika

from exchange.errors import BadRequestError, BrokerUnavailableError, NotFoundError
from exchange.transport.consumer import REPLAY_REASON_HEADER, REPLAYS_HEADER
from exchange.transport.relay import publish_confirmed
from exchange.transport.topology import Names

#: Seconds to wait for RabbitMQ to accept the connection (TCP and the AMQP handshake).
CONNECT_TIMEOUT = 10.0
#: Longest reason kept with a replayed message (and in the journal).
MAX_REASON = 500
#: Headers of a dead letter that a replay does not carry on.
_DEATH_HEADERS = ("x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one chosen dead letter: ``done`` (replayed/discarded) or skipped, with why."""

    info: dict[str, object]
    done: bool
    note: str = ""


def check_reason(reason: str) -> str:
    """The operator's reason, trimmed; BadRequestError if empty (every replay and discard says why)."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise BadRequestError("give a reason (it is kept with the message and in the journal)")
    return reason[:MAX_REASON]


def describe(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, object]:
    """The operator's view of a dead letter: ids, our reason or the broker's x-death reason."""
    h: dict[str, Any] = dict(message.headers or {})
    deaths = h.get("x-death") or []
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    broker_key = (first.get("routing-keys") or [""])[0] if isinstance(first, dict) and first else ""
    routing = h.get("x-routing-key") or broker_key
    return {
        "message_id": str(h.get("x-message-id", "")),
        "sender": str(h.get("x-sender", "")),
        "recipient": str(h.get("x-recipient", "")),
        "kind": str(h.get("x-kind", "")),
        "reason_code": str(h.get("x-exchange-dead-code") or h.get("x-first-death-reason") or ""),
        "reason": str(
            h.get("x-exchange-dead-reason")
            or (f"broker: {first.get('reason')} in {first.get('queue')}" if isinstance(first, dict) and first else "")
        ),
        "dead_at": str(h.get("x-exchange-dead-at", "")),
        "attempts": int(h.get("x-attempt", 1) or 1),
        "routing_key": str(routing or ""),
        "replays": int(h.get(REPLAYS_HEADER, 0) or 0),
    }


async def connect(cfg: Any, ssl_context: ssl.SSLContext | None = None) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection to ``cfg``'s broker (a NodeConfig): fail in one line, never retry forever.

    ``ssl_context``: the node's TLS settings for RabbitMQ (``exchange.node.amqp_ssl_context``), if any.
    """
    amqp = cfg.amqp
    where = amqp.url.rpartition("@")[2]
    try:
        # The bound covers a broker that accepts TCP but never speaks AMQP, too.
        return await asyncio.wait_for(
            aio_pika.connect(amqp.url, ssl_context=ssl_context, timeout=CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1
        )
    except Exception as exc:  # noqa: BLE001 - refused, unreachable, TLS, authentication, silence
        raise BrokerUnavailableError(
            f"cannot reach RabbitMQ at {where} ({type(exc).__name__}); check that it runs "
            "(`rabbitmqctl status`) and that [amqp] url (or EXCHANGE__AMQP__URL) points at it"
        ) from None


class DeadLetters:
    """The dead-letter queue of one node's prefix on its broker (``cfg``: the node's NodeConfig)."""

    def __init__(self, cfg: Any, ssl_context: ssl.SSLContext | None = None) -> None:
        self.cfg = cfg
        self.ssl_context = ssl_context
        self.amqp = cfg.amqp
        self.name = Names(cfg.amqp.prefix).dlq

    async def _drain(self, limit: int) -> tuple[Any, Any, list[aio_pika.abc.AbstractIncomingMessage]]:
        connection = await connect(self.cfg, self.ssl_context)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            try:
                queue = await channel.declare_queue(self.name, durable=True, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                raise NotFoundError(
                    f"there is no dead-letter queue {self.name} on this broker; check [amqp] prefix (a node with "
                    "this prefix declares it when it starts)"
                ) from None
            taken: list[aio_pika.abc.AbstractIncomingMessage] = []
            while len(taken) < limit:
                message = await queue.get(no_ack=False, fail=False, timeout=10)
                if message is None:
                    break
                taken.append(message)
        except BaseException:
            await connection.close()
            raise
        return connection, channel, taken

    async def _give_back(self, connection: Any, taken: list[aio_pika.abc.AbstractIncomingMessage]) -> None:
        try:
            for m in taken:
                if not m.processed:
                    await asyncio.wait_for(m.nack(requeue=True), self.amqp.confirm_timeout)
        finally:
            await connection.close()

    async def count(self) -> int:
        """Dead letters waiting (the queue's ready messages)."""
        connection = await connect(self.cfg, self.ssl_context)
        try:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(self.name, durable=True, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0
            return int(queue.declaration_result.message_count or 0)
        finally:
            await connection.close()

    async def peek(self, limit: int = 100) -> list[dict[str, object]]:
        """Up to ``limit`` dead letters, described; the queue is left as it was."""
        connection, _, taken = await self._drain(limit)
        try:
            return [describe(m) for m in taken]
        finally:
            await self._give_back(connection, taken)

    async def replay(self, ids: Collection[str] | None, reason: str) -> list[Outcome]:
        """Send the dead letters of ``ids`` (None: all) back to their agency queue, with ``reason``."""
        reason = check_reason(reason)
        connection, channel, taken = await self._drain(100_000)
        out: list[Outcome] = []
        try:
            route = await channel.get_exchange(Names(self.amqp.prefix).route)
            for m in taken:
                info = describe(m)
                if ids is not None and info["message_id"] not in ids:
                    continue
                if not info["routing_key"]:
                    out.append(Outcome(info, False, "no original routing key recorded"))
                    continue
                headers = {
                    k: v
                    for k, v in (m.headers or {}).items()
                    if not k.startswith("x-exchange-dead") and k not in _DEATH_HEADERS
                }
                replays = int(info["replays"]) + 1  # type: ignore[call-overload]
                headers.update({"x-attempt": 1, REPLAYS_HEADER: replays, REPLAY_REASON_HEADER: reason})
                copy = aio_pika.Message(
                    m.body,
                    content_type=m.content_type,
                    headers=headers,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=f"{info['message_id']}/{info['recipient']}/replay{replays}",
                    correlation_id=m.correlation_id,
                )
                await publish_confirmed(
                    route, copy, routing_key=str(info["routing_key"]), timeout=self.amqp.confirm_timeout
                )
                await asyncio.wait_for(m.ack(), self.amqp.confirm_timeout)
                out.append(Outcome(info, True))
        finally:
            await self._give_back(connection, taken)
        return out

    async def discard(self, ids: Collection[str], reason: str) -> list[Outcome]:
        """Remove the dead letters of ``ids`` from the queue for good (the reason is the caller's to journal)."""
        check_reason(reason)
        connection, _, taken = await self._drain(100_000)
        out: list[Outcome] = []
        try:
            for m in taken:
                info = describe(m)
                if info["message_id"] in ids:
                    await asyncio.wait_for(m.ack(), self.amqp.confirm_timeout)
                    out.append(Outcome(info, True))
        finally:
            await self._give_back(connection, taken)
        return out
