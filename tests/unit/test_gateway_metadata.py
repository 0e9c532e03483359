"""The gateway's JSON metadata mapping: every field lands in the envelope model, every mistake is named."""

from __future__ import annotations

from datetime import date

import pytest

from exchange.envelope.model import Operation, Priority, StatusCode, SteeringType
from exchange.errors import InvalidAgencyCodeError
from exchange.gateway.errors import MetadataError
from exchange.gateway.metadata import parse_document, parse_status
from exchange.tokens import TOKEN_PREFIX, hash_token

FULL = {
    "recipients": ["000.00.00.H41", "000.00.31.H41"],
    "subject": "  Chỉ thị về chuyển đổi số  ",
    "code": {"number": "12", "notation": "CT-TTg"},
    "document_type": {"type": 1, "detail": 2, "name": "Chỉ thị"},
    "promulgation": {"place": "Hà Nội", "date": "2026-11-20"},
    "signer": {"competence": "TM. Chính phủ", "position": "Thủ tướng", "full_name": "Nguyễn Văn A"},
    "content": "Nội dung",
    "priority": 4,
    "steering_type": 2,
    "due_date": "2026-12-31",
    "document_id": "000.00.00.G22,2026/11/20,12/CT-TTg",
    "response_for": [{"organ_id": "000.00.00.H41", "code": "7/BC-UBND", "promulgation_date": "2026-10-01"}],
    "paper": True,
    "descriptions": {"ct.pdf": "bản chính"},
}


def test_every_metadata_field_maps_to_the_document_model() -> None:
    s = parse_document(FULL)
    d = s.document
    assert s.recipients == ("000.00.00.H41", "000.00.31.H41") and s.operation is Operation.NEW
    assert d.subject == "Chỉ thị về chuyển đổi số"  # trimmed
    assert (d.code.number, d.code.notation) == ("12", "CT-TTg")
    assert (d.document_type.type, d.document_type.detail, d.document_type.name) == (1, 2, "Chỉ thị")
    assert d.promulgation is not None and d.promulgation.date == date(2026, 11, 20)
    assert d.signer is not None and d.signer.full_name == "Nguyễn Văn A"
    assert d.priority is Priority.EXPRESS_DEADLINE and d.steering is SteeringType.REPORT
    assert d.due_date == date(2026, 12, 31) and d.paper is True and d.content == "Nội dung"
    assert d.response_for[0].organ_id == "000.00.00.H41" and d.response_for[0].promulgation_date == date(2026, 10, 1)
    assert s.descriptions == {"ct.pdf": "bản chính"}


def test_a_replace_may_leave_recipients_to_the_original() -> None:
    s = parse_document(
        {
            "subject": "x",
            "code": {"number": "1"},
            "operation": "replace",
            "relates_to": "9B2C5A4E-3F6D-4C1A-9E0B-7D8F6A5B4C3D",
        }
    )
    assert s.operation is Operation.REPLACE and s.recipients == ()
    assert s.document.relates_to == "9b2c5a4e-3f6d-4c1a-9e0b-7d8f6a5b4c3d"  # normalised


@pytest.mark.parametrize(
    "change, field",
    [
        ({"priorty": 1}, "metadata.priorty"),
        ({"priority": True}, "metadata.priority"),
        ({"priority": 5}, "metadata.priority"),
        ({"steering_type": -1}, "metadata.steering_type"),
        ({"subject": None}, "metadata.subject"),
        ({"subject": "   "}, "metadata.subject"),
        ({"subject": "a\x00b"}, "metadata.subject"),
        ({"code": {"number": "", "notation": "x"}}, "metadata.code.number"),
        ({"code": {"number": "1", "notation": "x" * 31}}, "metadata.code.notation"),
        ({"due_date": "2026-02-30"}, "metadata.due_date"),
        ({"promulgation": {"place": "Hà Nội"}}, "metadata.promulgation.date"),
        ({"recipients": "000.00.00.H41"}, "metadata.recipients"),
        ({"recipients": []}, "metadata.recipients"),
        ({"operation": "delete"}, "metadata.operation"),
        ({"operation": "revoke"}, "metadata.relates_to"),
        ({"relates_to": "9b2c5a4e-3f6d-4c1a-9e0b-7d8f6a5b4c3d"}, "metadata.relates_to"),
        ({"operation": "update", "relates_to": "not-a-uuid"}, "metadata.relates_to"),
        ({"paper": "yes"}, "metadata.paper"),
    ],
)
def test_each_invalid_field_is_refused_and_named(change, field) -> None:
    with pytest.raises(MetadataError) as err:
        parse_document({**FULL, **change})
    assert err.value.http_status == 422 and err.value.code == "metadata-invalid"
    assert err.value.detail["field"] == field


def test_a_malformed_agency_code_has_its_own_code() -> None:
    with pytest.raises(InvalidAgencyCodeError) as err:
        parse_document({**FULL, "recipients": ["000.00.00.H41", "H29"]})
    assert err.value.detail["field"] == "metadata.recipients[1]"


def test_status_body() -> None:
    s = parse_status({"code": "06", "description": "xong", "staff": {"department": "VP", "email": "a@b.vn"}})
    assert s.code is StatusCode.COMPLETED and s.description == "xong" and s.staff.email == "a@b.vn"
    for bad in ({"code": "07"}, {"code": 3}, {}, {"code": "03", "extra": 1}, []):
        with pytest.raises(MetadataError):
            parse_status(bad)


def test_the_store_key_of_a_token_is_its_sha256_and_reveals_nothing_of_it() -> None:
    import hashlib

    token = TOKEN_PREFIX + "Zm9vYmFy-example"
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert "Zm9vYmFy" not in hash_token(token) and hash_token(token) != hash_token(token + "x")
