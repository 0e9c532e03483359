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
from collections.abc import Awaitable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection
from cryptography import x509

from exchange.adapters.base import Adapter
from exchange.adapters.registry import adapter_class
from exchange.config import NodeConfig
from exchange.errors import ConfigError, PortInUseError
from exchange.hub.startup import hub_apply_task
from exchange.routing.directory import Directory
from exchange.routing.lanes import Lane
from exchange.service import ExchangeService
from exchange.transport.consumer import Consumer
from exchange.transport.relay import OutboxRelay
from exchange.transport.topology import BindingLedger, Topology, declare, migrate_legacy

if TYPE_CHECKING:
    from exchange.gateway.protocol import GatewayRunner
    from exchange.observability.metrics import Metrics
    from exchange.signing.sign import Signer

log = structlog.get_logger("exchange.node")

#: Up to this many hosted agencies, every key is loaded (and checked) before the node starts;
#: beyond, keys load on first use and a background task loads the rest (2 ms each: a province
#: hub hosting 3,355 agencies would otherwise spend 7 s before it takes its first message).
EAGER_SIGNERS = 200


class LazySigners(Mapping[str, "Signer"]):
    """Agency code -> Signer, each read from its key and certificate files once, on first use.

    ``certificate(code)`` reads only the certificate (for readiness and expiry gauges),
    so those checks do not force every private key to be loaded.
    """

    def __init__(self, files: Mapping[str, tuple[Path, Path]]) -> None:
        self._files = dict(files)
        self._loaded: dict[str, Signer] = {}
        self._certs: dict[str, x509.Certificate] = {}
        #: code -> what went wrong loading it (filled by load_all / warm)
        self.failed: dict[str, str] = {}

    def __getitem__(self, code: str) -> Signer:
        signer = self._loaded.get(code)
        if signer is not None:
            return signer
        if code not in self._files:
            raise KeyError(code)
        from exchange.signing.sign import Signer

        key, cert = self._files[code]
        signer = Signer.from_files(key, cert)
        if signer.agency_code != code:
            raise ConfigError(f"the certificate configured for {code} names agency {signer.agency_code}")
        self._loaded[code] = signer
        self._certs[code] = signer.certificate
        return signer

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, code: object) -> bool:
        return code in self._files

    @property
    def loaded(self) -> int:
        return len(self._loaded)

    def certificate(self, code: str) -> x509.Certificate:
        cert = self._certs.get(code)
        if cert is None:
            from exchange.signing.keys import load_certificate

            cert = self._certs[code] = load_certificate(self._files[code][1])
        return cert

    def load_all(self) -> None:
        """Load every signer now; the first bad key or certificate raises (a start-time ConfigError)."""
        for code in self._files:
            self.__getitem__(code)

    async def warm(self, batch: int = 25) -> None:
        """Load every signer in small batches between other work; failures are logged and kept."""
        from exchange.errors import ExchangeError

        codes = [c for c in self._files if c not in self._loaded]
        for i in range(0, len(codes), batch):
            for code in codes[i : i + batch]:
                try:
                    self.__getitem__(code)
                except ExchangeError as exc:
                    self.failed[code] = exc.message
                    log.error(
                        "keys.unusable",
                        agency=code,
                        detail=exc.message,
                        hint="fix the key/cert paths of this agency in [[agencies]]; the node cannot sign for it",
                    )
            await asyncio.sleep(0)
        log.info("keys.loaded", agencies=len(self._loaded), failed=len(self.failed))


def amqp_ssl_context(config: NodeConfig) -> ssl.SSLContext | None:
    """TLS to RabbitMQ when the config names a CA (amqps:// URLs)."""
    a = config.amqp
    if not (a.ca_file or a.url.startswith("amqps://")):
        return None
    ctx = ssl.create_default_context(cafile=a.ca_file or None)
    if a.cert_file:
        ctx.load_cert_chain(a.cert_file, a.key_file or None)
    return ctx


async def build_service(cfg: NodeConfig, *, metrics: Metrics | None = None) -> ExchangeService:
    """Load the directory, keys, trust store and store of a node: everything but the broker."""
    from exchange.envelope.schema import envelope_schema
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
    signers = LazySigners({a.code: (Path(a.key), Path(a.cert)) for a in cfg.agencies})
    for code, (key, cert) in signers._files.items():
        for path in (key, cert):
            if not path.is_file():
                raise ConfigError(f"{path} (configured for agency {code}) does not exist; fix [[agencies]]")
    if len(signers) <= EAGER_SIGNERS:
        signers.load_all()
    verifier = Verifier(TrustStore.from_paths(cfg.ca_files, cfg.crl_files))
    store = open_store(cfg.store_url)
    await store.open()
    return ExchangeService(
        node=cfg.name,
        directory=directory,
        store=store,
        signers=signers,
        verifier=verifier,
        limits=cfg.limits,
        max_attempts=cfg.amqp.max_attempts,
        retry_delays=cfg.amqp.retry_delays,
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

    def __init__(
        self, config: NodeConfig, *, serve_http: bool = True, metrics: Metrics | None = None, workers: int = 16
    ) -> None:
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
        self._tasks: list[asyncio.Task[object]] = []
        self._runner: GatewayRunner | None = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._depth_since: dict[Lane, float] = {}
        self._waiting_labels: set[str] = set()
        self.migration: asyncio.Task[int] | None = None
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
            classes: dict[str, type[Adapter]] = {}  # entry points are read from package metadata: once per kind
            for agency in self.config.agencies:
                cls = classes.get(agency.adapter) or classes.setdefault(agency.adapter, adapter_class(agency.adapter))
                adapter = cls(agency.code, agency.options, service.handle(agency.code))
                await adapter.start()
                service.adapters[agency.code] = adapter
            if isinstance(service.signers, LazySigners) and service.signers.loaded < len(service.signers):
                self._tasks.append(asyncio.create_task(service.signers.warm(), name="keys-warm"))
            self.relay = OutboxRelay(
                service.store,
                service.outbox_event,
                confirm_timeout=self.config.amqp.confirm_timeout,
                bundle_max=self.config.amqp.bundle_max,
                metrics=self.metrics,
            )
            self._tasks.append(asyncio.create_task(self._amqp_supervisor(), name="amqp-supervisor"))
            self._tasks.append(asyncio.create_task(self.relay.run(), name="outbox-relay"))
            hub_apply = hub_apply_task(self.config, service.directory)  # [hub], in the background (docs/FEDERATION.md)
            if hub_apply is not None:
                self._tasks.append(hub_apply)
            if self.metrics is not None:
                self._tasks.append(asyncio.create_task(self._gauges(self.metrics), name="gauges"))
        except BaseException:
            await self.stop(step_timeout=5.0)
            raise
        log.info(
            "node.started", node=self.config.name, agencies=[a.code for a in self.config.agencies], http=self.http_url
        )

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
        hint = (
            "choose another with --port N, [http] port in the node's TOML, or EXCHANGE__HTTP__PORT (0: any free port)"
        )
        if exc.errno == errno.EADDRINUSE:
            return PortInUseError(
                f"HTTP port {http.port} on {http.host} is already in use (another node or program holds it); "
                f"stop it or {hint}"
            )
        return ConfigError(
            f"cannot listen on {http.host}:{http.port} ({exc.strerror or exc}); check [http] host, or {hint}"
        )

    async def _start_http(self) -> None:
        from aiohttp import web

        from exchange import console
        from exchange.gateway.app import create_app
        from exchange.gateway.protocol import GatewayRunner

        assert self.service is not None
        http = self.config.http
        app = create_app(self.service, http=http, metrics=self.metrics, readiness=self.readiness)
        console.mount(
            app,
            self.service,
            self.config,
            readiness=self.readiness,  # /console (docs/CONSOLE.md)
            amqp_ssl=amqp_ssl_context(self.config),
        )
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
        addresses = self._runner.addresses  # (host, port, ...) of each listening socket
        port = addresses[0][1] if addresses else http.port
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
                except Exception as exc:  # noqa: BLE001 - refused, DNS, TLS, auth: logged, retried with backoff
                    self._set_broker_up(0)
                    log.warning(
                        "broker.unreachable",
                        error=type(exc).__name__,
                        retry_in=backoff,
                        hint="is RabbitMQ running? deploy/setup.sh starts it",
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
            try:
                await asyncio.wait_for(self._set_up(self.connection), setup_timeout)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker's words are logged; the node keeps trying
                self._set_broker_up(0)
                log.error(
                    "broker.setup_failed",
                    error=type(exc).__name__,
                    detail=str(exc)[:500],
                    retry_in=backoff,
                    hint="the broker refused the node's topology or went away while it was declared; "
                    "fix what the detail names (e.g. delete a queue declared with other arguments)",
                )
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
        hosted = [a.code for a in cfg.agencies]
        ledger = self._binding_ledger()
        self.topology = await declare(
            publish,
            prefix=cfg.amqp.prefix,
            node=cfg.name,
            agencies=hosted,
            retry_delays=cfg.amqp.retry_delays,
            delivery_limit=cfg.amqp.delivery_limit,
            connection=connection,
            stale=ledger.previous(),
            bound=ledger.previous(),
        )
        ledger.record(hosted)
        consume = await connection.channel()
        await consume.set_qos(prefetch_count=cfg.amqp.prefetch)
        consume_queues = {
            lane: await consume.declare_queue(q.name, durable=True, passive=True)
            for lane, q in self.topology.node_queues.items()
        }
        self._consume_channel = consume
        self._publish_channel = publish
        self.consumer = Consumer(
            self.service,
            self.topology,
            self.topology.retry,
            self.topology.dlx,
            workers=self.workers,
            confirm_timeout=cfg.amqp.confirm_timeout,
            metrics=self.metrics,
        )
        await self.consumer.start(consume_queues)
        self.relay.exchange = self.topology.route
        if self.migration is None or self.migration.done():
            # In the background: the lanes already take new messages while legacy queues drain.
            self.migration = asyncio.create_task(self._migrate(connection, self.topology), name="legacy-migration")
        self._on_broker_back()
        log.info("broker.connected", prefix=cfg.amqp.prefix)

    def _binding_ledger(self) -> BindingLedger:
        """Where this node remembers the agencies it bound, per broker (credentials left out) and prefix."""
        from urllib.parse import urlsplit

        url = urlsplit(self.config.amqp.url)
        scope = f"{url.hostname}:{url.port or 5672}{url.path or '/'}|{self.config.amqp.prefix}|{self.config.name}"
        return BindingLedger(self.config.data_dir / "amqp-bindings.json", scope)

    async def _migrate(self, connection: AbstractRobustConnection, topology: Topology) -> int:
        """Move messages left in legacy per-agency queues into the lanes; logged, retried at the next start."""
        try:
            return await migrate_legacy(connection, topology, confirm_timeout=self.config.amqp.confirm_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed migration must not stop the node; it is retried
            # The connection dropping mid-way is the broker outage already logged once as
            # broker.connection_lost: no second alarm for it; anything else is an error.
            lost = isinstance(exc, (ConnectionError, aio_pika.exceptions.AMQPConnectionError))
            (log.info if lost else log.error)(
                "topology.migration_interrupted" if lost else "topology.migration_failed",
                error=type(exc).__name__,
                detail=str(exc)[:500],
                hint="legacy queues keep their messages; the next start tries again",
            )
            return 0

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
        self._set_broker_up(0)
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
        log.info(
            "broker.reconnected",
            prefix=self.config.amqp.prefix,
            outage_seconds=round(time.monotonic() - lost_at, 1) if lost_at is not None else None,
        )
        self._on_broker_back()

    def _on_broker_back(self) -> None:
        self._connected.set()
        self._set_broker_up(1)
        if self.service is not None:
            self.service.outbox_event.set()  # publish what waited during the outage

    def _set_broker_up(self, up: int) -> None:
        if self.metrics is not None:
            self.metrics.broker_up.set(up)

    async def wait_connected(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    # -- probes and gauges -----------------------------------------------------

    async def readiness(self) -> dict[str, bool]:
        """Broker connected, store answering, every hosted agency's certificate currently valid."""
        assert self.service is not None
        store_ok = True
        try:
            await self.service.store.ping()
        except Exception:  # noqa: BLE001 - any failure to answer is "store not ready"
            store_ok = False
        now = datetime.now(UTC)
        signers = self.service.signers
        certificates = (
            [signers.certificate(c) for c in signers]
            if isinstance(signers, LazySigners)
            else [s.certificate for s in signers.values()]
        )
        keys_ok = all(c.not_valid_before_utc <= now < c.not_valid_after_utc for c in certificates) and not (
            isinstance(signers, LazySigners) and signers.failed
        )
        broker_ok = self._connected.is_set() and self.connection is not None and not self.connection.is_closed
        return {"broker": broker_ok, "store": store_ok, "keys": keys_ok}

    async def _gauges(self, metrics: Metrics, interval: float = 5.0) -> None:
        """Refresh gauges that are read, not counted: queue depth and age, outbox, expiry, up-ness."""
        assert self.service is not None
        while True:
            try:
                ready = await self.readiness()
                metrics.store_up.set(1 if ready["store"] else 0)
                size, oldest = await self.service.store.outbox_stats()
                metrics.outbox_size.set(size)
                metrics.outbox_oldest_age_seconds.set(oldest or 0)
                now = datetime.now(UTC)
                signers = self.service.signers
                for code in signers:
                    cert = signers.certificate(code) if isinstance(signers, LazySigners) else signers[code].certificate
                    metrics.certificate_expiry_seconds.labels(code).set(
                        (cert.not_valid_after_utc - now).total_seconds()
                    )
                await self._store_gauges(metrics)
                if self.topology is not None and self._connected.is_set():
                    await self._queue_gauges(metrics)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the gauge loop must outlive a store or broker hiccup
                log.debug("gauges.error", error=type(exc).__name__)
            await asyncio.sleep(interval)

    async def _store_gauges(self, metrics: Metrics) -> None:
        """The operator's numbers, from the store: a document sent by any process (`exchange send`) counts."""
        from exchange.console.data import ConsoleData

        assert self.service is not None
        for state, count in (await self.service.store.delivery_counts()).items():
            metrics.deliveries_by_state.labels(state).set(count)
        now = datetime.now(UTC)
        oldest = await ConsoleData(self.service.store).oldest_unreceipted_by_agency()
        ages = {agency: max((now - at).total_seconds(), 0.0) for agency, at in oldest.items()}
        for agency in self._unreceipted_agencies - set(ages):
            metrics.unreceipted_oldest_age_by_agency_seconds.labels(agency).set(0)  # its receipts came
        for agency, age in ages.items():
            metrics.unreceipted_oldest_age_by_agency_seconds.labels(agency).set(age)
        self._unreceipted_agencies |= set(ages)
        metrics.unreceipted_oldest_age_seconds.set(max(ages.values(), default=0.0))

    async def _queue_gauges(self, metrics: Metrics) -> None:
        """The node's lane queues from the broker; per agency, waiting deliveries from the store.

        With one queue per lane for all hosted agencies, the broker no longer knows how much
        waits for one agency; the store does: deliveries this node sent that no receipt has
        closed yet, per recipient, and how long the oldest has waited.
        """
        assert self.topology is not None and self.connection is not None and self.service is not None
        channel = await self.connection.channel()
        try:
            now = time.time()
            for lane, queue in self.topology.node_queues.items():
                declared = await channel.declare_queue(queue.name, passive=True)
                depth = declared.declaration_result.message_count or 0
                metrics.queue_depth.labels(lane.value).set(depth)
                if depth == 0:
                    self._depth_since.pop(lane, None)
                    age = 0.0
                else:
                    # Approximated from our side: how long the lane has had a backlog without the
                    # consumer taking anything from it.
                    since = self._depth_since.setdefault(lane, now)
                    taken = self.consumer.last_taken.get(lane, 0.0) if self.consumer else 0.0
                    age = now - max(since, taken)
                metrics.lane_oldest_message_age_seconds.labels(lane.value).set(age)
            retry_depth = 0
            for delay in self.topology.retry_delays:
                declared = await channel.declare_queue(self.topology.names.retry_queue(delay), passive=True)
                retry_depth += declared.declaration_result.message_count or 0
            metrics.retry_backlog.set(retry_depth)
            declared = await channel.declare_queue(self.topology.names.dlq, passive=True)
            metrics.dead_letters_waiting.set(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()
        await self._agency_gauges(metrics)

    async def _agency_gauges(self, metrics: Metrics) -> None:
        """Per recipient agency: deliveries waiting for a receipt and the age of the oldest (from the store).

        Only agencies with something waiting have a series; it is dropped when they drain, so
        3,355 idle communes cost no series.
        """
        assert self.service is not None
        waiting = await self.service.store.waiting_deliveries()
        for agency, (count, oldest) in waiting.items():
            metrics.deliveries_pending.labels(agency).set(count)
            metrics.queue_oldest_message_age_seconds.labels(agency).set(oldest)
        for agency in self._waiting_labels - waiting.keys():
            for gauge in (metrics.deliveries_pending, metrics.queue_oldest_message_age_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(agency)
        self._waiting_labels = set(waiting)

    # -- shutdown ----------------------------------------------------------------

    async def stop(self, *, step_timeout: float = 20.0) -> None:
        """Stop consuming, let in-flight handovers finish, then close everything.

        Each step is bounded by ``step_timeout``: a broker or peer that stops answering must not
        keep a node from stopping (unacked messages go back to the queue; the store's dedupe makes
        their redelivery harmless).
        """
        self._stopping = True

        async def bounded(step: str, awaitable: Awaitable[object]) -> None:
            try:
                await asyncio.wait_for(awaitable, step_timeout)
            except TimeoutError:
                log.warning("node.stop_step_timeout", node=self.config.name, step=step, timeout=step_timeout)
            except Exception as exc:  # noqa: BLE001 - closing something already broken; the other steps still run
                log.info("node.stop_step_failed", node=self.config.name, step=step, error=type(exc).__name__)

        if self.consumer is not None:
            # bounded itself, and always cancels its workers
            await self.consumer.stop(grace=min(self.stop_grace, step_timeout))
        if self.migration is not None:
            self._tasks.append(self.migration)
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
