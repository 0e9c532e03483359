"""Bounded JSON decoding for everything a client hands the bus as JSON.

Python's ``json`` module has no limits of its own: an array nested 100,000 deep
raises RecursionError, an integer of 5,000 digits raises ValueError (CPython's
int/str conversion limit), ``NaN`` and ``Infinity`` are accepted although JSON
has no such values, and a repeated key silently keeps the last value. Each of
those escaped the gateway as a 500. Here a JSON text is

* refused above ``max_bytes`` before it is decoded,
* measured before it is decoded, with C-level regex passes over the text with its
  strings blanked: its nesting depth (so the recursive decoder never sees more than
  ``max_depth`` levels) and its longest number literal (so ``int()`` never sees more
  than ``max_number_chars`` characters),
* decoded with hooks that refuse infinite floats, ``NaN``/``Infinity``, repeated keys
  and objects of more than ``max_items`` members.

No hook runs per number or per array element: a flat 1 MiB array decodes at the
speed of ``json.loads`` itself (benchmarks/bench_json_limits.py).

Every refusal is a :class:`~exchange.metadata.errors.JsonLimitError` (400
``json-limit-exceeded``) or a :class:`~exchange.errors.BadRequestError` (400
``bad-request``, not JSON at all), one line each.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate, count
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
    #: Members of one object (arrays are bounded by ``max_bytes``; the codec bounds each list it reads).
    max_items: int = 10_000
    #: Objects in the whole text (metadata has a few dozen: response_for, extra, staff...).
    max_objects: int = 10_000


DEFAULT_LIMITS = JsonLimits()

#: A JSON string, blanked before structure is measured; an unterminated one runs to the end of the
#: text (which the decoder then refuses). Possessive quantifiers: never backtracks, so one pass is
#: linear even for hostile texts such as '"' + '\\"' * n, which a backtracking pattern scans in O(n²).
_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.S)
#: Opening brackets to 2, closing ones to 0, everything else deleted: depth = 2*opens - position.
_BRACKET_TABLE = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def _structure(text: str) -> str:
    """``text`` with its strings blanked (where brackets and digits mean nothing)."""
    return _STRING.sub('""', text)


def json_depth(text: str, *, structure: str | None = None) -> int:
    """The deepest nesting of arrays/objects in ``text`` (brackets inside strings do not count).

    C-level loops only (a regex, ``bytes.translate``, ``accumulate``): a 1 MiB text costs tens of
    milliseconds, and Python's recursive decoder only ever sees a text this has bounded.
    """
    brackets = (structure if structure is not None else _structure(text)).encode("utf-8", "surrogatepass")
    steps = brackets.translate(_BRACKET_TABLE, _NOT_BRACKET)
    # After the i-th bracket (1-based): depth = opens - closes = (sum of steps) - i.
    return max(map(operator.sub, accumulate(steps), count(1)), default=0)


@lru_cache(maxsize=8)
def _open_run(limit: int) -> re.Pattern[str]:
    return re.compile(r"[\[{](?:\s*+[\[{])" + f"{{{limit}}}")


def json_depth_exceeds(text: str, limit: int, *, structure: str | None = None) -> bool:
    """True if ``text`` nests arrays/objects deeper than ``limit``."""
    structure = structure if structure is not None else _structure(text)
    if _open_run(limit).search(structure):  # the usual attack, [[[[..., found by one regex scan
        return True
    return json_depth(text, structure=structure) > limit


@lru_cache(maxsize=8)
def _long_number(limit: int) -> re.Pattern[str]:
    return re.compile(r"[-+0-9.eE]" + f"{{{limit + 1},}}")


def load_json(raw: bytes | str, what: str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Decode the JSON text ``raw`` (``what`` names it in errors) within ``limits``; every refusal is a 400."""
    try:
        return parse_bounded(raw, what, limits)
    except UnicodeDecodeError:
        raise BadRequestError(f"the {what} is not valid UTF-8; send UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"the {what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); send a JSON object"
        ) from None


def parse_bounded(raw: bytes | str, what: str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """Like :func:`load_json`, but a text that is not UTF-8 or not JSON raises ``UnicodeDecodeError`` /
    ``json.JSONDecodeError`` (both ValueError), for callers that tell "not complete yet" from "refused"."""
    size = len(raw)
    if size > limits.max_bytes:
        raise JsonLimitError(
            f"the {what} is {size} bytes; at most {limits.max_bytes} are accepted", detail={"limit": limits.max_bytes}
        )
    text = bytes(raw).decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    structure = _structure(text)
    objects = structure.count("{")
    if objects > limits.max_objects:  # bounds the Python hook below to a few milliseconds
        raise JsonLimitError(
            f"the {what} has {objects} objects; at most {limits.max_objects} are accepted",
            detail={"limit": limits.max_objects},
        )
    if json_depth_exceeds(text, limits.max_depth, structure=structure):
        raise JsonLimitError(
            f"the {what} nests deeper than {limits.max_depth} levels; send flat metadata JSON",
            detail={"limit": limits.max_depth},
        )
    # Checked on the text, before int() sees a literal (CPython refuses over 4300 digits with ValueError).
    long_number = _long_number(limits.max_number_chars).search(structure)
    if long_number is not None:
        raise JsonLimitError(
            f"the {what} has a number of {len(long_number.group())} characters; at most "
            f"{limits.max_number_chars} are accepted",
            detail={"limit": limits.max_number_chars},
        )

    def real(literal: str) -> float:
        value = float(literal)
        if value in (float("inf"), float("-inf")):
            raise JsonLimitError(f"the {what} has a number too large to represent ({literal[:20]})")
        return value

    def constant(name: str) -> Any:
        raise BadRequestError(f"the {what} contains {name}, which is not JSON; send finite numbers")

    def members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)  # C speed; a repeated key shows as fewer members
        if len(out) != len(pairs):
            seen: set[str] = set()
            key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise BadRequestError(f"the {what} repeats the key {key[:60]!r} in one object; send each key once")
        if len(out) > limits.max_items:
            raise JsonLimitError(
                f"an object in the {what} has {len(out)} members; at most {limits.max_items}",
                detail={"limit": limits.max_items},
            )
        return out

    try:
        return json.loads(text, parse_float=real, parse_constant=constant, object_pairs_hook=members)
    except RecursionError:  # the pre-scan makes this unreachable; kept so a gap stays a 400, never a 500
        raise JsonLimitError(f"the {what} nests too deeply; send flat metadata JSON") from None
