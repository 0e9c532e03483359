"""What the console reads and writes in the store: operators, sessions, tokens, searches, operator journal entries.

These are the console's own queries over the store's tables (exchange/store/tables.py: ``operators``,
``operator_sessions``, revision 0004), run through the SQL store's transactions so that every change
an operator makes is journaled in the same transaction, with the operator's name and reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.engine import Connection

from exchange.errors import ConflictError, NotFoundError, StoreError
from exchange.store.base import DeliveryState, Direction, MessageRecord, Store
from exchange.store.journal import JournalEvent

if TYPE_CHECKING:
    from exchange.store.repository import SqlStore
from exchange.store.tables import (
    api_tokens,
    deliveries,
    messages,
    operator_sessions,
    operators,
)

#: The two roles: a viewer reads, an operator also replays, discards and manages tokens.
ROLES = ("viewer", "operator")


@dataclass(frozen=True, slots=True)
class Operator:
    """A console account (never an agency: agencies authenticate with tokens or certificates)."""

    name: str
    role: str
    password_hash: str
    disabled: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    """A live console session: its operator, the CSRF token its forms carry, when it ends."""

    operator: Operator
    csrf: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRow:
    """An API token as the console lists it: an identifier derived from its hash, never the token."""

    token_id: str  # the first 16 hex digits of the token's SHA-256
    agency: str
    label: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Unreceipted:
    """A document published (queued at the broker) with no receipt yet from one recipient."""

    message_id: str
    sender: str
    recipient: str
    created_at: datetime
    document_id: str


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a message and its deliveries' states."""

    message: MessageRecord
    states: dict[str, str]


def _sql(store: Store) -> SqlStore:
    """The SQL store behind ``store`` (the console's queries are SQL)."""
    if not hasattr(store, "_write") or not hasattr(store, "_read"):
        raise StoreError("the operator console needs the SQL store (sqlite:// or postgresql://)")
    return cast("SqlStore", store)


def _operator(r: Any) -> Operator:
    return Operator(
        name=r.name, role=r.role, password_hash=r.password_hash, disabled=bool(r.disabled), created_at=r.created_at
    )


class ConsoleData:
    """The console's reads and journaled writes on one store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._sql = _sql(store)

    # -- operators ---------------------------------------------------------------------------

    async def create_operator(
        self, name: str, role: str, password_hash: str, *, now: datetime, by: str = "cli"
    ) -> None:
        """A new account; ConflictError if the name is taken. Journaled (name and role, never the hash)."""

        def tx(conn: Connection, pending: Any) -> None:
            taken = conn.execute(select(operators.c.name).where(operators.c.name == name)).first()
            if taken is not None:
                raise ConflictError(f"operator {name} already exists; pick another name or disable the old account")
            conn.execute(
                operators.insert().values(name=name, role=role, password_hash=password_hash, disabled=0, created_at=now)
            )
            pending.events.append(
                JournalEvent("operator_create", None, None, {"operator": name, "role": role, "by": by})
            )

        await self._sql._write(tx)

    async def get_operator(self, name: str) -> Operator | None:
        row = await self._sql._read(
            lambda conn: conn.execute(select(operators).where(operators.c.name == name)).first()
        )
        return _operator(row) if row is not None else None

    async def list_operators(self) -> list[Operator]:
        rows = await self._sql._read(lambda conn: conn.execute(select(operators).order_by(operators.c.name)).all())
        return [_operator(r) for r in rows]

    async def disable_operator(self, name: str, *, by: str = "cli") -> None:
        """Disable an account and end its sessions; NotFoundError if there is none. Journaled."""

        def tx(conn: Connection, pending: Any) -> None:
            done = conn.execute(
                update(operators).where(operators.c.name == name).values(disabled=1).returning(operators.c.name)
            ).first()
            if done is None:
                raise NotFoundError(f"there is no operator {name}; `exchange operator list` shows the accounts")
            conn.execute(delete(operator_sessions).where(operator_sessions.c.operator == name))
            pending.events.append(JournalEvent("operator_disable", None, None, {"operator": name, "by": by}))

        await self._sql._write(tx)

    # -- sessions ----------------------------------------------------------------------------

    async def open_session(
        self, id_hash: str, operator: str, csrf: str, *, now: datetime, expires_at: datetime
    ) -> None:
        """Store a new session (and drop expired ones on the way). Journaled as a login."""

        def tx(conn: Connection, pending: Any) -> None:
            conn.execute(delete(operator_sessions).where(operator_sessions.c.expires_at < now))
            conn.execute(
                operator_sessions.insert().values(
                    id_hash=id_hash, operator=operator, csrf=csrf, created_at=now, expires_at=expires_at
                )
            )
            pending.events.append(JournalEvent("operator_login", None, None, {"operator": operator}))

        await self._sql._write(tx)

    async def session(self, id_hash: str, *, now: datetime) -> Session | None:
        """The live session with this id hash, or None (unknown, expired, or its operator disabled)."""
        query = (
            select(operator_sessions.c.csrf, operator_sessions.c.expires_at, operators)
            .select_from(operator_sessions.join(operators, operators.c.name == operator_sessions.c.operator))
            .where(
                operator_sessions.c.id_hash == id_hash, operator_sessions.c.expires_at > now, operators.c.disabled == 0
            )
        )
        row = await self._sql._read(lambda conn: conn.execute(query).first())
        if row is None:
            return None
        return Session(operator=_operator(row), csrf=row.csrf, expires_at=row.expires_at)

    async def close_session(self, id_hash: str) -> None:
        def tx(conn: Connection, _pending: Any) -> None:
            conn.execute(delete(operator_sessions).where(operator_sessions.c.id_hash == id_hash))

        await self._sql._write(tx)

    # -- the journal of operator actions -------------------------------------------------------

    async def journal_action(
        self,
        operator: str,
        action: str,
        reason: str,
        *,
        message_id: str | None = None,
        recipient: str | None = None,
        **data: Any,
    ) -> None:
        """Append one operator action (who, what, why) to the store's hash-chained journal."""

        def tx(conn: Connection, pending: Any) -> None:
            pending.events.append(
                JournalEvent(
                    f"operator_{action}", message_id, recipient, {"operator": operator, "reason": reason, **data}
                )
            )

        await self._sql._write(tx)

    # -- tokens ------------------------------------------------------------------------------

    async def list_tokens(self) -> list[TokenRow]:
        rows = await self._sql._read(
            lambda conn: conn.execute(select(api_tokens).order_by(api_tokens.c.agency, api_tokens.c.created_at)).all()
        )
        return [
            TokenRow(token_id=r.token_hash[:16], agency=r.agency, label=r.label, created_at=r.created_at) for r in rows
        ]

    async def revoke_token(self, token_id: str, *, operator: str, reason: str) -> str:
        """Delete the one token whose hash starts with ``token_id``; its agency. Journaled with who and why."""
        if len(token_id) != 16 or any(c not in "0123456789abcdef" for c in token_id):
            raise NotFoundError("a token id is the 16 hex digits the Tokens page lists")

        def tx(conn: Connection, pending: Any) -> str:
            rows = conn.execute(
                select(api_tokens.c.token_hash, api_tokens.c.agency).where(api_tokens.c.token_hash.like(token_id + "%"))
            ).all()
            if len(rows) != 1:
                raise NotFoundError(f"no single token has id {token_id}; reload the Tokens page")
            conn.execute(delete(api_tokens).where(api_tokens.c.token_hash == rows[0].token_hash))
            pending.events.append(
                JournalEvent(
                    "operator_revoke_token",
                    None,
                    rows[0].agency,
                    {"operator": operator, "reason": reason, "token_id": token_id},
                )
            )
            return str(rows[0].agency)

        return await self._sql._write(tx)

    # -- figures -----------------------------------------------------------------------------

    async def unreceipted(self, *, limit: int = 200) -> list[Unreceipted]:
        """Documents published without a receipt (deliveries QUEUED), oldest first."""
        query = (
            select(
                messages.c.message_id,
                messages.c.sender,
                messages.c.created_at,
                messages.c.document_id,
                deliveries.c.recipient,
            )
            .select_from(
                deliveries.join(
                    messages,
                    and_(messages.c.message_id == deliveries.c.message_id, messages.c.direction == Direction.OUT.value),
                )
            )
            .where(deliveries.c.state == DeliveryState.QUEUED.value, messages.c.kind == "document")
            .order_by(messages.c.created_at, messages.c.message_id)
            .limit(limit)
        )
        rows = await self._sql._read(lambda conn: conn.execute(query).all())
        return [Unreceipted(r.message_id, r.sender, r.recipient, r.created_at, r.document_id) for r in rows]

    async def oldest_unreceipted_by_agency(self) -> dict[str, datetime]:
        """Per recipient agency, the creation time of its oldest document published without its receipt."""
        query = (
            select(deliveries.c.recipient, func.min(messages.c.created_at))
            .select_from(
                deliveries.join(
                    messages,
                    and_(messages.c.message_id == deliveries.c.message_id, messages.c.direction == Direction.OUT.value),
                )
            )
            .where(deliveries.c.state == DeliveryState.QUEUED.value, messages.c.kind == "document")
            .group_by(deliveries.c.recipient)
        )
        rows = await self._sql._read(lambda conn: conn.execute(query).all())
        from exchange.store.tables import UtcDateTime

        def aware(value: Any) -> datetime:
            # func.min loses the column's type on SQLite: convert the naive UTC text back.
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            return UtcDateTime().process_result_value(value, None)  # type: ignore[arg-type, return-value]

        return {r[0]: aware(r[1]) for r in rows if r[1] is not None}

    # -- search ------------------------------------------------------------------------------

    async def search(
        self,
        *,
        message_id: str = "",
        document_id: str = "",
        agency: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        state: str = "",
        limit: int = 100,
    ) -> list[Hit]:
        """Messages (documents and statuses) matching every given criterion, newest first."""
        query = select(messages).where(messages.c.kind != "receipt")
        if message_id:
            query = query.where(messages.c.message_id == message_id)
        if document_id:
            query = query.where(messages.c.document_id == document_id)
        if agency:
            # recipients is a JSON array of codes: match the quoted code.
            query = query.where(or_(messages.c.sender == agency, messages.c.recipients.like(f'%"{agency}"%')))
        if since is not None:
            query = query.where(messages.c.created_at >= since)
        if until is not None:
            query = query.where(messages.c.created_at < until)
        if state:
            query = query.where(
                messages.c.message_id.in_(select(deliveries.c.message_id).where(deliveries.c.state == state))
            )
        query = query.order_by(messages.c.created_at.desc(), messages.c.message_id).limit(limit)

        def run(conn: Connection) -> list[Hit]:
            rows = conn.execute(query).all()
            ids = [r.message_id for r in rows]
            states: dict[str, dict[str, str]] = {}
            if ids:
                for d in conn.execute(
                    select(deliveries.c.message_id, deliveries.c.recipient, deliveries.c.state).where(
                        deliveries.c.message_id.in_(ids)
                    )
                ).all():
                    states.setdefault(d.message_id, {})[d.recipient] = d.state
            from exchange.store.repository import _message

            return [Hit(_message(r), states.get(r.message_id, {})) for r in rows]

        return await self._sql._read(run)

    async def receipts(self, message_id: str) -> list[MessageRecord]:
        """The signed receipts stored for ``message_id`` (received for what we sent, sent for what we got)."""
        from exchange.store.repository import _message

        rows = await self._sql._read(
            lambda conn: conn.execute(
                select(messages)
                .where(messages.c.relates_to == message_id, messages.c.kind == "receipt")
                .order_by(messages.c.created_at)
            ).all()
        )
        return [_message(r) for r in rows]

    async def journal_of(self, message_id: str) -> list[dict[str, Any]]:
        """The journal entries naming ``message_id``, oldest first, each with ``intact``: its hash recomputes."""
        from exchange.store.journal import canonical_json, chain_hash
        from exchange.store.tables import journal

        # The canonical JSON carries "message_id":"<id>"; the LIKE narrows, the parse decides.
        pattern = f'%"message_id":{json.dumps(message_id)}%'
        rows = await self._sql._read(
            lambda conn: conn.execute(
                select(journal).where(journal.c.event.like(pattern)).order_by(journal.c.seq)
            ).all()
        )
        out = []
        for r in rows:
            event = json.loads(r.event)
            if event.get("message_id") == message_id:
                # Each entry's own link: canonical, and its hash recomputed from the previous hash and its text.
                intact = canonical_json(event) == r.event and chain_hash(r.prev_hash, r.event) == r.hash
                out.append(
                    {
                        "seq": r.seq,
                        "at": r.at,
                        "action": event.get("action", ""),
                        "recipient": event.get("recipient"),
                        "data": event.get("data", {}),
                        "hash": r.hash,
                        "intact": intact,
                    }
                )
        return out
