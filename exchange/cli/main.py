"""The one ``exchange`` command: every subcommand registers itself from its own module."""

from __future__ import annotations

import argparse
import importlib
import sys

from exchange import __version__
from exchange.errors import ExchangeError

#: Modules under exchange.cli that each define ``register(subparsers)``.
SUBCOMMAND_MODULES = (
    "pki", "sign", "verify",  # signing
    "serve", "send", "track", "directory", "dlq", "journal", "token", "store", "vxp", "operator",  # node and operators
    "demo", "bench", "edxml",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exchange", description="Inter-agency official-document exchange bus."
    )
    parser.add_argument("--version", action="version", version=f"exchange {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"exchange.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; ExchangeError becomes a one-line message and exit 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ExchangeError as exc:
        print(f"exchange: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
