"""`exchange track ID`: the per-recipient timeline of a sent document."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exchange.cli._common import add_config_argument, command_help, resolve_config, run, table

if TYPE_CHECKING:
    from exchange.store.base import Delivery, MessageRecord, TimelineEntry


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "track",
        help="print the per-recipient timeline of a sent message",
        **command_help(
            "Show a sent message's state per recipient (submitted, queued, delivered or failed, and its latest "
            "business status) and its timeline of events (delivery, receipts, statuses), from the sender "
            "node's store.",
            "exchange track 40dd068d-5a2c-4d8e-9b1e-3f0c2a7b9e11",
            "exchange track 40dd068d-5a2c-4d8e-9b1e-3f0c2a7b9e11 --json --config var/demo/demo.toml",
        ),
    )
    add_config_argument(p)
    p.add_argument("message_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange.service import ExchangeService  # noqa: F401  (import check keeps errors uniform)
    from exchange.store import open_store

    cfg = resolve_config(args)

    async def go() -> tuple[MessageRecord, list[Delivery], list[TimelineEntry]]:
        from exchange.errors import NotFoundError
        from exchange.store.base import Direction

        store = open_store(cfg.store_url)
        await store.open()
        try:
            record = await store.get_message(args.message_id, Direction.OUT)
            if record is None:
                raise NotFoundError(f"no message {args.message_id} was sent from this node's store ({cfg.store_url})")
            return record, await store.deliveries(args.message_id), await store.timeline(args.message_id)
        finally:
            await store.close()

    record, deliveries, timeline = run(go)
    if args.json:
        print(
            json.dumps(
                {
                    "message_id": record.message_id,
                    "kind": record.kind,
                    "operation": record.operation,
                    "sender": record.sender,
                    "subject": record.subject,
                    "created_at": record.created_at.isoformat(),
                    "deliveries": [
                        {
                            "recipient": d.recipient,
                            "state": d.state.value,
                            "status_code": d.status_code,
                            "updated_at": d.updated_at.isoformat(),
                            "reason": d.reason,
                        }
                        for d in deliveries
                    ],
                    "timeline": [
                        {
                            "recipient": t.recipient,
                            "event": t.event,
                            "at": t.at.isoformat(),
                            "status_code": t.status_code,
                            "detail": t.detail,
                        }
                        for t in timeline
                    ],
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    print(render_track(record, deliveries, timeline))
    return 0


def render_track(record: MessageRecord, deliveries: Sequence[Delivery], timeline: Sequence[TimelineEntry]) -> str:
    """The text `exchange track` prints: header, per-recipient state, then the timeline."""
    lines = [
        f"{record.message_id}  {record.kind}/{record.operation}  from {record.sender}  "
        f"created {record.created_at.isoformat()}"
    ]
    if record.subject:
        lines.append(f"subject: {record.subject}")
    lines += [
        "",
        table(
            [(d.recipient, d.state.value, d.status_code or "", d.updated_at.isoformat(), d.reason) for d in deliveries],
            ["recipient", "state", "status", "updated", "reason"],
        ),
        "",
        table(
            [(t.at.isoformat(), t.recipient, t.event, t.detail) for t in timeline],
            ["at", "recipient", "event", "detail"],
        ),
    ]
    return "\n".join(lines)
