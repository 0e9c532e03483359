"""`exchange token create --agency CODE [--label L]`: issue a gateway API token (stored hashed)."""

from __future__ import annotations

import argparse
import sys

from exchange.cli._common import add_config_argument, command_help, resolve_config, run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "token",
        help="gateway API tokens: create one for a hosted agency",
        **command_help(
            "API tokens authenticate an agency's E-Office to the HTTP gateway (Authorization: Bearer ...). "
            "They are stored hashed: the token is shown once, when created.",
            "exchange token create --agency 000.00.00.H41 --label 'E-Office Nghệ An'",
        ),
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    token_sub = p.add_subparsers(dest="token_command", metavar="ACTION")
    q = token_sub.add_parser(
        "create",
        help="issue a new API token for an agency; printed once, stored hashed",
        **command_help(
            "Issue a new API token for an agency this node hosts and print it once; the store keeps only "
            "its hash. Hand it to the agency's E-Office over a secure channel.",
            "exchange token create --agency 000.00.00.H41 --label 'E-Office Nghệ An'",
            "exchange token create --agency 000.00.00.G22 --config /etc/exchange/node.toml",
        ),
    )
    add_config_argument(q)
    q.add_argument("--agency", required=True, help="QCVN 102 code of an agency this node hosts")
    q.add_argument("--label", default="", help="a note to recognise the token by (e.g. the E-Office's name)")
    q.set_defaults(func=_create)


def _create(args: argparse.Namespace) -> int:
    from exchange.envelope.codes import check_agency_code
    from exchange.errors import NotHostedError
    from exchange.store import open_store
    from exchange.tokens import new_token

    cfg = resolve_config(args)
    code = check_agency_code(args.agency)
    if cfg.agency(code) is None:
        hosted = ", ".join(a.code for a in cfg.agencies) or "none"
        raise NotHostedError(
            f"agency {code} is not hosted by node {cfg.name} (hosted: {hosted}); "
            "a token only works on the node that hosts its agency"
        )

    async def go() -> str:
        store = open_store(cfg.store_url)
        await store.open()
        try:
            return await new_token(store, code, label=args.label)
        finally:
            await store.close()

    token = run(go)
    print(token)
    print(
        f"token for {code} created; it is shown only this once. Send it as 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return 0
