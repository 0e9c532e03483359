"""Consuming: agency lane queues → the service's receive path → ack, retry or dead-letter.

Messages from every lane of every hosted agency feed one in-process priority
queue that a pool of workers serves lowest lane rank first, so an express
document overtakes whatever backlog of normal ones the prefetch window holds.

Acks happen only after the store committed the outcome (PITFALLS.md: after a
reconnect, acks from the old channel fail and the broker redelivers; the
message-id dedupe in the store makes that harmless). A store outage holds the
message and retries in place instead of requeueing it, so it never burns the
queue's delivery limit; an unexpected exception requeues it, and the broker
dead-letters a poison message once the delivery limit is reached.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from datetime import datetime, timezone

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue

from exchange.envelope.model import Hop
from exchange.errors import ExchangeError
from exchange.hub.trace import shovel_hops
from exchange.routing.lanes import Lane
from exchange.transport.relay import publish_confirmed
from exchange.transport.topology import RETRY_HEADER, Topology
from exchange.service import Decision, ExchangeService, ReceiveResult

log = structlog.get_logger("exchange.consumer")

_INFRA_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
try:  # the store's driver errors are infrastructure trouble, not poison
    from sqlalchemy.exc import DBAPIError, OperationalError

    _INFRA_ERRORS += (OperationalError, DBAPIError)
except ImportError:  # pragma: no cover
    pass


def _is_infra(exc: BaseException) -> bool:
    return isinstance(exc, _INFRA_ERRORS) or (isinstance(exc, ExchangeError) and exc.transient)


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
        metrics: object | None = None,
    ) -> None:
        self.service = service
        self.topology = topology
        self.retry_exchange = publish_exchange_retry
        self.dlx = publish_exchange_dlx
        self.workers = workers
        self.confirm_timeout = confirm_timeout
        self.metrics = metrics
        self._queue: asyncio.PriorityQueue[tuple[int, int, AbstractIncomingMessage, str, Lane]] = asyncio.PriorityQueue()
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._busy = 0
        #: (agency, lane) -> (enqueued-at time of the last message taken, its AMQP timestamp)
        self.last_taken: dict[tuple[str, Lane], float] = {}
        self.handled = 0

    async def start(self, queues: dict[tuple[str, Lane], AbstractQueue]) -> None:
        for _ in range(self.workers):
            self._tasks.append(asyncio.create_task(self._work()))
        for (agency, lane), queue in queues.items():
            # The queue a message came from names its recipient: headers could be forged.
            async def on_message(message: AbstractIncomingMessage, agency: str = agency, lane: Lane = lane) -> None:
                await self._queue.put((lane.rank, next(self._seq), message, agency, lane))
            tag = await queue.consume(on_message, no_ack=False)
            self._consumers.append((queue, tag))

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking new messages, let in-flight handling finish, drop (unacked) the rest."""
        for queue, tag in self._consumers:
            try:
                await asyncio.wait_for(queue.cancel(tag), 5.0)
            except Exception:  # channel gone or broker not answering: it requeues unacked messages
                pass
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
        attempt = int(headers.get("x-attempt", 1) or 1)
        message_id = str(headers.get("x-message-id") or "")
        self.last_taken[(recipient, lane)] = time.time()
        structlog.contextvars.bind_contextvars(
            message_id=message_id, sender=str(headers.get("x-sender", "")), recipient=recipient,
            correlation_id=str(headers.get("x-correlation-id") or message.correlation_id or ""),
        )
        try:
            # Hub hops (docs/FEDERATION.md): the shovels' forward headers, for the unsigned Trace.
            hops = shovel_hops(headers)
            result = await self._receive_holding(message, recipient, attempt, hops)
            if result is None:
                return
            if result.decision is Decision.RETRY:
                await self._republish_retry(message, headers, attempt, result)
            elif result.decision is not Decision.ACK:
                await self._dead_letter(message, headers, result)
            await self._bounded(message.ack())
            self.handled += 1
        except Exception as exc:
            # Publishing the retry/dead copy or the ack failed (connection lost): the broker
            # redelivers the unacked original and the store's dedupe absorbs the repeat.
            log.warning("consumer.settle_failed", error=type(exc).__name__, detail=str(exc)[:200])
        finally:
            structlog.contextvars.unbind_contextvars("message_id", "sender", "recipient", "correlation_id")

    async def _receive_holding(self, message: AbstractIncomingMessage, recipient: str,
                               attempt: int, hops: tuple[Hop, ...] = ()) -> ReceiveResult | None:
        """Run the receive path; hold the message through store outages; requeue on a bug."""
        backoff = 0.5
        while True:
            try:
                return await self.service.receive(recipient, message.body, attempt=attempt, hops=hops)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_infra(exc):
                    log.warning("consumer.store_unavailable", error=type(exc).__name__, retry_in=backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 15.0)
                    continue
                log.exception("consumer.poison", error=type(exc).__name__)
                try:
                    await self._bounded(message.nack(requeue=True))
                except Exception:
                    pass
                return None

    async def _bounded(self, settle: Awaitable[None]) -> None:
        """An ack or nack, given up after ``confirm_timeout`` (raises TimeoutError).

        aiormq awaits the frame's write without a timeout, and a connection that drops at
        that moment leaves the wait unresolved: unbounded, each such ack would hold one worker
        forever (the relay's publishes had the same trap; see relay.publish_confirmed). An
        ack that never reached the broker is harmless: the broker redelivers the message
        and the store's dedupe absorbs it.
        """
        await asyncio.wait_for(settle, self.confirm_timeout)

    async def _republish_retry(self, message: AbstractIncomingMessage, headers: dict[str, object],
                               attempt: int, result: ReceiveResult) -> None:
        delay = self.topology.retry_delay(attempt)
        routing = str(headers.get("x-routing-key") or message.routing_key)
        copy = aio_pika.Message(
            message.body, content_type=message.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"{headers.get('x-message-id')}/{headers.get('x-recipient')}/{attempt + 1}",
            correlation_id=message.correlation_id,
            headers={**headers, "x-attempt": attempt + 1, RETRY_HEADER: str(delay),
                     "x-last-error": f"{result.reason_code}: {result.reason}"[:500]},
        )
        await publish_confirmed(self.retry_exchange, copy, routing_key=routing, timeout=self.confirm_timeout)
        gauge = getattr(self.metrics, "retries", None)
        if gauge is not None:
            gauge.labels(result.reason_code or "unknown").inc()

    async def _dead_letter(self, message: AbstractIncomingMessage, headers: dict[str, object],
                           result: ReceiveResult) -> None:
        copy = aio_pika.Message(
            message.body, content_type=message.content_type, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id, correlation_id=message.correlation_id,
            headers={**headers, "x-exchange-dead-code": result.reason_code,
                     "x-exchange-dead-reason": result.reason[:1000],
                     "x-exchange-dead-at": datetime.now(timezone.utc).isoformat(),
                     "x-routing-key": str(headers.get("x-routing-key") or message.routing_key)},
        )
        await publish_confirmed(self.dlx, copy, routing_key="", timeout=self.confirm_timeout)
        counter = getattr(self.metrics, "dead_letters", None)
        if counter is not None:
            counter.labels(str(headers.get("x-recipient", "")), result.reason_code or "unknown").inc()
        log.warning("dead_lettered", reason_code=result.reason_code)
