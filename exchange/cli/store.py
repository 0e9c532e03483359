"""`exchange store version|upgrade|revision`: the store's schema version, for operators (and developers)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import command_help
from exchange.errors import ConfigError

if TYPE_CHECKING:
    from exchange.store.migrations import SchemaState, UpgradeResult
    from exchange.store.repository import SqlStore

DEV_CONFIG = Path("var/dev/dev.toml")

EPILOG_VERSION = """\
example:
  exchange store version --store-url sqlite:///var/exchange.db
  exchange store version --config /etc/exchange/node.toml --check   # exit 1 if an upgrade is pending
"""
EPILOG_UPGRADE = """\
A node upgrades its store itself when it starts; this command does it beforehand (e.g. during a
maintenance window, after a backup). Safe while nodes run: the upgrade is one transaction that
excludes other writers.

example:
  exchange store upgrade --config /etc/exchange/node.toml
"""
EPILOG_REVISION = """\
For developers: writes exchange/store/migrations/versions/NNNN_<message>.py after the current head.
Fill in upgrade() and change exchange/store/tables.py to match (docs/STORE.md, "Adding a migration").

example:
  exchange store revision -m "idempotency fingerprints"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store",
        help="the store's schema: show its version, upgrade it",
        **command_help(
            "The store's schema version (Alembic revisions in exchange/store/migrations): show it, bring it "
            "to this version's newest revision, or (developers) write a new revision.",
            "exchange store version --config /etc/exchange/node.toml",
            "exchange store upgrade --config /etc/exchange/node.toml",
        ),
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    v = ssub.add_parser(
        "version",
        help="show the schema revision of a store and this version's newest",
        **command_help(
            "Show the store's schema revision and the newest this version of exchange knows. "
            + EPILOG_VERSION.strip().replace("\n", " "),
            "exchange store version --check",
            "exchange store version --json --config /etc/exchange/node.toml",
        ),
    )
    _where(v)
    v.add_argument("--json", action="store_true", help="print the state as JSON")
    v.add_argument("--check", action="store_true", help="exit 1 when an upgrade is pending")
    v.set_defaults(func=_version)
    u = ssub.add_parser(
        "upgrade",
        help="bring a store's schema to this version's newest revision",
        **command_help(
            "Bring the store's schema to this version's newest revision. " + EPILOG_UPGRADE.strip().replace("\n", " "),
            "exchange store upgrade --config /etc/exchange/node.toml",
        ),
    )
    _where(u)
    u.set_defaults(func=_upgrade)
    r = ssub.add_parser(
        "revision",
        help="(developers) write a new, empty migration after the current head",
        **command_help(
            "Write a new, empty migration revision after the current head. "
            + EPILOG_REVISION.strip().replace("\n", " "),
            'exchange store revision -m "operator accounts"',
        ),
    )
    r.add_argument("-m", "--message", required=True, help="what the revision changes, e.g. 'operator accounts'")
    r.set_defaults(func=_revision)


def _where(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store-url", help="store URL, e.g. sqlite:///var/exchange.db or postgresql://user@host/db")
    where.add_argument(
        "--config", "-c", default=None, help="node TOML whose [store] url to use (default: $EXCHANGE_CONFIG)"
    )


def _store_url(args: argparse.Namespace) -> str:
    if args.store_url:
        return str(args.store_url)
    path = args.config or os.environ.get("EXCHANGE_CONFIG")
    if not path and DEV_CONFIG.exists():
        path = str(DEV_CONFIG)  # as the other commands do after `exchange serve --dev`
    if not path:
        raise ConfigError("say which store: --store-url URL or --config node.toml")
    from exchange.config import (
        load_config,  # only when asked: the URL form needs no config at all
    )

    return load_config(path).store_url


def _existing_store(args: argparse.Namespace) -> SqlStore:
    """The store named by the arguments; refuses a SQLite path with no file (opening would create one)."""
    from sqlalchemy.engine import make_url

    from exchange.store.repository import SqlStore
    from exchange.store.urls import normalize_url

    url = _store_url(args)
    parsed = make_url(normalize_url(url))
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database
        and parsed.database != ":memory:"
        and not Path(parsed.database).exists()
    ):
        raise ConfigError(f"there is no store at {parsed.database}; check the path")
    return SqlStore(url)


def _version(args: argparse.Namespace) -> int:
    store = _existing_store(args)

    async def go() -> SchemaState:
        await store.open(migrate_schema=False)
        try:
            return await store.schema_state()
        finally:
            await store.close()

    state = asyncio.run(go())
    if state.up_to_date:
        verdict = "up to date"
    elif state.unversioned:
        verdict = "created before schema versions: `exchange store upgrade` stamps it and applies what is pending"
    elif state.current is None:
        verdict = "empty: `exchange store upgrade` (or starting a node) creates the schema"
    else:
        verdict = "upgrade pending: run `exchange store upgrade` (a node also upgrades when it starts)"
    if args.json:
        print(
            json.dumps(
                {
                    "current": state.current,
                    "head": state.head,
                    "unversioned": state.unversioned,
                    "pending": list(state.pending),
                    "up_to_date": state.up_to_date,
                }
            )
        )
    else:
        print(f"current: {state.current or ('none (created before schema versions)' if state.unversioned else 'none')}")
        print(f"head:    {state.head}")
        if state.pending:
            print(f"pending: {', '.join(state.pending)}")
        print(verdict)
    return 1 if args.check and not state.up_to_date else 0


def _upgrade(args: argparse.Namespace) -> int:
    store = _existing_store(args)

    async def go() -> UpgradeResult:
        await store.open(migrate_schema=False)
        try:
            return await store.upgrade_schema()
        finally:
            await store.close()

    result = asyncio.run(go())
    if result.stamped:
        print("stamped at the baseline (the store was created before schema versions)")
    if result.applied:
        print(f"applied: {', '.join(result.applied)}")
    print(
        f"{result.before or 'none'} -> {result.after}"
        if result.before != result.after or result.applied
        else f"already at {result.after}"
    )
    return 0


def _revision(args: argparse.Namespace) -> int:
    from exchange.store import migrations

    path = migrations.new_revision(args.message)
    print(path)
    return 0
