"""The recording adapter: appends every handover to a JSON-lines file (fsync'd).

For tests, demos and smoke checks of a node: it answers like an E-Office that
keeps a journal of what it received, and can be told to fail, so retries,
dead letters and non-delivery receipts can be exercised end to end.

Options: ``path`` (the JSONL file), ``transient_failures`` (answer transient
this many times per message before accepting), ``refuse`` (answer permanent
for every document), ``delay`` (seconds to hold each handover), ``receipts`` (true:
also take the signed receipts that come back for what this agency sent). The file
is opened without following a symbolic link at ``path`` (exchange/adapters/safe_files.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

from exchange.adapters.base import Adapter, DeliveryResult, Incoming
from exchange.adapters.safe_files import append_line
from exchange.errors import AdapterError


class RecordingAdapter(Adapter):
    kind = "recording"
    wants_receipts = False

    async def start(self) -> None:
        if "path" not in self.options:
            raise AdapterError(f"recording adapter of {self.agency} needs options.path (a JSONL file)")
        self.path = Path(self.options["path"])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._attempts: Counter[str] = Counter()
        self._lock = asyncio.Lock()
        self.wants_receipts = bool(self.options.get("receipts", False))

    async def deliver(self, message: Incoming) -> DeliveryResult:
        delay = float(self.options.get("delay", 0))
        if delay:
            await asyncio.sleep(delay)
        if self.options.get("refuse"):
            return DeliveryResult.permanent("the E-Office refuses this document", "eoffice-refused")
        self._attempts[message.message_id] += 1
        if self._attempts[message.message_id] <= int(self.options.get("transient_failures", 0)):
            return DeliveryResult.transient("the E-Office is temporarily unavailable", "eoffice-unavailable")
        h = message.envelope.header
        line = json.dumps(
            {
                "message_id": message.message_id,
                "recipient": self.agency,
                "sender": h.sender.code,
                "kind": h.kind.value,
                "operation": h.operation.value,
                "priority": int(h.priority),
                "status": h.status.code.value if h.status else None,
                "receipt_for": h.receipt.response_for if h.receipt else None,
                "outcome": h.receipt.outcome.value if h.receipt else None,
                "attachments": {a.name: a.sha256 for a in message.envelope.attachments},
                "attempt": message.attempt,
            },
            ensure_ascii=False,
        )
        async with self._lock:
            try:
                # append_line never follows a symbolic link planted at the path (e.g. in a shared /tmp).
                await asyncio.to_thread(append_line, self.path, line)
            except OSError as exc:
                return DeliveryResult.transient(
                    f"cannot append to {self.path}: {exc.strerror or exc}", "eoffice-write-failed"
                )
        return DeliveryResult.delivered()


def read_records(path: str | os.PathLike[str]) -> list[dict]:
    """Every handover recorded in ``path`` (empty if none yet).

    Safe to call while the adapter writes: a line still being written (no newline yet)
    is left for the next call rather than read half-way.
    """
    p = Path(path)
    if not p.exists():
        return []
    complete = p.read_bytes().rpartition(b"\n")[0].decode("utf-8")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]
