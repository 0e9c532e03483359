"""W3C Trace Context ``traceparent`` headers; the correlation id of a message is its trace id.

Format (https://www.w3.org/TR/trace-context/#traceparent-header), version 00 only::

    00-<trace-id: 32 lowercase hex>-<parent-id: 16 lowercase hex>-<trace-flags: 2 lowercase hex>

Neither id may be all zeros. Parsing is strict: an invalid header is ignored
(``None``) and the receiver starts a new trace, as the specification asks.
"""

from __future__ import annotations

import re
import secrets

VERSION = "00"
SAMPLED = 0x01
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def new_trace_id() -> str:
    """32 lowercase hex digits, never all zeros."""
    while (tid := secrets.token_hex(16)) == _ZERO_TRACE:  # pragma: no cover - 2**-128
        pass
    return tid


def new_span_id() -> str:
    """16 lowercase hex digits, never all zeros."""
    while (sid := secrets.token_hex(8)) == _ZERO_SPAN:  # pragma: no cover - 2**-64
        pass
    return sid


def format_traceparent(trace_id: str, span_id: str, flags: int = SAMPLED) -> str:
    """Build a header; raises ValueError for ids the specification forbids."""
    header = f"{VERSION}-{trace_id}-{span_id}-{flags:02x}"
    if not 0 <= flags <= 0xFF or parse_traceparent(header) is None:
        raise ValueError(f"invalid trace context: trace_id={trace_id!r} span_id={span_id!r} flags={flags!r}")
    return header


def new_traceparent(sampled: bool = True) -> str:
    """Start a new trace: fresh trace id and span id."""
    return format_traceparent(new_trace_id(), new_span_id(), SAMPLED if sampled else 0)


def parse_traceparent(header: str | None) -> tuple[str, str, int] | None:
    """``(trace_id, span_id, flags)`` of a valid version-00 header, else ``None``."""
    if not isinstance(header, str):
        return None
    m = _TRACEPARENT.fullmatch(header)
    if m is None:
        return None
    trace_id, span_id, flags = m.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, span_id, int(flags, 16)


def child_traceparent(parent: str | None) -> str:
    """A new span in the parent's trace (same trace id and flags); a new trace if the parent is invalid."""
    parsed = parse_traceparent(parent)
    if parsed is None:
        return new_traceparent()
    trace_id, _, flags = parsed
    return format_traceparent(trace_id, new_span_id(), flags)


def correlation_id(traceparent: str | None) -> str | None:
    """The correlation id carried by a header: its trace id."""
    parsed = parse_traceparent(traceparent)
    return parsed[0] if parsed else None
