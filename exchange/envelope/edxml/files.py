"""An attachment as a file for an E-Office: a ZIP-wrapped one unwrapped, within bounds.

The hub's SDK packs each attachment's base64 as a ZIP holding the one file when
``AttachmentEncoded/Attachment/ContentType`` says ``application/zip``, while the
manifest's ``Reference/ContentType`` gives the file's own type. The bus keeps and
forwards the package's bytes exactly (the ZIP); where it hands an attachment to
an E-Office as a file (file drop, gateway download) it offers the file inside,
named and typed as the manifest says, with :func:`offered_file`.

Unwrapping is bounded: exactly one member, a plain name (no directory, no
``..``, not absolute), not encrypted, at most :data:`MAX_UNZIPPED_BYTES` and at
most :data:`MAX_RATIO` times the ZIP's size; the member is read in chunks and
counted, never trusted from the ZIP's header. A ZIP that breaks a bound is not
unwrapped: the E-Office gets it as it came, as ``<name>.zip``, with the reason.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from exchange.envelope.model import Attachment, DocumentInfo
from exchange.errors import AttachmentError

__all__ = ["MAX_RATIO", "MAX_UNZIPPED_BYTES", "ZIP_TYPES", "OfferedFile", "offered_file", "unwrap_zip"]

#: Largest file a wrapped attachment may unzip to (the bus's attachment limit is 32 MiB).
MAX_UNZIPPED_BYTES = 64 * 1024 * 1024
#: Largest uncompressed / compressed ratio: documents compress 2-10x; a bomb compresses 1000x.
MAX_RATIO = 100
ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class OfferedFile:
    """What to hand an E-Office for one attachment: name, media type, bytes, and whether it was unwrapped.

    ``reason`` says why a ZIP-wrapped attachment was offered as the ZIP itself.
    """

    name: str
    media_type: str
    data: bytes
    unwrapped: bool = False
    reason: str = ""


def transfer_type(document: DocumentInfo | None, attachment: Attachment) -> str:
    """AttachmentEncoded's ContentType of ``attachment`` as imported, or ""."""
    from exchange.envelope.edxml.reader import TRANSFER_TYPE_KEY

    if document is None:
        return ""
    key = TRANSFER_TYPE_KEY + attachment.sha256
    return next((v for k, v in document.extra if k == key), "")


def offered_file(
    document: DocumentInfo | None,
    attachment: Attachment,
    data: bytes,
    *,
    max_bytes: int = MAX_UNZIPPED_BYTES,
    max_ratio: int = MAX_RATIO,
) -> OfferedFile:
    """The file to offer for ``attachment`` (bytes ``data``) of ``document``: unwrapped when ZIP-wrapped."""
    packed = transfer_type(document, attachment).lower()
    if packed not in ZIP_TYPES or attachment.media_type.lower() in ZIP_TYPES:
        return OfferedFile(attachment.name, attachment.media_type, data)
    try:
        inner = unwrap_zip(data, max_bytes=max_bytes, max_ratio=max_ratio)
    except AttachmentError as exc:
        name = attachment.name if attachment.name.lower().endswith(".zip") else f"{attachment.name}.zip"
        return OfferedFile(name, "application/zip", data, reason=exc.message)
    return OfferedFile(attachment.name, attachment.media_type, inner, unwrapped=True)


def unwrap_zip(data: bytes, *, max_bytes: int = MAX_UNZIPPED_BYTES, max_ratio: int = MAX_RATIO) -> bytes:
    """The one file inside ZIP ``data``; AttachmentError when it is not one plain, bounded member."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise AttachmentError(f"the attachment says it is ZIP-wrapped but is not a ZIP ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(archive.infolist()) != 1 or len(members) != 1:
            raise AttachmentError(
                f"the ZIP-wrapped attachment holds {len(archive.infolist())} entries; a wrapped file is exactly one"
            )
        member = members[0]
        if _unsafe_name(member.filename):
            raise AttachmentError(f"the ZIP member {member.filename!r} has a path; a wrapped file has a plain name")
        if member.flag_bits & 0x1:
            raise AttachmentError("the ZIP member is encrypted; it cannot be unwrapped")
        limit = min(max_bytes, max(len(data), 1) * max_ratio)
        if member.file_size > limit:
            raise AttachmentError(f"the ZIP member unzips to {member.file_size:,} bytes, over the {limit:,} allowed")
        out = bytearray()
        try:
            with archive.open(member) as stream:
                for chunk in _chunks(stream):
                    out += chunk
                    if len(out) > limit:
                        raise AttachmentError(
                            f"the ZIP member unzips to more than {limit:,} bytes (size limit {max_bytes:,}, ratio "
                            f"{max_ratio}:1); it is not unwrapped"
                        )
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError, ValueError) as exc:
            raise AttachmentError(f"the ZIP member cannot be read ({exc})") from None
        return bytes(out)


def _chunks(stream: IO[bytes]) -> Iterable[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def _unsafe_name(name: str) -> bool:
    return (
        not name or "/" in name or "\\" in name or name in (".", "..") or ":" in name or any(ord(c) < 32 for c in name)
    )
