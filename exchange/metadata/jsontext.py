"""Bounded JSON decoding for everything a client hands the bus as JSON.

Python's ``json`` module has no limits of its own: an array nested 100,000 deep
raises RecursionError, an integer of 5,000 digits raises ValueError (CPython's
int/str conversion limit), ``NaN`` and ``Infinity`` are accepted although JSON
has no such values, and a repeated key silently keeps the last value. Each of
those escaped the gateway as a 500. Here a JSON text is

* refused above ``max_bytes`` before it is decoded,
* pre-scanned in one linear pass for its nesting depth (strings skipped), so
  the recursive decoder never sees more than ``max_depth`` levels,
* decoded with hooks that refuse number literals longer than ``max_number_chars``
  (before ``int()`` is called on them), non-finite constants and duplicate keys.

Every refusal is a :class:`~exchange.metadata.errors.JsonLimitError` (400
``json-limit-exceeded``) or a :class:`~exchange.errors.BadRequestError` (400
``bad-request``, not JSON at all), one line each.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from dataclasses import dataclass
from typing import Any

from exchange.errors import BadRequestError
from exchange.metadata.errors import JsonLimitError


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """The structural bounds one JSON text is held to (metadata is small and flat: these are generous)."""

    max_bytes: int = 1024 * 1024
    #: Document metadata nests 3 levels (metadata.response_for[0].code); 32 leaves room, not recursion.
    max_depth: int = 32
    #: Digits (and sign, point, exponent) of one number literal; no metadata number has more than 3.
    max_number_chars: int = 40
    #: Members of one object or elements of one array.
    max_items: int = 10_000


DEFAULT_LIMITS = JsonLimits()

#: A JSON string: removed before brackets are counted. Linear: no backtracking inside a string.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in ``text`` (brackets inside strings do not count).

    One pass of C-level loops (regex substitution, ``accumulate``): a 1 MiB text of brackets costs
    milliseconds, and the recursive decoder only ever sees a text this has bounded.
    """
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def json_depth_exceeds(text: str, limit: int) -> bool:
    """True if ``text`` nests arrays/objects deeper than ``limit``."""
    return json_depth(text) > limit


def load_json(raw: bytes | str, what: str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Decode the JSON text ``raw`` (``what`` names it in errors) within ``limits``; every refusal is a 400."""
    try:
        return parse_bounded(raw, what, limits)
    except UnicodeDecodeError:
        raise BadRequestError(f"the {what} is not valid UTF-8; send UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                              "send a JSON object") from None


def parse_bounded(raw: bytes | str, what: str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Like :func:`load_json`, but a text that is not UTF-8 or not JSON raises ``UnicodeDecodeError`` /
    ``json.JSONDecodeError`` (both ValueError), for callers that tell "not complete yet" from "refused"."""
    size = len(raw)
    if size > limits.max_bytes:
        raise JsonLimitError(f"the {what} is {size} bytes; at most {limits.max_bytes} are accepted",
                             detail={"limit": limits.max_bytes})
    text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    if json_depth_exceeds(text, limits.max_depth):
        raise JsonLimitError(f"the {what} nests deeper than {limits.max_depth} levels; send flat metadata JSON",
                             detail={"limit": limits.max_depth})

    def number(literal: str) -> int | float:
        if len(literal) > limits.max_number_chars:
            raise JsonLimitError(f"the {what} has a number of {len(literal)} characters; at most "
                                 f"{limits.max_number_chars} are accepted", detail={"limit": limits.max_number_chars})
        value = float(literal) if any(c in literal for c in ".eE") else int(literal)
        if value in (float("inf"), float("-inf")):
            raise JsonLimitError(f"the {what} has a number too large to represent ({literal[:20]})")
        return value

    def constant(name: str) -> Any:
        raise BadRequestError(f"the {what} contains {name}, which is not JSON; send finite numbers")

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len(pairs) > limits.max_items:
            raise JsonLimitError(f"an object in the {what} has {len(pairs)} members; at most {limits.max_items}",
                                 detail={"limit": limits.max_items})
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BadRequestError(f"the {what} repeats the key {key[:60]!r} in one object; send each key once")
            out[key] = value
        return out

    try:
        value = json.loads(text, parse_int=number, parse_float=number, parse_constant=constant,
                           object_pairs_hook=members)
    except RecursionError:  # the pre-scan makes this unreachable; kept so a gap stays a 400, never a 500
        raise JsonLimitError(f"the {what} nests too deeply; send flat metadata JSON") from None
    _check_arrays(value, limits, what)
    return value


def _check_arrays(value: Any, limits: JsonLimits, what: str) -> None:
    # Depth is bounded by the pre-scan, so this recursion is too.
    if isinstance(value, list):
        if len(value) > limits.max_items:
            raise JsonLimitError(f"an array in the {what} has {len(value)} elements; at most {limits.max_items}",
                                 detail={"limit": limits.max_items})
        for v in value:
            _check_arrays(v, limits, what)
    elif isinstance(value, dict):
        for v in value.values():
            _check_arrays(v, limits, what)
