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

    ``sqlite:///path.db`` and ``postgresql://user@host/db`` are mapped to the async drivers
    (aiosqlite, asyncpg); the explicit ``sqlite+aiosqlite://`` / ``postgresql+asyncpg://`` forms
    are accepted as they are. SQLite URLs may carry ``?synchronous=normal`` to trade the last
    commits before a power loss for write speed (default: full).
    """
    from exchange.store.repository import SqlStore  # SQLAlchemy is imported only when a store is used

    return SqlStore(url)
