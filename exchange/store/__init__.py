"""Tracking and evidence: one :class:`Store` contract, one SQL implementation for SQLite and PostgreSQL."""

from __future__ import annotations

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

__all__ = [
    "Delivery",
    "DeliveryState",
    "Direction",
    "InboxEntry",
    "InboxState",
    "JournalReport",
    "MessageRecord",
    "OutboxItem",
    "Store",
    "TimelineEntry",
    "open_store",
]


def open_store(url: str) -> Store:
    """The store for ``url`` (not yet opened: ``await store.open()``).

    ``sqlite:///path.db`` runs on the stdlib driver in the store's own threads,
    ``postgresql://user@host/db`` on asyncpg (the explicit ``sqlite+pysqlite://`` and
    ``postgresql+asyncpg://`` forms, and the older ``sqlite+aiosqlite://``, are accepted too).
    SQLite URLs may carry ``?synchronous=normal`` to trade the last commits before a power loss
    for write speed (default: full). ``await store.open()`` brings the database's schema to
    this version's (see :mod:`exchange.store.migrations`).
    """
    # SQLAlchemy and Alembic are imported only when a store is used.
    from exchange.store.repository import SqlStore

    return SqlStore(url)
