"""The edXML adapter: packages in and out of watched folders, DocumentId <-> message id."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path

import pytest

from exchange.adapters import safe_files
from exchange.adapters.base import Outcome
from exchange.adapters.edxml import EdxmlAdapter
from exchange.envelope.edxml import EdxmlPackage, export_package, import_package
from exchange.envelope.model import (
    Attachment,
    Kind,
    Promulgation,
    ResponseRef,
    StatusCode,
    new_message_id,
    utcnow,
)
from exchange.errors import ForbiddenError
from tests.factories import document, envelope, status
from tests.unit.adapter_fakes import HOST, PEER, FakeBus, document_message, status_message


@pytest.fixture
def make_adapter(tmp_path: Path, start_adapter) -> Callable[..., Awaitable[EdxmlAdapter]]:
    async def make(bus: FakeBus | None = None, **options) -> EdxmlAdapter:
        options = {"root": str(tmp_path / "eoffice"), "watch": False, **options}
        return await start_adapter(EdxmlAdapter(HOST, options, bus or FakeBus()))

    return make


def document_package(
    *,
    sender: str = HOST,
    to: str = PEER,
    subject: str = "Công văn về cải cách hành chính",
    files: dict[str, bytes] | None = None,
) -> bytes:
    files = files if files is not None else {"cv.pdf": b"%PDF-1.4 cong van"}
    attachments = tuple(Attachment.of(n, d, "application/pdf", id=f"f{i}") for i, (n, d) in enumerate(files.items()))
    info = document(subject, number="45", notation="CV-UBND", promulgation=Promulgation("Vinh", date(2025, 3, 1)))
    message = envelope(sender, to, info, attachments=attachments)
    return export_package(message, {a.id: files[a.name] for a in attachments})


def status_package(ref: ResponseRef, code: StatusCode = StatusCode.ACCEPTED, sender: str = HOST) -> bytes:
    info = status(code=code, description="đã vào sổ", timestamp=utcnow(), document_ref=ref)
    return export_package(envelope(sender, ref.organ_id, info), {})


def put(adapter: EdxmlAdapter, name: str, data: bytes) -> Path:
    path = adapter.folders.outgoing / name
    path.write_bytes(data)
    return path


def read_incoming(adapter: EdxmlAdapter, message_id: str) -> EdxmlPackage:
    return import_package((adapter.folders.incoming / f"{message_id}.edxml").read_bytes())


# -- receiving -------------------------------------------------------------------------


async def test_document_is_written_as_an_edxml_package_named_by_message_id(make_adapter) -> None:
    adapter = await make_adapter()
    message = document_message()
    assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    assert [p.name for p in adapter.folders.incoming.iterdir()] == [f"{message.message_id}.edxml"]
    package = read_incoming(adapter, message.message_id)
    h = package.envelope.header
    assert h.sender.code == PEER and [r.code for r in h.recipients] == [HOST]
    assert h.document.subject == "Chỉ thị về chuyển đổi số"
    assert {a.name: package.attachment_data[a.id] for a in package.envelope.attachments} == {
        a.name: message.attachments[a.id] for a in message.envelope.attachments
    }
    # No DocumentId on the bus: the package gets the standard one, so the E-Office can answer it.
    day = message.envelope.header.document.promulgation.date
    assert h.document.document_id == f"{PEER},{day:%Y/%m/%d},12/CT-TTg"


async def test_repeated_handover_replaces_the_same_file(make_adapter) -> None:
    adapter = await make_adapter()
    message = document_message()
    for _ in range(3):
        assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    assert [p.name for p in adapter.folders.incoming.iterdir()] == [f"{message.message_id}.edxml"]


async def test_failed_write_leaves_no_file_under_the_final_name(make_adapter, monkeypatch) -> None:
    adapter = await make_adapter()
    message = document_message()

    real = safe_files.write_new_file

    def disk_full(dir_fd: int, name: str, data: bytes, **kw) -> None:
        real(dir_fd, name, data[: len(data) // 2], **kw)  # a partial temporary file, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safe_files, "write_new_file", disk_full)
    result = await adapter.deliver(message)
    assert result.outcome is Outcome.TRANSIENT
    assert list(adapter.folders.incoming.iterdir()) == []


async def test_status_for_a_document_this_agency_sent_names_it_as_the_eoffice_does(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    put(adapter, "cv45.edxml", document_package())
    assert await adapter.scan_once() == 1
    sent_id = bus.submissions[0][1]["message_id"]

    status = status_message(sent_id, StatusCode.COMPLETED, sender=PEER, recipient=HOST)
    assert (await adapter.deliver(status)).outcome is Outcome.DELIVERED
    h = read_incoming(adapter, status.message_id).envelope.header
    assert h.kind is Kind.STATUS and h.status.code is StatusCode.COMPLETED
    assert h.status.document_ref == ResponseRef(HOST, "45/CV-UBND", date(2025, 3, 1), f"{HOST},2025/03/01,45/CV-UBND")


async def test_status_for_a_document_nobody_can_name_is_refused(make_adapter) -> None:
    adapter = await make_adapter()
    result = await adapter.deliver(status_message(new_message_id(), sender=PEER, recipient=HOST))
    assert result.outcome is Outcome.PERMANENT and "cannot name" in result.reason


# -- sending ---------------------------------------------------------------------------


async def test_document_package_is_submitted_as_is_and_moved_to_processed(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    data = document_package()
    put(adapter, "cv45.edxml", data)
    assert await adapter.scan_once() == 1
    ((kind, sub),) = bus.submissions
    assert kind == "edxml" and sub["package"] == data
    assert (adapter.folders.processed / "cv45.edxml").read_bytes() == data
    assert json.loads((adapter.folders.processed / "cv45.result.json").read_bytes())["message_id"] == sub["message_id"]
    assert list(adapter.folders.outgoing.iterdir()) == []


async def test_status_package_is_resolved_to_the_received_document(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    message = document_message(document_id="000.00.00.G22,2025/02/20,12/CT-TTg")
    await adapter.deliver(message)
    received = read_incoming(adapter, message.message_id).envelope.header.document

    ref = ResponseRef(PEER, "12/CT-TTg", received.promulgation.date, received.document_id)
    put(adapter, "st.edxml", status_package(ref, StatusCode.ASSIGNED))
    assert await adapter.scan_once() == 1
    ((kind, sub),) = bus.submissions
    assert kind == "status" and sub["response_for"] == message.message_id and sub["code"] is StatusCode.ASSIGNED


async def test_resolution_survives_a_restart(make_adapter, tmp_path) -> None:
    first = await make_adapter()
    message = document_message()
    await first.deliver(message)
    received = read_incoming(first, message.message_id).envelope.header.document
    await first.stop()

    bus = FakeBus()
    second = await make_adapter(bus)
    put(
        second,
        "st.edxml",
        status_package(ResponseRef(PEER, "12/CT-TTg", received.promulgation.date, received.document_id)),
    )
    assert await second.scan_once() == 1
    assert bus.submissions[0][1]["response_for"] == message.message_id


async def test_status_for_an_unknown_document_goes_to_error(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    put(adapter, "st.edxml", status_package(ResponseRef(PEER, "99/XX", date(2024, 1, 2))))
    assert await adapter.scan_once() == 1
    assert bus.submissions == []
    assert "has not received" in (adapter.folders.error / "st.reason.txt").read_text()
    assert (adapter.folders.error / "st.edxml").exists()


async def test_invalid_package_goes_to_error_with_the_codec_reason(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    data = (
        document_package()
        .replace(b"<edXML:Subject>", b"<edXML:Subjekt>")
        .replace(b"</edXML:Subject>", b"</edXML:Subjekt>")
    )
    put(adapter, "bad.edxml", data)
    assert await adapter.scan_once() == 1
    reason = (adapter.folders.error / "bad.reason.txt").read_text()
    assert reason.startswith("edxml-invalid") and "Subject" in reason
    assert bus.submissions == []


async def test_package_from_another_agency_is_refused(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    put(adapter, "spoof.edxml", document_package(sender="000.00.00.H29", to=PEER))
    assert await adapter.scan_once() == 1
    assert "From 000.00.00.H29" in (adapter.folders.error / "spoof.reason.txt").read_text()
    assert bus.submissions == []


async def test_truncated_package_waits_until_settled(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus, settle_seconds=30)
    data = document_package()
    path = put(adapter, "half.edxml", data[: len(data) // 2])
    put(adapter, "next.edxml.part", data)
    assert await adapter.scan_once() == 0
    assert path.exists() and bus.submissions == []
    then = time.time() - 60
    os.utime(path, (then, then))
    assert await adapter.scan_once() == 1
    assert "incomplete" in (adapter.folders.error / "half.reason.txt").read_text()
    assert (adapter.folders.outgoing / "next.edxml.part").exists()


async def test_bus_refusal_goes_to_error(make_adapter) -> None:
    bus = FakeBus(fail_with=ForbiddenError("not allowed"))
    adapter = await make_adapter(bus)
    put(adapter, "x.edxml", document_package())
    assert await adapter.scan_once() == 1
    assert "forbidden" in (adapter.folders.error / "x.reason.txt").read_text()
