"""The checks of the conformance kit, each a method of :class:`ConformanceRun` named for the behaviour it proves.

A check's failure message says what the adapter did wrong. :func:`run_conformance` runs them all
in a fresh world (:class:`~exchange.conformance.world.ConformanceWorld`); the catalogue
(:data:`~exchange.conformance.catalogue.CHECKS`) says which exist and what each needs.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.conformance.catalogue import (
    CHECKS,
    HOST,
    PEER,
    RETRY_DELAYS,
    SENDER,
    TRANSIENT_FAILURES,
    Check,
    CheckResult,
    ConformanceFailure,
    ConformanceReport,
    Verdict,
)
from exchange.conformance.probe import EOfficeProbe, SeenMessage
from exchange.conformance.world import ConformanceWorld, _files_diff

if TYPE_CHECKING:
    from exchange.adapters.base import Adapter


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


class ConformanceRun(ConformanceWorld):
    """One world, one probe, every check. Use :meth:`run`."""

    # -- the whole run -------------------------------------------------------------

    async def run(self) -> ConformanceReport:
        report = ConformanceReport(self.kind)
        started = time.monotonic()
        try:
            try:
                await self.setup()
                await self.check_adapter_starts_from_its_options()
            except Exception as exc:  # noqa: BLE001 - a probe/adapter that cannot start is a reported failure
                report.results.append(
                    CheckResult(CHECKS[0].name, Verdict.FAILED, self._explain_setup(exc), time.monotonic() - started)
                )
                for check in CHECKS[1:]:
                    report.results.append(
                        CheckResult(
                            check.name,
                            Verdict.FAILED,
                            f"not run: the bus with the {self.kind} adapter could not be set up (see {CHECKS[0].name})",
                        )
                    )
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
        except TimeoutError:
            return CheckResult(
                check.name,
                Verdict.FAILED,
                "the check did not finish in time: a probe or adapter call hangs",
                time.monotonic() - started,
            )
        except Exception as exc:  # noqa: BLE001 - a crashing check is reported as failed; the others still run
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            return CheckResult(
                check.name,
                Verdict.FAILED,
                f"the check crashed: {type(exc).__name__}: {exc}\n{tail}",
                time.monotonic() - started,
            )
        return CheckResult(check.name, Verdict.PASSED, seconds=time.monotonic() - started)

    def _unsupported(self, check: Check) -> str:
        if check.needs in ("transient", "permanent") and check.needs not in self.probe_cls.can_fail:
            return (
                f"the {self.kind} probe cannot inject {check.needs} failures "
                f"(can_fail = {sorted(self.probe_cls.can_fail)})"
            )
        if check.needs == "send" and not self.probe_cls.can_send:
            return f"the {self.kind} probe has no outgoing path (can_send = False)"
        return ""

    def _explain_setup(self, exc: BaseException) -> str:
        from exchange.errors import ExchangeError

        if isinstance(exc, ConformanceFailure):
            return str(exc)
        if isinstance(exc, ExchangeError):
            return f"the node could not start the {self.kind} adapter for {HOST}: {exc.code}: {exc.message}"
        tail = "".join(traceback.format_exception(exc)[-4:]).strip()
        return f"setting up the bus with the {self.kind} adapter failed: {type(exc).__name__}: {exc}\n{tail}"

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
                "entry-point name"
            )
        if adapter.agency != HOST:
            raise ConformanceFailure(
                f"the adapter says it hosts {adapter.agency!r}; it was started for {HOST}: "
                "keep the agency given to Adapter.__init__"
            )

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
        from exchange.store.base import DeliveryState, Direction
        from exchange.transport.topology import Names

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
                    aio_pika.Message(
                        body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=f"{mid}/{HOST}/dup{i}",
                        headers={"x-recipient": HOST, "x-message-id": mid, "x-sender": SENDER, "x-kind": "document"},
                    ),
                    routing_key=routing_key(HOST, lane_of(envelope.header)),
                    timeout=10,
                )

        async def consumed() -> bool:
            return bool(self.local.consumer.handled >= handled + 2)

        if not await self._wait(consumed, self.timeout):
            raise ConformanceFailure("the adapter's node did not consume the two duplicates in time")
        await asyncio.sleep(self.settle)
        self._exactly_once(await self._copies(mid), mid, "the duplicated document")
        events = [t.event for t in await store.timeline(mid) if t.recipient == HOST]
        if events.count("delivered") != 1:
            raise ConformanceFailure(
                f"the sender's timeline of {mid} shows 'delivered' {events.count('delivered')} "
                "times after the duplicates; it must show it once"
            )

    async def check_status_reaches_the_eoffice(self) -> None:
        from exchange.envelope.model import DocumentCode, DocumentInfo, StatusCode
        from exchange.store.base import DeliveryState, Direction

        # The adapter's agency sends a document (straight through its node's service: this check is
        # about receiving the answer, not about the adapter's outgoing path) and the sender answers it.
        subject = f"Báo cáo gửi Văn phòng Chính phủ ({self.token})"
        sent = await self.local.service.submit_document(
            HOST, [SENDER], DocumentInfo(code=DocumentCode("7", "BC-UBND"), subject=subject)
        )
        d = await self._await_outcome(sent.message_id, SENDER, service=self.local.service)
        if d.state is not DeliveryState.DELIVERED:
            raise ConformanceFailure(f"the bus could not deliver {HOST}'s document to {SENDER}: {d.reason}")

        async def received() -> bool:
            return await self.central.service.store.get_message(sent.message_id, Direction.IN) is not None

        await self._wait(received, self.timeout)
        status = await self.central.service.submit_status(
            SENDER, sent.message_id, StatusCode.ACCEPTED, description="Đã tiếp nhận"
        )
        self.sent[status.message_id] = "status"
        copies: list[SeenMessage] = []

        async def arrived() -> bool:
            copies[:] = await self._copies(status.message_id)
            return bool(copies)

        if not await self._wait(arrived, self.timeout):
            statuses = [s for s in await self._seen() if s.kind == "status"]
            hint = ""
            if any(s.status_code == "03" for s in statuses):
                hint = (
                    " A status 03 did arrive, under another message id: pass the status's own bus message id "
                    "on (SeenMessage.message_id), not the document's"
                )
            raise ConformanceFailure(
                f"status 03 (accepted) {status.message_id} from {SENDER}, answering {sent.message_id} that {HOST} "
                f"sent, has not reached the E-Office after {self.timeout:.0f}s (statuses it has: "
                f"{[(s.message_id, s.status_code) for s in statuses]}).{hint} Adapters must hand statuses over too"
            )
        await asyncio.sleep(self.settle)
        seen = self._exactly_once(await self._copies(status.message_id), status.message_id, "the status")
        if seen.kind != "status" or seen.status_code != "03" or seen.sender != SENDER:
            raise ConformanceFailure(
                f"the E-Office got the status as kind={seen.kind!r}, status_code={seen.status_code!r}, "
                f"sender={seen.sender!r}; expected kind='status', status_code='03', sender={SENDER!r}"
            )

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
                "DeliveryResult.transient(...) so the bus retries with backoff"
            )
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
                "for a failed handover. Answer DeliveryResult.transient(...) and let the bus retry"
            )
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
                    "when the E-Office refuses a message for good"
                )
            raise ConformanceFailure(
                f"the E-Office refused {mid} permanently, but the adapter answered delivered: the sender was told "
                "it arrived. Answer DeliveryResult.permanent(...) when the E-Office refuses"
            )
        if copies:
            raise ConformanceFailure(
                f"the sender got a non-delivery receipt for {mid}, but the E-Office shows it as received "
                f"({len(copies)} time(s)): a refused message must not appear at the E-Office"
            )
        events = [t for t in await self.central.service.store.timeline(mid) if t.recipient == HOST]
        failed = [t for t in events if t.event == "failed"]
        if len(failed) != 1 or not failed[0].detail:
            raise ConformanceFailure(
                f"the sender's timeline of {mid} should hold one 'failed' from the signed non-delivery receipt with "
                f"the reason; it holds {[(t.event, t.detail) for t in events]}"
            )
        if failed[0].detail.startswith("retries-exhausted"):
            raise ConformanceFailure(
                f"{mid} failed only after every retry ({failed[0].detail}): the adapter answered transient for a "
                "permanent refusal. Answer DeliveryResult.permanent(...) so the sender learns at once"
            )

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
                "(BusHandle.submit_document) or changed its subject"
            )
        await asyncio.sleep(self.settle)
        entries = await self.central.service.inbox(SENDER, include_acked=True, limit=1000)
        inbox[:] = [e for e in entries if e.sender == HOST and e.subject == subject]
        if len(inbox) != 1:
            raise ConformanceFailure(
                f"the E-Office sent one document but {SENDER} received {len(inbox)}: the adapter "
                "submitted it more than once (use an idempotency key per E-Office document)"
            )
        mid = inbox[0].message_id
        fetched = await self.central.service.fetch(SENDER, mid)
        names = {a.id: a.name for a in fetched.envelope.attachments}
        diff = _files_diff(files, {names[i]: data for i, data in fetched.attachments.items()})
        if diff:
            raise ConformanceFailure(
                f"the attachments {SENDER} received from the E-Office are not what it sent: {diff}"
            )
        d = await self._await_outcome(mid, SENDER, service=self.local.service)
        if d.state is not DeliveryState.DELIVERED:
            raise ConformanceFailure(f"{HOST}'s tracking of {mid} says {d.state.value}, not delivered: {d.reason}")
        track = await self.local.service.track(HOST, mid)
        if [x.state for x in track.deliveries] != [DeliveryState.DELIVERED]:
            raise ConformanceFailure(
                f"{HOST}'s tracking of {mid} shows {[(x.recipient, x.state.value) for x in track.deliveries]}"
            )

    async def check_no_message_reaches_the_eoffice_twice(self) -> None:
        await asyncio.sleep(self.settle)
        counts = Counter(s.message_id for s in await self._seen() if s.message_id in self.sent)
        twice = {mid: n for mid, n in counts.items() if n > 1}
        if twice:
            raise ConformanceFailure(
                "messages reached the E-Office more than once: "
                + ", ".join(f"{mid} ({self.sent[mid]}) {n} times" for mid, n in twice.items())
            )

    async def check_stop_is_safe_twice(self) -> None:
        adapter = self.local.service.adapters[HOST]
        for call in ("first", "second"):
            try:
                await asyncio.wait_for(adapter.stop(), self.timeout)
            except TimeoutError:
                raise ConformanceFailure(
                    f"the {call} call of stop() did not return within {self.timeout:.0f}s"
                ) from None
            except Exception as exc:
                raise ConformanceFailure(
                    f"the {call} call of {type(adapter).__name__}.stop() raised {type(exc).__name__}: {exc}; stop() "
                    "must be safe to call twice (the node may stop an adapter that already stopped)"
                ) from exc
