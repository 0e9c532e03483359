"""Hops from the shovel's forward headers, for the envelope's (unsigned) Trace.

A dynamic shovel declared with ``dest-add-forward-headers`` adds to every message it moves one
entry to the ``x-shovelled`` header list (newest first; URIs without credentials) and sets
``x-shovelled-timestamp`` (seconds) to the time of the LAST hop only. So the last hop gets its
real time and earlier ones are given that same time: an upper bound, said in the docs. The
headers are the broker's, not the sender's: a sender can forge them, which is why they only
ever end up in the unsigned, informational Trace and the timeline, never in a decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from exchange.envelope.model import Hop

#: A message that went through more hops than this is reported up to here (the rest is a loop).
MAX_HOPS = 16


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value or "")


def shovel_hops(headers: Mapping[str, object] | None, *, received_at: datetime | None = None) -> tuple[Hop, ...]:
    """The hub hops a message made, oldest first (empty when it never crossed a link)."""
    if not headers:
        return ()
    entries = headers.get("x-shovelled")
    if not isinstance(entries, (list, tuple)) or not entries:
        return ()
    ts = headers.get("x-shovelled-timestamp")
    try:
        at = datetime.fromtimestamp(float(ts), tz=UTC) if ts is not None else None  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        at = None
    at = at or received_at or datetime.now(UTC)
    hops = []
    for entry in reversed(list(entries)[:MAX_HOPS]):
        if not isinstance(entry, Mapping):
            continue
        name = _text(entry.get("shovel-name"))
        by = _text(entry.get("shovelled-by"))
        if not name and not by:
            continue
        hops.append(Hop(f"hub link {name} (broker {by})" if name else f"broker {by}", at))
    return tuple(hops)
