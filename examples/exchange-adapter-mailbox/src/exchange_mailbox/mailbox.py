"""The mailbox: one SQLite file shared by the adapter and the agency's E-Office.

The protocol, in full (both sides may be different processes on one machine)::

    incoming  the adapter offers each message (state 'offered'); the E-Office answers by setting
              state to 'accepted', 'rejected' (with a reason: refused for good) or 'busy' (try later).
    outgoing  the E-Office inserts a row (state 'new') under a reference of its own; the adapter
              submits it to the bus and sets 'sent' (with the bus message id) or 'error'.

The bus message id is the primary key of ``incoming``, so an offer repeated after
a crash finds the earlier answer instead of creating a second copy; the E-Office's
``ref`` is the idempotency key of a submission for the same reason.

:class:`Mailbox` is the E-Office's side, synchronous (an E-Office is usually a
plain program); the adapter has its own small functions at the bottom.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS incoming (
    message_id   TEXT PRIMARY KEY,          -- the bus message id: the idempotency key
    kind         TEXT NOT NULL,             -- 'document' or 'status'
    sender       TEXT NOT NULL,             -- agency code
    subject      TEXT NOT NULL DEFAULT '',
    number       TEXT NOT NULL DEFAULT '',
    notation     TEXT NOT NULL DEFAULT '',
    status_code  TEXT,                      -- statuses: 01..16
    response_for TEXT,                      -- statuses: the document they answer
    envelope     BLOB NOT NULL,             -- the signed XML, kept as evidence
    state        TEXT NOT NULL DEFAULT 'offered'
                 CHECK (state IN ('offered', 'accepted', 'rejected', 'busy')),
    reason       TEXT NOT NULL DEFAULT '',
    offers       INTEGER NOT NULL DEFAULT 1,
    offered_at   TEXT NOT NULL,
    answered_at  TEXT
);
CREATE TABLE IF NOT EXISTS incoming_files (
    message_id TEXT NOT NULL REFERENCES incoming (message_id),
    name       TEXT NOT NULL,
    media_type TEXT NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (message_id, name)
);
CREATE TABLE IF NOT EXISTS outgoing (
    ref          TEXT PRIMARY KEY,          -- chosen by the E-Office: the idempotency key
    kind         TEXT NOT NULL DEFAULT 'document' CHECK (kind IN ('document', 'status')),
    recipients   TEXT NOT NULL DEFAULT '[]', -- documents: JSON list of agency codes
    subject      TEXT NOT NULL DEFAULT '',
    number       TEXT NOT NULL DEFAULT '',
    notation     TEXT NOT NULL DEFAULT '',
    response_for TEXT,                      -- statuses: the received document's message id
    status_code  TEXT,
    description  TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'sent', 'error')),
    message_id   TEXT,
    error        TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outgoing_files (
    ref        TEXT NOT NULL REFERENCES outgoing (ref),
    name       TEXT NOT NULL,
    media_type TEXT NOT NULL DEFAULT 'application/octet-stream',
    data       BLOB NOT NULL,
    PRIMARY KEY (ref, name)
);
"""


def now() -> str:
    return datetime.now(UTC).isoformat()


@contextmanager
def connect(path: str | Path, *, write: bool = False) -> Iterator[sqlite3.Connection]:
    """One short-lived connection; ``write`` takes the write lock up front (BEGIN IMMEDIATE)."""
    with closing(sqlite3.connect(path, timeout=10, isolation_level=None)) as conn:
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def create(path: str | Path) -> None:
    """Create the mailbox (idempotent). WAL lets the E-Office read while the adapter writes."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=10)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.executescript(SCHEMA)


@dataclass(frozen=True, slots=True)
class Received:
    """A message the E-Office has (or is being offered)."""

    message_id: str
    kind: str
    sender: str
    state: str
    subject: str = ""
    number: str = ""
    notation: str = ""
    status_code: str | None = None
    response_for: str | None = None
    offers: int = 1
    files: Mapping[str, bytes] = field(default_factory=dict)


class Mailbox:
    """The E-Office's side of the mailbox."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        create(self.path)

    def _received(self, state: str, *, with_files: bool) -> list[Received]:
        with connect(self.path) as conn:
            rows = conn.execute(
                "SELECT * FROM incoming WHERE state = ? ORDER BY offered_at, message_id", (state,)
            ).fetchall()
            out = []
            for r in rows:
                files = {}
                if with_files:
                    files = {
                        f["name"]: bytes(f["data"])
                        for f in conn.execute(
                            "SELECT name, data FROM incoming_files WHERE message_id = ?", (r["message_id"],)
                        )
                    }
                out.append(
                    Received(
                        r["message_id"],
                        r["kind"],
                        r["sender"],
                        r["state"],
                        r["subject"],
                        r["number"],
                        r["notation"],
                        r["status_code"],
                        r["response_for"],
                        r["offers"],
                        files,
                    )
                )
            return out

    def offers(self) -> list[Received]:
        """Messages waiting for the E-Office's answer (without attachment bytes)."""
        return self._received("offered", with_files=False)

    def accepted(self) -> list[Received]:
        """Messages the E-Office accepted, with their attachments."""
        return self._received("accepted", with_files=True)

    def _answer(self, message_id: str, state: str, reason: str = "") -> bool:
        with connect(self.path, write=True) as conn:
            cur = conn.execute(
                "UPDATE incoming SET state = ?, reason = ?, answered_at = ? WHERE message_id = ? AND state = 'offered'",
                (state, reason, now(), message_id),
            )
            return cur.rowcount == 1

    def accept(self, message_id: str) -> bool:
        return self._answer(message_id, "accepted")

    def reject(self, message_id: str, reason: str) -> bool:
        """Refuse for good: the sender receives a non-delivery receipt with ``reason``."""
        return self._answer(message_id, "rejected", reason)

    def defer(self, message_id: str, reason: str = "busy") -> bool:
        """Not now: the bus offers it again after a backoff."""
        return self._answer(message_id, "busy", reason)

    def send_document(
        self,
        ref: str,
        recipients: Sequence[str],
        subject: str,
        *,
        number: str = "",
        notation: str = "",
        files: Mapping[str, bytes] | None = None,
        media_types: Mapping[str, str] | None = None,
    ) -> None:
        """Queue a document for the bus; ``ref`` is this E-Office's own unique reference."""
        with connect(self.path, write=True) as conn:
            conn.execute(
                "INSERT INTO outgoing (ref, kind, recipients, subject, number, notation, created_at) "
                "VALUES (?, 'document', ?, ?, ?, ?, ?)",
                (ref, json.dumps(list(recipients)), subject, number, notation, now()),
            )
            for name, data in (files or {}).items():
                conn.execute(
                    "INSERT INTO outgoing_files (ref, name, media_type, data) VALUES (?, ?, ?, ?)",
                    (ref, name, (media_types or {}).get(name, "application/octet-stream"), data),
                )

    def send_status(self, ref: str, response_for: str, status_code: str, description: str = "") -> None:
        """Queue a business status (01-16) about a document this agency received."""
        with connect(self.path, write=True) as conn:
            conn.execute(
                "INSERT INTO outgoing (ref, kind, response_for, status_code, description, created_at) "
                "VALUES (?, 'status', ?, ?, ?, ?)",
                (ref, response_for, status_code, description, now()),
            )

    def outgoing_state(self, ref: str) -> tuple[str, str | None, str]:
        """``(state, message_id, error)`` of a queued submission."""
        with connect(self.path) as conn:
            row = conn.execute("SELECT state, message_id, error FROM outgoing WHERE ref = ?", (ref,)).fetchone()
        if row is None:
            raise KeyError(f"no outgoing message with ref {ref!r}")
        return row["state"], row["message_id"], row["error"]


# -- the adapter's side -------------------------------------------------------------


def offer(path: Path, row: Mapping[str, object], files: Sequence[tuple[str, str, bytes]]) -> tuple[str, str]:
    """Offer one message; returns the E-Office's standing answer ``(state, reason)``.

    A message already answered keeps its answer (accepted stays accepted: exactly once);
    one the E-Office deferred, or never answered, is offered again.
    """
    with connect(path, write=True) as conn:
        existing = conn.execute(
            "SELECT state, reason FROM incoming WHERE message_id = ?", (row["message_id"],)
        ).fetchone()
        if existing is None:
            columns = ", ".join(row)
            conn.execute(
                f"INSERT INTO incoming ({columns}, offered_at) VALUES ({', '.join('?' * len(row))}, ?)",
                (*row.values(), now()),
            )
            conn.executemany(
                "INSERT INTO incoming_files (message_id, name, media_type, data) VALUES (?, ?, ?, ?)",
                [(row["message_id"], *f) for f in files],
            )
            return "offered", ""
        if existing["state"] in ("accepted", "rejected"):
            return existing["state"], existing["reason"]
        conn.execute(
            "UPDATE incoming SET state = 'offered', offers = offers + 1, offered_at = ? WHERE message_id = ?",
            (now(), row["message_id"]),
        )
        return "offered", ""


def answer(path: Path, message_id: str) -> tuple[str, str]:
    with connect(path) as conn:
        r = conn.execute("SELECT state, reason FROM incoming WHERE message_id = ?", (message_id,)).fetchone()
    return (r["state"], r["reason"]) if r else ("missing", "")


def pending_outgoing(path: Path, limit: int = 50) -> list[tuple[dict[str, object], list[tuple[str, str, bytes]]]]:
    with connect(path) as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                "SELECT * FROM outgoing WHERE state = 'new' ORDER BY created_at, ref LIMIT ?", (limit,)
            )
        ]
        return [
            (
                r,
                [
                    (f["name"], f["media_type"], bytes(f["data"]))
                    for f in conn.execute(
                        "SELECT name, media_type, data FROM outgoing_files WHERE ref = ? ORDER BY name", (r["ref"],)
                    )
                ],
            )
            for r in rows
        ]


def mark_outgoing(path: Path, ref: str, *, message_id: str | None = None, error: str = "") -> None:
    with connect(path, write=True) as conn:
        conn.execute(
            "UPDATE outgoing SET state = ?, message_id = ?, error = ? WHERE ref = ?",
            ("error" if error else "sent", message_id, error, ref),
        )
