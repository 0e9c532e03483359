"""`exchange hub …`: declare hub links (RabbitMQ shovels) as code and watch them.

exchange hub link --name h41-national --upstream amqp://127.0.0.1:5672 --upstream-api http://admin:…@127.0.0.1:15672
                  --downstream amqps://hub.national.example.vn:5671 --pattern '#' [--downstream-api …] [TLS options]
exchange hub home --api URL --pattern '*.*.*.H41.*'     this hub's own codes (never sent upstream)
exchange hub apply -c node.toml                          the [hub] section: home, then every link
exchange hub status (-c node.toml | --api URL) [--json]  each link: shovel state, backlog, oldest waiting
exchange hub exporter (-c node.toml | --api URL) --listen 127.0.0.1:9421   Prometheus metrics per link
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING

from exchange.cli._common import command_help, run, table
from exchange.errors import ConfigError

if TYPE_CHECKING:
    from exchange.hub.links import Applied, LinkSpec
    from exchange.hub.status import HubStatus


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "hub",
        help="declare and watch the links between hubs (RabbitMQ shovels)",
        **command_help(
            "Hubs run separate RabbitMQ brokers linked by RabbitMQ's own dynamic shovels, declared here "
            "through each broker's management API (docs/FEDERATION.md).",
            "exchange hub apply -c /etc/exchange/node.toml",
            "exchange hub status -c /etc/exchange/node.toml",
        ),
    )
    hs = p.add_subparsers(dest="hub_command", metavar="ACTION")

    link = hs.add_parser(
        "link",
        help="declare one link (idempotent): queue, bindings, users, shovel",
        **command_help(
            "Declare one link from this hub to a neighbour: a quorum link queue bound with the agency "
            "patterns it carries, a least-privilege user on each side, and the shovel.",
            "exchange hub link --name h41-national --upstream amqps://hub-h41:5671 "
            "--downstream amqps://hub-national:5671 --pattern '#'",
        ),
    )
    link.add_argument("--name", required=True, help="the link's name, e.g. h41-national")
    link.add_argument(
        "--upstream", required=True, help="this hub's AMQP address as its shovel reaches it (no credentials)"
    )
    link.add_argument(
        "--upstream-api",
        default=os.environ.get("EXCHANGE_HUB_API", ""),
        help="this hub's management API, http://admin:password@host:15672 (default $EXCHANGE_HUB_API)",
    )
    link.add_argument("--downstream", required=True, help="the neighbour's AMQP address as this hub reaches it")
    link.add_argument(
        "--downstream-api",
        default="",
        help="the neighbour's management API, to create its half too (else its operator does)",
    )
    link.add_argument(
        "--pattern",
        action="append",
        required=True,
        help="agency codes the link carries, as topic patterns over '{code}.{lane}': '*.*.*.H79.*', or '#'",
    )
    link.add_argument("--prefix", default="exchange")
    link.add_argument("--vhost", default="/", help="vhost on this hub")
    link.add_argument("--downstream-vhost", default="/")
    link.add_argument(
        "--password-env",
        default="",
        help="environment variable holding the link password (default: generate one, print it once)",
    )
    link.add_argument("--ca-file", default="")
    link.add_argument("--cert-file", default="")
    link.add_argument("--key-file", default="")
    link.add_argument("--server-name", default="")
    link.add_argument("--reconnect-delay", type=int, default=5)
    link.add_argument("--prefetch", type=int, default=500)
    link.add_argument("--max-backlog-bytes", type=int, default=0)
    link.set_defaults(func=_link)

    home = hs.add_parser(
        "home",
        help="set this hub's home patterns (its own codes, parked if no node hosts them)",
        **command_help(
            "Set the patterns of the codes this hub is home to: a message for one of them that no node "
            "of the hub hosts is parked, never sent up again (no routing loops).",
            "exchange hub home --pattern '*.*.*.H41.*'",
        ),
    )
    home.add_argument("--api", default=os.environ.get("EXCHANGE_HUB_API", ""))
    home.add_argument("--pattern", action="append", default=[])
    home.add_argument("--prefix", default="exchange")
    home.add_argument("--vhost", default="/")
    home.set_defaults(func=_home)

    apply = hs.add_parser(
        "apply",
        help="apply the [hub] section of a node's configuration",
        **command_help(
            "Declare everything the [hub] section of a node's TOML describes: home patterns and links.",
            "exchange hub apply -c /etc/exchange/node.toml",
        ),
    )
    apply.add_argument("--config", "-c", default=os.environ.get("EXCHANGE_CONFIG"), required=False)
    apply.set_defaults(func=_apply)

    for name, func, helptext in (
        ("status", _status, "each link: shovel state, backlog, oldest waiting message"),
        ("exporter", _exporter, "serve per-link Prometheus metrics"),
    ):
        s = hs.add_parser(
            name,
            help=helptext,
            **command_help(
                f"{helptext[0].upper()}{helptext[1:]}, read from the hub's management API.",
                f"exchange hub {name} -c /etc/exchange/node.toml",
            ),
        )
        s.add_argument("--config", "-c", default=os.environ.get("EXCHANGE_CONFIG"))
        s.add_argument(
            "--api",
            default=os.environ.get("EXCHANGE_HUB_API", ""),
            help="management API of the hub (instead of --config)",
        )
        s.add_argument("--prefix", default="exchange")
        s.add_argument("--vhost", default="/")
        if name == "status":
            s.add_argument("--json", action="store_true")
            s.add_argument("--no-peek", action="store_true", help="do not peek at queue heads (no oldest age)")
        else:
            s.add_argument("--listen", default="127.0.0.1:9421")
            s.add_argument("--interval", type=float, default=15.0)
        s.set_defaults(func=func)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _target(args: argparse.Namespace) -> tuple[str, str, str]:
    """(api, prefix, vhost) from --config's [hub] or from --api."""
    if args.api:
        return args.api, args.prefix, args.vhost
    if args.config:
        from exchange.hub.config import load_hub_config

        hub = load_hub_config(args.config, link_secrets=False)  # reading the hub needs no link password
        if hub is None:
            raise ConfigError(f"{args.config} has no [hub] section; add one (docs/FEDERATION.md) or pass --api")
        return hub.api, hub.prefix, hub.vhost
    raise ConfigError("name the hub: --api http://admin:password@host:15672, or --config with a [hub] section")


def _link(args: argparse.Namespace) -> int:
    from exchange.hub.links import LinkSpec, ManagementApi, Side, Tls, apply_link

    if not args.upstream_api:
        raise ConfigError("--upstream-api (or $EXCHANGE_HUB_API) is required: the link is declared on this hub")
    password = ""
    if args.password_env:
        password = os.environ.get(args.password_env, "")
        if not password:
            raise ConfigError(f"environment variable {args.password_env} is empty; set the link password there")
    tls = None
    if args.downstream.startswith("amqps://"):
        tls = Tls(args.ca_file, args.cert_file, args.key_file, args.server_name)
    spec = LinkSpec(
        name=args.name,
        prefix=args.prefix,
        patterns=tuple(args.pattern),
        upstream=Side(args.upstream, args.upstream_api, args.vhost),
        downstream=Side(args.downstream, args.downstream_api, args.downstream_vhost, tls),
        reconnect_delay=args.reconnect_delay,
        prefetch=args.prefetch,
        max_backlog_bytes=args.max_backlog_bytes,
        password=password,
    )

    async def go() -> tuple[Applied, str]:
        async with ManagementApi(args.upstream_api) as up:
            if args.downstream_api:
                async with ManagementApi(args.downstream_api) as down:
                    return await apply_link(spec, upstream_api=up, downstream_api=down)
            return await apply_link(spec, upstream_api=up)

    applied, pw = run(go)
    _print_applied(applied, spec)
    if applied.password_generated:
        # Printed once, to the terminal only: the downstream operator needs it for their half.
        print(f"link password (give it to the downstream operator; it is not shown again): {pw}", file=sys.stderr)
    return 0


def _print_applied(applied: Applied, spec: LinkSpec) -> None:
    from exchange.hub.links import downstream_permissions

    print(
        f"link {applied.link}: queue {applied.queue} bound to {', '.join(applied.patterns)}; "
        f"shovel {applied.shovel} → {spec.downstream.amqp}"
    )
    if not applied.downstream_declared:
        c, w, r = downstream_permissions(spec)
        print(
            f"downstream operator: create user {applied.user} with the link password, permissions in vhost "
            f"{spec.downstream.vhost!r}: configure {c!r} write {w!r} read {r!r}"
        )


def _home(args: argparse.Namespace) -> int:
    from exchange.hub.links import ManagementApi, declare_hub

    if not args.api:
        raise ConfigError("--api (or $EXCHANGE_HUB_API) is required")

    async def go() -> None:
        async with ManagementApi(args.api) as api:
            await declare_hub(api, args.prefix, args.vhost, home=tuple(args.pattern))

    run(go)
    print(f"home patterns: {', '.join(args.pattern) or '(none)'}")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from exchange.hub.config import load_hub_config
    from exchange.hub.startup import apply_hub

    if not args.config:
        raise ConfigError("--config (or $EXCHANGE_CONFIG) is required: the node TOML with a [hub] section")
    hub = load_hub_config(args.config)
    if hub is None:
        raise ConfigError(f"{args.config} has no [hub] section; see docs/FEDERATION.md")

    async def go() -> list[tuple[Applied, str, LinkSpec]]:
        return await apply_hub(hub)

    print(f"hub {hub.name}: home {', '.join(hub.home) or '(none)'}")
    for applied, pw, spec in run(go):
        _print_applied(applied, spec)
        if applied.password_generated:
            print(f"link {applied.link} password (set password_env to keep it): {pw}", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from exchange.hub.links import ManagementApi
    from exchange.hub.status import hub_status

    api_url, prefix, vhost = _target(args)

    async def go() -> HubStatus:
        async with ManagementApi(api_url) as api:
            return await hub_status(api, prefix, vhost, peek=not args.no_peek)

    st = run(go)
    if args.json:
        print(
            json.dumps(
                {
                    "hub": st.api,
                    "unrouted": st.unrouted,
                    "links": [
                        {
                            "link": s.link,
                            "queue": s.queue,
                            "state": s.state,
                            "up": s.up,
                            "reason": s.reason,
                            "backlog": s.backlog,
                            "unacked": s.unacked,
                            "oldest_seconds": s.oldest_seconds,
                            "destination": s.destination,
                        }
                        for s in st.links
                    ],
                },
                indent=2,
            )
        )
    else:
        print(
            table(
                [
                    (
                        s.link,
                        s.state,
                        s.backlog,
                        "" if s.oldest_seconds is None else f"{s.oldest_seconds:.0f}s",
                        s.destination,
                        s.reason,
                    )
                    for s in st.links
                ],
                ("link", "shovel", "backlog", "oldest", "to", "reason"),
            )
        )
        print(f"unrouted (parked): {st.unrouted}")
    return 0 if all(s.up for s in st.links) else 3


def _exporter(args: argparse.Namespace) -> int:
    from exchange.hub.monitor import serve_exporter

    api_url, prefix, vhost = _target(args)
    host, _, port = args.listen.rpartition(":")
    asyncio.run(
        serve_exporter(api_url, prefix, vhost, host=host or "127.0.0.1", port=int(port), interval=args.interval)
    )
    return 0
