"""The store's tables as SQLAlchemy Core metadata: the live model every statement is built from.

The database's schema is created and changed by the Alembic revisions in
``exchange/store/migrations/versions``, not from this module: a change here needs a revision
too (docs/STORE.md, "Adding a migration"), and a test compares a migrated database with this
metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite stores naive UTC text that sorts correctly)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the store only accepts timezone-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: Auto-increment keys: BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite.
_AutoId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

messages = Table(
    "messages",
    metadata,
    Column("message_id", String(64), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("sender", String(32), nullable=False),
    Column("recipients", Text, nullable=False),  # JSON array of agency codes
    Column("created_at", UtcDateTime, nullable=False),
    Column("stored_at", UtcDateTime, nullable=False),
    Column("envelope_xml", LargeBinary, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("subject", Text, nullable=False, default=""),
    Column("relates_to", String(64)),
    Column("correlation_id", String(128), nullable=False, default=""),
    Column("document_id", String(256), nullable=False, default=""),
    PrimaryKeyConstraint("message_id", "direction", name="pk_messages"),
    Index("ix_messages_sent", "sender", "direction", "created_at"),
    Index("ix_messages_document_id", "document_id", "direction"),
)

attachments = Table(
    "attachments",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("stored_at", UtcDateTime, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("status_code", String(4)),
    Column("reason", Text, nullable=False, default=""),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("message_id", "recipient", name="pk_deliveries"),
    Index("ix_deliveries_state", "state"),
)

timeline = Table(
    "timeline",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("event", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("status_code", String(4)),
    Column("detail", Text, nullable=False, default=""),
    ForeignKeyConstraint(
        ["message_id", "recipient"], ["deliveries.message_id", "deliveries.recipient"], name="fk_timeline_delivery"
    ),
    Index("ix_timeline_message", "message_id", "at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _AutoId, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False),
    Column("recipient", String(32), nullable=False),
    Column("routing_key", String(128), nullable=False),
    Column("headers", Text, nullable=False, default="{}"),  # JSON object
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
    Column("lease_until", Float),  # epoch seconds; NULL = free
    Column("attempts", Integer, nullable=False, default=0),
    Index("ix_outbox_claim", "priority", "id"),
    Index("ix_outbox_message", "message_id"),
)

# The transport frame of a message waiting in the outbox, once for all its recipients. Kept
# apart from the outbox rows, which a claim or a release updates: SQLite rewrites a whole row
# on UPDATE, and a frame is the size of the document (measured: leasing 100 rows of 70 KB with
# the frame inline wrote 7 MB to the WAL).
outbox_frames = Table(
    "outbox_frames",
    metadata,
    Column("message_id", String(64), primary_key=True),
    Column("body", LargeBinary, nullable=False),
)

inbox = Table(
    "inbox",
    metadata,
    Column("agency", String(32), nullable=False),
    Column("message_id", String(64), nullable=False),
    # Paging cursor, assigned at hand-over (= that journal entry's seq): the order in which
    # entries became visible, so a client paging with after_seq never skips one.
    Column("seq", BigInteger, unique=True),
    Column("state", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("sender", String(32), nullable=False),
    Column("subject", Text, nullable=False, default=""),
    Column("priority", SmallInteger, nullable=False, default=0),
    Column("received_at", UtcDateTime, nullable=False),
    Column("handed_at", UtcDateTime),
    Column("acked_at", UtcDateTime),
    Column("reason", Text, nullable=False, default=""),
    PrimaryKeyConstraint("agency", "message_id", name="pk_inbox"),
    Index("ix_inbox_agency_seq", "agency", "seq"),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("sender", String(32), nullable=False),
    Column("key", String(200), nullable=False),
    Column("message_id", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("sender", "key", name="pk_idempotency"),
)

#: What request an idempotency key was first used with: a SHA-256 fingerprint (method, route, canonical
#: body, attachment digests; exchange/gateway/idempotency.py), written in the same transaction as the
#: ``idempotency`` row. A table of its own, not a column: keys used before it have no fingerprint and
#: replay without the check (revision 0003).
idempotency_requests = Table(
    "idempotency_requests",
    metadata,
    Column("sender", String(32), nullable=False),
    Column("key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    PrimaryKeyConstraint("sender", "key", name="pk_idempotency_requests"),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_hash", String(128), primary_key=True),
    Column("agency", String(32), nullable=False),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
)

# The national hub's client protocol (exchange.gateway.vxp): one shared secret per E-Office system,
# sealed (AES-GCM) so that the database never holds it in clear, and the signatures of recent requests
# (replay refusal), each kept until its timestamp leaves the window.
vxp_systems = Table(
    "vxp_systems",
    metadata,
    Column("system_id", String(64), primary_key=True),
    Column("agency", String(32), nullable=False),
    Column("sealed", Text, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("rotated_at", UtcDateTime),
)

vxp_replay = Table(
    "vxp_replay",
    metadata,
    Column("system_id", String(64), nullable=False),
    Column("signature", String(64), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("system_id", "signature", name="pk_vxp_replay"),
    Index("ix_vxp_replay_expires", "expires_at"),
)

journal = Table(
    "journal",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("event", Text, nullable=False),  # canonical JSON, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The operator console (exchange.console): operator accounts, apart from agency tokens, and their
# server-side sessions (revision 0004). A password is kept only as its scrypt hash; a session row is
# keyed by the SHA-256 of its random id, so a copy of the table opens no session.
operators = Table(
    "operators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),  # viewer | operator
    Column("password_hash", String(256), nullable=False),  # scrypt$n$r$p$salt$hash
    Column("disabled", SmallInteger, nullable=False, default=0),
    Column("created_at", UtcDateTime, nullable=False),
)

operator_sessions = Table(
    "operator_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("operator", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Index("ix_operator_sessions_expires", "expires_at"),
)
