"""The file-drop adapter's E-Office: reads ``incoming/`` folders and drops metadata files in ``outgoing/``."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from exchange.adapters.filedrop import MESSAGE_FILE
from exchange.conformance.probe import EOfficeProbe, ProbeContext, SeenMessage


def write_atomically(path: Path, data: bytes) -> None:
    """Write as a careful E-Office does: a hidden temporary name, then a rename."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class FileDropProbe(EOfficeProbe):
    """Plays an E-Office that shares a folder with the adapter.

    It cannot make the adapter's handover fail (writing a folder has no answer
    to give), so no failures can be injected; it sends through ``outgoing/``.
    """

    kind = "filedrop"
    can_fail = frozenset()
    can_send = True

    async def start(self, ctx: ProbeContext) -> Mapping[str, Any]:
        self.root = ctx.workdir / "eoffice"
        self._seen: dict[str, SeenMessage] = {}
        return {"root": str(self.root), "poll_interval": 0.2, "settle_seconds": 5}

    async def seen(self) -> list[SeenMessage]:
        await asyncio.to_thread(self._scan)
        return list(self._seen.values())

    def _scan(self) -> None:
        incoming = self.root / "incoming"
        if not incoming.is_dir():
            return
        for folder in sorted(incoming.iterdir()):
            if folder.name.startswith(".") or folder.name in self._seen or not folder.is_dir():
                continue
            doc = json.loads((folder / MESSAGE_FILE).read_bytes())
            self._seen[folder.name] = SeenMessage(
                message_id=doc["message_id"],
                kind=doc["kind"],
                sender=doc["sender"]["code"],
                subject=(doc.get("document") or {}).get("subject", ""),
                status_code=(doc.get("status") or {}).get("code"),
                attachments={a["name"]: (folder / a["file"]).read_bytes() for a in doc["attachments"]},
            )

    async def send(self, recipients: Sequence[str], subject: str, files: Mapping[str, bytes]) -> None:
        await asyncio.to_thread(
            self._drop,
            {
                "kind": "document",
                "to": list(recipients),
                "document": {"number": "1", "notation": "PROBE", "subject": subject},
            },
            files,
        )

    async def send_status(self, document_message_id: str, code: str, description: str = "") -> None:
        """Answer a received document with a business status (01-16)."""
        await asyncio.to_thread(
            self._drop,
            {"kind": "status", "response_for": document_message_id, "code": code, "description": description},
            {},
        )

    def _drop(self, meta: dict[str, Any], files: Mapping[str, bytes]) -> str:
        outgoing = self.root / "outgoing"
        name = uuid.uuid4().hex[:12]
        listed = []
        if files:
            (outgoing / name).mkdir()
            for i, (file_name, data) in enumerate(files.items()):
                rel = f"{name}/{i}-{os.path.basename(file_name) or 'file'}"
                (outgoing / rel).write_bytes(data)
                listed.append({"file": rel, "name": file_name, "size": len(data)})
        meta = {**meta, "attachments": listed} if listed else meta
        write_atomically(outgoing / f"{name}.json", json.dumps(meta, ensure_ascii=False).encode("utf-8"))
        return name
