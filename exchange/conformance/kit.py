"""The adapter conformance kit: the same checks, on a real bus, for every adapter.

Given an :class:`~exchange.conformance.probe.EOfficeProbe` (which plays
the E-Office behind one adapter kind), the kit generates a small world with the
development PKI, starts two real nodes on RabbitMQ under a private topology
prefix, and checks what a user of the adapter relies on::

    node "central"                                node "local"
    000.00.00.G22  (sender, recording adapter)    000.00.00.H41  adapter under test ◀▶ probe (E-Office)
                                                  000.00.00.H29  recording adapter (fan-out sibling)

Each check is a method of :class:`ConformanceRun`, named for the behaviour it
proves; its failure message says what the adapter did wrong. Run it with
:func:`run_conformance` (async) or through the pytest integration
(:func:`exchange.conformance.conformance_tests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import importlib.util
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.conformance.probe import EOfficeProbe, ProbeContext, SeenMessage

if TYPE_CHECKING:
    from exchange.adapters.base import Adapter

# Only the standard library and the probe interface are imported at module level: pytest loads
# this module (through plugin.py) in every test session of every project that installs exchange.

#: The agency that sends to the adapter under test (node "central", recording adapter).
SENDER = "000.00.00.G22"
#: The agency the adapter under test hosts (node "local").
HOST = "000.00.00.H41"
#: A second recipient on the adapter's node, for the fan-out check (recording adapter).
PEER = "000.00.00.H29"

#: Backoff of the generated nodes: short, so transient-failure checks take seconds, not minutes.
RETRY_DELAYS = (1, 1, 1)
MAX_ATTEMPTS = 4
#: How many transient failures the transient check injects (must stay below MAX_ATTEMPTS).
TRANSIENT_FAILURES = 2


class Verdict(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    """One behaviour the kit proves, in the order the kit runs them."""

    name: str
    summary: str
    #: What the probe must support for the check to run: "transient", "permanent" or "send".
    needs: str = ""


CHECKS: tuple[Check, ...] = (
    Check("adapter_starts_from_its_options",
          "the node starts the adapter with the options the probe gave, for the agency it hosts"),
    Check("document_with_attachments_reaches_the_eoffice_once",
          "a document with attachments reaches the E-Office exactly once, attachments byte-identical, "
          "and the sender's tracking shows delivered with the recipient's signed receipt"),
    Check("fan_out_copy_reaches_the_eoffice_once",
          "of a document sent to several agencies, the E-Office gets its own copy exactly once"),
    Check("duplicate_envelope_reaches_the_eoffice_once",
          "the same envelope published twice more on the wire reaches the E-Office once"),
    Check("status_reaches_the_eoffice",
          "a business status answering a document the agency sent reaches its E-Office"),
    Check("transient_failure_is_retried_and_delivered_once",
          "after transient E-Office failures the bus retries and the document arrives exactly once",
          needs="transient"),
    Check("permanent_failure_sends_a_non_delivery_receipt",
          "a permanent E-Office refusal gives the sender a FAILED non-delivery receipt and the E-Office "
          "never shows the document", needs="permanent"),
    Check("document_sent_by_the_eoffice_is_delivered",
          "a document the E-Office sends through the adapter reaches the other agency and its sender "
          "sees delivered in tracking", needs="send"),
    Check("no_message_reaches_the_eoffice_twice",
          "after everything settled, no message the kit sent appears twice at the E-Office"),
    Check("stop_is_safe_twice", "Adapter.stop() can be called twice without raising"),
)

CHECK_NAMES = tuple(c.name for c in CHECKS)


class ConformanceFailure(AssertionError):
    """A check found the adapter misbehaving; the message says how."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    verdict: Verdict
    message: str = ""
    seconds: float = 0.0


@dataclass(slots=True)
class ConformanceReport:
    """The outcome of every check for one adapter kind."""

    kind: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.verdict is not Verdict.FAILED for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.verdict is Verdict.FAILED]

    def result(self, name: str) -> CheckResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no check named {name!r}; checks are {list(CHECK_NAMES)}")

    def raise_for_failures(self) -> None:
        """Raise :class:`ConformanceFailure` listing every failed check."""
        if not self.ok:
            raise ConformanceFailure(str(self))

    def __str__(self) -> str:
        lines = [f"conformance of adapter {self.kind!r}: "
                 f"{sum(r.verdict is Verdict.PASSED for r in self.results)} passed, "
                 f"{len(self.failures)} failed, {sum(r.verdict is Verdict.SKIPPED for r in self.results)} skipped"]
        for r in self.results:
            mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r.verdict.value]
            line = f"  {mark} {r.name} ({r.seconds:.1f}s)"
            if r.message:
                line += ": " + r.message.replace("\n", "\n      ")
            lines.append(line)
        return "\n".join(lines)


async def run_conformance(
    probe_cls: type[EOfficeProbe],
    *,
    amqp_url: str,
    workdir: str | os.PathLike[str],
    adapter: type[Adapter] | None = None,
    timeout: float = 20.0,
) -> ConformanceReport:
    """Run every check against the adapter ``probe_cls.kind`` on a fresh bus; never raises for a failed check.

    ``adapter`` is the adapter class when it is not installed under that kind (while developing it):
    the kit then registers it for the run. ``timeout`` bounds each wait for something to arrive.
    """
    run = ConformanceRun(probe_cls, amqp_url=amqp_url, workdir=Path(workdir), adapter=adapter, timeout=timeout)
    return await run.run()


def run_conformance_sync(probe_cls: type[EOfficeProbe], **kw: Any) -> ConformanceReport:
    """:func:`run_conformance` from synchronous code: its own event loop in its own thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="conformance") as pool:
        return pool.submit(asyncio.run, run_conformance(probe_cls, **kw)).result()


# -- plumbing -----------------------------------------------------------------------


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
                "EOfficeProbe.start: the node starts after the probe, with the options start returns")
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
def _registered(kind: str, cls: type[Adapter], where: Path):
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
            "importable module so an entry point can name it")
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
            problems.append(f"{name!r} differs ({len(b)} bytes, sha256 {hashlib.sha256(b).hexdigest()[:12]}…; "
                            f"sent {len(a)} bytes, sha256 {hashlib.sha256(a).hexdigest()[:12]}…)")
    return "; ".join(problems)


# -- the run ---------------------------------------------------------------------------


class ConformanceRun:
    """One world, one probe, every check. Use :meth:`run`."""

    def __init__(self, probe_cls: type[EOfficeProbe], *, amqp_url: str, workdir: Path,
                 adapter: type[Adapter] | None = None, timeout: float = 20.0, settle: float = 0.5) -> None:
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

    # -- the whole run -------------------------------------------------------------

    async def run(self) -> ConformanceReport:
        report = ConformanceReport(self.kind)
        started = time.monotonic()
        try:
            try:
                await self.setup()
                await self.check_adapter_starts_from_its_options()
            except Exception as exc:
                report.results.append(CheckResult(CHECKS[0].name, Verdict.FAILED, self._explain_setup(exc),
                                                  time.monotonic() - started))
                for check in CHECKS[1:]:
                    report.results.append(CheckResult(
                        check.name, Verdict.FAILED, f"not run: the bus with the {self.kind} adapter could not be "
                        f"set up (see {CHECKS[0].name})"))
                return report
            report.results.append(CheckResult(CHECKS[0].name, Verdict.PASSED, seconds=time.monotonic() - started))
            for check in CHECKS[1:]:
                report.results.append(await self._run_check(check))
            return report
        finally:
            await self.teardown()

    async def _run_check(self, check: Check) -> CheckResult:
        missing = self._unsupported(check)
        if missing:
            return CheckResult(check.name, Verdict.SKIPPED, missing)
        started = time.monotonic()
        method: Callable[[], Awaitable[None]] = getattr(self, f"check_{check.name}")
        try:
            # Every wait inside a check is bounded; this is the backstop for a probe that hangs.
            await asyncio.wait_for(method(), timeout=self.timeout * 4 + sum(RETRY_DELAYS) * 2)
        except ConformanceFailure as exc:
            return CheckResult(check.name, Verdict.FAILED, str(exc), time.monotonic() - started)
        except asyncio.TimeoutError:
            return CheckResult(check.name, Verdict.FAILED,
                               "the check did not finish in time: a probe or adapter call hangs",
                               time.monotonic() - started)
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            return CheckResult(check.name, Verdict.FAILED, f"the check crashed: {type(exc).__name__}: {exc}\n{tail}",
                               time.monotonic() - started)
        return CheckResult(check.name, Verdict.PASSED, seconds=time.monotonic() - started)

    def _unsupported(self, check: Check) -> str:
        if check.needs in ("transient", "permanent") and check.needs not in self.probe_cls.can_fail:
            return (f"the {self.kind} probe cannot inject {check.needs} failures "
                    f"(can_fail = {sorted(self.probe_cls.can_fail)})")
        if check.needs == "send" and not self.probe_cls.can_send:
            return f"the {self.kind} probe has no outgoing path (can_send = False)"
        return ""

    def _explain_setup(self, exc: BaseException) -> str:
        from exchange.errors import ExchangeError

        if isinstance(exc, ConformanceFailure):
            return str(exc)
        if isinstance(exc, ExchangeError):
            return (f"the node could not start the {self.kind} adapter for {HOST}: {exc.code}: {exc.message}")
        tail = "".join(traceback.format_exception(exc)[-4:]).strip()
        return f"setting up the bus with the {self.kind} adapter failed: {type(exc).__name__}: {exc}\n{tail}"

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
                    f"{self.kind!r}; they must name the same adapter kind")
            self._exit.enter_context(_registered(self.kind, self.adapter_cls, self.workdir / "entry-points"))
        else:
            from exchange.adapters.registry import available

            installed = available()
            if self.kind not in installed:
                raise ConformanceFailure(
                    f"no adapter is installed under the name {self.kind!r} (installed: {sorted(installed)}): install "
                    f"the package that registers it in the 'exchange.adapters' entry-point group (pip install -e .), "
                    f"or pass the class to the kit (adapter=YourAdapter)")

        await self._broker_answers()
        serve_http = _has_module("exchange.gateway.app")
        port = _free_port() if serve_http else 0
        specs = [
            AgencySpec(SENDER, "Văn phòng Chính phủ (conformance sender)", node="central", adapter="recording",
                       options={"path": str(self.workdir / "sender-eoffice.jsonl")}),
            AgencySpec(HOST, f"UBND tỉnh Nghệ An ({self.kind} adapter under test)", node="local", adapter=self.kind),
            AgencySpec(PEER, "UBND Thành phố Hồ Chí Minh (fan-out sibling)", node="local", adapter="recording",
                       options={"path": str(self.workdir / "peer-eoffice.jsonl")}),
        ]

        def nodes(local_port: int) -> list[NodeSpec]:
            kw: dict[str, Any] = dict(amqp_url=self.amqp_url, prefix=self.prefix, retry_delays=RETRY_DELAYS,
                                      max_attempts=MAX_ATTEMPTS)
            return [NodeSpec("central", http_port=0, **kw), NodeSpec("local", http_port=local_port, **kw)]

        # A first pass writes the PKI and store paths so a token can be issued before the probe starts.
        configs = build_world(world, specs, nodes(port))
        token = None
        if serve_http and _has_module("exchange.gateway.auth"):
            from exchange.devworld import issue_tokens

            token = (await issue_tokens(configs["local"])).get(HOST)
        ctx = ProbeContext(agency=HOST, workdir=eoffice, service=self._service_proxy,
                           gateway_url=f"http://127.0.0.1:{port}" if serve_http else None, token=token)
        self._exit.push_async_callback(self.probe.stop)
        try:
            options = dict(await self.probe.start(ctx))
        except Exception as exc:
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            raise ConformanceFailure(f"the {self.kind} probe's start() raised {type(exc).__name__}: {exc}\n{tail}") from exc
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
                "pass --conformance-amqp-url or set EXCHANGE_CONFORMANCE_AMQP_URL") from exc
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
        queues = [names.dlq, *(names.node_queue(n, lane) for n in self.nodes for lane in Lane),
                  *(names.retry_queue(d) for d in set(RETRY_DELAYS))]
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
        from exchange.adapters.base import OutgoingFile
        from exchange.envelope.model import DocumentCode, DocumentInfo

        self._counter += 1
        subject = f"Công văn kiểm tra {self.kind} #{self._counter} ({check}, {self.token})"
        files = files or {}
        result = await self.central.service.submit_document(
            SENDER, list(recipients), DocumentInfo(code=DocumentCode(str(self._counter), "KT-CF"), subject=subject),
            [OutgoingFile(name, data, "application/pdf" if name.endswith(".pdf") else "text/plain")
             for name, data in files.items()])
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

    async def _await_outcome(self, message_id: str, recipient: str = HOST, *, service: Any = None,
                             timeout: float | None = None) -> Any:
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
            + (f", the adapter's node has it as {incoming.value if incoming else 'not received'}" if recipient == HOST
               else "")
            + ". A handover that never returns, or raises every time, looks like this: deliver() must answer "
              "delivered, transient or permanent promptly")

    async def _await_copy(self, message_id: str, what: str) -> list[SeenMessage]:
        copies: list[SeenMessage] = []

        async def arrived() -> bool:
            copies[:] = await self._copies(message_id)
            return bool(copies)

        if not await self._wait(arrived, self.timeout):
            raise ConformanceFailure(
                f"the bus handed {what} {message_id} to the adapter and the adapter answered delivered, but the "
                f"E-Office has not got it after {self.timeout:.0f}s (it has seen: {_describe_seen(await self._seen())}). "
                "Answer delivered only once the E-Office has the message, and pass the bus message id on")
        await asyncio.sleep(self.settle)
        return await self._copies(message_id)

    def _exactly_once(self, copies: Sequence[SeenMessage], message_id: str, what: str) -> SeenMessage:
        if len(copies) != 1:
            raise ConformanceFailure(
                f"the E-Office received {what} {message_id} {len(copies)} times; it must reach the E-Office exactly "
                "once (the bus hands each message over once; an adapter must not write it twice, and should pass "
                "the message id on as an idempotency key)")
        return copies[0]

    def _check_document(self, seen: SeenMessage, message_id: str, files: Mapping[str, bytes], subject: str) -> None:
        if seen.kind != "document":
            raise ConformanceFailure(f"the E-Office got {message_id} as a {seen.kind!r}, not a 'document'")
        if seen.sender != SENDER:
            raise ConformanceFailure(f"the E-Office got {message_id} as sent by {seen.sender!r}; the sender is {SENDER}")
        if seen.subject != subject:
            raise ConformanceFailure(f"the E-Office got {message_id} with subject {seen.subject!r}; it was sent with "
                                     f"{subject!r} (the adapter must pass the document's metadata on unchanged)")
        diff = _files_diff(files, seen.attachments)
        if diff:
            raise ConformanceFailure(f"the attachments of {message_id} at the E-Office are not what was sent: {diff}. "
                                     "Attachments must reach the E-Office byte-identical, under their names")

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
                f"naming digest {sent.digest}; it shows {[(e.event, e.detail) for e in events]}")

    def _not_delivered(self, d: Any, message_id: str, what: str) -> ConformanceFailure:
        return ConformanceFailure(
            f"{what} {message_id} ended FAILED for the sender ({d.reason or 'no reason given'}): the adapter refused "
            "an ordinary message, answered permanent, or failed every attempt")

    # -- checks ---------------------------------------------------------------------------

    async def check_adapter_starts_from_its_options(self) -> None:
        """The node runs an adapter of the probe's kind for HOST (setup already started it from the options)."""
        from exchange.adapters.registry import adapter_class

        adapter = self.local.service.adapters.get(HOST)
        if adapter is None:
            raise ConformanceFailure(f"the node runs no adapter for {HOST}")
        expected = self.adapter_cls or adapter_class(self.kind)
        if type(adapter) is not expected:
            raise ConformanceFailure(
                f"the node loaded {type(adapter).__module__}.{type(adapter).__qualname__} for kind {self.kind!r}, "
                f"not {expected.__module__}.{expected.__qualname__}: another installed package registers the same "
                "entry-point name")
        if adapter.agency != HOST:
            raise ConformanceFailure(f"the adapter says it hosts {adapter.agency!r}; it was started for {HOST}: "
                                     "keep the agency given to Adapter.__init__")

    async def check_document_with_attachments_reaches_the_eoffice_once(self) -> None:
        from exchange.store.base import DeliveryState

        files = self._files("doc")
        mid = await self._send([HOST], "document", files)
        d = await self._await_outcome(mid)
        if d.state is DeliveryState.FAILED:
            raise self._not_delivered(d, mid, "the document")
        seen = self._exactly_once(await self._await_copy(mid, "the document"), mid, "the document")
        self._check_document(seen, mid, files, await self._subject(mid))
        await self._check_delivered_receipt(mid)

    async def check_fan_out_copy_reaches_the_eoffice_once(self) -> None:
        from exchange.adapters.recording import read_records
        from exchange.store.base import DeliveryState

        files = {"thong-bao.txt": "Thông báo gửi nhiều nơi".encode()}
        mid = await self._send([HOST, PEER], "fan-out", files)
        for recipient in (HOST, PEER):
            d = await self._await_outcome(mid, recipient)
            if d.state is DeliveryState.FAILED:
                raise self._not_delivered(d, mid, f"the fan-out copy for {recipient} of")
        seen = self._exactly_once(await self._await_copy(mid, "the fan-out document"), mid, "the fan-out document")
        self._check_document(seen, mid, files, await self._subject(mid))
        peer = [r for r in read_records(self.workdir / "peer-eoffice.jsonl") if r["message_id"] == mid]
        if len(peer) != 1:  # the bus's side of fan-out; the adapter cannot cause this
            raise ConformanceFailure(f"the other recipient {PEER} got {len(peer)} copies of {mid}, not 1")
        await self._check_delivered_receipt(mid, HOST)

    async def check_duplicate_envelope_reaches_the_eoffice_once(self) -> None:
        import aio_pika

        from exchange.envelope.parse import parse_envelope
        from exchange.routing import frame
        from exchange.routing.lanes import lane_of, routing_key
        from exchange.transport.topology import Names
        from exchange.store.base import DeliveryState, Direction

        files = {"cong-van.txt": "Công văn gửi lại".encode()}
        mid = await self._send([HOST], "duplicate", files)
        d = await self._await_outcome(mid)
        if d.state is DeliveryState.FAILED:
            raise self._not_delivered(d, mid, "the document")
        await self._await_copy(mid, "the document")
        # Republish the exact signed frame, as a peer does after a lost publisher confirm.
        store = self.central.service.store
        sent = await store.get_message(mid, Direction.OUT)
        _, envelope = parse_envelope(sent.envelope_xml)
        data = {a.id: await store.get_attachment(a.sha256) for a in envelope.attachments}
        body = frame.encode(sent.envelope_xml, data)
        handled = self.local.consumer.handled
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            route = await channel.get_exchange(Names(self.prefix).route)
            for i in range(2):
                await route.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                     message_id=f"{mid}/{HOST}/dup{i}",
                                     headers={"x-recipient": HOST, "x-message-id": mid, "x-sender": SENDER,
                                              "x-kind": "document"}),
                    routing_key=routing_key(HOST, lane_of(envelope.header)), timeout=10)

        async def consumed() -> bool:
            return self.local.consumer.handled >= handled + 2

        if not await self._wait(consumed, self.timeout):
            raise ConformanceFailure("the adapter's node did not consume the two duplicates in time")
        await asyncio.sleep(self.settle)
        self._exactly_once(await self._copies(mid), mid, "the duplicated document")
        events = [t.event for t in await store.timeline(mid) if t.recipient == HOST]
        if events.count("delivered") != 1:
            raise ConformanceFailure(f"the sender's timeline of {mid} shows 'delivered' {events.count('delivered')} "
                                     "times after the duplicates; it must show it once")

    async def check_status_reaches_the_eoffice(self) -> None:
        from exchange.envelope.model import DocumentCode, DocumentInfo, StatusCode
        from exchange.store.base import DeliveryState, Direction

        # The adapter's agency sends a document (straight through its node's service: this check is
        # about receiving the answer, not about the adapter's outgoing path) and the sender answers it.
        subject = f"Báo cáo gửi Văn phòng Chính phủ ({self.token})"
        sent = await self.local.service.submit_document(
            HOST, [SENDER], DocumentInfo(code=DocumentCode("7", "BC-UBND"), subject=subject))
        d = await self._await_outcome(sent.message_id, SENDER, service=self.local.service)
        if d.state is not DeliveryState.DELIVERED:
            raise ConformanceFailure(f"the bus could not deliver {HOST}'s document to {SENDER}: {d.reason}")

        async def received() -> bool:
            return await self.central.service.store.get_message(sent.message_id, Direction.IN) is not None

        await self._wait(received, self.timeout)
        status = await self.central.service.submit_status(SENDER, sent.message_id, StatusCode.ACCEPTED,
                                                          description="Đã tiếp nhận")
        self.sent[status.message_id] = "status"
        copies: list[SeenMessage] = []

        async def arrived() -> bool:
            copies[:] = await self._copies(status.message_id)
            return bool(copies)

        if not await self._wait(arrived, self.timeout):
            statuses = [s for s in await self._seen() if s.kind == "status"]
            hint = ""
            if any(s.status_code == "03" for s in statuses):
                hint = (" A status 03 did arrive, under another message id: pass the status's own bus message id "
                        "on (SeenMessage.message_id), not the document's")
            raise ConformanceFailure(
                f"status 03 (accepted) {status.message_id} from {SENDER}, answering {sent.message_id} that {HOST} "
                f"sent, has not reached the E-Office after {self.timeout:.0f}s (statuses it has: "
                f"{[(s.message_id, s.status_code) for s in statuses]}).{hint} Adapters must hand statuses over too")
        await asyncio.sleep(self.settle)
        seen = self._exactly_once(await self._copies(status.message_id), status.message_id, "the status")
        if seen.kind != "status" or seen.status_code != "03" or seen.sender != SENDER:
            raise ConformanceFailure(
                f"the E-Office got the status as kind={seen.kind!r}, status_code={seen.status_code!r}, "
                f"sender={seen.sender!r}; expected kind='status', status_code='03', sender={SENDER!r}")

    async def check_transient_failure_is_retried_and_delivered_once(self) -> None:
        from exchange.store.base import DeliveryState

        self.probe.fail_next("transient", TRANSIENT_FAILURES)
        handled = self.local.consumer.handled
        files = {"khan.txt": "Văn bản gửi lại sau lỗi tạm thời".encode()}
        mid = await self._send([HOST], "transient", files)
        d = await self._await_outcome(mid, timeout=self.timeout + sum(RETRY_DELAYS[:TRANSIENT_FAILURES]) * 3)
        copies = await self._copies(mid)
        if d.state is DeliveryState.FAILED:
            raise ConformanceFailure(
                f"the E-Office failed transiently {TRANSIENT_FAILURES} times and the sender got a non-delivery "
                f"receipt ({d.reason}): the adapter answered permanent for a transient failure. Answer "
                "DeliveryResult.transient(...) so the bus retries with backoff")
        if not copies:
            copies = await self._await_copy(mid, "the document")
        else:
            await asyncio.sleep(self.settle)
            copies = await self._copies(mid)
        seen = self._exactly_once(copies, mid, "the retried document")
        self._check_document(seen, mid, files, await self._subject(mid))
        attempts = self.local.consumer.handled - handled
        if attempts < TRANSIENT_FAILURES + 1:
            raise ConformanceFailure(
                f"the E-Office failed transiently {TRANSIENT_FAILURES} times, but the bus handed the document over "
                f"only {attempts} time(s): the adapter retried by itself (holding a worker) or answered delivered "
                "for a failed handover. Answer DeliveryResult.transient(...) and let the bus retry")
        await self._check_delivered_receipt(mid)

    async def check_permanent_failure_sends_a_non_delivery_receipt(self) -> None:
        from exchange.store.base import DeliveryState

        self.probe.fail_next("permanent", 1)
        mid = await self._send([HOST], "permanent", {"tu-choi.txt": b"refused by the E-Office"})
        d = await self._await_outcome(mid, timeout=self.timeout + sum(RETRY_DELAYS) * 2)
        await asyncio.sleep(self.settle)
        copies = await self._copies(mid)
        if d.state is DeliveryState.DELIVERED:
            if copies:
                raise ConformanceFailure(
                    f"the E-Office refused {mid} permanently, yet it ended up delivered: the adapter answered "
                    "transient, the bus retried and the E-Office took the retry. Answer DeliveryResult.permanent(...) "
                    "when the E-Office refuses a message for good")
            raise ConformanceFailure(
                f"the E-Office refused {mid} permanently, but the adapter answered delivered: the sender was told "
                "it arrived. Answer DeliveryResult.permanent(...) when the E-Office refuses")
        if copies:
            raise ConformanceFailure(
                f"the sender got a non-delivery receipt for {mid}, but the E-Office shows it as received "
                f"({len(copies)} time(s)): a refused message must not appear at the E-Office")
        events = [t for t in await self.central.service.store.timeline(mid) if t.recipient == HOST]
        failed = [t for t in events if t.event == "failed"]
        if len(failed) != 1 or not failed[0].detail:
            raise ConformanceFailure(
                f"the sender's timeline of {mid} should hold one 'failed' from the signed non-delivery receipt with "
                f"the reason; it holds {[(t.event, t.detail) for t in events]}")
        if failed[0].detail.startswith("retries-exhausted"):
            raise ConformanceFailure(
                f"{mid} failed only after every retry ({failed[0].detail}): the adapter answered transient for a "
                "permanent refusal. Answer DeliveryResult.permanent(...) so the sender learns at once")

    async def check_document_sent_by_the_eoffice_is_delivered(self) -> None:
        from exchange.store.base import DeliveryState

        subject = f"Văn bản do E-Office gửi qua {self.kind} ({self.token})"
        files = {"to-trinh.pdf": b"%PDF-1.4\n" + os.urandom(20_000), "ghi chú.txt": "Ghi chú kèm theo".encode()}
        await self.probe.send([SENDER], subject, files)
        inbox: list[Any] = []

        async def arrived() -> bool:
            entries = await self.central.service.inbox(SENDER, include_acked=True, limit=1000)
            inbox[:] = [e for e in entries if e.sender == HOST and e.subject == subject]
            return bool(inbox)

        if not await self._wait(arrived, self.timeout):
            raise ConformanceFailure(
                f"the E-Office sent a document with subject {subject!r} to {SENDER} through the adapter, but "
                f"{SENDER} has not received it after {self.timeout:.0f}s: the adapter did not submit it "
                "(BusHandle.submit_document) or changed its subject")
        await asyncio.sleep(self.settle)
        entries = await self.central.service.inbox(SENDER, include_acked=True, limit=1000)
        inbox[:] = [e for e in entries if e.sender == HOST and e.subject == subject]
        if len(inbox) != 1:
            raise ConformanceFailure(f"the E-Office sent one document but {SENDER} received {len(inbox)}: the adapter "
                                     "submitted it more than once (use an idempotency key per E-Office document)")
        mid = inbox[0].message_id
        fetched = await self.central.service.fetch(SENDER, mid)
        names = {a.id: a.name for a in fetched.envelope.attachments}
        diff = _files_diff(files, {names[i]: data for i, data in fetched.attachments.items()})
        if diff:
            raise ConformanceFailure(f"the attachments {SENDER} received from the E-Office are not what it sent: {diff}")
        d = await self._await_outcome(mid, SENDER, service=self.local.service)
        if d.state is not DeliveryState.DELIVERED:
            raise ConformanceFailure(f"{HOST}'s tracking of {mid} says {d.state.value}, not delivered: {d.reason}")
        track = await self.local.service.track(HOST, mid)
        if [x.state for x in track.deliveries] != [DeliveryState.DELIVERED]:
            raise ConformanceFailure(f"{HOST}'s tracking of {mid} shows {[(x.recipient, x.state.value) for x in track.deliveries]}")

    async def check_no_message_reaches_the_eoffice_twice(self) -> None:
        await asyncio.sleep(self.settle)
        counts = Counter(s.message_id for s in await self._seen() if s.message_id in self.sent)
        twice = {mid: n for mid, n in counts.items() if n > 1}
        if twice:
            raise ConformanceFailure(
                "messages reached the E-Office more than once: "
                + ", ".join(f"{mid} ({self.sent[mid]}) {n} times" for mid, n in twice.items()))

    async def check_stop_is_safe_twice(self) -> None:
        adapter = self.local.service.adapters[HOST]
        for call in ("first", "second"):
            try:
                await asyncio.wait_for(adapter.stop(), self.timeout)
            except asyncio.TimeoutError:
                raise ConformanceFailure(f"the {call} call of stop() did not return within {self.timeout:.0f}s") from None
            except Exception as exc:
                raise ConformanceFailure(
                    f"the {call} call of {type(adapter).__name__}.stop() raised {type(exc).__name__}: {exc}; stop() "
                    "must be safe to call twice (the node may stop an adapter that already stopped)") from exc
