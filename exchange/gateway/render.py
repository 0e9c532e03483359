"""Domain values to the JSON shapes of docs/API.md (the inverse of ``metadata``)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from exchange.adapters.base import SubmitResult
from exchange.envelope.model import DocumentInfo, StaffInfo, StatusInfo
from exchange.metadata import encode_document, encode_staff, encode_status
from exchange.routing.directory import AgencyEntry
from exchange.service import FetchedMessage, TrackResult
from exchange.store.base import InboxEntry

V1 = "/v1"


def ts(value: datetime | None) -> str | None:
    """RFC 3339 in UTC (``Z``); the store's naive datetimes are UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def day(value: date | None) -> str | None:
    return value.isoformat() if value is not None else None


def submitted(result: SubmitResult) -> dict[str, Any]:
    return {
        "message_id": result.message_id,
        "created": result.created,
        "recipients": list(result.recipients),
        "created_at": ts(result.created_at),
        "track": f"{V1}/sent/{result.message_id}",
        **({"refused": [dict(r) for r in result.refused]} if result.refused else {}),
    }


def inbox_entry(e: InboxEntry) -> dict[str, Any]:
    return {
        "message_id": e.message_id,
        "kind": e.kind,
        "sender": e.sender,
        "subject": e.subject,
        "priority": e.priority,
        "state": e.state.value,
        "received_at": ts(e.received_at),
        "acked_at": ts(e.acked_at),
        "seq": e.seq,
        "href": f"{V1}/inbox/{e.message_id}",
    }


def document(d: DocumentInfo) -> dict[str, Any]:
    """A received document's metadata: the schema's field names (the codec's encoder)."""
    return encode_document(d)


def staff(s: StaffInfo | None) -> dict[str, str] | None:
    return encode_staff(s)


def status(s: StatusInfo) -> dict[str, Any]:
    return encode_status(s, ts(s.timestamp))


def fetched(f: FetchedMessage, digest: str) -> dict[str, Any]:
    h = f.envelope.header
    base = f"{V1}/inbox/{h.message_id}"
    return {
        "message_id": h.message_id,
        "kind": h.kind.value,
        "operation": h.operation.value,
        "sender": {"code": h.sender.code, "name": h.sender.name},
        "recipients": [{"code": r.code, "name": r.name} for r in h.recipients],
        "created_at": ts(h.created_at),
        "correlation_id": h.correlation_id,
        "state": f.entry.state.value,
        "received_at": ts(f.entry.received_at),
        "acked_at": ts(f.entry.acked_at),
        "seq": f.entry.seq,
        "document": document(h.document) if h.document is not None else None,
        "status": status(h.status) if h.status is not None else None,
        "attachments": [
            {
                "id": a.id,
                "name": a.name,
                "media_type": a.media_type,
                "size": a.size,
                "sha256": a.sha256,
                "description": a.description,
                "href": f"{base}/attachments/{a.id}",
            }
            for a in f.envelope.attachments
        ],
        "envelope": {"href": f"{base}/envelope", "sha256": digest},
    }


def tracked(t: TrackResult) -> dict[str, Any]:
    m = t.message
    deliveries = []
    for d in t.deliveries:
        deliveries.append(
            {
                "recipient": d.recipient,
                "state": d.state.value,
                "status_code": d.status_code,
                "updated_at": ts(d.updated_at),
                "reason": d.reason,
                "timeline": [
                    {"event": e.event, "at": ts(e.at), "status_code": e.status_code, "detail": e.detail}
                    for e in t.timeline
                    if e.recipient == d.recipient
                ],
            }
        )
    return {
        "message_id": m.message_id,
        "kind": m.kind,
        "operation": m.operation,
        "sender": m.sender,
        "recipients": list(m.recipients),
        "subject": m.subject,
        "priority": m.priority,
        "created_at": ts(m.created_at),
        "relates_to": m.relates_to,
        "envelope_sha256": m.digest,
        "deliveries": deliveries,
    }


def agency(e: AgencyEntry, hosted: frozenset[str]) -> dict[str, Any]:
    return {
        "code": e.code,
        "name": e.name,
        "parent": e.parent,
        "level": e.level,
        "node": e.node,
        "retired": e.retired,
        "successor": e.successor,
        "hosted_here": e.code in hosted,
    }
