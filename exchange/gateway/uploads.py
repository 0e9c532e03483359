"""Reading request bodies as streams, refusing oversize ones as soon as they cross a limit.

Nothing here buffers more than the limit it enforces: a declared Content-Length
above ``max_body_bytes`` is refused before a byte is read, and a chunked body
is counted while it streams and refused the moment it crosses a limit.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from exchange.adapters.base import OutgoingFile
from exchange.envelope.model import check_attachment_name
from exchange.errors import AttachmentError, BadRequestError, PayloadTooLargeError
from exchange.gateway.errors import UnsupportedMediaTypeError
from exchange.gateway.metadata import check_text, load_json

CHUNK = 64 * 1024
#: The metadata part is small JSON; anything bigger is not metadata.
MAX_METADATA_BYTES = 1024 * 1024
MAX_FILES = 100


@dataclass(frozen=True, slots=True)
class Limits:
    """The byte limits one request is held to."""

    body: int  # the whole request body ([http] max_body_bytes)
    attachment: int  # one attachment ([limits] max_attachment_bytes)
    message: int  # all attachments of a document ([limits] max_message_bytes)


class _Budget:
    """Counts bytes across the whole body and refuses once ``limit`` is crossed."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise PayloadTooLargeError(
                f"the request body is over the gateway's limit of {self.limit} bytes ([http] max_body_bytes)",
                detail={"limit": self.limit},
            )


def check_declared_length(request: web.Request, limit: int) -> None:
    """Refuse at once a body whose declared Content-Length is over ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLargeError(
            f"the request body is {request.content_length} bytes, over the gateway's limit of {limit} bytes "
            "([http] max_body_bytes)",
            detail={"limit": limit, "size": request.content_length},
        )


def media_type(request: web.Request) -> str:
    return request.content_type.lower()


def is_xml(content_type: str) -> bool:
    return content_type in ("application/xml", "text/xml") or content_type.endswith("+xml")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, streamed, at most ``limit`` bytes (PayloadTooLargeError beyond)."""
    check_declared_length(request, limit)
    budget = _Budget(limit)
    out = bytearray()
    while chunk := await request.content.read(CHUNK):
        budget.take(len(chunk))
        out += chunk
    return bytes(out)


async def _read_part(part: BodyPartReader, budget: _Budget, limit: int, too_big: str) -> bytes:
    out = bytearray()
    while chunk := await part.read_chunk(CHUNK):
        budget.take(len(chunk))
        if len(out) + len(chunk) > limit:
            raise PayloadTooLargeError(too_big, detail={"limit": limit})
        out += chunk
    return bytes(out)


def _file_name(raw: str) -> str:
    # RFC 7578 4.2 lets senders percent-encode a non-ASCII filename (aiohttp's client does; curl and
    # browsers send raw UTF-8): decode it. Then keep only the last path component, since an
    # E-Office may store attachments under their names.
    name = posixpath.basename(unquote(raw).replace("\\", "/")).strip()
    if not name or name in (".", ".."):
        raise AttachmentError(f"the attachment file name {raw!r} is empty; give every file part a filename")
    if len(name) > 255:
        raise AttachmentError("an attachment file name is longer than 255 characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise AttachmentError("an attachment file name contains control characters; rename the file")
    # Bidi and other invisible characters are refused before the bytes are read (docs/ENVELOPE.md).
    return check_attachment_name(check_text(name, "attachment file name"))


#: type "/" subtype, RFC 6838 restricted names.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


def _media_type(raw: str, name: str) -> str:
    value = raw.split(";")[0].strip() or "application/octet-stream"
    if not MEDIA_TYPE.fullmatch(value):
        raise AttachmentError(f"the Content-Type of file {name!r} is not a media type (type/subtype)")
    return value.lower()


async def read_document_form(request: web.Request, limits: Limits) -> tuple[Any, list[OutgoingFile]]:
    """A multipart/form-data submission: the ``metadata`` JSON part and the file parts, streamed."""
    check_declared_length(request, limits.body)
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError) as exc:  # aiohttp asserts on a missing boundary
        raise BadRequestError(
            f"the multipart body cannot be read ({exc}); send multipart/form-data with a boundary"
        ) from None
    budget = _Budget(limits.body)
    metadata: Any = None
    seen_metadata = False
    files: list[OutgoingFile] = []
    total = 0
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequestError("nested multipart bodies are not accepted; send flat multipart/form-data")
            if part.name == "metadata" and part.filename is None:
                if seen_metadata:
                    raise BadRequestError("the form has two 'metadata' parts; send exactly one")
                raw = await _read_part(
                    part, budget, MAX_METADATA_BYTES, f"the metadata part is over {MAX_METADATA_BYTES} bytes"
                )
                metadata, seen_metadata = load_json(raw, "metadata part"), True
            elif part.filename is not None:
                if len(files) >= MAX_FILES:
                    raise AttachmentError(f"a document carries at most {MAX_FILES} attachments")
                name = _file_name(part.filename)
                data = await _read_part(
                    part,
                    budget,
                    limits.attachment,
                    f"attachment {name!r} is over the limit of {limits.attachment} bytes per attachment",
                )
                total += len(data)
                if total > limits.message:
                    raise PayloadTooLargeError(
                        f"the attachments total over {limits.message} bytes, the limit per document",
                        detail={"limit": limits.message},
                    )
                files.append(OutgoingFile(name, data, _media_type(part.headers.get("Content-Type", ""), name)))
            else:
                raise BadRequestError(
                    f"unexpected form field {part.name!r}; send one 'metadata' field (JSON) and file parts"
                )
    except (ValueError, HttpProcessingError) as exc:  # a malformed stream: bad boundary, header, truncation
        raise BadRequestError(
            f"the multipart body is malformed ({type(exc).__name__}); send RFC 7578 multipart/form-data"
        ) from None
    if not seen_metadata:
        raise BadRequestError(
            "the form has no 'metadata' field; send the document metadata as JSON in a field named 'metadata'"
        )
    return metadata, files


async def read_json(request: web.Request, limit: int = MAX_METADATA_BYTES) -> Any:
    """A JSON body (application/json), at most ``limit`` bytes."""
    if media_type(request) != "application/json":
        raise UnsupportedMediaTypeError(
            f"this endpoint takes application/json, not {request.content_type or 'no Content-Type'}"
        )
    return load_json(await read_body(request, limit), "request body")


def _edxml_limit() -> int:
    from exchange.envelope.edxml import EDXML_LIMITS

    return EDXML_LIMITS.max_bytes


#: The largest edXML package the codec reads.
EDXML_LIMIT = _edxml_limit()
