"""`exchange verify`: check a signed envelope (and its attachments) and say who signed what, or why not."""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import HelpFormatter
from exchange.errors import AttachmentError, BadRequestError, ConfigError, ExchangeError, XmlTooLargeError

if TYPE_CHECKING:
    from exchange.envelope.model import Envelope

_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="verify a signed envelope against a trust store (and its attachments)",
        description="Verify FILE: structure, algorithms, certificate (chain, validity, key usage, CRL), "
        "signature, schema, From agency = certificate agency, and attachment digests. Exit 0 and "
        "a summary if it verifies; exit 1 and one line with the reason otherwise.",
        epilog="examples:\n"
        "  exchange verify out/signed.xml --ca pki/ca.pem --crl pki/crl.pem\n"
        "  exchange verify received.xml --attachments-dir received/ --config /etc/exchange/node.toml",
        formatter_class=HelpFormatter,
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the signed envelope XML")
    p.add_argument(
        "--attachments-dir",
        type=Path,
        default=None,
        metavar="D",
        help="directory holding the attachments, named by attachment id (or by file name); "
        "default: FILE's <stem>.attachments directory if it exists",
    )
    p.add_argument(
        "--ca",
        action="append",
        type=Path,
        default=[],
        metavar="CA.pem",
        help="trusted CA certificate file (repeatable); default: [pki] ca_files of --config",
    )
    p.add_argument(
        "--crl",
        action="append",
        type=Path,
        default=[],
        metavar="CRL.pem",
        help="CRL file (repeatable); default: [pki] crl_files of --config when --ca is not given",
    )
    p.add_argument("--config", "-c", default=None, help="node TOML to take the trust store from")
    p.add_argument(
        "--stale-crl",
        choices=("refuse", "warn"),
        default="refuse",
        help="what to do when a CRL is past its nextUpdate (default refuse)",
    )
    p.set_defaults(func=_run)


def _trust_paths(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    if args.ca:
        return list(args.ca), list(args.crl)
    if args.config:
        from exchange.config import load_config

        cfg = load_config(args.config)
        return list(cfg.ca_files), list(args.crl or cfg.crl_files)
    raise ConfigError("no trust store: give --ca CA.pem (and --crl CRL.pem), or --config NODE.toml")


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, refused (XmlTooLargeError) without reading it when it holds more than ``limit``.

    A regular file is measured first (stat); anything else (``/dev/zero``, a pipe) is read
    at most ``limit + 1`` bytes, so memory stays bounded whatever the file is.
    """
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise XmlTooLargeError(
                    f"{path} is {info.st_size} bytes, over the envelope limit of {limit} bytes; "
                    "it is not an envelope (attachments travel beside the XML, not inside it)",
                    detail={"size": info.st_size, "limit": limit},
                )
            data = f.read(limit + 1)
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror or exc}; give the signed envelope's file") from exc
    if len(data) > limit:
        raise XmlTooLargeError(
            f"{path} holds more than the envelope limit of {limit} bytes; it is not an envelope",
            detail={"limit": limit},
        )
    return data


def read_attachments(directory: Path, envelope: Envelope) -> dict[str, bytes]:
    """Attachment bytes by id from ``directory`` (file named by the id, else by the manifest name).

    Missing files are left out: the verifier then reports them (after the
    signature, so an untrusted envelope is reported as untrusted first).
    """
    if not directory.is_dir():
        raise AttachmentError(f"{directory} is not a directory; give --attachments-dir the attachments' folder")
    data: dict[str, bytes] = {}
    for a in envelope.attachments:
        # Names come from an unverified manifest: never let one escape the directory.
        candidates = [n for n in (a.id, Path(a.name).name) if _SAFE_NAME.match(n) and n not in (".", "..")]
        for name in candidates:
            path = directory / name
            if path.is_file():
                # At most one byte more than the manifest says: enough to tell the verifier it is too long.
                try:
                    with open(path, "rb") as f:
                        data[a.id] = f.read(a.size + 1)
                except OSError as exc:
                    raise AttachmentError(f"cannot read attachment {path}: {exc.strerror or exc}") from exc
                break
    return data


def _run(args: argparse.Namespace) -> int:
    from exchange.envelope.parse import DEFAULT_LIMITS, envelope_from_element, parse_xml
    from exchange.signing.keys import subject_name
    from exchange.signing.trust import TrustStore
    from exchange.signing.verify import Verifier

    xml = read_bounded(args.file, DEFAULT_LIMITS.max_bytes)
    cas, crls = _trust_paths(args)
    verifier = Verifier(TrustStore.from_paths(cas, crls, stale_crl=args.stale_crl, reload_interval=None))
    att_dir = args.attachments_dir
    if att_dir is None and args.file.with_suffix(".attachments").is_dir():
        att_dir = args.file.with_suffix(".attachments")
    data = None
    if att_dir is not None:
        # Locate files by the manifest before verifying; the digests are checked only against the signed manifest.
        try:
            unverified = envelope_from_element(parse_xml(xml))
        except ExchangeError:
            unverified = None
        if unverified is not None:
            data = read_attachments(att_dir, unverified)
    verified = verifier.verify(xml, data)
    env = verified.signed.envelope
    h = env.header
    cert = verified.certificate
    print(f"OK: {args.file} is signed by agency {verified.signer_agency} ({subject_name(cert)})")
    print(f"  certificate: {cert.subject.rfc4514_string()}")
    print(
        f"               serial {cert.serial_number:x}, issuer {cert.issuer.rfc4514_string()}, "
        f"valid until {cert.not_valid_after_utc.isoformat()}"
    )
    print(
        f"  message:     {h.message_id} kind={h.kind.value} operation={h.operation.value} "
        f"created={h.created_at.isoformat()}"
    )
    print(f"  from:        {h.sender.code} {h.sender.name}".rstrip())
    for r in h.recipients:
        print(f"  to:          {r.code} {r.name}".rstrip())
    if h.document is not None:
        print(f"  subject:     {h.document.subject}")
    if h.status is not None:
        print(f"  status:      {h.status.code.value} for {h.status.response_for}")
    if h.receipt is not None:
        print(f"  receipt:     {h.receipt.outcome.value} for {h.receipt.response_for}")
    if env.attachments:
        state = "OK (sizes and SHA-256 match)" if data is not None else "NOT CHECKED (no --attachments-dir)"
        print(f"  attachments: {len(env.attachments)} {state}")
        for a in env.attachments:
            print(f"    {a.id}: {a.name} ({a.size} bytes, {a.media_type}, sha256 {a.sha256})")
    else:
        print("  attachments: none")
    return 0
