"""The built-in adapters end to end over the real RabbitMQ, each E-Office played by its probe.

A file-drop E-Office sends to a webhook E-Office and to an edXML E-Office; each
receives the document once, attachments byte for byte; each answers with a
status through its own path; the sender sees deliveries and statuses in its
track timeline and receives the statuses in its incoming/ folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from exchange.conformance.probe import ProbeContext
from exchange.conformance.probes import EdxmlProbe, FileDropProbe, PullProbe, WebhookProbe
from exchange.devworld import AgencySpec
from exchange.envelope.model import DocumentCode, DocumentInfo, StatusCode
from exchange.store.base import DeliveryState
from tests.integration.conftest import start_probe, wait_for

pytestmark = [pytest.mark.broker]

FILEDROP, WEBHOOK, EDXML, PULL = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29", "000.00.31.H41"


def drop_document(root: Path, name: str, to: list[str], files: dict[str, bytes]) -> None:
    """What a file-drop E-Office does: attachments first, then the metadata file, atomically."""
    out = root / "outgoing"
    (out / name).mkdir()
    for file_name, data in files.items():
        (out / name / file_name).write_bytes(data)
    meta = {
        "kind": "document",
        "to": to,
        "document": {"number": "15", "notation": "CT-TTg", "subject": "Chỉ thị về chuyển đổi số", "priority": 2},
        "attachments": [
            {"file": f"{name}/{n}", "name": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
            for n, d in files.items()
        ],
    }
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, out / f"{name}.json")


async def sent_message_id(root: Path, name: str) -> str:
    result = root / "processed" / f"{name}.result.json"
    await wait_for(lambda: asyncio.to_thread(result.exists), what=f"{name} picked up from outgoing/")
    return json.loads(result.read_bytes())["message_id"]


async def deliveries(service, message_id: str) -> dict:
    return {d.recipient: d for d in await service.store.deliveries(message_id)}


async def test_filedrop_sends_to_webhook_and_edxml_and_gets_statuses_back(make_world, tmp_path) -> None:
    sender, hook, edxml = FileDropProbe(), WebhookProbe(), EdxmlProbe()
    specs = [
        AgencySpec(
            FILEDROP,
            "Văn phòng Chính phủ",
            node="central",
            adapter="filedrop",
            options={**await start_probe(sender, FILEDROP, tmp_path), "poll_interval": 0.1},
        ),
        AgencySpec(
            WEBHOOK,
            "UBND tỉnh Nghệ An",
            node="local",
            adapter="webhook",
            options=await start_probe(hook, WEBHOOK, tmp_path),
        ),
        AgencySpec(
            EDXML,
            "UBND TP Hồ Chí Minh",
            node="local",
            adapter="edxml",
            options={**await start_probe(edxml, EDXML, tmp_path), "poll_interval": 0.1},
        ),
    ]
    world = make_world(specs, ["central", "local"])
    try:
        local = await world.start("local")
        central = await world.start("central")
        files = {"chi-thi.pdf": b"%PDF-1.7\n" + os.urandom(60_000), "phu-luc.xlsx": os.urandom(3_000)}

        drop_document(sender.root, "ct15", [WEBHOOK, EDXML], files)
        mid = await sent_message_id(sender.root, "ct15")

        async def delivered() -> bool:
            d = await deliveries(central.service, mid)
            return all(d.get(r) and d[r].state is DeliveryState.DELIVERED for r in (WEBHOOK, EDXML))

        await wait_for(delivered, what="delivery receipts from both recipients")
        for probe in (hook, edxml):
            (got,) = await probe.seen()
            assert (got.message_id, got.kind, got.sender) == (mid, "document", FILEDROP)
            assert got.subject == "Chỉ thị về chuyển đổi số" and got.attachments == files
        assert hook.bad_signatures == 0

        # Each recipient answers the way its E-Office does.
        await local.service.handle(WEBHOOK).submit_status(mid, StatusCode.ACCEPTED, description="đã vào sổ")
        await edxml.send_status(mid, StatusCode.COMPLETED, description="đã xử lý xong")

        async def statuses_back() -> bool:
            d = await deliveries(central.service, mid)
            return d[WEBHOOK].status_code == "03" and d[EDXML].status_code == "06"

        await wait_for(statuses_back, what="both statuses in the sender's track")
        track = await central.service.track(FILEDROP, mid)
        events = {(t.recipient, t.event) for t in track.timeline}
        assert {(WEBHOOK, "delivered"), (EDXML, "delivered"), (WEBHOOK, "status:03"), (EDXML, "status:06")} <= events

        async def sender_has_statuses() -> bool:
            return len([m for m in await sender.seen() if m.kind == "status"]) == 2

        await wait_for(sender_has_statuses, what="statuses in the file-drop E-Office's incoming/")
        statuses = {m.sender: m.status_code for m in await sender.seen() if m.kind == "status"}
        assert statuses == {WEBHOOK: "03", EDXML: "06"}
        for folder in (sender.root / "incoming").iterdir():
            assert json.loads((folder / "message.json").read_bytes())["status"]["response_for"] == mid
        # Still exactly once each, and the status package left outgoing/ the right way.
        assert len(await hook.seen()) == 1 and len(await edxml.seen()) == 1
        assert list((edxml.root / "error").iterdir()) == []
        assert len(list((edxml.root / "processed").glob("*.result.json"))) == 1
    finally:
        await world.close()
        await hook.stop()


async def test_webhook_failures_reach_the_sender_and_retries_deliver_once(make_world, tmp_path) -> None:
    hook, inbox = WebhookProbe(), PullProbe()
    specs = [
        AgencySpec(PULL, "UBND xã Nghi Lộc", node="one", adapter="pull"),
        AgencySpec(
            WEBHOOK,
            "UBND tỉnh Nghệ An",
            node="one",
            adapter="webhook",
            options=await start_probe(hook, WEBHOOK, tmp_path),
        ),
    ]
    world = make_world(specs, ["one"], retry_delays=(1, 1, 1), max_attempts=3)
    try:
        node = await world.start("one")
        service = node.service
        await inbox.start(ProbeContext(agency=PULL, workdir=tmp_path, service=service))
        doc = DocumentInfo(code=DocumentCode("3", "BC-UBND"), subject="Báo cáo")
        hook.fail_next("transient")
        retried = await service.submit_document(PULL, [WEBHOOK], doc)
        await wait_for(
            lambda: _state_is(service, retried.message_id, WEBHOOK, DeliveryState.DELIVERED),
            what="delivery after one 503",
        )
        assert [m.message_id for m in await hook.seen()] == [retried.message_id]

        hook.fail_next("permanent")
        refused = await service.submit_document(PULL, [WEBHOOK], doc)
        await wait_for(
            lambda: _state_is(service, refused.message_id, WEBHOOK, DeliveryState.FAILED),
            what="non-delivery receipt after a 422",
        )
        failed = [t for t in await service.store.timeline(refused.message_id) if t.event == "failed"]
        assert "HTTP 422" in failed[0].detail
        assert [m.message_id for m in await hook.seen()] == [retried.message_id]

        # The pull E-Office reads its inbox: the webhook agency's status on the first document.
        await service.handle(WEBHOOK).submit_status(retried.message_id, StatusCode.ACCEPTED)
        await wait_for(lambda: _has_status(inbox), what="status in the pull inbox")
        (status,) = [m for m in await inbox.seen() if m.kind == "status"]
        assert status.sender == WEBHOOK and status.status_code == "03"
    finally:
        await world.close()
        await hook.stop()


async def _state_is(service, message_id: str, recipient: str, state: DeliveryState) -> bool:
    d = await deliveries(service, message_id)
    return recipient in d and d[recipient].state is state


async def _has_status(probe) -> bool:
    return any(m.kind == "status" for m in await probe.seen())
