"""A node's [hub] applied at start: retried with backoff while the management API is unreachable,
bounded per attempt, not retried when refused, idempotent.

The management API is a small fake on a real local port (aiohttp), so the retries go through the
real client and its real connection errors; the fake keeps what is PUT and answers GETs from it.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.errors import ConfigError
from exchange.hub.config import hub_config
from exchange.hub.startup import apply_hub, keep_applying, node_hub

PASSWORD_ENV = "EXCHANGE_TEST_HUB_STARTUP_PW"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeManagementApi:
    """Answers the calls `apply_hub` makes; records them; ``status`` forces an error answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.calls: list[tuple[str, str]] = []
        self.objects: dict[str, object] = {}
        self.bindings: dict[str, list[dict[str, str]]] = {}
        self.status = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        path = request.rel_url.raw_path.removeprefix("/api/")  # as sent: the vhost "/" is %2F
        self.calls.append((request.method, path))
        if self.status:
            return web.json_response({"error": "x", "reason": "refused"}, status=self.status)
        if path.startswith("bindings/"):
            key = path.rsplit("/", 1)[0] if request.method == "DELETE" else path
            if request.method == "POST":
                rk = (await request.json())["routing_key"]
                have = self.bindings.setdefault(path, [])
                if all(b["routing_key"] != rk for b in have):  # as RabbitMQ: a binding exists once
                    have.append({"routing_key": rk, "properties_key": rk or "~"})
                return web.Response(status=201)
            if request.method == "DELETE":
                return web.Response(status=204)
            return web.json_response(self.bindings.get(key, []))
        if request.method == "PUT":
            self.objects[path] = await request.json()
            return web.Response(status=201)
        if request.method == "GET":
            if path not in self.objects:
                return web.json_response({"error": "Object Not Found"}, status=404)
            return web.json_response(self.objects[path])
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def puts(self, prefix: str) -> list[str]:
        return [p for m, p in self.calls if m == "PUT" and p.startswith(prefix)]


def hub_for(port: int, **env: str):
    raw = {
        "hub": {
            "name": "h41",
            "api": f"http://admin:secret@127.0.0.1:{port}",
            "amqp": "amqp://127.0.0.1:5672",
            "home": ["*.*.*.H41.*"],
            "links": [
                {
                    "name": "h41-national",
                    "to": "amqp://hub.national.example.vn:5672",
                    "patterns": ["#"],
                    "password_env": PASSWORD_ENV,
                }
            ],
        }
    }
    return hub_config(raw, prefix="p", environ={PASSWORD_ENV: "link-secret", **env})


async def test_an_unreachable_management_api_is_retried_with_growing_delays_until_it_answers() -> None:
    api = FakeManagementApi(free_port())
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 4:
            await api.start()  # the management API comes up during the fourth wait

    try:
        with structlog.testing.capture_logs() as logs:
            applied = await keep_applying(hub_for(api.port), first_delay=1, max_delay=5, sleep=sleep)
    finally:
        await api.stop()
    assert applied is True
    assert delays == [1, 2, 4, 5]  # doubling, capped
    events = [e["event"] for e in logs]
    # One warning for the whole wait, one line once applied: not one alarm per attempt.
    assert [e["log_level"] for e in logs if e["event"] == "hub.apply_waiting"] == ["warning", "debug", "debug", "debug"]
    assert events[-1] == "hub.applied" and logs[-1]["attempts"] == 5 and logs[-1]["links"] == ["h41-national"]
    assert "link-secret" not in json.dumps(logs, default=str)  # the link password is never logged
    assert api.puts("policies/%2F/p.route-to-hubs") and api.puts("parameters/shovel/%2F/p.link.h41-national")


async def test_applying_again_converges_to_the_same_objects() -> None:
    api = FakeManagementApi(free_port())
    await api.start()
    try:
        await apply_hub(hub_for(api.port))
        first = dict(api.objects)
        await apply_hub(hub_for(api.port))
        assert api.objects == first  # same exchanges, queues, policy, users, permissions and shovel
        assert not [p for m, p in api.calls if m == "DELETE"]  # nothing unbound, nothing removed
        # The parking queue's, the home pattern's and the link queue's (to the upstream fanout), once each.
        assert sorted((p.split("/")[3], b["routing_key"]) for p, bs in api.bindings.items() for b in bs) == [
            ("p.hubs", "*.*.*.H41.*"),
            ("p.unrouted", ""),
            ("p.upstream", ""),
        ]
    finally:
        await api.stop()


async def test_a_refusal_is_logged_once_and_not_retried() -> None:
    api = FakeManagementApi(free_port())
    api.status = 401
    await api.start()
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    try:
        with structlog.testing.capture_logs() as logs:
            assert await keep_applying(hub_for(api.port), sleep=sleep) is False
    finally:
        await api.stop()
    assert delays == [] and len(api.calls) == 1
    (refused,) = [e for e in logs if e["event"] == "hub.apply_refused"]
    assert refused["log_level"] == "error" and "credentials" in refused["detail"]


async def test_an_attempt_that_hangs_is_cut_short_and_retried() -> None:
    attempts: list[int] = []

    async def apply(hub) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            await asyncio.sleep(30)  # a management API that accepts the connection and never answers

    async def sleep(delay: float) -> None:
        pass

    with structlog.testing.capture_logs() as logs:
        assert await keep_applying(hub_for(1), attempt_timeout=0.2, apply=apply, sleep=sleep) is True
    assert len(attempts) == 2
    assert "no answer within" in next(e for e in logs if e["event"] == "hub.apply_waiting")["detail"]


@pytest.fixture
def node_toml(tmp_path: Path) -> Path:
    configs = build_world(
        tmp_path, [AgencySpec("000.00.31.H41", "commune", node="na")], [NodeSpec("na", prefix="p", http_port=0)]
    )
    return configs["na"]


def test_a_node_reads_its_own_hub_section_and_needs_link_passwords_from_the_environment(
    node_toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert node_hub(load_config(node_toml)) is None  # no [hub]: nothing to apply
    base = node_toml.read_text(encoding="utf-8")
    section = (
        '\n[hub]\nname = "h41"\napi = "http://admin@127.0.0.1:15672"\namqp = "amqp://127.0.0.1:5672"\n'
        'home = ["*.*.*.H41.*"]\n\n[[hub.links]]\nname = "h41-national"\nto = "amqp://national:5672"\n'
        'patterns = ["#"]\n'
    )
    node_toml.write_text(base + section, encoding="utf-8")
    with pytest.raises(ConfigError, match="no password_env"):
        node_hub(load_config(node_toml))  # a password generated at every start would lock the neighbour out
    node_toml.write_text(base + section + f'password_env = "{PASSWORD_ENV}"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        node_hub(load_config(node_toml))
    monkeypatch.setenv(PASSWORD_ENV, "link-secret")
    hub = node_hub(load_config(node_toml))
    assert hub is not None and hub.prefix == "p" and [s.name for s in hub.links] == ["h41-national"]
