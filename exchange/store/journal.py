"""The hash-chained journal: canonical entries and chain verification (pure logic, no I/O).

Each entry is the canonical JSON (sorted keys, no whitespace, UTF-8) of
``{seq, at, action, message_id, recipient, data}``. Its hash is
``sha256(prev_hash + canonical)`` in lowercase hex, where ``prev_hash`` is the
previous entry's hash, or :data:`GENESIS` for entry 1. Altering, removing,
reordering or inserting an entry anywhere but after the head breaks the chain at
or right after that point; :class:`ChainVerifier` reports the first such seq.

Entries never carry secrets or document content: message ids, agency codes,
states, status codes and digests only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exchange.store.base import JournalReport

#: ``prev_hash`` of the first entry.
GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, non-ASCII kept as UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    """The hash of an entry: sha256 over the previous hash followed by the entry's canonical text."""
    return hashlib.sha256((prev_hash + canonical).encode("utf-8")).hexdigest()


def format_at(at: datetime) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``: one spelling per instant, so hashes are stable."""
    if at.tzinfo is None:
        raise ValueError("journal times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class JournalEvent:
    """One state change to journal, before it gets its place (seq, time) in the chain."""

    action: str
    message_id: str | None = None
    recipient: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChainedEntry:
    """An entry ready to store: the journal table's row."""

    seq: int
    at: str
    event: str  # canonical JSON text
    prev_hash: str
    hash: str


def chain(events: list[JournalEvent], *, head_seq: int, head_hash: str, at: datetime) -> list[ChainedEntry]:
    """Link ``events`` after the head (``head_seq`` 0 and :data:`GENESIS` for an empty journal)."""
    stamp = format_at(at)
    out: list[ChainedEntry] = []
    seq, prev = head_seq, head_hash
    for ev in events:
        seq += 1
        text = canonical_json(
            {
                "seq": seq,
                "at": stamp,
                "action": ev.action,
                "message_id": ev.message_id,
                "recipient": ev.recipient,
                "data": dict(ev.data),
            }
        )
        digest = chain_hash(prev, text)
        out.append(ChainedEntry(seq, stamp, text, prev, digest))
        prev = digest
    return out


class ChainVerifier:
    """Feed stored rows in seq order; stops at the first break and reports it."""

    def __init__(self) -> None:
        self.entries = 0
        self.head = ""
        self._expected_seq = 1
        self._prev = GENESIS
        self._bad: tuple[int, str] | None = None

    @property
    def failed(self) -> bool:
        return self._bad is not None

    def feed(self, seq: int, at: str, event: str, prev_hash: str, hash_: str) -> bool:
        """Check one row; returns False (and remembers why) at the first break."""
        self.entries += 1  # rows after a break are still counted, not checked
        if self._bad is not None:
            return False
        bad = self._check(seq, at, event, prev_hash, hash_)
        if bad is not None:
            self._bad = bad
            return False
        self._expected_seq = seq + 1
        self._prev = hash_
        self.head = hash_
        return True

    def _check(self, seq: int, at: str, event: str, prev_hash: str, hash_: str) -> tuple[int, str] | None:
        exp = self._expected_seq
        if seq > exp:
            missing = f"entry {exp}" if seq == exp + 1 else f"entries {exp}..{seq - 1}"
            return exp, f"{missing} missing before entry {seq}: removed from the journal"
        if seq < exp:
            return seq, f"entry {seq} is out of sequence (expected {exp}): inserted into the journal"
        if prev_hash != self._prev:
            what = "the genesis value" if seq == 1 else f"entry {seq - 1}'s hash"
            return seq, (
                f"entry {seq}'s prev_hash does not match {what}: an entry before it was altered, replaced or inserted"
            )
        try:
            parsed = json.loads(event)
        except ValueError:
            return seq, f"entry {seq} is not valid JSON: altered"
        if not isinstance(parsed, dict) or canonical_json(parsed) != event:
            return seq, f"entry {seq} is not in canonical form: altered"
        if parsed.get("seq") != seq or parsed.get("at") != at:
            return seq, f"entry {seq}'s seq or time differs from its content: altered or moved"
        if chain_hash(prev_hash, event) != hash_:
            return seq, f"entry {seq}'s hash does not match its content: altered"
        return None

    def report(self) -> JournalReport:
        """The verdict so far."""
        if self._bad is not None:
            seq, problem = self._bad
            return JournalReport(entries=self.entries, ok=False, first_bad_seq=seq, problem=problem, head=self.head)
        return JournalReport(entries=self.entries, ok=True, head=self.head)
