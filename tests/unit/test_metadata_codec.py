"""The one metadata codec: bounded JSON, one set of field names on every channel, the legacy dialect read."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import jsonschema
import pytest
import structlog

from exchange.adapters.jsonform import (
    document_from_json,
    document_json,
    load_form,
    staff_from_json,
    status_code_from_json,
)
from exchange.cli.sign import envelope_from_metadata, load_metadata
from exchange.envelope.model import DocumentCode, DocumentInfo, DocumentType, Priority, StatusCode, SteeringType
from exchange.errors import BadRequestError, ExchangeError
from exchange.metadata import (
    JsonLimitError,
    JsonLimits,
    MetadataError,
    decode_document,
    decode_status,
    decode_submission,
    encode_document,
    load_json,
)
from exchange.metadata.codec import DOCUMENT_FIELDS, STATUS_FIELDS, SUBMISSION_FIELDS, reset_deprecation_warnings
from exchange.metadata.jsontext import json_depth
from exchange.metadata.schema import metadata_schema

CANONICAL = {
    "subject": "Chỉ thị về chuyển đổi số",
    "code": {"number": "12", "notation": "CT-TTg"},
    "document_type": {"type": 2, "detail": 1, "name": "Chỉ thị"},
    "promulgation": {"place": "Hà Nội", "date": "2026-11-20"},
    "signer": {"competence": "TM. Chính phủ", "position": "Thủ tướng", "full_name": "Nguyễn Văn A"},
    "content": "Nội dung",
    "priority": 3,
    "steering_type": 1,
    "due_date": "2026-12-31",
    "document_id": "000.00.00.G22,2026/11/20,12/CT-TTg",
    "response_for": [
        {"organ_id": "000.00.00.H41", "code": "7/BC-UBND", "promulgation_date": "2026-10-01", "document_id": ""}
    ],
    "paper": True,
    "extra": [{"name": "SphereOfPromulgation", "value": "Toàn quốc"}],
}
#: The same document in the dialect the file drop and `exchange sign` read before schema 1.
LEGACY = {
    "number": 12,
    "notation": "CT-TTg",
    "subject": "Chỉ thị về chuyển đổi số",
    "type": "2",
    "detail": 1,
    "type_name": "Chỉ thị",
    "promulgation": {"place": "Hà Nội", "date": "2026/11/20"},
    "signer": {"competence": "TM. Chính phủ", "position": "Thủ tướng", "full_name": "Nguyễn Văn A"},
    "content": "Nội dung",
    "priority": "3",
    "steering": 1,
    "due_date": "2026-12-31",
    "document_id": "000.00.00.G22,2026/11/20,12/CT-TTg",
    "response_for": [{"organ_id": "000.00.00.H41", "code": "7/BC-UBND", "promulgation_date": "2026-10-01"}],
    "paper": 1,
    "extra": [["SphereOfPromulgation", "Toàn quốc"]],
}


# -- bounded JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a": ' * 50 + "1" + "}" * 50,
        '{"priority": ' + "9" * 5_000 + "}",
        '{"priority": -' + "9" * 4_301 + "}",
        '{"priority": 1e999}',
        '{"priority": 0.' + "1" * 100 + "}",
    ],
)
def test_json_over_a_structural_limit_is_a_typed_400(text: str) -> None:
    with pytest.raises(JsonLimitError) as caught:
        load_json(text.encode(), "request body")
    assert caught.value.http_status == 400 and caught.value.code == "json-limit-exceeded"
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"a": NaN}', "NaN"),
        ('{"a": -Infinity}', "Infinity"),
        ('{"a": 1, "a": 2}', "repeats the key"),
        ("{not json", "not valid JSON"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_what_is_not_json_is_a_bad_request_naming_the_fault(text: str | bytes, words: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        load_json(text if isinstance(text, bytes) else text.encode(), "request body")
    assert caught.value.code == "bad-request" and words in caught.value.message


def test_json_over_the_byte_limit_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(JsonLimitError):
        load_json(b"[" + b"1," * 600 + b"1]", "metadata part", JsonLimits(max_bytes=1000))


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = json.dumps({"subject": "[[[[{{{{" * 1000, "nested": [[['"]]]']]]})
    assert json_depth(text) == 4
    assert load_json(text.encode(), "body")["nested"] == [[['"]]]']]]


def test_deep_nesting_without_long_runs_of_brackets_is_refused_too() -> None:
    nested = "1"
    for _ in range(40):
        nested = f'[[], {{"a": {{}}}}, {nested}]'  # never more than two openings in a row
    assert json_depth(nested) == 42  # 40 arrays, and {"a": {}} inside the innermost
    with pytest.raises(JsonLimitError):
        load_json(nested.encode(), "body")
    assert load_json(json.dumps([[[[{"a": [[1]]}]]]]).encode(), "body") == [[[[{"a": [[1]]}]]]]


def test_a_text_of_too_many_objects_is_refused_before_it_is_decoded() -> None:
    with pytest.raises(JsonLimitError) as caught:
        load_json(b"[" + b"{}," * 20_000 + b"{}]", "body")
    assert "objects" in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        '"' + '\\"' * 300_000,  # one unterminated string of escaped quotes: a backtracking scan is O(n²)
        '["' + "\\" * 400_001 + '"]',
        '{"a": "' + "[" * 300_000,
    ],
)
def test_hostile_strings_are_measured_in_one_pass_and_refused_as_not_json(text: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        load_json(text.encode(), "body")
    assert caught.value.code in ("bad-request", "json-limit-exceeded")


def test_ordinary_metadata_decodes_unchanged() -> None:
    assert load_json(json.dumps(CANONICAL).encode(), "body") == CANONICAL


# -- one schema, one set of names -----------------------------------------------------------------


def test_the_schema_lists_exactly_the_fields_the_codec_reads() -> None:
    defs = metadata_schema()["$defs"]
    assert set(defs["Document"]["properties"]) == DOCUMENT_FIELDS
    assert set(defs["DocumentSubmission"]["properties"]) == SUBMISSION_FIELDS
    assert set(defs["StatusSubmission"]["properties"]) == STATUS_FIELDS
    # The submission repeats the document's fields: they must not drift apart.
    for name in DOCUMENT_FIELDS:
        assert defs["DocumentSubmission"]["properties"][name] == defs["Document"]["properties"][name], name


def test_what_the_encoder_writes_is_valid_under_the_schema_and_decodes_to_the_same_document() -> None:
    document = decode_document(CANONICAL)
    written = {k: v for k, v in encode_document(document).items() if v is not None}
    schema = metadata_schema()
    jsonschema.validate(written, {**schema, "$ref": "#/$defs/Document"})
    assert decode_document(written) == document
    jsonschema.validate(CANONICAL, {**schema, "$ref": "#/$defs/Document"})


def test_the_schema_refuses_what_the_codec_refuses() -> None:
    schema = {**metadata_schema(), "$ref": "#/$defs/DocumentSubmission"}
    for bad in ({**CANONICAL, "priorty": 1}, {**CANONICAL, "priority": 5}, {**CANONICAL, "steering": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**bad, "recipients": ["000.00.00.H41"]}, schema)
        with pytest.raises(MetadataError):
            decode_submission({**bad, "recipients": ["000.00.00.H41"]})


def test_http_file_drop_and_sign_read_the_same_names_to_the_same_document() -> None:
    over_http = decode_submission({**CANONICAL, "recipients": ["000.00.00.H41"]}).document
    assert over_http.extra == (("SphereOfPromulgation", "Toàn quốc"),)
    assert document_from_json(CANONICAL) == over_http
    meta = {"from": {"code": "000.00.00.G22"}, "to": [{"code": "000.00.00.H41"}], "document": CANONICAL}
    envelope, _ = envelope_from_metadata(meta)
    assert envelope.header.document == over_http


def test_http_keeps_refusing_the_legacy_dialect() -> None:
    with pytest.raises(MetadataError) as caught:
        decode_submission({**CANONICAL, "recipients": ["000.00.00.H41"], "steering": 1})
    assert caught.value.detail["field"] == "metadata.steering"


# -- the legacy dialect, during its deprecation period -------------------------------------------


def test_the_legacy_dialect_is_read_as_the_same_document_with_one_warning_per_caller_and_field() -> None:
    reset_deprecation_warnings()
    canonical = decode_document(CANONICAL, caller="filedrop", legacy=True)
    with structlog.testing.capture_logs() as logs:
        assert document_from_json(LEGACY) == canonical
        assert document_from_json(LEGACY) == canonical  # the second time: no new warnings
        envelope, _ = envelope_from_metadata({"from": "000.00.00.G22", "to": "000.00.00.H41", "document": LEGACY})
    assert envelope.header.document == canonical
    warned = [(e["caller"], e["field"]) for e in logs if e["event"] == "metadata.deprecated"]
    assert len(warned) == len(set(warned))
    for caller in ("filedrop", "exchange sign"):
        fields = {f for c, f in warned if c == caller}
        assert {
            "document.number",
            "document.steering",
            "document.type_name",
            "document.extra",
            "document.priority",
            "document.paper",
            "document.promulgation.date",
        } <= fields, fields
    assert all(e["log_level"] == "warning" and e["use"] for e in logs if e["event"] == "metadata.deprecated")


def test_a_legacy_status_code_and_staff_are_still_read() -> None:
    assert status_code_from_json(3) is StatusCode.ACCEPTED and status_code_from_json("3") is StatusCode.ACCEPTED
    assert status_code_from_json("03") is StatusCode.ACCEPTED
    assert staff_from_json({"staff": "Trần B"}).staff == "Trần B"
    with pytest.raises(MetadataError):
        decode_status({"code": 3})  # HTTP never took the legacy forms


def test_a_legacy_and_a_schema_spelling_must_agree() -> None:
    echoed = document_json(decode_document(CANONICAL))  # message.json carries both while deprecated
    assert document_from_json(echoed) == decode_document(CANONICAL)
    with pytest.raises(MetadataError) as caught:
        document_from_json({**CANONICAL, "number": "13"})
    assert "code.number" in caught.value.message


def test_what_the_adapters_write_uses_the_schema_names_and_keeps_the_legacy_keys_for_now() -> None:
    written = document_json(
        DocumentInfo(
            DocumentCode("12", "CT-TTg"),
            "x",
            DocumentType(2, 1, "Chỉ thị"),
            priority=Priority.EXPRESS,
            steering=SteeringType.DIRECTIVE,
        )
    )
    assert written["code"] == {"number": "12", "notation": "CT-TTg"} and written["steering_type"] == 1
    assert written["document_type"] == {"type": 2, "detail": 1, "name": "Chỉ thị"}
    assert (written["number"], written["type_name"], written["steering"]) == ("12", "Chỉ thị", 1)


# -- the other JSON readers --------------------------------------------------------------------------


def test_file_drop_metadata_is_held_to_the_same_bounds() -> None:
    with pytest.raises(JsonLimitError):
        load_form(b"[" * 100_000)
    with pytest.raises(ValueError):  # incomplete: the file drop waits for the rest
        load_form(b'{"kind": "docu')


@pytest.mark.parametrize(
    "name, content",
    [
        ("deep.json", "[" * 100_000),
        ("big-number.json", '{"document": {"subject": "x", "priority": ' + "7" * 5_000 + "}}"),
        ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000),
    ],
)
def test_exchange_sign_refuses_hostile_metadata_files_with_a_typed_error(
    tmp_path: Path, name: str, content: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ExchangeError) as caught:
        load_metadata(path)
    assert caught.value.http_status == 400


def test_exchange_sign_reads_toml_dates_and_the_schema_names(tmp_path: Path) -> None:
    path = tmp_path / "meta.toml"
    path.write_text(
        'from = "000.00.00.G22"\nto = "000.00.00.H41"\n[document]\nsubject = "x"\n'
        'code = { number = "1" }\npromulgation = { place = "Hà Nội", date = 2026-11-24 }\n'
        'extra = [ { name = "A", value = "b" } ]\n',
        encoding="utf-8",
    )
    envelope, _ = envelope_from_metadata(load_metadata(path))
    doc = envelope.header.document
    assert doc is not None and doc.promulgation is not None and doc.promulgation.date == date(2026, 11, 24)
    assert doc.extra == (("A", "b"),)
