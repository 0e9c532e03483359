"""The transport frame: one AMQP body carrying the signed XML and its attachment bytes.

Attachment bytes travel beside the XML, not base64-encoded inside it, so they are
hashed once at native speed. Layout (all integers big-endian)::

    b"EXF1" | u32 part count | per part: u16 id length | id (UTF-8) | u64 length | bytes

Part 0 has the id ``envelope`` and holds the signed XML; the others are the
attachments by manifest id.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from exchange.errors import EnvelopeError, PayloadTooLargeError

MAGIC = b"EXF1"
ENVELOPE_PART = "envelope"
CONTENT_TYPE = "application/vnd.exchange.frame"


class FrameError(EnvelopeError):
    """The AMQP body is not a well-formed transport frame (truncated, garbled, foreign)."""

    code = "frame-invalid"


def encode(xml: bytes, attachments: Mapping[str, bytes]) -> bytes:
    """Frame the signed XML and attachments for one AMQP message."""
    parts = [(ENVELOPE_PART, xml), *attachments.items()]
    out = [MAGIC, struct.pack(">I", len(parts))]
    for pid, data in parts:
        raw_id = pid.encode()
        out += [struct.pack(">H", len(raw_id)), raw_id, struct.pack(">Q", len(data)), data]
    return b"".join(out)


def decode(body: bytes, *, max_bytes: int) -> tuple[bytes, dict[str, bytes]]:
    """Split a frame into (signed XML, attachments by id); refuse anything malformed."""
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")
    view = memoryview(body)
    if bytes(view[:4]) != MAGIC:
        raise FrameError("not an exchange transport frame (bad magic); was it published by an exchange node?")
    try:
        (count,) = struct.unpack_from(">I", view, 4)
        pos, parts = 8, {}
        if count < 1 or count > 10_000:
            raise FrameError(f"frame declares {count} parts")
        for _ in range(count):
            (n,) = struct.unpack_from(">H", view, pos)
            pid = bytes(view[pos + 2 : pos + 2 + n]).decode()
            pos += 2 + n
            (size,) = struct.unpack_from(">Q", view, pos)
            pos += 8
            if pos + size > len(body):
                raise FrameError("frame is truncated")
            if pid in parts:
                raise FrameError(f"frame repeats part {pid!r}")
            parts[pid] = bytes(view[pos : pos + size])
            pos += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise FrameError(f"frame is garbled: {exc}") from None
    if pos != len(body):
        raise FrameError("frame has trailing bytes")
    xml = parts.pop(ENVELOPE_PART, None)
    if xml is None:
        raise FrameError("frame has no envelope part")
    return xml, parts
