"""The webhook adapter's E-Office: a real HTTP server that checks the HMAC and records what it accepted."""

from __future__ import annotations

import base64
import json
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from exchange.adapters.webhook import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook
from exchange.conformance.probe import EOfficeProbe, FailureKind, ProbeContext, SeenMessage

#: What the probe answers when told to fail: 503 is retried by the bus, 422 is final.
FAILURE_STATUS = {"transient": 503, "permanent": 422}


class WebhookProbe(EOfficeProbe):
    """An aiohttp server on 127.0.0.1 (a free port) playing the E-Office.

    Requests with a bad or stale signature are answered 401 and counted in
    ``bad_signatures``; every request is kept in ``requests`` (headers and raw
    body) for tests that check the wire format. :meth:`seen` lists the requests
    it accepted (answered 2xx), one per handover, duplicates included.
    """

    kind = "webhook"
    can_fail = frozenset({"transient", "permanent"})
    can_send = False

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.bad_signatures = 0
        self._accepted: list[SeenMessage] = []
        self._failures: deque[int] = deque()
        self._runner: web.AppRunner | None = None

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/eoffice/inbox", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/eoffice/inbox"
        return {"url": self.url, "secret": self.secret, "timeout": 5}

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def fail_next(self, outcome: FailureKind, times: int = 1) -> None:
        self._failures.extend([FAILURE_STATUS[outcome]] * times)

    async def seen(self) -> list[SeenMessage]:
        return list(self._accepted)

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        self.requests.append((headers, body))
        if not verify_webhook(
            self.secret, request.headers.get(TIMESTAMP_HEADER, ""), body, request.headers.get(SIGNATURE_HEADER, "")
        ):
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")
        if self._failures:
            status = self._failures.popleft()
            return web.Response(status=status, text="simulated failure")
        doc = json.loads(body)
        if doc["message_id"] != request.headers.get(IDEMPOTENCY_HEADER):
            return web.Response(status=400, text="Idempotency-Key differs from message_id")
        self._accepted.append(
            SeenMessage(
                message_id=doc["message_id"],
                kind=doc["kind"],
                sender=doc["sender"]["code"],
                subject=(doc.get("document") or {}).get("subject", ""),
                status_code=(doc.get("status") or {}).get("code"),
                attachments={a["name"]: base64.b64decode(a["data_base64"]) for a in doc["attachments"]},
            )
        )
        return web.Response(status=200, text="ok")
