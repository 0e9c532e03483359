"""Per-link Prometheus metrics, polled from the hub's management API (``exchange hub exporter``).

Metrics (label ``link``; never a message id):

* ``exchange_hub_link_up``                1 while the link's shovel is running, else 0
* ``exchange_hub_link_backlog_messages``  messages waiting in the link queue (ready + in flight)
* ``exchange_hub_link_oldest_age_seconds`` how long the head of the link queue has waited (0 when empty)
* ``exchange_hub_unrouted_messages``      messages parked because no node, home or link claims them
* ``exchange_hub_scrape_ok``              1 if the last poll of the management API succeeded
"""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exchange.errors import ExchangeError
from exchange.hub.links import ManagementApi
from exchange.hub.status import HubStatus, hub_status

log = structlog.get_logger("exchange.hub")


class HubMetrics:
    """The gauges of one hub's links, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.up = Gauge("exchange_hub_link_up", "1 while the link's shovel is running, else 0.", ["link"], registry=r)
        self.backlog = Gauge(
            "exchange_hub_link_backlog_messages", "Messages waiting in the link queue.", ["link"], registry=r
        )
        self.oldest = Gauge(
            "exchange_hub_link_oldest_age_seconds",
            "Seconds the oldest message in the link queue has waited (0 when empty).",
            ["link"],
            registry=r,
        )
        self.unrouted = Gauge(
            "exchange_hub_unrouted_messages",
            "Messages parked on this hub because nothing claims their agency code.",
            registry=r,
        )
        self.scrape_ok = Gauge(
            "exchange_hub_scrape_ok", "1 if the last poll of the management API succeeded.", registry=r
        )
        self.last_poll = Gauge("exchange_hub_last_poll_timestamp_seconds", "When the last poll succeeded.", registry=r)
        self._known: set[str] = set()

    def update(self, status: HubStatus) -> None:
        seen = set()
        for s in status.links:
            seen.add(s.link)
            self.up.labels(s.link).set(1 if s.up else 0)
            self.backlog.labels(s.link).set(s.backlog)
            if s.oldest_seconds is not None:
                self.oldest.labels(s.link).set(s.oldest_seconds)
            elif s.backlog == 0:
                self.oldest.labels(s.link).set(0)
        for gone in self._known - seen:  # a removed link stops being reported (and alerted on)
            for g in (self.up, self.backlog, self.oldest):
                g.remove(gone)
        self._known = seen
        self.unrouted.set(status.unrouted)
        self.scrape_ok.set(1)
        self.last_poll.set(time.time())


async def poll(api_url: str, prefix: str, vhost: str, metrics: HubMetrics) -> None:
    """One poll; a failure marks the scrape failed (alerted on) and never raises."""
    try:
        async with ManagementApi(api_url) as api:
            metrics.update(await hub_status(api, prefix, vhost))
    except (TimeoutError, ExchangeError, OSError) as exc:
        metrics.scrape_ok.set(0)
        log.warning("hub.poll_failed", error=type(exc).__name__, detail=getattr(exc, "message", str(exc))[:200])


async def serve_exporter(
    api_url: str, prefix: str, vhost: str, *, host: str, port: int, interval: float = 15.0
) -> None:
    """Poll every ``interval`` seconds and serve ``/metrics`` until cancelled."""
    metrics = HubMetrics()

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("hub.exporter_listening", host=host, port=port)
    try:
        while True:
            await poll(api_url, prefix, vhost, metrics)
            await asyncio.sleep(interval)
    finally:
        await runner.cleanup()
