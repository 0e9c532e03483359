"""The edXML adapter: the E-Office exchanges QCVN 102:2016 packages through folders.

Options as the file drop: ``root``, ``poll_interval`` (default 1 s),
``settle_seconds`` (default 30 s); and ``organ_ids``: ``"as-sent"`` (default: a
package comes with the organ ids its sender wrote) or ``"codes"`` (every id the
directory knows, alias or code, written as the QCVN 102 code: for an E-Office that
knows agencies only by their codes). Folder layout, atomic writes and polling:
:mod:`exchange.adapters.folders`; the package format: docs/EDXML.md.

**Sending.** The E-Office writes a document or status package to
``outgoing/<name>.edxml``, complete when it appears (write it as
``.<name>.edxml.tmp`` or ``<name>.edxml.part`` and rename). The adapter imports
it with the codec (:func:`exchange.envelope.edxml.import_package`) and sends it:
a new document through ``BusHandle.submit_edxml``; a status, revoke, update or
replace through ``submit_status`` / ``submit_document`` once the edXML
``DocumentId`` it names is resolved to a bus message id (below). The package
moves to ``processed/<name>.edxml`` with ``processed/<name>.result.json``
(``{"message_id", "recipients", "created", "created_at"}``), or to
``error/<name>.edxml`` with ``error/<name>.reason.txt`` (the codec's message
names the offending element, e.g. ``…/MessageHeader/Subject is missing``).
A package that is not well-formed XML is waited for until ``settle_seconds``
old, in case it is still being written. The idempotency key is the package's
SHA-256, so a package picked up twice is sent once.

**Receiving.** Each document or status becomes ``incoming/<message id>.edxml``,
written atomically (``incoming/.<message id>.edxml.<random>.tmp``, fsync,
rename); a repeated handover replaces the same file. A document without an
edXML ``DocumentId`` is given the standard one,
``{sender OrganId},{yyyy/MM/dd promulgation date},{number}/{notation}``, so that
the E-Office can answer it. Transport receipts have no edXML form and are not
written. A document or status that cannot be written as edXML at all is
refused (permanent), a failed write is transient. A document imported from a
package on the bus (``POST /v1/edxml``, this adapter) is written as that package,
byte for byte but for two TraceHeaders appended for the bus's hops (accepted at
the ingress node, handed to this E-Office), so the sender's TraceHeaders,
ContentIds, organ ids and recipients' OrganName reach the E-Office unchanged
(docs/EDXML.md).

**DocumentId ↔ message id.** An E-Office knows documents by edXML DocumentId,
the bus by message id. The adapter remembers both for every document it writes
to ``incoming/`` and every document it sends, in
``<root>/.exchange/documents.jsonl`` (append-only, fsync'd). That is how a status
package's ``ResponseFor`` finds the document it answers, how a revoke finds the
document it revokes, and how a status arriving for a document this agency sent
is written with the ``ResponseFor`` the E-Office knows (falling back to the
sent document in the store when the document was sent another way).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import date
from pathlib import Path

import structlog

from exchange.adapters.base import DeliveryResult, Incoming, OutgoingFile, SubmitResult
from exchange.adapters.folders import (
    DropNotReady,
    DropRefused,
    FolderAdapter,
    atomic_write_file,
    is_temporary,
    sorted_by_age,
)
from exchange.adapters.safe_files import append_line
from exchange.envelope.edxml import OrganIdFor, export_package, import_package, reference_of
from exchange.envelope.model import Envelope, Hop, Kind, Operation, ResponseRef, utcnow
from exchange.errors import AdapterError, ExchangeError, UnsafePathError, XmlMalformedError

log = structlog.get_logger("exchange.adapters.edxml")

SUFFIX = ".edxml"
#: The node name of the bus's hops in TraceHeaders: not an agency code, so written as a relay hop (Timestamp only).
BUS_HOP = "exchange"
INDEX_FILE = Path(".exchange") / "documents.jsonl"


class DocumentIndex:
    """DocumentId ↔ message id for the documents this adapter wrote or sent (a JSONL file)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_document_id: dict[str, str] = {}
        self._by_message_id: dict[str, ResponseRef] = {}
        self._lock = asyncio.Lock()

    def load(self) -> None:
        """Read the file (runs in a thread); a torn last line from a crash is skipped."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            return
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
                self._remember(
                    e["message_id"],
                    ResponseRef(e["organ_id"], e["code"], date.fromisoformat(e["promulgation_date"]), e["document_id"]),
                )
            except (ValueError, KeyError, TypeError):
                continue

    def _remember(self, message_id: str, ref: ResponseRef) -> None:
        self._by_document_id[ref.document_id] = message_id
        self._by_message_id[message_id] = ref

    def message_id(self, document_id: str) -> str | None:
        return self._by_document_id.get(document_id)

    def reference(self, message_id: str) -> ResponseRef | None:
        return self._by_message_id.get(message_id)

    def document_id(self, message_id: str) -> str | None:
        ref = self._by_message_id.get(message_id)
        return ref.document_id if ref else None

    async def add(self, message_id: str, ref: ResponseRef) -> None:
        if self._by_message_id.get(message_id) == ref:
            return
        line = json.dumps(
            {
                "message_id": message_id,
                "document_id": ref.document_id,
                "organ_id": ref.organ_id,
                "code": ref.code,
                "promulgation_date": ref.promulgation_date.isoformat(),
            },
            ensure_ascii=False,
        )
        async with self._lock:
            await asyncio.to_thread(append_line, self.path, line)
            self._remember(message_id, ref)


class EdxmlAdapter(FolderAdapter):
    """Exchanges QCVN 102 edXML packages with an E-Office through watched folders."""

    kind = "edxml"
    wants_receipts = False

    async def start(self) -> None:
        organ_ids = self.options.get("organ_ids", "as-sent")
        if organ_ids not in ("as-sent", "codes"):
            raise AdapterError(
                f'edxml adapter of {self.agency}: options.organ_ids must be "as-sent" (the ids the '
                'sender wrote) or "codes" (QCVN 102 codes, aliases mapped through the directory)'
            )
        self.organ_ids = organ_ids
        await super().start()
        self.index = DocumentIndex(self.folders.root / INDEX_FILE)
        await asyncio.to_thread(self.index.load)

    # -- receiving ------------------------------------------------------------------

    async def deliver(self, message: Incoming) -> DeliveryResult:
        h = message.envelope.header
        if h.kind is Kind.RECEIPT:
            return DeliveryResult.delivered()  # no edXML form; tracking shows receipts
        envelope = message.envelope
        if h.document is not None:
            ref = reference_of(h.sender.code, h.document, h.created_at)
            if not h.document.document_id:
                envelope = replace(
                    envelope, header=replace(h, document=replace(h.document, document_id=ref.document_id))
                )
            await self.index.add(h.message_id, ref)
        elif h.status is not None and h.status.document_ref is None:
            answered = self.index.reference(h.status.response_for) or await self._sent_reference(h.status.response_for)
            if answered is None:
                return DeliveryResult.permanent(
                    f"status {h.status.code.value} answers {h.status.response_for}, a document this agency's "
                    "E-Office cannot name in edXML (no DocumentId known)",
                    "edxml-unnamed-document",
                )
            envelope = replace(envelope, header=replace(h, status=replace(h.status, document_ref=answered)))
        try:
            # The bus's own hops, after the sender's TraceHeaders: accepted by the ingress node, handed over here.
            hops = (Hop(BUS_HOP, h.created_at), Hop(BUS_HOP, utcnow()))
            package = await asyncio.to_thread(
                export_package,
                envelope,
                message.attachments,
                document_id_of=self.index.document_id,
                hops=hops,
                organ_id_for=self._organ_id_for(),
            )
        except ExchangeError as exc:
            return DeliveryResult.permanent(f"cannot be written as an edXML package: {exc.message}", exc.code)
        final = self.folders.incoming / f"{h.message_id}{SUFFIX}"
        try:
            await asyncio.to_thread(atomic_write_file, final, package)  # confined: one plain name, no links
        except UnsafePathError as exc:
            return DeliveryResult.permanent(f"cannot be written to the E-Office's folder: {exc.message}", exc.code)
        except OSError as exc:
            return DeliveryResult.transient(
                f"cannot write to the E-Office's incoming folder: {exc.strerror}", "eoffice-write-failed"
            )
        return DeliveryResult.delivered()

    def _organ_id_for(self) -> OrganIdFor | None:
        """With ``organ_ids = "codes"``, every organ id the directory knows is written as its QCVN 102 code."""
        directory = getattr(self.bus, "directory", None)
        if self.organ_ids != "codes" or directory is None:
            return None
        resolve: OrganIdFor = directory.resolve_organ_id  # the bus's directory (typed loosely here)
        return resolve

    async def _sent_reference(self, message_id: str) -> ResponseRef | None:
        """The ResponseFor of a document this agency sent without this adapter (looked up in the store)."""
        track = getattr(self.bus, "track", None)
        if track is None:
            return None
        from exchange.envelope.parse import parse_envelope

        try:
            record = (await track(message_id)).message
            _, env = await asyncio.to_thread(parse_envelope, record.envelope_xml)
        except ExchangeError:
            return None
        if env.header.document is None:
            return None
        ref = reference_of(env.header.sender.code, env.header.document, env.header.created_at)
        await self.index.add(message_id, ref)
        return ref

    # -- sending --------------------------------------------------------------------

    def drops(self) -> list[Path]:
        return sorted_by_age(
            p
            for p in self.folders.outgoing.iterdir()
            if p.suffix == SUFFIX and not is_temporary(p.name) and p.is_file()
        )

    def files_of(self, drop: Path) -> list[Path]:
        return [drop]

    async def submit(self, drop: Path) -> SubmitResult:
        data = await asyncio.to_thread(drop.read_bytes)
        try:
            # The node's directory maps organ id aliases (docs/EDXML.md); a bare BusHandle may not offer one.
            package = await asyncio.to_thread(
                import_package, data, resolve=self.index.message_id, agencies=getattr(self.bus, "directory", None)
            )
        except XmlMalformedError as exc:
            raise DropNotReady(f"{exc.code}: {exc.message}") from None
        except ExchangeError as exc:
            raise DropRefused(f"{exc.code}: {exc.message}") from None
        h = package.envelope.header
        if h.sender.code != self.agency:
            raise DropRefused(f"the package is From {h.sender.code}, but this folder belongs to {self.agency}")
        key = f"edxml:{package.sha256}"
        if h.status is not None:
            if package.unresolved:
                raise DropRefused(
                    f"ResponseFor names document {package.unresolved[0]!r}, which {self.agency} has not received "
                    "through this folder; answer a DocumentId from a package in incoming/"
                )
            return await self.bus.submit_status(
                h.status.response_for,
                h.status.code,
                description=h.status.description,
                staff=h.status.staff,
                idempotency_key=key,
            )
        assert h.document is not None
        if h.operation is Operation.NEW:
            result = await self.bus.submit_edxml(data, idempotency_key=key)
        else:
            if h.document.relates_to is None:
                target = package.unresolved[0] if package.unresolved else "(none)"
                raise DropRefused(
                    f"this {h.operation.value} names document {target!r}, which {self.agency} "
                    "has not sent through this folder"
                )
            result = await self.bus.submit_document(
                [r.code for r in h.recipients],
                h.document,
                _files(package.envelope, package.attachment_data),
                operation=h.operation,
                idempotency_key=key,
            )
        if h.operation in (Operation.NEW, Operation.REPLACE):  # a revoke / update repeats its target's id
            await self.index.add(
                result.message_id, reference_of(self.agency, h.document, result.created_at or h.created_at)
            )
        return result


def _files(envelope: Envelope, data: dict[str, bytes]) -> list[OutgoingFile]:
    by_id = {a.id: a for a in envelope.attachments}
    return [OutgoingFile(by_id[i].name, b, by_id[i].media_type, by_id[i].description) for i, b in data.items()]
