"""The only place the two backends differ in how statements reach the database.

* SQLite (:class:`_SqliteEngine`): WAL, foreign keys, busy timeout, ``BEGIN
  IMMEDIATE`` for every write transaction (a writer never has to upgrade a read
  lock and fail with SQLITE_BUSY), one writer connection on its own thread fed
  by one writer task that commits queued writes together (group commit: one
  thread hop and one fsync per batch), and a few autocommit reader connections
  that WAL lets run alongside it.
* PostgreSQL (:class:`_PostgresEngine`): asyncpg through SQLAlchemy's async
  engine; transaction bodies run in its greenlet.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from exchange.errors import StoreError

T = TypeVar("T")


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
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_recycle=1800,
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
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
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


def _settle_from(
    done: asyncio.Future[list[tuple[bool, Any]]], batch: Sequence[tuple[Any, asyncio.Future[Any]]]
) -> None:
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
        self._read_threads = (
            self._write_thread if memory else ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        )
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
            batch: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
            while self._queue and len(batch) < self.max_batch:
                fn, future = self._queue.popleft()
                if future.get_loop() is not loop:
                    future.get_loop().call_soon_threadsafe(
                        _fail, future, StoreError("the store was used from another event loop; open one store per loop")
                    )
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
            running.add_done_callback(functools.partial(_settle_from, batch=batch))
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
