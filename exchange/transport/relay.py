"""The outbox relay: moves signed envelopes from the store to RabbitMQ with publisher confirms.

Only items the broker confirmed leave the outbox. An unroutable publish (no
queue bound yet), a nack (quorum queue full: ``reject-publish``) or a timeout
releases the item for a later attempt, so a broker outage delays documents but
never loses one. Publishes are pipelined with a bounded number in flight: one
confirm awaited at a time caps a process at about 1,000 messages/s (PITFALLS.md).

In flight is bounded by count and by bytes. A fan-out publishes one frame per
recipient (3,355 copies of a 70 KB directive); 256 such copies in flight are
18 MB queued in the client, and on a busy broker the last of them waited longer
than the confirm timeout, were released, published again and made the broker
busier still (a 500-agency fan-out never settled). The byte budget keeps the
window at what the broker confirms within a second or two, and a batch whose confirms
timed out halves the next one (clean batches grow it back). Fan-out copies share
one frame: the store hands every copy of a message in a claim the same bytes
object, and :func:`amqp_message` wraps it without copying.

**Bundles: one copy per node, not per recipient.** The outbox keeps one row per
(message, recipient), but the items of one claim that carry the same message to
agencies of the same node, in the same lane, are published as one AMQP message
(:func:`bundles`): routed by the first recipient's key (so the node's own binding,
and across hubs the link patterns, carry it exactly as they would that recipient's
copy) and naming all of them in ``x-recipients``. The receiving node verifies the
frame once and hands it to each recipient it hosts that the header lists and the
signed To names (transport.consumer). A 3,355-agency directive to one node is then
a few frames (one per claim of up to ``bundle_max``), not 3,355 of them: the signed
To list (about 70 bytes per recipient) made each copy 284 KiB, so per-recipient
copies grew with the square of the fan-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange, HeadersType

from exchange.routing.frame import CONTENT_TYPE
from exchange.routing.lanes import parse_routing_key
from exchange.service import NODE_HEADER
from exchange.store.base import OutboxItem, Store

if TYPE_CHECKING:
    from exchange.observability.metrics import DeliveryMetrics

log = structlog.get_logger("exchange.relay")


async def publish_confirmed(
    exchange: AbstractExchange, message: aio_pika.Message, *, routing_key: str, timeout: float, mandatory: bool = True
) -> None:
    """Publish and wait for the broker's confirm, for at most ``timeout`` seconds, whatever happens.

    aio-pika's own ``timeout=`` does not bound every wait: aiormq 6.9 awaits the frame's
    write to the socket without it, and when the connection drops at that moment (a broker
    restart) that future is never resolved, so the publish hangs forever. This was a relay
    stalled for good after a broker restart, with 2,000 documents waiting in its outbox
    (tests/integration/test_routing.py). Upstream: mosquito/aiormq#176 (the drain future of
    basic_publish is left behind when the connection goes) and mosquito/aio-pika#636 (a
    robust publish waits for the reconnection). Our own timer cancels the publish instead;
    :class:`TimeoutError` then, like a nack, means "not confirmed: try again later".
    """
    await asyncio.wait_for(
        exchange.publish(message, routing_key=routing_key, mandatory=mandatory, timeout=timeout),
        timeout=timeout + 1.0,
    )


#: The AMQP header of a bundle: the recipients (comma-separated agency codes) that one copy serves.
BUNDLE_HEADER = "x-recipients"
#: Recipients one bundle names at most: the header stays far below AMQP's frame size (an agency
#: code is at most 32 characters: 16 KB at 500), and one claim never holds more than this anyway.
BUNDLE_MAX = 500


def amqp_message(item: OutboxItem, *, attempt: int = 1, extra: HeadersType | None = None) -> aio_pika.Message:
    """The AMQP message for one outbox item.

    The AMQP ``message_id`` is unique per publish (message/recipient/attempt):
    aiormq matches returned messages to confirms by it, so fan-out copies must
    not share one. The bus's own message id travels in ``x-message-id``.
    """
    headers: HeadersType = {k: v for k, v in item.headers.items() if v}
    headers.update(
        {
            "x-message-id": item.message_id,
            "x-recipient": item.recipient,
            "x-attempt": attempt,
            "x-routing-key": item.routing_key,
        }
    )
    if extra:
        headers.update(extra)
    return aio_pika.Message(
        item.body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=f"{item.message_id}/{item.recipient}/{attempt}",
        correlation_id=str(item.headers.get("x-correlation-id") or "") or None,
        headers=headers,
    )


def bundle_message(unit: list[OutboxItem], *, attempt: int = 1) -> aio_pika.Message:
    """The one AMQP message for a publish unit of :func:`bundles` (a single item: :func:`amqp_message`)."""
    first = unit[0]
    if len(unit) == 1:
        return amqp_message(first, attempt=attempt)
    message = amqp_message(first, attempt=attempt, extra={BUNDLE_HEADER: ",".join(i.recipient for i in unit)})
    # unique per publish, as for single copies: another claim may bundle other recipients of the message
    message.message_id = f"{first.message_id}/{first.recipient}+{len(unit) - 1}/{attempt}"
    return message


def bundles(items: list[OutboxItem], max_size: int = BUNDLE_MAX) -> list[list[OutboxItem]]:
    """A claim's items as publish units: one per (message, recipient node, lane), at most ``max_size`` each.

    Items without a node (an outbox written before bundles existed) and receipts (one
    recipient each) stay units of one. Order follows the claim (priority first, then age).
    """
    if max_size <= 1:
        return [[i] for i in items]
    units: list[list[OutboxItem]] = []
    open_units: dict[tuple[str, str, str], list[OutboxItem]] = {}
    for item in items:
        node = str(item.headers.get(NODE_HEADER) or "")
        if not node:
            units.append([item])
            continue
        key = (item.message_id, node, parse_routing_key(item.routing_key)[1].value)
        unit = open_units.get(key)
        if unit is None or len(unit) >= max_size:
            unit = open_units[key] = []
            units.append(unit)
        unit.append(item)
    return units


def _being_cancelled() -> bool:
    """Whether the running task was asked to stop (``Task.cancel()``), as opposed to an awaited
    future that was rejected with :class:`asyncio.CancelledError`."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class ByteBudget:
    """At most ``limit`` bytes held at once; one holder may exceed it alone (a frame bigger than the budget)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        async with self._changed:
            await self._changed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size
        try:
            yield
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()


class OutboxRelay:
    """Drains the outbox into the route exchange; wake it with ``event.set()``."""

    def __init__(
        self,
        store: Store,
        event: asyncio.Event,
        *,
        batch: int = 500,
        in_flight: int = 256,
        bytes_in_flight: int = 8 * 1024 * 1024,
        confirm_timeout: float = 10.0,
        poll_interval: float = 1.0,
        bundle_max: int = BUNDLE_MAX,
        metrics: DeliveryMetrics | None = None,
        on_published: Callable[[list[OutboxItem]], None] | None = None,
    ) -> None:
        self.store = store
        self.event = event
        self.batch = batch
        self.in_flight = asyncio.Semaphore(in_flight)
        self.bytes_in_flight = ByteBudget(bytes_in_flight)
        #: Items one batch publishes: halved after a batch with failures, grown back after clean
        #: ones (additive increase, multiplicative decrease). A broker that cannot confirm a
        #: batch in time gets fewer re-publications, not the whole batch again.
        self.max_batch = batch
        self.window = batch
        self._more = False
        self.confirm_timeout = confirm_timeout
        self.poll_interval = poll_interval
        #: Recipients one published copy serves at most (1: a copy per recipient, as before bundles).
        self.bundle_max = max(1, min(bundle_max, BUNDLE_MAX))
        self.metrics = metrics
        self.on_published = on_published
        self.exchange: AbstractExchange | None = None  # set while connected
        self.published = 0  # outbox items the broker confirmed
        self.copies = 0  # AMQP messages the broker confirmed (a bundle serves several items)

    async def _publish(self, exchange: AbstractExchange, unit: list[OutboxItem]) -> bool:
        """Publish one unit (an item, or a bundle of them); True once the broker confirmed it, False
        for anything else (never raises).

        aiormq rejects the confirms still pending on a channel that closes with
        :class:`asyncio.CancelledError` (``close()``'s default reason, the channel of a
        robust connection that reconnects). That is a failed publish, not a cancellation
        of the relay: only when this task itself is being cancelled does it propagate.
        """
        first = unit[0]
        async with self.in_flight, self.bytes_in_flight.hold(len(first.body)):
            started = time.perf_counter()
            try:
                await publish_confirmed(
                    exchange, bundle_message(unit), routing_key=first.routing_key, timeout=self.confirm_timeout
                )
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise
                log.warning(
                    "publish.failed",
                    message_id=first.message_id,
                    recipient=first.recipient,
                    recipients=len(unit),
                    error="ChannelClosed",
                    detail=str(exc)[:200] or "confirm cancelled by the client",
                )
                return False
            except Exception as exc:  # noqa: BLE001 - returned, nacked, timed out, connection lost: retry later
                log.warning(
                    "publish.failed",
                    message_id=first.message_id,
                    recipient=first.recipient,
                    recipients=len(unit),
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                )
                return False
            if self.metrics is not None:
                self.metrics.publish_confirm_seconds.observe(time.perf_counter() - started)
            return True

    async def drain_once(self) -> tuple[int, int]:
        """Publish one batch; returns (published, failed)."""
        exchange = self.exchange
        if exchange is None:
            return 0, 0
        window = self.window
        items = await self.store.claim_outbox(window, lease_seconds=max(30.0, self.confirm_timeout * 3))
        self._more = len(items) >= window  # a full claim: more may be waiting
        if not items:
            return 0, 0
        units = bundles(items, self.bundle_max)
        try:
            results = await asyncio.gather(*(self._publish(exchange, u) for u in units), return_exceptions=True)
        except BaseException:
            # The relay is being stopped: give the batch back now, not when its lease runs out.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_outbox([i.id for i in items if i.id is not None]))
            raise
        ok = [i for u, r in zip(units, results, strict=True) if r is True for i in u]
        # an unexpected exception is a failure too
        bad = [i for u, r in zip(units, results, strict=True) if r is not True for i in u]
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, Exception):
                raise r  # our own cancellation, seen by a child first
        if ok:
            await self.store.mark_published([i.id for i in ok if i.id is not None])
            self.published += len(ok)
            self.copies += sum(1 for r in results if r is True)
            if self.on_published:
                self.on_published(ok)
        if bad:
            await self.store.release_outbox([i.id for i in bad if i.id is not None])
            self.window = max(8, self.window // 2)
        elif self._more:
            self.window = min(self.max_batch, self.window + max(8, self.window // 4))
        return len(ok), len(bad)

    async def run(self) -> None:
        """Forever: drain while there is work, then sleep until woken or the poll interval passes."""
        failures = 0
        while True:
            # Clear before claiming: an item added while we publish sets it again.
            self.event.clear()
            try:
                _, failed = await self.drain_once()
            except asyncio.CancelledError as exc:
                if _being_cancelled():
                    raise
                # A CancelledError nobody sent to this task (a library's rejected future): before,
                # it ended the relay without a word while its outbox kept filling.
                log.warning("relay.error", error="CancelledError", detail=str(exc)[:200])
                failed = 1
            except Exception as exc:  # noqa: BLE001 - store or broker hiccup: back off, never die
                log.warning("relay.error", error=type(exc).__name__, detail=str(exc)[:200])
                failed = 1
            if failed:
                failures += 1
                await asyncio.sleep(min(0.2 * 2 ** min(failures, 6), 10.0))
                continue
            failures = 0
            if self._more:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), timeout=self.poll_interval)
