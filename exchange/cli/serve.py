"""`exchange serve`: run a node until SIGTERM/SIGINT.

`--dev` generates a working local world on first run (development CA, sample
agencies with their keys and adapters, the directory, API tokens) under
`var/dev/` and serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from exchange.cli._common import DEFAULT_DEV_DIR, add_config_argument, command_help


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="run a node: RabbitMQ consumer, outbox relay, adapters, HTTP gateway",
        **command_help(
            "Run a node until SIGTERM or Ctrl-C: the RabbitMQ consumer, the outbox relay, the agencies' "
            "adapters and the HTTP gateway (/healthz, /readyz, /metrics, /v1/...). --dev generates a working "
            "local world on first run (dev CA, sample agencies, directory, API tokens) and serves it.",
            "exchange serve --dev",
            "exchange serve --config /etc/exchange/node.toml --port 0 --log-level DEBUG",
        ),
    )
    add_config_argument(p)
    p.add_argument("--dev", action="store_true", help=f"generate (first run) and use the local dev world in {DEFAULT_DEV_DIR}")
    p.add_argument("--dev-dir", type=Path, default=DEFAULT_DEV_DIR, help="where --dev keeps its world")
    p.add_argument("--port", type=int, help="override [http] port")
    p.add_argument("--log-level", help="override [log] level (DEBUG, INFO, WARNING)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import os

    from exchange.config import load_config
    from exchange.observability.logging import configure_logging

    if args.port is not None:
        os.environ["EXCHANGE__HTTP__PORT"] = str(args.port)
    if args.dev and not args.config:
        from exchange.devworld import ensure_dev_world

        config_path = ensure_dev_world(args.dev_dir)
    else:
        config_path = Path(args.config or DEFAULT_DEV_DIR / "dev.toml")
    cfg = load_config(config_path)
    configure_logging(args.log_level or cfg.log_level)
    return asyncio.run(serve(cfg, dev_dir=args.dev_dir if args.dev else None))


async def serve(cfg, *, dev_dir: Path | None = None) -> int:
    from exchange.observability.metrics import Metrics
    from exchange.node import Node

    node = Node(cfg, metrics=Metrics())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    print(f"exchange node {cfg.name} serving {', '.join(a.code for a in cfg.agencies)}", flush=True)
    print(f"  gateway  {node.http_url}   (OpenAPI: {node.http_url}/v1/openapi.json, metrics: {node.http_url}/metrics)", flush=True)
    print(f"  store    {cfg.store_url}", flush=True)
    if dev_dir is not None:
        print(f"  tokens   {dev_dir / 'tokens.txt'} (one per agency; send as 'Authorization: Bearer …')", flush=True)
    print("  stop with Ctrl-C", flush=True)
    try:
        await stop.wait()
    finally:
        await node.stop()
    return 0
