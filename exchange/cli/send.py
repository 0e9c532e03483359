"""`exchange send`: submit a document with attachments from the command line.

The document is signed with the sender agency's key and written to the node's
outbox; the running node (`exchange serve`) publishes it. Prints the message id.
"""

from __future__ import annotations

import argparse
import mimetypes
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

from exchange.cli._common import add_config_argument, command_help, resolve_config, run

if TYPE_CHECKING:
    from exchange.adapters.base import SubmitResult


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "send",
        help="sign and submit a document from the command line",
        **command_help(
            "Sign a document with the sender agency's key and write it to the node's outbox; the running node "
            "(`exchange serve`) publishes it. Prints only the message id on stdout (logs go to stderr), so "
            "scripts can capture it; follow it with `exchange track ID`.",
            "exchange send --from 000.00.00.G22 --to 000.00.00.H41 --number 12 --notation CT-TTg "
            "--subject 'Chỉ thị về chuyển đổi số' --attach qd.pdf",
            "id=$(exchange send --from 000.00.00.G22 --to 000.00.00.H41 --to 000.00.31.H41 --number 13 "
            "--subject 'Báo cáo' --priority 3)",
        ),
    )
    add_config_argument(p)
    p.add_argument("--from", dest="sender", required=True, help="sender agency code (hosted by this node)")
    p.add_argument("--to", dest="recipients", action="append", required=True, help="recipient agency code (repeat)")
    p.add_argument("--subject", required=True)
    p.add_argument("--number", required=True, help="document number, e.g. 12")
    p.add_argument("--notation", default="", help="document notation, e.g. CT-TTg")
    p.add_argument("--type-name", default="Công văn", help="document type name")
    p.add_argument("--priority", type=int, default=0, choices=range(5), help="0 normal … 3 express (hỏa tốc)")
    p.add_argument("--steering", type=int, default=0, choices=range(3), help="0 none, 1 directive, 2 report")
    p.add_argument("--place", default="", help="promulgation place (date = today)")
    p.add_argument("--attach", action="append", default=[], type=Path, help="attachment file (repeat)")
    p.add_argument("--operation", default="new", choices=["new", "revoke", "update", "replace"])
    p.add_argument("--relates-to", help="message id a revoke/update/replace acts on")
    p.add_argument("--idempotency-key", help="a retry with the same key returns the same message id")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange.adapters.base import OutgoingFile
    from exchange.envelope.model import (
        DocumentCode,
        DocumentInfo,
        DocumentType,
        Operation,
        Priority,
        Promulgation,
        SteeringType,
    )
    from exchange.errors import AttachmentError
    from exchange.node import build_service

    cfg = resolve_config(args)
    files = []
    for path in args.attach:
        if not path.is_file():
            raise AttachmentError(f"attachment {path} does not exist or is not a file")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(OutgoingFile(path.name, path.read_bytes(), media))
    document = DocumentInfo(
        code=DocumentCode(args.number, args.notation),
        subject=args.subject,
        document_type=DocumentType(name=args.type_name),
        priority=Priority(args.priority),
        steering=SteeringType(args.steering),
        promulgation=Promulgation(args.place, date.today()) if args.place else None,
        relates_to=args.relates_to,
    )

    async def go() -> SubmitResult:
        service = await build_service(cfg)
        try:
            return await service.submit_document(
                args.sender,
                args.recipients,
                document,
                files,
                operation=Operation(args.operation),
                idempotency_key=args.idempotency_key,
            )
        finally:
            await service.store.close()

    result = run(go)
    print(result.message_id)
    return 0
