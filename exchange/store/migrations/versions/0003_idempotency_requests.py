"""Idempotency keys remember the request they were first used with (a SHA-256 fingerprint).

A replay under the same key answers what the first request got; a different request under it
is refused (422). Keys written before this revision have no fingerprint and replay unchecked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idempotency_requests",
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("sender", "key", name="pk_idempotency_requests"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_requests")
