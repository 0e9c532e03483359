"""The file-drop adapter: atomic incoming folders, complete drops only, error/ and processed/ moves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from exchange.adapters import safe_files
from exchange.adapters.base import Outcome
from exchange.adapters.filedrop import FileDropAdapter
from exchange.envelope.model import Priority, StatusCode
from exchange.errors import AdapterError, StoreError, UnknownAgencyError
from tests.unit.adapter_fakes import HOST, PEER, FakeBus, document_message, receipt_message, status_message


@pytest.fixture
async def make_adapter(tmp_path: Path) -> AsyncIterator[Callable[..., asyncio.Future]]:
    started: list[FileDropAdapter] = []

    async def make(bus: FakeBus | None = None, **options) -> FileDropAdapter:
        adapter = FileDropAdapter(
            HOST, {"root": str(tmp_path / "eoffice"), "watch": False, **options}, bus or FakeBus()
        )
        await adapter.start()
        started.append(adapter)
        return adapter

    yield make
    for a in started:
        await a.stop()


def drop(root: Path, name: str, meta: dict, files: dict[str, bytes] | None = None) -> Path:
    """Write a drop the way the E-Office contract says: files first, metadata last."""
    for rel, data in (files or {}).items():
        (root / "outgoing" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "outgoing" / rel).write_bytes(data)
    path = root / "outgoing" / f"{name}.json"
    path.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return path


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def document_meta(**extra) -> dict:
    return {
        "to": [PEER],
        "document": {"number": "7", "notation": "QĐ-UBND", "subject": "Quyết định", "priority": 3},
        **extra,
    }


# -- receiving -------------------------------------------------------------------------


async def test_document_is_written_as_a_folder_named_by_message_id(make_adapter) -> None:
    adapter = await make_adapter()
    message = document_message()
    assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    incoming = adapter.folders.incoming
    assert sorted(p.name for p in incoming.iterdir()) == [message.message_id]
    folder = incoming / message.message_id
    meta = json.loads((folder / "message.json").read_text(encoding="utf-8"))
    assert meta["message_id"] == message.message_id and meta["kind"] == "document"
    assert meta["sender"]["code"] == PEER and meta["document"]["subject"] == "Chỉ thị về chuyển đổi số"
    for a in message.envelope.attachments:
        (entry,) = [e for e in meta["attachments"] if e["id"] == a.id]
        assert (folder / entry["file"]).read_bytes() == message.attachments[a.id]
        assert entry["sha256"] == a.sha256
    assert (folder / "envelope.xml").read_bytes() == message.xml


async def test_repeated_handover_leaves_one_folder(make_adapter) -> None:
    adapter = await make_adapter()
    message = document_message()
    for _ in range(3):
        assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED
    assert [p.name for p in adapter.folders.incoming.iterdir()] == [message.message_id]


async def test_a_failed_write_leaves_nothing_under_the_final_name_and_is_transient(make_adapter, monkeypatch) -> None:
    adapter = await make_adapter()
    message = document_message()
    real, written = safe_files.write_new_file, []

    def fail_on_second(dir_fd: int, name: str, data: bytes, **kw) -> None:
        if written:
            raise OSError(28, "No space left on device")
        written.append(name)
        real(dir_fd, name, data, **kw)

    monkeypatch.setattr(safe_files, "write_new_file", fail_on_second)
    result = await adapter.deliver(message)
    assert result.outcome is Outcome.TRANSIENT and "No space left" in result.reason
    assert list(adapter.folders.incoming.iterdir()) == []  # neither a partial folder nor a temporary one
    monkeypatch.setattr(safe_files, "write_new_file", real)
    assert (await adapter.deliver(message)).outcome is Outcome.DELIVERED  # the bus's retry succeeds


async def test_folder_only_appears_once_complete(make_adapter, monkeypatch) -> None:
    adapter = await make_adapter()
    message = document_message()
    final = adapter.folders.incoming / message.message_id
    real_rename, checks = os.rename, []

    def watching_rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None) -> None:
        if dst == final.name:  # renamed relative to incoming/'s descriptor
            tmp = final.parent / src
            checks.append((final.exists(), sorted(p.name for p in tmp.iterdir()), tmp.name))
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(safe_files.os, "rename", watching_rename)
    await adapter.deliver(message)
    ((existed_before, files, tmp_name),) = checks
    assert not existed_before and tmp_name.startswith(".")
    assert set(files) == {"message.json", "envelope.xml", "qd.pdf", "phu-luc.docx"}


async def test_hostile_attachment_names_stay_inside_the_folder(make_adapter) -> None:
    adapter = await make_adapter()
    message = document_message({"../../escape.txt": b"a", "message.json": b"b", ".hidden": b"c"})
    await adapter.deliver(message)
    folder = adapter.folders.incoming / message.message_id
    meta = json.loads((folder / "message.json").read_bytes())
    assert meta["kind"] == "document"  # not overwritten by the attachment named message.json
    assert {(folder / e["file"]).read_bytes() for e in meta["attachments"]} == {b"a", b"b", b"c"}
    assert all("/" not in e["file"] and not e["file"].startswith(".") for e in meta["attachments"])
    assert not (adapter.folders.root / "escape.txt").exists()


async def test_status_is_written_too(make_adapter) -> None:
    adapter = await make_adapter()
    message = status_message("6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11", StatusCode.COMPLETED)
    await adapter.deliver(message)
    meta = json.loads((adapter.folders.incoming / message.message_id / "message.json").read_bytes())
    assert meta["status"]["code"] == "06" and meta["status"]["response_for"] == "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11"


async def test_receipts_arrive_as_folders_only_when_asked_for(make_adapter, tmp_path) -> None:
    mid = "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11"
    quiet = await make_adapter()
    assert quiet.wants_receipts is False
    message = receipt_message(mid)
    assert (await quiet.deliver(message)).outcome is Outcome.DELIVERED
    assert not (quiet.folders.incoming / message.message_id).exists()

    wanting = await make_adapter(root=str(tmp_path / "wanting"), receipts=True)
    assert wanting.wants_receipts is True
    assert (await wanting.deliver(message)).outcome is Outcome.DELIVERED
    folder = wanting.folders.incoming / message.message_id
    meta = json.loads((folder / "message.json").read_bytes())
    assert meta["kind"] == "receipt" and meta["receipt"]["response_for"] == mid
    assert meta["receipt"]["outcome"] == "delivered" and meta["receipt"]["envelope_digest"] == "ab" * 32
    assert (folder / "envelope.xml").read_bytes() == message.xml  # the signed receipt itself, to keep


async def test_receipts_option_must_be_a_boolean(tmp_path) -> None:
    adapter = FileDropAdapter(HOST, {"root": str(tmp_path / "eoffice"), "watch": False, "receipts": "yes"}, FakeBus())
    with pytest.raises(AdapterError, match=r"options\.receipts"):
        await adapter.start()
    await adapter.stop()


# -- sending ---------------------------------------------------------------------------


async def test_complete_drop_is_submitted_and_moved_to_processed(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    root = adapter.folders.root
    pdf = b"%PDF " + os.urandom(2000)
    drop(
        root,
        "qd-7",
        document_meta(
            attachments=[
                {
                    "file": "qd-7/qd.pdf",
                    "name": "Quyết định.pdf",
                    "size": len(pdf),
                    "sha256": hashlib.sha256(pdf).hexdigest(),
                },
            ]
        ),
        {"qd-7/qd.pdf": pdf},
    )

    assert await adapter.scan_once() == 1

    ((kind, sub),) = bus.submissions
    assert kind == "document" and sub["recipients"] == [PEER]
    assert sub["document"].subject == "Quyết định" and sub["document"].priority is Priority.EXPRESS
    (f,) = sub["files"]
    assert (f.name, f.data, f.media_type) == ("Quyết định.pdf", pdf, "application/pdf")
    assert list((root / "outgoing").iterdir()) == []
    assert (root / "processed" / "qd-7" / "qd-7.json").exists()
    assert (root / "processed" / "qd-7" / "qd-7" / "qd.pdf").read_bytes() == pdf
    result = json.loads((root / "processed" / "qd-7.result.json").read_bytes())
    assert result["message_id"] == sub["message_id"] and result["recipients"] == [PEER]


async def test_attachments_without_metadata_and_temporary_metadata_are_not_picked_up(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    out = adapter.folders.outgoing
    (out / "qd.pdf").write_bytes(b"%PDF")
    (out / ".qd.json.tmp").write_text(json.dumps(document_meta()))
    (out / "qd.json.part").write_text(json.dumps(document_meta()))
    assert await adapter.scan_once() == 0
    assert bus.submissions == []
    assert sorted(p.name for p in out.iterdir()) == [".qd.json.tmp", "qd.json.part", "qd.pdf"]


async def test_incomplete_drop_waits_then_goes_to_error_once_settled(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus, settle_seconds=30)
    root = adapter.folders.root
    meta = drop(
        root, "late", document_meta(attachments=[{"file": "late.pdf", "size": 10}]), {"late.pdf": b"12345"}
    )  # 5 of 10 bytes so far

    assert await adapter.scan_once() == 0
    assert bus.submissions == [] and meta.exists()  # still being written: left alone

    age(meta, 31)
    assert await adapter.scan_once() == 1
    assert bus.submissions == []
    reason = (root / "error" / "late.reason.txt").read_text(encoding="utf-8")
    assert "incomplete" in reason and "5 of 10 bytes" in reason
    assert (root / "error" / "late" / "late.json").exists() and (root / "error" / "late" / "late.pdf").exists()


async def test_missing_file_is_waited_for_and_sent_when_it_arrives(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    root = adapter.folders.root
    drop(root, "x", document_meta(attachments=[{"file": "x.pdf"}]))
    assert await adapter.scan_once() == 0
    (root / "outgoing" / "x.pdf").write_bytes(b"%PDF-x")
    assert await adapter.scan_once() == 1
    assert bus.submissions[0][1]["files"][0].data == b"%PDF-x"


@pytest.mark.parametrize(
    "meta, files, complaint",
    [
        ({"document": {"subject": "x"}}, {}, '"to"'),
        ({"to": [PEER], "document": {"number": "1"}}, {}, "document.subject"),
        ({"to": [PEER], "document": {"subject": "x", "priority": 9}}, {}, "document.priority"),
        ({"to": [PEER], "document": {"subject": "x"}, "kind": "memo"}, {}, '"kind"'),
        ({"to": [PEER], "document": {"subject": "x"}, "operation": "delete"}, {}, "operation"),
        (
            {"to": [PEER], "document": {"subject": "x"}, "attachments": [{"file": "../../etc/passwd"}]},
            {},
            "inside outgoing",
        ),
        (
            {
                "to": [PEER],
                "document": {"subject": "x"},
                "attachments": [{"file": "a.bin", "size": 3, "sha256": "0" * 64}],
            },
            {"a.bin": b"abc"},
            "SHA-256",
        ),
        (
            {"to": [PEER], "document": {"subject": "x"}, "attachments": [{"file": "a.bin", "size": 2}]},
            {"a.bin": b"abc"},
            "declares 2",
        ),
        ({"kind": "status", "code": "03"}, {}, "response_for"),
        ({"kind": "status", "response_for": "m", "code": "99"}, {}, "status code"),
    ],
)
async def test_bad_drop_goes_to_error_with_a_reason(make_adapter, meta, files, complaint) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    root = adapter.folders.root
    drop(root, "bad", meta, files)
    assert await adapter.scan_once() == 1
    assert bus.submissions == []
    assert complaint in (root / "error" / "bad.reason.txt").read_text(encoding="utf-8")
    assert not (root / "outgoing" / "bad.json").exists()


async def test_non_json_metadata_goes_to_error_once_settled(make_adapter) -> None:
    adapter = await make_adapter(settle_seconds=0)
    path = adapter.folders.outgoing / "broken.json"
    path.write_text('{"to": ["000.00.00.G22"], "docu')
    assert await adapter.scan_once() == 1
    assert "not complete JSON" in (adapter.folders.error / "broken.reason.txt").read_text()
    assert (adapter.folders.error / "broken" / "broken.json").exists()


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        ('{"kind": "status", "response_for": "m", "code": ' + "3" * 5_000 + "}", "number of 5000 characters"),
        ('{"to": ["000.00.00.G22"], "to": ["000.00.00.H41"]}', "repeats the key"),
    ],
)
async def test_hostile_metadata_json_goes_to_error_with_a_reason(make_adapter, text: str, complaint: str) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus, settle_seconds=0)
    (adapter.folders.outgoing / "hostile.json").write_text(text)
    assert await adapter.scan_once() == 1
    assert bus.submissions == []
    assert complaint in (adapter.folders.error / "hostile.reason.txt").read_text()


async def test_bus_refusal_goes_to_error_but_bus_trouble_is_retried(make_adapter) -> None:
    bus = FakeBus(fail_with=StoreError("database is locked"))
    adapter = await make_adapter(bus)
    root = adapter.folders.root
    drop(root, "d", document_meta())
    assert await adapter.scan_once() == 0
    assert (root / "outgoing" / "d.json").exists()  # kept for the next poll

    bus.fail_with = UnknownAgencyError("agency 000.00.00.G22 is not in the directory")
    assert await adapter.scan_once() == 1
    assert "agency-unknown" in (root / "error" / "d.reason.txt").read_text()


async def test_a_drop_picked_up_again_after_a_crash_is_sent_once(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    root = adapter.folders.root
    meta = document_meta(attachments=[{"file": "a.txt"}])
    drop(root, "d", meta, {"a.txt": b"hello"})
    reader = adapter.read_drop  # the crash: submitted, but not yet moved to processed/
    first = reader(root / "outgoing" / "d.json")
    await adapter.bus.submit_document(
        first.recipients, first.document, first.files, idempotency_key=first.idempotency_key
    )
    assert await adapter.scan_once() == 1
    (_, a), (_, b) = bus.submissions
    assert a["key"] == b["key"] and a["message_id"] == b["message_id"]
    # The same name reused later for another document is a different drop.
    drop(root, "d", document_meta(attachments=[{"file": "a.txt"}]), {"a.txt": b"other"})
    assert await adapter.scan_once() == 1
    assert bus.submissions[2][1]["key"] != a["key"]
    assert (root / "processed" / "d~2.result.json").exists()


async def test_status_drop_is_submitted(make_adapter) -> None:
    bus = FakeBus()
    adapter = await make_adapter(bus)
    drop(
        adapter.folders.root,
        "s",
        {
            "kind": "status",
            "response_for": "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11",
            "code": "3",
            "description": "đã vào sổ",
            "staff": {"department": "Văn thư", "staff": "Nguyễn Văn A"},
        },
    )
    assert await adapter.scan_once() == 1
    ((kind, sub),) = bus.submissions
    assert kind == "status" and sub["code"] is StatusCode.ACCEPTED
    assert sub["response_for"] == "6a0a4a48-28a8-4c5b-9d0b-2f5e0c4f1a11" and sub["staff"].staff == "Nguyễn Văn A"


async def test_watcher_picks_drops_up_by_itself_and_stops(tmp_path) -> None:
    bus = FakeBus()
    adapter = FileDropAdapter(HOST, {"root": str(tmp_path / "eo"), "poll_interval": 0.05}, bus)
    await adapter.start()
    try:
        drop(adapter.folders.root, "auto", document_meta())
        for _ in range(100):
            if bus.submissions:
                break
            await asyncio.sleep(0.02)
        assert len(bus.submissions) == 1
    finally:
        await adapter.stop()
        await adapter.stop()
    drop(adapter.folders.root, "after-stop", document_meta())
    await asyncio.sleep(0.2)
    assert len(bus.submissions) == 1


async def test_missing_root_is_refused_at_start() -> None:
    from exchange.errors import AdapterError

    with pytest.raises(AdapterError, match=r"options\.root"):
        await FileDropAdapter(HOST, {}, FakeBus()).start()


async def test_drop_without_attachments_is_moved_as_a_folder_too(make_adapter) -> None:
    adapter = await make_adapter()
    drop(adapter.folders.root, "plain", document_meta())
    assert await adapter.scan_once() == 1
    assert (adapter.folders.processed / "plain" / "plain.json").exists()
    assert (adapter.folders.processed / "plain.result.json").exists()
