"""Bounded fuzzing of the gateway's metadata parsing: only the project's typed errors come out.

Mutated JSON texts and mutated multipart/form-data bodies go through exactly what
``POST /v1/documents`` and ``POST /v1/inbox/{id}/status`` run before the service is
called (``read_document_form`` / ``load_json``, then the metadata codec), and random
JSON values go into every field of the codec, legacy dialect included. Every outcome
is a decoded submission or an :class:`~exchange.errors.ExchangeError` with a 4xx
status: never a RecursionError, ValueError, KeyError, TypeError or a 500.

Fixed seed (``derandomize``), no example database, a few hundred examples each: a few
seconds, the same cases on every run.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from unittest import mock

import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.adapters.jsonform import document_from_json, staff_from_json, status_code_from_json
from exchange.errors import ExchangeError
from exchange.gateway.metadata import load_json, parse_document, parse_status
from exchange.gateway.uploads import Limits, read_document_form
from exchange.metadata.codec import SUBMISSION_FIELDS

# A mangled Content-Disposition makes aiohttp warn (and the part nameless, which the reader refuses).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")

FUZZ = settings(
    max_examples=200, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)
FUZZ_FORMS = settings(FUZZ, max_examples=120)

VALID = {
    "recipients": ["000.00.00.H41"],
    "subject": "Chỉ thị",
    "code": {"number": "12", "notation": "CT-TTg"},
    "document_type": {"type": 1, "detail": 0, "name": "Chỉ thị"},
    "priority": 3,
    "steering_type": 1,
    "promulgation": {"place": "Hà Nội", "date": "2026-11-20"},
    "due_date": "2026-12-31",
    "response_for": [{"organ_id": "000.00.00.G22", "code": "7/BC", "promulgation_date": "2026-10-01"}],
    "extra": [{"name": "A", "value": "b"}],
    "descriptions": {"a.txt": "bản chính"},
    "paper": False,
}
VALID_TEXT = json.dumps(VALID, ensure_ascii=False)
STATUS_TEXT = json.dumps({"code": "03", "description": "đã vào sổ", "staff": {"staff": "Trần B"}}, ensure_ascii=False)

#: Fragments that stress a JSON reader: structure, escapes, numbers, constants, control characters.
FRAGMENTS = [
    "[",
    "]",
    "{",
    "}",
    '"',
    "\\",
    ",",
    ":",
    "-",
    "e",
    "0",
    "1e999",
    "9" * 5000,
    "[" * 2000,
    "null",
    "true",
    "NaN",
    "\\ud800",
    "\x00",
    "\x07",
    "\u202e",
    "😀",
    ' "priority": ',
    '"a":1,"a":2',
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@st.composite
def mutated(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few insertions, deletions and replacements at random places."""
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(FRAGMENTS) | st.text(max_size=3))
        if action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        else:
            text = text[:at] + piece + text[at + len(piece) :]
    return text


def only_typed_errors(run: Any) -> None:
    try:
        run()
    except ExchangeError as exc:
        assert 400 <= exc.http_status < 500, exc
        assert exc.message and "\n" not in exc.message and exc.code


@FUZZ
@given(mutated(VALID_TEXT))
def test_mutated_document_json_gives_a_submission_or_a_typed_refusal(text: str) -> None:
    only_typed_errors(lambda: parse_document(load_json(text.encode("utf-8", "surrogatepass"), "request body")))


@FUZZ
@given(mutated(STATUS_TEXT))
def test_mutated_status_json_gives_a_status_or_a_typed_refusal(text: str) -> None:
    only_typed_errors(lambda: parse_status(load_json(text.encode("utf-8", "surrogatepass"), "request body")))


@FUZZ
@given(st.sampled_from([*sorted(SUBMISSION_FIELDS), "priorty", "number", "steering"]), json_values)
def test_any_json_value_in_any_field_gives_a_typed_refusal_or_a_submission(name: str, value: Any) -> None:
    only_typed_errors(lambda: parse_document({**VALID, name: value}))
    only_typed_errors(lambda: parse_status({"code": "03", name: value}))
    legacy = {k: v for k, v in VALID.items() if k not in ("recipients", "descriptions")}
    only_typed_errors(lambda: document_from_json({**legacy, name: value}))
    only_typed_errors(lambda: status_code_from_json(value))
    only_typed_errors(lambda: staff_from_json(value))


def _multipart(metadata: bytes, file_name: bytes = b"a.txt", media_type: bytes = b"text/plain") -> bytes:
    return (
        b'--b\r\nContent-Disposition: form-data; name="metadata"\r\nContent-Type: application/json\r\n\r\n'
        + metadata
        + b'\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="'
        + file_name
        + b'"\r\nContent-Type: '
        + media_type
        + b"\r\n\r\nbytes\r\n--b--\r\n"
    )


async def _through_the_form_reader(body: bytes) -> None:
    protocol = mock.Mock(_reading_paused=False)
    payload = streams.StreamReader(protocol, 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    request = make_mocked_request(
        "POST",
        "/v1/documents",
        payload=payload,
        headers={"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(len(body))},
    )
    raw, _files = await read_document_form(request, Limits(body=1 << 20, attachment=1 << 16, message=1 << 17))
    parse_document(raw)


_loop: asyncio.AbstractEventLoop | None = None


def _run_form(body: bytes) -> None:
    global _loop
    if _loop is None:  # one loop for all examples: a loop per example costs more than the parsing
        _loop = asyncio.new_event_loop()
    _loop.run_until_complete(_through_the_form_reader(body))


def teardown_module() -> None:
    if _loop is not None:
        _loop.close()


@FUZZ_FORMS
@given(mutated(_multipart(VALID_TEXT.encode()).decode("utf-8")))
def test_mutated_multipart_bodies_give_a_submission_or_a_typed_refusal(text: str) -> None:
    only_typed_errors(lambda: _run_form(text.encode("utf-8", "surrogatepass")))


@FUZZ_FORMS
@given(mutated(VALID_TEXT), st.binary(max_size=40), st.binary(max_size=40))
def test_multipart_with_mutated_metadata_file_names_and_media_types_gives_typed_refusals(
    text: str, file_name: bytes, media_type: bytes
) -> None:
    body = _multipart(text.encode("utf-8", "surrogatepass"), file_name.replace(b'"', b""), media_type)
    only_typed_errors(lambda: _run_form(body))
