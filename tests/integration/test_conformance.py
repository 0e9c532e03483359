"""The adapter conformance kit, run against every adapter we ship, the example adapter, and a broken one.

Each ``Test…Conformance`` class runs the kit once (a fresh two-node bus on this
run's private vhost) and reports one test per check; the broken adapter proves
the kit fails, and says why, when an adapter breaks the contract.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from exchange.adapters.base import Adapter, DeliveryResult, Incoming
from exchange.adapters.recording import read_records
from exchange.conformance import ConformanceTests, EOfficeProbe, ProbeContext, SeenMessage, conformance_tests
from exchange.conformance.kit import Verdict, run_conformance
from exchange.store.base import Direction

pytestmark = [pytest.mark.broker]

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "exchange-adapter-mailbox" / "src"
if str(EXAMPLE_SRC) not in sys.path:
    sys.path.append(str(EXAMPLE_SRC))  # the example package is not installed; its import name is unique

from exchange_mailbox.adapter import MailboxAdapter  # noqa: E402
from exchange_mailbox.probe import MailboxProbe  # noqa: E402

BUILTIN_KINDS = ("pull", "webhook", "filedrop", "edxml")
PROBES_PACKAGE = "exchange.conformance.probes"


@pytest.fixture(scope="session")
def conformance_amqp_url(amqp_url: str) -> str:
    """The kit builds its buses in this test run's private vhost."""
    return amqp_url


# -- the recording adapter ------------------------------------------------------------------


class RecordingProbe(EOfficeProbe):
    """The recording adapter's E-Office is its JSONL journal.

    The journal keeps attachment digests, not bytes, and no subject: the probe looks both
    up in the node's store by those digests, which is what the journal vouches for.
    """

    kind = "recording"

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        self.ctx = ctx
        self.path = ctx.workdir / "recording.jsonl"
        return {"path": str(self.path)}

    async def seen(self) -> list[SeenMessage]:
        store = self.ctx.service.store
        out = []
        for r in read_records(self.path):
            record = await store.get_message(r["message_id"], Direction.IN)
            files = {name: await store.get_attachment(sha) or b"" for name, sha in r["attachments"].items()}
            out.append(
                SeenMessage(
                    r["message_id"],
                    r["kind"],
                    r["sender"],
                    subject=record.subject if record else "",
                    status_code=r["status"],
                    attachments=files,
                )
            )
        return out


class TestRecordingConformance(ConformanceTests):
    probe = RecordingProbe


# -- the example adapter (examples/exchange-adapter-mailbox) -------------------------------------


TestMailboxConformance = conformance_tests(MailboxProbe, adapter=MailboxAdapter)


# -- the built-in adapters, through the probes in exchange/conformance/probes/ --------


def _builtin_probes() -> dict[str, type[EOfficeProbe] | str]:
    """kind -> probe class, or why there is none (a missing module is a skip, a broken one a failure)."""
    found: dict[str, type[EOfficeProbe] | str] = {}
    try:
        package = importlib.import_module(PROBES_PACKAGE)
    except ModuleNotFoundError:
        return {kind: f"missing: {PROBES_PACKAGE} does not exist yet" for kind in BUILTIN_KINDS}
    names = {m.name for m in pkgutil.iter_modules(package.__path__)} | set(BUILTIN_KINDS)
    for name in sorted(n for n in names - {"recording"} if not n.startswith("_")):
        if importlib.util.find_spec(f"{PROBES_PACKAGE}.{name}") is None:
            found[name] = f"missing: {PROBES_PACKAGE.replace('.', '/')}/{name}.py does not exist yet"
            continue
        try:
            module = importlib.import_module(f"{PROBES_PACKAGE}.{name}")
        except Exception as exc:  # noqa: BLE001 - a probe that cannot be imported is reported as broken
            found[name] = f"broken: importing {PROBES_PACKAGE}.{name} raised {type(exc).__name__}: {exc}"
            continue
        classes = [
            c
            for c in vars(module).values()
            if isinstance(c, type) and issubclass(c, EOfficeProbe) and c.__module__ == module.__name__ and c.kind
        ]
        found[name] = (
            classes[0]
            if len(classes) == 1
            else (
                f"broken: {module.__name__} defines {len(classes)} EOfficeProbe subclasses with a kind; "
                "it must define one"
            )
        )
    return found


BUILTIN_PROBES = _builtin_probes()
for _kind, _probe in BUILTIN_PROBES.items():
    if isinstance(_probe, type):
        _cls = conformance_tests(_probe)
        globals()[_cls.__name__] = _cls
del _kind, _probe


@pytest.mark.parametrize("kind", sorted(BUILTIN_PROBES))
def test_every_builtin_adapter_has_a_probe(kind: str) -> None:
    probe = BUILTIN_PROBES[kind]
    if isinstance(probe, str) and probe.startswith("missing"):
        pytest.skip(f"no conformance probe for the {kind} adapter: {probe}")
    assert isinstance(probe, type), probe
    assert probe.kind == kind, f"{probe.__name__}.kind is {probe.kind!r}; the module is named {kind}"


# -- a broken adapter: the kit must fail, and say why -----------------------------------------


class _EOffice:
    """An in-memory E-Office shared by the broken adapter and its probe (same process)."""

    def __init__(self) -> None:
        self.accepted: list[SeenMessage] = []
        self.failures: collections.deque[str] = collections.deque()


EOFFICES: dict[str, _EOffice] = {}


class BrokenAdapter(Adapter):
    """Four classic mistakes: mangles non-ASCII file names, hands statuses over twice, reports an
    E-Office refusal as transient, and cannot be stopped twice."""

    kind = "broken"

    async def start(self) -> None:
        self.eoffice = EOFFICES[self.options["eoffice"]]
        self.stopped = False

    async def stop(self) -> None:
        if self.stopped:
            raise RuntimeError("already stopped")
        self.stopped = True

    async def deliver(self, message: Incoming) -> DeliveryResult:
        if self.eoffice.failures:
            self.eoffice.failures.popleft()
            return DeliveryResult.transient("E-Office said no")  # permanent refusals too: the bug
        h = message.envelope.header
        files = {a.name: message.attachments[a.id] for a in message.envelope.attachments if a.name.isascii()}
        seen = SeenMessage(
            message.message_id,
            h.kind.value,
            h.sender.code,
            subject=h.document.subject if h.document else "",
            status_code=h.status.code.value if h.status else None,
            attachments=files,
        )
        self.eoffice.accepted.extend([seen, seen] if h.status else [seen])
        return DeliveryResult.delivered()


class BrokenProbe(EOfficeProbe):
    kind = "broken"
    can_fail = frozenset({"transient", "permanent"})

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        key = str(ctx.workdir)
        self.eoffice = EOFFICES[key] = _EOffice()
        return {"eoffice": key}

    async def seen(self) -> list[SeenMessage]:
        return list(self.eoffice.accepted)

    def fail_next(self, outcome: str, times: int = 1) -> None:
        self.eoffice.failures.extend([outcome] * times)


async def test_the_kit_fails_a_broken_adapter_and_names_each_mistake(amqp_url: str, tmp_path: Path) -> None:
    report = await asyncio.wait_for(
        run_conformance(BrokenProbe, amqp_url=amqp_url, workdir=tmp_path, adapter=BrokenAdapter, timeout=10), 120
    )
    verdicts = {r.name: r.verdict for r in report.results}
    assert {name for name, v in verdicts.items() if v is Verdict.FAILED} == {
        "document_with_attachments_reaches_the_eoffice_once",
        "status_reaches_the_eoffice",
        "permanent_failure_sends_a_non_delivery_receipt",
        "no_message_reaches_the_eoffice_twice",
        "stop_is_safe_twice",
    }, str(report)
    # What the adapter gets right still passes: the kit fails precisely, not wholesale.
    for name in (
        "adapter_starts_from_its_options",
        "fan_out_copy_reaches_the_eoffice_once",
        "duplicate_envelope_reaches_the_eoffice_once",
        "transient_failure_is_retried_and_delivered_once",
    ):
        assert verdicts[name] is Verdict.PASSED, str(report)
    assert verdicts["document_sent_by_the_eoffice_is_delivered"] is Verdict.SKIPPED
    message = {r.name: r.message for r in report.results}
    assert "'Phụ lục 1.txt' is missing" in message["document_with_attachments_reaches_the_eoffice_once"]
    assert "received the status" in message["status_reaches_the_eoffice"]
    assert "2 times" in message["status_reaches_the_eoffice"]
    assert "answered transient" in message["permanent_failure_sends_a_non_delivery_receipt"]
    assert "second call of BrokenAdapter.stop() raised RuntimeError" in message["stop_is_safe_twice"]
    assert not report.ok and "5 failed" in str(report)


async def test_the_kit_reports_an_adapter_that_cannot_start_from_its_options(amqp_url: str, tmp_path: Path) -> None:
    class NoOptionsProbe(MailboxProbe):
        async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
            await super().start(ctx)
            return {}  # forgets options.path

    report = await run_conformance(NoOptionsProbe, amqp_url=amqp_url, workdir=tmp_path, adapter=MailboxAdapter)
    first = report.results[0]
    assert first.verdict is Verdict.FAILED
    assert "needs options.path" in first.message
    assert all(r.verdict is Verdict.FAILED and r.message.startswith("not run") for r in report.results[1:])


def test_the_pytest_plugin_loads_without_loading_the_bus() -> None:
    """pytest imports the plugin in every session of every project that installs exchange."""
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="pytest11") if ep.name == "exchange_conformance"]
    code = (
        f"import sys; import {ep.value}; "
        "print(sorted(m for m in ('aio_pika', 'lxml', 'sqlalchemy', 'signxml', 'cryptography', 'aiohttp') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


async def test_the_kit_says_how_to_register_an_adapter_that_is_not_installed(amqp_url: str, tmp_path: Path) -> None:
    class UnknownProbe(MailboxProbe):
        kind = "mailbox-not-installed"

    report = await run_conformance(UnknownProbe, amqp_url=amqp_url, workdir=tmp_path)  # and no adapter=
    assert report.results[0].verdict is Verdict.FAILED
    assert "no adapter is installed under the name 'mailbox-not-installed'" in report.results[0].message
    assert "adapter=YourAdapter" in report.results[0].message
