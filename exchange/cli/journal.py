"""`exchange journal verify`: recompute the store's hash chain and report the first break."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from exchange.cli._common import command_help, existing_store_url, store_url
from exchange.errors import JournalTamperedError

if TYPE_CHECKING:
    from exchange.store.base import JournalReport


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "journal",
        help="check the tamper-evident journal",
        **command_help(
            "Every state change goes into a hash-chained journal in the store. `verify` recomputes the chain "
            "end to end and reports the first entry that was altered or removed.",
            "exchange journal verify",
        ),
    )
    jsub = p.add_subparsers(dest="journal_command", metavar="ACTION")
    v = jsub.add_parser(
        "verify",
        help="recompute the hash chain end to end; exit 1 at the first bad entry",
        **command_help(
            "Recompute the journal's hash chain from the first entry to the last. Exit 0 with a summary if "
            "it holds; exit 1 naming the first entry whose hash or link does not match.",
            "exchange journal verify --config /etc/exchange/node.toml",
            "exchange journal verify --store-url sqlite:///var/dev/dev/exchange.db --json",
        ),
    )
    where = v.add_mutually_exclusive_group()
    where.add_argument("--store-url", help="store URL, e.g. sqlite:///var/exchange.db or postgresql://user@host/db")
    where.add_argument(
        "--config", "-c", default=None, help="node TOML whose [store] url to check (default: $EXCHANGE_CONFIG)"
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_verify)
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])


def _verify(args: argparse.Namespace) -> int:
    from exchange.store import open_store

    url = existing_store_url(store_url(args, ask="say which store to check"))

    async def go() -> JournalReport:
        store = open_store(url)
        await store.open()
        try:
            return await store.verify_journal()
        finally:
            await store.close()

    report = asyncio.run(go())
    if args.json:
        print(
            json.dumps(
                {
                    "entries": report.entries,
                    "ok": report.ok,
                    "head": report.head,
                    "first_bad_seq": report.first_bad_seq,
                    "problem": report.problem,
                }
            )
        )
    else:
        print(f"entries: {report.entries}")
        print(f"head:    {report.head or '(empty journal)'}")
        print("OK" if report.ok else f"TAMPERED at entry {report.first_bad_seq}")
    if not report.ok:
        raise JournalTamperedError(
            f"the journal breaks at entry {report.first_bad_seq}: {report.problem}. Keep the database as it "
            "is for investigation and compare it with a backup or an externally recorded head hash"
        )
    return 0
