"""The operator console's security, without a browser: passwords, sessions, CSRF, throttling, headers, i18n."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exchange.console import app as console_app
from exchange.console.data import ConsoleData
from exchange.console.i18n import STRINGS
from exchange.console.security import LoginThrottle, check_password, hash_password
from exchange.routing.directory import Directory
from exchange.store import open_store

PASSWORD = "a long enough password"


def test_a_password_hash_is_scrypt_salted_and_checks_only_the_right_password() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("scrypt$16384$8$1$") and first != second  # salted
    assert check_password(PASSWORD, first) and check_password(PASSWORD, second)
    assert not check_password(PASSWORD + "x", first)
    assert not check_password(PASSWORD, "plain$text")


def test_the_login_throttle_blocks_after_five_failures_and_forgets_after_the_window() -> None:
    now = [0.0]
    throttle = LoginThrottle(attempts=5, window=300, clock=lambda: now[0])
    for _ in range(4):
        throttle.failed("ip:1")
    assert throttle.blocked("ip:1") == 0
    throttle.failed("ip:1")
    assert throttle.blocked("ip:1") > 0 and throttle.blocked("ip:2") == 0
    now[0] = 301.0
    assert throttle.blocked("ip:1") == 0


def test_every_template_string_exists_in_vietnamese_and_english() -> None:
    used: set[str] = set()
    for path in resources.files("exchange.console").joinpath("templates").iterdir():
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"""t\(\s*["']([a-z_.]+)["']""", text))
        # keys built from a prefix and a value, e.g. t("state." + s)
        for prefix in re.findall(r"""t\(\s*["']([a-z_]+\.)["']\s*\+""", text):
            assert any(k.startswith(prefix) for k in STRINGS), prefix
    missing = sorted(k for k in used - set(STRINGS) if not k.endswith("."))
    assert not missing, missing
    for key, (vi, en) in STRINGS.items():
        assert vi.strip() and en.strip(), key
    for state in ("submitted", "queued", "delivered", "failed"):
        assert f"state.{state}" in STRINGS


@pytest.fixture
async def client(tmp_path: Path):
    store = open_store(f"sqlite:///{tmp_path / 'console.db'}")
    await store.open()
    data = ConsoleData(store)
    now = datetime.now(UTC)
    await data.create_operator("ops", "operator", hash_password(PASSWORD), now=now)
    await data.create_operator("watcher", "viewer", hash_password(PASSWORD), now=now)
    (tmp_path / "dir.toml").write_text('[[agency]]\ncode = "000.00.00.G22"\nname = "VPCP"\nnode = "n1"\n')
    service = SimpleNamespace(
        store=store, hosted=frozenset({"000.00.00.G22"}), signers={}, directory=Directory.load(tmp_path / "dir.toml")
    )
    config = SimpleNamespace(
        http=SimpleNamespace(tls_cert=""),
        amqp=SimpleNamespace(
            url="amqp://guest:guest@127.0.0.1:1/",
            prefix="x",
            confirm_timeout=1.0,
            ca_file="",
            cert_file="",
            key_file="",
        ),
    )
    root = web.Application()
    console_app.mount(root, service, config)
    async with TestClient(TestServer(root)) as c:
        c.state = root._subapps[0][console_app.STATE]  # type: ignore[attr-defined]
        yield c
    await store.close()


async def _login(client: TestClient, name: str = "ops", password: str = PASSWORD):
    page = await client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
    return await client.post(
        "/console/login",
        data={"name": name, "password": password, "csrf": csrf, "next": "/console/tokens"},
        allow_redirects=False,
    )


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def test_the_bare_console_address_leads_to_the_console(client) -> None:
    response = await client.get("/console", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/console/"


async def test_a_page_without_a_session_redirects_to_the_login_form(client) -> None:
    response = await client.get("/console/directory", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"].startswith("/console/login?next=")


async def test_signing_in_sets_a_strict_httponly_session_cookie_and_every_page_has_the_security_headers(client):
    response = await _login(client)
    assert response.status == 303 and response.headers["Location"] == "/console/tokens"
    cookie = response.cookies["exchange_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/console"
    assert not cookie["secure"]  # no TLS here; with [http] tls_cert it is Secure
    for path in ("/console/", "/console/directory", "/console/tokens", "/console/search?all=1", "/console/login"):
        page = await client.get(path)
        assert page.status == 200, path
        csp = page.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp, path
        assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Frame-Options"] == "DENY", path


async def test_a_wrong_password_is_refused_and_the_sixth_try_is_throttled(client) -> None:
    for _ in range(5):
        assert (await _login(client, password="wrong password!")).status == 401
    response = await _login(client)  # even the right password waits out the window
    assert response.status == 429 and "exchange_console" not in response.cookies


async def test_a_post_without_the_sessions_csrf_token_is_refused(client) -> None:
    await _login(client)
    html = await (await client.get("/console/tokens")).text()
    refused = await client.post("/console/tokens/create", data={"agency": "000.00.00.G22", "reason": "x"})
    assert refused.status == 403
    assert await client.state.data.list_tokens() == []
    forged = await client.post(
        "/console/tokens/create", data={"agency": "000.00.00.G22", "reason": "x", "csrf": _csrf(html) + "x"}
    )
    assert forged.status == 403
    made = await client.post(
        "/console/tokens/create", data={"agency": "000.00.00.G22", "reason": "x", "csrf": _csrf(html)}
    )
    assert made.status == 200 and len(await client.state.data.list_tokens()) == 1


async def test_a_login_form_posted_without_its_csrf_token_is_refused(client) -> None:
    response = await client.post("/console/login", data={"name": "ops", "password": PASSWORD})
    assert response.status == 403


async def test_an_expired_session_opens_nothing(client) -> None:
    await _login(client)
    assert (await client.get("/console/tokens", allow_redirects=False)).status == 200
    later = datetime.now(UTC) + console_app.SESSION_LIFETIME + timedelta(seconds=1)
    client.state.clock = lambda: later
    assert (await client.get("/console/tokens", allow_redirects=False)).status == 303


async def test_a_viewer_cannot_create_a_token_and_an_operator_action_needs_a_reason(client) -> None:
    await _login(client, "watcher")
    html = await (await client.get("/console/tokens")).text()
    refused = await client.post(
        "/console/tokens/create", data={"agency": "000.00.00.G22", "reason": "x", "csrf": _csrf(html)}
    )
    assert refused.status == 403 and await client.state.data.list_tokens() == []
    client.session.cookie_jar.clear()
    await _login(client)
    html = await (await client.get("/console/tokens")).text()
    no_reason = await client.post(
        "/console/tokens/create", data={"agency": "000.00.00.G22", "reason": " ", "csrf": _csrf(html)}
    )
    assert no_reason.status == 400 and await client.state.data.list_tokens() == []


async def test_sign_in_never_redirects_outside_the_console(client) -> None:
    page = await client.get("/console/login")
    response = await client.post(
        "/console/login",
        data={"name": "ops", "password": PASSWORD, "csrf": _csrf(await page.text()), "next": "//evil.example/"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/console/"


async def test_a_disabled_operator_loses_their_session(client) -> None:
    await _login(client)
    await client.state.data.disable_operator("ops")
    assert (await client.get("/console/tokens", allow_redirects=False)).status == 303
