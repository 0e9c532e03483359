"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}
revision = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels = None
depends_on = None

# Write the DDL out here (sa.Column(...), op.add_column, op.create_table): never import
# exchange.store.tables, whose metadata moves on with later revisions. On SQLite, a change to
# an existing column or constraint goes through op.batch_alter_table("table"). Change
# exchange/store/tables.py the same way: tests/integration/test_store_migrations.py fails while
# the migrated schema and the metadata differ. See docs/STORE.md, "Adding a migration".


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    raise NotImplementedError("the store's evidence is never dropped by a downgrade: restore a backup instead")
