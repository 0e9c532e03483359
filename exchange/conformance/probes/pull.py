"""The pull adapter's E-Office: polls the agency's inbox, fetches each message and acknowledges it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exchange.conformance.probe import EOfficeProbe, ProbeContext, SeenMessage


class PullProbe(EOfficeProbe):
    """Reads the inbox in-process through ``ProbeContext.service`` (inbox → fetch → acknowledge).

    Nothing on the E-Office side can make a pull handover fail (the message is
    in the inbox before the adapter is asked), so no failures can be injected;
    a pull E-Office sends through the gateway, not through the adapter.
    """

    kind = "pull"
    can_fail = frozenset()
    can_send = False

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        if ctx.service is None:
            raise RuntimeError("the pull probe reads the inbox in-process: ProbeContext.service is required")
        self._ctx = ctx
        self._seen: dict[str, SeenMessage] = {}
        self._cursor = 0
        return {}

    async def seen(self) -> list[SeenMessage]:
        service, agency = self._ctx.service, self._ctx.agency
        while True:
            entries = await service.inbox(agency, limit=100, after_seq=self._cursor)
            if not entries:
                break
            for entry in entries:
                self._cursor = max(self._cursor, entry.seq)
                if entry.message_id in self._seen:
                    continue
                fetched = await service.fetch(agency, entry.message_id)
                h = fetched.envelope.header
                self._seen[entry.message_id] = SeenMessage(
                    message_id=h.message_id,
                    kind=h.kind.value,
                    sender=h.sender.code,
                    subject=h.document.subject if h.document else "",
                    status_code=h.status.code.value if h.status else None,
                    attachments={a.name: fetched.attachments[a.id] for a in fetched.envelope.attachments},
                )
                await service.acknowledge(agency, entry.message_id)  # registered: leave the unread list
        return list(self._seen.values())
