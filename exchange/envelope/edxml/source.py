"""The package as the sender wrote it, carried inside the envelope without its attachment payloads.

Mapping an edXML package to the envelope model and back cannot be exact: senders
use their own prefixes, orders, ContentIds, organ ids, signatures and elements
nobody documented. So the codec keeps the package itself: its exact bytes with
each attachment's base64 text cut out (the attachments travel once, as the
envelope's attachments). That *source* is what ``DocumentInfo.source`` /
``StatusInfo.source`` hold, signed with the envelope; export splices the base64
back, so a package imported and exported unchanged comes out byte for byte.

Encoding (``PackageSource.encode``): ``exchange-edxml-source/1\\n``, one JSON line
(the package's SHA-256 and the holes: byte offset in the skeleton, the payload's
SHA-256 and its layout: leading and trailing whitespace, line width and line
separator), then the skeleton compressed with zlib. A payload is cut only when
re-encoding its bytes with that layout gives back its text exactly and the text
occurs in the package as often as it is used; otherwise it stays in the skeleton.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exchange.errors import AttachmentDigestError, EdxmlError, PayloadTooLargeError

__all__ = ["MAX_SKELETON_BYTES", "MAX_SOURCE_BYTES", "Hole", "PackageSource"]

_MAGIC = b"exchange-edxml-source/1\n"
#: The compressed source travels inside the signed envelope (limit 1 MiB of XML, base64 here).
MAX_SOURCE_BYTES = 256 * 1024
#: What the skeleton may inflate to (the package's XML outside its attachments).
MAX_SKELETON_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Hole:
    """Where one attachment's base64 text was cut out of the package, and how it was laid out."""

    at: int
    sha256: str
    lead: str = ""
    trail: str = ""
    wrap: int = 0
    sep: str = ""

    def text(self, raw: bytes) -> str:
        """The base64 text of ``raw`` laid out as the sender wrote it."""
        b64 = base64.b64encode(raw).decode("ascii")
        if self.wrap:
            b64 = self.sep.join(b64[i : i + self.wrap] for i in range(0, len(b64), self.wrap))
        return self.lead + b64 + self.trail


def _layout(raw_text: str, raw: bytes, at: int) -> Hole | None:
    """The hole that re-creates ``raw_text`` from ``raw``, or None when no simple layout does."""
    core = raw_text.strip()
    if not core:
        return None
    lead = raw_text[: len(raw_text) - len(raw_text.lstrip())]
    trail = raw_text[len(raw_text.rstrip()) :]
    digest = hashlib.sha256(raw).hexdigest()
    lines = core.split()
    if len(lines) == 1:
        hole = Hole(at=at, sha256=digest, lead=lead, trail=trail)
    else:
        rest = core[len(lines[0]) :]
        hole = Hole(
            at=at, sha256=digest, lead=lead, trail=trail, wrap=len(lines[0]), sep=rest[: len(rest) - len(rest.lstrip())]
        )
    # The layout is right only if it gives back the very text (same line width and separator throughout).
    return hole if hole.text(raw) == raw_text else None


@dataclass(frozen=True, slots=True)
class PackageSource:
    """A package's bytes with its attachment payloads cut out (see the module docstring)."""

    skeleton: bytes
    holes: tuple[Hole, ...]
    sha256: str

    @classmethod
    def cut(cls, data: bytes, payloads: Sequence[tuple[str, bytes]]) -> PackageSource:
        """The source of package ``data`` whose attachments are ``(base64 text as parsed, bytes)``."""
        spans: list[tuple[int, int, Hole]] = []
        by_text: dict[str, list[bytes]] = {}
        for text, raw in payloads:
            by_text.setdefault(text, []).append(raw)
        for text, raws in by_text.items():
            # The parser turned CR LF into LF: look for the text as it is in the bytes.
            for crlf in (False, True):
                if crlf and "\n" not in text:
                    break
                candidate = text.replace("\n", "\r\n") if crlf else text
                needle = candidate.encode("utf-8")
                if not needle.strip():
                    continue
                found = _occurrences(data, needle)
                if len(found) != len(raws):
                    continue  # ambiguous (the same text elsewhere): leave it in the skeleton
                for start, raw in zip(found, raws, strict=True):
                    hole = _layout(candidate, raw, start)
                    if hole is not None:
                        spans.append((start, start + len(needle), hole))
                break
        spans.sort(key=lambda s: s[0])
        parts: list[bytes] = []
        holes: list[Hole] = []
        pos = removed = 0
        for start, end, hole in spans:
            if start < pos:
                continue  # overlapping spans cannot both be cut
            parts.append(data[pos:start])
            holes.append(Hole(start - removed, hole.sha256, hole.lead, hole.trail, hole.wrap, hole.sep))
            removed += end - start
            pos = end
        parts.append(data[pos:])
        return cls(skeleton=b"".join(parts), holes=tuple(holes), sha256=hashlib.sha256(data).hexdigest())

    def restore(self, data_by_sha256: Mapping[str, bytes]) -> bytes:
        """The package's exact bytes, the payloads taken from ``data_by_sha256``."""
        out: list[bytes] = []
        pos = 0
        for hole in self.holes:
            raw = data_by_sha256.get(hole.sha256)
            if raw is None:
                raise AttachmentDigestError(
                    f"the edXML package needs the attachment with SHA-256 {hole.sha256}, which the envelope does "
                    "not carry; pass the envelope's attachment bytes"
                )
            out.append(self.skeleton[pos : hole.at])
            out.append(hole.text(raw).encode("utf-8"))
            pos = hole.at
        out.append(self.skeleton[pos:])
        data = b"".join(out)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise AttachmentDigestError(
                "the edXML package rebuilt from its source does not have the SHA-256 it was received with; the "
                "source or an attachment was altered"
            )
        return data

    def encode(self) -> bytes:
        """The bytes ``DocumentInfo.source`` holds; PayloadTooLargeError if too large for an envelope."""
        head = json.dumps(
            {"sha256": self.sha256, "holes": [[h.at, h.sha256, h.lead, h.trail, h.wrap, h.sep] for h in self.holes]},
            separators=(",", ":"),
        )
        blob = _MAGIC + head.encode("ascii") + b"\n" + zlib.compress(self.skeleton, 9)
        if len(self.skeleton) > MAX_SKELETON_BYTES or len(blob) > MAX_SOURCE_BYTES:
            raise PayloadTooLargeError(
                f"the edXML package's XML outside its attachments is {len(self.skeleton):,} bytes "
                f"({len(blob):,} compressed), over the {MAX_SOURCE_BYTES:,} compressed bytes an envelope can carry; "
                "move long content into an attachment",
                detail={"size": len(blob), "limit": MAX_SOURCE_BYTES},
            )
        return blob

    @classmethod
    def decode(cls, blob: bytes) -> PackageSource:
        """Read what :meth:`encode` wrote; EdxmlError if it is not a source."""
        try:
            if not blob.startswith(_MAGIC) or len(blob) > MAX_SOURCE_BYTES:
                raise ValueError("not an exchange-edxml-source/1 blob")
            head, _, packed = blob[len(_MAGIC) :].partition(b"\n")
            meta = json.loads(head)
            inflater = zlib.decompressobj()
            skeleton = inflater.decompress(packed, MAX_SKELETON_BYTES + 1)
            if len(skeleton) > MAX_SKELETON_BYTES or inflater.unconsumed_tail or not inflater.eof:
                raise ValueError("the skeleton is truncated or too large")
            holes = tuple(
                Hole(int(a), str(s), str(lead), str(trail), int(w), str(sep))
                for a, s, lead, trail, w, sep in meta["holes"]
            )
            if any(not 0 <= h.at <= len(skeleton) for h in holes) or list(holes) != sorted(holes, key=lambda h: h.at):
                raise ValueError("a hole is outside the skeleton")
            return cls(skeleton=skeleton, holes=holes, sha256=str(meta["sha256"]))
        except (ValueError, KeyError, TypeError, zlib.error) as exc:
            raise EdxmlError(f"the envelope's edXML source is corrupt ({exc}); export it without the source") from None


def _occurrences(data: bytes, needle: bytes) -> list[int]:
    found: list[int] = []
    start = data.find(needle)
    while start != -1:
        found.append(start)
        start = data.find(needle, start + len(needle))
    return found
