"""`exchange dlq list|replay`: inspect and redrive dead letters, with a reason.

Listing takes messages off the dead-letter queue without acknowledging them and
puts them back afterwards, so it changes nothing. Replaying republishes the
chosen messages to their agency queue with publisher confirms and only then
removes them from the dead-letter queue; the reason travels with the message
(``x-replays``, ``x-replay-reason``) and is logged. The recipient's node hands a
replayed message over again only if its delivery there had failed; a replay of
one that was delivered stays a duplicate. The sender's timeline shows
``replayed`` (with the reason) and then the new outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import aio_pika

from exchange.cli._common import add_config_argument, command_help, resolve_config, run, table
from exchange.errors import BrokerUnavailableError, NotFoundError
from exchange.transport.consumer import REPLAY_REASON_HEADER, REPLAYS_HEADER
from exchange.transport.relay import publish_confirmed
from exchange.transport.topology import Names

#: Seconds to wait for RabbitMQ to accept the connection (TCP and the AMQP handshake).
CONNECT_TIMEOUT = 10.0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dlq", help="inspect and replay dead-lettered messages",
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
        "list", help="show dead letters with their reason",
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
        "replay", help="send dead letters back to their agency queue",
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


def describe(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, object]:
    """The operator's view of a dead letter: ids, our reason or the broker's x-death reason."""
    h = dict(message.headers or {})
    deaths = h.get("x-death") or []
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    broker_key = (first.get("routing-keys") or [""])[0] if isinstance(first, dict) and first else ""
    routing = h.get("x-routing-key") or broker_key
    return {
        "message_id": str(h.get("x-message-id", "")),
        "sender": str(h.get("x-sender", "")),
        "recipient": str(h.get("x-recipient", "")),
        "kind": str(h.get("x-kind", "")),
        "reason_code": str(h.get("x-exchange-dead-code") or h.get("x-first-death-reason") or ""),
        "reason": str(h.get("x-exchange-dead-reason") or (f"broker: {first.get('reason')} in {first.get('queue')}"
                                                           if isinstance(first, dict) and first else "")),
        "dead_at": str(h.get("x-exchange-dead-at", "")),
        "attempts": int(h.get("x-attempt", 1) or 1),
        "routing_key": str(routing or ""),
        "replays": int(h.get(REPLAYS_HEADER, 0) or 0),
    }


async def _connect(cfg) -> aio_pika.abc.AbstractConnection:
    """A plain (not robust) connection: a command should fail in one line, not reconnect forever."""
    from exchange.node import amqp_ssl_context

    where = cfg.amqp.url.rpartition("@")[2]
    try:
        # The bound covers a broker that accepts TCP but never speaks AMQP, too.
        return await asyncio.wait_for(
            aio_pika.connect(cfg.amqp.url, ssl_context=amqp_ssl_context(cfg), timeout=CONNECT_TIMEOUT),
            CONNECT_TIMEOUT + 1)
    except Exception as exc:  # refused, unreachable, TLS, authentication, silence
        raise BrokerUnavailableError(
            f"cannot reach RabbitMQ at {where} ({type(exc).__name__}); check that it runs "
            "(`rabbitmqctl status`) and that [amqp] url (or EXCHANGE__AMQP__URL) points at it") from None


async def _drain(cfg, limit: int):
    connection = await _connect(cfg)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        name = Names(cfg.amqp.prefix).dlq
        try:
            queue = await channel.declare_queue(name, durable=True, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            raise NotFoundError(
                f"there is no dead-letter queue {name} on this broker; check [amqp] prefix (a node with "
                "this prefix declares it when it starts)") from None
    except BaseException:
        await connection.close()
        raise
    taken = []
    while len(taken) < limit:
        message = await queue.get(no_ack=False, fail=False, timeout=10)
        if message is None:
            break
        taken.append(message)
    return connection, channel, taken


def _list(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)

    async def go():
        connection, _, taken = await _drain(cfg, args.limit)
        try:
            return [describe(m) for m in taken]
        finally:
            for m in taken:
                await asyncio.wait_for(m.nack(requeue=True), cfg.amqp.confirm_timeout)
            await connection.close()

    rows = run(go)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    elif not rows:
        print("the dead-letter queue is empty")
    else:
        print(table([(r["message_id"], r["sender"], r["recipient"], r["reason_code"], r["attempts"], r["reason"])
                     for r in rows], ["message id", "sender", "recipient", "reason", "attempts", "detail"]))
    return 0


def _replay(args: argparse.Namespace) -> int:
    import structlog

    cfg = resolve_config(args)
    log = structlog.get_logger("exchange.dlq")
    wanted = set(args.ids or [])

    async def go() -> int:
        connection, channel, taken = await _drain(cfg, 100_000)
        replayed = 0
        try:
            route = await channel.get_exchange(Names(cfg.amqp.prefix).route)
            for m in taken:
                info = describe(m)
                if not args.all and info["message_id"] not in wanted:
                    continue
                if not info["routing_key"]:
                    print(f"skipping {info['message_id']}: no original routing key recorded")
                    continue
                headers = {k: v for k, v in (m.headers or {}).items()
                           if not k.startswith("x-exchange-dead") and k not in ("x-death", "x-first-death-reason",
                                                                              "x-first-death-queue",
                                                                              "x-first-death-exchange")}
                headers.update({"x-attempt": 1, REPLAYS_HEADER: info["replays"] + 1,
                                REPLAY_REASON_HEADER: args.reason[:500]})
                copy = aio_pika.Message(m.body, content_type=m.content_type, headers=headers,
                                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                        message_id=f"{info['message_id']}/{info['recipient']}/replay{info['replays'] + 1}",
                                        correlation_id=m.correlation_id)
                await publish_confirmed(route, copy, routing_key=str(info["routing_key"]),
                                        timeout=cfg.amqp.confirm_timeout)
                await asyncio.wait_for(m.ack(), cfg.amqp.confirm_timeout)
                replayed += 1
                print(f"replayed {info['message_id']} to {info['recipient']} ({info['reason_code']})")
                log.info("dlq.replayed", message_id=info["message_id"], recipient=info["recipient"],
                         reason=args.reason)
        finally:
            for m in taken:
                if not m.processed:
                    await asyncio.wait_for(m.nack(requeue=True), cfg.amqp.confirm_timeout)
            await connection.close()
        return replayed

    count = run(go)
    print(f"replayed {count} message(s)")
    if wanted and count < len(wanted):
        return 1
    return 0
