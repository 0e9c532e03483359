"""Organ ids as real packages write them, and how they map to the bus's agencies.

A QCVN 102 code (``000.00.00.G22``) names an agency directly. Packages in the wild
also carry ids from someone else's directory: hub system ids (``vxp.saas.03``),
12-digit unit ids (``020100107370``), partial codes (``G12``, ``28.22.H17``,
``001.00.20.TT2``) and the literal ``null``. The directory lists such ids as
``aliases`` of an agency (exchange/routing/directory.py); this module maps them.

Where the bus routes on an id (the package's From, a document's To, a status's
ResponseFor) an id that maps to nothing is refused, naming the element; a
document's recipients are refused one by one. Where an id is only information
(a document's ResponseFor, a TraceHeader) it is kept verbatim, mapped or not.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from exchange.envelope.codes import AGENCY_CODE_RE
from exchange.errors import ExchangeError, InvalidAgencyCodeError, UnknownAgencyError

__all__ = ["OrganIdMapper", "OrganIdUse", "RefusedRecipient", "map_organ_id", "refusal"]


@runtime_checkable
class OrganIdMapper(Protocol):
    """A directory that knows aliases: ``resolve_organ_id(id)`` is the agency code, or None."""

    def resolve_organ_id(self, organ_id: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class OrganIdUse:
    """One organ id of a package: where it is, as written, and the agency it maps to.

    ``how`` is ``code`` (a QCVN 102 code of a known agency, or any QCVN code when no
    directory is given), ``alias`` (an id the directory lists for ``agency``),
    ``unknown`` (a QCVN code the directory does not list) or ``unmapped`` (an id
    that is not a QCVN code and no alias).
    """

    path: str
    written: str
    agency: str | None
    how: str


@dataclass(frozen=True, slots=True)
class RefusedRecipient:
    """A ``To`` of a document package the bus cannot route to, and why (the error's code and message)."""

    path: str
    organ_id: str
    code: str
    reason: str


def map_organ_id(written: str, agencies: Container[str] | OrganIdMapper | None) -> tuple[str | None, str]:
    """The agency code ``written`` names and how (see :class:`OrganIdUse`), or ``(None, how)``."""
    value = written.strip()
    if isinstance(agencies, OrganIdMapper):
        code = agencies.resolve_organ_id(value)
        if code is not None:
            return code, "code" if code == value else "alias"
    elif AGENCY_CODE_RE.match(value) and (agencies is None or value in agencies):
        return value, "code"
    return None, "unknown" if AGENCY_CODE_RE.match(value) else "unmapped"


def refusal(path: str, written: str, how: str) -> ExchangeError:
    """The typed error for an id the bus must route on but cannot map."""
    if how == "unknown":
        return UnknownAgencyError(
            f"{path}: agency {written} is not in the directory; check the code or update the directory"
        )
    return InvalidAgencyCodeError(
        f"{path}: {written!r} is not a QCVN 102 agency code (NNN.NN.NN.XNN) nor an alias of one; add it to "
        "the agency's aliases in the directory (docs/EDXML.md, Organ ids)"
    )
