"""An E-Office's own edXML package across the bus, over the real RabbitMQ (docs/EDXML.md, The bus path).

The sender's edXML E-Office drops a package shaped as real senders write it
(ContentIds ``cid:cid:X`` / ``X``, a TraceHeader with Business and StaffInfo,
``Bussiness`` first, a ZIP-wrapped attachment); the recipient's edXML E-Office
gets that package with the sender's TraceHeaders, the bus's appended, and
ContentIds and OrganNames unchanged; a file-drop E-Office gets the file inside
the ZIP.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from lxml import etree

from exchange.conformance.probes import EdxmlProbe, FileDropProbe
from exchange.devworld import AgencySpec
from exchange.envelope.edxml import EDXML_NS
from exchange.store.base import DeliveryState
from tests.integration.conftest import start_probe, wait_for

pytestmark = [pytest.mark.broker]

SENDER, EDXML, FILEDROP = "000.00.00.G22", "000.00.00.H41", "000.00.00.H29"
WILD = Path(__file__).resolve().parents[1] / "data" / "edxml" / "wild"
NS = {"e": EDXML_NS}


def package() -> bytes:
    """The ZIP-wrapped fixture, addressed to both E-Offices, with the hub's TraceHeader details and cid:cid:."""
    text = (WILD / "content_types_zip_wrapped.edxml").read_text(encoding="utf-8")
    first_to = text[text.index("<edXML:To>") : text.index("</edXML:To>") + len("</edXML:To>")]
    second_to = first_to.replace(EDXML, FILEDROP).replace("UBND tỉnh Nghệ An", "UBND Thành phố Hồ Chí Minh")
    text = text.replace(first_to, first_to + second_to, 1)
    text = text.replace("<edXML:ContentId>cid:qd</edXML:ContentId>", "<edXML:ContentId>cid:cid:qd</edXML:ContentId>")
    details = (
        "<edXML:Business><edXML:BusinessName>Gửi văn bản</edXML:BusinessName><edXML:BusinessCode>SEND"
        "</edXML:BusinessCode></edXML:Business>"
    )
    return text.replace(
        "</edXML:Timestamp></edXML:TraceHeader>", f"</edXML:Timestamp>{details}</edXML:TraceHeader>", 1
    ).encode("utf-8")


async def test_an_eoffice_package_reaches_the_recipients_as_sent_plus_the_bus_hops(make_world, tmp_path) -> None:
    sender, edxml, filedrop = EdxmlProbe(), EdxmlProbe(), FileDropProbe()
    specs = [
        AgencySpec(
            SENDER,
            "Văn phòng Chính phủ",
            node="central",
            adapter="edxml",
            options={**await start_probe(sender, SENDER, tmp_path), "poll_interval": 0.1},
        ),
        AgencySpec(
            EDXML,
            "Nghệ An (tên trong danh bạ)",
            node="local",
            adapter="edxml",
            options={**await start_probe(edxml, EDXML, tmp_path), "poll_interval": 0.1},
        ),
        AgencySpec(
            FILEDROP,
            "TP HCM (tên trong danh bạ)",
            node="local",
            adapter="filedrop",
            options={**await start_probe(filedrop, FILEDROP, tmp_path), "poll_interval": 0.1},
        ),
    ]
    world = make_world(specs, ["central", "local"])
    try:
        await world.start("local")
        central = await world.start("central")
        data = package()
        outgoing = sender.root / "outgoing"
        (outgoing / ".wild.edxml.tmp").write_bytes(data)
        os.replace(outgoing / ".wild.edxml.tmp", outgoing / "wild.edxml")
        result = sender.root / "processed" / "wild.result.json"
        await wait_for(lambda: asyncio.to_thread(result.exists), what="the package picked up from outgoing/")
        mid = json.loads(result.read_bytes())["message_id"]

        async def delivered() -> bool:
            d = {x.recipient: x for x in await central.service.store.deliveries(mid)}
            return all(d.get(r) and d[r].state is DeliveryState.DELIVERED for r in (EDXML, FILEDROP))

        await wait_for(delivered, what="delivery to both E-Offices")
        got = (edxml.root / "incoming" / f"{mid}.edxml").read_bytes()
        root = etree.fromstring(got)
        assert root.xpath("//e:Reference/e:ContentId/text()", namespaces=NS) == ["cid:cid:qd"]
        assert root.xpath("//e:AttachmentEncoded/e:Attachment/e:ContentId/text()", namespaces=NS) == ["qd"]
        assert root.xpath("//e:AttachmentEncoded/e:Attachment/e:ContentType/text()", namespaces=NS) == [
            "application/zip"
        ]
        assert root.xpath("//e:To/e:OrganName/text()", namespaces=NS) == [
            "UBND tỉnh Nghệ An",
            "UBND Thành phố Hồ Chí Minh",
        ]
        traces = root.xpath("//e:TraceHeaderList/e:TraceHeader", namespaces=NS)
        assert [t.findtext("e:OrganId", namespaces=NS) for t in traces] == [SENDER, None, None]
        assert traces[0].findtext("e:Business/e:BusinessCode", namespaces=NS) == "SEND"
        # Apart from the bus's hops and the DocumentId the E-Office answers by, it is the package sent.
        for t in traces[1:]:
            t.getparent().remove(t)
        for d in root.xpath("//e:MessageHeader/e:DocumentId", namespaces=NS):
            d.getparent().remove(d)
        assert _c14n(etree.tostring(root)) == _c14n(data)
        # The file-drop E-Office gets the PDF inside the ZIP, as the manifest names and types it.
        (folder,) = (filedrop.root / "incoming").iterdir()
        assert (folder / "quyet-dinh.pdf").read_bytes().startswith(b"%PDF-1.4")
        (entry,) = json.loads((folder / "message.json").read_bytes())["attachments"]
        assert entry["media_type"] == "application/pdf" and entry["packed"]["media_type"] == "application/zip"
    finally:
        await world.close()
        for probe in (sender, edxml, filedrop):
            await probe.stop()


def _c14n(data: bytes) -> bytes:
    root = etree.fromstring(data)
    for el in root.iter():
        el.text = (el.text or "").strip() or None
        el.tail = (el.tail or "").strip() or None
    return etree.tostring(root, method="c14n", exclusive=True)
