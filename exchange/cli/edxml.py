"""`exchange edxml`: look inside an edXML package, import it to an envelope, export an envelope to one.

- ``exchange edxml check FILE``: what the package holds, its organ ids and the
  agencies they map to, its legacy signature, what import tolerated, and what an
  export would change (for an imported package: nothing, byte for byte);
- ``exchange edxml import FILE``: the (unsigned) envelope on stdout, the
  attachment bytes into ``--attachments-dir`` (named by attachment id);
- ``exchange edxml export ENVELOPE``: the edXML package on stdout (or ``-o``).

``--directory`` (the node's directory TOML or JSON) maps organ id aliases; without
it only QCVN 102 codes name agencies. docs/EDXML.md explains every line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exchange.errors import BadRequestError, ConfigError

if TYPE_CHECKING:  # the codec is imported inside the commands: every command module loads for `exchange --help`
    from exchange.envelope.edxml import EdxmlPackage

from exchange.cli._common import HelpFormatter, command_help


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edxml",
        help="check, import or export QCVN 102 edXML packages",
        **command_help(
            "Work with edXML packages as E-Offices and the national hub write them (docs/EDXML.md).",
            "exchange edxml check package.edxml",
            "exchange edxml export envelope.xml",
        ),
    )
    cmds = p.add_subparsers(dest="edxml_command", metavar="COMMAND", required=True)

    check = cmds.add_parser(
        "check",
        help="say what a package holds and what an export would change",
        description="Import FILE and report: kind, sender and recipients with the agencies "
        "their organ ids map to, refused recipients, attachments (both content "
        "types, ZIP wrapping), trace headers, the legacy signature, the elements "
        "carried verbatim, the tolerated deviations, and what an export would "
        "change. Exit 0 if the package imports, 1 with the reason if not.",
        epilog="examples:\n  exchange edxml check package.edxml\n  exchange edxml check package.edxml --json",
        formatter_class=HelpFormatter,
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _directory_arg(check)
    check.set_defaults(func=_check)

    imp = cmds.add_parser(
        "import",
        help="import a package to an envelope on stdout",
        description="Import FILE and print the unsigned envelope XML (docs/ENVELOPE.md). "
        "Attachment bytes go to --attachments-dir, one file per attachment id.",
        epilog="examples:\n  exchange edxml import package.edxml --attachments-dir out/",
        formatter_class=HelpFormatter,
    )
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument(
        "--attachments-dir",
        type=Path,
        default=None,
        metavar="D",
        help="write the attachments here (default: FILE's <stem>.attachments next to it)",
    )
    _directory_arg(imp)
    imp.set_defaults(func=_import)

    exp = cmds.add_parser(
        "export",
        help="export an envelope to an edXML package",
        description="Read ENVELOPE (envelope XML, signed or not) and write the edXML package. "
        "An envelope imported from a package gives that package back.",
        epilog="examples:\n  exchange edxml export envelope.xml",
        formatter_class=HelpFormatter,
    )
    exp.add_argument("envelope", type=Path, metavar="ENVELOPE")
    exp.add_argument(
        "--attachments-dir",
        type=Path,
        default=None,
        metavar="D",
        help="the attachments, one file per attachment id (default: <stem>.attachments)",
    )
    exp.add_argument("-o", "--output", type=Path, default=None, metavar="OUT", help="write here, not to stdout")
    exp.set_defaults(func=_export)


def _directory_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--directory",
        type=Path,
        default=None,
        metavar="DIR",
        help="agency directory (TOML or JSON, with aliases) to map organ ids through",
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadRequestError(f"cannot read {path}: {exc.strerror}; give the path of an edXML file") from None


def _package(args: argparse.Namespace) -> EdxmlPackage:
    from exchange.envelope.edxml import import_package
    from exchange.routing.directory import Directory

    directory = Directory.load(args.directory) if args.directory else None
    return import_package(_read(args.file), agencies=directory)


def report(package: EdxmlPackage, data: bytes) -> dict[str, Any]:
    """What ``check`` says about an imported package, as data."""
    from exchange.envelope.edxml import export_package
    from exchange.envelope.edxml.files import transfer_type

    env = package.envelope
    h = env.header
    out = export_package(env, package.attachment_data)
    changes = (
        "nothing: the export is the package byte for byte"
        if out == data
        else ("the export differs from the package (it was written from the model; see docs/EDXML.md)")
    )
    return {
        "kind": h.kind.value,
        "operation": h.operation.value,
        "sha256": package.sha256,
        "subject": h.document.subject if h.document else "",
        "status": h.status.code.value if h.status else "",
        "sender": h.sender.code,
        "recipients": [r.code for r in h.recipients],
        "refused": [
            {"element": r.path, "organ_id": r.organ_id, "code": r.code, "reason": r.reason} for r in package.refused
        ],
        "organ_ids": [
            {"element": u.path, "written": u.written, "agency": u.agency, "how": u.how} for u in package.organ_ids
        ],
        "attachments": [
            {
                "id": a.id,
                "name": a.name,
                "content_type": package.content_types.get(a.id, ("", ""))[0],
                "encoded_content_type": package.content_types.get(a.id, ("", ""))[1],
                "zip_wrapped": transfer_type(h.document, a).lower()
                in ("application/zip", "application/x-zip-compressed"),
                "size": a.size,
                "sha256": a.sha256,
            }
            for a in env.attachments
        ],
        "trace": [{"organ_id": hop.node, "at": hop.at.isoformat()} for hop in env.trace],
        "signature": None
        if package.signature is None
        else {
            "element": package.signature.element,
            "algorithm": package.signature.algorithm,
            "notes": list(package.signature.notes),
        },
        "carried": list(package.carried),
        "notes": list(package.notes),
        "unresolved": list(package.unresolved),
        "export_changes": changes,
    }


def _check(args: argparse.Namespace) -> int:
    data = _read(args.file)
    package = _package(args)
    r = report(package, data)
    if args.json:
        print(json.dumps(r, ensure_ascii=False, indent=2))
        return 0
    print(f"{args.file}: edXML {r['kind']} package ({r['operation']}), SHA-256 {r['sha256']}")
    if r["subject"]:
        print(f"  subject: {r['subject']}")
    if r["status"]:
        print(f"  status code: {r['status']}")
    print(f"  sender: {r['sender']}; recipients: {', '.join(r['recipients'])}")
    for x in r["refused"]:
        print(f"  refused recipient {x['organ_id']} ({x['element']}): [{x['code']}] {x['reason']}")
    print("  organ ids:")
    for u in r["organ_ids"]:
        mapped = u["agency"] or "(no agency: refused where the bus routes on it, else kept as written)"
        print(f"    {u['element']}: {u['written']} -> {mapped} [{u['how']}]")
    print(f"  attachments: {len(r['attachments'])}")
    for a in r["attachments"]:
        packed = f", encoded as {a['encoded_content_type']}" if a["encoded_content_type"] else ""
        wrapped = " (ZIP-wrapped: offered unzipped to E-Offices)" if a["zip_wrapped"] else ""
        print(f"    {a['id']}: {a['name']} ({a['content_type'] or '?'}{packed}), {a['size']} bytes{wrapped}")
    print(f"  trace headers with an organ id: {len(r['trace'])}")
    sig = r["signature"]
    if sig is None:
        print("  legacy signature: none (or an empty placeholder)")
    else:
        print(f"  legacy signature: {sig['element']} {sig['algorithm'] or '(no algorithm)'}")
        for note in sig["notes"]:
            print(f"    - {note}")
    for c in r["carried"]:
        print(f"  carried verbatim (not modelled): {c}")
    for n in r["notes"]:
        print(f"  tolerated: {n}")
    print(f"  an export would change: {r['export_changes']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from exchange.envelope.build import envelope_to_element, serialize

    package = _package(args)
    target = args.attachments_dir or args.file.with_name(args.file.stem + ".attachments")
    if package.attachment_data:
        target.mkdir(parents=True, exist_ok=True)
        for attachment_id, data in package.attachment_data.items():
            if "/" in attachment_id or "\\" in attachment_id or attachment_id in (".", ".."):
                raise BadRequestError(f"attachment id {attachment_id!r} is not a plain file name; cannot write it")
            (target / attachment_id).write_bytes(data)
        print(f"exchange: {len(package.attachment_data)} attachment(s) written to {target}", file=sys.stderr)
    for r in package.refused:
        print(f"exchange: refused recipient {r.organ_id} ({r.path}): [{r.code}] {r.reason}", file=sys.stderr)
    sys.stdout.buffer.write(serialize(envelope_to_element(package.envelope)) + b"\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    from exchange.envelope.edxml import export_package
    from exchange.envelope.parse import XmlLimits, parse_envelope

    _, envelope = parse_envelope(_read(args.envelope), XmlLimits(max_bytes=2 * 1024 * 1024))
    directory = args.attachments_dir or args.envelope.with_name(args.envelope.stem + ".attachments")
    data: dict[str, bytes] = {}
    for a in envelope.attachments:
        path = directory / a.id
        if "/" in a.id or "\\" in a.id or not path.is_file():
            raise ConfigError(f"attachment {a.id} ({a.name}) is not in {directory}; give --attachments-dir")
        data[a.id] = path.read_bytes()
    out = export_package(envelope, data)
    if args.output:
        args.output.write_bytes(out)
    else:
        sys.stdout.buffer.write(out)
    return 0
