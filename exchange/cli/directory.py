"""`exchange directory`: list the agency directory (code, name, parent, node, hosted here).

`exchange directory generate --national OUT` writes a national test directory instead
(34 provinces, 3,321 communes, the Government Office, ministries; exchange/routing/national.py).
"""

from __future__ import annotations

import argparse
import json

from exchange.cli._common import add_config_argument, command_help, resolve_config, table
from exchange.routing.directory import Directory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "directory",
        help="list the agency directory, or generate a national test directory",
        **command_help(
            "List the agencies of the node's directory ([directory] file of the node TOML): code, name, the "
            "node that hosts it and its parent. --code shows one agency and the agencies under it. "
            "`generate --national OUT` writes a national directory (34 provinces, 3,321 communes) for "
            "development and benchmarks.",
            "exchange directory",
            "exchange directory --code 000.00.00.H41 --json",
            "exchange directory generate --national var/national.toml",
        ),
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["list", "generate"],
        default="list",
        help="list (default) or generate (with --national OUT)",
    )
    add_config_argument(p)
    p.add_argument("--code", help="show one agency and its children")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--national", metavar="OUT", help="generate: write the national test directory to OUT")
    p.add_argument(
        "--layout",
        choices=["central", "provincial"],
        default="central",
        help="generate: all recipients on one node, or one node per province (default central)",
    )
    p.set_defaults(func=_run)


def _generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from exchange.errors import ConfigError
    from exchange.routing.national import write_directory

    if not args.national:
        raise ConfigError("`exchange directory generate` needs --national OUT (the TOML file to write)")
    count = write_directory(Path(args.national), how=args.layout)
    print(
        f"wrote {count} agencies to {args.national} (layout {args.layout}); "
        "issue certificates with `exchange pki issue` before serving them"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.action == "generate":
        return _generate(args)
    cfg = resolve_config(args)
    directory = Directory.load(cfg.directory_file)
    hosted = {a.code for a in cfg.agencies}
    entries = list(directory)
    if args.code:
        entries = [directory.require(args.code), *directory.children(args.code)]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "code": e.code,
                        "name": e.name,
                        "parent": e.parent,
                        "node": e.node,
                        "level": e.level,
                        "retired": e.retired,
                        "hosted_here": e.code in hosted,
                    }
                    for e in entries
                ],
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    rows = [
        (
            e.code,
            e.name,
            e.parent or "-",
            e.node,
            "yes" if e.code in hosted else "",
            "retired" + (f" -> {e.successor}" if e.successor else "") if e.retired else "",
        )
        for e in entries
    ]
    print(table(rows, ["code", "name", "parent", "node", "hosted here", "note"]))
    return 0
