"""The mailbox adapter: hands documents and statuses to an E-Office through a shared SQLite file.

Configured per agency in the node's TOML::

    [[agencies]]
    code = "000.00.00.H41"
    adapter = "mailbox"
    [agencies.options]
    path = "/srv/eoffice/h41/mailbox.db"   # the mailbox file (created if missing)
    ack_timeout = 30                       # seconds to wait for the E-Office's answer
    poll_interval = 0.5                    # seconds between looks at the mailbox

Incoming: offer the message, wait for the E-Office's answer, and translate it into
the three outcomes of the contract: accepted → delivered, rejected → permanent,
busy or no answer in time → transient. The bus does the rest (retries with backoff,
receipts, the journal). Outgoing: submit what the E-Office queued, with its own
reference as the idempotency key, and write back the bus message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path

import structlog

from exchange.adapters.base import Adapter, DeliveryResult, Incoming, OutgoingFile
from exchange.envelope.model import DocumentCode, DocumentInfo, Kind, StatusCode
from exchange.errors import AdapterError, ExchangeError
from exchange_mailbox import mailbox

log = structlog.get_logger("exchange_mailbox")


class MailboxAdapter(Adapter):
    """An agency whose E-Office reads and writes a SQLite mailbox."""

    kind = "mailbox"

    async def start(self) -> None:
        if not self.options.get("path"):
            raise AdapterError(f"the mailbox adapter of {self.agency} needs options.path (the mailbox file)")
        self.path = Path(str(self.options["path"]))
        try:
            self.ack_timeout = float(self.options.get("ack_timeout", 30))
            self.poll_interval = float(self.options.get("poll_interval", 0.5))
        except (TypeError, ValueError):
            raise AdapterError(
                f"mailbox adapter of {self.agency}: ack_timeout and poll_interval must be numbers of seconds"
            ) from None
        if self.ack_timeout <= 0 or self.poll_interval <= 0:
            raise AdapterError(f"mailbox adapter of {self.agency}: ack_timeout and poll_interval must be positive")
        try:
            await asyncio.to_thread(mailbox.create, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise AdapterError(f"mailbox adapter of {self.agency} cannot open {self.path}: {exc}") from exc
        self._outgoing = asyncio.create_task(self._submit_loop(), name=f"mailbox-outgoing-{self.agency}")

    async def stop(self) -> None:
        task, self._outgoing = getattr(self, "_outgoing", None), None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- incoming -----------------------------------------------------------------

    async def deliver(self, message: Incoming) -> DeliveryResult:
        h = message.envelope.header
        if h.kind not in (Kind.DOCUMENT, Kind.STATUS):
            return DeliveryResult.delivered()  # receipts are not for the E-Office (wants_receipts is False)
        row: dict[str, object] = {
            "message_id": message.message_id,
            "kind": h.kind.value,
            "sender": h.sender.code,
            "envelope": message.xml,
        }
        if h.document is not None:
            row |= {
                "subject": h.document.subject,
                "number": h.document.code.number,
                "notation": h.document.code.notation,
            }
        if h.status is not None:
            row |= {"status_code": h.status.code.value, "response_for": h.status.response_for}
        files = [(a.name, a.media_type, message.attachments[a.id]) for a in message.envelope.attachments]
        try:
            state, reason = await asyncio.to_thread(mailbox.offer, self.path, row, files)
            deadline = time.monotonic() + self.ack_timeout
            while state == "offered" and time.monotonic() < deadline:
                await asyncio.sleep(self.poll_interval)
                state, reason = await asyncio.to_thread(mailbox.answer, self.path, message.message_id)
        except sqlite3.Error as exc:  # locked, disk full, I/O: the mailbox may work again later
            return DeliveryResult.transient(f"the mailbox is unavailable: {exc}", "mailbox-unavailable")
        if state == "accepted":
            return DeliveryResult.delivered()
        if state == "rejected":
            return DeliveryResult.permanent(
                f"the E-Office rejected it: {reason or 'no reason given'}", "eoffice-rejected"
            )
        if state == "busy":
            return DeliveryResult.transient(f"the E-Office is busy: {reason}", "eoffice-busy")
        # Still 'offered': the answer may come later; the retry will find it (offer keeps answers).
        return DeliveryResult.transient(
            f"the E-Office did not answer within {self.ack_timeout:g}s", "eoffice-no-answer"
        )

    # -- outgoing -----------------------------------------------------------------

    async def _submit_loop(self) -> None:
        while True:
            try:
                for row, files in await asyncio.to_thread(mailbox.pending_outgoing, self.path):
                    await self._submit(row, files)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001  (a bad moment of the mailbox or the store: look again later)
                log.warning("mailbox.outgoing_error", agency=self.agency, error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.poll_interval)

    async def _submit(self, row: dict[str, object], files: list[tuple[str, str, bytes]]) -> None:
        ref = str(row["ref"])
        key = f"mailbox:{ref}"  # the same ref never becomes two documents, even across a crash
        try:
            if row["kind"] == "status":
                result = await self.bus.submit_status(
                    str(row["response_for"]),
                    StatusCode(str(row["status_code"])),
                    description=str(row["description"] or ""),
                    idempotency_key=key,
                )
            else:
                document = DocumentInfo(
                    code=DocumentCode(str(row["number"] or ""), str(row["notation"] or "")), subject=str(row["subject"])
                )
                result = await self.bus.submit_document(
                    json.loads(str(row["recipients"])),
                    document,
                    [OutgoingFile(name, data, media_type) for name, media_type, data in files],
                    idempotency_key=key,
                )
        except ExchangeError as exc:
            if exc.transient:
                raise
            # A refusal (unknown recipient, no such document, too large): the E-Office must fix it.
            await asyncio.to_thread(mailbox.mark_outgoing, self.path, ref, error=f"{exc.code}: {exc.message}")
            log.info("mailbox.outgoing_refused", agency=self.agency, ref=ref, code=exc.code)
            return
        except ValueError as exc:  # a status code outside 01-16, malformed recipients
            await asyncio.to_thread(mailbox.mark_outgoing, self.path, ref, error=f"invalid: {exc}")
            return
        await asyncio.to_thread(mailbox.mark_outgoing, self.path, ref, message_id=result.message_id)
        log.info("mailbox.submitted", agency=self.agency, ref=ref, message_id=result.message_id)
