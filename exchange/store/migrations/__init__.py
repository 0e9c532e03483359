"""The store's schema, versioned with Alembic: every database is brought to this version's head at open.

The revisions are in ``versions/`` (one file each, ``0001_baseline.py`` first); the version a
database is at is the ``alembic_version`` table. :func:`upgrade` runs on a connection the
store already holds in a write transaction, so the whole upgrade is one transaction (SQLite:
under ``BEGIN IMMEDIATE``; PostgreSQL: under an advisory lock, DDL is transactional there):
processes that open the same database together wait for one another, and the second finds
the work done. Nothing here opens connections of its own.

A database created before migrations existed (exchange up to commit 6a6adb3) has the store's
tables and no ``alembic_version``: it is recognised by its tables, brought to the baseline's
shape if it predates that too (outbox frames still inline in ``outbox.body``), stamped at the
baseline and then upgraded like any other. See docs/STORE.md, "Schema migrations".
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, inspect, text
from sqlalchemy.engine import Connection

from exchange.errors import StoreError

#: This folder: ``env.py``, the revision template and ``versions/``.
LOCATION = Path(__file__).resolve().parent
#: The first revision: the schema as exchange created it before migrations.
BASELINE = "0001"
#: The tables a database at the baseline has: how one created before migrations is recognised.
BASELINE_TABLES = frozenset(
    {
        "messages",
        "attachments",
        "deliveries",
        "timeline",
        "outbox",
        "outbox_frames",
        "inbox",
        "idempotency",
        "api_tokens",
        "journal",
    }
)
#: pg_advisory_xact_lock key held for the whole upgrade ("excsch" in ASCII; the same key the
#: store used around its schema creation before migrations, so old and new processes exclude
#: each other too).
SCHEMA_LOCK_KEY = 0x657863736368


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands against this version of exchange."""

    #: The database's revision; None when it has none (empty, or created before migrations).
    current: str | None
    #: The newest revision this version of exchange knows.
    head: str
    #: The store's tables are there without a revision: created before migrations (it is
    #: stamped at the baseline when upgraded).
    unversioned: bool = False
    #: Revisions an upgrade would run, oldest first.
    pending: tuple[str, ...] = field(default=())

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True, slots=True)
class UpgradeResult:
    """What :func:`upgrade` did."""

    before: str | None
    after: str
    #: The database had no revision and was stamped at the baseline first.
    stamped: bool
    #: The revisions that ran, oldest first.
    applied: tuple[str, ...]


def config(location: Path | None = None) -> Config:
    """An Alembic configuration for the revisions at ``location`` (default: the package's own)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(location or LOCATION))
    return cfg


@functools.lru_cache(maxsize=8)
def script(location: Path | None = None) -> ScriptDirectory:
    """The revisions (read once per process and location)."""
    return ScriptDirectory.from_config(config(location))


def head(location: Path | None = None) -> str:
    """The newest revision; StoreError if the revisions do not form one line."""
    heads = script(location).get_heads()
    if len(heads) != 1:
        raise StoreError(
            f"the store's migrations have {len(heads)} heads ({', '.join(sorted(heads))}): two revisions name the "
            "same down_revision; set one's down_revision to the other (docs/STORE.md, 'Adding a migration')"
        )
    return heads[0]


def state(conn: Connection, location: Path | None = None) -> SchemaState:
    """Where the database behind ``conn`` stands (reads only)."""
    current = MigrationContext.configure(conn).get_current_revision()
    newest = head(location)
    unversioned = current is None and bool(_store_tables(conn))
    start = BASELINE if unversioned else current  # an unversioned store is stamped at the baseline first
    _require_known(start, location)
    return SchemaState(current=current, head=newest, unversioned=unversioned, pending=_pending(start, newest, location))


def upgrade(conn: Connection, *, postgres: bool, location: Path | None = None) -> UpgradeResult:
    """Bring the database behind ``conn`` to head, in the caller's transaction (committed by the caller).

    An empty database gets every revision from the baseline on; one created before migrations
    is stamped at the baseline first. StoreError if the database is at a revision this
    version does not know (a newer exchange upgraded it).
    """
    if postgres:
        # Held to the end of the caller's transaction: processes starting together migrate once.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_KEY})
    newest = head(location)
    context = MigrationContext.configure(conn)
    before = current = context.get_current_revision()
    stamped = False
    if current is None:
        found = _store_tables(conn)
        if found:
            _adopt(conn, found)
            context.stamp(script(location), BASELINE)
            current, stamped = BASELINE, True
    _require_known(current, location)
    if current == newest:
        return UpgradeResult(before, newest, stamped, ())
    applied = _pending(current, newest, location)
    cfg = config(location)
    # env.py takes this connection (and so this transaction) from the attributes.
    cfg.attributes["connection"] = conn
    try:
        command.upgrade(cfg, newest)
    except Exception as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise StoreError(
            f"upgrading the store's schema from {current or 'empty'} to {newest} failed ({type(exc).__name__}: "
            f"{detail}); nothing was changed: fix the cause (or report it with this message) and start again"
        ) from exc
    return UpgradeResult(before, newest, stamped, applied)


def new_revision(message: str, location: Path | None = None) -> Path:
    """Write the next revision file (``NNNN_<slug>.py``, after the current head) and return its path."""
    directory = script(location)
    numbers = [int(r.revision) for r in directory.walk_revisions() if r.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40] or "revision"
    cfg = config(location)
    cfg.set_main_option("file_template", f"%%(rev)s_{slug}")  # %% : configparser interpolation
    written = command.revision(cfg, message=message, rev_id=rev_id)
    script.cache_clear()
    assert written is not None and not isinstance(written, list)
    return Path(written.path)


def _store_tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names()) & BASELINE_TABLES


def _require_known(revision: str | None, location: Path | None) -> None:
    if revision is None:
        return
    try:
        script(location).get_revision(revision)
    except CommandError:
        raise StoreError(
            f"the store's schema is at revision {revision}, which this version of exchange does not know (its newest "
            f"is {head(location)}): a newer exchange upgraded it; run that version, or restore a backup taken before "
            "the upgrade"
        ) from None


def _pending(current: str | None, newest: str, location: Path | None) -> tuple[str, ...]:
    """Revisions after ``current`` up to ``newest``, oldest first."""
    revs = [r.revision for r in script(location).iterate_revisions(newest, current or "base")]
    return tuple(reversed([r for r in revs if r != current]))


def _adopt(conn: Connection, found: set[str]) -> None:
    """Bring a database created before migrations to the baseline's shape, so it can be stamped there.

    * Outbox frames inline in ``outbox.body`` (before they moved to ``outbox_frames``, one per
      message): the waiting frames move over, the column goes.
    """
    columns = {c["name"] for c in inspect(conn).get_columns("outbox")} if "outbox" in found else set()
    if "body" in columns:
        frozen = MetaData()
        frames_table = Table(
            "outbox_frames",
            frozen,
            Column("message_id", String(64), primary_key=True),
            Column("body", LargeBinary, nullable=False),
        )
        frames_table.create(conn, checkfirst=True)
        frames: dict[str, bytes] = {}
        for r in conn.execute(text("SELECT message_id, body FROM outbox ORDER BY id")):
            frames.setdefault(r.message_id, bytes(r.body))
        if frames:
            conn.execute(frames_table.insert(), [{"message_id": m, "body": b} for m, b in frames.items()])
        conn.execute(text("ALTER TABLE outbox DROP COLUMN body"))
        if "ix_outbox_message" not in {i["name"] for i in inspect(conn).get_indexes("outbox")}:
            conn.execute(text("CREATE INDEX ix_outbox_message ON outbox (message_id)"))
        found.add("outbox_frames")
    missing = BASELINE_TABLES - found
    if missing:
        raise StoreError(
            f"the database has some of the store's tables but not {', '.join(sorted(missing))}: it was not created by "
            "exchange, or is damaged; check the [store] url (or restore a backup)"
        )
