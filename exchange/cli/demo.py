"""`exchange demo`: a small world exchanging a directive, with statuses, left running.

The Government Office sends a directive to two provinces and a commune; each
agency's E-Office is connected through a different adapter kind (pull, file
drop, edXML, webhook). Every copy is delivered with a signed receipt, then each
recipient walks it through statuses 01 (arrived) → 03 (accepted) → 06
(completed) back to the sender, and the sender's timeline is printed. The node
keeps running afterwards so that ``/metrics`` and ``exchange track`` can be
tried; ``--once`` stops instead (used by the tests).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import command_help
from exchange.errors import BrokerUnavailableError

if TYPE_CHECKING:
    from aiohttp import web

    from exchange.store.base import Delivery

DEFAULT_DEMO_DIR = Path("var/demo")

SENDER = "000.00.00.G22"
#: Recipient -> (name, adapter kind). The commune's E-Office is the demo's own webhook receiver.
RECIPIENTS = {
    "000.00.00.H41": ("UBND tỉnh Nghệ An", "filedrop"),
    "000.00.00.H29": ("UBND Thành phố Hồ Chí Minh", "edxml"),
    "000.00.31.H41": ("UBND xã Nghi Lộc, tỉnh Nghệ An", "webhook"),
}
WALK = ("01", "03", "06")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a small world exchanging a directive with statuses, left running",
        **command_help(
            "Build a small world in --dir (four agencies on one node: HTTP pull, file drop, edXML and webhook "
            "adapters), send a directive to three of them, walk each copy through statuses 01, 03 and 06, print "
            "the sender's timeline, then keep the node running for curl and `exchange track`.",
            "exchange demo",
            "exchange demo --once --port 0 --dir /tmp/demo",
        ),
    )
    p.add_argument(
        "--dir", type=Path, default=DEFAULT_DEMO_DIR, help=f"where the demo world lives (default {DEFAULT_DEMO_DIR})"
    )
    p.add_argument("--port", type=int, default=8080, help="gateway port (0: any free port)")
    p.add_argument("--amqp-url", default=os.environ.get("EXCHANGE__AMQP__URL", "amqp://guest:guest@127.0.0.1:5672/"))
    p.add_argument("--prefix", default="exchange-demo", help="prefix of the demo's RabbitMQ exchanges and queues")
    p.add_argument("--once", action="store_true", help="stop after printing the timeline instead of serving")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each step")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange.cli.serve import run_until_signalled
    from exchange.observability.logging import configure_logging

    configure_logging("WARNING")  # the demo narrates; the node's JSON logs only show trouble
    return run_until_signalled(lambda: demo(args), what="exchange demo")


def say(text: str) -> None:
    print(text, flush=True)


async def _wait(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(
                f"timed out after {timeout:.0f}s waiting for {what}; is RabbitMQ healthy "
                "(`rabbitmqctl status`)? The node's warnings above say more"
            )
        await asyncio.sleep(0.05)


class WebhookEOffice:
    """The commune's E-Office: an HTTP endpoint that checks each POST's HMAC and registers it once."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: dict[str, dict] = {}
        self.refused = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/documents", self._post)
        runner = self._runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/documents"

    async def _post(self, request: web.Request) -> web.Response:
        import json

        from aiohttp import web

        from exchange.adapters.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_webhook

        body = await request.read()
        if not verify_webhook(
            self.secret, request.headers.get(TIMESTAMP_HEADER, ""), body, request.headers.get(SIGNATURE_HEADER, "")
        ):
            self.refused += 1
            return web.json_response({"error": "bad signature"}, status=401)
        self.received.setdefault(request.headers["Idempotency-Key"], json.loads(body))
        return web.json_response({"registered": True})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def demo(args: argparse.Namespace) -> int:
    from exchange.adapters.base import OutgoingFile
    from exchange.cli.track import render_track
    from exchange.config import load_config
    from exchange.devworld import AgencySpec, NodeSpec, build_world, issue_tokens
    from exchange.envelope.model import DocumentCode, DocumentInfo, DocumentType, Priority, StatusCode, SteeringType
    from exchange.node import Node
    from exchange.observability.metrics import Metrics

    root: Path = args.dir.resolve()
    secret_env = "EXCHANGE_DEMO_WEBHOOK_SECRET"
    os.environ.setdefault(secret_env, secrets.token_urlsafe(24))
    eoffice = WebhookEOffice(os.environ[secret_env])
    await eoffice.start()
    agencies = [AgencySpec(SENDER, "Văn phòng Chính phủ", node="demo", adapter="pull")]
    for code, (name, kind) in RECIPIENTS.items():
        options: dict = {"root": f"eoffice/{code}"} if kind in ("filedrop", "edxml") else {}
        if kind == "webhook":
            options = {"url": eoffice.url, "secret_env": secret_env}
        agencies.append(AgencySpec(code, name, node="demo", adapter=kind, options=options, ec=kind == "edxml"))
    say(f"building the demo world in {root}/ (development CA, 4 agencies, node config) …")
    config_path = build_world(
        root,
        agencies,
        [NodeSpec("demo", amqp_url=args.amqp_url, prefix=args.prefix, http_port=args.port, retry_delays=(1, 2, 5))],
    )["demo"]
    tokens = await issue_tokens(config_path)
    (root / "tokens.txt").write_text("".join(f"{c} {t}\n" for c, t in tokens.items()), encoding="utf-8")
    (root / "tokens.txt").chmod(0o600)

    node = Node(load_config(config_path), metrics=Metrics())
    try:
        await node.start()  # a taken --port fails here, in one line (port-in-use)
    except BaseException:
        await eoffice.stop()
        raise
    try:
        say(f"node 'demo' started; gateway {node.http_url}; connecting to RabbitMQ at {args.amqp_url.split('@')[-1]} …")
        try:
            await node.wait_connected(args.timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"RabbitMQ did not answer at {args.amqp_url.split('@')[-1]} within {args.timeout:.0f}s; "
                "start it with deploy/setup.sh (or `rabbitmq-server -detached`)"
            ) from None
        service = node.service
        assert service is not None
        for a in agencies:
            say(f"  {a.code}  {a.name:<32} adapter {a.adapter}")

        directive = DocumentInfo(
            code=DocumentCode("15", "CT-TTg"),
            document_type=DocumentType(type=1, detail=2, name="Chỉ thị"),
            subject="Chỉ thị về đẩy mạnh chuyển đổi số trong xử lý văn bản",
            priority=Priority.URGENT,
            steering=SteeringType.DIRECTIVE,
        )
        text = "Chỉ thị số 15/CT-TTg: các cơ quan gửi, nhận văn bản điện tử qua trục liên thông.\n"
        started = time.monotonic()
        sent = await service.submit_document(
            SENDER,
            list(RECIPIENTS),
            directive,
            [OutgoingFile("chi-thi-15.txt", text.encode("utf-8"), "text/plain; charset=utf-8")],
        )
        mid = sent.message_id
        say(f"\n{SENDER} sent directive {mid} to {len(RECIPIENTS)} agencies")

        async def states() -> dict[str, Delivery]:
            return {d.recipient: d for d in await service.store.deliveries(mid)}

        reported: set[str] = set()

        async def all_delivered() -> bool:
            for code, d in (await states()).items():
                if d.state.value in ("delivered", "failed") and code not in reported:
                    reported.add(code)
                    say(
                        f"  {d.state.value:<9} {code} via {RECIPIENTS[code][1]:<8} "
                        f"signed receipt after {(time.monotonic() - started) * 1000:.0f} ms"
                    )
            return len(reported) == len(RECIPIENTS)

        await _wait("the delivery receipts", all_delivered, args.timeout)
        say(
            f"  the commune's webhook E-Office registered {len(eoffice.received)} document(s), "
            f"refused {eoffice.refused} bad signature(s)"
        )

        say("\neach recipient walks its copy through 01 arrived → 03 accepted → 06 completed")
        for code in RECIPIENTS:
            handle = service.handle(code)  # what the agency's adapter submits through
            for status in WALK:
                await handle.submit_status(mid, StatusCode(status), description=f"{RECIPIENTS[code][0]}: {status}")

        async def completed() -> bool:
            # Statuses travel independently: wait for every one, not just for the last code to show.
            seen = {(t.recipient, t.status_code) for t in await service.store.timeline(mid) if t.status_code}
            return all((code, status) in seen for code in RECIPIENTS for status in WALK)

        await _wait("statuses 06 from every recipient", completed, args.timeout)
        record = await service.store.get_message(mid)
        assert record is not None  # submit_document stored it before it returned the id
        say("\n" + render_track(record, list((await states()).values()), await service.store.timeline(mid)))

        say(f"\ntry:  curl -s {node.http_url}/metrics | grep '^exchange_'")
        say(f"      .venv/bin/exchange track {mid} --config {config_path}")
        say(f"      tokens of the four agencies for the gateway: {root / 'tokens.txt'}")
        if args.once:
            return 0
        say("the node keeps running; stop with Ctrl-C")
        await asyncio.Event().wait()  # until SIGTERM/SIGINT cancel it (run_until_signalled)
        return 0
    finally:
        await node.stop(step_timeout=5.0)
        await eoffice.stop()
