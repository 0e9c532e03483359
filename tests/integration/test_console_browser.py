"""The operator console in a real browser: Playwright driving Debian's Chromium headless.

Two nodes on the real broker, each serving /console; the operator and the viewer sign in through
the login form, as people do. Nothing is downloaded at run time: the browser is /usr/bin/chromium
(``deploy/setup.sh --test`` installs it). A failing test leaves a screenshot of the page under the
test's tmp directory and prints its path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exchange.adapters.recording import read_records
from exchange.console.data import ConsoleData
from exchange.console.security import hash_password
from exchange.devworld import AgencySpec
from exchange.envelope.model import DocumentCode, DocumentInfo
from exchange.store.base import DeliveryState
from tests.integration.conftest import World, wait_for

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = [pytest.mark.broker, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
A, B, C = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29"
PASSWORD = "correct horse battery staple"


async def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str]:
    """The real `exchange` command, without blocking the nodes running on this loop."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange.cli.main",
        *args,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(stdin), 60)
    return proc.returncode or 0, out.decode()


@pytest.fixture(scope="module")
async def world(tmp_path_factory, amqp_url: str) -> AsyncIterator[World]:
    """central hosts A (sender); local hosts B (its E-Office refuses at first) and C."""
    from exchange.devworld import NodeSpec, build_world

    root = tmp_path_factory.mktemp("console")
    prefix = f"t{os.urandom(4).hex()}"
    specs = [
        AgencySpec(
            code,
            f"agency {code}",
            node=node,
            adapter="recording",
            options={"path": str(root / f"{code}.jsonl"), **({"refuse": True} if code == B else {})},
        )
        for code, node in ((A, "central"), (B, "local"), (C, "local"))
    ]
    nodes = [NodeSpec(n, amqp_url=amqp_url, prefix=prefix, http_port=0) for n in ("central", "local")]
    w = World(root, build_world(root, specs, nodes))
    # The first account is made with the real command, password on stdin (never argv).
    code, out = await run_cli(
        "operator",
        "create",
        "--config",
        str(w.configs["central"]),
        "--name",
        "ops",
        "--role",
        "operator",
        "--password-stdin",
        stdin=PASSWORD.encode() + b"\n",
    )
    assert code == 0, out
    await w.start("local", http=True)
    await w.start("central", http=True)
    now = datetime.now(UTC)
    for name in ("central", "local"):
        data = ConsoleData(w.service(name).store)
        if name == "local":
            await data.create_operator("ops", "operator", hash_password(PASSWORD), now=now)
        await data.create_operator("watcher", "viewer", hash_password(PASSWORD), now=now)
    yield w
    await w.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing; `apt-get install -y chromium` (deploy/setup.sh --test does it)")
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def new_page(browser, request, tmp_path) -> AsyncIterator[object]:
    """Make pages in fresh browser contexts; on failure each page's screenshot is saved and printed."""
    contexts = []

    async def make():
        context = await browser.new_context(accept_downloads=True, locale="en-US")
        context.set_default_timeout(15_000)
        contexts.append(context)
        return await context.new_page()

    failed_before = request.session.testsfailed
    yield make
    if request.session.testsfailed > failed_before:
        for i, context in enumerate(contexts):
            for j, page in enumerate(context.pages):
                shot = tmp_path / f"screenshot-{request.node.name}-{i}-{j}.png"
                try:
                    await page.screenshot(path=str(shot), full_page=True)
                    print(f"\nscreenshot of the failing page: {shot}")
                except Exception as exc:  # noqa: BLE001 - the page may be gone
                    print(f"\nno screenshot ({type(exc).__name__})")
    for context in contexts:
        await context.close()


async def sign_in(page, node, name: str = "ops") -> None:
    await page.goto(f"{node.http_url}/console/")
    assert "/console/login" in page.url  # no session: sent to the login form
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#operator-name")
    assert await page.text_content("#operator-name") == name


def doc(subject: str, document_id: str) -> DocumentInfo:
    return DocumentInfo(code=DocumentCode("7", "QĐ-UBND"), subject=subject, document_id=document_id)


async def delivered(service, message_id: str, recipient: str) -> bool:
    return any(
        d.recipient == recipient and d.state is DeliveryState.DELIVERED
        for d in await service.store.deliveries(message_id)
    )


async def test_an_operator_finds_a_message_by_document_id_and_its_evidence_verifies(world, new_page) -> None:
    central = world.nodes["central"]
    document_id = f"QD-{os.urandom(3).hex()}"
    result = await central.service.submit_document(A, [C], doc("Quyết định về chuyển đổi số", document_id))
    await wait_for(lambda: delivered(central.service, result.message_id, C), what="delivered receipt")

    page = await new_page()
    await sign_in(page, central)
    assert await page.text_content("#count-delivered") != "0"
    await page.click("a[href='/console/search']")
    await page.fill("input[name=document_id]", document_id)
    await page.click("form[action='/console/search'] button[type=submit]")
    await page.click(f"#results a:has-text('{result.message_id}')")
    assert await page.text_content("#document-id") == document_id
    assert "ok" in (await page.get_attribute("#journal-verdict", "class") or "")
    assert await page.locator("#journal tr").count() > 1  # the message's own journal entries

    ca = [str(p) for p in world.config("central").ca_files]
    for selector in ("#download-envelope", ".download-receipt"):
        async with page.expect_download() as info:
            await page.click(selector)
        download = await info.value
        saved = world.root / download.suggested_filename
        await download.save_as(saved)
        code, out = await run_cli("verify", str(saved), *[arg for c in ca for arg in ("--ca", c)])
        assert code == 0, out  # the evidence verifies with the bus's own verifier

    await page.click("#lang-switch")  # and the same page in Vietnamese
    assert await page.get_attribute("html", "lang") == "vi"
    assert "Chứng cứ" in await page.content()


async def test_an_operator_replays_a_dead_letter_with_a_reason_and_it_is_delivered(world, new_page) -> None:
    central, local = world.nodes["central"], world.nodes["local"]
    result = await central.service.submit_document(A, [B], doc("Công văn cần gửi lại", "CV-replay"))
    mid = result.message_id

    async def failed() -> bool:
        return any(d.state is DeliveryState.FAILED for d in await central.service.store.deliveries(mid))

    await wait_for(failed, what="the non-delivery receipt")
    adapter = local.service.adapters[B]
    adapter.options = {**adapter.options, "refuse": False}  # the recipient's E-Office is fixed

    page = await new_page()
    await sign_in(page, local)
    await page.goto(f"{local.http_url}/console/deadletters")
    for _ in range(20):  # dead-lettering follows the receipt: reload until it is listed
        if await page.locator(f"input[name=message_id][value='{mid}']").count():
            break
        await asyncio.sleep(0.25)
        await page.reload()
    await page.check(f"input[name=message_id][value='{mid}']")
    await page.click("#dl-replay")  # the reason is required: the browser does not submit the form
    assert "/deadletters/replay" not in page.url
    await page.fill("#dl-reason", "TICKET-7 E-Office fixed")
    await page.click("#dl-replay")
    await page.wait_for_selector("#dl-done")
    assert mid in await page.text_content("#dl-done")

    await wait_for(lambda: delivered(central.service, mid, B), what="delivered after the console's replay")
    assert [r["message_id"] for r in read_records(world.root / f"{B}.jsonl")] == [mid]
    entries = await ConsoleData(local.service.store).journal_of(mid)
    replays = [e for e in entries if e["action"] == "operator_replay"]
    assert [(e["data"]["operator"], e["data"]["reason"]) for e in replays] == [("ops", "TICKET-7 E-Office fixed")]


def api_status(node, token: str) -> int:
    req = urllib.request.Request(f"{node.http_url}/v1/me", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_an_operator_creates_a_token_shown_once_and_revokes_it(world, new_page) -> None:
    central = world.nodes["central"]
    page = await new_page()
    await sign_in(page, central)
    await page.goto(f"{central.http_url}/console/tokens")
    create = page.locator("#token-create")
    await create.locator("select[name=agency]").select_option(A)
    await create.locator("input[name=label]").fill("QLVB console test")
    await create.locator("input[name=reason]").fill("new E-Office")
    await create.locator("button[type=submit]").click()
    token = (await page.text_content("#new-token") or "").strip()
    assert token.startswith("exg_")
    assert await asyncio.to_thread(api_status, central, token) == 200
    await page.goto(f"{central.http_url}/console/tokens")
    assert token not in await page.content()  # shown once: the list never holds it again

    row = page.locator("#tokens tr", has_text="QLVB console test")
    await row.locator("input[name=reason]").fill("E-Office retired")
    await row.locator("button[type=submit]").click()
    await page.wait_for_selector("#token-notice")
    assert await asyncio.to_thread(api_status, central, token) == 401
    journal = await asyncio.to_thread(_journal_actions, world.config("central").store_url)
    assert ("operator_create_token", "ops", "new E-Office") in journal
    assert ("operator_revoke_token", "ops", "E-Office retired") in journal


def _journal_actions(store_url: str) -> list[tuple[str, str, str]]:
    import sqlite3

    path = store_url.split("sqlite:///", 1)[1].split("?")[0]
    with sqlite3.connect(path) as db:
        rows = [json.loads(r[0]) for r in db.execute("SELECT event FROM journal ORDER BY seq")]
    return [
        (r["action"], r["data"].get("operator", ""), r["data"].get("reason", ""))
        for r in rows
        if r["action"].startswith("operator_")
    ]


async def test_a_viewer_is_refused_the_operators_actions(world, new_page) -> None:
    central = world.nodes["central"]
    page = await new_page()
    await sign_in(page, central, "watcher")
    await page.goto(f"{central.http_url}/console/tokens")
    before = await ConsoleData(central.service.store).list_tokens()
    create = page.locator("#token-create")
    await create.locator("input[name=label]").fill("by a viewer")
    await create.locator("input[name=reason]").fill("trying")
    async with page.expect_response(lambda r: r.url.endswith("/console/tokens/create")) as info:
        await create.locator("button[type=submit]").click()
    assert (await info.value).status == 403
    assert "operator role" in (await page.text_content("#error-message") or "")
    assert await ConsoleData(central.service.store).list_tokens() == before


async def test_a_form_posted_without_its_csrf_token_is_refused(world, new_page) -> None:
    central = world.nodes["central"]
    page = await new_page()
    await sign_in(page, central)
    await page.goto(f"{central.http_url}/console/tokens")
    before = await ConsoleData(central.service.store).list_tokens()
    # The page's own form, its CSRF field removed (the session cookie still goes with the request).
    await page.locator("#token-create input[name=csrf]").evaluate("e => e.remove()")
    create = page.locator("#token-create")
    await create.locator("input[name=reason]").fill("forged")
    async with page.expect_response(lambda r: r.url.endswith("/console/tokens/create")) as info:
        await create.locator("button[type=submit]").click()
    response = await info.value
    assert response.status == 403
    assert (await response.all_headers())["content-security-policy"].count("unsafe-inline") == 0
    assert await ConsoleData(central.service.store).list_tokens() == before


async def test_an_operator_discards_a_dead_letter_with_a_reason_and_it_leaves_the_queue(world, new_page) -> None:
    import aio_pika

    from exchange.routing.lanes import Lane, routing_key
    from exchange.transport.deadletters import DeadLetters
    from exchange.transport.topology import Names

    local = world.nodes["local"]
    cfg = world.config("local")
    mid = "00000000-0000-4000-8000-" + os.urandom(6).hex()
    connection = await aio_pika.connect(cfg.amqp.url)
    try:  # a dead letter of a message nobody will want again
        channel = await connection.channel(publisher_confirms=True)
        dlx = await channel.get_exchange(Names(cfg.amqp.prefix).dlx)
        await dlx.publish(
            aio_pika.Message(
                b"junk",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers={
                    "x-message-id": mid,
                    "x-recipient": C,
                    "x-sender": A,
                    "x-attempt": 1,
                    "x-routing-key": routing_key(C, Lane.NORMAL),
                    "x-exchange-dead-code": "frame-invalid",
                },
            ),
            routing_key="",
            timeout=10,
        )
    finally:
        await connection.close()

    page = await new_page()
    await sign_in(page, local)
    await page.goto(f"{local.http_url}/console/deadletters")
    await page.check(f"input[name=message_id][value='{mid}']")
    await page.fill("#dl-reason", "TICKET-9 garbage from a test peer")
    await page.click("#dl-discard")
    await page.wait_for_selector("#dl-done")
    assert mid in await page.text_content("#dl-done")
    assert mid not in [d["message_id"] for d in await DeadLetters(cfg).peek()]
    entries = await ConsoleData(local.service.store).journal_of(mid)
    assert [(e["action"], e["data"]["operator"], e["data"]["reason"]) for e in entries] == [
        ("operator_discard", "ops", "TICKET-9 garbage from a test peer")
    ]
