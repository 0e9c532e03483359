"""`exchange pki init|issue|revoke|crl|list`: the development CA (exchange.signing.pki).

For development, tests and demos: production agencies bring certificates from
their own CA. See docs/SIGNING.md for the certificate profile.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import DEFAULT_DEV_DIR, HelpFormatter, command_help, table
from exchange.errors import KeyMaterialError

if TYPE_CHECKING:
    from exchange.signing.pki import DevCA

DEFAULT_PKI_DIR = DEFAULT_DEV_DIR / "pki"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pki",
        help="development CA: create it, issue and revoke agency certificates, write the CRL",
        description="Development certificate authority. Layout: DIR/ca.pem, ca.key, index.json, crl.pem, "
        "agencies/<code>.pem and agencies/<code>.key (keys are mode 0600).",
        epilog="examples:\n"
        "  exchange pki init --dir var/pki\n"
        "  exchange pki issue --dir var/pki --code 000.00.00.G22 --name 'Văn phòng Chính phủ'\n"
        "  exchange pki revoke --dir var/pki --code 000.00.00.G22",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    pki_sub = p.add_subparsers(dest="pki_command", metavar="ACTION")

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--dir", type=Path, default=DEFAULT_PKI_DIR, help=f"CA directory (default {DEFAULT_PKI_DIR})")

    q = pki_sub.add_parser(
        "init",
        help="create a CA (RSA 3072 by default) and an empty CRL",
        **command_help(
            "Create a development CA in --dir: a self-signed CA certificate and key (RSA 3072, or ECDSA P-256 "
            "with --ec) and an empty CRL. Refuses to overwrite an existing CA.",
            "exchange pki init --dir var/pki",
            "exchange pki init --dir var/pki --ec --name 'Test CA' --days 365",
        ),
    )
    common(q)
    q.add_argument("--ec", action="store_true", help="ECDSA P-256 CA key instead of RSA 3072")
    q.add_argument("--name", default="Exchange Development CA", help="the CA's common name")
    q.add_argument("--days", type=int, default=3650, help="CA validity in days (default 3650)")
    q.set_defaults(func=_init)

    q = pki_sub.add_parser(
        "issue",
        help="generate an agency key and issue its certificate",
        **command_help(
            "Generate a key for an agency and issue its signing certificate (the agency code in the subject, "
            "digitalSignature key usage) from the CA in --dir.",
            "exchange pki issue --dir var/pki --code 000.00.00.G22 --name 'Văn phòng Chính phủ'",
            "exchange pki issue --dir var/pki --code 000.00.00.G22 --name 'Văn phòng Chính phủ' --suffix 2027",
        ),
    )
    common(q)
    q.add_argument("--code", required=True, help="QCVN 102 agency code, e.g. 000.00.00.G22")
    q.add_argument("--name", required=True, help="agency name, e.g. 'Văn phòng Chính phủ'")
    q.add_argument("--ec", action="store_true", help="ECDSA P-256 key (signs ECDSA-SHA256) instead of RSA 3072")
    q.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    q.add_argument("--suffix", default="", help="file name suffix: agencies/<code>-<suffix>.pem (second key)")
    q.add_argument("--replace", action="store_true", help="overwrite an existing key and certificate")
    q.set_defaults(func=_issue)

    q = pki_sub.add_parser(
        "revoke",
        help="revoke an agency's certificates and rewrite the CRL",
        **command_help(
            "Revoke an agency's certificates (all of them, one file by --suffix, or one --serial) and rewrite "
            "DIR/crl.pem; copy the CRL to every node's [pki] crl_files.",
            "exchange pki revoke --dir var/pki --code 000.00.00.G22",
            "exchange pki revoke --dir var/pki --code 000.00.00.G22 --serial 3f2a9c",
        ),
    )
    common(q)
    q.add_argument("--code", required=True)
    q.add_argument("--suffix", default=None, help="only the certificate agencies/<code>-<suffix>.pem")
    q.add_argument("--serial", default=None, help="only the certificate with this serial (hex)")
    q.set_defaults(func=_revoke)

    q = pki_sub.add_parser(
        "crl",
        help="write a fresh CRL (DIR/crl.pem)",
        **command_help(
            "Write a fresh CRL with every revoked certificate and a new nextUpdate; nodes refuse a CRL past "
            "its nextUpdate, so run it before that date.",
            "exchange pki crl --dir var/pki --days 30",
        ),
    )
    common(q)
    q.add_argument("--days", type=int, default=30, help="nextUpdate in days from now (default 30)")
    q.set_defaults(func=_crl)

    q = pki_sub.add_parser(
        "list",
        help="list the certificates this CA issued",
        **command_help(
            "List every certificate the CA in --dir issued: agency code, name, serial, key type, expiry, "
            "whether it is revoked, and its file.",
            "exchange pki list --dir var/pki",
        ),
    )
    common(q)
    q.set_defaults(func=_list)


def _ca(directory: Path) -> DevCA:
    from exchange.signing.pki import DevCA

    if not (directory / "ca.pem").exists():
        raise KeyMaterialError(
            f"{directory} holds no CA (ca.pem); create one with `exchange pki init --dir {directory}`"
        )
    return DevCA.load(directory)


def _init(args: argparse.Namespace) -> int:
    from exchange.signing.pki import DevCA

    ca = DevCA.create(args.dir, ec=args.ec, name=args.name, validity=dt.timedelta(days=args.days))
    print(f"CA created: {ca.cert_path} (key {ca.key_path}, CRL {ca.crl_path})")
    print(f"subject: {ca.certificate.subject.rfc4514_string()}  valid until {ca.certificate.not_valid_after_utc}")
    return 0


def _issue(args: argparse.Namespace) -> int:
    from exchange.signing.keys import load_certificate

    ca = _ca(args.dir)
    key, cert_path = ca.issue(
        args.code,
        args.name,
        ec=args.ec,
        validity=dt.timedelta(days=args.days),
        name_suffix=args.suffix,
        replace=args.replace,
    )
    cert = load_certificate(cert_path)
    print(f"issued {args.code} ({'ECDSA P-256' if args.ec else 'RSA 3072'}): certificate {cert_path}, key {key}")
    print(f"serial {cert.serial_number:x}, valid {cert.not_valid_before_utc} .. {cert.not_valid_after_utc}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    ca = _ca(args.dir)
    serial = int(args.serial, 16) if args.serial else None
    revoked = ca.revoke(args.code, name_suffix=args.suffix, serial=serial)
    for entry in revoked:
        print(f"revoked {entry.code} serial {entry.serial} ({entry.file})")
    print(f"CRL rewritten: {ca.crl_path}; copy it to every node's [pki] crl_files")
    return 0


def _crl(args: argparse.Namespace) -> int:
    ca = _ca(args.dir)
    path = ca.write_crl(next_update=dt.timedelta(days=args.days))
    print(f"CRL written: {path} (next update in {args.days} days)")
    return 0


def _list(args: argparse.Namespace) -> int:
    ca = _ca(args.dir)
    rows = [
        (
            e.code,
            e.name,
            e.serial[:16],
            e.key_type,
            e.not_after[:10],
            "revoked " + e.revoked_at[:10] if e.revoked_at else "active",
            e.file,
        )
        for e in ca.entries()
    ]
    print(f"CA {ca.certificate.subject.rfc4514_string()} ({ca.dir})")
    print(table(rows, ["code", "name", "serial", "key", "not after", "state", "file"]))
    return 0
