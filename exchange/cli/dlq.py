"""`exchange dlq list|replay`: inspect and redrive dead letters, with a reason.

Listing takes messages off the dead-letter queue without acknowledging them and
puts them back afterwards, so it changes nothing. Replaying republishes the
chosen messages to their agency queue with publisher confirms and only then
removes them from the dead-letter queue; the reason travels with the message
(``x-replays``, ``x-replay-reason``) and is logged. The recipient's node hands a
replayed message over again only if its delivery there had failed; a replay of
one that was delivered stays a duplicate. The sender's timeline shows
``replayed`` (with the reason) and then the new outcome. The operations themselves live in
:mod:`exchange.transport.deadletters`, which the operator console uses too.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from exchange.cli._common import add_config_argument, command_help, resolve_config, run, table
from exchange.transport.deadletters import DeadLetters, check_reason, describe  # noqa: F401 (describe: re-export)

if TYPE_CHECKING:
    from exchange.config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dlq",
        help="inspect and replay dead-lettered messages",
        **command_help(
            "Dead letters are messages a node could not deliver (invalid, untrusted, or out of retries). "
            "`list` shows them without changing anything; `replay` sends chosen ones back to their agency "
            "queue, with a reason that is kept with the message.",
            "exchange dlq list",
            'exchange dlq replay --id 40dd068d-5a2c-4d8e-9b1e-3f0c2a7b9e11 --reason "E-Office back up"',
        ),
    )
    dsub = p.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    lp = dsub.add_parser(
        "list",
        help="show dead letters with their reason",
        **command_help(
            "Show the dead letters (message id, sender, recipient, reason, attempts). Messages are taken off the queue "
            "unacknowledged and put back, so listing changes nothing.",
            "exchange dlq list --limit 20",
            "exchange dlq list --json --config /etc/exchange/node.toml",
        ),
    )
    add_config_argument(lp)
    lp.add_argument("--limit", type=int, default=100)
    lp.add_argument("--json", action="store_true")
    lp.set_defaults(func=_list)
    rp = dsub.add_parser(
        "replay",
        help="send dead letters back to their agency queue",
        **command_help(
            "Republish the chosen dead letters to their agency queue (publisher confirms), then remove them "
            "from the dead-letter queue. The reason is recorded on the message and logged.",
            'exchange dlq replay --id 40dd068d-5a2c-4d8e-9b1e-3f0c2a7b9e11 --reason "certificate renewed"',
            'exchange dlq replay --all --reason "broker maintenance over"',
        ),
    )
    add_config_argument(rp)
    sel = rp.add_mutually_exclusive_group(required=True)
    sel.add_argument("--id", dest="ids", action="append", help="message id to replay (repeat)")
    sel.add_argument("--all", action="store_true", help="replay every dead letter")
    rp.add_argument("--reason", required=True, help="why you replay (kept with the message and logged)")
    rp.set_defaults(func=_replay)


def _letters(cfg: NodeConfig) -> DeadLetters:
    from exchange.node import amqp_ssl_context

    return DeadLetters(cfg, amqp_ssl_context(cfg))


def _list(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    rows = run(lambda: _letters(cfg).peek(args.limit))
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif not rows:
        print("the dead-letter queue is empty")
    else:
        print(
            table(
                [
                    (r["message_id"], r["sender"], r["recipient"], r["reason_code"], r["attempts"], r["reason"])
                    for r in rows
                ],
                ["message id", "sender", "recipient", "reason", "attempts", "detail"],
            )
        )
    return 0


def _replay(args: argparse.Namespace) -> int:
    import structlog

    cfg = resolve_config(args)
    log = structlog.get_logger("exchange.dlq")
    wanted = set(args.ids or [])
    reason = check_reason(args.reason)
    outcomes = run(lambda: _letters(cfg).replay(None if args.all else wanted, reason))
    count = 0
    for o in outcomes:
        info = o.info
        if not o.done:
            print(f"skipping {info['message_id']}: {o.note}")
            continue
        count += 1
        print(f"replayed {info['message_id']} to {info['recipient']} ({info['reason_code']})")
        log.info("dlq.replayed", message_id=info["message_id"], recipient=info["recipient"], reason=reason)
    print(f"replayed {count} message(s)")
    if wanted and count < len(wanted):
        return 1
    return 0
