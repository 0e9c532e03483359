"""Schema migrations: a store written by an earlier version opens, upgrades and keeps its data, on both backends.

The stores written before migrations existed are frozen as SQL in tests/data/store/
(``store-6a6adb3.*.sql``: a SQLite ``.dump`` and a ``pg_dump --inserts`` of a store filled by
``fill_store.py`` on the code at commit 6a6adb3). PostgreSQL tests each get a database of their
own, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from exchange.cli.main import main as cli
from exchange.errors import StoreError
from exchange.store import (
    DeliveryState,
    Direction,
    MessageRecord,
    OutboxItem,
    migrations,
    open_store,
)
from exchange.store.repository import SqlStore
from exchange.store.tables import metadata

PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
DATA = Path(__file__).resolve().parents[1] / "data" / "store"
A, B, C = "000.00.00.G01", "000.00.00.H01", "000.00.00.H02"
#: The journal head of the frozen stores (7 entries; the same chain content, different times per backend).
OLD_ENTRIES = 7


# -- fixtures ----------------------------------------------------------------------------------------


def _pg_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 5432), timeout=1):
        return True
    return False


async def _pg_exec(database: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(f"{PG_SERVER}/{database}")
    try:
        await conn.execute(sql)  # simple protocol: a whole script in one call
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[tuple[str, str]]:
    """(name, url) of a PostgreSQL database private to one test, dropped afterwards."""
    if not _pg_up():
        pytest.fail("PostgreSQL does not answer on 127.0.0.1:5432 (deselect with -m 'not postgres')")
    name = f"exchange_migr_{uuid.uuid4().hex[:12]}"
    await _pg_exec("postgres", f'CREATE DATABASE "{name}"')
    try:
        yield name, f"{PG_SERVER}/{name}"
    finally:
        await _pg_exec("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    async with pg_database() as (_name, url):
        yield url


@pytest.fixture(params=BACKENDS)
async def old_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store written by exchange at commit 6a6adb3 (no schema version), on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        db = sqlite3.connect(path)
        try:
            db.executescript((DATA / "store-6a6adb3.sqlite.sql").read_text(encoding="utf-8"))
        finally:
            db.close()
        yield f"sqlite:///{path}"
        return
    async with pg_database() as (name, url):
        await _pg_exec(name, (DATA / "store-6a6adb3.postgresql.sql").read_text(encoding="utf-8"))
        yield url


@contextlib.asynccontextmanager
async def opened(url: str, **kw: bool) -> AsyncIterator[SqlStore]:
    store = SqlStore(url)
    await store.open(**kw)
    try:
        yield store
    finally:
        await store.close()


async def schema_diff(store: SqlStore) -> list:
    """What Alembic's autogenerate finds between the database and the store's metadata (empty: identical)."""

    def compare(conn):
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    return await store._engine.read(compare)  # type: ignore[union-attr]


async def tables(store: SqlStore) -> set[str]:
    from sqlalchemy import inspect

    return await store._engine.read(lambda conn: set(inspect(conn).get_table_names()))  # type: ignore[union-attr]


def outgoing(mid: str) -> MessageRecord:
    xml = f"<envelope id='{mid}'/>".encode()
    return MessageRecord(
        message_id=mid,
        kind="document",
        operation="new",
        sender=A,
        recipients=(B,),
        direction=Direction.OUT,
        created_at=datetime.now(UTC),
        envelope_xml=xml,
        digest=hashlib.sha256(xml).hexdigest(),
    )


# -- a store written before migrations -------------------------------------------------------------------


async def test_a_store_written_before_migrations_opens_upgraded_with_its_data(old_url: str) -> None:
    async with opened(old_url, migrate_schema=False) as store:
        before = await store.schema_state()
        assert (before.current, before.unversioned) == (None, True)
        head_before = (await store.verify_journal()).head

    store = open_store(old_url)
    await store.open()
    try:
        assert isinstance(store, SqlStore)
        after = await store.schema_state()
        assert (after.current, after.up_to_date, after.unversioned) == (migrations.head(), True, False)
        # The evidence is intact: the same chain, every record readable through the new code.
        report = await store.verify_journal()
        assert (report.ok, report.entries, report.head) == (True, OLD_ENTRIES, head_before)
        sent = await store.get_message("m-out-1", Direction.OUT)
        assert sent is not None and sent.subject == "Công văn số 12" and sent.recipients == (B, C)
        assert sent.envelope_xml.startswith(b"<envelope id='m-out-1'>") and sent.document_id == "12/CV-UBND"
        att = b"%PDF-1.7 old attachment\x00\xff"
        assert await store.get_attachment(hashlib.sha256(att).hexdigest()) == att
        states = {d.recipient: (d.state, d.status_code) for d in await store.deliveries("m-out-1")}
        assert sorted(states.values(), key=str) == sorted(
            [(DeliveryState.DELIVERED, "03"), (DeliveryState.SUBMITTED, None)], key=str
        )
        assert [e.event for e in await store.timeline("m-out-1")].count("submitted") == 2
        inbox = await store.list_inbox(A)
        assert [(e.message_id, e.sender, e.subject, e.seq) for e in inbox] == [("m-in-1", C, "Báo cáo", 6)]
        assert await store.agency_for_token("f" * 64) == A
        # The one item still waiting in the outbox is claimed with its frame.
        [item] = await store.claim_outbox(10)
        assert item.message_id == "m-out-1" and item.body == b"frame-1" * 10 and item.headers == {"x-lane": "normal"}
        # The idempotency key taken by the old code still answers with the old message.
        assert await store.accept_outgoing(outgoing("m-out-2"), [], idempotency_key="idem-1") == ("m-out-1", False)
        # New writes continue the chain and the id sequences (a new message's timeline rows would collide
        # with the old ones if PostgreSQL's sequence had not come along).
        await store.mark_published([item.id])  # type: ignore[list-item]
        assert await store.accept_outgoing(
            outgoing("m-new"), [OutboxItem(message_id="m-new", recipient=B, routing_key=f"{B}.normal", body=b"f")]
        ) == ("m-new", True)
        [new_item] = await store.claim_outbox(10)
        assert new_item.message_id == "m-new"
        report = await store.verify_journal()
        assert report.ok and report.entries == OLD_ENTRIES + 2
        assert await schema_diff(store) == []
    finally:
        await store.close()


async def test_an_empty_database_gets_the_schema_the_store_uses_at_head(empty_url: str) -> None:
    async with opened(empty_url) as store:
        state = await store.schema_state()
        assert (state.current, state.pending) == (migrations.head(), ())
        assert await schema_diff(store) == []
        assert metadata.tables.keys() <= await tables(store)


async def test_the_schema_diff_sees_a_column_the_revisions_do_not_create(empty_url: str) -> None:
    """The guard behind "change tables.py and write a revision": a missing column is reported."""
    async with opened(empty_url) as store:
        await store._engine.write(  # type: ignore[union-attr]
            lambda conn: conn.execute(text("ALTER TABLE api_tokens DROP COLUMN label"))
        )
        diff = await schema_diff(store)
        assert any(d[0] == "add_column" and d[2] == "api_tokens" and d[3].name == "label" for d in diff), diff


async def test_a_store_from_a_newer_release_is_refused_with_what_to_do(empty_url: str) -> None:
    async with opened(empty_url) as store:
        await store._engine.write(  # type: ignore[union-attr]
            lambda conn: conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        )
    store = SqlStore(empty_url)
    with pytest.raises(StoreError) as err:
        await store.open()
    assert "revision 9999" in err.value.message and "newer exchange" in err.value.message
    assert store._engine is None  # closed again, nothing left open


async def test_a_database_with_only_some_of_the_store_tables_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE messages (id INTEGER PRIMARY KEY); CREATE TABLE journal (seq INTEGER);")
    db.close()
    with pytest.raises(StoreError) as err:
        await SqlStore(f"sqlite:///{path}").open()
    assert "not created by exchange" in err.value.message and "api_tokens" in err.value.message


# -- a pending revision ------------------------------------------------------------------------------------


#: The package's newest revision, and the one the fixture below writes after it.
HEAD = migrations.head()
NEXT = f"{int(HEAD) + 1:04d}"
#: What a database at the baseline still has to run to reach NEXT.
AFTER_BASELINE = tuple(f"{n:04d}" for n in range(int(migrations.BASELINE) + 1, int(NEXT) + 1))


@pytest.fixture
def revisions(tmp_path: Path) -> Iterator[Path]:
    """A copy of the package's migrations with one more revision, written the documented way."""
    location = tmp_path / "migrations"
    shutil.copytree(migrations.LOCATION, location, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    path = migrations.new_revision("probe accounts", location)
    assert path.name == f"{NEXT}_probe_accounts.py" and path.parent == location / "versions"
    source = path.read_text(encoding="utf-8")
    assert f"down_revision: str | None = '{HEAD}'" in source
    path.write_text(
        source.replace(
            """def upgrade() -> None:
    pass""",
            """def upgrade() -> None:
    op.create_table(
        "probe_accounts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # A change SQLite's ALTER TABLE cannot make: batch mode copies the table (PostgreSQL alters in place).
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("label", existing_type=sa.String(200), type_=sa.String(400), existing_nullable=False)
        batch.add_column(sa.Column("operator", sa.String(64), nullable=False, server_default=""))""",
        ),
        encoding="utf-8",
    )
    yield location
    migrations.script.cache_clear()


async def test_open_runs_a_pending_revision_and_keeps_the_data(empty_url: str, revisions: Path) -> None:
    async with opened(empty_url) as store:
        await store.put_token(A, "a" * 64, "E-Office")
        pending = await store._engine.read(  # type: ignore[union-attr]
            lambda conn: migrations.state(conn, revisions)
        )
        assert (pending.current, pending.head, pending.pending) == (HEAD, NEXT, (NEXT,))
        result = await store._engine.write(  # type: ignore[union-attr]
            lambda conn: migrations.upgrade(conn, postgres=store.is_postgres, location=revisions)
        )
        assert (result.before, result.after, result.applied, result.stamped) == (HEAD, NEXT, (NEXT,), False)
        assert "probe_accounts" in await tables(store)
        assert await store.agency_for_token("a" * 64) == A  # the copied table kept its rows
        await store.put_token(B, "b" * 64, "x" * 300)  # the wider column
        assert (await store.verify_journal()).ok
        again = await store._engine.write(  # type: ignore[union-attr]
            lambda conn: migrations.upgrade(conn, postgres=store.is_postgres, location=revisions)
        )
        assert (again.before, again.applied) == (NEXT, ())


async def test_a_store_written_before_migrations_is_stamped_then_upgraded(old_url: str, revisions: Path) -> None:
    async with opened(old_url, migrate_schema=False) as store:
        state = await store._engine.read(lambda conn: migrations.state(conn, revisions))  # type: ignore[union-attr]
        assert (state.current, state.unversioned, state.pending) == (None, True, AFTER_BASELINE)
        result = await store._engine.write(  # type: ignore[union-attr]
            lambda conn: migrations.upgrade(conn, postgres=store.is_postgres, location=revisions)
        )
        assert (result.before, result.stamped, result.applied, result.after) == (None, True, AFTER_BASELINE, NEXT)
        assert await store.agency_for_token("f" * 64) == A
        assert (await store.verify_journal()).entries == OLD_ENTRIES


async def test_a_failing_revision_leaves_the_database_as_it_was(empty_url: str, revisions: Path) -> None:
    path = revisions / "versions" / f"{NEXT}_probe_accounts.py"
    source = path.read_text(encoding="utf-8")
    failing = "        raise RuntimeError('half way')\n        batch.add_column("
    path.write_text(source.replace("        batch.add_column(", failing), encoding="utf-8")
    async with opened(empty_url) as store:
        await store.put_token(A, "a" * 64, "E-Office")
        with pytest.raises(StoreError) as err:
            await store._engine.write(  # type: ignore[union-attr]
                lambda conn: migrations.upgrade(conn, postgres=store.is_postgres, location=revisions)
            )
        assert f"from {HEAD} to {NEXT} failed (RuntimeError: half way)" in err.value.message
        assert "nothing was changed" in err.value.message
        assert "probe_accounts" not in await tables(store)  # created before the failure, rolled back with it
        assert (await store.schema_state()).current == HEAD
        assert await store.agency_for_token("a" * 64) == A


def test_the_revisions_form_one_line_from_the_baseline() -> None:
    directory = migrations.script()
    assert directory.get_heads() == [migrations.head()]
    chain = [r.revision for r in directory.walk_revisions()]  # head first
    assert chain[-1] == migrations.BASELINE and directory.get_revision(migrations.BASELINE).down_revision is None
    assert all(r.isdigit() and len(r) == 4 for r in chain), chain


# -- the operator's commands -----------------------------------------------------------------------------


def test_store_version_and_upgrade_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript((DATA / "store-6a6adb3.sqlite.sql").read_text(encoding="utf-8"))
    db.close()
    url = f"sqlite:///{path}"

    assert cli(["store", "version", "--store-url", url]) == 0
    out = capsys.readouterr().out
    assert "created before schema versions" in out and f"head:    {migrations.head()}" in out
    assert cli(["store", "version", "--store-url", url, "--check"]) == 1
    capsys.readouterr()

    assert cli(["store", "upgrade", "--store-url", url]) == 0
    out = capsys.readouterr().out
    assert "stamped at the baseline" in out and f"none -> {migrations.head()}" in out

    assert cli(["store", "version", "--store-url", url, "--check", "--json"]) == 0
    assert f'"current": "{migrations.head()}"' in capsys.readouterr().out
    assert cli(["store", "upgrade", "--store-url", url]) == 0
    assert f"already at {migrations.head()}" in capsys.readouterr().out

    missing = tmp_path / "missing.db"
    assert cli(["store", "version", "--store-url", f"sqlite:///{missing}"]) == 1
    assert "no store at" in capsys.readouterr().err and not missing.exists()


async def test_two_processes_opening_a_store_written_before_migrations_upgrade_it_once(old_url: str) -> None:
    first, second = SqlStore(old_url), SqlStore(old_url)
    await asyncio.gather(first.open(), second.open())
    try:
        rows = await first._engine.read(  # type: ignore[union-attr]
            lambda conn: conn.execute(text("SELECT version_num FROM alembic_version")).all()
        )
        assert [r[0] for r in rows] == [migrations.head()]
        assert (await second.verify_journal()).entries == OLD_ENTRIES
    finally:
        await first.close()
        await second.close()
