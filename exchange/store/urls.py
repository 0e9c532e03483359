"""Store URLs: the accepted forms, mapped to the drivers the store runs, and masked for messages."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from exchange.errors import StoreError


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
