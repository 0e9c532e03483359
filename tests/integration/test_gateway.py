"""The HTTP gateway end to end: real nodes on the real broker, real HTTP on 127.0.0.1.

One world serves the whole module (generating keys and starting nodes is the
slow part): node ``central`` hosts the Government Office (A), node ``local``
hosts Nghệ An (B), Ho Chi Minh City (C) and a commune (D). C is B's neighbour on
the same node and store, which makes it the meaningful "foreign agency" for
access checks: a token of another node is not even known there.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from exchange.config import load_config
from exchange.devworld import AgencySpec, NodeSpec, build_world
from exchange.node import Node
from exchange.observability.metrics import Metrics
from exchange.tokens import hash_token, new_token
from tests.integration.conftest import wait_for

pytestmark = [pytest.mark.broker]

A, B, C, D = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29", "000.00.31.H41"
DATA = Path(__file__).resolve().parents[1] / "data"
PROBLEM = "application/problem+json"

MAX_BODY = 3_000_000
MAX_ATTACHMENT = 1_000_000


@dataclass
class Gateway:
    """The running world as an HTTP client sees it."""

    central: Node
    local: Node
    tokens: dict[str, str]
    http: aiohttp.ClientSession
    root: Path

    def url(self, code: str) -> str:
        node = self.central if code == A else self.local
        assert node.http_url is not None
        return node.http_url

    def auth(self, code: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[code]}"}

    async def submit(
        self,
        code: str,
        metadata: dict,
        files: dict[str, tuple[bytes, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("metadata", json.dumps(metadata), content_type="application/json")
        for name, (data, media_type) in (files or {}).items():
            form.add_field("file", data, filename=name, content_type=media_type)
        return await self.http.post(
            f"{self.url(code)}/v1/documents", data=form, headers={**self.auth(code), **(headers or {})}
        )

    async def inbox(self, code: str, **params) -> dict:
        async with self.http.get(f"{self.url(code)}/v1/inbox", params=params, headers=self.auth(code)) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def wait_in_inbox(self, code: str, message_id: str, timeout: float = 30) -> dict:
        async def there() -> bool:
            items = (await self.inbox(code, include_acked="true", limit=500))["items"]
            return any(i["message_id"] == message_id for i in items)

        await wait_for(there, timeout, what=f"{message_id} in {code}'s inbox")
        async with self.http.get(f"{self.url(code)}/v1/inbox/{message_id}", headers=self.auth(code)) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def track(self, code: str, message_id: str) -> dict:
        async with self.http.get(f"{self.url(code)}/v1/sent/{message_id}", headers=self.auth(code)) as r:
            assert r.status == 200, await r.text()
            return await r.json()


def metadata(recipients: list[str], subject: str = "Chỉ thị về chuyển đổi số", **extra) -> dict:
    return {"recipients": recipients, "subject": subject, "code": {"number": "12", "notation": "CT-TTg"}, **extra}


async def created(response: aiohttp.ClientResponse, status: int = 201) -> dict:
    async with response:
        body = await response.json()
        assert response.status == status, body
        return body


async def problem(response: aiohttp.ClientResponse, status: int, code: str | set[str]) -> dict:
    """Assert an RFC 9457 refusal with the given HTTP status and stable code."""
    async with response:
        assert response.status == status, await response.text()
        assert response.content_type == PROBLEM
        body = await response.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    assert body["status"] == status
    assert body["code"] in ({code} if isinstance(code, str) else code), body
    assert body["type"] == f"urn:exchange:error:{body['code']}"
    return body


@pytest.fixture(scope="module")
async def gw(tmp_path_factory, amqp_url: str) -> AsyncIterator[Gateway]:
    root = tmp_path_factory.mktemp("gateway")

    def rec(code: str, node: str) -> AgencySpec:
        return AgencySpec(
            code, f"agency {code}", node=node, adapter="recording", options={"path": str(root / f"{code}.jsonl")}
        )

    limits = f"[limits]\nmax_attachment_bytes = {MAX_ATTACHMENT}\nmax_message_bytes = {2 * MAX_ATTACHMENT}\n"
    prefix = f"gw{uuid.uuid4().hex[:8]}"
    configs = build_world(
        root,
        [rec(A, "central"), rec(B, "local"), rec(C, "local"), rec(D, "local")],
        [NodeSpec(n, amqp_url=amqp_url, prefix=prefix, http_port=0, extra=limits) for n in ("central", "local")],
    )
    env = {"EXCHANGE__HTTP__MAX_BODY_BYTES": str(MAX_BODY)}
    nodes = {}
    try:
        for name in ("local", "central"):
            node = Node(load_config(configs[name], environ=env), serve_http=True, metrics=Metrics(), workers=8)
            await node.start()
            nodes[name] = node
        for node in nodes.values():
            await node.wait_connected(30)
        tokens = {}
        for code in (A, B, C, D):
            node = nodes["central" if code == A else "local"]
            tokens[code] = await new_token(node.service.store, code, label="test")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            yield Gateway(nodes["central"], nodes["local"], tokens, http, root)
    finally:
        for node in nodes.values():
            await node.stop()


# -- the happy path ----------------------------------------------------------------------------------


async def test_document_submitted_over_http_reaches_the_other_node_and_is_fetched_byte_identical(gw) -> None:
    pdf = b"%PDF-1.7\n" + os.urandom(300_000)
    note = "Ghi chú: tài liệu mật độ thấp\n".encode()
    meta = metadata(
        [B, D],
        priority=3,
        steering_type=1,
        due_date="2026-12-31",
        promulgation={"place": "Hà Nội", "date": "2026-11-20"},
        signer={"position": "Thủ tướng", "full_name": "Nguyễn Văn A"},
        descriptions={"chỉ thị.pdf": "bản chính"},
    )
    sent = await created(
        await gw.submit(A, meta, {"chỉ thị.pdf": (pdf, "application/pdf"), "note.txt": (note, "text/plain")})
    )
    mid = sent["message_id"]
    assert sent["created"] is True and sorted(sent["recipients"]) == sorted([B, D])
    assert sent["track"] == f"/v1/sent/{mid}"

    message = await gw.wait_in_inbox(B, mid)
    assert message["kind"] == "document" and message["sender"]["code"] == A
    doc = message["document"]
    assert doc["subject"] == meta["subject"] and doc["code"] == {"number": "12", "notation": "CT-TTg"}
    assert (doc["priority"], doc["steering_type"], doc["due_date"]) == (3, 1, "2026-12-31")
    assert doc["promulgation"] == {"place": "Hà Nội", "date": "2026-11-20"}
    assert doc["signer"]["full_name"] == "Nguyễn Văn A"
    by_name = {a["name"]: a for a in message["attachments"]}
    assert set(by_name) == {"chỉ thị.pdf", "note.txt"}
    assert by_name["chỉ thị.pdf"]["description"] == "bản chính"
    for name, original, media_type in (("chỉ thị.pdf", pdf, "application/pdf"), ("note.txt", note, "text/plain")):
        async with gw.http.get(gw.url(B) + by_name[name]["href"], headers=gw.auth(B)) as r:
            assert r.status == 200
            body = await r.read()
            assert r.content_type == media_type
            assert (
                r.headers["Repr-Digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(original).digest()).decode()}:"
            )
        assert body == original
        assert by_name[name]["sha256"] == hashlib.sha256(original).hexdigest()

    # The signed envelope is the evidence: the exact bytes the sender signed and tracks.
    async with gw.http.get(gw.url(B) + message["envelope"]["href"], headers=gw.auth(B)) as r:
        assert r.status == 200 and r.content_type == "application/xml"
        xml = await r.read()
    assert hashlib.sha256(xml).hexdigest() == message["envelope"]["sha256"]
    track = await gw.track(A, mid)
    assert track["envelope_sha256"] == message["envelope"]["sha256"]

    # Acknowledged messages leave the default listing, stay fetchable, and a repeat ack is harmless.
    for _ in range(2):
        async with gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/ack", headers=gw.auth(B)) as r:
            assert r.status == 200 and (await r.json()) == {"message_id": mid, "state": "acked"}
    assert mid not in [i["message_id"] for i in (await gw.inbox(B))["items"]]
    acked = [i for i in (await gw.inbox(B, include_acked="true"))["items"] if i["message_id"] == mid]
    assert acked[0]["state"] == "acked" and acked[0]["acked_at"]
    # The commune got its own copy, still unacknowledged.
    await gw.wait_in_inbox(D, mid)
    assert mid in [i["message_id"] for i in (await gw.inbox(D))["items"]]


async def test_inbox_pages_with_the_after_cursor(gw) -> None:
    ids = [(await created(await gw.submit(A, metadata([D], f"trang {i}"))))["message_id"] for i in range(3)]
    for mid in ids:
        await gw.wait_in_inbox(D, mid)
    seen: list[str] = []
    after = 0
    while True:
        page = await gw.inbox(D, after=after, limit=2)
        assert len(page["items"]) <= 2
        if not page["items"]:
            assert page["next_after"] == after
            break
        seqs = [i["seq"] for i in page["items"]]
        assert seqs == sorted(seqs) and seqs[0] > after  # in hand-over order, after the cursor
        seen += [i["message_id"] for i in page["items"]]
        assert page["next_after"] == seqs[-1]
        after = page["next_after"]
    assert set(ids) <= set(seen) and len(seen) == len(set(seen))  # every message, none twice


async def test_status_sent_by_the_recipient_shows_in_the_senders_track_and_inbox(gw) -> None:
    mid = (await created(await gw.submit(A, metadata([B]))))["message_id"]
    await gw.wait_in_inbox(B, mid)
    body = {"code": "03", "description": "đã tiếp nhận", "staff": {"department": "Văn thư", "staff": "Trần B"}}
    headers = {**gw.auth(B), "Idempotency-Key": f"status-{mid}"}
    first = await created(await gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/status", json=body, headers=headers))
    again = await created(await gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/status", json=body, headers=headers))
    assert again == first  # the replay answers exactly what the first request got

    async def status_tracked() -> bool:
        deliveries = {d["recipient"]: d for d in (await gw.track(A, mid))["deliveries"]}
        return deliveries[B]["status_code"] == "03"

    await wait_for(status_tracked, what="status 03 in the sender's track")
    delivery = (await gw.track(A, mid))["deliveries"][0]
    assert delivery["state"] == "delivered"
    events = [e["event"] for e in delivery["timeline"]]
    # "queued" (the publish confirm) may be recorded after the receipt: the recipient can take the
    # copy before the confirm reaches the sender; the state never moves back (docs/ARCHITECTURE.md).
    assert events[0] == "submitted" and sorted(events[1:3]) == ["delivered", "queued"], events
    assert events.count("status:03") == 1
    status = await gw.wait_in_inbox(A, first["message_id"])
    assert status["kind"] == "status" and status["status"]["code"] == "03"
    assert status["status"]["response_for"] == mid and status["document"] is None


async def test_a_retry_with_the_same_idempotency_key_sends_nothing_new(gw) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await created(await gw.submit(A, metadata([C]), headers=key))
    retry = await created(await gw.submit(A, metadata([C]), headers=key))
    assert retry == first
    other = await created(await gw.submit(A, metadata([C]), headers={"Idempotency-Key": str(uuid.uuid4())}))
    assert other["message_id"] != first["message_id"]
    await gw.wait_in_inbox(C, first["message_id"])
    await gw.wait_in_inbox(C, other["message_id"])
    copies = [
        i
        for i in (await gw.inbox(C, include_acked="true", limit=500))["items"]
        if i["message_id"] == first["message_id"]
    ]
    assert len(copies) == 1


async def test_replace_and_revoke_go_to_the_original_recipients_and_land_in_its_timeline(gw) -> None:
    original = (await created(await gw.submit(A, metadata([B, C]))))["message_id"]
    replace = await created(
        await gw.submit(
            A,
            metadata([], "Chỉ thị (thay thế)", operation="replace", relates_to=original),
            {"v2.txt": (b"phien ban 2", "text/plain")},
        )
    )
    assert sorted(replace["recipients"]) == sorted([B, C])
    revoke = await created(await gw.submit(A, metadata([B], "Thu hồi", operation="revoke", relates_to=original)))
    assert revoke["recipients"] == [B]
    fetched = await gw.wait_in_inbox(B, revoke["message_id"])
    assert fetched["operation"] == "revoke" and fetched["document"]["relates_to"] == original
    replaced = await gw.wait_in_inbox(C, replace["message_id"])
    assert replaced["operation"] == "replace" and replaced["attachments"][0]["name"] == "v2.txt"
    events = {(d["recipient"], e["event"]) for d in (await gw.track(A, original))["deliveries"] for e in d["timeline"]}
    assert {(B, "replace-sent"), (C, "replace-sent"), (B, "revoke-sent")} <= events
    # A revocation cannot itself be replaced; a document nobody sent cannot be revoked.
    await problem(
        await gw.submit(A, metadata([], operation="replace", relates_to=revoke["message_id"])), 409, "conflict"
    )
    await problem(await gw.submit(A, metadata([B], operation="revoke", relates_to=str(uuid.uuid4()))), 404, "not-found")


async def test_an_edxml_package_posted_raw_is_sent_as_an_envelope(gw) -> None:
    package = (DATA / "edxml" / "document_new.edxml").read_bytes()
    headers = {**gw.auth(A), "Content-Type": "application/xml"}
    sent = await created(await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package, headers=headers))
    assert sorted(sent["recipients"]) == sorted([B, C])
    message = await gw.wait_in_inbox(C, sent["message_id"])
    assert message["sender"]["code"] == A and message["document"]["code"]["notation"] == "CT-TTg"
    # B cannot send a package that says it is From the Government Office.
    await problem(
        await gw.http.post(
            f"{gw.url(B)}/v1/edxml", data=package, headers={**gw.auth(B), "Content-Type": "application/xml"}
        ),
        403,
        "forbidden",
    )
    await problem(
        await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package, headers={**gw.auth(A), "Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )


async def test_a_wild_edxml_package_names_its_refused_recipient_and_its_zip_downloads_unwrapped(gw) -> None:
    """docs/EDXML.md: a To the bus cannot route to is refused alone and said; a ZIP-wrapped file comes out unzipped."""
    text = (DATA / "edxml" / "wild" / "content_types_zip_wrapped.edxml").read_text(encoding="utf-8")
    to = text[text.index("<edXML:To>") : text.index("</edXML:To>") + len("</edXML:To>")]
    package = text.replace(to, to + to.replace(B, "vxp.unknown.99"), 1).encode("utf-8")
    headers = {**gw.auth(A), "Content-Type": "application/xml"}
    sent = await created(await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package, headers=headers))
    assert sent["recipients"] == [B]
    (refused,) = sent["refused"]
    assert (refused["organ_id"], refused["code"]) == ("vxp.unknown.99", "agency-code-invalid")
    assert refused["element"].endswith("MessageHeader/To[2]/OrganId")
    message = await gw.wait_in_inbox(B, sent["message_id"])
    (attachment,) = message["attachments"]
    async with gw.http.get(gw.url(B) + attachment["href"], headers=gw.auth(B)) as r:
        assert r.status == 200 and r.content_type == "application/pdf"
        assert (await r.read()).startswith(b"%PDF-1.4")

    async def receipt_back() -> bool:  # so that no receipt is still in flight when the next test counts the outbox
        return [d["state"] for d in (await gw.track(A, sent["message_id"]))["deliveries"]] == ["delivered"]

    await wait_for(receipt_back, what="the delivery receipt in the sender's track")


#: Each hostile XML file and the refusal the gateway answers with.
HOSTILE = {
    "billion_laughs.xml": (400, "xml-forbidden-construct"),
    "external_dtd.xml": (400, "xml-forbidden-construct"),
    "internal_dtd_no_entities.xml": (400, "xml-forbidden-construct"),
    "parameter_entity.xml": (400, "xml-forbidden-construct"),
    "xxe_file_entity.xml": (400, "xml-forbidden-construct"),
    "xxe_network_entity.xml": (400, "xml-forbidden-construct"),
    "processing_instruction.xml": (400, "xml-forbidden-construct"),
    "undefined_entity.xml": (400, "xml-malformed"),
    "malformed.xml": (400, "xml-malformed"),
    "non_utf8_garbage.bin": (400, "xml-malformed"),
    "utf16_xxe.xml": (400, "xml-malformed"),
    # Well-formed and harmless, but an envelope, not an edXML package.
    "xinclude_file.xml": (422, "edxml-invalid"),
}


async def test_hostile_xml_posted_as_edxml_gets_a_typed_refusal_and_sends_nothing(gw) -> None:
    files = sorted(p.name for p in (DATA / "hostile" / "xml").iterdir())
    assert files == sorted(HOSTILE), "every hostile file needs its expected refusal here"
    before = (await gw.local.service.store.outbox_stats())[0]
    for name in files:
        status, code = HOSTILE[name]
        body = await problem(
            await gw.http.post(
                f"{gw.url(B)}/v1/edxml",
                data=(DATA / "hostile" / "xml" / name).read_bytes(),
                headers={**gw.auth(B), "Content-Type": "application/xml"},
            ),
            status,
            code,
        )
        assert "root:" not in body["detail"]  # nothing of /etc/passwd leaks back
    assert (await gw.local.service.store.outbox_stats())[0] == before


# -- refusals ------------------------------------------------------------------------------------------


async def test_oversize_uploads_are_refused_with_413_while_streaming(gw) -> None:
    # Declared too large: refused before the body is read.
    big = os.urandom(MAX_BODY + 1)
    await problem(
        await gw.http.post(
            f"{gw.url(A)}/v1/documents",
            data=big,
            headers={**gw.auth(A), "Content-Type": "multipart/form-data; boundary=x"},
        ),
        413,
        "payload-too-large",
    )

    # Chunked, no Content-Length: counted while streaming, refused when it crosses the limit.
    boundary = "gw-boundary"

    async def stream():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            f"Content-Type: application/json\r\n\r\n{json.dumps(metadata([B]))}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(MAX_BODY // 65536 + 2):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    body = await problem(
        await gw.http.post(
            f"{gw.url(A)}/v1/documents",
            data=stream(),
            headers={**gw.auth(A), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        ),
        413,
        "payload-too-large",
    )
    assert body["extra"]["limit"] in (MAX_BODY, MAX_ATTACHMENT)

    # Under the body limit but over the per-attachment limit.
    await problem(
        await gw.submit(A, metadata([B]), {"big.bin": (os.urandom(MAX_ATTACHMENT + 1), "application/pdf")}),
        413,
        "payload-too-large",
    )
    async with gw.http.get(f"{gw.url(A)}/healthz") as r:
        assert r.status == 200


def _form(**parts) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name, value in parts.items():
        form.add_field(name, value, content_type="application/json")
    return form


@pytest.mark.parametrize(
    "metadata_part, status, code",
    [
        ("{not json", 400, "bad-request"),
        (json.dumps(["a list"]), 422, "metadata-invalid"),
        (json.dumps(metadata([B], priorty=3)), 422, "metadata-invalid"),  # a typo is not silently ignored
        (json.dumps(metadata([B], priority=7)), 422, "metadata-invalid"),
        (json.dumps(metadata([B], steering_type="1")), 422, "metadata-invalid"),
        (json.dumps(metadata([B], due_date="31/12/2026")), 422, "metadata-invalid"),
        (json.dumps(metadata([B], subject="")), 422, "metadata-invalid"),
        (json.dumps(metadata([B], subject="x" * 501)), 422, "metadata-invalid"),
        (json.dumps(metadata([B], subject="bell \x07")), 422, "metadata-invalid"),
        (json.dumps({**metadata([B]), "code": {"number": "123456789012"}}), 422, "metadata-invalid"),
        (json.dumps(metadata([])), 422, "metadata-invalid"),
        (json.dumps(metadata(["H41"])), 422, "agency-code-invalid"),
        (json.dumps(metadata([B], operation="revoke")), 422, "metadata-invalid"),  # revoke of what?
        (json.dumps(metadata([B], relates_to=str(uuid.uuid4()))), 422, "metadata-invalid"),
        (json.dumps(metadata([B], descriptions={"missing.pdf": "x"})), 422, "metadata-invalid"),
    ],
)
async def test_malformed_metadata_is_refused_with_a_stable_code(gw, metadata_part, status, code) -> None:
    body = await problem(
        await gw.http.post(f"{gw.url(A)}/v1/documents", data=_form(metadata=metadata_part), headers=gw.auth(A)),
        status,
        code,
    )
    assert body["detail"]


async def test_requests_of_the_wrong_shape_are_refused(gw) -> None:
    url = f"{gw.url(A)}/v1/documents"
    await problem(await gw.http.post(url, data=_form(other="{}"), headers=gw.auth(A)), 400, "bad-request")
    await problem(
        await gw.http.post(url, data="subject: x", headers={**gw.auth(A), "Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    await problem(
        await gw.http.post(url, json=metadata([B]), headers={**gw.auth(A), "Idempotency-Key": "a b"}),
        400,
        "bad-request",
    )
    await problem(await gw.http.get(url, headers=gw.auth(A)), 405, "method-not-allowed")
    await problem(await gw.http.get(f"{gw.url(A)}/v1/nowhere", headers=gw.auth(A)), 404, "not-found")
    await problem(await gw.http.get(f"{gw.url(A)}/v1/inbox?limit=0", headers=gw.auth(A)), 400, "bad-request")
    # File names and media types end up in XML and in other agencies' HTTP headers: no control characters.
    raw = (
        b'--b\r\nContent-Disposition: form-data; name="metadata"\r\n\r\n'
        + json.dumps(metadata([B])).encode()
        + b'\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a%0D%0AX-Evil: 1.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nx\r\n--b--\r\n"
    )
    await problem(
        await gw.http.post(url, data=raw, headers={**gw.auth(A), "Content-Type": "multipart/form-data; boundary=b"}),
        422,
        "attachment-invalid",
    )
    await problem(await gw.submit(A, metadata([B]), {"a.txt": (b"x", "not a media type")}), 422, "attachment-invalid")
    await problem(
        await gw.submit(A, metadata([B]), {"a.txt": (b"x", "text/plain"), "b/a.txt": (b"y", "text/plain")}),
        422,
        "attachment-invalid",
    )  # two files named a.txt once paths are dropped
    # Metadata alone may come as application/json.
    sent = await created(await gw.http.post(url, json=metadata([B]), headers=gw.auth(A)))
    assert sent["recipients"] == [B]


async def test_an_unknown_recipient_is_named_in_the_refusal(gw) -> None:
    body = await problem(await gw.submit(A, metadata([B, "000.00.00.H99"])), 422, "agency-unknown")
    assert "000.00.00.H99" in body["detail"] and "/v1/directory" in body["detail"]


async def test_every_agency_endpoint_refuses_a_foreign_agency_and_missing_or_bad_credentials(gw) -> None:
    # B has a received document with an attachment, and a sent one; C is B's neighbour on the same node.
    received = (await created(await gw.submit(A, metadata([B]), {"a.txt": (b"secret bytes", "text/plain")})))[
        "message_id"
    ]
    fetched = await gw.wait_in_inbox(B, received)
    attachment_href = fetched["attachments"][0]["href"]
    sent = (await created(await gw.submit(B, metadata([A]))))["message_id"]

    # (method, path, json body): every route under /v1 that is not public.
    scoped = [
        ("GET", f"/v1/inbox/{received}", None),
        ("GET", attachment_href, None),
        ("GET", f"/v1/inbox/{received}/envelope", None),
        ("POST", f"/v1/inbox/{received}/ack", None),
        ("POST", f"/v1/inbox/{received}/status", {"code": "02"}),
        ("GET", f"/v1/sent/{sent}", None),
        ("POST", "/v1/documents", metadata([], operation="revoke", relates_to=sent)),
    ]
    unscoped = [
        ("GET", "/v1/inbox", None),
        ("GET", "/v1/me", None),
        ("GET", "/v1/directory", None),
        ("POST", "/v1/documents", metadata([A])),
        ("POST", "/v1/edxml", None),
    ]
    routes = {
        (r.method, r.resource.canonical)
        for r in gw.local._runner.app.router.routes()
        if r.method != "HEAD"
        and r.resource.canonical.startswith("/v1/")
        and not r.resource.canonical.startswith("/v1/openapi")
    }
    covered = {(m, _template(p)) for m, p, _ in scoped + unscoped}
    assert covered == routes, f"the matrix misses {routes - covered}"

    bad = {
        "no token": {},
        "unknown token": {"Authorization": "Bearer exg_not-a-real-token"},
        "not bearer": {"Authorization": f"Basic {gw.tokens[B]}"},
        "other node's token": gw.auth(A),
    }
    for method, path, body in scoped:
        await problem(await gw.http.request(method, gw.url(B) + path, json=body, headers=gw.auth(C)), 404, "not-found")
    for method, path, body in scoped + unscoped:
        for what, headers in bad.items():
            async with gw.http.request(method, gw.url(B) + path, json=body, headers=headers) as r:
                assert r.status == 401, (what, method, path)
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            await problem(
                await gw.http.request(method, gw.url(B) + path, json=body, headers=headers), 401, "unauthenticated"
            )
    # C's inbox never lists B's message, and nothing C tried changed B's state or sent anything.
    assert received not in [i["message_id"] for i in (await gw.inbox(C, include_acked="true", limit=500))["items"]]
    assert received in [i["message_id"] for i in (await gw.inbox(B))["items"]]  # still unacknowledged
    assert [d["status_code"] for d in (await gw.track(A, received))["deliveries"]] == [None]
    events = [e["event"] for d in (await gw.track(B, sent))["deliveries"] for e in d["timeline"]]
    assert "revoke-sent" not in events


def _template(path: str) -> str:
    parts = path.split("/")
    if len(parts) > 3 and parts[2] in ("inbox", "sent"):
        parts[3] = "{message_id}"
    if len(parts) > 5 and parts[4] == "attachments":
        parts[5] = "{attachment_id}"
    return "/".join(parts)


async def test_me_and_directory_answer_for_the_tokens_agency(gw) -> None:
    async with gw.http.get(f"{gw.url(C)}/v1/me", headers=gw.auth(C)) as r:
        assert (await r.json()) == {"agency": C, "name": f"agency {C}", "auth": "token", "node": "local"}
    async with gw.http.get(f"{gw.url(C)}/v1/directory", headers=gw.auth(C)) as r:
        items = {a["code"]: a for a in (await r.json())["items"]}
    assert set(items) == {A, B, C, D}
    assert items[D]["parent"] == B and items[C]["hosted_here"] and not items[A]["hosted_here"]
    async with gw.http.get(f"{gw.url(C)}/v1/directory", params={"code": B}, headers=gw.auth(C)) as r:
        assert [a["code"] for a in (await r.json())["items"]] == [B, D]
    await problem(
        await gw.http.get(f"{gw.url(C)}/v1/directory", params={"code": "000.00.00.H99"}, headers=gw.auth(C)),
        422,
        "agency-unknown",
    )


async def test_tokens_are_stored_only_as_hashes(gw) -> None:
    store = gw.local.service.store
    assert await store.agency_for_token(hash_token(gw.tokens[B])) == B
    assert await store.agency_for_token(gw.tokens[B]) is None
    db = (gw.root / "local" / "exchange.db").read_bytes()
    assert gw.tokens[B].encode() not in db


async def test_request_logs_carry_agency_and_message_id_but_no_secret_or_content(gw) -> None:
    import structlog
    from structlog.testing import capture_logs

    subject = f"Mật: kế hoạch {uuid.uuid4().hex}"
    attachment = f"NỘI DUNG {uuid.uuid4().hex}".encode()
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        sent = await created(await gw.submit(A, metadata([B], subject), {"mat.txt": (attachment, "text/plain")}))
        await gw.wait_in_inbox(B, sent["message_id"])
        async with gw.http.get(
            f"{gw.url(B)}/v1/inbox/{sent['message_id']}/attachments/x",
            headers={"Authorization": f"Bearer {gw.tokens[B]}x"},
        ) as r:
            assert r.status == 401
    text = repr(logs)
    for secret in (gw.tokens[A], gw.tokens[B], f"{gw.tokens[B]}x", subject, attachment.decode()):
        assert secret not in text
    submit = next(e for e in logs if e["event"] == "http.request" and e["route"] == "/v1/documents")
    assert submit["agency"] == A and submit["message_id"] == sent["message_id"] and submit["status"] == 201
    assert submit["request_id"] and submit["correlation_id"]
    fetch = next(e for e in logs if e["event"] == "http.request" and e["route"] == "/v1/inbox/{message_id}")
    assert fetch["agency"] == B and fetch["message_id"] == sent["message_id"]


async def test_token_create_prints_a_working_token_once_and_refuses_an_agency_hosted_elsewhere(gw, capsys) -> None:
    from exchange.cli.main import main

    config = str(gw.root / "local.toml")
    capsys.readouterr()
    assert (
        await asyncio.to_thread(main, ["token", "create", "--agency", D, "--label", "eoffice", "--config", config]) == 0
    )
    out, err = capsys.readouterr()  # (the nodes' own log lines go to stdout in tests too)
    (token,) = [line for line in out.splitlines() if line.startswith("exg_")]
    assert "shown only this once" in err
    async with gw.http.get(f"{gw.url(D)}/v1/me", headers={"Authorization": f"Bearer {token}"}) as r:
        assert (await r.json())["agency"] == D
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["token", "create", "--agency", A, "--config", config]) == 1
    out, err = capsys.readouterr()
    assert "exg_" not in out and err.startswith("exchange: error [agency-not-hosted]") and "Traceback" not in err
    assert await asyncio.to_thread(main, ["token", "create", "--agency", "G22", "--config", config]) == 1
    assert capsys.readouterr().err.startswith("exchange: error [agency-code-invalid]")


# -- probes, metrics, OpenAPI --------------------------------------------------------------------


async def test_probes_and_metrics_need_no_credentials(gw) -> None:
    url = gw.url(A)
    async with gw.http.get(f"{url}/healthz") as r:
        assert r.status == 200 and (await r.json()) == {"status": "ok"}
    async with gw.http.get(f"{url}/readyz") as r:
        assert r.status == 200
        assert (await r.json()) == {"ready": True, "checks": {"broker": True, "store": True, "keys": True}}
    await created(await gw.submit(A, metadata([B])))
    async with gw.http.get(f"{url}/metrics") as r:
        assert r.status == 200 and r.content_type == "text/plain"
        text = await r.text()
    line = next(
        x
        for x in text.splitlines()
        if x.startswith(f'exchange_documents_submitted_total{{agency="{A}",kind="document"}}')
    )
    assert float(line.split()[-1]) >= 1
    assert gw.tokens[A] not in text


async def test_readyz_names_the_part_that_is_not_ready(gw) -> None:
    from aiohttp.test_utils import TestServer

    from exchange.gateway.app import create_app

    async def broker_down() -> dict[str, bool]:
        return {"broker": False, "store": True, "keys": True}

    server = TestServer(create_app(gw.local.service, readiness=broker_down), host="127.0.0.1")
    await server.start_server()
    try:
        body = await problem(await gw.http.get(str(server.make_url("/readyz"))), 503, "not-ready")
        assert body["checks"] == {"broker": False, "store": True, "keys": True}
        assert "broker" in body["detail"]
    finally:
        await server.close()


async def test_the_served_openapi_document_describes_exactly_the_routes_served(gw) -> None:
    import yaml

    async with gw.http.get(f"{gw.url(B)}/v1/openapi.yaml") as r:
        assert r.status == 200
        spec = yaml.safe_load(await r.text())
    async with gw.http.get(f"{gw.url(B)}/v1/openapi.json") as r:
        assert (await r.json()) == spec
    assert spec["openapi"].startswith("3.")
    from openapi_spec_validator import validate

    validate(spec)  # a valid OpenAPI document, as served
    assert "DocumentSubmission" in spec["components"]["schemas"]  # the metadata JSON Schema, served within
    documented = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops if m != "parameters"}
    # /vxp/ speaks the national hub's own protocol (signed headers, its JSON answers): docs/API.md describes it.
    # /console is the operators' HTML console, not an API (docs/CONSOLE.md).
    served = {
        (r.method, r.resource.canonical)
        for r in gw.local._runner.app.router.routes()
        if r.method != "HEAD" and not r.resource.canonical.startswith(("/vxp/", "/console"))
    }
    assert documented == served


@pytest.mark.parametrize("mode", ["positive", "negative"])
async def test_responses_conform_to_the_openapi_document(gw, mode: str) -> None:
    """schemathesis generates requests for every documented operation; no 5xx, every answer as documented.

    Positive cases follow the schema, negative ones break it on purpose (both must get documented
    answers). ``GW_EXAMPLES`` raises the number of examples per operation for a deeper run.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    # Something real to find: a received document (with an attachment) and a sent one.
    received = (await created(await gw.submit(A, metadata([B]), {"x.txt": (b"x", "text/plain")})))["message_id"]
    await gw.wait_in_inbox(B, received)
    base_url = gw.url(B)
    async with gw.http.get(f"{base_url}/v1/openapi.json") as r:
        schema = schemathesis.openapi.from_dict(await r.json())
    MODE = GenerationMode(mode)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    auth = gw.auth(B)
    tried: dict[str, int] = {}
    calls = [0]

    def exercise(operation, session) -> None:
        # One function per operation, so the examples close over this operation's label, not the loop's.
        label = f"{operation.method.upper()} {operation.path}"
        known = {"message_id": received} if "{message_id}" in operation.path else None

        @given(case=operation.as_strategy(generation_mode=MODE))
        @settings(
            max_examples=int(os.environ.get("GW_EXAMPLES", "25")),
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def examples(case) -> None:
            calls[0] += 1
            if known and calls[0] % 2:
                case.path_parameters = {**(case.path_parameters or {}), **known}  # half the time, one that exists
            case.headers = {**(case.headers or {}), **auth}
            response = case.call(base_url=base_url, session=session, timeout=30)
            case.validate_response(response, checks=checks)
            tried[label] = tried.get(label, 0) + 1

        try:
            examples()
        except Unsatisfiable:
            if MODE is GenerationMode.POSITIVE:
                raise  # negative mode has nothing to break in an operation without inputs

    def run() -> None:
        import requests

        session = requests.Session()
        for result in schema.get_all_operations():
            exercise(result.ok(), session)

    await asyncio.to_thread(run)
    if MODE is GenerationMode.POSITIVE:
        assert len(tried) == 16, tried  # every documented operation was exercised


# -- mutual TLS --------------------------------------------------------------------------------------


def _tls_material(gw: Gateway, tmp: Path) -> dict[str, Path]:
    """A server certificate for 127.0.0.1, and client certificates of B and C from the world's CA."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from exchange.signing import pki

    def write(name: str, key, cert) -> tuple[Path, Path]:
        key_path, cert_path = tmp / f"{name}.key", tmp / f"{name}.pem"
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key_path, cert_path

    ca = pki.DevCA.load(gw.root / "pki")
    out: dict[str, Path] = {"ca": ca.cert_path}
    for code in (B, C):
        key = ec.generate_private_key(ec.SECP256R1())
        # No extendedKeyUsage: OpenSSL then accepts the certificate for TLS client authentication.
        cert = pki.make_agency_certificate(
            key.public_key(), code, f"agency {code}", ca_key=ca.key, ca_cert=ca.certificate, extended_key_usage=False
        )
        out[f"{code}.key"], out[f"{code}.pem"] = write(code, key, cert)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    out["server.key"], out["server.pem"] = write("server", key, cert)
    return out


async def test_a_client_certificate_from_the_client_ca_authenticates_its_agency(gw, tmp_path) -> None:
    import ssl

    files = _tls_material(gw, tmp_path)
    env = {
        "EXCHANGE__HTTP__MAX_BODY_BYTES": str(MAX_BODY),
        "EXCHANGE__HTTP__TLS_CERT": str(files["server.pem"]),
        "EXCHANGE__HTTP__TLS_KEY": str(files["server.key"]),
        "EXCHANGE__HTTP__TLS_CLIENT_CA": str(files["ca"]),
    }
    # The node's own HTTPS listener (Node._start_http), in front of the running local service.
    tls_node = Node(load_config(gw.root / "local.toml", environ=env), serve_http=True)
    tls_node.service = gw.local.service
    await tls_node._start_http()
    try:
        assert tls_node.http_url is not None and tls_node.http_url.startswith("https://")

        def client(code: str | None) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=str(files["server.pem"]))
            if code is not None:
                ctx.load_cert_chain(files[f"{code}.pem"], files[f"{code}.key"])
            return ctx

        async with gw.http.get(f"{tls_node.http_url}/v1/me", ssl=client(B)) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["agency"] == B and (await r.json())["auth"] == "mtls"
        mid = (await created(await gw.submit(A, metadata([B]))))["message_id"]
        await gw.wait_in_inbox(B, mid)
        async with gw.http.get(f"{tls_node.http_url}/v1/inbox/{mid}", ssl=client(B)) as r:
            assert r.status == 200
        # The certificate opens only its own agency's inbox, like a token.
        await problem(await gw.http.get(f"{tls_node.http_url}/v1/inbox/{mid}", ssl=client(C)), 404, "not-found")
        await problem(await gw.http.get(f"{tls_node.http_url}/v1/me", ssl=client(None)), 401, "unauthenticated")
        # A token and a certificate of two different agencies contradict each other.
        await problem(
            await gw.http.get(f"{tls_node.http_url}/v1/me", ssl=client(C), headers=gw.auth(B)), 403, "forbidden"
        )
        # A certificate the client CA did not issue never gets past the handshake.
        rogue = client(None)
        rogue.load_cert_chain(files["server.pem"], files["server.key"])
        with pytest.raises(aiohttp.ClientError):
            async with gw.http.get(f"{tls_node.http_url}/v1/me", ssl=rogue) as r:
                await r.read()
    finally:
        await tls_node._runner.cleanup()


# -- idempotency replays ------------------------------------------------------------------------------


async def test_an_idempotent_replay_answers_exactly_what_the_first_request_got(gw) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    files = {"a.txt": (b"one", "text/plain")}
    meta = metadata([B, C], priority=1)
    async with await gw.submit(A, meta, files, headers=key) as r:
        assert r.status == 201 and "Idempotent-Replayed" not in r.headers
        first, location = await r.json(), r.headers["Location"]
    await asyncio.sleep(0.01)  # a later created_at, were the replay answered from the new request
    # The same request again, its JSON spelled differently (key order, whitespace): the stored answer.
    form = aiohttp.FormData()
    form.add_field(
        "metadata", json.dumps(dict(reversed(list(meta.items()))), indent=2), content_type="application/json"
    )
    form.add_field("file", b"one", filename="a.txt", content_type="text/plain")
    async with gw.http.post(f"{gw.url(A)}/v1/documents", data=form, headers={**gw.auth(A), **key}) as r:
        assert r.status == 201 and r.headers["Idempotent-Replayed"] == "true"
        assert await r.json() == first and r.headers["Location"] == location
    track = await gw.track(A, first["message_id"])
    assert sorted(first["recipients"]) == sorted(track["recipients"]) == sorted([B, C])


@pytest.mark.parametrize("change", ["recipients", "subject", "attachment bytes", "no attachment"])
async def test_an_idempotency_key_reused_for_a_different_document_is_refused(gw, change: str) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    files = {"a.txt": (b"one", "text/plain")}
    first = await created(await gw.submit(A, metadata([B, C]), files, headers=key))
    other_meta, other_files = {
        "recipients": (metadata([B]), files),
        "subject": (metadata([B, C], subject="Another"), files),
        "attachment bytes": (metadata([B, C]), {"a.txt": (b"two", "text/plain")}),
        "no attachment": (metadata([B, C]), None),
    }[change]
    body = await problem(await gw.submit(A, other_meta, other_files, headers=key), 422, "idempotency-key-reused")
    assert "different request" in body["detail"]
    # The key still answers its first request, unchanged.
    assert await created(await gw.submit(A, metadata([B, C]), files, headers=key)) == first


async def test_an_idempotency_key_used_for_a_status_is_refused_for_a_document(gw) -> None:
    mid = (await created(await gw.submit(A, metadata([B]))))["message_id"]
    await gw.wait_in_inbox(B, mid)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    status = await created(
        await gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/status", json={"code": "01"}, headers={**gw.auth(B), **key})
    )
    await problem(await gw.submit(B, metadata([A]), headers=key), 422, "idempotency-key-reused")
    # ... and for a status with another code, or about another document.
    await problem(
        await gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/status", json={"code": "03"}, headers={**gw.auth(B), **key}),
        422,
        "idempotency-key-reused",
    )
    replay = await created(
        await gw.http.post(f"{gw.url(B)}/v1/inbox/{mid}/status", json={"code": "01"}, headers={**gw.auth(B), **key})
    )
    assert replay == status


async def test_an_idempotency_key_of_an_edxml_package_replays_it_and_refuses_another_package(gw) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4()), "Content-Type": "application/xml", **gw.auth(A)}
    package = (DATA / "edxml" / "document_new.edxml").read_bytes()
    first = await created(await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package, headers=key))
    assert await created(await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package, headers=key)) == first
    await problem(
        await gw.http.post(f"{gw.url(A)}/v1/edxml", data=package.replace(b"</", b"\n</", 1), headers=key),
        422,
        "idempotency-key-reused",
    )


# -- hostile client input -----------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "1" * 5_000


def _with_number(literal: str) -> str:
    return json.dumps(metadata([B]))[:-1] + f', "priority": {literal}}}'


@pytest.mark.parametrize(
    "text, code",
    [
        (DEEP, "json-limit-exceeded"),
        ('{"recipients": ' + "[" * 5_000 + "]" * 5_000 + "}", "json-limit-exceeded"),
        (_with_number(HUGE_INT), "json-limit-exceeded"),
        (_with_number("-" + HUGE_INT), "json-limit-exceeded"),
        (_with_number("1e99999"), "json-limit-exceeded"),
        (_with_number("NaN"), "bad-request"),
        ('{"subject": "a", "subject": "b"}', "bad-request"),
    ],
)
async def test_hostile_json_is_a_400_problem_on_every_json_input(gw, text: str, code: str) -> None:
    mid = str(uuid.uuid4())
    json_headers = {**gw.auth(A), "Content-Type": "application/json"}
    await problem(await gw.http.post(f"{gw.url(A)}/v1/documents", data=text, headers=json_headers), 400, code)
    await problem(
        await gw.http.post(f"{gw.url(A)}/v1/documents", data=_form(metadata=text), headers=gw.auth(A)), 400, code
    )
    await problem(await gw.http.post(f"{gw.url(A)}/v1/inbox/{mid}/status", data=text, headers=json_headers), 400, code)


async def _raw_http(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is (no client-side checks) and read the whole answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("what", ["Authorization", "X-Api-Key", "request line"])
async def test_an_oversized_request_is_a_problem_that_echoes_nothing(gw, what: str) -> None:
    secret = "exg_" + "S3cr3t" * 2_000
    if what == "request line":
        request = f"GET /v1/inbox?token={secret} HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        request = f"GET /v1/me HTTP/1.1\r\nHost: x\r\n{what}: {secret}\r\n\r\n"
    status, headers, body = await _raw_http(gw.url(B), request.encode())
    assert status == 400
    assert headers["content-type"].startswith(PROBLEM)
    problem_body = json.loads(body)
    assert problem_body["code"] == "http-line-too-long" and problem_body["status"] == 400
    assert "S3cr3t" not in body.decode() and "exg_" not in body.decode()


# -- tokens never reach the log ---------------------------------------------------------------------


@pytest.fixture
def node_log():
    """The node's real log output (configure_logging, as `exchange serve` does), restored afterwards."""
    import io
    import logging

    import structlog

    from exchange.observability.logging import configure_logging

    root = logging.getLogger()
    handlers, level, config = list(root.handlers), root.level, structlog.get_config()
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)
        logging.captureWarnings(False)


async def test_no_token_reaches_the_log_on_any_of_the_known_paths(gw, node_log) -> None:
    token = gw.tokens[B]
    body_of = token.removeprefix("exg_")
    # 1. Oversized Authorization / X-Api-Key headers without "Bearer" (aiohttp's parser refuses them).
    padding = "A" * 9_000
    for header in ("Authorization", "X-Api-Key"):
        await _raw_http(gw.url(B), f"GET /v1/me HTTP/1.1\r\nHost: x\r\n{header}: {token}{padding}\r\n\r\n".encode())
    # 2. A token in the query string of an over-long request line.
    await _raw_http(gw.url(B), f"GET /v1/inbox?token={token}&x={padding} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # 3. An authenticated GET /v1/inbox/<token>: the path segment is logged as message_id.
    async with gw.http.get(f"{gw.url(B)}/v1/inbox/{token}", headers=gw.auth(B)) as r:
        assert r.status == 404
    # Also a token sent as a bare Authorization value (no scheme), short enough to be parsed.
    async with gw.http.get(f"{gw.url(B)}/v1/me", headers={"Authorization": token}) as r:
        assert r.status == 401
    text = node_log.getvalue()
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(e.get("event") == "http.unparseable" for e in events)
    assert any(e.get("event") == "http.request" and e.get("status") == 404 for e in events)
    assert body_of not in text and token not in text
