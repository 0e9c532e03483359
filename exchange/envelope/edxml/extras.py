"""Extras: edXML fields the envelope model has no place for, as ``(element path, text)`` pairs.

The path is the element path below ``MessageHeader`` (``OtherInfo/SphereOfPromulgation``,
``ToPlaces/Place``, ``To[000.00.00.H41]/Email``) or below ``TraceHeaderList``
(``Bussiness/BussinessDocReason``, ``TraceHeaderList/@id``), so that a package written
from the model (no source kept) puts each value back where it came from.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from exchange.envelope.edxml._common import (
    _SEGMENT_RE,
    _SLOT_RANK,
    _TO_RE,
    _TRACE_RANK,
    _UNKNOWN_RANK,
    _children,
    _elements,
    _leaf,
    _sub,
)


def canonical_extra(extra: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``extra`` in the order export writes it (stable within a group): what import returns."""

    def rank(pair: tuple[str, str]) -> int:
        first = pair[0].split("/", 1)[0]
        if _TO_RE.match(first):
            return _SLOT_RANK["To"]
        return _SLOT_RANK.get(first, _TRACE_RANK.get(first, _UNKNOWN_RANK))

    return tuple(sorted(extra, key=rank))


def _capture(el: etree._Element, key: str, out: list[tuple[str, str]]) -> None:
    """Record ``el`` as extras: a leaf as ``(key, text)``, a container by its children's paths.

    A repeated container gets a ``[i]`` index (0-based among same-named siblings)
    so that export can rebuild the grouping; leaves are appended in order.
    Attributes are kept on containers only.
    """
    kids = _elements(el)
    if not kids:
        out.append((key, el.text or ""))
        return
    for name, value in el.attrib.items():
        if not name.startswith("{"):
            out.append((f"{key}/@{name}", value))
    names = [etree.QName(k).localname for k in kids]
    seen: dict[str, int] = {}
    for kid, name in zip(kids, names, strict=True):
        index = seen.get(name, 0)
        seen[name] = index + 1
        if _elements(kid) and names.count(name) > 1:
            _capture(kid, f"{key}/{name}[{index}]", out)
        else:
            _capture(kid, f"{key}/{name}", out)


def _capture_rest(el: etree._Element, key: str, known: tuple[str, ...], out: list[tuple[str, str]]) -> None:
    for child in _elements(el):
        local = etree.QName(child).localname
        if local not in known:
            _capture(child, f"{key}/{local}", out)


def _group(extra: Iterable[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Extras by first path segment, the rest of the path as key, order kept."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in extra:
        first, _, rest = key.partition("/")
        groups.setdefault(first, []).append((rest, value))
    return groups


def _materialize_all(parent: etree._Element, pairs: Iterable[tuple[str, str]]) -> None:
    for key, value in pairs:
        _materialize(parent, key, value)


def _materialize(parent: etree._Element, key: str, value: str) -> None:
    """Put one extra back: intermediate segments are found or created, the last one appended.

    Keys that are not element paths (free-form extras from elsewhere) are not
    edXML fields and are skipped.
    """
    if not key:
        return
    *inner, last = key.split("/")
    steps: list[tuple[str, int]] = []
    for segment in inner:
        m = _SEGMENT_RE.match(segment)
        if m is None:
            return
        steps.append((m["name"], int(m["index"] or 0)))
    if last.startswith("@"):
        if _SEGMENT_RE.match(last[1:]) is None or "[" in last:
            return
    elif _SEGMENT_RE.match(last) is None or "[" in last:
        return
    for name, index in steps:
        same = _children(parent, name)
        while len(same) <= index:
            same.append(_sub(parent, name))
        parent = same[index]
    if last.startswith("@"):
        parent.set(last[1:], value)
    else:
        _leaf(parent, last, value)
