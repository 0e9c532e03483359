"""The national hub's client protocol (/vxp/) end to end: two real nodes, the real broker, real HTTP.

Node ``central`` hosts the Government Office (A), node ``local`` hosts Nghệ An (B) and
Ho Chi Minh City (C); each talks to its node only as an SDK E-Office would, through
:class:`~tests.integration.vxp_client.VxpClient`, with a secret issued by the CLI.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.node import Node
from tests.integration.conftest import wait_for
from tests.integration.vxp_client import VxpClient, signed_headers

pytestmark = [pytest.mark.broker]

A, B, C = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29"
DATA = Path(__file__).resolve().parents[1] / "data"
SYSTEMS = {A: "vxp.g22", B: "vxp.saas.03", C: "020100107370"}


def package(*, to_c: bool = True, number: str = "") -> bytes:
    """The sample document package From A (To B and C), with a number of its own so that each is new."""
    text = (DATA / "edxml" / "document_new.edxml").read_text(encoding="utf-8")
    number = number or str(uuid.uuid4().int % 10**9)
    text = text.replace("<edXML:CodeNumber>12<", f"<edXML:CodeNumber>{number}<").replace(
        ",12/CT-TTg<", f",{number}/CT-TTg<"
    )
    if not to_c:
        text = re.sub(
            r"\s*<edXML:To>\s*<edXML:OrganId>000\.00\.00\.H29</edXML:OrganId>.*?</edXML:To>",
            "",
            text,
            count=1,
            flags=re.DOTALL,
        )
    return text.encode("utf-8")


@dataclass
class Hub:
    central: Node
    local: Node
    root: Path
    http: aiohttp.ClientSession
    secrets: dict[str, str]

    def node(self, code: str) -> Node:
        return self.central if code == A else self.local

    def client(self, code: str, **kw) -> VxpClient:
        return VxpClient(self.http, f"{self.node(code).http_url}/vxp", SYSTEMS[code], self.secrets[code], **kw)


def cli(*argv: str) -> tuple[int, str, str]:
    """Run `exchange …` in-process; its stdout and stderr.

    The nodes of the fixture run in this process too, and ``redirect_stdout`` swaps the
    process's stdout: a node's log line can land in ``out``. The secret is its last line.
    """
    import contextlib
    import io

    from exchange.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
async def hub(tmp_path_factory, amqp_url: str) -> AsyncIterator[Hub]:
    root = tmp_path_factory.mktemp("vxp")
    prefix = f"vxp{uuid.uuid4().hex[:8]}"
    configs = build_world(
        root,
        [
            AgencySpec(A, "Văn phòng Chính phủ", node="central"),
            AgencySpec(B, "UBND tỉnh Nghệ An", node="local"),
            AgencySpec(C, "UBND TP Hồ Chí Minh", node="local"),
        ],
        [NodeSpec(n, amqp_url=amqp_url, prefix=prefix, http_port=0) for n in ("central", "local")],
    )
    nodes: dict[str, Node] = {}
    try:
        for name in ("local", "central"):
            node = Node(load_config(configs[name]), serve_http=True, workers=8)
            await node.start()
            nodes[name] = node
        for node in nodes.values():
            await node.wait_connected(30)
        secrets = {}
        for code, system in SYSTEMS.items():
            config = str(configs["central" if code == A else "local"])
            rc, out, err = await asyncio.to_thread(
                cli, "vxp", "secret", "create", "--system", system, "--agency", code, "--config", config
            )
            assert rc == 0, err
            secrets[code] = out.strip().splitlines()[-1]
            assert "shown only this once" in err and secrets[code] not in err
        async with aiohttp.ClientSession() as http:
            yield Hub(nodes["central"], nodes["local"], root, http, secrets)
    finally:
        for node in nodes.values():
            await node.stop()


async def wait_received(client: VxpClient, doc_id: str, **params: str) -> dict:
    found: list[dict] = []

    async def there() -> bool:
        found[:] = [i for i in await client.received(**params) if i["docId"] == doc_id]
        return bool(found)

    await wait_for(there, 30, what=f"{doc_id} in {client.system_id}'s received list")
    return found[0]


async def wait_sent(client: VxpClient, doc_id: str, to: str, **expected: str) -> dict:
    item: dict = {}

    async def reached() -> bool:
        item.update(next(i for i in await client.sent(doc_id) if i["toCode"] == to))
        return all(item.get(k) == v for k, v in expected.items())

    await wait_for(reached, 30, what=f"{doc_id} to {to} showing {expected}")
    return item


async def test_every_operation_between_two_nodes_as_sdk_e_offices_would_call_them(hub: Hub) -> None:
    from exchange.envelope.edxml import import_package

    a, b, c = hub.client(A), hub.client(B), hub.client(C)
    data = package()
    doc_id = await a.send_edoc(data)
    assert await a.send_edoc(data) == doc_id  # an SDK retry of the same bytes sends nothing twice

    # B's E-Office pulls, counts, fetches the package, and accepts it.
    item = await wait_received(b, doc_id, messagetype="edoc")
    assert (item["from"], item["to"], item["status"], item["messageType"]) == (A, B, "inbox", "edoc")
    assert item["created_time"].endswith("+07:00")
    assert await b.count("countReceiveEdoc") >= 1
    received = import_package(await b.get_edoc(doc_id))
    original = import_package(data)
    assert received.envelope.header.sender.code == A
    assert received.envelope.header.document.subject == original.envelope.header.document.subject
    assert sorted(received.attachment_data.values()) == sorted(original.attachment_data.values())
    assert (await b.update_status(doc_id, "acceptance"))["code"] == "03"

    # A sees it on its side: delivered, accepted by B; B's default list no longer offers it.
    seen = await wait_sent(a, doc_id, B, receiveStatus="acceptance")
    assert seen["sendStatus"] == "done" and seen["receiveStatusDesc"].startswith("03 ")
    assert seen["notation"] == "CT-TTg" and seen["senderDocId"] == doc_id and seen["receivedTime"]
    assert doc_id not in [i["docId"] for i in await b.received()]
    assert (await wait_received(b, doc_id, status="acceptance"))["status"] == "acceptance"

    # B's status reaches A's E-Office as a status package it pulls and takes in.
    status_item = next(i for i in await a.received(messagetype="status"))
    status = import_package(await a.get_edoc(status_item["docId"]))
    assert status.envelope.header.status.code.value == "03" and status.envelope.header.sender.code == B
    before = await a.count("countReceiveStatus")
    await a.update_status(status_item["docId"], "done")
    assert await a.count("countReceiveStatus") == before - 1

    # C's E-Office cannot take it in: fail is a non-delivery in A's tracking.
    await wait_received(c, doc_id)
    await c.update_status(doc_id, "fail")
    failed = await wait_sent(a, doc_id, C, sendStatus="fail")
    assert "eoffice-refused" in failed["sendStatusDesc"]
    tracked = await hub.central.service.track(A, doc_id)
    states = {d.recipient: d.state.value for d in tracked.deliveries}
    assert states == {B: "delivered", C: "failed"}
    assert [e.event for e in tracked.timeline if e.recipient == C][-1] == "failed"
    assert (await wait_received(c, doc_id, status="fail"))["status"] == "fail"

    agencies = {x["code"]: x for x in await b.agencies()}
    assert {A, B, C} <= set(agencies) and agencies[B]["name"] == "UBND tỉnh Nghệ An" and agencies[B]["hostedHere"]


async def refused(
    client: VxpClient, operation: str, headers: dict[str, str], status: int, error: str, code: str, **kw
) -> dict:
    """Assert the hub's failure shape, HTTP status, hub ErrorCode and our stable code."""
    got, body = await client.raw(operation, headers, **kw)
    assert (got, body["status"], body["ErrorCode"], body["code"]) == (status, "FAIL", error, code), body
    assert body["data"] is None and body["ErrorDesc"] and "\n" not in body["ErrorDesc"]
    return body


async def test_bad_signatures_stale_or_replayed_calls_wrong_hash_file_and_foreign_doc_ids_are_refused(hub: Hub) -> None:
    a, b, c = hub.client(A), hub.client(B), hub.client(C)
    doc_id = await a.send_edoc(package(to_c=False))
    await wait_received(b, doc_id)

    # Wrong HMAC: signed with another secret, or a signed value changed after signing.
    impostor = VxpClient(hub.http, b.endpoint, SYSTEMS[B], "not-the-secret")
    await refused(b, "getEdoc", impostor.headers(docId=doc_id), 401, "3", "vxp-signature-invalid")
    tampered = b.headers(docId=doc_id)
    tampered["XroadVnpt-sign-header"] = tampered["XroadVnpt-sign-header"].replace('"vxp.saas.03"', '"020100107370"')
    await refused(b, "getEdoc", tampered, 401, "3", "vxp-signature-invalid")
    # A stale (or far future) timestamp.
    for skew in (-timedelta(minutes=10), timedelta(minutes=10)):
        late = hub.client(B, clock=lambda s=skew: datetime.now(UTC) + s)
        await refused(b, "getReceivedEdocList", late.headers(), 401, "4", "vxp-timestamp-stale")
    # A replayed request: the second use of the same signed headers.
    once = b.headers(docId=doc_id)
    assert (await b.raw("getEdoc", once))[0] == 200
    await refused(b, "getEdoc", once, 401, "5", "vxp-replayed")
    # A clear header that disagrees with the signed one.
    mismatched = b.headers(docId=doc_id)
    mismatched["docId"] = str(uuid.uuid4())
    await refused(b, "getEdoc", mismatched, 400, "6", "vxp-header-mismatch")
    # An unknown system.
    stranger = VxpClient(hub.http, b.endpoint, "nobody.here", "x")
    await refused(b, "getAgenciesList", stranger.headers(), 401, "2", "vxp-system-unknown")
    # Unsigned: no hub headers at all (an API token is not a hub credential).
    await refused(b, "getAgenciesList", {}, 401, "1", "vxp-auth-missing")

    # Wrong hash-file: refused, and nothing is sent.
    data = package()
    sent_before = len(await hub.central.service.store.list_sent(A, limit=1000))
    headers = a.headers(
        servicetype="eDoc", messagetype="edoc", **{"hash-file": hashlib.sha256(data + b" ").hexdigest()}
    )
    await refused(a, "sendEdoc", headers, 400, "7", "vxp-hash-file-mismatch", data=a.send_form(data))
    assert len(await hub.central.service.store.list_sent(A, limit=1000)) == sent_before

    # Another system's docId: C (same node as B) cannot fetch, answer or even learn of B's document.
    for operation, params in (
        ("getEdoc", {"docId": doc_id}),
        ("updateStatus", {"docId": doc_id, "status": "done"}),
        ("getSentEdocList", {"docId": doc_id}),
    ):
        await refused(c, operation, c.headers(**params), 404, "9", "vxp-not-found")
    unknown = str(uuid.uuid4())
    body = await refused(c, "getEdoc", c.headers(docId=unknown), 404, "9", "vxp-not-found")
    assert unknown in body["ErrorDesc"]
    assert doc_id not in [i["docId"] for i in await c.received()]
    # ... and B's document is untouched by C's attempts.
    assert doc_id in [i["docId"] for i in await b.received()]

    # Bad parameters and unknown operations answer the same shape.
    await refused(b, "updateStatus", b.headers(docId=doc_id, status="accepted"), 400, "10", "vxp-status-unknown")
    await refused(b, "getEdoc", b.headers(), 401, "1", "vxp-auth-missing")
    await refused(b, "getReceivedEdocList", b.headers(pageSize="0"), 400, "8", "vxp-bad-request")
    await refused(b, "noSuchOperation", b.headers(), 404, "9", "vxp-not-found")


async def test_secrets_are_shown_once_stored_sealed_rotated_and_never_logged(hub: Hub) -> None:
    import structlog
    from structlog.testing import capture_logs

    config = str(hub.root / "local.toml")
    db = (hub.root / "local" / "exchange.db").read_bytes()
    assert hub.secrets[B].encode() not in db and hub.secrets[C].encode() not in db
    rc, _, err = await asyncio.to_thread(
        cli, "vxp", "secret", "create", "--system", SYSTEMS[B], "--agency", B, "--config", config
    )
    assert rc == 1 and "[conflict]" in err and "rotate" in err
    rc, _, err = await asyncio.to_thread(
        cli, "vxp", "secret", "create", "--system", "x.y", "--agency", A, "--config", config
    )
    assert rc == 1 and err.startswith("exchange: error [agency-not-hosted]")

    old = hub.client(C)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        rc, out, _ = await asyncio.to_thread(cli, "vxp", "secret", "rotate", "--system", SYSTEMS[C], "--config", config)
        assert rc == 0
        new = out.strip().splitlines()[-1]
        assert new and new != hub.secrets[C]
        await refused(old, "getAgenciesList", old.headers(), 401, "3", "vxp-signature-invalid")
        hub.secrets[C] = new
        assert await hub.client(C).agencies()
    text = repr(logs)
    assert new not in text and hub.secrets[B] not in text
    assert any(e.get("route") == "/vxp/getAgenciesList" and e.get("agency") == C for e in logs)
    rc, out, _ = await asyncio.to_thread(cli, "vxp", "secret", "list", "--config", config)
    assert rc == 0 and SYSTEMS[B] in out and SYSTEMS[C] in out and new not in out and "no: rotate" not in out


async def test_the_sdks_own_header_set_is_accepted(hub: Hub) -> None:
    """Only the XroadVnpt- copies on the wire (the SDK sends no plain ones), Content-Type signed as JSON."""
    b = hub.client(B)
    call = {
        "Content-Type": "application/json",
        "systemid": SYSTEMS[B],
        "timestamp": b.headers()["timestamp"],
        "servicetype": "eDoc",
        "messagetype": "edoc",
    }
    headers = {k: v for k, v in signed_headers(call, hub.secrets[B]).items() if k.startswith("XroadVnpt-")}
    status, body = await b.raw("getReceivedEdocList", {**headers, "Content-Type": "application/json"})
    assert status == 200 and body["status"] == "OK" and isinstance(body["data"], list)


async def test_a_status_package_sent_with_send_edoc_answers_the_document_it_names(hub: Hub) -> None:
    """The SDK's other way to report a status: a status package (messagetype status) through sendEdoc."""
    a, b = hub.client(A), hub.client(B)
    number = str(uuid.uuid4().int % 10**9)
    doc_id = await a.send_edoc(package(to_c=False, number=number))
    await wait_received(b, doc_id)
    status = (DATA / "edxml" / "status_03_accepted.edxml").read_text(encoding="utf-8")
    status = status.replace("12/CT-TTg", f"{number}/CT-TTg").replace("<edXML:StatusCode>03<", "<edXML:StatusCode>05<")
    status_id = await b.send_edoc(status.encode(), messagetype="status")
    assert status_id != doc_id
    seen = await wait_sent(a, doc_id, B, receiveStatus="processing")
    assert seen["receiveStatusDesc"] == "05 being processed"
    # A status package answering a document B never received is refused with the hub's shape.
    stray = status.replace(f"{number}/CT-TTg", "999999999999/CT-TTg").encode()
    headers = b.headers(servicetype="eDoc", messagetype="status", **{"hash-file": hashlib.sha256(stray).hexdigest()})
    await refused(b, "sendEdoc", headers, 404, "9", "vxp-not-found", data=b.send_form(stray))
