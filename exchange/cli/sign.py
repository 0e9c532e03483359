"""`exchange sign`: build and sign an envelope from a metadata file and attachment files."""

from __future__ import annotations

import argparse
import mimetypes
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentInfo,
    Envelope,
    Header,
    Kind,
    Operation,
    ReceiptInfo,
    ReceiptOutcome,
    StatusInfo,
    new_message_id,
    utcnow,
)
from exchange.errors import BadRequestError, ExchangeError

#: A metadata file is small; the codec's JSON bound, applied to TOML too.
_MAX_METADATA_BYTES = 1024 * 1024

METADATA_HELP = """\
metadata file (TOML or JSON, by extension). Top level:
  kind = "document" | "status" | "receipt"      (default document)
  operation = "new" | "revoke" | "update" | "replace"   (default new)
  message_id = "<uuid>"  created_at = "2026-11-24T05:00:00Z"  correlation_id = "..."   (optional)
  from = { code = "000.00.00.G22", name = "Văn phòng Chính phủ" }
  to = [ { code = "000.00.00.H41", name = "UBND tỉnh Nghệ An" } ]    (1..n)
[document]  the fields of document-metadata-1.json (as over HTTP, docs/API.md): subject (required),
  code = { number, notation }, document_type = { type, detail, name }, content, priority (0-4),
  steering_type (0-2), due_date, document_id, relates_to, paper, promulgation = { place, date },
  signer = { competence, position, full_name },
  response_for = [ { organ_id, code, promulgation_date, document_id } ], extra = [ { name, value } ]
  (the legacy flat number/notation/type/detail/type_name/steering are read until removed, with a warning)
[status]    response_for (message id), code ("01".."16"), description,
  staff = { department, staff, email, mobile }, timestamp
[receipt]   response_for, outcome ("delivered" | "failed"), envelope_digest, reason_code, reason
[[attachments]]  optional, per --attach file: file = "qd.pdf", name, media_type, description, id
See docs/SIGNING.md for a complete example.

examples:
  exchange sign --key pki/agencies/000.00.00.G22.key --cert pki/agencies/000.00.00.G22.pem \\
      --meta directive.toml --attach qd.pdf --out out/
  exchange verify out/MESSAGE_ID.xml --ca pki/ca.pem --crl pki/crl.pem"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sign",
        help="build and sign an envelope from a metadata file (+ attachments)",
        description="Build an envelope from --meta, sign it with the agency key and certificate, and write "
        "the signed XML plus a copy of each attachment (named by attachment id) so that "
        "`exchange verify` can check them.",
        epilog=METADATA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key", required=True, type=Path, help="the agency's private key (PEM)")
    p.add_argument("--cert", required=True, type=Path, help="the agency's certificate (PEM, leaf first)")
    p.add_argument("--meta", required=True, type=Path, help="envelope metadata, .toml or .json (see below)")
    p.add_argument(
        "--attach", action="append", default=[], type=Path, metavar="FILE", help="an attachment file (repeatable)"
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR_OR_FILE",
        help="a directory (writes <message id>.xml) or an .xml file; attachments go to "
        "<file stem>.attachments/<attachment id>",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from exchange.adapters.safe_files import atomic_write_file, check_component
    from exchange.signing.sign import Signer, sign_envelope

    meta = load_metadata(args.meta)
    files = []
    for path in args.attach:
        try:
            files.append((path, path.read_bytes()))
        except OSError as exc:
            raise BadRequestError(f"cannot read attachment {path}: {exc.strerror or exc}") from exc
    envelope, data = envelope_from_metadata(meta, files)
    signer = Signer.from_files(args.key, args.cert)
    signed = sign_envelope(envelope, signer, data)
    xml_path, att_dir = output_paths(args.out, envelope.message_id)
    try:
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_file(xml_path, signed.xml)
        if envelope.attachments:
            att_dir.mkdir(parents=True, exist_ok=True)
            for a in envelope.attachments:
                # The id was checked against the attachment id pattern when the envelope was built; the copy
                # is still one plain name written inside att_dir without following links (safe_files).
                atomic_write_file(att_dir / check_component(a.id), data[a.id])
    except OSError as exc:
        raise BadRequestError(f"cannot write to {args.out}: {exc.strerror or exc}; choose a writable --out") from exc
    print(
        f"signed {envelope.header.kind.value} {envelope.message_id} From {envelope.header.sender.code} "
        f"as {signer.agency_code} ({signer.signature_method.rsplit('#', 1)[-1].upper()}): {xml_path}"
    )
    for a in envelope.attachments:
        print(f"  attachment {a.id}: {a.name} ({a.size} bytes, sha256 {a.sha256}) -> {att_dir / a.id}")
    return 0


def output_paths(out: Path, message_id: str) -> tuple[Path, Path]:
    """``(xml file, attachments directory)`` for ``--out`` (a directory, or a file path ending in .xml)."""
    if out.suffix.lower() == ".xml" and not out.is_dir():
        return out, out.with_suffix(".attachments")
    return out / f"{message_id}.xml", out / f"{message_id}.attachments"


def load_metadata(path: Path) -> dict[str, Any]:
    """Read a TOML or JSON metadata file (JSON within the metadata codec's bounds)."""
    from exchange.metadata import load_json

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"cannot read metadata {path}: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_METADATA_BYTES:
        raise BadRequestError(f"{path} is {len(raw)} bytes; a metadata file has at most {_MAX_METADATA_BYTES}")
    if path.suffix.lower() == ".json":
        meta = load_json(raw, f"metadata file {path}")
    else:
        try:
            meta = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"{path} is not valid TOML: {exc}") from exc
        except RecursionError:  # tomllib recurses per nested array / inline table
            raise BadRequestError(f"{path} nests too deeply; metadata is a few levels deep at most") from None
    if not isinstance(meta, dict):
        raise BadRequestError(f"{path} must hold a table/object at the top level")
    return meta


def _agency(value: Any, where: str) -> AgencyRef:
    if isinstance(value, str):
        return AgencyRef(value)
    if not isinstance(value, Mapping) or "code" not in value:
        raise BadRequestError(f"{where} must be a table with a code (and optional name)")
    return AgencyRef(str(value["code"]), str(value.get("name", "")))


def _date(value: Any) -> date:
    return value if isinstance(value, date) and not isinstance(value, datetime) else date.fromisoformat(str(value))


def _datetime(value: Any) -> datetime:
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no timezone; write it in UTC with Z")
    parsed = parsed.astimezone(UTC)
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _document(d: Any) -> DocumentInfo:
    from exchange.metadata import decode_document

    return decode_document(d, path="document", caller="exchange sign", legacy=True, require_code=False)


def _status(s: Any) -> StatusInfo:
    from exchange.metadata import decode_status

    if not isinstance(s, Mapping):
        raise BadRequestError("[status] must be a table; see `exchange sign --help`")
    status = decode_status(
        s, path="status", caller="exchange sign", legacy=True, context_fields=frozenset({"response_for", "timestamp"})
    )
    return StatusInfo(
        response_for=str(s["response_for"]),
        code=status.code,
        description=status.description,
        staff=status.staff,
        timestamp=_datetime(s["timestamp"]) if s.get("timestamp") else None,
    )


def _receipt(r: Mapping[str, Any]) -> ReceiptInfo:
    return ReceiptInfo(
        response_for=str(r["response_for"]),
        outcome=ReceiptOutcome(str(r["outcome"])),
        envelope_digest=str(r.get("envelope_digest", "")),
        reason_code=str(r.get("reason_code", "")),
        reason=str(r.get("reason", "")),
    )


def envelope_from_metadata(
    meta: Mapping[str, Any], files: Sequence[tuple[Path, bytes]] = ()
) -> tuple[Envelope, dict[str, bytes]]:
    """The envelope described by ``meta`` with ``files`` as attachments; ``(envelope, bytes by attachment id)``."""
    try:
        kind = Kind(str(meta.get("kind", "document")))
        overrides = {str(a.get("file", a.get("name", ""))): a for a in meta.get("attachments", [])}
        attachments, data = [], {}
        for i, (path, content) in enumerate(files, start=1):
            o = overrides.get(path.name, {})
            media_type = o.get("media_type") or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            a = Attachment.of(
                str(o.get("name", path.name)),
                content,
                str(media_type),
                id=str(o.get("id", f"att-{i}")),
                description=str(o.get("description", "")),
            )
            attachments.append(a)
            data[a.id] = content
        to = meta.get("to", [])
        header = Header(
            message_id=str(meta.get("message_id") or new_message_id()),
            kind=kind,
            sender=_agency(meta.get("from"), "from"),
            recipients=tuple(_agency(t, "to") for t in (to if isinstance(to, list) else [to])),
            created_at=_datetime(meta["created_at"]) if meta.get("created_at") else utcnow(),
            operation=Operation(str(meta.get("operation", "new"))),
            correlation_id=str(meta.get("correlation_id", "")),
            document=_document(meta["document"]) if kind is Kind.DOCUMENT else None,
            status=_status(meta["status"]) if kind is Kind.STATUS else None,
            receipt=_receipt(meta["receipt"]) if kind is Kind.RECEIPT else None,
        )
        uuid.UUID(header.message_id)
        return Envelope(header, tuple(attachments)), data
    except ExchangeError:
        raise
    except KeyError as exc:
        raise BadRequestError(f"the metadata lacks {exc.args[0]!r}; see `exchange sign --help`") from exc
    except (ValueError, TypeError, AttributeError) as exc:
        raise BadRequestError(f"the metadata is invalid: {exc}; see `exchange sign --help`") from exc
