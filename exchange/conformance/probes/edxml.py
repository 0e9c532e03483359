"""The edXML adapter's E-Office: reads ``incoming/*.edxml`` and drops QCVN 102 packages in ``outgoing/``."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exchange.conformance.probe import EOfficeProbe, ProbeContext, SeenMessage
from exchange.conformance.probes.filedrop import write_atomically
from exchange.envelope.edxml import export_package, import_package
from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentCode,
    DocumentInfo,
    Envelope,
    Header,
    Kind,
    ResponseRef,
    StatusCode,
    StatusInfo,
    new_message_id,
    utcnow,
)

_numbers = itertools.count(1)


class EdxmlProbe(EOfficeProbe):
    """Plays an E-Office that speaks edXML through shared folders; packages are built with the codec.

    It cannot make the adapter's handover fail, so no failures can be injected;
    it sends through ``outgoing/``.
    """

    kind = "edxml"
    can_fail = frozenset()
    can_send = True

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        self.agency = ctx.agency
        self.root = ctx.workdir / "eoffice"
        self._seen: dict[str, SeenMessage] = {}
        return {"root": str(self.root), "poll_interval": 0.2, "settle_seconds": 5}

    def package(self, message_id: str) -> Envelope:
        """The envelope read back from ``incoming/<message id>.edxml``."""
        data = (self.root / "incoming" / f"{message_id}.edxml").read_bytes()
        return import_package(data, message_id=message_id).envelope

    async def seen(self) -> list[SeenMessage]:
        await asyncio.to_thread(self._scan)
        return list(self._seen.values())

    def _scan(self) -> None:
        incoming = self.root / "incoming"
        if not incoming.is_dir():
            return
        for path in sorted(incoming.glob("*.edxml")):
            mid = path.name[: -len(".edxml")]
            if path.name.startswith(".") or mid in self._seen:
                continue
            package = import_package(path.read_bytes(), message_id=mid)
            h = package.envelope.header
            self._seen[mid] = SeenMessage(
                message_id=mid,
                kind=h.kind.value,
                sender=h.sender.code,
                subject=h.document.subject if h.document else "",
                status_code=h.status.code.value if h.status else None,
                attachments={a.name: package.attachment_data[a.id] for a in package.envelope.attachments},
            )

    async def send(self, recipients: Sequence[str], subject: str, files: Mapping[str, bytes]) -> None:
        attachments = tuple(Attachment.of(name, data, id=f"a{i}") for i, (name, data) in enumerate(files.items()))
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.DOCUMENT,
                sender=AgencyRef(self.agency),
                recipients=tuple(AgencyRef(r) for r in recipients),
                created_at=utcnow(),
                document=DocumentInfo(code=DocumentCode(str(next(_numbers)), "PROBE"), subject=subject),
            ),
            attachments,
        )
        data = export_package(envelope, {a.id: files[a.name] for a in attachments})
        await asyncio.to_thread(self._drop, data)

    async def send_status(self, document_message_id: str, code: StatusCode | str, description: str = "") -> None:
        """Answer the document in ``incoming/<id>.edxml`` with a status package, naming it as edXML does."""
        document = await asyncio.to_thread(self.package, document_message_id)
        doc, sender = document.header.document, document.header.sender
        assert doc is not None
        now = utcnow()
        # Named as an E-Office names a package it received: From, Code, PromulgationDate, DocumentId.
        code_text = f"{doc.code.number}/{doc.code.notation}" if doc.code.notation else doc.code.number
        ref = ResponseRef(
            sender.code, code_text, doc.promulgation.date if doc.promulgation else now.date(), doc.document_id
        )
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.STATUS,
                sender=AgencyRef(self.agency),
                recipients=(AgencyRef(sender.code),),
                created_at=now,
                status=StatusInfo(
                    response_for=document_message_id,
                    code=StatusCode(code),
                    description=description,
                    timestamp=now,
                    document_ref=ref,
                ),
            )
        )
        await asyncio.to_thread(self._drop, export_package(envelope, {}))

    def _drop(self, data: bytes) -> Path:
        path = self.root / "outgoing" / f"{uuid.uuid4().hex[:12]}.edxml"
        write_atomically(path, data)
        return path
