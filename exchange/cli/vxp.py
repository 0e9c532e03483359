"""`exchange vxp secret create|rotate|list`: the shared secrets of E-Office systems on the hub protocol.

One secret per system id; a system acts for one agency this node hosts. ``create`` and
``rotate`` print the new secret once (stdout) for the E-Office's SDK configuration; the
store keeps it sealed (exchange.gateway.vxp.secrets), never in clear, never in logs.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime

from exchange.cli._common import add_config_argument, command_help, resolve_config, run, table

_SYSTEM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vxp",
        help="the national hub's client protocol (/vxp/): E-Office system secrets",
        **command_help(
            "E-Offices that talk to the national hub through its SDK point their endpoint at a node's /vxp/ "
            "and sign each call with their system's shared secret (docs/API.md, national hub protocol).",
            "exchange vxp secret create --system vxp.saas.03 --agency 000.00.00.H41",
            "exchange vxp secret list",
        ),
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    vxp_sub = p.add_subparsers(dest="vxp_command", metavar="ACTION")
    s = vxp_sub.add_parser(
        "secret",
        help="create, rotate or list the shared secrets of hub systems",
        **command_help(
            "One shared secret per E-Office system, printed once, stored sealed under the agency's key.",
            "exchange vxp secret create --system vxp.saas.03 --agency 000.00.00.H41",
            "exchange vxp secret rotate --system vxp.saas.03",
            "exchange vxp secret list",
        ),
    )
    s.set_defaults(func=lambda _args: (s.print_help(), 2)[1])
    secret_sub = s.add_subparsers(dest="secret_command", metavar="ACTION")
    for name, helptext in (
        ("create", "a new system for a hosted agency; prints its secret once"),
        ("rotate", "a new secret for an existing system (the old one stops working); printed once"),
    ):
        q = secret_sub.add_parser(
            name,
            help=helptext,
            **command_help(
                f"{helptext[0].upper()}{helptext[1:]}: give it to the E-Office's SDK configuration with the "
                "endpoint http(s)://<node>/vxp; it is never logged.",
                f"exchange vxp secret {name} --system vxp.saas.03"
                + (" --agency 000.00.00.H41" if name == "create" else ""),
            ),
        )
        add_config_argument(q)
        q.add_argument("--system", required=True, help="the E-Office's system id (its `systemid` header)")
        q.add_argument(
            "--agency", required=(name == "create"), help="QCVN 102 code of the hosted agency the system acts for"
        )
        q.set_defaults(func=_create if name == "create" else _rotate)
    q = secret_sub.add_parser(
        "list",
        help="the systems, their agencies and whether their secret opens",
        **command_help(
            "List the hub systems of this node: system id, agency, when created or rotated, and whether "
            "the secret still opens with the agency's current key (else rotate it).",
            "exchange vxp secret list --config /etc/exchange/node.toml",
        ),
    )
    add_config_argument(q)
    q.set_defaults(func=_list)


def _system_id(raw: str) -> str:
    from exchange.errors import BadRequestError

    if not _SYSTEM_ID.fullmatch(raw):
        raise BadRequestError(
            f"system id {raw[:70]!r} must be 1 to 64 letters, digits and . _ : - (e.g. vxp.saas.03 or the agency code)"
        )
    return raw


def _sealing_key(cfg, code: str) -> bytes:  # type: ignore[no-untyped-def]
    from exchange.envelope.codes import check_agency_code
    from exchange.errors import NotHostedError
    from exchange.gateway.vxp.secrets import sealing_key
    from exchange.signing.keys import load_private_key

    code = check_agency_code(code)
    agency = cfg.agency(code)
    if agency is None:
        hosted = ", ".join(a.code for a in cfg.agencies) or "none"
        raise NotHostedError(
            f"agency {code} is not hosted by node {cfg.name} (hosted: {hosted}); "
            "a hub system works only on the node that hosts its agency"
        )
    return sealing_key(load_private_key(agency.key))


def _issue(args: argparse.Namespace, *, rotate: bool) -> int:
    from exchange.errors import NotFoundError
    from exchange.gateway.vxp.secrets import key_id, new_secret, seal
    from exchange.store import open_store
    from exchange.store.base import VxpSystem

    cfg = resolve_config(args)
    system_id = _system_id(args.system)
    secret = new_secret()

    async def go() -> str:
        store = open_store(cfg.store_url)
        await store.open()
        try:
            agency: str | None = args.agency
            if agency is None:  # rotate without --agency: the system's own
                existing = await store.get_vxp_system(system_id)
                if existing is None:
                    raise NotFoundError(
                        f"no hub system {system_id} exists; create it with "
                        "`exchange vxp secret create --system ID --agency CODE`"
                    )
                agency = existing.agency
            key = _sealing_key(cfg, agency)
            await store.put_vxp_system(
                VxpSystem(
                    system_id=system_id,
                    agency=agency,
                    sealed=seal(key, system_id, agency, secret),
                    key_id=key_id(key),
                    created_at=datetime.now(UTC),
                ),
                rotate=rotate,
            )
            return agency
        finally:
            await store.close()

    agency = run(go)
    print(secret)
    print(
        f"{'new secret of' if rotate else 'secret for'} hub system {system_id} (agency {agency}); it is shown "
        "only this once. Put it in the E-Office's SDK configuration with its endpoint http(s)://<node>/vxp.",
        file=sys.stderr,
    )
    return 0


def _create(args: argparse.Namespace) -> int:
    return _issue(args, rotate=False)


def _rotate(args: argparse.Namespace) -> int:
    return _issue(args, rotate=True)


def _list(args: argparse.Namespace) -> int:
    from exchange.errors import ExchangeError
    from exchange.gateway.vxp.secrets import key_id
    from exchange.store import open_store

    cfg = resolve_config(args)

    async def go():  # type: ignore[no-untyped-def]
        store = open_store(cfg.store_url)
        await store.open()
        try:
            return await store.list_vxp_systems()
        finally:
            await store.close()

    current: dict[str, str] = {}
    rows = []
    for s in run(go):
        if s.agency not in current:
            try:
                current[s.agency] = key_id(_sealing_key(cfg, s.agency))
            except ExchangeError:
                current[s.agency] = ""
        opens = "yes" if current[s.agency] == s.key_id else "no: rotate it"
        rows.append(
            (
                s.system_id,
                s.agency,
                s.created_at.isoformat(timespec="seconds"),
                s.rotated_at.isoformat(timespec="seconds") if s.rotated_at else "",
                opens,
            )
        )
    print(table(rows, ("system", "agency", "created", "rotated", "secret opens")))
    return 0
