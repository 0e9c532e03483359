"""The one ``exchange`` command: every subcommand registers itself from its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TextIO, cast

from exchange import __version__
from exchange.cli._common import HelpFormatter
from exchange.errors import ExchangeError

#: Modules under exchange.cli that each define ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "pki",
    "sign",
    "verify",  # signing
    "serve",
    "send",
    "track",
    "directory",
    "dlq",
    "journal",
    "token",
    "store",
    "vxp",
    "hub",
    "operator",
    "demo",
    "bench",
    "edxml",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange",
        description="Inter-agency official-document exchange bus: signed XML envelopes routed between "
        "agencies' E-Office systems over RabbitMQ. Every command reads the node TOML given by "
        "--config (default var/dev/dev.toml); EXCHANGE__SECTION__KEY variables override it. "
        "Results go to stdout, logs to stderr. `exchange COMMAND --help` describes each command.",
        epilog="examples:\n"
        "  exchange serve --dev\n"
        "  exchange send --from 000.00.00.G22 --to 000.00.00.H41 --number 12 --subject 'Chỉ thị'\n"
        "  exchange track MESSAGE_ID",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"exchange {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"exchange.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None, *, own_logging: bool | None = None) -> int:
    """Entry point: run a subcommand; ExchangeError becomes a one-line message and exit 1.

    Run as the ``exchange`` command (``argv`` None), it routes all logging to stderr first;
    called from Python with an explicit ``argv``, it leaves the caller's logging set-up alone
    unless ``own_logging=True``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if own_logging is None:
        own_logging = argv is None
    if own_logging:
        _log_to_stderr()
    try:
        return int(args.func(args) or 0)
    except ExchangeError as exc:
        print(f"exchange: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (callers may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# logging.StreamHandler needs only write() and flush().
_STDERR = cast(TextIO, _CurrentStderr())


def _log_to_stderr() -> None:
    """Send every log line to stderr, never stdout: stdout carries a command's result (`exchange send`
    prints only the message id, which scripts capture). structlog's unconfigured default prints to stdout.

    Level: ``EXCHANGE__LOG__LEVEL`` (the [log] level override), else INFO. `serve` and `demo` configure
    their own (JSON) logging from the node TOML afterwards; that replaces this.
    """
    from exchange.observability.logging import configure_logging

    level = os.environ.get("EXCHANGE__LOG__LEVEL", "INFO")
    try:
        configure_logging(level, json=False, stream=_STDERR)
    except ValueError:  # a bad level is the node TOML's business (load_config reports it); log at INFO
        configure_logging("INFO", json=False, stream=_STDERR)


if __name__ == "__main__":
    sys.exit(main())
