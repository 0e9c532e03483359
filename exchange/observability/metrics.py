"""Prometheus metrics of one node, on an explicit registry.

Names follow the Prometheus conventions: the ``exchange_`` prefix, base units
(seconds), ``_total`` on counters. Labels are bounded sets only: agency codes,
envelope kinds, outcomes, lanes, stages and machine-readable reason codes
(``ExchangeError.code``). A message id, correlation id or free text never
becomes a label: each distinct value is a new time series kept for ever.

The rest of the node reads metrics as typed attributes (``metrics.deliveries``,
``metrics.queue_depth``…) and tolerates ``metrics=None``; ``Metrics`` is the one
place that knows their Prometheus names. The service and the transport are typed
against :class:`DeliveryMetrics`, the part of it they count on; the node, which
refreshes the gauges, holds the whole ``Metrics``. docs/OPERATIONS.md lists every
metric and the alert that reads it.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

PREFIX = "exchange"

# The ``*_created`` companion series double the series count and nothing here reads them.
# Process-wide by the client's design; ``exchange serve`` owns its process.
disable_created_metrics()

#: Label names that must never appear: unbounded identifiers.
FORBIDDEN_LABELS = frozenset(
    {
        "message_id",
        "msg_id",
        "id",
        "correlation_id",
        "trace_id",
        "span_id",
        "document_id",
        "subject",
        "token",
        "user",
        "url",
        "path",
    }
)

# Submit -> delivered receipt at the sender: usually under a second on a healthy bus, seconds
# when signing and an adapter hop add up, minutes when retries back off (1 s … 600 s).
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# Handover at the recipient -> signed receipt received back: the receipt rides the express lane.
RECEIPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
# A publisher confirm: a quorum write on a majority, milliseconds; seconds mean a sick broker.
CONFIRM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DeliveryMetrics(Protocol):
    """What the service, the outbox relay and the consumer count: the delivery path's counters and latencies.

    :class:`Metrics` is the implementation. The members are read-only properties, so a plain
    attribute of the same type fits them.
    """

    @property
    def documents_submitted(self) -> Counter: ...
    @property
    def deliveries(self) -> Counter: ...
    @property
    def dead_letters(self) -> Counter: ...
    @property
    def duplicates_suppressed(self) -> Counter: ...
    @property
    def retries(self) -> Counter: ...
    @property
    def rejections(self) -> Counter: ...
    @property
    def delivery_latency(self) -> Histogram: ...
    @property
    def receipt_latency(self) -> Histogram: ...
    @property
    def publish_confirm_seconds(self) -> Histogram: ...


class Metrics:
    """Every metric of one node, registered on ``registry`` (a fresh one if not given).

    Attribute names are what the rest of the code calls; each docstring line below
    gives the Prometheus name and labels.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, version: str | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # -- flow counters -----------------------------------------------------------
        #: exchange_documents_submitted_total{agency,kind}: envelopes accepted from a sending agency.
        self.documents_submitted = Counter(
            f"{PREFIX}_documents_submitted_total",
            "Envelopes accepted for sending, by sending agency and kind.",
            ["agency", "kind"],
            registry=r,
        )
        #: exchange_deliveries_total{agency,outcome}: receipts received back, by recipient agency.
        self.deliveries = Counter(
            f"{PREFIX}_deliveries_total",
            "Delivery receipts received by the sender, by recipient agency and outcome (delivered, failed).",
            ["agency", "outcome"],
            registry=r,
        )
        #: exchange_dead_letters_total{agency,reason}: messages given up on at a recipient.
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters_total",
            "Messages dead-lettered at the recipient (permanent failure or retries exhausted), by reason code.",
            ["agency", "reason"],
            registry=r,
        )
        #: exchange_duplicates_suppressed_total{agency}: redeliveries absorbed by the dedupe.
        self.duplicates_suppressed = Counter(
            f"{PREFIX}_duplicates_suppressed_total",
            "Envelopes received again and not handed to the E-Office a second time, by recipient agency.",
            ["agency"],
            registry=r,
        )
        #: exchange_retries_total{reason}: transient handover failures scheduled for another try.
        self.retries = Counter(
            f"{PREFIX}_retries_total",
            "Transient delivery failures sent to a retry queue, by reason code.",
            ["reason"],
            registry=r,
        )
        #: exchange_rejections_total{stage,reason}: inbound frames refused before any delivery.
        self.rejections = Counter(
            f"{PREFIX}_rejections_total",
            "Envelopes refused on receipt, by stage (signature, schema, xml, envelope) and reason code.",
            ["stage", "reason"],
            registry=r,
        )

        # -- latencies -------------------------------------------------------------
        #: exchange_delivery_latency_seconds{agency}: submit -> delivered receipt at the sender.
        self.delivery_latency = Histogram(
            f"{PREFIX}_delivery_latency_seconds",
            "Time from an envelope's creation to its delivery receipt reaching the sender, by recipient agency.",
            ["agency"],
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )
        #: exchange_receipt_latency_seconds{agency}: handover at the recipient -> receipt at the sender.
        self.receipt_latency = Histogram(
            f"{PREFIX}_receipt_latency_seconds",
            "Time from the recipient's receipt being created to it reaching the sender, by recipient agency.",
            ["agency"],
            buckets=RECEIPT_BUCKETS,
            registry=r,
        )
        #: exchange_publish_confirm_seconds: one publish until the broker's confirm.
        self.publish_confirm_seconds = Histogram(
            f"{PREFIX}_publish_confirm_seconds",
            "Time from publishing to the broker's publisher confirm.",
            buckets=CONFIRM_BUCKETS,
            registry=r,
        )

        # -- state gauges (refreshed every few seconds by the node) ------------------
        #: exchange_queue_depth{lane}: messages ready in the node's lane queue (all hosted agencies).
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Messages ready in the node's inbound lane queue (every hosted agency).",
            ["lane"],
            registry=r,
        )
        #: exchange_lane_oldest_message_age_seconds{lane}: how long the lane has had a backlog nobody took from.
        self.lane_oldest_message_age_seconds = Gauge(
            f"{PREFIX}_lane_oldest_message_age_seconds",
            "Approximate age of the oldest message waiting in the node's lane queue (0 when empty).",
            ["lane"],
            registry=r,
        )
        #: exchange_deliveries_pending{agency}: deliveries this node sent to the agency, no receipt yet.
        self.deliveries_pending = Gauge(
            f"{PREFIX}_deliveries_pending",
            "Deliveries to a recipient agency not yet closed by its receipt (from the store; only agencies "
            "with some waiting).",
            ["agency"],
            registry=r,
        )
        #: exchange_queue_oldest_message_age_seconds{agency}: how long the oldest of those has waited.
        self.queue_oldest_message_age_seconds = Gauge(
            f"{PREFIX}_queue_oldest_message_age_seconds",
            "Seconds the oldest delivery to a recipient agency has waited for its receipt (from the store).",
            ["agency"],
            registry=r,
        )
        #: exchange_retry_backlog: messages parked in retry (delay) queues.
        self.retry_backlog = Gauge(f"{PREFIX}_retry_backlog", "Messages waiting in retry delay queues.", registry=r)
        #: exchange_certificate_expiry_seconds{agency}: seconds until the signing certificate expires.
        self.certificate_expiry_seconds = Gauge(
            f"{PREFIX}_certificate_expiry_seconds",
            "Seconds until the agency's signing certificate expires (negative once expired).",
            ["agency"],
            registry=r,
        )
        #: exchange_outbox_size: envelopes stored but not yet confirmed by the broker.
        self.outbox_size = Gauge(
            f"{PREFIX}_outbox_size", "Messages in the outbox not yet confirmed by RabbitMQ.", registry=r
        )
        #: exchange_outbox_oldest_age_seconds: age of the oldest unpublished outbox entry.
        self.outbox_oldest_age_seconds = Gauge(
            f"{PREFIX}_outbox_oldest_age_seconds", "Age of the oldest outbox entry (0 when empty).", registry=r
        )
        #: exchange_broker_up: 1 while the node holds a working RabbitMQ connection.
        self.broker_up = Gauge(f"{PREFIX}_broker_up", "1 if RabbitMQ is connected, else 0.", registry=r)
        #: exchange_store_up: 1 while the store answers.
        self.store_up = Gauge(f"{PREFIX}_store_up", "1 if the store (SQLite/PostgreSQL) answers, else 0.", registry=r)

        # -- the operator's numbers, read from the store (so every process's documents count) -----
        #: exchange_unreceipted_oldest_age_seconds: the oldest document published without a receipt.
        self.unreceipted_oldest_age_seconds = Gauge(
            f"{PREFIX}_unreceipted_oldest_age_seconds",
            "Age of the oldest document published (confirmed by RabbitMQ) that has no receipt yet (0 when none).",
            registry=r,
        )
        #: exchange_unreceipted_oldest_age_by_agency_seconds{agency}: the same, per recipient agency.
        self.unreceipted_oldest_age_by_agency_seconds = Gauge(
            f"{PREFIX}_unreceipted_oldest_age_by_agency_seconds",
            "Age of the oldest document published to a recipient agency without its receipt (0 when none).",
            ["agency"],
            registry=r,
        )
        #: exchange_dead_letters_waiting: messages in the node's dead-letter queue, waiting for an operator.
        self.dead_letters_waiting = Gauge(
            f"{PREFIX}_dead_letters_waiting",
            "Dead letters waiting in the dead-letter queue for a replay or discard.",
            registry=r,
        )
        #: exchange_deliveries_by_state{state}: the store's (message, recipient) deliveries per state.
        self.deliveries_by_state = Gauge(
            f"{PREFIX}_deliveries_by_state",
            "Deliveries recorded by the store, by state (submitted, queued, delivered, failed).",
            ["state"],
            registry=r,
        )

        #: exchange_build_info{version,python}: constant 1, for joins and dashboards.
        self.build = Info(f"{PREFIX}_build", "Version of the exchange node.", registry=r)
        self.build.info({"version": version or _version(), "python": platform.python_version()})

    # -- helpers ---------------------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def aiohttp_handler(self) -> Callable[[Any], Any]:
        """An aiohttp handler serving this registry (``app.router.add_get("/metrics", …)``)."""
        return make_metrics_handler(self.registry)

    def names(self) -> Iterator[str]:
        """Every sample name this registry can expose (``_total``, ``_bucket``… included)."""
        return iter(sample_names(self.registry))


def sample_names(registry: CollectorRegistry) -> set[str]:
    """All sample names a registry exposes, including the ones of still-empty labelled metrics."""
    names: set[str] = set()
    for family in registry.collect():
        base = family.name
        if family.type == "counter":
            names.add(f"{base}_total")
        elif family.type == "histogram":
            names.update({f"{base}_bucket", f"{base}_sum", f"{base}_count"})
        elif family.type == "info":
            names.add(f"{base}_info")
        else:
            names.add(base)
        names.update(s.name for s in family.samples)
    return names


def make_metrics_handler(registry: CollectorRegistry) -> Callable[[Any], Any]:
    """Serve ``registry`` from aiohttp: the client's own handler (>= 0.24), else generate_latest."""
    try:
        from prometheus_client.aiohttp import make_aiohttp_handler
    except ImportError:  # older prometheus-client: plain text exposition, no content negotiation
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

        return handler
    return make_aiohttp_handler(registry)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("exchange")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


#: The process-wide registry of ``exchange serve``; tests build their own ``Metrics()``.
REGISTRY = CollectorRegistry(auto_describe=True)
#: The default instance on ``REGISTRY``.
METRICS = Metrics(REGISTRY)
