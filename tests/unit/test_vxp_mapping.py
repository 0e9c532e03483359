"""The hub's status words and the QCVN 102 status codes (exchange.gateway.vxp.mapping)."""

from __future__ import annotations

import pytest

from exchange.envelope.model import StatusCode
from exchange.gateway.vxp import mapping
from exchange.gateway.vxp.errors import VxpStatusUnknownError


def test_each_hub_word_sends_the_qcvn_code_docs_api_md_lists() -> None:
    assert {w: mapping.code_of(w) for w in mapping.WORDS} == {
        "inbox": StatusCode.ARRIVED,
        "rejection": StatusCode.REFUSED,
        "acceptance": StatusCode.ACCEPTED,
        "assignment": StatusCode.ASSIGNED,
        "processing": StatusCode.PROCESSING,
        "done": StatusCode.COMPLETED,
        "cancellation": StatusCode.CHANGE_AGREED,
        "fail": None,
    }


def test_every_qcvn_code_has_a_hub_word_and_a_description_naming_it() -> None:
    for code in StatusCode:
        assert mapping.word_of(code) in mapping.WORDS
        assert mapping.describe(code.value).startswith(code.value + " ")
    assert mapping.word_of(None) == "inbox"
    assert mapping.word_of("13") == mapping.word_of("15") == "cancellation"
    assert mapping.word_of("16") == "rejection"


def test_words_and_codes_round_trip_where_the_word_is_the_codes_own() -> None:
    for word in set(mapping.WORDS) - {mapping.FAIL}:
        code = mapping.code_of(word)
        assert code is not None and mapping.word_of(code) == word


def test_words_are_matched_without_case_and_unknown_words_are_refused_with_the_list() -> None:
    assert mapping.code_of(" Acceptance ") is StatusCode.ACCEPTED
    with pytest.raises(VxpStatusUnknownError, match="inbox, rejection"):
        mapping.code_of("accepted")
