"""The hub's status words and QCVN 102 status codes, both ways.

``updateStatus`` takes one of the hub's eight words; the bus speaks the QCVN codes of
DOMAIN.md. Six words are business statuses in the order the codes run (``inbox`` 01 …
``done`` 06), ``cancellation`` is the recipient's agreement to take a document back
(15), and ``fail`` is no business status at all: it is the E-Office's negative
acknowledgement, which the bus turns into a non-delivery for the sender. Going back,
the codes without a word of their own take the nearest: 13 (the sender asks to take
the document back) and 15 are ``cancellation``, 16 (a change refused) is ``rejection``;
the description beside the word always names the exact code.
"""

from __future__ import annotations

from exchange.envelope.model import StatusCode
from exchange.gateway.vxp.errors import VxpStatusUnknownError

#: The E-Office's negative acknowledgement: not a business status (see module docstring).
FAIL = "fail"

#: updateStatus word -> the QCVN code it sends.
WORD_TO_CODE: dict[str, StatusCode] = {
    "inbox": StatusCode.ARRIVED,
    "rejection": StatusCode.REFUSED,
    "acceptance": StatusCode.ACCEPTED,
    "assignment": StatusCode.ASSIGNED,
    "processing": StatusCode.PROCESSING,
    "done": StatusCode.COMPLETED,
    "cancellation": StatusCode.CHANGE_AGREED,
}

#: QCVN code -> the hub word shown in listings (every code of StatusCode has one).
CODE_TO_WORD: dict[StatusCode, str] = {
    StatusCode.ARRIVED: "inbox",
    StatusCode.REFUSED: "rejection",
    StatusCode.ACCEPTED: "acceptance",
    StatusCode.ASSIGNED: "assignment",
    StatusCode.PROCESSING: "processing",
    StatusCode.COMPLETED: "done",
    StatusCode.TAKE_BACK_REQUESTED: "cancellation",
    StatusCode.CHANGE_AGREED: "cancellation",
    StatusCode.CHANGE_REFUSED: "rejection",
}

#: What each QCVN code means, for the ``*_desc`` fields of the answers.
CODE_MEANING: dict[StatusCode, str] = {
    StatusCode.ARRIVED: "arrived: the recipient's software has it, no clerk has handled it yet",
    StatusCode.REFUSED: "refused",
    StatusCode.ACCEPTED: "accepted and registered",
    StatusCode.ASSIGNED: "assigned by a leader",
    StatusCode.PROCESSING: "being processed",
    StatusCode.COMPLETED: "completed",
    StatusCode.TAKE_BACK_REQUESTED: "the sender asks to take the document back",
    StatusCode.CHANGE_AGREED: "update / take-back / revocation agreed",
    StatusCode.CHANGE_REFUSED: "update / take-back / revocation refused",
}

WORDS: tuple[str, ...] = (*WORD_TO_CODE, FAIL)


def code_of(word: str) -> StatusCode | None:
    """The QCVN code an updateStatus word sends; None for ``fail``; VxpStatusUnknownError otherwise.

    Words are matched without regard to case or surrounding blanks (SDK callers differ).
    """
    key = word.strip().lower()
    if key == FAIL:
        return None
    try:
        return WORD_TO_CODE[key]
    except KeyError:
        raise VxpStatusUnknownError(f"status {word[:40]!r} is not one of the hub's words: {', '.join(WORDS)}") from None


def word_of(code: str | StatusCode | None) -> str:
    """The hub word for a QCVN code; a document nobody has answered yet is still in the ``inbox``."""
    if code is None or code == "":
        return "inbox"
    return CODE_TO_WORD[StatusCode(code)]


def describe(code: str | StatusCode | None) -> str:
    """``"03 accepted and registered"``: the exact code and its meaning (or that nothing came yet)."""
    if code is None or code == "":
        return "no status from the recipient yet"
    status = StatusCode(code)
    return f"{status.value} {CODE_MEANING[status]}"
