"""Consuming: the node's lane queues → frame → the service's receive path → ack, retry or dead-letter.

Messages from the node's three lane queues (carrying every hosted agency) feed one
in-process priority queue that a pool of workers serves lowest lane rank first, so
an express document overtakes whatever backlog of normal ones the prefetch window holds.

The recipient of a message is the agency its routing key names (``message.routing_key``,
set by the broker from the publish that routed it, never from a header), if the node
hosts it; the service then checks it against the signed envelope's To list.

A bundle (transport.relay: one copy of a fan-out for several agencies of this node) names
its recipients in ``x-recipients``. It is routed by one of them, and it is served only if
that one is listed and hosted; the frame is verified once and each listed agency gets what
a copy of its own would have got. A header can only narrow a bundle, never widen it: an
agency the signed To list does not name is refused by the service (``recipient-mismatch``),
and one this node does not host is refused here (``agency-not-hosted``). What needs
another attempt or a dead letter leaves as that recipient's own copy (its own routing key,
attempt count and reason), so retries, dead letters and ``dlq replay`` work per recipient.

The transport unpacks the frame and reads its own headers (attempt, replay);
the service answers what became of the envelope (:class:`~exchange.service.Received`)
and this module alone maps that to AMQP: delivered or duplicate → ack,
transient → a retry copy with backoff, permanent → a dead letter with the reason.

Acks happen only after the store committed the outcome (PITFALLS.md: after a
reconnect, acks from the old channel fail and the broker redelivers; the
message-id dedupe in the store makes that harmless). A store outage holds the
message and retries in place instead of requeueing it, so it never burns the
queue's delivery limit. Nothing else is ever requeued: an unexpected failure is
answered once (the service sends a non-delivery receipt) and dead-lettered, so a
poison message cannot loop to the broker's delivery limit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue, HeadersType

from exchange.envelope.model import Hop
from exchange.errors import EnvelopeError
from exchange.hub.trace import shovel_hops
from exchange.routing import frame
from exchange.routing.lanes import Lane, routing_key
from exchange.service import (
    RECEIVE_ERROR,
    ExchangeService,
    Received,
    ReceiveResult,
    Replay,
    is_infrastructure_error,
    rejection_stage,
)
from exchange.transport.relay import BUNDLE_HEADER, BUNDLE_MAX, publish_confirmed
from exchange.transport.topology import RETRY_HEADER, Topology

if TYPE_CHECKING:
    from exchange.observability.metrics import DeliveryMetrics

log = structlog.get_logger("exchange.consumer")

#: Headers ``exchange dlq replay`` sets on a replayed dead letter.
REPLAYS_HEADER = "x-replays"
REPLAY_REASON_HEADER = "x-replay-reason"


def replay_request(headers: Mapping[str, object]) -> Replay | None:
    """The operator's replay a message carries, if any (``exchange dlq replay`` sets the headers)."""
    try:
        count = int(headers.get(REPLAYS_HEADER, 0) or 0)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
    if count < 1:
        return None
    reason = headers.get(REPLAY_REASON_HEADER, "")
    reason = reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason or "")
    return Replay(count, reason[:500] or "replayed by the operator")


def bundle_recipients(headers: Mapping[str, object]) -> list[str] | None:
    """The recipients a bundle names (``x-recipients``), in order and once each; None for a single copy."""
    raw = headers.get(BUNDLE_HEADER)
    if not raw:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    codes = list(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    return codes[:BUNDLE_MAX]


def resend(message: AbstractIncomingMessage, *, message_id: str | None, headers: HeadersType) -> aio_pika.Message:
    """A new persistent copy of ``message`` (its retry, dead letter or forwarded member) with its own id and headers."""
    return aio_pika.Message(
        message.body,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=message.correlation_id,
        headers=headers,
    )


def member_headers(headers: HeadersType, recipient: str, lane: Lane) -> HeadersType:
    """The headers of one recipient's own copy of a bundle (for its retry or its dead letter)."""
    own = {k: v for k, v in headers.items() if k != BUNDLE_HEADER}
    own.update({"x-recipient": recipient, "x-routing-key": routing_key(recipient, lane)})
    return own


class Consumer:
    """Serves the lane queues of the hosted agencies with ``workers`` concurrent handlers."""

    def __init__(
        self,
        service: ExchangeService,
        topology: Topology,
        publish_exchange_retry: AbstractExchange,
        publish_exchange_dlx: AbstractExchange,
        *,
        workers: int = 16,
        confirm_timeout: float = 10.0,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.service = service
        self.topology = topology
        self.retry_exchange = publish_exchange_retry
        self.dlx = publish_exchange_dlx
        self.workers = workers
        self.confirm_timeout = confirm_timeout
        self.metrics = metrics
        self._queue: asyncio.PriorityQueue[tuple[int, int, AbstractIncomingMessage, str, Lane]] = (
            asyncio.PriorityQueue()
        )
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._busy = 0
        #: lane -> when a worker last took a message from it (for the lane's oldest-message gauge)
        self.last_taken: dict[Lane, float] = {}
        self.handled = 0

    async def start(self, queues: dict[Lane, AbstractQueue]) -> None:
        for _ in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work()))
        for lane, queue in queues.items():

            async def on_message(message: AbstractIncomingMessage, lane: Lane = lane) -> None:
                await self._queue.put((lane.rank, next(self._seq), message, self.recipient_of(message), lane))

            tag = await queue.consume(on_message, no_ack=False)
            self._consumers.append((queue, tag))

    def recipient_of(self, message: AbstractIncomingMessage) -> str:
        """The hosted agency the message was routed to, from its routing key; "" when it names none.

        Headers (``x-recipient``) could be forged by any publisher; the routing key is what
        the route exchange matched against this node's bindings. An empty answer is refused
        by the service as not hosted, so the message is dead-lettered, never delivered.
        """
        return self.topology.recipient_of(message.routing_key) or ""

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking new messages, let in-flight handling finish, drop (unacked) the rest."""
        # All at once and bounded as a whole: one by one, a broker that stopped answering cost
        # 5 s per queue (a minute for a node of four agencies).
        cancels = [asyncio.ensure_future(queue.cancel(tag)) for queue, tag in self._consumers]
        if cancels:
            _, pending = await asyncio.wait(cancels, timeout=5.0)
            for c in pending:  # channel gone or broker not answering: it requeues unacked messages
                c.cancel()
            await asyncio.gather(*cancels, return_exceptions=True)
        self._consumers.clear()
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            _, _, message, recipient, lane = await self._queue.get()
            self._busy += 1
            try:
                await self._process(message, recipient, lane)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a worker die
                log.exception("consumer.worker_error")
            finally:
                self._busy -= 1

    async def _process(self, message: AbstractIncomingMessage, recipient: str, lane: Lane) -> None:
        headers = dict(message.headers or {})
        raw_attempt = headers.get("x-attempt", 1) or 1  # an int from our publishers; anything else counts as 1
        attempt = int(raw_attempt) if isinstance(raw_attempt, int | str) else 1
        message_id = str(headers.get("x-message-id") or "")
        self.last_taken[lane] = time.time()
        structlog.contextvars.bind_contextvars(
            message_id=message_id,
            sender=str(headers.get("x-sender", "")),
            recipient=recipient,
            correlation_id=str(headers.get("x-correlation-id") or message.correlation_id or ""),
        )
        try:
            # Hub hops (docs/FEDERATION.md): the shovels' forward headers, for the unsigned Trace.
            hops = shovel_hops(headers)
            members = bundle_recipients(headers) if recipient else None
            if members is not None:
                await self._settle_bundle(message, headers, recipient, members, attempt, lane, hops)
            else:
                (result,) = (await self._receive_holding(message, headers, [recipient], attempt, hops)).values()
                # The one place a receive outcome becomes AMQP: ack, a retry copy, or a dead letter.
                if result.outcome is Received.TRANSIENT:
                    await self._republish_retry(message, headers, attempt, result)
                elif result.outcome is Received.PERMANENT:
                    await self._dead_letter(message, headers, result)
            await self._bounded(message.ack())
            self.handled += 1
        except Exception as exc:  # noqa: BLE001 - the broker redelivers the unacked original
            # Publishing the retry/dead copy or the ack failed (connection lost): the broker
            # redelivers the unacked original and the store's dedupe absorbs the repeat.
            log.warning("consumer.settle_failed", error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            structlog.contextvars.unbind_contextvars("message_id", "sender", "recipient", "correlation_id")

    async def _receive_holding(
        self,
        message: AbstractIncomingMessage,
        headers: HeadersType,
        recipients: list[str],
        attempt: int,
        hops: tuple[Hop, ...] = (),
        *,
        bundle: bool = False,
    ) -> dict[str, ReceiveResult]:
        """Unpack the frame and run the receive path for each recipient (one, or a bundle's); hold the
        message through store outages."""
        limits = self.service.limits
        try:
            xml, parts = frame.decode(message.body, max_bytes=limits.max_message_bytes + limits.max_xml_bytes)
        except EnvelopeError as exc:  # not a frame, or too big to look at: nobody to answer
            if self.metrics is not None:
                self.metrics.rejections.labels(rejection_stage(exc), exc.code).inc()
            return {r: ReceiveResult(Received.PERMANENT, exc.code, exc.message) for r in recipients}
        replay = replay_request(headers)
        backoff = 0.5
        while True:
            try:
                if bundle:
                    return await self.service.receive_many(
                        recipients, xml, parts, attempt=attempt, replay=replay, hops=hops
                    )
                (recipient,) = recipients
                return {
                    recipient: await self.service.receive(
                        recipient, xml, parts, attempt=attempt, replay=replay, hops=hops
                    )
                }
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if is_infrastructure_error(exc):
                    log.warning("consumer.store_unavailable", error=type(exc).__name__, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                # The service answers everything else itself; what still escapes it is dead-lettered
                # here, once, rather than requeued to the delivery limit.
                log.exception("consumer.poison", error=type(exc).__name__)
                detail = f"{type(exc).__name__}: {exc}"[:500]
                return {r: ReceiveResult(Received.PERMANENT, RECEIVE_ERROR, detail) for r in recipients}

    async def _settle_bundle(
        self,
        message: AbstractIncomingMessage,
        headers: HeadersType,
        routed: str,
        members: list[str],
        attempt: int,
        lane: Lane,
        hops: tuple[Hop, ...],
    ) -> None:
        """Receive a bundle for each of its recipients, then send each one's retry or dead letter on its own.

        Returns once every copy that had to leave was confirmed (the caller acks the bundle then);
        raises if one could not be published, so the broker redelivers the bundle and the store's
        dedupe answers the recipients already done as duplicates.
        """
        if routed not in members:
            # Routed by an agency the bundle does not name: no publisher of ours does that.
            result = ReceiveResult(
                Received.PERMANENT, "bundle-invalid", f"bundle routed to {routed} does not list it in {BUNDLE_HEADER}"
            )
            await self._dead_letter(message, member_headers(headers, routed, lane), result)
            return
        # The sender's directory placed every member on this node; one it has since moved elsewhere
        # gets its own copy, routed by its own key like any single copy (a stale directory delays
        # nothing and loses nothing).
        hosted = [m for m in members if m in self.topology.hosted]
        for member in members:
            if member not in self.topology.hosted:
                await self._forward(message, headers, member, lane, attempt)
        results = await self._receive_holding(message, headers, hosted, attempt, hops, bundle=True)
        for member, result in results.items():
            if result.outcome is Received.TRANSIENT:
                await self._republish_retry(
                    message, member_headers(headers, member, lane), attempt, result, routing=routing_key(member, lane)
                )
            elif result.outcome is Received.PERMANENT:
                await self._dead_letter(
                    message,
                    member_headers(headers, member, lane),
                    result,
                    message_id=f"{headers.get('x-message-id')!s}/{member}/{attempt}",
                )

    async def _forward(
        self, message: AbstractIncomingMessage, headers: HeadersType, member: str, lane: Lane, attempt: int
    ) -> None:
        """A bundle member this node does not host: its own copy, back through the route exchange."""
        copy = resend(
            message,
            message_id=f"{headers.get('x-message-id')!s}/{member}/{attempt}",
            headers=member_headers(headers, member, lane),
        )
        try:
            await publish_confirmed(
                self.topology.route, copy, routing_key=routing_key(member, lane), timeout=self.confirm_timeout
            )
        except aio_pika.exceptions.PublishError:  # returned: no node binds it (a nack raises DeliveryError: retried)
            result = ReceiveResult(
                Received.PERMANENT, "agency-not-hosted", f"{member} is not hosted by any node on this broker"
            )
            await self._dead_letter(message, member_headers(headers, member, lane), result, message_id=copy.message_id)
            return
        log.info("bundle.forwarded", recipient=member, reason="not hosted here")

    async def _bounded(self, settle: Awaitable[None]) -> None:
        """An ack or nack, given up after ``confirm_timeout`` (raises TimeoutError).

        aiormq awaits the frame's write without a timeout, and a connection that drops at
        that moment leaves the wait unresolved: unbounded, each such ack would hold one worker
        forever (the relay's publishes had the same trap; see relay.publish_confirmed). An
        ack that never reached the broker is harmless: the broker redelivers the message
        and the store's dedupe absorbs it.
        """
        await asyncio.wait_for(settle, self.confirm_timeout)

    async def _republish_retry(
        self,
        message: AbstractIncomingMessage,
        headers: HeadersType,
        attempt: int,
        result: ReceiveResult,
        *,
        routing: str | None = None,
    ) -> None:
        delay = self.topology.retry_delay(attempt)
        # The key the message was routed with, not a header a publisher could have set (for a
        # bundle's recipient: its own key, in the lane the bundle was routed in).
        routing = routing or str(message.routing_key or headers.get("x-routing-key"))
        copy = resend(
            message,
            message_id=f"{headers.get('x-message-id')!s}/{headers.get('x-recipient')!s}/{attempt + 1}",
            headers={
                **headers,
                "x-attempt": attempt + 1,
                RETRY_HEADER: str(delay),
                "x-last-error": f"{result.reason_code}: {result.reason}"[:500],
            },
        )
        await publish_confirmed(self.retry_exchange, copy, routing_key=routing, timeout=self.confirm_timeout)
        if self.metrics is not None:
            self.metrics.retries.labels(result.reason_code or "unknown").inc()

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        headers: HeadersType,
        result: ReceiveResult,
        *,
        message_id: str | None = None,
    ) -> None:
        copy = resend(
            message,
            message_id=message_id or message.message_id,
            headers={
                **headers,
                "x-exchange-dead-code": result.reason_code,
                "x-exchange-dead-reason": result.reason[:1000],
                "x-exchange-dead-at": datetime.now(UTC).isoformat(),
                "x-routing-key": str(headers.get("x-routing-key") or message.routing_key),
            },
        )
        await publish_confirmed(self.dlx, copy, routing_key="", timeout=self.confirm_timeout)
        if self.metrics is not None:
            self.metrics.dead_letters.labels(str(headers.get("x-recipient", "")), result.reason_code or "unknown").inc()
        log.warning("dead_lettered", reason_code=result.reason_code, reason=result.reason[:300])
