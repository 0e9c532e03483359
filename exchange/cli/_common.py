"""Helpers shared by CLI commands: config resolution, running coroutines, tables."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from exchange.config import NodeConfig, load_config
from exchange.errors import ConfigError

T = TypeVar("T")

DEFAULT_DEV_DIR = Path("var/dev")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that blocks with indented lines (examples, layouts) keep their lines.

    Plain paragraphs of a description are wrapped to the terminal as usual.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.split("\n\n"):
            lines = block.splitlines()
            if any(line.startswith(" ") for line in lines):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


def command_help(description: str, *examples: str) -> dict[str, Any]:
    """``add_parser`` keywords: what the command does, and an epilog of examples (``--help`` shows both)."""
    return {
        "description": description,
        "epilog": "examples:\n" + "\n".join(f"  {example}" for example in examples),
        "formatter_class": HelpFormatter,
    }


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=os.environ.get("EXCHANGE_CONFIG"),
        help="node TOML (default: $EXCHANGE_CONFIG, else var/dev/dev.toml made by `exchange serve --dev`)",
    )


def resolve_config(args: argparse.Namespace) -> NodeConfig:
    path = args.config or DEFAULT_DEV_DIR / "dev.toml"
    return load_config(path)


def store_url(args: argparse.Namespace, *, ask: str = "say which store") -> str:
    """The store URL a store-level command works on: --store-url, else the [store] url of --config.

    ``ask`` starts the refusal when neither is given (the command's own words for what it needs).
    """
    if args.store_url:
        return str(args.store_url)
    path = args.config or os.environ.get("EXCHANGE_CONFIG")
    if not path and (DEFAULT_DEV_DIR / "dev.toml").exists():
        path = str(DEFAULT_DEV_DIR / "dev.toml")  # as the other commands do after `exchange serve --dev`
    if not path:
        raise ConfigError(f"{ask}: --store-url URL or --config node.toml")
    return load_config(path).store_url


def existing_store_url(url: str) -> str:
    """``url`` itself, refused if it names a SQLite file that does not exist.

    Opening a SQLite store creates the file: a mistyped path would then be reported as an
    empty store (intact journal, schema pending) instead of as the mistake it is.
    """
    from sqlalchemy.engine import make_url

    from exchange.store.urls import normalize_url

    parsed = make_url(normalize_url(url))
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database
        and parsed.database != ":memory:"
        and not Path(parsed.database).exists()
    ):
        raise ConfigError(f"there is no store at {parsed.database}; check the path")
    return url


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain left-aligned text table."""
    # every row has one cell per header (the widths below index each row by header position)
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
