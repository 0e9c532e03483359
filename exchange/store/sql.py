"""The one Store implementation: SQLAlchemy Core on SQLite (embedded) or PostgreSQL (clusters).

Same statements on both backends (each operation is one synchronous Core body
run in one transaction); the differences sit in a few helpers:

* SQLite (:class:`_SqliteEngine`): WAL, foreign keys, busy timeout, ``BEGIN
  IMMEDIATE`` for every write transaction (a writer never has to upgrade a read
  lock and fail with SQLITE_BUSY), one writer connection on its own thread fed
  by one writer task that commits queued writes together (group commit: one
  thread hop and one fsync per batch), and a few autocommit reader connections
  that WAL lets run alongside it.
* PostgreSQL (:class:`_PostgresEngine`): asyncpg through SQLAlchemy's async
  engine, ``FOR UPDATE SKIP LOCKED`` for competing outbox relays,
  ``pg_advisory_xact_lock`` around schema creation and around each journal
  append (several processes share one chain), retry on deadlock/serialization
  failure.

Every write method appends its journal entries as the LAST step of its
transaction: on PostgreSQL the advisory lock is then held only for "read head,
insert entries, commit", and a lock holder never waits for any other lock.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import URL, Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import TypeDecorator

from exchange.errors import NotFoundError, StoreError
from exchange.store.base import (
    Delivery,
    DeliveryState,
    Direction,
    InboxEntry,
    InboxState,
    JournalReport,
    MessageRecord,
    OutboxItem,
    Store,
    TimelineEntry,
)
from exchange.store.journal import GENESIS, ChainVerifier, JournalEvent, chain

T = TypeVar("T")

#: pg_advisory_xact_lock keys (arbitrary constants, "excjnl" / "excsch" in ASCII).
JOURNAL_LOCK_KEY = 0x6578636A6E6C
SCHEMA_LOCK_KEY = 0x657863736368

#: SQLSTATEs after which the whole transaction is simply run again.
_RETRY_SQLSTATES = frozenset({"40001", "40P01"})  # serialization_failure, deadlock_detected
_MAX_ATTEMPTS = 5


def normalize_url(url: str) -> str:
    """Map the short forms (``sqlite:///``, ``postgresql://``) to the async driver URLs.

    (SQLite statements are then run by the stdlib driver on the store's own threads; see
    :class:`_SqliteEngine`.)
    """
    for prefix, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+pysqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(prefix):
            return driver + url[len(prefix):]
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise StoreError(
        f"unsupported store URL {_safe(url)!r}: use sqlite:///path/to/exchange.db or "
        "postgresql://user@host:5432/database"
    )


def _safe(url: str) -> str:
    """The URL with any password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL has no password we could reveal reliably
        return url.split("@")[-1]


def _now() -> datetime:
    return datetime.now(UTC)


# -- schema --------------------------------------------------------------------------------------


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite stores naive UTC text that sorts correctly)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store only accepts timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Auto-increment keys: BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

messages = Table(
    "messages", metadata,
    Column("message_id", String(64), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("sender", String(32), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON array of agency codes
    Column("created_at", UtcDateTime, nullable=False),
    Column("stored_at", UtcDateTime, nullable=False),
    Column("envelope_xml", LargeBinary, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("subject", Text, nullable=False, default=""),
    Column("relates_to", String(64)),
    Column("correlation_id", String(128), nullable=False, default=""),
    Column("document_id", String(256), nullable=False, default=""),
    PrimaryKeyConstraint("message_id", "direction", name="pk_messages"),
    Index("ix_messages_sent", "sender", "direction", "created_at"),
    Index("ix_messages_document_id", "document_id", "direction"),
)

attachments = Table(
    "attachments", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("stored_at", UtcDateTime, nullable=False),
)

deliveries = Table(
    "deliveries", metadata,
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("status_code", String(4)),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("message_id", "recipient", name="pk_deliveries"),
    Index("ix_deliveries_state", "state"),
)

timeline = Table(
    "timeline", metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("event", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("status_code", String(4)),
    Column("detail", Text, nullable=False, default=""),
    ForeignKeyConstraint(["message_id", "recipient"], ["deliveries.message_id", "deliveries.recipient"],
                         name="fk_timeline_delivery"),
    Index("ix_timeline_message", "message_id", "at"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("routing_key", String(128), nullable=False),
    Column("headers", Text, nullable=False, default="{}"),  # JSON object
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("lease_until", Float),  # epoch seconds; NULL = free
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_outbox_claim", "priority", "id"),
    Index("ix_outbox_message", "message_id"),
)

# The transport frame of a message waiting in the outbox, once for all its recipients. Kept
# apart from the outbox rows, which a claim or a release updates: SQLite rewrites a whole row
# on UPDATE, and a frame is the size of the document (measured: leasing 100 rows of 70 KB with
# the frame inline wrote 7 MB to the WAL).
outbox_frames = Table(
    "outbox_frames", metadata,
    Column("message_id", String(64), primary_key=True),
    Column("body", LargeBinary, nullable=False),
)

inbox = Table(
    "inbox", metadata,
    Column("agency", String(32), nullable=False),
    Column("message_id", String(64), nullable=False),
    # Paging cursor, assigned at hand-over (= that journal entry's seq): the order in which
    # entries became visible, so a client paging with after_seq never skips one.
    Column("seq", BigInteger, unique=True),
    Column("state", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("sender", String(32), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("received_at", UtcDateTime, nullable=False),
    Column("handed_at", UtcDateTime),
    Column("acked_at", UtcDateTime),
    Column("reason", Text, nullable=False, default=""),
    PrimaryKeyConstraint("agency", "message_id", name="pk_inbox"),
    Index("ix_inbox_agency_seq", "agency", "seq"),
)

idempotency = Table(
    "idempotency", metadata,
    Column("sender", String(32), nullable=False),
    Column("key", String(200), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("sender", "key", name="pk_idempotency"),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("token_hash", String(128), primary_key=True),
    Column("agency", String(32), nullable=False),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
)

journal = Table(
    "journal", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("event", Text, nullable=False),  # canonical JSON, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# Delivery states a move to the key state may start from: SUBMITTED < QUEUED < DELIVERED,
# DELIVERED and FAILED terminal. Anything else is recorded in the timeline only.
_ENTER_FROM: dict[DeliveryState, frozenset[DeliveryState]] = {
    DeliveryState.SUBMITTED: frozenset(),
    DeliveryState.QUEUED: frozenset({DeliveryState.SUBMITTED}),
    DeliveryState.DELIVERED: frozenset({DeliveryState.SUBMITTED, DeliveryState.QUEUED}),
    DeliveryState.FAILED: frozenset({DeliveryState.SUBMITTED, DeliveryState.QUEUED}),
}

_INBOX_ENTER_FROM: dict[InboxState, tuple[str, ...]] = {
    InboxState.HANDED_OVER: (InboxState.RECEIVED.value,),
    InboxState.FAILED: (InboxState.RECEIVED.value,),
    InboxState.ACKED: (InboxState.RECEIVED.value, InboxState.HANDED_OVER.value),
}

_VISIBLE = (InboxState.HANDED_OVER.value, InboxState.ACKED.value)
_CLOSED = frozenset({DeliveryState.DELIVERED.value, DeliveryState.FAILED.value})


def insert_ignore(table: Table, conflict: Sequence[str], returning: str | None = None) -> TextClause:
    """``INSERT ... ON CONFLICT (...) DO NOTHING [RETURNING col]`` as one cacheable statement.

    The syntax is the same on SQLite (>= 3.24; RETURNING >= 3.35) and PostgreSQL. It is written
    as typed ``text()`` because SQLAlchemy 2.0 cannot cache the dialect ``on_conflict_do_nothing()``
    constructs and would recompile them on every call of the hot path.
    """
    cols = [c for c in table.columns if not (c.primary_key and c.autoincrement is True)]
    names = ", ".join(f'"{c.name}"' for c in cols)
    values = ", ".join(f":{c.name}" for c in cols)
    sql = (f'INSERT INTO "{table.name}" ({names}) VALUES ({values}) '
           f'ON CONFLICT ({", ".join(chr(34) + c + chr(34) for c in conflict)}) DO NOTHING')
    clause = text(sql + (f' RETURNING "{returning}"' if returning else ""))
    clause = clause.bindparams(*(bindparam(c.name, type_=c.type) for c in cols))
    return clause.columns(table.c[returning]) if returning else clause  # type: ignore[return-value]


_INSERT_MESSAGE = insert_ignore(messages, ["message_id", "direction"], "message_id")
_INSERT_ATTACHMENT = insert_ignore(attachments, ["sha256"])
_INSERT_INBOX = insert_ignore(inbox, ["agency", "message_id"], "message_id")
_INSERT_IDEMPOTENCY = insert_ignore(idempotency, ["sender", "key"], "message_id")

# The hot paths' statements, built once. SQLAlchemy caches compiled SQL either way, but building a
# statement and computing its cache key on every call cost 150-200 µs; a prebuilt one with bind
# parameters costs 40-50 µs (measured on SQLite), and a document takes ~40 statements end to end.
_P = bindparam
_INSERT_DELIVERY = deliveries.insert()
_INSERT_TIMELINE = timeline.insert()
_INSERT_OUTBOX = outbox.insert()
_INSERT_FRAME = outbox_frames.insert()
_INSERT_JOURNAL = journal.insert()
_PRESENT_ATTACHMENTS = select(attachments.c.sha256).where(attachments.c.sha256.in_(_P("shas", expanding=True)))
_SET_INBOX_SEQ = update(inbox).where(inbox.c.agency == _P("a"), inbox.c.message_id == _P("m")).values(seq=_P("seq"))
_INBOX_STATE = select(inbox.c.state).where(inbox.c.agency == _P("a"), inbox.c.message_id == _P("m"))
#: complete_incoming's UPDATE, per target state (each sets its own time column).
_COMPLETE_INBOX = {
    state: update(inbox)
    .where(inbox.c.agency == _P("a"), inbox.c.message_id == _P("m"), inbox.c.state.in_(_INBOX_ENTER_FROM[state]))
    .values(state=state.value, reason=_P("reason"),
            **({"handed_at": _P("now")} if state is InboxState.HANDED_OVER else
               {"acked_at": _P("now")} if state is InboxState.ACKED else {}))
    .returning(inbox.c.message_id)
    for state in _INBOX_ENTER_FROM
}
_DELIVERY_KEY = (deliveries.c.message_id == _P("m"), deliveries.c.recipient == _P("r"))
_DELIVERY_STATE = select(deliveries.c.state).where(*_DELIVERY_KEY)
_DELIVERY_STATE_FOR_UPDATE = _DELIVERY_STATE.with_for_update()
_LATEST_STATUS_AT = select(func.max(timeline.c.at)).where(
    timeline.c.message_id == _P("m"), timeline.c.recipient == _P("r"), timeline.c.status_code.is_not(None))
_DELIVERIES_OF = select(deliveries).where(deliveries.c.message_id == _P("m")).order_by(deliveries.c.recipient)
_MESSAGE_BY_ID = select(messages).where(messages.c.message_id == _P("m"))
_MESSAGE_BY_ID_DIR = select(messages).where(messages.c.message_id == _P("m"), messages.c.direction == _P("d"))


class _Rollback(Exception):
    """Raised inside a write to roll it back and still return ``value`` to the caller."""

    def __init__(self, value: object) -> None:
        super().__init__("rollback")
        self.value = value


@dataclass(slots=True)
class _Pending:
    """What one write transaction will journal at its end."""

    events: list[JournalEvent] = field(default_factory=list)
    #: (index into events, agency, message_id): inbox entries whose paging cursor is that entry's seq.
    cursors: list[tuple[int, str, str]] = field(default_factory=list)


# -- engines: the only place the two backends differ in how statements reach the database ----------


class _Engine:
    """Runs a synchronous transaction body (``fn(conn) -> T``) against the database."""

    async def write(self, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError

    async def read(self, fn: Callable[[Connection], T]) -> T:
        raise NotImplementedError

    async def dispose(self) -> None:
        raise NotImplementedError


class _PostgresEngine(_Engine):
    """asyncpg through SQLAlchemy's async engine; bodies run in its greenlet via ``run_sync``."""

    def __init__(self, url: URL, pool_size: int) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
            connect_args={"server_settings": {"application_name": "exchange"}},
        )

    async def write(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(fn)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        async with self.engine.connect() as conn:
            return await conn.run_sync(fn)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _ensure_wal(cur: Any, timeout: float) -> None:
    """Switch the database file to WAL (persistent), waiting out other connections doing the same.

    Changing the journal mode needs an exclusive lock and SQLite may refuse it at once, without
    calling the busy handler, while other connections (other processes opening the same new
    file) hold locks; so retry until ``timeout``. Runs on a store thread, never on the loop.
    """
    deadline = time.monotonic() + timeout
    while True:
        if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
            return
        try:
            cur.execute("PRAGMA journal_mode=WAL").fetchall()
            return  # in-memory databases answer "memory": nothing more to do
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


#: Key of a dict in ``Connection.info`` that the SQLite engine empties at every BEGIN and every
#: savepoint rollback: facts a body may reuse for the rest of the same transaction.
TX_CACHE = "exchange.tx_cache"


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _settle(batch: Sequence[tuple[Any, asyncio.Future[Any]]], outcomes: Sequence[tuple[bool, Any]]) -> None:
    for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
        if future.done():
            continue  # its caller was cancelled while the batch ran; the write stands
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _settle_from(done: asyncio.Future[list[tuple[bool, Any]]],
                 batch: Sequence[tuple[Any, asyncio.Future[Any]]]) -> None:
    if done.cancelled():
        outcomes: Sequence[tuple[bool, Any]] = [(False, StoreError("the store's write was cancelled"))] * len(batch)
    elif done.exception() is not None:
        outcomes = [(False, done.exception())] * len(batch)
    else:
        outcomes = done.result()
    _settle(batch, outcomes)


class _SqliteEngine(_Engine):
    """SQLite's stdlib driver, a whole transaction per hop to a dedicated thread.

    One writer connection on one thread fed by one writer task that commits queued writes
    together (group commit; SQLite has a single writer, and queueing here is cheaper than in its
    busy handler), and a few reader connections on their own threads that WAL lets run beside
    it. Each store thread keeps its own connection. Running whole bodies in the thread costs one
    thread hop per batch; an async driver costs several per statement (measured: about 5x).
    """

    #: Most writes per batch (bounds how long one COMMIT keeps its first caller waiting).
    max_batch = 128

    def __init__(self, url: URL, *, synchronous: str, busy_timeout: float, readers: int = 4) -> None:
        url = url.set(drivername="sqlite+pysqlite")
        database = url.database or ""
        memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
        args = {"timeout": busy_timeout, "check_same_thread": False}
        pragmas = (
            f"PRAGMA busy_timeout={int(busy_timeout * 1000)}",
            "PRAGMA foreign_keys=ON",
            # Debian builds SQLite with secure_delete ON, which zeroes every freed page: 70 KB
            # written for each outbox frame dropped after its publish (a copy of bytes the store
            # keeps anyway). FAST still zeroes freed content where it costs no extra I/O.
            "PRAGMA secure_delete=FAST",
            f"PRAGMA synchronous={synchronous}",
        )

        def on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (it would BEGIN DEFERRED lazily).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            try:
                for pragma in pragmas:
                    cur.execute(pragma)
                _ensure_wal(cur, busy_timeout)
            finally:
                cur.close()

        if memory:
            # One shared connection: a second connection would open a second, empty database.
            self.writer = create_engine(url, poolclass=StaticPool, connect_args=args)
            self.reader = self.writer
        else:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.writer = create_engine(url, pool_size=1, max_overflow=0, connect_args=args)
            self.reader = create_engine(url, pool_size=readers, max_overflow=0, connect_args=args)
            event.listen(self.reader, "connect", on_connect)
            # Readers never BEGIN: each SELECT reads its own consistent snapshot (autocommit).
        event.listen(self.writer, "connect", on_connect)
        # Take the write lock up front: a deferred transaction that reads, then writes, can fail
        # with SQLITE_BUSY without the busy handler ever being consulted.
        event.listen(self.writer, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        self._queue: deque[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._local = threading.local()
        self._opened: list[Connection] = []
        self._opened_lock = threading.Lock()
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="store-write")
        self._read_threads = (self._write_thread if memory
                              else ThreadPoolExecutor(readers, thread_name_prefix="store-read"))
        self._memory = memory

    def _connection(self, engine: Any) -> Connection:
        """This thread's own connection to ``engine``, opened on first use and kept.

        Checking a connection out of SQLAlchemy's pool and back in (with its reset) costs
        more than a small transaction's statements; each store thread keeps one instead.
        """
        mine: dict[int, Connection] = self._local.__dict__.setdefault("connections", {})
        conn = mine.get(id(engine))
        if conn is None or conn.closed or conn.invalidated:
            conn = mine[id(engine)] = engine.connect()
            with self._opened_lock:
                self._opened.append(conn)
        return conn

    def _run_write(self, fn: Callable[[Connection], T]) -> T:
        conn = self._connection(self.writer)
        conn.info[TX_CACHE] = {}
        try:
            with conn.begin():
                return fn(conn)
        except BaseException:
            self._drop_if_broken(conn)
            raise

    def _run_read(self, fn: Callable[[Connection], T]) -> T:
        conn = self._connection(self.reader)
        try:
            return fn(conn)
        except BaseException:
            self._drop_if_broken(conn)
            raise
        finally:
            if not conn.closed:
                # End SQLAlchemy's autobegun transaction: no SQL is sent (the driver is in
                # autocommit mode), and the next read starts from a fresh snapshot.
                conn.rollback()

    @staticmethod
    def _drop_if_broken(conn: Connection) -> None:
        if conn.invalidated:
            conn.close()  # _connection opens a new one next time

    def _run_batch(self, fns: list[Callable[[Connection], Any]]) -> list[tuple[bool, Any]]:
        """Group commit: all bodies in one transaction, one COMMIT for all.

        First all together, as they almost always succeed. If one raises (a duplicate's
        rollback, a constraint), the transaction is rolled back and the batch runs again with
        each body in its own savepoint, so that body's work alone is undone; its outcome is
        its exception. (Bodies are re-runnable: PostgreSQL retries whole transactions too.)
        If BEGIN or COMMIT fails, nothing was written and every body gets that failure.
        """
        if len(fns) == 1:
            try:
                return [(True, self._run_write(fns[0]))]
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                return [(False, exc)]
        try:
            return [(True, value) for value in self._run_write(lambda conn: [fn(conn) for fn in fns])]
        except Exception:  # noqa: BLE001 - find out whose, below; nothing was written
            pass
        outcomes: list[tuple[bool, Any]] = []

        def each(conn: Connection) -> None:
            for fn in fns:
                savepoint = conn.begin_nested()
                try:
                    value = fn(conn)
                except Exception as exc:  # noqa: BLE001 - this body's outcome; the others go on
                    savepoint.rollback()
                    conn.info[TX_CACHE] = {}  # what it cached may have been rolled back with it
                    outcomes.append((False, exc))
                else:
                    savepoint.commit()
                    outcomes.append((True, value))

        try:
            self._run_write(each)
        except Exception as exc:  # noqa: BLE001 - BEGIN or COMMIT failed: nothing was written
            return [(False, exc)] * len(fns)
        return outcomes

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn`` in a write transaction, together with the writes queued beside it.

        SQLite has one writer, and a COMMIT (an fsync) and the hop to the writer thread cost
        more than a small transaction's statements. So writes queue, and one writer task runs
        whatever has queued as one batch under one COMMIT (see :meth:`_run_batch` for how one
        failing body is kept from undoing the others). Each caller learns its own outcome only
        after that COMMIT, so nothing is acknowledged before it is durable. A caller cancelled
        before its batch starts is skipped; once started, its write completes (as a thread's
        work always did).
        """
        if self._closed:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((fn, future))
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write_loop(), name="store-group-commit")
        assert self._wake is not None
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        """The one writer: takes everything queued, runs it as one batch, settles every caller."""
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        while True:
            if not self._queue:
                if self._closed:
                    return
                wake.clear()
                await wake.wait()
                continue
            batch = []
            while self._queue and len(batch) < self.max_batch:
                fn, future = self._queue.popleft()
                if future.get_loop() is not loop:
                    future.get_loop().call_soon_threadsafe(_fail, future, StoreError(
                        "the store was used from another event loop; open one store per loop"))
                elif not future.done():  # a caller cancelled before its batch started
                    batch.append((fn, future))
            if not batch:
                continue
            try:
                running = loop.run_in_executor(self._write_thread, self._run_batch, [fn for fn, _ in batch])
            except RuntimeError as exc:  # the executor is shut down: the store was closed
                _settle(batch, [(False, StoreError(f"the store is closed ({exc})"))] * len(batch))
                continue
            # Whatever happens to this task, the batch runs to its end in its thread and its
            # callers are settled with what it did.
            running.add_done_callback(lambda done, batch=batch: _settle_from(done, batch))
            try:
                await asyncio.wait([running])
            except asyncio.CancelledError:
                raise  # (the callback above still settles this batch's callers)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        if self._memory:
            return await self.write(fn)
        return await asyncio.get_running_loop().run_in_executor(self._read_threads, self._run_read, fn)

    async def dispose(self) -> None:
        self._closed = True
        writer = self._writer
        if writer is not None and not writer.done() and writer.get_loop() is asyncio.get_running_loop():
            assert self._wake is not None
            self._wake.set()
            await writer  # finishes what is queued, then returns
        while self._queue:
            _fail(self._queue.popleft()[1], StoreError("the store was closed before this write ran"))

        def close() -> None:
            with self._opened_lock:
                opened, self._opened = self._opened, []
            for conn in opened:
                conn.close()
            self.writer.dispose()
            self.reader.dispose()

        await asyncio.get_running_loop().run_in_executor(self._write_thread, close)
        self._write_thread.shutdown(wait=False)
        self._read_threads.shutdown(wait=False)


# -- the store -------------------------------------------------------------------------------------


def _inbox_entry(r: Any) -> InboxEntry:
    return InboxEntry(agency=r.agency, message_id=r.message_id, kind=r.kind, sender=r.sender,
                      state=InboxState(r.state), received_at=r.received_at, subject=r.subject,
                      priority=r.priority, acked_at=r.acked_at, seq=r.seq)


class SqlStore(Store):
    """:class:`~exchange.store.base.Store` on SQLite or PostgreSQL, with the same statements on both.

    Each operation is one synchronous SQLAlchemy Core body run in one transaction by the
    backend's :class:`_Engine`; write bodies collect journal events that are chained and
    inserted as the transaction's last step.
    """

    def __init__(self, url: str, *, pool_size: int = 10, busy_timeout: float = 30.0) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        self._pool_size = pool_size
        self._busy_timeout = busy_timeout
        self._synchronous = "FULL"
        if not self.is_postgres:
            sync = parsed.query.get("synchronous")
            if sync:
                value = str(sync).upper()
                if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
                    raise StoreError(f"store URL: synchronous={sync!r}; use normal, full or extra")
                self._synchronous = value
                parsed = parsed.difference_update_query(["synchronous"])
        self._url = parsed
        self._engine: _Engine | None = None

    def __repr__(self) -> str:
        return f"SqlStore({_safe(self.url)!r})"

    # -- transactions -------------------------------------------------------------------------

    def _require(self) -> _Engine:
        if self._engine is None:
            raise StoreError("the store is not open; call open() first")
        return self._engine

    async def _write(self, fn: Callable[[Connection, _Pending], T]) -> T:
        """Run ``fn`` in one write transaction, append its journal entries, commit.

        ``fn`` may raise :class:`_Rollback` to write nothing and return a value. The whole
        transaction is retried on a PostgreSQL deadlock / serialization failure or a dropped
        connection; any other database failure becomes :class:`StoreError`.
        """
        engine = self._require()

        def body(conn: Connection) -> T:
            pending = _Pending()
            result = fn(conn, pending)
            if pending.events:
                self._append_journal(conn, pending)
            return result

        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                return await engine.write(body)
            except _Rollback as rb:
                return rb.value  # type: ignore[return-value]
            except DBAPIError as exc:
                if attempt < _MAX_ATTEMPTS and self._retryable(exc):
                    await asyncio.sleep(0.01 * 2 ** attempt)
                    continue
                raise self._store_error(exc) from exc
            except SQLAlchemyError as exc:
                raise self._store_error(exc) from exc
        raise AssertionError("unreachable")

    async def _read(self, fn: Callable[[Connection], T]) -> T:
        """Run queries (SQLite: on a reader connection beside the writer)."""
        try:
            return await self._require().read(fn)
        except SQLAlchemyError as exc:
            raise self._store_error(exc) from exc

    @staticmethod
    def _retryable(exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        return code in _RETRY_SQLSTATES

    def _store_error(self, exc: Exception) -> StoreError:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:300]
        return StoreError(
            f"the store at {_safe(self.url)} failed ({type(exc).__name__}: {detail}); "
            "check that the database is reachable and writable, then retry",
        )

    def _append_journal(self, conn: Connection, pending: _Pending) -> None:
        """Chain the pending events after the head. Must be the transaction's last step."""
        if self.is_postgres:
            # Serialize appenders across processes; released at commit. On SQLite, BEGIN
            # IMMEDIATE already holds the database's write lock.
            conn.execute(_ADVISORY_LOCK, {"k": JOURNAL_LOCK_KEY})
        # Within one SQLite transaction (a group-commit batch) only this connection writes, so
        # the head it appended last is still the head: the engine keeps it in TX_CACHE, which it
        # empties at every BEGIN and every savepoint rollback.
        cache = conn.info.get(TX_CACHE)
        head = cache.get("journal_head") if cache is not None else None
        if head is None:
            row = conn.execute(_JOURNAL_HEAD).first()
            head = (row.seq, row.hash) if row else (0, GENESIS)
        entries = chain(pending.events, head_seq=head[0], head_hash=head[1], at=_now())
        rows = [{"seq": e.seq, "at": e.at, "event": e.event, "prev_hash": e.prev_hash, "hash": e.hash}
                for e in entries]
        conn.execute(_INSERT_JOURNAL, rows[0] if len(rows) == 1 else rows)
        if cache is not None:
            cache["journal_head"] = (entries[-1].seq, entries[-1].hash)
        # Allocated under the journal lock, so cursors grow in commit order: a client paging with
        # after_seq cannot skip an entry that committed late.
        for index, agency, message_id in pending.cursors:
            conn.execute(_SET_INBOX_SEQ, {"a": agency, "m": message_id, "seq": entries[index].seq})

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and create the schema if missing (safe when several processes open at once)."""
        if self._engine is not None:
            return
        try:
            if self.is_postgres:
                self._engine = _PostgresEngine(self._url, self._pool_size)
            else:
                self._engine = _SqliteEngine(self._url, synchronous=self._synchronous,
                                             busy_timeout=self._busy_timeout)
        except OSError as exc:
            raise StoreError(f"cannot open the store at {_safe(self.url)}: {exc}") from exc

        def create(conn: Connection) -> None:
            if self.is_postgres:
                conn.execute(_ADVISORY_LOCK, {"k": SCHEMA_LOCK_KEY})  # DDL is transactional there
            metadata.create_all(conn)
            _upgrade(conn)

        try:
            await self._engine.write(create)
        except SQLAlchemyError as exc:
            await self.close()
            raise self._store_error(exc) from exc

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    async def ping(self) -> None:
        await self._read(lambda conn: conn.execute(select(literal(1))).scalar_one())

    # -- sending -----------------------------------------------------------------------------

    async def accept_outgoing(
        self,
        message: MessageRecord,
        outbox: Sequence[OutboxItem],
        *,
        attachments: Mapping[str, bytes] | None = None,
        idempotency_key: str | None = None,
        track: bool = True,
    ) -> tuple[str, bool]:
        def tx(conn: Connection, pending: _Pending) -> tuple[str, bool]:
            if idempotency_key is not None:
                taken = conn.execute(_INSERT_IDEMPOTENCY, {
                    "sender": message.sender, "key": idempotency_key, "message_id": message.message_id,
                    "created_at": _now(),
                }).first()
                if taken is None:  # used before (PostgreSQL: waits for a racing first use to commit)
                    earlier = conn.execute(
                        select(idempotency.c.message_id)
                        .where(idempotency.c.sender == message.sender, idempotency.c.key == idempotency_key)
                    ).scalar_one()
                    raise _Rollback((earlier, False))
            if not self._store_outgoing(conn, pending, message, outbox, attachments, track):
                raise _Rollback((message.message_id, False))
            return message.message_id, True

        return await self._write(tx)

    def _store_outgoing(
        self,
        conn: Connection,
        pending: _Pending,
        message: MessageRecord,
        items: Sequence[OutboxItem],
        attachment_data: Mapping[str, bytes] | None,
        track: bool,
    ) -> bool:
        """Message, attachments, deliveries, outbox rows; False if the message was already stored."""
        if message.direction is not Direction.OUT:
            raise ValueError("accept_outgoing takes messages with direction OUT")
        now = _now()
        if not self._insert_message(conn, message, now):
            return False
        shas = self._store_attachments(conn, attachment_data, now)
        recipients = list(dict.fromkeys(message.recipients))
        if track and recipients:
            conn.execute(_INSERT_DELIVERY, [
                {"message_id": message.message_id, "recipient": r, "state": DeliveryState.SUBMITTED.value,
                 "status_code": None, "reason": "", "updated_at": now} for r in recipients
            ])
            conn.execute(_INSERT_TIMELINE, [
                {"message_id": message.message_id, "recipient": r, "event": DeliveryState.SUBMITTED.value,
                 "at": now, "status_code": None, "detail": ""} for r in recipients
            ])
        if items:
            if any(i.message_id != message.message_id or i.body != items[0].body for i in items):
                raise ValueError("outbox items of one message carry that message's id and the same frame")
            conn.execute(_INSERT_FRAME, {"message_id": message.message_id, "body": items[0].body})
            conn.execute(_INSERT_OUTBOX, [
                {"message_id": i.message_id, "recipient": i.recipient, "routing_key": i.routing_key,
                 "headers": json.dumps(dict(i.headers), separators=(",", ":")),
                 "priority": i.priority, "created_at": now, "lease_until": None, "attempts": 0}
                for i in items
            ])
        pending.events.append(JournalEvent("accept_outgoing", message.message_id, None, {
            "kind": message.kind, "operation": message.operation, "sender": message.sender,
            "recipients": list(message.recipients), "digest": message.digest,
            "relates_to": message.relates_to, "attachments": shas, "tracked": track,
            "outbox": [i.recipient for i in items],
        }))
        return True

    @staticmethod
    def _insert_message(conn: Connection, m: MessageRecord, now: datetime) -> bool:
        return conn.execute(_INSERT_MESSAGE, {
            "message_id": m.message_id, "direction": m.direction.value, "kind": m.kind,
            "operation": m.operation, "sender": m.sender,
            "recipients": json.dumps(list(m.recipients), separators=(",", ":")),
            "created_at": m.created_at, "stored_at": now, "envelope_xml": m.envelope_xml, "digest": m.digest,
            "priority": m.priority, "subject": m.subject, "relates_to": m.relates_to,
            "correlation_id": m.correlation_id, "document_id": m.document_id,
        }).first() is not None

    @staticmethod
    def _store_attachments(conn: Connection, data: Mapping[str, bytes] | None, now: datetime) -> list[str]:
        """Content-addressed: bytes already stored under the same SHA-256 are not sent again."""
        if not data:
            return []
        shas = sorted(data)
        present = set(conn.execute(_PRESENT_ATTACHMENTS, {"shas": shas}).scalars())
        missing = [s for s in shas if s not in present]
        if missing:
            conn.execute(_INSERT_ATTACHMENT, [
                {"sha256": s, "size": len(data[s]), "data": data[s], "stored_at": now} for s in missing
            ])
        return shas

    async def claim_outbox(self, limit: int, *, lease_seconds: float = 30.0) -> list[OutboxItem]:
        """Unleased items, most urgent priority first, then oldest; leased for ``lease_seconds``."""
        if limit <= 0:
            return []

        def tx(conn: Connection, _pending: _Pending) -> list[OutboxItem]:
            now = time.time()
            candidates = (
                select(outbox.c.id)
                .where(or_(outbox.c.lease_until.is_(None), outbox.c.lease_until < now))
                .order_by(outbox.c.priority.desc(), outbox.c.id)
                .limit(limit)
            )
            if self.is_postgres:
                # Competing relays (other processes) skip each other's rows instead of waiting.
                candidates = candidates.with_for_update(skip_locked=True)
            chosen = candidates.cte("chosen")
            rows = conn.execute(
                update(outbox).where(outbox.c.id.in_(select(chosen.c.id)))
                .values(lease_until=now + lease_seconds)
                .returning(*outbox.c)
            ).all()
            rows.sort(key=lambda r: (-r.priority, r.id))
            frames = {f.message_id: bytes(f.body) for f in conn.execute(
                select(outbox_frames).where(outbox_frames.c.message_id.in_({r.message_id for r in rows})))}
            return [OutboxItem(
                message_id=r.message_id, recipient=r.recipient, routing_key=r.routing_key, body=frames[r.message_id],
                headers=json.loads(r.headers), priority=r.priority, id=r.id, created_at=r.created_at,
                attempts=r.attempts,
            ) for r in rows]

        return await self._write(tx)

    async def mark_published(self, ids: Sequence[int]) -> None:
        """Drop confirmed items; tracked SUBMITTED deliveries move to QUEUED (ids already gone are ignored)."""
        if not ids:
            return

        def tx(conn: Connection, pending: _Pending) -> None:
            gone = conn.execute(
                delete(outbox).where(outbox.c.id.in_(list(ids)))
                .returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient)
            ).all()
            if not gone:
                return
            gone.sort(key=lambda r: r.id)
            conn.execute(delete(outbox_frames).where(
                outbox_frames.c.message_id.in_({r.message_id for r in gone}),
                ~select(outbox.c.id).where(outbox.c.message_id == outbox_frames.c.message_id).exists()))
            pairs = list(dict.fromkeys((r.message_id, r.recipient) for r in gone))
            now = _now()
            key = tuple_(deliveries.c.message_id, deliveries.c.recipient)
            moved = {(r.message_id, r.recipient) for r in conn.execute(
                update(deliveries)
                .where(key.in_(pairs), deliveries.c.state == DeliveryState.SUBMITTED.value)
                .values(state=DeliveryState.QUEUED.value, updated_at=now)
                .returning(deliveries.c.message_id, deliveries.c.recipient)
            )}
            # Timeline rows for tracked deliveries only, whatever their state (a receipt may have won the race).
            conn.execute(timeline.insert().from_select(
                ["message_id", "recipient", "event", "at", "status_code", "detail"],
                select(deliveries.c.message_id, deliveries.c.recipient,
                       literal(DeliveryState.QUEUED.value, String()), literal(now, UtcDateTime()),
                       literal(None, String()), literal("", Text()))
                .where(key.in_(pairs)),
            ))
            pending.events.extend(
                JournalEvent("published", r.message_id, r.recipient,
                             {"state": DeliveryState.QUEUED.value} if (r.message_id, r.recipient) in moved else {})
                for r in gone
            )

        await self._write(tx)

    async def release_outbox(self, ids: Sequence[int]) -> None:
        if not ids:
            return

        def tx(conn: Connection, pending: _Pending) -> None:
            rows = conn.execute(
                update(outbox).where(outbox.c.id.in_(list(ids)))
                .values(lease_until=None, attempts=outbox.c.attempts + 1)
                .returning(outbox.c.id, outbox.c.message_id, outbox.c.recipient, outbox.c.attempts)
            ).all()
            pending.events.extend(
                JournalEvent("released", r.message_id, r.recipient, {"attempts": r.attempts})
                for r in sorted(rows, key=lambda r: r.id)
            )

        await self._write(tx)

    async def outbox_stats(self) -> tuple[int, float | None]:
        row = await self._read(lambda conn: conn.execute(
            select(func.count(), func.min(outbox.c.created_at))).one())
        count, oldest = row[0], row[1]
        if oldest is None:
            return int(count), None
        if isinstance(oldest, str):  # SQLite may hand back the aggregate as raw text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
        return int(count), max(0.0, (_now() - oldest).total_seconds())

    # -- receiving ---------------------------------------------------------------------------

    async def accept_incoming(
        self, message: MessageRecord, recipient: str, *, attachments: Mapping[str, bytes] | None = None
    ) -> bool:
        if message.direction is not Direction.IN:
            raise ValueError("accept_incoming takes messages with direction IN")

        def tx(conn: Connection, pending: _Pending) -> bool:
            now = _now()
            taken = conn.execute(_INSERT_INBOX, {
                "agency": recipient, "message_id": message.message_id, "seq": None,
                "state": InboxState.RECEIVED.value, "kind": message.kind, "sender": message.sender,
                "subject": message.subject, "priority": message.priority, "received_at": now,
                "handed_at": None, "acked_at": None, "reason": "",
            }).first()
            if taken is None:
                raise _Rollback(False)  # the dedupe key: seen before, write nothing
            self._insert_message(conn, message, now)  # one row shared by all hosted recipients
            shas = self._store_attachments(conn, attachments, now)
            pending.events.append(JournalEvent("accept_incoming", message.message_id, recipient, {
                "kind": message.kind, "operation": message.operation, "sender": message.sender,
                "digest": message.digest, "relates_to": message.relates_to, "attachments": shas,
            }))
            return True

        return await self._write(tx)

    async def incoming_state(self, message_id: str, recipient: str) -> InboxState | None:
        state = await self._read(lambda conn: conn.execute(
            _INBOX_STATE, {"a": recipient, "m": message_id}).scalar_one_or_none())
        return InboxState(state) if state is not None else None

    async def complete_incoming(
        self,
        message_id: str,
        recipient: str,
        state: InboxState,
        *,
        receipt: tuple[MessageRecord, OutboxItem] | None = None,
        reason: str = "",
    ) -> None:
        """Move RECEIVED to HANDED_OVER, FAILED or ACKED (HANDED_OVER to ACKED) and enqueue the receipt.

        A repeated completion leaves the state as it is but still enqueues the receipt.
        Raises NotFoundError if the pair was never accepted.
        """
        if state not in _INBOX_ENTER_FROM:
            raise ValueError(f"complete_incoming cannot move an incoming message to {state.value}")

        def tx(conn: Connection, pending: _Pending) -> None:
            key = {"a": recipient, "m": message_id}
            row = conn.execute(_COMPLETE_INBOX[state], {**key, "reason": reason, "now": _now()}).first()
            if row is None:
                if conn.execute(_INBOX_STATE, key).first() is None:
                    raise NotFoundError(f"no incoming message {message_id} for {recipient} was recorded")
            else:
                data: dict[str, Any] = {"state": state.value}
                if reason:
                    data["reason"] = reason[:500]
                if receipt is not None:
                    data["receipt"] = receipt[0].message_id
                if state is InboxState.HANDED_OVER:
                    pending.cursors.append((len(pending.events), recipient, message_id))
                pending.events.append(JournalEvent("complete_incoming", message_id, recipient, data))
            if receipt is not None:
                self._store_outgoing(conn, pending, receipt[0], [receipt[1]], None, track=False)

        await self._write(tx)

    # -- sender-side tracking -------------------------------------------------------------------

    async def record_event(
        self,
        message_id: str,
        recipient: str,
        event: str,
        *,
        at: datetime,
        state: DeliveryState | None = None,
        status_code: str | None = None,
        detail: str = "",
        only_if_open: bool = False,
    ) -> bool:
        """Timeline always; state only forward (SUBMITTED < QUEUED < DELIVERED, FAILED and DELIVERED terminal)."""
        def tx(conn: Connection, pending: _Pending) -> bool:
            where = (deliveries.c.message_id == message_id, deliveries.c.recipient == recipient)
            key = {"m": message_id, "r": recipient}
            # SQLite: BEGIN IMMEDIATE already excludes other writers.
            query = _DELIVERY_STATE_FOR_UPDATE if self.is_postgres else _DELIVERY_STATE
            current = conn.execute(query, key).scalar_one_or_none()
            if current is None or only_if_open and current in _CLOSED:
                raise _Rollback(False)
            values: dict[str, Any] = {}
            moved = state is not None and DeliveryState(current) in _ENTER_FROM[state]
            if moved:
                assert state is not None
                values.update(state=state.value, updated_at=at)
                if state is DeliveryState.FAILED:
                    values["reason"] = detail
            if status_code is not None:
                # Statuses may arrive out of order (each travels on its own): the current one is
                # the latest by the time the recipient set it, not the last to arrive.
                latest = conn.execute(_LATEST_STATUS_AT, key).scalar_one_or_none()
                if latest is None or at >= latest:
                    values.update(status_code=status_code, updated_at=at)
            if values:
                conn.execute(update(deliveries).where(*where).values(**values))
            conn.execute(_INSERT_TIMELINE, {"message_id": message_id, "recipient": recipient, "event": event,
                                            "at": at, "status_code": status_code, "detail": detail})
            data: dict[str, Any] = {"event": event, "event_at": at.astimezone(UTC).isoformat()}
            if moved:
                assert state is not None
                data["state"] = state.value
            if status_code is not None:
                data["status_code"] = status_code
            pending.events.append(JournalEvent("record_event", message_id, recipient, data))
            return True

        return await self._write(tx)

    async def deliveries(self, message_id: str) -> list[Delivery]:
        rows = await self._read(lambda conn: conn.execute(_DELIVERIES_OF, {"m": message_id}).all())
        return [Delivery(message_id=r.message_id, recipient=r.recipient, state=DeliveryState(r.state),
                         updated_at=r.updated_at, status_code=r.status_code, reason=r.reason) for r in rows]

    async def timeline(self, message_id: str) -> list[TimelineEntry]:
        """Oldest first (by event time, then by recording order)."""
        rows = await self._read(lambda conn: conn.execute(
            select(timeline).where(timeline.c.message_id == message_id).order_by(timeline.c.at, timeline.c.id)
        ).all())
        return [TimelineEntry(message_id=r.message_id, recipient=r.recipient, event=r.event, at=r.at,
                              status_code=r.status_code, detail=r.detail) for r in rows]

    async def get_message(self, message_id: str, direction: Direction | None = None) -> MessageRecord | None:
        """With ``direction`` None, the outgoing copy wins when a node both sent and received it."""
        if direction is None:
            query, params = _MESSAGE_BY_ID, {"m": message_id}
        else:
            query, params = _MESSAGE_BY_ID_DIR, {"m": message_id, "d": direction.value}
        rows = await self._read(lambda conn: conn.execute(query, params).all())
        if not rows:
            return None
        rows.sort(key=lambda r: r.direction != Direction.OUT.value)
        return _message(rows[0])

    async def find_document(self, document_id: str, direction: Direction, agency: str) -> MessageRecord | None:
        if not document_id:
            return None
        rows = await self._read(lambda conn: conn.execute(
            select(messages).where(messages.c.document_id == document_id, messages.c.direction == direction.value,
                                   messages.c.kind == "document").order_by(messages.c.created_at.desc())
        ).all())
        for r in rows:
            record = _message(r)
            if (record.sender == agency) if direction is Direction.OUT else (agency in record.recipients):
                return record
        return None

    async def list_sent(self, sender: str, *, limit: int = 100, before: datetime | None = None) -> list[MessageRecord]:
        """Newest first."""
        query = select(messages).where(messages.c.sender == sender, messages.c.direction == Direction.OUT.value)
        if before is not None:
            query = query.where(messages.c.created_at < before)
        query = query.order_by(messages.c.created_at.desc(), messages.c.message_id.desc()).limit(limit)
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [_message(r) for r in rows]

    async def get_attachment(self, sha256: str) -> bytes | None:
        data = await self._read(lambda conn: conn.execute(
            select(attachments.c.data).where(attachments.c.sha256 == sha256)
        ).scalar_one_or_none())
        return bytes(data) if data is not None else None

    # -- inbox (pull) ---------------------------------------------------------------------------

    async def list_inbox(
        self, agency: str, *, include_acked: bool = False, limit: int = 100, after_seq: int = 0
    ) -> list[InboxEntry]:
        """Ordered by ``seq``, which is assigned at hand-over: entries not yet handed over are not listed."""
        states = _VISIBLE if include_acked else (InboxState.HANDED_OVER.value,)
        query = (
            select(inbox)
            .where(inbox.c.agency == agency, inbox.c.seq > after_seq, inbox.c.state.in_(states))
            .order_by(inbox.c.seq).limit(limit)
        )
        rows = await self._read(lambda conn: conn.execute(query).all())
        return [_inbox_entry(r) for r in rows]

    async def inbox_entry(self, agency: str, message_id: str) -> InboxEntry | None:
        query = select(inbox).where(inbox.c.agency == agency, inbox.c.message_id == message_id,
                                    inbox.c.state.in_(_VISIBLE))
        row = await self._read(lambda conn: conn.execute(query).first())
        return _inbox_entry(row) if row is not None else None

    async def ack_inbox(self, agency: str, message_id: str) -> bool:
        """True also when it was already acknowledged (idempotent)."""
        def tx(conn: Connection, pending: _Pending) -> bool:
            where = (inbox.c.agency == agency, inbox.c.message_id == message_id)
            row = conn.execute(
                update(inbox).where(*where, inbox.c.state == InboxState.HANDED_OVER.value)
                .values(state=InboxState.ACKED.value, acked_at=_now()).returning(inbox.c.message_id)
            ).first()
            if row is None:
                state = conn.execute(
                    select(inbox.c.state).where(*where, inbox.c.seq.is_not(None))
                ).scalar_one_or_none()
                raise _Rollback(state == InboxState.ACKED.value)
            pending.events.append(JournalEvent("ack_inbox", message_id, agency, {"state": InboxState.ACKED.value}))
            return True

        return await self._write(tx)

    # -- journal ------------------------------------------------------------------------------

    async def verify_journal(self, *, page: int = 5000) -> JournalReport:
        """Recompute the chain end to end, ``page`` entries per query (memory stays flat)."""
        def verify(conn: Connection) -> JournalReport:
            verifier = ChainVerifier()
            last = 0
            while True:
                rows = conn.execute(
                    select(journal).where(journal.c.seq > last).order_by(journal.c.seq).limit(page)
                ).all()
                for r in rows:
                    verifier.feed(r.seq, r.at, r.event, r.prev_hash, r.hash)
                if len(rows) < page:
                    return verifier.report()
                last = rows[-1].seq

        async def first_seq() -> int | None:
            return await self._read(lambda conn: conn.execute(select(func.min(journal.c.seq))).scalar())

        low = await first_seq()
        if low is not None and low < 1:
            # An entry numbered below 1 was inserted: the walk from seq > 0 would never see it.
            return JournalReport(entries=0, ok=False, first_bad_seq=low,
                                 problem=f"entry {low} is out of sequence (expected 1): inserted into the journal")
        return await self._read(verify)

    # -- credentials ----------------------------------------------------------------------------

    async def put_token(self, agency: str, token_hash: str, label: str = "") -> None:
        """Store (or re-assign) a token by its hash; the journal records the agency and label only."""
        def tx(conn: Connection, pending: _Pending) -> None:
            updated = conn.execute(
                update(api_tokens).where(api_tokens.c.token_hash == token_hash)
                .values(agency=agency, label=label).returning(api_tokens.c.token_hash)
            ).first()
            if updated is None:
                conn.execute(api_tokens.insert().values(token_hash=token_hash, agency=agency, label=label,
                                                        created_at=_now()))
            pending.events.append(JournalEvent("put_token", None, agency, {"label": label}))

        await self._write(tx)

    async def agency_for_token(self, token_hash: str) -> str | None:
        return await self._read(lambda conn: conn.execute(
            select(api_tokens.c.agency).where(api_tokens.c.token_hash == token_hash)
        ).scalar_one_or_none())

    # -- operator figures -----------------------------------------------------------------------

    async def delivery_counts(self) -> dict[str, int]:
        rows = await self._read(lambda conn: conn.execute(
            select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
        ).all())
        counts = {s.value: 0 for s in DeliveryState}
        counts.update({state: int(n) for state, n in rows})
        return counts

    async def waiting_deliveries(self) -> dict[str, tuple[int, float]]:
        open_states = (DeliveryState.SUBMITTED.value, DeliveryState.QUEUED.value)
        rows = await self._read(lambda conn: conn.execute(
            select(deliveries.c.recipient, func.count(), func.min(deliveries.c.updated_at))
            .where(deliveries.c.state.in_(open_states)).group_by(deliveries.c.recipient)
        ).all())
        now, out = _now(), {}
        for recipient, count, oldest in rows:
            if isinstance(oldest, str):  # SQLite may hand back the aggregate as raw text
                oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
            out[recipient] = (int(count), max(0.0, (now - oldest).total_seconds()))
        return out


def _upgrade(conn: Connection) -> None:
    """Bring a database created by an earlier version up to this schema (inside ``open``'s transaction).

    * Outbox frames moved from ``outbox.body`` to ``outbox_frames`` (one per message).
    """
    columns = {c["name"] for c in inspect(conn).get_columns("outbox")}
    if "body" in columns:
        frames: dict[str, bytes] = {}
        for r in conn.execute(text("SELECT message_id, body FROM outbox ORDER BY id")):
            frames.setdefault(r.message_id, bytes(r.body))
        if frames:
            conn.execute(outbox_frames.insert(), [{"message_id": m, "body": b} for m, b in frames.items()])
        conn.execute(text("ALTER TABLE outbox DROP COLUMN body"))
        next(i for i in outbox.indexes if i.name == "ix_outbox_message").create(conn, checkfirst=True)


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_JOURNAL_HEAD = select(journal.c.seq, journal.c.hash).order_by(journal.c.seq.desc()).limit(1)


def _message(r: Any) -> MessageRecord:
    return MessageRecord(
        message_id=r.message_id, kind=r.kind, operation=r.operation, sender=r.sender,
        recipients=tuple(json.loads(r.recipients)), direction=Direction(r.direction), created_at=r.created_at,
        envelope_xml=bytes(r.envelope_xml), digest=r.digest, priority=r.priority, subject=r.subject,
        relates_to=r.relates_to, correlation_id=r.correlation_id, document_id=r.document_id,
    )
