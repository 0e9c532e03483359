"""`exchange serve`: run a node until SIGTERM/SIGINT.

`--dev` generates a working local world on first run (development CA, sample
agencies with their keys and adapters, the directory, API tokens) under
`var/dev/` and serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import DEFAULT_DEV_DIR, add_config_argument, command_help

if TYPE_CHECKING:
    from exchange.config import NodeConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="run a node: RabbitMQ consumer, outbox relay, adapters, HTTP gateway",
        **command_help(
            "Run a node until SIGTERM or Ctrl-C: the RabbitMQ consumer, the outbox relay, the agencies' "
            "adapters and the HTTP gateway (/healthz, /readyz, /metrics, /v1/...). --dev generates a working "
            "local world on first run (dev CA, sample agencies, directory, API tokens) and serves it.",
            "exchange serve --dev",
            "exchange serve --config /etc/exchange/node.toml --port 0 --log-level DEBUG",
        ),
    )
    add_config_argument(p)
    p.add_argument(
        "--dev", action="store_true", help=f"generate (first run) and use the local dev world in {DEFAULT_DEV_DIR}"
    )
    p.add_argument("--dev-dir", type=Path, default=DEFAULT_DEV_DIR, help="where --dev keeps its world")
    p.add_argument("--port", type=int, help="override [http] port")
    p.add_argument("--log-level", help="override [log] level (DEBUG, INFO, WARNING)")
    p.set_defaults(func=_run)


#: After SIGTERM/SIGINT (or once the command is done), the process ends within this many seconds
#: even if something does not stop: a broker or peer that never answers must not keep it alive.
EXIT_DEADLINE = 15.0


def run_until_signalled(main: Callable[[], Awaitable[int]], *, what: str) -> int:
    """``asyncio.run(main())`` where SIGTERM and SIGINT stop ``main`` in every state.

    The first signal cancels ``main`` (its ``finally`` blocks stop the node, each step bounded)
    and is logged; a second one ends the process at once. Whatever happens, a watchdog armed at
    the first signal, or when ``main`` ends, ends the process ``EXIT_DEADLINE`` seconds later:
    a library task that swallows its cancellation cannot hang the command.
    """
    import structlog

    log = structlog.get_logger("exchange.cli")
    signalled: list[signal.Signals] = []

    def exit_now(code: int, reason: str) -> None:
        log.error("process.exit_forced", what=what, reason=reason)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)

    def arm(code: int) -> None:
        timer = threading.Timer(
            EXIT_DEADLINE, exit_now, (code, f"still not stopped {EXIT_DEADLINE:.0f} s after it was asked to")
        )
        timer.daemon = True
        timer.start()

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if signalled:
                exit_now(128 + sig.value, f"second {sig.name}")
            signalled.append(sig)
            log.warning(
                "process.stopping",
                what=what,
                signal=sig.name,
                hint=f"stopping within {EXIT_DEADLINE:.0f} s; signal again to stop at once",
            )
            arm(0)
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await main()
        except asyncio.CancelledError:
            if signalled:
                return 0
            raise
        finally:
            if not signalled:
                arm(1)

    return asyncio.run(guarded())


def _run(args: argparse.Namespace) -> int:
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
    return run_until_signalled(
        lambda: serve(cfg, dev_dir=args.dev_dir if args.dev else None), what=f"exchange serve ({cfg.name})"
    )


async def serve(cfg: NodeConfig, *, dev_dir: Path | None = None) -> int:
    """Run a node until cancelled (by :func:`run_until_signalled` on SIGTERM/SIGINT)."""
    from exchange.node import Node
    from exchange.observability.metrics import Metrics

    node = Node(cfg, metrics=Metrics())
    await node.start()  # a failed or cancelled start stops what it started
    try:
        print(f"exchange node {cfg.name} serving {', '.join(a.code for a in cfg.agencies)}", flush=True)
        print(
            f"  gateway  {node.http_url}   "
            f"(OpenAPI: {node.http_url}/v1/openapi.json, metrics: {node.http_url}/metrics)",
            flush=True,
        )
        print(f"  store    {cfg.store_url}", flush=True)
        if dev_dir is not None:
            print(
                f"  tokens   {dev_dir / 'tokens.txt'} (one per agency; send as 'Authorization: Bearer …')", flush=True
            )
        print("  stop with Ctrl-C", flush=True)
        await asyncio.Event().wait()  # until cancelled
        return 0
    finally:
        await node.stop(step_timeout=5.0)
