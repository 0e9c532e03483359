"""The import path ``exchange.store.sql`` of earlier versions: the store now lives in its own modules.

:mod:`~exchange.store.urls` (URL forms), :mod:`~exchange.store.tables` (the metadata),
:mod:`~exchange.store.statements` (prebuilt statements), :mod:`~exchange.store.engines` (the
SQLite group-commit engine and the PostgreSQL one), :mod:`~exchange.store.repository` (the
:class:`SqlStore`) and :mod:`~exchange.store.migrations` (the schema's Alembic revisions).
"""

from __future__ import annotations

from exchange.store.engines import TX_CACHE
from exchange.store.repository import SqlStore
from exchange.store.tables import metadata
from exchange.store.urls import normalize_url

__all__ = ["TX_CACHE", "SqlStore", "metadata", "normalize_url"]
