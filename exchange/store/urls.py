"""Store URLs: the accepted forms, mapped to the drivers the store runs, and masked for messages."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from exchange.errors import StoreError


def normalize_url(url: str) -> str:
    """The URL with the driver the store runs: ``sqlite+pysqlite://`` or ``postgresql+asyncpg://``.

    SQLite runs on the stdlib driver in the store's own threads (:class:`~exchange.store.engines._SqliteEngine`),
    PostgreSQL on asyncpg. ``sqlite+aiosqlite://``, the explicit form earlier versions documented,
    is still accepted and means the same file.
    """
    for prefix, driver in (
        ("sqlite://", "sqlite+pysqlite://"),
        ("sqlite+pysqlite://", "sqlite+pysqlite://"),
        ("sqlite+aiosqlite://", "sqlite+pysqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("postgresql+asyncpg://", "postgresql+asyncpg://"),
    ):
        if url.startswith(prefix):
            return driver + url[len(prefix) :]
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
