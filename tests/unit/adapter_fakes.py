"""Test doubles for adapter unit tests: a BusHandle that records submissions, incoming messages."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exchange.adapters.base import Incoming, OutgoingFile, SubmitResult
from exchange.envelope.edxml import import_package
from exchange.envelope.model import (
    Attachment,
    DocumentInfo,
    Operation,
    Promulgation,
    ReceiptOutcome,
    StaffInfo,
    StatusCode,
    new_message_id,
    utcnow,
)
from tests.factories import document, envelope, incoming, receipt, status

HOST, PEER = "000.00.00.H41", "000.00.00.G22"


@dataclass
class FakeBus:
    """Records what an adapter submits; ``fail_with`` makes the next submissions raise."""

    agency: str = HOST
    submissions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail_with: Exception | None = None
    keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> message id

    def _result(self, key: str | None, recipients: Sequence[str]) -> SubmitResult:
        if self.fail_with is not None:
            raise self.fail_with
        if key is not None and key in self.keys:
            return SubmitResult(self.keys[key], False, tuple(recipients), utcnow())
        mid = new_message_id()
        if key is not None:
            self.keys[key] = mid
        return SubmitResult(mid, True, tuple(recipients), utcnow())

    async def submit_document(
        self,
        recipients: Sequence[str],
        document: DocumentInfo,
        files: Sequence[OutgoingFile] = (),
        *,
        operation: Operation = Operation.NEW,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        result = self._result(idempotency_key, recipients)
        self.submissions.append(
            (
                "document",
                dict(
                    recipients=list(recipients),
                    document=document,
                    files=list(files),
                    operation=operation,
                    key=idempotency_key,
                    message_id=result.message_id,
                ),
            )
        )
        return result

    async def submit_status(
        self,
        document_message_id: str,
        code: StatusCode,
        *,
        description: str = "",
        staff: StaffInfo | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        result = self._result(idempotency_key, [PEER])
        self.submissions.append(
            (
                "status",
                dict(
                    response_for=document_message_id,
                    code=code,
                    description=description,
                    staff=staff,
                    key=idempotency_key,
                    message_id=result.message_id,
                ),
            )
        )
        return result

    async def submit_edxml(self, package: bytes, *, idempotency_key: str | None = None) -> SubmitResult:
        imported = import_package(package)  # the bus refuses what the codec refuses
        result = self._result(idempotency_key, [r.code for r in imported.envelope.header.recipients])
        self.submissions.append(("edxml", dict(package=package, key=idempotency_key, message_id=result.message_id)))
        return result


def document_message(
    files: Mapping[str, bytes] | None = None,
    *,
    subject: str = "Chỉ thị về chuyển đổi số",
    sender: str = PEER,
    recipient: str = HOST,
    attempt: int = 1,
    document_id: str = "",
) -> Incoming:
    """An incoming document with attachments, as the bus hands it over (xml: the unsigned envelope)."""
    files = files if files is not None else {"qd.pdf": b"%PDF-1.7 \x00\x01 quyet dinh", "phu-luc.docx": b"PK\x03\x04"}
    attachments = tuple(
        Attachment.of(n, d, "application/pdf" if n.endswith(".pdf") else "application/octet-stream", id=f"att-{i}")
        for i, (n, d) in enumerate(files.items())
    )
    info = document(subject, document_id=document_id, promulgation=Promulgation("Hà Nội", utcnow().date()))
    message = envelope(sender, recipient, info, attachments=attachments, sender_name="Văn phòng Chính phủ")
    return incoming(message, {a.id: files[a.name] for a in attachments}, attempt=attempt)


def status_message(
    response_for: str, code: StatusCode = StatusCode.ACCEPTED, *, sender: str = PEER, recipient: str = HOST
) -> Incoming:
    """An incoming business status (as ``submit_status`` makes it: no edXML document reference)."""
    info = status(response_for, code, description="đã tiếp nhận", timestamp=utcnow())
    return incoming(envelope(sender, recipient, info))


def receipt_message(
    response_for: str,
    outcome: ReceiptOutcome = ReceiptOutcome.DELIVERED,
    *,
    sender: str = PEER,
    recipient: str = HOST,
    reason_code: str = "",
    reason: str = "",
) -> Incoming:
    """A signed receipt coming back to ``recipient`` for a document it sent to ``sender``."""
    return incoming(envelope(sender, recipient, receipt(response_for, outcome, reason_code=reason_code, reason=reason)))


def random_secret() -> str:
    return "whsec-" + uuid.uuid4().hex
