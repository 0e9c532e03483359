"""The mailbox E-Office, simulated for the conformance kit.

It is a tiny E-Office built on :class:`~exchange_mailbox.mailbox.Mailbox`: it
answers every offer (accepting, unless told to fail), reports what it accepted,
and sends documents by queuing them in the mailbox, as a real E-Office would.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from exchange.conformance.probe import EOfficeProbe, FailureKind, ProbeContext, SeenMessage
from exchange_mailbox.mailbox import Mailbox


class MailboxProbe(EOfficeProbe):
    kind = "mailbox"
    can_fail = frozenset({"transient", "permanent"})
    can_send = True

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        self.mailbox = Mailbox(ctx.workdir / "mailbox.db")
        self._failures: collections.deque[FailureKind] = collections.deque()
        self._task: asyncio.Task[None] | None = asyncio.create_task(self._answer_offers(), name="mailbox-eoffice")
        return {"path": str(self.mailbox.path), "ack_timeout": 10, "poll_interval": 0.05}

    async def stop(self) -> None:
        task, self._task = getattr(self, "_task", None), None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _answer_offers(self) -> None:
        while True:
            for offer in await asyncio.to_thread(self.mailbox.offers):
                failure = self._failures.popleft() if self._failures else None
                if failure == "transient":
                    await asyncio.to_thread(self.mailbox.defer, offer.message_id, "registry clerk is away")
                elif failure == "permanent":
                    await asyncio.to_thread(self.mailbox.reject, offer.message_id, "not within this agency's remit")
                else:
                    await asyncio.to_thread(self.mailbox.accept, offer.message_id)
            await asyncio.sleep(0.03)

    async def seen(self) -> list[SeenMessage]:
        return [
            SeenMessage(
                r.message_id, r.kind, r.sender, subject=r.subject, status_code=r.status_code, attachments=dict(r.files)
            )
            for r in await asyncio.to_thread(self.mailbox.accepted)
        ]

    def fail_next(self, outcome: FailureKind, times: int = 1) -> None:
        self._failures.extend([outcome] * times)

    async def send(self, recipients: Sequence[str], subject: str, files: Mapping[str, bytes]) -> None:
        await asyncio.to_thread(
            self.mailbox.send_document,
            f"eoffice-{uuid.uuid4()}",
            recipients,
            subject,
            number="15",
            notation="UBND-VP",
            files=files,
        )
