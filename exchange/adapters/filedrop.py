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
* the attachment files, byte for byte, under their sanitised names
  (:func:`safe_file_name`; ``attachment-<n>[.ext]`` when a name sanitises to nothing
  or is taken), written through :mod:`exchange.adapters.safe_files` so nothing lands
  outside the folder.

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
import unicodedata
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
from exchange.adapters.safe_files import confined
from exchange.envelope.edxml.files import OfferedFile, offered_file
from exchange.envelope.model import (
    Attachment,
    DocumentInfo,
    Envelope,
    Kind,
    Operation,
    StaffInfo,
    StatusCode,
    check_attachment_name,
)
from exchange.errors import AttachmentError, BadRequestError, UnsafePathError

MESSAGE_FILE = "message.json"
EVIDENCE_FILE = "envelope.xml"
#: Names the adapter writes itself in ``incoming/<message id>/``: an attachment never takes one.
RESERVED_NAMES = frozenset({MESSAGE_FILE, EVIDENCE_FILE})
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")
#: Unicode categories replaced in file names: controls, format characters (bidi overrides, zero-width), line
#: and paragraph separators, surrogates. The envelope refuses them in names already (docs/ENVELOPE.md); the
#: adapter replaces them anyway, because it writes to a file system someone will browse.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
#: Device names Windows refuses as file names, whatever the extension (an E-Office may share the folder).
_WINDOWS_DEVICE = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")
#: A file extension kept on a fallback name: short, letters and digits only.
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")
#: Bytes (UTF-8) an attachment file name may take; ext4 and most others take 255, leave room to spare.
MAX_NAME_BYTES = 200


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
    """``name`` usable as one file name, or "" if nothing usable is left.

    The last path component only; control, bidi and other invisible characters and the
    characters Windows refuses become ``_``; no leading dot (hidden), no trailing dot or
    space; a Windows device name (``CON``, ``NUL.txt``) gives ""; at most
    :data:`MAX_NAME_BYTES` bytes, keeping the extension.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join("_" if _UNSAFE.match(c) or unicodedata.category(c) in _INVISIBLE else c for c in base)
    cleaned = cleaned.strip().lstrip(".").rstrip(". ")
    if _WINDOWS_DEVICE.fullmatch(cleaned):
        return ""
    return _truncate(cleaned, MAX_NAME_BYTES)


def _truncate(name: str, limit: int) -> str:
    if len(name.encode("utf-8")) <= limit:
        return name
    suffix = PurePosixPath(name).suffix if _SAFE_SUFFIX.fullmatch(PurePosixPath(name).suffix) else ""
    stem = name[: len(name) - len(suffix)]
    while len((stem + suffix).encode("utf-8")) > limit:
        stem = stem[:-1]
    return stem.rstrip(". ") + suffix


def _fallback_name(cleaned: str, index: int, taken: set[str]) -> str:
    """``attachment-<n>[.ext]``: built from the attachment's position, never from the id or the raw name."""
    suffix = PurePosixPath(cleaned).suffix if cleaned else ""
    suffix = suffix if _SAFE_SUFFIX.fullmatch(suffix) else ""
    candidate, n = f"attachment-{index}{suffix}", 1
    while candidate.casefold() in taken:
        n += 1
        candidate = f"attachment-{index}-{n}{suffix}"
    return candidate


def incoming_files(message: Incoming) -> dict[str, bytes]:
    """The files of ``incoming/<message id>/`` for ``message``.

    Each attachment is written under its sanitised name (:func:`safe_file_name`). A name
    that sanitises to nothing, is reserved (``message.json``, ``envelope.xml``) or repeats
    one already taken (compared case-insensitively, as Windows and macOS do) gets
    ``attachment-<n>[.ext]`` instead; ``message.json`` says which file is which.
    """
    doc = message_json(message.envelope, recipient=message.agency, attempt=message.attempt)
    files: dict[str, bytes] = {}
    taken = {n.casefold() for n in RESERVED_NAMES}
    by_id = {a.id: a for a in message.envelope.attachments}
    for index, entry in enumerate(doc["attachments"], start=1):
        # A ZIP-wrapped edXML attachment is offered as the file inside (exchange.envelope.edxml.files).
        offered = offered_attachment(message.envelope, by_id[entry["id"]], message.attachments[entry["id"]], entry)
        name = safe_file_name(offered.name)
        if not name or name.casefold() in taken:
            name = _fallback_name(name, index, taken)
        taken.add(name.casefold())
        entry["file"] = name
        files[name] = offered.data
    files[MESSAGE_FILE] = json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")
    files[EVIDENCE_FILE] = message.xml
    return files


def offered_attachment(envelope: Envelope, attachment: Attachment, data: bytes, entry: dict[str, Any]) -> OfferedFile:
    """The file to write for ``attachment``; when unwrapped, ``entry`` describes the file and keeps the ZIP's digest."""
    offered = offered_file(envelope.header.document, attachment, data)
    if offered.unwrapped:
        entry.update(
            size=len(offered.data),
            sha256=hashlib.sha256(offered.data).hexdigest(),
            packed={"media_type": "application/zip", "size": attachment.size, "sha256": attachment.sha256},
        )
    elif offered.reason:
        entry.update(media_type=offered.media_type, not_unwrapped=offered.reason)
    return offered


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
        except UnsafePathError as exc:  # cannot happen for a verified envelope (UUID ids); never retry it
            return DeliveryResult.permanent(f"cannot be written to the E-Office's folder: {exc.message}", exc.code)
        except OSError as exc:
            return DeliveryResult.transient(
                f"cannot write to the E-Office's incoming folder: {exc.strerror}", "eoffice-write-failed"
            )
        return DeliveryResult.delivered()

    # -- sending --------------------------------------------------------------------

    def drops(self) -> list[Path]:
        out = self.folders.outgoing
        return sorted_by_age(
            p for p in out.iterdir() if p.suffix == ".json" and not is_temporary(p.name) and p.is_file()
        )

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
            return await self.bus.submit_status(
                parsed.response_for,
                parsed.code,
                description=parsed.description,
                staff=parsed.staff,
                idempotency_key=parsed.idempotency_key,
            )
        return await self.bus.submit_document(
            parsed.recipients,
            parsed.document,
            parsed.files,
            operation=parsed.operation,
            idempotency_key=parsed.idempotency_key,
        )

    def _attachment_path(self, drop: Path, spec: Any) -> Path:
        if not isinstance(spec, dict) or not isinstance(spec.get("file"), str) or not spec["file"].strip():
            raise DropRefused('each entry of "attachments" must be an object with "file", a path relative to outgoing/')
        rel = PurePosixPath(spec["file"].replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or any(is_temporary(p) for p in rel.parts) or "\x00" in spec["file"]:
            raise DropRefused(
                f"attachment file {spec['file']!r} must be a plain path inside outgoing/ "
                "(not absolute, no '..', no hidden or temporary names)"
            )
        try:
            # A symbolic link under outgoing/ that points elsewhere would send (and then move) a file from
            # outside the E-Office's folder: resolve and refuse.
            path = confined(self.folders.outgoing, *rel.parts)
        except UnsafePathError:
            raise DropRefused(
                f"attachment file {spec['file']!r} leads outside outgoing/ (a symbolic link?); "
                "put the file itself in the folder"
            ) from None
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
            raise DropRefused(
                'a status needs "response_for": the message id of the document it answers '
                "(the name of its incoming/ folder)"
            )
        if "code" not in meta:
            raise DropRefused('a status needs "code" (01-06, 13, 15, 16)')
        key = meta.get("idempotency_key") or "filedrop:" + hashlib.sha256(raw).hexdigest()
        return StatusDrop(
            meta["response_for"],
            status_code_from_json(meta["code"]),
            str(meta.get("description", "")),
            staff_from_json(meta.get("staff")),
            str(key),
        )

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
                raise DropRefused(
                    f"attachment {item.name!r} has SHA-256 {digest}, but the metadata declares {item.sha256}"
                )
            files.append(OutgoingFile(item.name, data, item.media_type, item.description))
            digests.append(digest)
        key = (
            meta.get("idempotency_key")
            or "filedrop:" + hashlib.sha256(raw + "".join(digests).encode("ascii")).hexdigest()
        )
        return DocumentDrop(tuple(to), document, operation_from_json(meta.get("operation")), tuple(files), str(key))

    def _listed(self, drop: Path, spec: Any) -> _Listed:
        path = self._attachment_path(drop, spec)
        name = spec.get("name") or path.name
        try:
            check_attachment_name(str(name))  # refused here, as everywhere names enter (docs/ENVELOPE.md)
        except AttachmentError as exc:
            raise DropRefused(f"{exc.code}: {exc.message}") from None
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
                raise DropNotReady(f"attachment file {item.spec['file']!r} has {len(data)} of {item.size} bytes")
            raise DropRefused(
                f"attachment file {item.spec['file']!r} has {len(data)} bytes, but the metadata declares {item.size}"
            )
        return data
