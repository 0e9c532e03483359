"""Alembic's environment for the store: run the revisions on the connection the store hands over.

Migrations run only through :func:`exchange.store.migrations.upgrade` (``open()`` and
``exchange store upgrade``), which puts the store's own connection, already inside its write
transaction, in ``config.attributes["connection"]``: the upgrade commits with that transaction.
"""

from __future__ import annotations

from alembic import context

from exchange.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the store's migrations run on the store's own connection: use `exchange store upgrade` "
        "(or open the store), not the alembic command"
    )

# transactional_ddl: the caller's transaction covers every revision (SQLite's DDL is
# transactional too, and the store holds BEGIN IMMEDIATE), so a failed upgrade leaves nothing half done.
context.configure(connection=connection, target_metadata=metadata, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
