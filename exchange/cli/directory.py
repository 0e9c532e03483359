"""`exchange directory`: list the agency directory (code, name, parent, node, hosted here)."""

from __future__ import annotations

import argparse
import json

from exchange.cli._common import add_config_argument, command_help, resolve_config, table
from exchange.routing.directory import Directory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "directory", help="list the agency directory",
        **command_help(
            "List the agencies of the node's directory ([directory] file of the node TOML): code, name, the "
            "node that hosts it and its parent. --code shows one agency and the agencies under it.",
            "exchange directory",
            "exchange directory --code 000.00.00.H41 --json",
        ),
    )
    add_config_argument(p)
    p.add_argument("--code", help="show one agency and its children")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    directory = Directory.load(cfg.directory_file)
    hosted = {a.code for a in cfg.agencies}
    entries = list(directory)
    if args.code:
        entries = [directory.require(args.code), *directory.children(args.code)]
    if args.json:
        print(json.dumps([{"code": e.code, "name": e.name, "parent": e.parent, "node": e.node,
                           "level": e.level, "retired": e.retired, "hosted_here": e.code in hosted}
                          for e in entries], ensure_ascii=False, indent=2))
        return 0
    rows = [(e.code, e.name, e.parent or "-", e.node, "yes" if e.code in hosted else "",
             "retired" + (f" -> {e.successor}" if e.successor else "") if e.retired else "") for e in entries]
    print(table(rows, ["code", "name", "parent", "node", "hosted here", "note"]))
    return 0
