"""The envelope model: typed, frozen values for everything that travels on the bus.

Every message on the bus is an envelope addressed From one agency To one or
more agencies. Its kind is a document, a business status (codes 01-16) or a
delivery receipt; one routing path serves all three. Field names reuse the
edXML vocabulary (DOMAIN.md) in English so the edXML codec is a mapping.
"""

from __future__ import annotations

import enum
import hashlib
import uuid
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone

from exchange.envelope.codes import check_agency_code

#: The envelope's XML namespace (version 1 of the schema).
ENVELOPE_NS = "urn:exchange:envelope:1"
ENVELOPE_VERSION = "1.0"


class Kind(str, enum.Enum):
    """What an envelope carries."""

    DOCUMENT = "document"
    STATUS = "status"
    RECEIPT = "receipt"


class Operation(str, enum.Enum):
    """The business operation of a document envelope (edXML BussinessDocType 0-3)."""

    NEW = "new"
    REVOKE = "revoke"
    UPDATE = "update"
    REPLACE = "replace"

    @property
    def edxml_code(self) -> int:
        return list(Operation).index(self)


class Priority(int, enum.Enum):
    """edXML priority 0-4; 3 and 4 travel in the express lane."""

    NORMAL = 0
    URGENT = 1  # khẩn
    VERY_URGENT = 2  # thượng khẩn
    EXPRESS = 3  # hỏa tốc
    EXPRESS_DEADLINE = 4  # hỏa tốc hẹn giờ


class SteeringType(int, enum.Enum):
    """edXML SteeringType: 0 none, 1 directive, 2 report on a directive."""

    NONE = 0
    DIRECTIVE = 1
    REPORT = 2


class StatusCode(str, enum.Enum):
    """Business status codes of DOMAIN.md (distinct from transport delivery outcomes)."""

    ARRIVED = "01"
    REFUSED = "02"
    ACCEPTED = "03"
    ASSIGNED = "04"
    PROCESSING = "05"
    COMPLETED = "06"
    TAKE_BACK_REQUESTED = "13"
    CHANGE_AGREED = "15"
    CHANGE_REFUSED = "16"


class ReceiptOutcome(str, enum.Enum):
    """The transport's own outcome for one recipient."""

    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AgencyRef:
    """An agency as named in a header: its QCVN 102 code and, optionally, its display name."""

    code: str
    name: str = ""

    def __post_init__(self) -> None:
        check_agency_code(self.code)


@dataclass(frozen=True, slots=True)
class DocumentCode:
    """The document's number and notation (edXML Code: CodeNumber ≤ 11, CodeNotation ≤ 30)."""

    number: str
    notation: str = ""


@dataclass(frozen=True, slots=True)
class DocumentType:
    """edXML DocumentType: Type, TypeDetail, TypeName."""

    type: int = 1
    detail: int = 0
    name: str = ""


@dataclass(frozen=True, slots=True)
class Promulgation:
    """Where and when the document was promulgated."""

    place: str
    date: date


@dataclass(frozen=True, slots=True)
class SignerInfo:
    """The official who signed the paper document (not the XML signature)."""

    competence: str = ""
    position: str = ""
    full_name: str = ""


@dataclass(frozen=True, slots=True)
class ResponseRef:
    """A document this one answers (edXML ResponseFor)."""

    organ_id: str
    code: str
    promulgation_date: date
    document_id: str = ""


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """Metadata of an official document (kind=document)."""

    code: DocumentCode
    subject: str
    document_type: DocumentType = DocumentType()
    promulgation: Promulgation | None = None
    signer: SignerInfo | None = None
    content: str = ""
    priority: Priority = Priority.NORMAL
    steering: SteeringType = SteeringType.NONE
    due_date: date | None = None
    document_id: str = ""
    #: Message id of the document a revoke / update / replace acts on.
    relates_to: str | None = None
    response_for: tuple[ResponseRef, ...] = ()
    paper: bool = False
    #: Extra edXML OtherInfo and similar fields, kept verbatim for a lossless round trip.
    extra: tuple[tuple[str, str], ...] = ()
    #: The edXML package this document was imported from, as the sender wrote it, without its attachment
    #: payloads (exchange.envelope.edxml.source); b"" when it was not imported. Evidence and the basis of
    #: a lossless export, not content: it takes no part in equality.
    source: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class StaffInfo:
    """Who at the recipient produced a business status."""

    department: str = ""
    staff: str = ""
    email: str = ""
    mobile: str = ""


@dataclass(frozen=True, slots=True)
class StatusInfo:
    """A business status (kind=status) about a document received earlier."""

    response_for: str  # message id of the document
    code: StatusCode
    description: str = ""
    staff: StaffInfo | None = None
    timestamp: datetime | None = None
    #: The edXML identification of the document answered (a status package's ResponseFor):
    #: what an E-Office knows the document by, since it never sees the bus's message ids.
    document_ref: ResponseRef | None = None
    #: The edXML status package this status was imported from, verbatim (see DocumentInfo.source).
    source: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ReceiptInfo:
    """A transport receipt (kind=receipt): delivered, or failed with a reason."""

    response_for: str  # message id of the envelope answered
    outcome: ReceiptOutcome
    #: SHA-256 (hex) of the exact signed envelope bytes the recipient received.
    envelope_digest: str = ""
    reason_code: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One manifest entry. The bytes travel beside the XML; the manifest carries their digest."""

    id: str
    name: str
    media_type: str
    size: int
    sha256: str
    description: str = ""

    @classmethod
    def of(cls, name: str, data: bytes, media_type: str = "application/octet-stream",
           *, id: str | None = None, description: str = "") -> "Attachment":
        """Describe ``data`` for the manifest (hashes the raw bytes once)."""
        return cls(id=id or f"att-{uuid.uuid4().hex[:12]}", name=name, media_type=media_type,
                   size=len(data), sha256=hashlib.sha256(data).hexdigest(), description=description)


@dataclass(frozen=True, slots=True)
class Hop:
    """One node an envelope passed through (unsigned routing trace, like a mail Received line)."""

    node: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Header:
    """The signed header of an envelope."""

    message_id: str
    kind: Kind
    sender: AgencyRef
    recipients: tuple[AgencyRef, ...]
    created_at: datetime
    operation: Operation = Operation.NEW
    correlation_id: str = ""
    document: DocumentInfo | None = None
    status: StatusInfo | None = None
    receipt: ReceiptInfo | None = None

    def __post_init__(self) -> None:
        uuid.UUID(self.message_id)
        if not self.recipients:
            raise ValueError("an envelope needs at least one recipient")
        if self.created_at.tzinfo is None:
            raise ValueError("created_at must be timezone-aware (UTC)")
        body = {Kind.DOCUMENT: self.document, Kind.STATUS: self.status, Kind.RECEIPT: self.receipt}
        if body[self.kind] is None or sum(v is not None for v in body.values()) != 1:
            raise ValueError(f"a {self.kind.value} envelope carries exactly its own {self.kind.value} block")

    @property
    def priority(self) -> Priority:
        return self.document.priority if self.document else Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Envelope:
    """A header, its attachment manifest and the unsigned trace of hops."""

    header: Header
    attachments: tuple[Attachment, ...] = ()
    trace: tuple[Hop, ...] = ()

    @property
    def message_id(self) -> str:
        return self.header.message_id

    def with_hop(self, node: str, at: datetime | None = None) -> "Envelope":
        return replace(self, trace=self.trace + (Hop(node, at or utcnow()),))


@dataclass(frozen=True, slots=True)
class SignedEnvelope:
    """An envelope as it travels: the exact signed XML bytes plus attachment bytes by id.

    ``xml`` is the authority; ``envelope`` is the model parsed from the signed part.
    """

    xml: bytes
    envelope: Envelope
    attachment_data: dict[str, bytes] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the signed XML bytes: what a receipt acknowledges."""
        return hashlib.sha256(self.xml).hexdigest()


def utcnow() -> datetime:
    """Now, in UTC, to the millisecond (what the envelope records)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def new_message_id() -> str:
    return str(uuid.uuid4())
