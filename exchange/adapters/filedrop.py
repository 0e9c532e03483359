"""The file-drop adapter: the E-Office exchanges JSON metadata and plain files through folders.

Options: ``root`` (the agency's folder), ``poll_interval`` (seconds, default 1),
``settle_seconds`` (how long an unfinished drop may stay unfinished, default
30), ``receipts`` (true: the signed receipts for what this agency sent arrive in
``incoming/`` too, as folders whose ``message.json`` has ``kind`` "receipt" and a
``receipt`` object; default false). Folder layout, atomic writes and polling: :mod:`exchange.adapters.folders`.

**Sending** (the E-Office writes to ``outgoing/``). A drop is a metadata file
``outgoing/<name>.json`` plus the attachment files it lists. The metadata file
is the commit marker: write the attachments first, then the metadata file last
and atomically (write it under a temporary name such as ``.<name>.json.tmp``
and rename it). Files starting with ``.`` or ending in ``.tmp`` / ``.part`` are
never read. Attachments are named by paths relative to ``outgoing/``; put an
attachment that is itself a ``.json`` file in a subfolder (``outgoing/<name>/``)
so it is not taken for a metadata file. A document::

    {"kind": "document",                       # default
     "to": ["000.00.00.H41", "000.00.31.H41"],
     "operation": "new",                       # or revoke / update / replace (set document.relates_to)
     "document": {"number": "12", "notation": "CT-TTg", "subject": "…",     # subject required
                  "priority": 0, "steering": 0, "type": 1, "detail": 0, "type_name": "",
                  "promulgation": {"place": "Hà Nội", "date": "2025-03-01"},
                  "signer": {"competence": "", "position": "", "full_name": ""},
                  "content": "", "due_date": null, "document_id": "", "relates_to": null,
                  "response_for": [], "paper": false, "extra": []},
     "attachments": [{"file": "qd.pdf", "name": "qd.pdf", "media_type": "application/pdf",
                      "description": "", "size": 12345, "sha256": "<hex>"}],   # size, sha256 optional
     "idempotency_key": "…"}                   # optional

A status about a document received earlier::

    {"kind": "status", "response_for": "<message id>", "code": "03",
     "description": "…", "staff": {"department": "", "staff": "", "email": "", "mobile": ""}}

A drop is refused (moved to ``error/<name>/`` with ``error/<name>.reason.txt``) when the
metadata is wrong, a declared size or SHA-256 does not match, or the bus refuses
it (unknown recipient, no such document, …). A listed file that is missing or
shorter than declared, or metadata that is not yet complete JSON, is waited
for until the metadata file is ``settle_seconds`` old. A sent drop moves to
``processed/<name>/`` with ``processed/<name>.result.json``
(``{"message_id", "recipients", "created", "created_at"}``): the message id
that receipts, statuses and ``exchange track`` refer to. Without an explicit
``idempotency_key`` the key is the SHA-256 of the metadata bytes and the
attachment digests, so picking up the same drop twice sends it once.

**Receiving** (the adapter writes to ``incoming/``). Each document or status
becomes a folder ``incoming/<message id>/``, which appears atomically (it is
written as ``incoming/.<message id>.<random>.tmp`` and renamed), holding:

* ``message.json``: :func:`exchange.adapters.jsonform.message_json` (message id,
  kind, sender, document or status fields) where each attachment entry also has
  ``file``, its file name in the folder;
* ``envelope.xml``: the exact signed envelope, the evidence (``exchange verify``);
* the attachment files, byte for byte.

A repeated handover of the same message id finds the folder there and writes
nothing, so the E-Office sees each message once; if it moves folders away, it
should remember message ids it has registered. A failed write (disk full,
permissions) answers transient, and the bus retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from exchange.adapters.base import DeliveryResult, Incoming, OutgoingFile, SubmitResult
from exchange.adapters.folders import (
    DropNotReady,
    DropRefused,
    FolderAdapter,
    atomic_write_dir,
    is_temporary,
    sorted_by_age,
)
from exchange.adapters.jsonform import (
    document_from_json,
    load_form,
    message_json,
    operation_from_json,
    staff_from_json,
    status_code_from_json,
)
from exchange.envelope.model import DocumentInfo, Kind, Operation, StaffInfo, StatusCode
from exchange.errors import BadRequestError

MESSAGE_FILE = "message.json"
EVIDENCE_FILE = "envelope.xml"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:]")


@dataclass(frozen=True, slots=True)
class DocumentDrop:
    recipients: tuple[str, ...]
    document: DocumentInfo
    operation: Operation
    files: tuple[OutgoingFile, ...]
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class StatusDrop:
    response_for: str
    code: StatusCode
    description: str
    staff: StaffInfo | None
    idempotency_key: str


@dataclass
class _Listed:
    path: Path
    name: str
    media_type: str
    description: str
    size: int | None
    sha256: str | None
    spec: dict[str, Any] = field(default_factory=dict)


def safe_file_name(name: str) -> str:
    """``name`` usable as one file name: no directories, no control characters, no leading dot."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE.sub("_", base).strip().lstrip(".")
    return cleaned[:200]


def incoming_files(message: Incoming) -> dict[str, bytes]:
    """The files of ``incoming/<message id>/`` for ``message``."""
    doc = message_json(message.envelope, recipient=message.agency, attempt=message.attempt)
    files: dict[str, bytes] = {}
    taken = {MESSAGE_FILE, EVIDENCE_FILE}
    for entry in doc["attachments"]:
        name = safe_file_name(entry["name"])
        if not name or name in taken:
            name = f"{entry['id']}-{name or 'attachment'}"
        taken.add(name)
        entry["file"] = name
        files[name] = message.attachments[entry["id"]]
    files[MESSAGE_FILE] = json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")
    files[EVIDENCE_FILE] = message.xml
    return files


class FileDropAdapter(FolderAdapter):
    """Exchanges documents and statuses with an E-Office through watched folders."""

    kind = "filedrop"
    wants_receipts = False
    bundles = True

    # -- receiving ------------------------------------------------------------------

    async def start(self) -> None:
        self.wants_receipts = self.bool_option("receipts")
        await super().start()

    async def deliver(self, message: Incoming) -> DeliveryResult:
        if message.envelope.header.kind is Kind.RECEIPT and not self.wants_receipts:
            return DeliveryResult.delivered()  # receipts show in tracking; this E-Office did not ask for them
        final = self.folders.incoming / message.message_id
        try:
            await asyncio.to_thread(lambda: atomic_write_dir(final, incoming_files(message)))
        except OSError as exc:
            return DeliveryResult.transient(f"cannot write to the E-Office's incoming folder: {exc.strerror}",
                                            "eoffice-write-failed")
        return DeliveryResult.delivered()

    # -- sending --------------------------------------------------------------------

    def drops(self) -> list[Path]:
        out = self.folders.outgoing
        return sorted_by_age(p for p in out.iterdir()
                             if p.suffix == ".json" and not is_temporary(p.name) and p.is_file())

    def files_of(self, drop: Path) -> list[Path]:
        files = [drop]
        try:
            meta = load_form(drop.read_bytes(), drop.name)
            listed = meta.get("attachments") or [] if isinstance(meta, dict) else []
            for spec in listed:
                try:
                    path = self._attachment_path(drop, spec)
                except DropRefused:
                    continue
                if path.is_file() and path not in files:
                    files.append(path)
        except (OSError, ValueError, AttributeError, BadRequestError):
            pass
        return files

    async def submit(self, drop: Path) -> SubmitResult:
        parsed = await asyncio.to_thread(self.read_drop, drop)
        if isinstance(parsed, StatusDrop):
            return await self.bus.submit_status(parsed.response_for, parsed.code, description=parsed.description,
                                                staff=parsed.staff, idempotency_key=parsed.idempotency_key)
        return await self.bus.submit_document(parsed.recipients, parsed.document, parsed.files,
                                              operation=parsed.operation, idempotency_key=parsed.idempotency_key)

    def _attachment_path(self, drop: Path, spec: Any) -> Path:
        if not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or not spec["file"].strip():
            raise DropRefused('each entry of "attachments" must be an object with "file", a path relative '
                              "to outgoing/")
        rel = PurePosixPath(spec["file"].replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or any(is_temporary(p) for p in rel.parts):
            raise DropRefused(f"attachment file {spec['file']!r} must be a plain path inside outgoing/ "
                              "(not absolute, no '..', no hidden or temporary names)")
        path = self.folders.outgoing.joinpath(*rel.parts)
        if path == drop:
            raise DropRefused("a drop cannot list its own metadata file as an attachment")
        return path

    def read_drop(self, drop: Path) -> DocumentDrop | StatusDrop:
        """Parse and check one metadata file and read its attachments (runs in a thread)."""
        raw = drop.read_bytes()
        try:
            meta = load_form(raw, drop.name)  # bounded: depth, number size, duplicate keys (exchange.metadata)
        except BadRequestError as exc:
            raise DropRefused(exc.message) from None
        except UnicodeDecodeError:
            raise DropRefused(f"{drop.name} is not UTF-8 JSON") from None
        except ValueError as exc:
            raise DropNotReady(f"{drop.name} is not complete JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise DropRefused(f"{drop.name} must hold a JSON object")
        kind = meta.get("kind", "document")
        try:
            if kind == "status":
                return self._status(meta, raw)
            if kind == "document":
                return self._document(drop, meta, raw)
        except BadRequestError as exc:
            raise DropRefused(exc.message) from None
        raise DropRefused(f'"kind" must be "document" or "status", not {kind!r}')

    def _status(self, meta: dict[str, Any], raw: bytes) -> StatusDrop:
        if not isinstance(meta.get("response_for"), str) or not meta["response_for"]:
            raise DropRefused('a status needs "response_for": the message id of the document it answers '
                              "(the name of its incoming/ folder)")
        if "code" not in meta:
            raise DropRefused('a status needs "code" (01-06, 13, 15, 16)')
        key = meta.get("idempotency_key") or "filedrop:" + hashlib.sha256(raw).hexdigest()
        return StatusDrop(meta["response_for"], status_code_from_json(meta["code"]),
                          str(meta.get("description", "")), staff_from_json(meta.get("staff")), str(key))

    def _document(self, drop: Path, meta: dict[str, Any], raw: bytes) -> DocumentDrop:
        to = meta.get("to")
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list) or not to or not all(isinstance(c, str) and c for c in to):
            raise DropRefused('a document needs "to": a list of recipient agency codes')
        document = document_from_json(meta.get("document"))
        listed = meta.get("attachments") or []
        if not isinstance(listed, list):
            raise DropRefused('"attachments" must be a list')
        files, digests = [], []
        for spec in listed:
            item = self._listed(drop, spec)
            data = self._read_attachment(item)
            digest = hashlib.sha256(data).hexdigest()
            if item.sha256 is not None and digest != item.sha256.lower():
                if item.size is None:
                    raise DropNotReady(f"{item.path.name} does not match its sha256 yet")
                raise DropRefused(f"attachment {item.name!r} has SHA-256 {digest}, but the metadata declares "
                                  f"{item.sha256}")
            files.append(OutgoingFile(item.name, data, item.media_type, item.description))
            digests.append(digest)
        key = meta.get("idempotency_key") or "filedrop:" + hashlib.sha256(
            raw + "".join(digests).encode("ascii")).hexdigest()
        return DocumentDrop(tuple(to), document, operation_from_json(meta.get("operation")), tuple(files), str(key))

    def _listed(self, drop: Path, spec: Any) -> _Listed:
        path = self._attachment_path(drop, spec)
        name = spec.get("name") or path.name
        size, sha = spec.get("size"), spec.get("sha256")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise DropRefused(f"attachment {name!r}: size must be a number of bytes")
        if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha)):
            raise DropRefused(f"attachment {name!r}: sha256 must be 64 hex digits")
        media_type = spec.get("media_type") or mimetypes.guess_type(str(name))[0] or "application/octet-stream"
        return _Listed(path, str(name), str(media_type), str(spec.get("description", "")), size, sha, spec)

    @staticmethod
    def _read_attachment(item: _Listed) -> bytes:
        try:
            data = item.path.read_bytes()
        except FileNotFoundError:
            raise DropNotReady(f"attachment file {item.spec['file']!r} is not there yet") from None
        except IsADirectoryError:
            raise DropRefused(f"attachment file {item.spec['file']!r} is a folder") from None
        if item.size is not None and len(data) != item.size:
            if len(data) < item.size:
                raise DropNotReady(f"attachment file {item.spec['file']!r} has {len(data)} of "
                                   f"{item.size} bytes")
            raise DropRefused(f"attachment file {item.spec['file']!r} has {len(data)} bytes, but the metadata "
                              f"declares {item.size}")
        return data
