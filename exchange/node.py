"""One running node: store, keys, adapters, the AMQP side (relay + consumer) and the gateway.

The node starts even while RabbitMQ is down: submissions land in the outbox
and a supervisor keeps trying to connect with backoff. Once connected, the
robust connection restores channels and consumers by itself after an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import ssl
import time
from datetime import datetime, timezone

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection

from exchange.adapters.registry import adapter_class
from exchange.config import NodeConfig
from exchange.errors import ConfigError, PortInUseError
from exchange.transport.consumer import Consumer
from exchange.routing.directory import Directory
from exchange.routing.lanes import Lane
from exchange.transport.relay import OutboxRelay
from exchange.transport.topology import Topology, declare
from exchange.service import ExchangeService

log = structlog.get_logger("exchange.node")


def amqp_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """TLS to RabbitMQ when the config names a CA (amqps:// URLs)."""
    a = config.amqp
    if not (a.ca_file or a.url.startswith("amqps://")):
        return None
    ctx = ssl.create_default_context(cafile=a.ca_file or None)
    if a.cert_file:
        ctx.load_cert_chain(a.cert_file, a.key_file or None)
    return ctx


async def build_service(cfg: NodeConfig, *, metrics: object | None = None) -> ExchangeService:
    """Load the directory, keys, trust store and store of a node: everything but the broker."""
    from exchange.envelope.schema import envelope_schema
    from exchange.signing.sign import Signer
    from exchange.signing.trust import TrustStore
    from exchange.signing.verify import Verifier
    from exchange.store import open_store

    # Meta-validate and compile the envelope XSD now (about a second of CPU): a broken install
    # fails at start with a ConfigError, and the first document does not pay for it.
    envelope_schema()
    directory = Directory.load(cfg.directory_file)
    for agency in cfg.agencies:
        entry = directory.require(agency.code)
        if entry.node != cfg.name:
            raise ConfigError(
                f"agency {agency.code} is configured on node {cfg.name} but the directory says node "
                f"{entry.node} hosts it; fix [[agencies]] or the directory"
            )
    signers = {a.code: Signer.from_files(a.key, a.cert) for a in cfg.agencies}
    for code, signer in signers.items():
        if signer.agency_code != code:
            raise ConfigError(f"the certificate configured for {code} names agency {signer.agency_code}")
    verifier = Verifier(TrustStore.from_paths(cfg.ca_files, cfg.crl_files))
    store = open_store(cfg.store_url)
    await store.open()
    return ExchangeService(
        node=cfg.name, directory=directory, store=store, signers=signers, verifier=verifier,
        limits=cfg.limits, max_attempts=cfg.amqp.max_attempts, retry_delays=cfg.amqp.retry_delays,
        metrics=metrics,
    )


#: What the AMQP client logs on every reconnect attempt (per retry, while the broker is away): the
#: node logs ``broker.connection_lost`` once when it goes and ``broker.reconnected`` once when it is back.
_RECONNECT_NOISE = (
    ("aiormq.connection", "error when creating transport"),
    ("aio_pika.robust_connection", "Connection attempt to"),
    ("aio_pika.robust_connection", "Connection to "),
    ("aio_pika.robust_connection", "Reconnect attempt failed"),
)


class _ReconnectNoise(logging.Filter):
    """Drops the AMQP client's per-attempt reconnect lines (record.msg is the unformatted template)."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_reconnect_attempts() -> None:
    """Install the filters once per process (idempotent)."""
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in _RECONNECT_NOISE:
        by_logger[name] = (*by_logger.get(name, ()), prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ReconnectNoise) for f in logger.filters):
            logger.addFilter(_ReconnectNoise(prefixes))


class Node:
    """Assemble and run everything one ``exchange serve`` process does."""

    def __init__(self, config: NodeConfig, *, serve_http: bool = True, metrics: object | None = None,
                 workers: int = 16) -> None:
        self.config = config
        self.serve_http = serve_http
        self.metrics = metrics
        self.workers = workers
        self.service: ExchangeService | None = None
        self.connection: AbstractRobustConnection | None = None
        self.topology: Topology | None = None
        self.consumer: Consumer | None = None
        self.relay: OutboxRelay | None = None
        self.http_url: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._runner = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._depth_since: dict[tuple[str, Lane], float] = {}
        self._ages: dict[tuple[str, Lane], float] = {}
        self._unreceipted_agencies: set[str] = set()
        self._lost_at: float | None = None
        #: Seconds a stop waits for in-flight handovers before dropping them (unacked: redelivered).
        self.stop_grace = 5.0

    # -- assembly --------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, load keys, bind the gateway, start adapters; connect to RabbitMQ in the background.

        The HTTP port is bound before anything else starts, so a taken port fails the start at
        once (:class:`~exchange.errors.PortInUseError`). A start that fails or is cancelled part
        way stops what it started: nothing is left running to keep the process alive.
        """
        if self.serve_http:
            self._check_http_port()  # before the seconds build_service takes (the XSD, keys, store)
        try:
            self.service = service = await build_service(self.config, metrics=self.metrics)
            if self.serve_http:
                await self._start_http()
            for agency in self.config.agencies:
                cls = adapter_class(agency.adapter)
                adapter = cls(agency.code, agency.options, service.handle(agency.code))
                await adapter.start()
                service.adapters[agency.code] = adapter
            self.relay = OutboxRelay(service.store, service.outbox_event,
                                     confirm_timeout=self.config.amqp.confirm_timeout, metrics=self.metrics)
            self._tasks.append(asyncio.create_task(self._amqp_supervisor(), name="amqp-supervisor"))
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
            if self.metrics is not None:
                self._tasks.append(asyncio.create_task(self._gauges(), name="gauges"))
        except BaseException:
            await self.stop(step_timeout=5.0)
            raise
        log.info("node.started", node=self.config.name, agencies=[a.code for a in self.config.agencies],
                 http=self.http_url)

    def _check_http_port(self) -> None:
        """Fail at once if the gateway's port is taken (the real bind in _start_http checks again)."""
        import socket

        http = self.config.http
        if not http.port:
            return  # any free port
        try:
            addresses = socket.getaddrinfo(http.host, http.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError:
            return  # an unresolvable host: the real bind says so
        for family, kind, proto, _, address in addresses:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise self._bind_error(exc) from None

    def _bind_error(self, exc: OSError) -> ConfigError:
        http = self.config.http
        hint = "choose another with --port N, [http] port in the node's TOML, or EXCHANGE__HTTP__PORT (0: any free port)"
        if exc.errno == errno.EADDRINUSE:
            return PortInUseError(
                f"HTTP port {http.port} on {http.host} is already in use (another node or program holds it); "
                f"stop it or {hint}")
        return ConfigError(f"cannot listen on {http.host}:{http.port} ({exc.strerror or exc}); "
                           f"check [http] host, or {hint}")

    async def _start_http(self) -> None:
        from aiohttp import web

        from exchange import console
        from exchange.gateway.app import create_app
        from exchange.gateway.protocol import GatewayRunner

        assert self.service is not None
        http = self.config.http
        app = create_app(self.service, http=http, metrics=self.metrics, readiness=self.readiness)
        console.mount(app, self.service, self.config, readiness=self.readiness,  # /console (docs/CONSOLE.md)
                      amqp_ssl=amqp_ssl_context(self.config))
        self._runner = GatewayRunner(app, access_log=None)  # problem+json for what aiohttp cannot parse
        await self._runner.setup()
        ctx = None
        if http.tls_cert:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(http.tls_cert, http.tls_key or None)
            if http.tls_client_ca:
                ctx.load_verify_locations(http.tls_client_ca)
                ctx.verify_mode = ssl.CERT_OPTIONAL
        site = web.TCPSite(self._runner, http.host, http.port, ssl_context=ctx)
        try:
            await site.start()
        except OSError as exc:
            raise self._bind_error(exc) from None
        port = site._server.sockets[0].getsockname()[1] if site._server else http.port  # type: ignore[union-attr]
        self.http_url = f"{'https' if ctx else 'http'}://{http.host}:{port}"

    async def _amqp_supervisor(self, setup_timeout: float = 60.0) -> None:
        """Connect with backoff until RabbitMQ answers and the node's setup succeeds.

        Setup (topology, consumers, relay) is retried whole, with backoff, when it fails or
        does not finish within ``setup_timeout``: say a queue exists with other arguments
        (PRECONDITION_FAILED), or the broker went away between connecting and declaring.
        Each failure is logged with the broker's own words, so an operator can fix it
        while the node keeps trying.
        """
        backoff = 0.5
        while True:
            if self.connection is None:
                try:
                    self.connection = await self._connect()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._set_gauge("broker_up", 0)
                    log.warning("broker.unreachable", error=type(exc).__name__, retry_in=backoff,
                                hint="is RabbitMQ running? deploy/setup.sh starts it")
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
            try:
                await asyncio.wait_for(self._set_up(self.connection), setup_timeout)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set_gauge("broker_up", 0)
                log.error("broker.setup_failed", error=type(exc).__name__, detail=str(exc)[:500], retry_in=backoff,
                          hint="the broker refused the node's topology or went away while it was declared; "
                               "fix what the detail names (e.g. delete a queue declared with other arguments)")
                await self._tear_down()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def _connect(self) -> AbstractRobustConnection:
        """``aio_pika.connect_robust``, but holding the connection while it connects.

        The robust connection connects in a task of its own that survives (and swallows) the
        cancellation of whoever awaits it. Cancelled mid-connect (a stop while the broker
        accepts TCP but never answers AMQP), that task would keep reconnecting forever and
        keep the process from exiting; closing the connection is what ends it.
        """
        from aio_pika.connection import make_url

        cfg = self.config
        connection = aio_pika.RobustConnection(
            make_url(cfg.amqp.url, client_properties={"connection_name": f"exchange {cfg.name}"}),
            ssl_context=amqp_ssl_context(cfg),
        )
        try:
            await connection.connect(timeout=10)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5.0)
            raise
        connection.close_callbacks.add(lambda *_: self._on_broker_lost())
        connection.reconnect_callbacks.add(lambda *_: self._on_broker_reconnected())
        quiet_reconnect_attempts()
        return connection

    async def _set_up(self, connection: AbstractRobustConnection) -> None:
        """Declare the topology, start consuming and let the relay publish."""
        assert self.service is not None and self.relay is not None
        cfg = self.config
        publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
        self.topology = await declare(
            publish, prefix=cfg.amqp.prefix, agencies=[a.code for a in cfg.agencies],
            retry_delays=cfg.amqp.retry_delays, delivery_limit=cfg.amqp.delivery_limit,
        )
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=cfg.amqp.prefetch)
        consume_queues = {
            key: await consume.declare_queue(q.name, durable=True, passive=True)
            for key, q in self.topology.agency_queues.items()
        }
        self._consume_channel = consume
        self._publish_channel = publish
        self.consumer = Consumer(self.service, self.topology, self.topology.retry, self.topology.dlx,
                                 workers=self.workers, confirm_timeout=cfg.amqp.confirm_timeout,
                                 metrics=self.metrics)
        await self.consumer.start(consume_queues)
        self.relay.exchange = self.topology.route
        self._on_broker_back()
        log.info("broker.connected", prefix=cfg.amqp.prefix)

    async def _tear_down(self, timeout: float = 10.0) -> None:
        """Undo a failed setup: stop what started, close the connection (the next try reconnects)."""
        consumer, self.consumer = self.consumer, None
        if self.relay is not None:
            self.relay.exchange = None
        connection, self.connection = self.connection, None
        with contextlib.suppress(Exception):
            if consumer is not None:
                await asyncio.wait_for(consumer.stop(grace=1.0), timeout)
        with contextlib.suppress(Exception):
            if connection is not None:
                await asyncio.wait_for(connection.close(), timeout)

    def _on_broker_lost(self) -> None:
        first = self._connected.is_set()
        self._connected.clear()
        self._set_gauge("broker_up", 0)
        if not first:
            return  # a failed reconnect attempt closes again: the outage was logged when it began
        self._lost_at = time.monotonic()
        if self._stopping:
            log.info("broker.connection_closed")  # our own shutdown: nothing for an operator to chase
        else:
            log.warning("broker.connection_lost", hint="the node reconnects by itself; documents wait in the outbox")

    def _on_broker_reconnected(self) -> None:
        """The robust connection is back after an outage: one line, however many attempts it took."""
        lost_at, self._lost_at = self._lost_at, None
        log.info("broker.reconnected", prefix=self.config.amqp.prefix,
                 outage_seconds=round(time.monotonic() - lost_at, 1) if lost_at is not None else None)
        self._on_broker_back()

    def _on_broker_back(self) -> None:
        self._connected.set()
        self._set_gauge("broker_up", 1)
        if self.service is not None:
            self.service.outbox_event.set()  # publish what waited during the outage

    def _set_gauge(self, name: str, value: float, *labels: str) -> None:
        gauge = getattr(self.metrics, name, None) if self.metrics is not None else None
        if gauge is not None:
            (gauge.labels(*labels) if labels else gauge).set(value)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- probes and gauges -----------------------------------------------------

    async def readiness(self) -> dict[str, bool]:
        """Broker connected, store answering, every hosted agency's certificate currently valid."""
        assert self.service is not None
        store_ok = True
        try:
            await self.service.store.ping()
        except Exception:
            store_ok = False
        now = datetime.now(timezone.utc)
        keys_ok = all(s.certificate.not_valid_before_utc <= now < s.certificate.not_valid_after_utc
                      for s in self.service.signers.values())
        broker_ok = self._connected.is_set() and self.connection is not None and not self.connection.is_closed
        return {"broker": broker_ok, "store": store_ok, "keys": keys_ok}

    async def _gauges(self, interval: float = 5.0) -> None:
        """Refresh gauges that are read, not counted: queue depth and age, outbox, expiry, up-ness."""
        assert self.service is not None
        while True:
            try:
                ready = await self.readiness()
                self._set_gauge("store_up", 1 if ready["store"] else 0)
                size, oldest = await self.service.store.outbox_stats()
                self._set_gauge("outbox_size", size)
                self._set_gauge("outbox_oldest_age_seconds", oldest or 0)
                now = datetime.now(timezone.utc)
                for code, signer in self.service.signers.items():
                    self._set_gauge("certificate_expiry_seconds",
                                    (signer.certificate.not_valid_after_utc - now).total_seconds(), code)
                await self._store_gauges()
                if self.topology is not None and self._connected.is_set():
                    await self._queue_gauges()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("gauges.error", error=type(exc).__name__)
            await asyncio.sleep(interval)

    async def _store_gauges(self) -> None:
        """The operator's numbers, from the store: a document sent by any process (`exchange send`) counts."""
        from exchange.console.data import ConsoleData

        assert self.service is not None
        for state, count in (await self.service.store.delivery_counts()).items():
            self._set_gauge("deliveries_by_state", count, state)
        now = datetime.now(timezone.utc)
        oldest = await ConsoleData(self.service.store).oldest_unreceipted_by_agency()
        ages = {agency: max((now - at).total_seconds(), 0.0) for agency, at in oldest.items()}
        for agency in self._unreceipted_agencies - set(ages):
            self._set_gauge("unreceipted_oldest_age_by_agency_seconds", 0, agency)  # its receipts came
        for agency, age in ages.items():
            self._set_gauge("unreceipted_oldest_age_by_agency_seconds", age, agency)
        self._unreceipted_agencies |= set(ages)
        self._set_gauge("unreceipted_oldest_age_seconds", max(ages.values(), default=0.0))

    async def _queue_gauges(self) -> None:
        assert self.topology is not None and self.connection is not None
        channel = await self.connection.channel()
        try:
            now = time.time()
            for (agency, lane), queue in self.topology.agency_queues.items():
                declared = await channel.declare_queue(queue.name, passive=True)
                depth = declared.declaration_result.message_count
                self._set_gauge("queue_depth", depth, agency, lane.value)
                key = (agency, lane)
                if depth == 0:
                    self._depth_since.pop(key, None)
                    age = 0.0
                else:
                    # Age of the oldest waiting message, approximated from our side: how long the
                    # queue has had a backlog without the consumer taking anything from it.
                    since = self._depth_since.setdefault(key, now)
                    taken = self.consumer.last_taken.get(key, 0.0) if self.consumer else 0.0
                    age = now - max(since, taken)
                self._ages[key] = age
            for agency in {a for a, _ in self.topology.agency_queues}:
                self._set_gauge("queue_oldest_message_age_seconds",
                                max(self._ages.get((agency, lane), 0.0) for lane in Lane), agency)
            retry_depth = 0
            for delay in self.topology.retry_delays:
                declared = await channel.declare_queue(self.topology.names.retry_queue(delay), passive=True)
                retry_depth += declared.declaration_result.message_count
            self._set_gauge("retry_backlog", retry_depth)
            declared = await channel.declare_queue(self.topology.names.dlq, passive=True)
            self._set_gauge("dead_letters_waiting", declared.declaration_result.message_count)
        finally:
            await channel.close()

    # -- shutdown ----------------------------------------------------------------

    async def stop(self, *, step_timeout: float = 20.0) -> None:
        """Stop consuming, let in-flight handovers finish, then close everything.

        Each step is bounded by ``step_timeout``: a broker or peer that stops answering must not
        keep a node from stopping (unacked messages go back to the queue; the store's dedupe makes
        their redelivery harmless).
        """
        self._stopping = True

        async def bounded(step: str, awaitable) -> None:
            try:
                await asyncio.wait_for(awaitable, step_timeout)
            except TimeoutError:
                log.warning("node.stop_step_timeout", node=self.config.name, step=step, timeout=step_timeout)
            except Exception as exc:  # closing something already broken
                log.info("node.stop_step_failed", node=self.config.name, step=step, error=type(exc).__name__)

        if self.consumer is not None:
            # bounded itself, and always cancels its workers
            await self.consumer.stop(grace=min(self.stop_grace, step_timeout))
        for task in self._tasks:
            task.cancel()
        await bounded("tasks", asyncio.gather(*self._tasks, return_exceptions=True))
        self._tasks.clear()
        if self._runner is not None:
            await bounded("http", self._runner.cleanup())
        if self.connection is not None:
            await bounded("amqp", self.connection.close())
        if self.service is not None:
            for adapter in self.service.adapters.values():
                await bounded(f"adapter {adapter.__class__.__name__}", adapter.stop())
            await self.service.store.close()
        log.info("node.stopped", node=self.config.name)
