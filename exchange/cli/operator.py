"""`exchange operator create|list|disable`: console accounts (docs/CONSOLE.md), apart from agency tokens.

The password is read from a prompt (twice) or, with ``--password-stdin``, from the first line of
standard input; never from the command line, where it would sit in the shell's history and in
``ps``. The store keeps its scrypt hash only.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from exchange.cli._common import add_config_argument, command_help, resolve_config, run, table
from exchange.errors import BadRequestError

if TYPE_CHECKING:
    from exchange.config import NodeConfig
    from exchange.console.data import ConsoleData, Operator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "operator",
        help="operator console accounts: create, list, disable",
        **command_help(
            "Accounts of the operator console (/console, docs/CONSOLE.md), separate from agency tokens: "
            "role viewer reads, role operator also replays, discards and manages tokens.",
            "exchange operator create --name lan --role operator",
            "exchange operator list",
        ),
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    osub = p.add_subparsers(dest="operator_command", metavar="ACTION")
    c = osub.add_parser(
        "create",
        help="make a console account (password from a prompt or --password-stdin)",
        **command_help(
            "Make a console account; the password is typed twice at a prompt or read from standard input "
            "(--password-stdin), never from the command line, and stored as a scrypt hash.",
            "exchange operator create --name lan --role operator",
            "exchange operator create --name minh --role viewer --password-stdin",
        ),
    )
    add_config_argument(c)
    c.add_argument("--name", required=True, help="the account name the operator signs in with")
    c.add_argument(
        "--role",
        required=True,
        choices=("viewer", "operator"),
        help="viewer reads; operator also replays/discards dead letters and manages tokens",
    )
    c.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    c.set_defaults(func=_create)
    ls = osub.add_parser(
        "list",
        help="show the console accounts",
        **command_help(
            "Show the console accounts with their role and whether they are disabled.",
            "exchange operator list --config /etc/exchange/node.toml",
        ),
    )
    add_config_argument(ls)
    ls.set_defaults(func=_list)
    d = osub.add_parser(
        "disable",
        help="disable an account and end its sessions",
        **command_help(
            "Disable a console account: it can no longer sign in and its open sessions end.",
            "exchange operator disable --name lan",
        ),
    )
    add_config_argument(d)
    d.add_argument("--name", required=True)
    d.set_defaults(func=_disable)


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or typed twice at a prompt; BadRequestError if too short."""
    from exchange.console.security import MIN_PASSWORD

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise BadRequestError("the two passwords differ; run the command again")
    if len(password) < MIN_PASSWORD:
        raise BadRequestError(f"the password has {len(password)} characters; use at least {MIN_PASSWORD}")
    return password


def _data(cfg: NodeConfig) -> ConsoleData:
    from exchange.console.data import ConsoleData
    from exchange.store import open_store

    return ConsoleData(open_store(cfg.store_url))


def _create(args: argparse.Namespace) -> int:
    from exchange.console.security import hash_password

    if not _NAME.match(args.name):
        raise BadRequestError("an operator name is 1-64 letters, digits, '.', '_', '@' or '-'")
    cfg = resolve_config(args)
    password_hash = hash_password(read_password(args.password_stdin))

    async def go() -> None:
        data = _data(cfg)
        await data.store.open()
        try:
            await data.create_operator(args.name, args.role, password_hash, now=datetime.now(UTC))
        finally:
            await data.store.close()

    run(go)
    print(f"operator {args.name} ({args.role}) created; sign in at /console/login of the node")
    return 0


def _list(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)

    async def go() -> list[Operator]:
        data = _data(cfg)
        await data.store.open()
        try:
            return await data.list_operators()
        finally:
            await data.store.close()

    rows = run(go)
    if not rows:
        print("no operator account yet; create one with `exchange operator create --name N --role operator`")
        return 0
    print(
        table(
            [
                (o.name, o.role, "disabled" if o.disabled else "active", o.created_at.isoformat(timespec="seconds"))
                for o in rows
            ],
            ["name", "role", "state", "created"],
        )
    )
    return 0


def _disable(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)

    async def go() -> None:
        data = _data(cfg)
        await data.store.open()
        try:
            await data.disable_operator(args.name)
        finally:
            await data.store.close()

    run(go)
    print(f"operator {args.name} disabled; their sessions have ended")
    return 0
