"""The webhook adapter against a real local aiohttp server: signature, body, outcome mapping, secrets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import structlog
from aiohttp import web

from exchange.adapters.base import Outcome
from exchange.adapters.webhook import WebhookAdapter, sign_webhook, verify_webhook
from exchange.conformance.probe import ProbeContext
from exchange.conformance.probes.webhook import WebhookProbe
from exchange.envelope.model import ReceiptOutcome
from exchange.errors import AdapterError
from tests.unit.adapter_fakes import (
    HOST,
    FakeBus,
    document_message,
    random_secret,
    receipt_message,
    status_message,
)


class EOffice:
    """A local HTTP server that records requests and answers what it is told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.delay = 0.0
        self.text = "ok"

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.status, text=self.text)


@pytest.fixture
async def eoffice() -> AsyncIterator[tuple[EOffice, str]]:
    server = EOffice()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/hook", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield server, f"http://127.0.0.1:{port}/hook"
    await runner.cleanup()


@pytest.fixture
def make_adapter(start_adapter) -> Callable[..., Awaitable[WebhookAdapter]]:
    async def make(**options) -> WebhookAdapter:
        return await start_adapter(WebhookAdapter(HOST, options, FakeBus()))

    return make


async def test_post_is_signed_verifiable_and_carries_the_whole_message(eoffice, make_adapter) -> None:
    server, url = eoffice
    secret = random_secret()
    adapter = await make_adapter(url=url, secret=secret)
    message = document_message()

    result = await adapter.deliver(message)

    assert result.outcome is Outcome.DELIVERED
    ((headers, body),) = server.requests
    assert headers["Idempotency-Key"] == message.message_id
    assert headers["X-Exchange-Signature"] == sign_webhook(secret, headers["X-Exchange-Timestamp"], body)
    assert verify_webhook(secret, headers["X-Exchange-Timestamp"], body, headers["X-Exchange-Signature"])
    assert not verify_webhook(secret, headers["X-Exchange-Timestamp"], body + b" ", headers["X-Exchange-Signature"])
    assert not verify_webhook("another secret", headers["X-Exchange-Timestamp"], body, headers["X-Exchange-Signature"])
    doc = json.loads(body)
    assert doc["message_id"] == message.message_id and doc["kind"] == "document"
    assert doc["sender"]["code"] == message.envelope.header.sender.code and doc["recipient"] == HOST
    assert doc["document"]["subject"] == "Chỉ thị về chuyển đổi số"
    assert doc["document"]["number"] == "12" and doc["document"]["notation"] == "CT-TTg"
    got = {a["name"]: base64.b64decode(a["data_base64"]) for a in doc["attachments"]}
    assert got == {a.name: message.attachments[a.id] for a in message.envelope.attachments}
    assert base64.b64decode(doc["envelope_xml_base64"]) == message.xml


async def test_status_is_posted_with_its_code(eoffice, make_adapter) -> None:
    server, url = eoffice
    adapter = await make_adapter(url=url, secret=random_secret())
    message = status_message("6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11")
    assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    doc = json.loads(server.requests[0][1])
    assert doc["kind"] == "status" and doc["status"]["code"] == "03"
    assert doc["status"]["response_for"] == "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11" and doc["attachments"] == []


async def test_receipts_are_posted_only_when_asked_for(eoffice, make_adapter) -> None:
    server, url = eoffice
    assert (await make_adapter(url=url, secret=random_secret())).wants_receipts is False
    adapter = await make_adapter(url=url, secret=random_secret(), receipts=True)
    assert adapter.wants_receipts is True
    message = receipt_message(
        "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11",
        ReceiptOutcome.FAILED,
        reason_code="eoffice-refused",
        reason="HTTP 422: unknown document type",
    )
    assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    ((headers, body),) = server.requests
    doc = json.loads(body)
    assert headers["X-Exchange-Kind"] == "receipt" and doc["kind"] == "receipt"
    assert doc["receipt"] == {
        "response_for": "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11",
        "outcome": "failed",
        "envelope_digest": "ab" * 32,
        "reason_code": "eoffice-refused",
        "reason": "HTTP 422: unknown document type",
    }
    assert doc["document"] is None and doc["status"] is None


@pytest.mark.parametrize(
    "status, outcome",
    [
        (200, Outcome.DELIVERED),
        (202, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (500, Outcome.TRANSIENT),
        (502, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (408, Outcome.TRANSIENT),
        (429, Outcome.TRANSIENT),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (422, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
    ],
)
async def test_http_status_maps_to_delivery_outcome(eoffice, make_adapter, status, outcome) -> None:
    server, url = eoffice
    server.status, server.text = status, "số văn bản đã tồn tại"
    adapter = await make_adapter(url=url, secret=random_secret())
    result = await adapter.deliver(document_message())
    assert result.outcome is outcome
    if outcome is not Outcome.DELIVERED:
        assert f"HTTP {status}" in result.reason  # the sender's non-delivery receipt says why


@pytest.mark.parametrize("status", [422, 503])
async def test_the_eoffice_answer_is_logged_locally_and_never_put_in_the_senders_receipt(
    eoffice, make_adapter, status
) -> None:
    """The reason becomes the signed receipt sent to another agency: a code and a fixed text.
    The recipient E-Office's own words (internal ids, stack traces, names) stay on its node."""
    server, url = eoffice
    server.status = status
    server.text = "Lỗi nội bộ: hồ sơ HS-2291 của ông Nguyễn Văn A bị khóa\n" + "x" * 5000
    adapter = await make_adapter(url=url, secret=random_secret())
    with structlog.testing.capture_logs() as logs:
        result = await adapter.deliver(document_message())
    assert result.reason_code in ("eoffice-refused", "eoffice-unavailable")
    assert "HS-2291" not in result.reason and "Nguyễn" not in result.reason
    assert result.reason in (
        f"the E-Office refused the message (HTTP {status})",
        f"the E-Office is unavailable (HTTP {status})",
    )
    (event,) = [e for e in logs if e["event"] in ("webhook.refused", "webhook.retry")]
    assert "HS-2291" in event["answer"] and len(event["answer"]) <= 200  # bounded, one line
    assert "\n" not in event["answer"]


async def test_slow_eoffice_is_a_transient_timeout(eoffice, make_adapter) -> None:
    server, url = eoffice
    server.delay = 1.0
    adapter = await make_adapter(url=url, secret=random_secret(), timeout=0.2)
    started = time.monotonic()
    result = await adapter.deliver(document_message())
    assert result.outcome is Outcome.TRANSIENT and result.reason_code == "eoffice-timeout"
    assert time.monotonic() - started < 0.9


async def test_unreachable_eoffice_is_transient(make_adapter) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = await make_adapter(url=f"http://127.0.0.1:{port}/hook", secret=random_secret(), timeout=2)
    result = await adapter.deliver(document_message())
    assert result.outcome is Outcome.TRANSIENT and result.reason_code == "eoffice-unreachable"


async def test_secret_never_reaches_logs_or_reasons(eoffice, make_adapter, caplog) -> None:
    server, url = eoffice
    secret = random_secret()
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as logs:
        adapter = await make_adapter(url=url.replace("127.0.0.1", "user:pw-in-url@127.0.0.1"), secret=secret)
        reasons = []
        for status in (503, 422):
            server.status = status
            reasons.append((await adapter.deliver(document_message())).reason)
        await adapter.stop()
        reasons.append((await adapter.deliver(document_message())).reason)
    seen = repr(logs) + caplog.text + repr(reasons) + repr(adapter) + repr(adapter.options)
    assert logs, "the failures were logged"
    assert secret not in seen
    assert "pw-in-url" not in repr(logs) + repr(adapter)


async def test_secret_can_come_from_the_environment(eoffice, make_adapter, monkeypatch) -> None:
    server, url = eoffice
    secret = random_secret()
    monkeypatch.setenv("EOFFICE_H41_WEBHOOK_SECRET", secret)
    adapter = await make_adapter(url=url, secret_env="EOFFICE_H41_WEBHOOK_SECRET")
    await adapter.deliver(document_message())
    headers, body = server.requests[0]
    assert verify_webhook(secret, headers["X-Exchange-Timestamp"], body, headers["X-Exchange-Signature"])


@pytest.mark.parametrize(
    "options, complaint",
    [
        ({"secret": "s"}, "options.url"),
        ({"url": "ftp://example.org/x", "secret": "s"}, "options.url"),
        ({"url": "http://127.0.0.1:9/hook"}, "secret"),
        ({"url": "http://127.0.0.1:9/hook", "secret_env": "EXCHANGE_TEST_UNSET_SECRET"}, "EXCHANGE_TEST_UNSET_SECRET"),
        ({"url": "http://127.0.0.1:9/hook", "secret": "s", "timeout": 0}, "timeout"),
        ({"url": "http://127.0.0.1:9/hook", "secret": "s", "receipts": "yes"}, "options.receipts"),
    ],
)
async def test_misconfiguration_is_refused_at_start(options, complaint, monkeypatch) -> None:
    monkeypatch.delenv("EXCHANGE_TEST_UNSET_SECRET", raising=False)
    adapter = WebhookAdapter(HOST, options, FakeBus())
    with pytest.raises(AdapterError, match=complaint):
        await adapter.start()
    await adapter.stop()


def test_verify_webhook_refuses_stale_or_malformed_requests() -> None:
    body, secret = b'{"message_id": "x"}', "k"
    now = time.time()
    ts = str(int(now))
    good = sign_webhook(secret, ts, body)
    assert verify_webhook(secret, ts, body, good, now=now)
    old = str(int(now) - 301)
    assert not verify_webhook(secret, old, body, sign_webhook(secret, old, body), now=now)  # replay window
    assert verify_webhook(secret, old, body, sign_webhook(secret, old, body), tolerance=600, now=now)
    assert not verify_webhook(secret, "not-a-number", body, good, now=now)
    assert not verify_webhook(secret, ts, body, good.removeprefix("sha256="), now=now)
    assert not verify_webhook(secret, ts, body, "sha256=" + "0" * 64, now=now)
    assert not verify_webhook(secret, ts, body, "sha256=ünïcode", now=now)


async def test_stop_is_idempotent_and_later_handovers_are_transient(eoffice, make_adapter) -> None:
    _, url = eoffice
    adapter = await make_adapter(url=url, secret=random_secret())
    await adapter.stop()
    await adapter.stop()
    assert (await adapter.deliver(document_message())).outcome is Outcome.TRANSIENT


async def test_probe_checks_the_signature_and_fails_on_demand(tmp_path) -> None:
    probe = WebhookProbe()
    options = await probe.start(ProbeContext(agency=HOST, workdir=tmp_path, service=None))
    adapter = WebhookAdapter(HOST, options, FakeBus())
    await adapter.start()
    try:
        probe.fail_next("transient")
        probe.fail_next("permanent")
        first, second, third = [await adapter.deliver(document_message()) for _ in range(3)]
        assert (first.outcome, second.outcome, third.outcome) == (
            Outcome.TRANSIENT,
            Outcome.PERMANENT,
            Outcome.DELIVERED,
        )
        (seen,) = await probe.seen()
        assert seen.kind == "document" and set(seen.attachments) == {"qd.pdf", "phu-luc.docx"}
        assert probe.bad_signatures == 0
        wrong = WebhookAdapter(HOST, {**options, "secret": "not the shared secret"}, FakeBus())
        await wrong.start()
        try:
            assert (await wrong.deliver(document_message())).outcome is Outcome.PERMANENT  # 401
        finally:
            await wrong.stop()
        assert probe.bad_signatures == 1 and len(await probe.seen()) == 1
    finally:
        await adapter.stop()
        await probe.stop()
