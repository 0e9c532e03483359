"""The envelope model: typed, frozen values for everything that travels on the bus.

Every message on the bus is an envelope addressed From one agency To one or
more agencies. Its kind is a document, a business status (codes 01-16) or a
delivery receipt; one routing path serves all three. Field names reuse the
edXML vocabulary (DOMAIN.md) in English so the edXML codec is a mapping.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

from exchange.envelope.codes import check_agency_code
from exchange.errors import AttachmentError

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


#: What an attachment id may be (kept in sync with ``AttachmentId`` in schemas/envelope-1.0.xsd): a letter or
#: digit, then up to 127 letters, digits and ``. _ @ + -``. Ids name files (``exchange sign`` output, the
#: bytes beside the XML), so a separator, ``..`` alone or a control character must never get in.
ATTACHMENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@+\-]{0,127}"
_ATTACHMENT_ID = re.compile(ATTACHMENT_ID_PATTERN)
#: Characters no attachment name may hold: bidi controls (U+202E "right-to-left override" makes
#: ``\u202egpj.exe`` display as ``exe.jpg``), and the ones :func:`check_attachment_name` finds by category.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
#: Unicode categories refused in attachment names: controls, format characters (bidi, zero-width, BOM),
#: line and paragraph separators, lone surrogates.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def check_attachment_id(value: object) -> str:
    """``value`` if it is a valid attachment id (:data:`ATTACHMENT_ID_PATTERN`), else AttachmentError."""
    if not isinstance(value, str) or not _ATTACHMENT_ID.fullmatch(value):
        raise AttachmentError(
            f"attachment id {value!r} is not allowed: use 1-128 letters, digits and . _ @ + - starting with a "
            "letter or digit (e.g. att-1)",
            detail={"attachment_id": str(value)[:200]},
        )
    return value


def check_attachment_name(value: object) -> str:
    """``value`` if it can be shown and stored as a file name, else AttachmentError (docs/ENVELOPE.md).

    Refused: an empty name, and any control, format (bidi, zero-width), line or paragraph separator
    character. Refusing rather than silently removing them keeps the signed manifest and what the
    recipient sees identical.
    """
    if not isinstance(value, str) or not value:
        raise AttachmentError("an attachment has an empty name; give every attachment a file name")
    bad = next((c for c in value if c in BIDI_CONTROLS or unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        kind = "a bidi control" if bad in BIDI_CONTROLS else "a control or invisible formatting"
        raise AttachmentError(
            f"attachment name {value!r} contains {kind} character (U+{ord(bad):04X}), which can disguise the "
            "file's real name or type; rename the file without it",
            detail={"character": f"U+{ord(bad):04X}"},
        )
    return value


@dataclass(frozen=True, slots=True)
class Attachment:
    """One manifest entry. The bytes travel beside the XML; the manifest carries their digest.

    The id and the name are checked on construction (:func:`check_attachment_id`,
    :func:`check_attachment_name`): every way into an envelope (builder, parser, gateway,
    adapters, edXML import, ``exchange sign``) refuses the same ones with AttachmentError.
    """

    id: str
    name: str
    media_type: str
    size: int
    sha256: str
    description: str = ""

    def __post_init__(self) -> None:
        check_attachment_id(self.id)
        check_attachment_name(self.name)

    @classmethod
    def of(
        cls,
        name: str,
        data: bytes,
        media_type: str = "application/octet-stream",
        *,
        id: str | None = None,
        description: str = "",
    ) -> Attachment:
        """Describe ``data`` for the manifest (hashes the raw bytes once)."""
        return cls(
            id=id or f"att-{uuid.uuid4().hex[:12]}",
            name=name,
            media_type=media_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            description=description,
        )


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

    def with_hop(self, node: str, at: datetime | None = None) -> Envelope:
        return replace(self, trace=(*self.trace, Hop(node, at or utcnow())))


@dataclass(frozen=True)  # no slots: ``digest`` is cached in the instance's __dict__
class SignedEnvelope:
    """An envelope as it travels: the exact signed XML bytes plus attachment bytes by id.

    ``xml`` is the authority; ``envelope`` is the model parsed from the signed part.
    """

    xml: bytes
    envelope: Envelope
    attachment_data: dict[str, bytes] = field(default_factory=dict)

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 (hex) of the signed XML bytes: what a receipt acknowledges.

        Computed once: a bundle's 3,355 receipts each name the digest of one 284 KiB envelope.
        """
        return hashlib.sha256(self.xml).hexdigest()


def utcnow() -> datetime:
    """Now, in UTC, to the millisecond (what the envelope records)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=(now.microsecond // 1000) * 1000)


def new_message_id() -> str:
    return str(uuid.uuid4())
