"""Agency codes (QCVN 102:2016, amended 2022): ``NNN.NN.NN.XNN``.

Read right to left: the last group is level 1 (a letter for the organ group and
two digits), then level 2 (2 digits), level 3 (2 digits), level 4 (3 digits),
zeros where unused. The parent of a code is found by zeroing its leftmost
non-zero group.
"""

from __future__ import annotations

import re

from exchange.errors import InvalidAgencyCodeError

AGENCY_CODE_RE = re.compile(r"^(\d{3})\.(\d{2})\.(\d{2})\.([A-Z]\d{2})$")
#: The same shape as an XSD pattern (kept in sync with exchange/schemas/envelope-1.0.xsd).
AGENCY_CODE_PATTERN = r"\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}"


def check_agency_code(code: object) -> str:
    """Return ``code`` if it has the QCVN 102 shape, else raise InvalidAgencyCodeError."""
    if not isinstance(code, str) or not AGENCY_CODE_RE.match(code):
        raise InvalidAgencyCodeError(
            f"agency code {code!r} does not have the QCVN 102 shape NNN.NN.NN.XNN "
            "(e.g. 000.00.00.G22); check the directory entry or the request"
        )
    if code.endswith(".") or code[-3:] == "000":
        raise InvalidAgencyCodeError(f"agency code {code!r} has an empty level-1 group")
    return code


def parent_code(code: str) -> str | None:
    """The parent agency's code, or None for a level-1 agency (e.g. a ministry or province)."""
    m = AGENCY_CODE_RE.match(check_agency_code(code))
    assert m is not None
    groups = list(m.groups())
    for i, zero in ((0, "000"), (1, "00"), (2, "00")):
        if groups[i] != zero:
            groups[i] = zero
            return ".".join(groups)
    return None


def level(code: str) -> int:
    """The depth of an agency in the hierarchy: 1 for ``000.00.00.H41``, 4 for ``001.02.03.H41``."""
    depth = 1
    while (p := parent_code(code)) is not None:
        code = p
        depth += 1
    return depth
