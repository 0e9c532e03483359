"""The test world of the conformance kit: two real nodes on RabbitMQ, the probe, and how checks act in it.

:meth:`ConformanceWorld.setup` generates a small world with the development PKI and starts two
nodes under a private topology prefix (see :mod:`exchange.conformance.kit` for the picture);
its helpers send, wait and observe. The checks themselves are in :mod:`exchange.conformance.checks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.conformance.catalogue import (
    HOST,
    MAX_ATTEMPTS,
    PEER,
    RETRY_DELAYS,
    SENDER,
    ConformanceFailure,
)
from exchange.conformance.probe import EOfficeProbe, ProbeContext, SeenMessage

if TYPE_CHECKING:
    from exchange.adapters.base import Adapter

# Only the standard library and the probe interface are imported at module level (the node,
# aio-pika and the rest are imported where used): see catalogue.py.


class _NodeService:
    """Stands for the adapter node's ExchangeService in :class:`ProbeContext`.

    Probes start before the node (the node's TOML needs the options they return),
    so the service exists only once ``EOfficeProbe.start`` has returned.
    """

    def __init__(self) -> None:
        self._target: Any = None

    def __getattr__(self, name: str) -> Any:
        target = object.__getattribute__(self, "_target")
        if target is None:
            raise RuntimeError(
                "ProbeContext.service is usable once the node runs (in seen, fail_next, send), not inside "
                "EOfficeProbe.start: the node starts after the probe, with the options start returns"
            )
        return getattr(target, name)

    def __repr__(self) -> str:
        return f"<node service {'not started' if self._target is None else self._target.node}>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _registered(kind: str, cls: type[Adapter], where: Path) -> Iterator[None]:
    """Make ``cls`` the adapter ``kind`` for this process: a throw-away distribution with one entry point.

    The node finds adapters only through entry points, so the kit uses the same path
    an installed package would instead of patching the registry.
    """
    target = f"{cls.__module__}:{cls.__qualname__}"
    module = importlib.import_module(cls.__module__)
    obj: Any = module
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    if obj is not cls:
        raise ConformanceFailure(
            f"the adapter class {cls!r} cannot be loaded as {target}: define it at module level of an "
            "importable module so an entry point can name it"
        )
    dist = where / f"exchange_conformance_{uuid.uuid4().hex[:8]}-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.name.split('-')[0]}\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[exchange.adapters]\n{kind} = {target}\n")
    sys.path.insert(0, str(where))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(where))
        shutil.rmtree(dist, ignore_errors=True)


def _describe_seen(seen: Sequence[SeenMessage], limit: int = 8) -> str:
    if not seen:
        return "nothing"
    items = [f"{s.kind} {s.message_id} from {s.sender}" for s in seen[-limit:]]
    more = f" (and {len(seen) - limit} earlier)" if len(seen) > limit else ""
    return "; ".join(items) + more


def _files_diff(expected: Mapping[str, bytes], got: Mapping[str, bytes]) -> str:
    import hashlib

    problems = []
    for name in sorted(set(expected) - set(got)):
        problems.append(f"{name!r} is missing")
    for name in sorted(set(got) - set(expected)):
        problems.append(f"{name!r} was not sent")
    for name in sorted(set(expected) & set(got)):
        a, b = expected[name], got[name]
        if a != b:
            problems.append(
                f"{name!r} differs ({len(b)} bytes, sha256 {hashlib.sha256(b).hexdigest()[:12]}…; "
                f"sent {len(a)} bytes, sha256 {hashlib.sha256(a).hexdigest()[:12]}…)"
            )
    return "; ".join(problems)


class ConformanceWorld:
    """One world and one probe: set up, act, observe, tear down. :class:`~exchange.conformance.checks.ConformanceRun`
    adds the checks."""

    def __init__(
        self,
        probe_cls: type[EOfficeProbe],
        *,
        amqp_url: str,
        workdir: Path,
        adapter: type[Adapter] | None = None,
        timeout: float = 20.0,
        settle: float = 0.5,
    ) -> None:
        if not probe_cls.kind:
            raise ValueError(f"{probe_cls.__name__}.kind is empty: name the adapter kind the probe plays")
        self.probe_cls = probe_cls
        self.kind = probe_cls.kind
        self.amqp_url = amqp_url
        self.workdir = Path(workdir)
        self.adapter_cls = adapter
        self.timeout = timeout
        #: How long to watch for a second copy after the first arrived.
        self.settle = settle
        self.prefix = f"conformance-{uuid.uuid4().hex[:8]}"
        self.token = uuid.uuid4().hex[:6]
        self.probe: EOfficeProbe = probe_cls()
        self.nodes: dict[str, Any] = {}
        self.sent: dict[str, str] = {}  # message id -> check that sent it to HOST
        self._service_proxy = _NodeService()
        self._exit = contextlib.AsyncExitStack()
        self._counter = 0

    # -- world ----------------------------------------------------------------------

    async def setup(self) -> None:
        from exchange.devworld import AgencySpec, NodeSpec, build_world

        self.workdir.mkdir(parents=True, exist_ok=True)
        world = self.workdir / "world"
        eoffice = self.workdir / "eoffice"
        eoffice.mkdir(parents=True, exist_ok=True)
        if self.adapter_cls is not None:
            if self.adapter_cls.kind and self.adapter_cls.kind != self.kind:
                raise ConformanceFailure(
                    f"{self.adapter_cls.__name__}.kind is {self.adapter_cls.kind!r} but the probe plays "
                    f"{self.kind!r}; they must name the same adapter kind"
                )
            self._exit.enter_context(_registered(self.kind, self.adapter_cls, self.workdir / "entry-points"))
        else:
            from exchange.adapters.registry import available

            installed = available()
            if self.kind not in installed:
                raise ConformanceFailure(
                    f"no adapter is installed under the name {self.kind!r} (installed: {sorted(installed)}): install "
                    f"the package that registers it in the 'exchange.adapters' entry-point group (pip install -e .), "
                    f"or pass the class to the kit (adapter=YourAdapter)"
                )

        await self._broker_answers()
        serve_http = _has_module("exchange.gateway.app")
        port = _free_port() if serve_http else 0
        specs = [
            AgencySpec(
                SENDER,
                "Văn phòng Chính phủ (conformance sender)",
                node="central",
                adapter="recording",
                options={"path": str(self.workdir / "sender-eoffice.jsonl")},
            ),
            AgencySpec(HOST, f"UBND tỉnh Nghệ An ({self.kind} adapter under test)", node="local", adapter=self.kind),
            AgencySpec(
                PEER,
                "UBND Thành phố Hồ Chí Minh (fan-out sibling)",
                node="local",
                adapter="recording",
                options={"path": str(self.workdir / "peer-eoffice.jsonl")},
            ),
        ]

        def nodes(local_port: int) -> list[NodeSpec]:
            kw: dict[str, Any] = dict(
                amqp_url=self.amqp_url, prefix=self.prefix, retry_delays=RETRY_DELAYS, max_attempts=MAX_ATTEMPTS
            )
            return [NodeSpec("central", http_port=0, **kw), NodeSpec("local", http_port=local_port, **kw)]

        # A first pass writes the PKI and store paths so a token can be issued before the probe starts.
        configs = build_world(world, specs, nodes(port))
        token = None
        if serve_http and _has_module("exchange.gateway.auth"):
            from exchange.devworld import issue_tokens

            token = (await issue_tokens(configs["local"])).get(HOST)
        ctx = ProbeContext(
            agency=HOST,
            workdir=eoffice,
            service=self._service_proxy,
            gateway_url=f"http://127.0.0.1:{port}" if serve_http else None,
            token=token,
        )
        self._exit.push_async_callback(self.probe.stop)
        try:
            options = dict(await self.probe.start(ctx))
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            raise ConformanceFailure(
                f"the {self.kind} probe's start() raised {type(exc).__name__}: {exc}\n{tail}"
            ) from exc
        specs[1] = AgencySpec(HOST, specs[1].name, node="local", adapter=self.kind, options=options)
        configs = build_world(world, specs, nodes(port))
        self._exit.push_async_callback(self._delete_topology)
        await self._start_node(configs["local"], serve_http=serve_http)
        await self._start_node(configs["central"], serve_http=False)
        self._service_proxy._target = self.local.service

    async def _broker_answers(self) -> None:
        import aio_pika

        try:
            connection = await aio_pika.connect(self.amqp_url, timeout=10)
        except Exception as exc:
            from urllib.parse import urlsplit

            u = urlsplit(self.amqp_url)
            where = f"{u.scheme}://{u.hostname}:{u.port or 5672}{u.path or '/'}"
            raise ConformanceFailure(
                f"RabbitMQ does not answer at {where} ({type(exc).__name__}: {exc}); the kit needs a broker: "
                "pass --conformance-amqp-url or set EXCHANGE_CONFORMANCE_AMQP_URL"
            ) from exc
        await connection.close()

    async def _start_node(self, path: Path, *, serve_http: bool) -> None:
        from exchange.config import load_config
        from exchange.node import Node

        cfg = load_config(path)
        node = Node(cfg, serve_http=serve_http, workers=8)
        self._exit.push_async_callback(node.stop)
        self.nodes[cfg.name] = node
        await node.start()
        await node.wait_connected(30)

    async def teardown(self) -> None:
        with contextlib.suppress(Exception):
            await self._exit.aclose()

    async def _delete_topology(self) -> None:
        """Remove every queue and exchange of this run's prefix (the broker may be shared)."""
        import aio_pika

        from exchange.routing.lanes import Lane
        from exchange.transport.topology import Names

        names = Names(self.prefix)
        queues = [
            names.dlq,
            *(names.node_queue(n, lane) for n in self.nodes for lane in Lane),
            *(names.retry_queue(d) for d in set(RETRY_DELAYS)),
        ]
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(self.amqp_url, timeout=10)
            async with connection:
                for name in queues:
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.queue_delete(name)
                        await channel.close()
                for name in (names.route, names.retry, names.dlx, *(names.migrated_marker(n) for n in self.nodes)):
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.exchange_delete(name)
                        await channel.close()

    @property
    def local(self) -> Any:
        return self.nodes["local"]

    @property
    def central(self) -> Any:
        return self.nodes["central"]

    # -- helpers ------------------------------------------------------------------------

    def _files(self, label: str) -> dict[str, bytes]:
        """Attachments whose bytes would betray any re-encoding: binary, and UTF-8 text with a Vietnamese name."""
        return {
            f"quyet-dinh-{label}.pdf": b"%PDF-1.7\n" + os.urandom(40_000) + b"\r\n\x00%%EOF",
            "Phụ lục 1.txt": "Danh sách đơn vị: Sở Nội vụ, Sở Tài chính\r\n".encode() + os.urandom(16).hex().encode(),
        }

    async def _send(self, recipients: Sequence[str], check: str, files: Mapping[str, bytes] | None = None) -> str:
        from exchange.adapters.base import OutgoingFile, SubmitResult
        from exchange.envelope.model import DocumentCode, DocumentInfo

        self._counter += 1
        subject = f"Công văn kiểm tra {self.kind} #{self._counter} ({check}, {self.token})"
        files = files or {}
        result: SubmitResult = await self.central.service.submit_document(
            SENDER,
            list(recipients),
            DocumentInfo(code=DocumentCode(str(self._counter), "KT-CF"), subject=subject),
            [
                OutgoingFile(name, data, "application/pdf" if name.endswith(".pdf") else "text/plain")
                for name, data in files.items()
            ],
        )
        if HOST in recipients:
            self.sent[result.message_id] = check
        return result.message_id

    async def _seen(self) -> list[SeenMessage]:
        try:
            return list(await self.probe.seen())
        except Exception as exc:
            raise ConformanceFailure(f"the probe's seen() raised {type(exc).__name__}: {exc}") from exc

    async def _copies(self, message_id: str) -> list[SeenMessage]:
        return [s for s in await self._seen() if s.message_id == message_id]

    async def _wait(self, predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if await predicate():
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)

    async def _delivery(self, service: Any, message_id: str, recipient: str) -> Any:
        return next((d for d in await service.store.deliveries(message_id) if d.recipient == recipient), None)

    async def _await_outcome(
        self, message_id: str, recipient: str = HOST, *, service: Any = None, timeout: float | None = None
    ) -> Any:
        """Wait until the sender's tracking shows delivered or failed for ``recipient``; explain a timeout."""
        from exchange.store.base import DeliveryState

        service = service or self.central.service
        final = (DeliveryState.DELIVERED, DeliveryState.FAILED)
        found: list[Any] = []

        async def settled() -> bool:
            d = await self._delivery(service, message_id, recipient)
            found[:] = [d]
            return d is not None and d.state in final

        if await self._wait(settled, timeout or self.timeout):
            return found[0]
        d = found[0] if found else None
        incoming = None
        if recipient == HOST:
            incoming = await self.local.service.store.incoming_state(message_id, HOST)
        raise ConformanceFailure(
            f"{message_id} to {recipient} was neither delivered nor failed after {timeout or self.timeout:.0f}s: "
            f"the sender's tracking says {d.state.value if d else 'nothing'}"
            + (
                f", the adapter's node has it as {incoming.value if incoming else 'not received'}"
                if recipient == HOST
                else ""
            )
            + ". A handover that never returns, or raises every time, looks like this: deliver() must answer "
            "delivered, transient or permanent promptly"
        )

    async def _await_copy(self, message_id: str, what: str) -> list[SeenMessage]:
        copies: list[SeenMessage] = []

        async def arrived() -> bool:
            copies[:] = await self._copies(message_id)
            return bool(copies)

        if not await self._wait(arrived, self.timeout):
            raise ConformanceFailure(
                f"the bus handed {what} {message_id} to the adapter and the adapter answered delivered, but the "
                f"E-Office has not got it after {self.timeout:.0f}s "
                f"(it has seen: {_describe_seen(await self._seen())}). "
                "Answer delivered only once the E-Office has the message, and pass the bus message id on"
            )
        await asyncio.sleep(self.settle)
        return await self._copies(message_id)

    def _exactly_once(self, copies: Sequence[SeenMessage], message_id: str, what: str) -> SeenMessage:
        if len(copies) != 1:
            raise ConformanceFailure(
                f"the E-Office received {what} {message_id} {len(copies)} times; it must reach the E-Office exactly "
                "once (the bus hands each message over once; an adapter must not write it twice, and should pass "
                "the message id on as an idempotency key)"
            )
        return copies[0]

    def _check_document(self, seen: SeenMessage, message_id: str, files: Mapping[str, bytes], subject: str) -> None:
        if seen.kind != "document":
            raise ConformanceFailure(f"the E-Office got {message_id} as a {seen.kind!r}, not a 'document'")
        if seen.sender != SENDER:
            raise ConformanceFailure(
                f"the E-Office got {message_id} as sent by {seen.sender!r}; the sender is {SENDER}"
            )
        if seen.subject != subject:
            raise ConformanceFailure(
                f"the E-Office got {message_id} with subject {seen.subject!r}; it was sent with "
                f"{subject!r} (the adapter must pass the document's metadata on unchanged)"
            )
        diff = _files_diff(files, seen.attachments)
        if diff:
            raise ConformanceFailure(
                f"the attachments of {message_id} at the E-Office are not what was sent: {diff}. "
                "Attachments must reach the E-Office byte-identical, under their names"
            )

    async def _subject(self, message_id: str) -> str:
        from exchange.store.base import Direction

        record = await self.central.service.store.get_message(message_id, Direction.OUT)
        return record.subject if record else ""

    async def _check_delivered_receipt(self, message_id: str, recipient: str = HOST) -> None:
        """The sender's timeline has one 'delivered' for ``recipient`` naming the digest of what was sent."""
        from exchange.store.base import Direction

        store = self.central.service.store
        sent = await store.get_message(message_id, Direction.OUT)
        events = [t for t in await store.timeline(message_id) if t.recipient == recipient and t.event == "delivered"]
        if len(events) != 1 or events[0].detail != f"digest {sent.digest}":
            raise ConformanceFailure(
                f"the sender's timeline of {message_id} should show one 'delivered' from {recipient}'s signed receipt "
                f"naming digest {sent.digest}; it shows {[(e.event, e.detail) for e in events]}"
            )

    def _not_delivered(self, d: Any, message_id: str, what: str) -> ConformanceFailure:
        return ConformanceFailure(
            f"{what} {message_id} ended FAILED for the sender ({d.reason or 'no reason given'}): the adapter refused "
            "an ordinary message, answered permanent, or failed every attempt"
        )
