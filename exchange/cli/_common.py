"""Helpers shared by CLI commands: config resolution, running coroutines, tables."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from exchange.config import NodeConfig, load_config

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
