"""The national hub's client protocol: sealed per-system secrets and the replay cache.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vxp_systems",
        sa.Column("system_id", sa.String(64), primary_key=True),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("rotated_at", _TS),
    )
    op.create_table(
        "vxp_replay",
        sa.Column("system_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("system_id", "signature", name="pk_vxp_replay"),
    )
    op.create_index("ix_vxp_replay_expires", "vxp_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_vxp_replay_expires", table_name="vxp_replay")
    op.drop_table("vxp_replay")
    op.drop_table("vxp_systems")
