"""Baseline: the schema as exchange created it before migrations (up to commit 6a6adb3).

A database created by that code has no ``alembic_version`` table; ``open()`` recognises it
by its tables and stamps it at this revision instead of running it (see
:func:`exchange.store.migrations.upgrade`).

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

# Frozen copies of the types as they were: a revision never imports exchange.store.tables, whose
# metadata moves on with later revisions. (UtcDateTime's DDL is DateTime(timezone=True).)
_TS = sa.DateTime(timezone=True)
_AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # BIGSERIAL / INTEGER PRIMARY KEY (rowid)


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("recipients", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("stored_at", _TS, nullable=False),
        sa.Column("envelope_xml", sa.LargeBinary, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("relates_to", sa.String(64)),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("document_id", sa.String(256), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "direction", name="pk_messages"),
    )
    op.create_index("ix_messages_sent", "messages", ["sender", "direction", "created_at"])
    op.create_index("ix_messages_document_id", "messages", ["document_id", "direction"])

    op.create_table(
        "attachments",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", _TS, nullable=False),
    )

    op.create_table(
        "deliveries",
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.String(4)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("message_id", "recipient", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_state", "deliveries", ["state"])

    op.create_table(
        "timeline",
        sa.Column("id", _AUTO_ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("status_code", sa.String(4)),
        sa.Column("detail", sa.Text, nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id", "recipient"], ["deliveries.message_id", "deliveries.recipient"], name="fk_timeline_delivery"
        ),
    )
    op.create_index("ix_timeline_message", "timeline", ["message_id", "at"])

    op.create_table(
        "outbox",
        sa.Column("id", _AUTO_ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(32), nullable=False),
        sa.Column("routing_key", sa.String(128), nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("lease_until", sa.Float),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_outbox_claim", "outbox", ["priority", "id"])
    op.create_index("ix_outbox_message", "outbox", ["message_id"])

    op.create_table(
        "outbox_frames",
        sa.Column("message_id", sa.String(64), primary_key=True),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )

    op.create_table(
        "inbox",
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("handed_at", _TS),
        sa.Column("acked_at", _TS),
        sa.Column("reason", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("agency", "message_id", name="pk_inbox"),
    )
    op.create_index("ix_inbox_agency_seq", "inbox", ["agency", "seq"])

    op.create_table(
        "idempotency",
        sa.Column("sender", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("sender", "key", name="pk_idempotency"),
    )

    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.String(128), primary_key=True),
        sa.Column("agency", sa.String(32), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )

    op.create_table(
        "journal",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("the store's evidence is never dropped by a downgrade: restore a backup instead")
