"""The bus's use cases, independent of transport: submit, receive, inbox, status, track.

The HTTP gateway, the adapters and the CLI call :class:`ExchangeService`; the
AMQP side (``exchange.transport``) publishes the outbox it fills, unpacks each
frame it receives and settles the message by the answer
:meth:`ExchangeService.receive` gives (:class:`Received`: delivered, duplicate,
transient or permanent). Sending never touches the broker: an envelope is signed
and written to the outbox in one transaction, and the outbox relay publishes it
with confirms, so a broker outage delays a document but never loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from exchange.adapters.base import Adapter, DeliveryResult, Incoming, Outcome, OutgoingFile, SubmitResult
from exchange.config import LimitsConfig
from exchange.envelope.model import (
    AgencyRef,
    Attachment,
    DocumentInfo,
    Envelope,
    Header,
    Hop,
    Kind,
    Operation,
    ReceiptInfo,
    ReceiptOutcome,
    SignedEnvelope,
    StaffInfo,
    StatusCode,
    StatusInfo,
    new_message_id,
    utcnow,
)
from exchange.errors import (
    AttachmentError,
    BadRequestError,
    ConflictError,
    EnvelopeError,
    ExchangeError,
    ForbiddenError,
    NotFoundError,
    NotHostedError,
    PayloadTooLargeError,
    SchemaError,
    SignatureError,
    XmlMalformedError,
    XmlSecurityError,
    XmlTooLargeError,
)
from exchange.routing import frame
from exchange.routing.directory import Directory
from exchange.routing.lanes import lane_of, routing_key
from exchange.store.base import (
    Delivery,
    DeliveryState,
    Direction,
    InboxEntry,
    InboxState,
    MessageRecord,
    OutboxItem,
    Store,
    TimelineEntry,
)

if TYPE_CHECKING:
    from exchange.observability.metrics import DeliveryMetrics
    from exchange.signing.base import EnvelopeSigner, EnvelopeVerifier

log = structlog.get_logger("exchange.service")

#: Frames up to this size are verified on the event loop (about 1 ms at 1 MB), larger ones in a
#: thread. Handing a small verification to a thread cost more CPU than the verification itself:
#: the hop, and the two threads taking turns at the interpreter lock (measured on the receive
#: pipeline with 64 KB documents: 18-19 ms of CPU per document through a thread, 15 inline).
INLINE_VERIFY_BYTES = 1024 * 1024

#: Reason code of a non-delivery receipt sent after hand-over, when the recipient's E-Office itself
#: refused what its channel took in (the hub protocol's ``fail``): the sender's delivery moves from
#: delivered to failed.
EOFFICE_REFUSED = "eoffice-refused"


#: The reason code of a non-delivery receipt for a message the recipient's node failed to process
#: (a bug, not a refusal). The receipt carries only this code and RECEIVE_ERROR_TEXT: the exception
#: itself is the recipient's business and stays in its log and dead letter.
RECEIVE_ERROR = "receive-error"
RECEIVE_ERROR_TEXT = "the recipient's node could not process the message; its operator has the details"
#: The reason code of a delivered receipt that answers an operator's replay of a dead letter.
REPLAYED = "replayed"
#: How a failed receipt that answers a replay starts its reason: ``after replay (<why>): <reason>``.
AFTER_REPLAY = "after replay ("

#: The outbox header naming the node that hosts an item's recipient (the relay bundles by it).
NODE_HEADER = "x-node"

_INFRA_ERRORS: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
try:  # the store's driver errors are infrastructure trouble, not poison
    from sqlalchemy.exc import DBAPIError, OperationalError

    _INFRA_ERRORS += (OperationalError, DBAPIError)
except ImportError:  # pragma: no cover
    pass


def is_infrastructure_error(exc: BaseException) -> bool:
    """True for failures of what the node runs on (store, network): worth holding and retrying.

    Anything else that escapes the receive path is a bug or an input the code does not
    handle, and retrying it only repeats it.
    """
    return isinstance(exc, _INFRA_ERRORS) or (isinstance(exc, ExchangeError) and exc.transient)


class Received(str, enum.Enum):
    """What became of one received envelope: the service's answer, which the transport settles."""

    DELIVERED = "delivered"  # handed over to the E-Office (a receipt: recorded)
    DUPLICATE = "duplicate"  # seen before: nothing handed over again (a delivered one's receipt is re-sent)
    TRANSIENT = "transient"  # not delivered yet, worth another attempt later
    PERMANENT = "permanent"  # never to be delivered; the sender got a non-delivery receipt where possible


@dataclass(frozen=True, slots=True)
class Replay:
    """An operator's request to deliver a dead letter again (``exchange dlq replay``)."""

    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """The answer of :meth:`ExchangeService.receive`: the outcome and, if not delivered, why."""

    outcome: Received
    reason_code: str = ""
    reason: str = ""
    message_id: str = ""
    sender: str = ""
    kind: str = ""


def replay_of(receipt: ReceiptInfo) -> str | None:
    """The operator's reason if ``receipt`` answers a replayed dead letter, else None."""
    if receipt.outcome is ReceiptOutcome.DELIVERED and receipt.reason_code == REPLAYED:
        return receipt.reason
    if receipt.outcome is ReceiptOutcome.FAILED and receipt.reason.startswith(AFTER_REPLAY):
        return receipt.reason[len(AFTER_REPLAY) :].partition("): ")[0]
    return None


@dataclass(slots=True)
class _InHand:
    """The copies of one (message, recipient) being received on this node: handled one at a time."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0


@dataclass(frozen=True, slots=True)
class SentFacts:
    """What a receipt is checked against: the sent envelope's digest and creation time."""

    digest: str
    created_at: datetime


#: Sent messages whose :class:`SentFacts` the service keeps in memory (least recently used go first).
SENT_FACTS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class TrackResult:
    """A sent message and, per recipient, its state and full timeline."""

    message: MessageRecord
    deliveries: list[Delivery]
    timeline: list[TimelineEntry]


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    """An inbox entry with its signed evidence and attachment bytes."""

    entry: InboxEntry
    envelope: Envelope
    xml: bytes
    attachments: dict[str, bytes]


def record_of(signed: SignedEnvelope, direction: Direction) -> MessageRecord:
    """The store's view of a signed envelope."""
    h = signed.envelope.header
    relates = None
    subject = document_id = ""
    if h.document is not None:
        from exchange.envelope.edxml import reference_of

        relates, subject = h.document.relates_to, h.document.subject
        document_id = reference_of(h.sender.code, h.document, h.created_at).document_id
    elif h.status is not None:
        relates = h.status.response_for
    elif h.receipt is not None:
        relates = h.receipt.response_for
    return MessageRecord(
        message_id=h.message_id,
        kind=h.kind.value,
        operation=h.operation.value,
        sender=h.sender.code,
        recipients=tuple(r.code for r in h.recipients),
        direction=direction,
        created_at=h.created_at,
        envelope_xml=signed.xml,
        digest=signed.digest,
        priority=int(h.priority),
        subject=subject,
        relates_to=relates,
        correlation_id=h.correlation_id,
        document_id=document_id,
    )


def rejection_stage(exc: ExchangeError) -> str:
    """The bounded ``stage`` label of a refusal: signature, schema, xml or envelope."""
    if isinstance(exc, SignatureError):
        return "signature"
    if isinstance(exc, SchemaError):
        return "schema"
    if isinstance(exc, (XmlSecurityError, XmlTooLargeError, XmlMalformedError)):
        return "xml"
    return "envelope"


def content_addressed(signed: SignedEnvelope) -> dict[str, bytes]:
    """Attachment bytes keyed by their SHA-256, as the store keeps them."""
    by_id = {a.id: a.sha256 for a in signed.envelope.attachments}
    return {by_id[i]: data for i, data in signed.attachment_data.items()}


class ExchangeService:
    """One node's use cases. Construct with its parts; ``adapters`` may be attached later."""

    def __init__(
        self,
        *,
        node: str,
        directory: Directory,
        store: Store,
        signers: Mapping[str, EnvelopeSigner],
        verifier: EnvelopeVerifier,
        limits: LimitsConfig = LimitsConfig(),
        max_attempts: int = 6,
        retry_delays: Sequence[int] = (1, 5, 30, 120, 600),
        metrics: DeliveryMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.node = node
        self.directory = directory
        self.store = store
        # agency code -> its signer; a node's lazy mapping (node.LazySigners) stays lazy
        self.signers = dict(signers) if isinstance(signers, dict) else signers
        self.verifier = verifier
        self.limits = limits
        self.max_attempts = max_attempts
        self.retry_delays = tuple(retry_delays)
        self.metrics = metrics
        self.clock = clock
        self.adapters: dict[str, Adapter] = {}
        self._sent_facts: OrderedDict[str, SentFacts] = OrderedDict()
        self._hosted = frozenset(self.signers)  # a node's agencies are fixed by its configuration
        #: (message id, recipient) -> [lock, holders]: one copy of a delivery handled at a time.
        self._in_hand: dict[tuple[str, str], _InHand] = {}
        #: Set whenever the outbox gains items, so the relay wakes at once.
        self.outbox_event = asyncio.Event()

    # -- helpers ------------------------------------------------------------------

    @property
    def hosted(self) -> frozenset[str]:
        """The agencies this node signs for (built once: a bundle asks for each of its recipients)."""
        return self._hosted

    def _signer(self, agency: str) -> EnvelopeSigner:
        signer = self.signers.get(agency)
        if signer is None:
            raise NotHostedError(
                f"agency {agency} is not hosted by node {self.node}; it has no signing key here "
                "(check [[agencies]] in the node's TOML)"
            )
        return signer

    def _ref(self, code: str) -> AgencyRef:
        entry = self.directory.get(code)
        return AgencyRef(code, entry.name if entry else "")

    def _sign(self, envelope: Envelope, data: Mapping[str, bytes]) -> SignedEnvelope:
        from exchange.signing.sign import sign_envelope

        return sign_envelope(envelope, self._signer(envelope.header.sender.code), data)

    def _items(self, signed: SignedEnvelope) -> list[OutboxItem]:
        h = signed.envelope.header
        body = frame.encode(signed.xml, signed.attachment_data)
        lane = lane_of(h)
        headers = {"x-sender": h.sender.code, "x-kind": h.kind.value, "x-correlation-id": h.correlation_id}
        return [
            OutboxItem(
                message_id=h.message_id,
                recipient=r.code,
                routing_key=routing_key(r.code, lane),
                body=body,
                # x-node: the node the directory places the recipient on, so the relay can publish
                # one copy per node for a fan-out (transport.relay, bundles), not one per recipient.
                headers={**headers, "x-recipient": r.code, NODE_HEADER: self._node_of(r.code)},
                priority=int(h.priority),
            )
            for r in h.recipients
        ]

    def _node_of(self, code: str) -> str:
        entry = self.directory.get(code)
        return entry.node if entry is not None else ""

    def _check_files(self, files: Sequence[OutgoingFile]) -> None:
        total = 0
        for f in files:
            if len(f.data) > self.limits.max_attachment_bytes:
                raise PayloadTooLargeError(
                    f"attachment {f.name!r} is {len(f.data)} bytes; the limit is "
                    f"{self.limits.max_attachment_bytes} bytes per attachment"
                )
            total += len(f.data)
        if total > self.limits.max_message_bytes:
            raise PayloadTooLargeError(
                f"attachments total {total} bytes; the limit is {self.limits.max_message_bytes} per document"
            )
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise AttachmentError("two attachments have the same name; give each file a distinct name")

    async def _accept(
        self,
        signed: SignedEnvelope,
        *,
        idempotency_key: str | None,
        track: bool,
        idempotency_fingerprint: str | None = None,
    ) -> SubmitResult:
        h = signed.envelope.header
        mid, created = await self.store.accept_outgoing(
            record_of(signed, Direction.OUT),
            self._items(signed),
            attachments=content_addressed(signed),
            idempotency_key=idempotency_key,
            track=track,
            idempotency_fingerprint=idempotency_fingerprint,
        )
        if created:
            self.outbox_event.set()
            if self.metrics is not None:
                self.metrics.documents_submitted.labels(h.sender.code, h.kind.value).inc()
        return SubmitResult(mid, created, tuple(r.code for r in h.recipients), h.created_at)

    # -- sending --------------------------------------------------------------------

    async def submit_document(
        self,
        sender: str,
        recipients: Sequence[str],
        document: DocumentInfo,
        files: Sequence[OutgoingFile] = (),
        *,
        operation: Operation = Operation.NEW,
        idempotency_key: str | None = None,
        correlation_id: str = "",
        idempotency_fingerprint: str | None = None,
    ) -> SubmitResult:
        """Sign a document for ``sender`` and put it in the outbox for every recipient.

        ``idempotency_fingerprint`` identifies the request an ``idempotency_key`` comes with (the gateway's
        check that a replayed key carries the same request); it is stored with the key.
        """
        self._signer(sender)
        codes = list(dict.fromkeys(recipients))
        if not codes:
            raise BadRequestError("a document needs at least one recipient agency code")
        for code in codes:
            self.directory.require_recipient(code)
        self._check_files(files)
        if operation is not Operation.NEW:
            if not document.relates_to:
                raise BadRequestError(f"a {operation.value} must name the document it acts on (relates_to)")
            original = await self.store.get_message(document.relates_to, Direction.OUT)
            if original is None or original.sender != sender or original.kind != Kind.DOCUMENT.value:
                raise NotFoundError(
                    f"{sender} sent no document {document.relates_to}; a {operation.value} can only act "
                    "on a document the same agency sent"
                )
            if original.operation == Operation.REVOKE.value:
                raise ConflictError(f"{document.relates_to} is a revocation; it cannot be {operation.value}d")
        attachments = tuple(Attachment.of(f.name, f.data, f.media_type, description=f.description) for f in files)
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.DOCUMENT,
                sender=self._ref(sender),
                recipients=tuple(self._ref(c) for c in codes),
                created_at=self.clock(),
                operation=operation,
                correlation_id=correlation_id,
                document=document,
            ),
            attachments,
        )
        signed = self._sign(envelope, {a.id: f.data for a, f in zip(attachments, files, strict=True)})
        result = await self._accept(
            signed, idempotency_key=idempotency_key, track=True, idempotency_fingerprint=idempotency_fingerprint
        )
        if result.created and operation is not Operation.NEW:
            for code in codes:
                await self.store.record_event(
                    document.relates_to or "",
                    code,
                    f"{operation.value}-sent",
                    at=envelope.header.created_at,
                    detail=f"by {result.message_id}",
                )
        log.info(
            "document.submitted",
            message_id=result.message_id,
            sender=sender,
            recipients=codes,
            operation=operation.value,
            created=result.created,
        )
        return result

    async def submit_status(
        self,
        agency: str,
        document_message_id: str,
        code: StatusCode,
        *,
        description: str = "",
        staff: StaffInfo | None = None,
        idempotency_key: str | None = None,
        correlation_id: str = "",
        idempotency_fingerprint: str | None = None,
    ) -> SubmitResult:
        """Send a business status about a document ``agency`` received, back to its sender."""
        self._signer(agency)
        received = await self.store.get_message(document_message_id, Direction.IN)
        if received is None or agency not in received.recipients or received.kind != Kind.DOCUMENT.value:
            raise NotFoundError(
                f"{agency} received no document {document_message_id}; statuses answer documents in its inbox"
            )
        from exchange.envelope.edxml import reference_of
        from exchange.envelope.parse import parse_envelope

        _, original = parse_envelope(received.envelope_xml)
        assert original.header.document is not None
        now = self.clock()
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.STATUS,
                sender=self._ref(agency),
                recipients=(self._ref(received.sender),),
                created_at=now,
                correlation_id=correlation_id or received.correlation_id,
                status=StatusInfo(
                    response_for=document_message_id,
                    code=code,
                    description=description,
                    staff=staff,
                    timestamp=now,
                    # what the sender's E-Office knows the document by (edXML ResponseFor)
                    document_ref=reference_of(received.sender, original.header.document, original.header.created_at),
                ),
            )
        )
        result = await self._accept(
            self._sign(envelope, {}),
            idempotency_key=idempotency_key,
            track=True,
            idempotency_fingerprint=idempotency_fingerprint,
        )
        log.info(
            "status.submitted",
            message_id=result.message_id,
            sender=agency,
            recipient=received.sender,
            response_for=document_message_id,
            status=code.value,
        )
        return result

    async def submit_edxml(
        self,
        agency: str,
        package: bytes,
        *,
        idempotency_key: str | None = None,
        idempotency_fingerprint: str | None = None,
    ) -> SubmitResult:
        """Import a QCVN 102 edXML package sent by ``agency`` and send it as an envelope."""
        from exchange.envelope.edxml import import_package

        # Parsing, schema checks and attachment decoding of a package of up to the size limit: off the loop.
        imported = await asyncio.to_thread(import_package, package, agencies=self.directory)
        h = imported.envelope.header
        if h.sender.code != agency:
            raise ForbiddenError(f"the package is From {h.sender.code}, but the caller acts for {agency}")
        if imported.unresolved:
            # A package names documents by edXML DocumentId; find their message ids and read it again.
            # A status answers a document the agency received; revoke / update / replace act on one it sent.
            direction = Direction.IN if h.kind is Kind.STATUS else Direction.OUT
            found: dict[str, str] = {}
            for document_id in imported.unresolved:
                record = await self.store.find_document(document_id, direction, agency)
                if record is None:
                    raise NotFoundError(
                        f"{agency} {'received' if direction is Direction.IN else 'sent'} no document with "
                        f"DocumentId {document_id!r}; check the package's ResponseFor / ReplacementInfo"
                    )
                found[document_id] = record.message_id
            imported = await asyncio.to_thread(import_package, package, agencies=self.directory, resolve=found.get)
            h = imported.envelope.header
        if h.kind is Kind.STATUS and h.status is not None:
            return await self.submit_status(
                agency,
                h.status.response_for,
                h.status.code,
                description=h.status.description,
                staff=h.status.staff,
                idempotency_key=idempotency_key,
                idempotency_fingerprint=idempotency_fingerprint,
            )
        if h.document is None:
            raise BadRequestError("an edXML package must be a document or a status package")
        by_id = {a.id: a for a in imported.envelope.attachments}
        files = [
            OutgoingFile(by_id[i].name, data, by_id[i].media_type, by_id[i].description)
            for i, data in imported.attachment_data.items()
        ]
        result = await self.submit_document(
            agency,
            [r.code for r in h.recipients],
            h.document,
            files,
            operation=h.operation,
            idempotency_key=idempotency_key,
            idempotency_fingerprint=idempotency_fingerprint,
        )
        # Recipients the package names but the bus cannot route to (docs/EDXML.md): said, never dropped silently.
        refused = tuple(
            {"organ_id": r.organ_id, "element": r.path, "code": r.code, "reason": r.reason} for r in imported.refused
        )
        return replace(result, refused=refused) if refused else result

    def _receipt(
        self,
        recipient: str,
        received: Envelope | None,
        sender: str,
        response_for: str,
        outcome: ReceiptOutcome,
        *,
        digest: str = "",
        reason_code: str = "",
        reason: str = "",
    ) -> tuple[MessageRecord, OutboxItem]:
        """A receipt signed by ``recipient`` for ``sender``, ready for the outbox."""
        envelope = Envelope(
            Header(
                message_id=new_message_id(),
                kind=Kind.RECEIPT,
                sender=self._ref(recipient),
                recipients=(self._ref(sender),),
                created_at=self.clock(),
                correlation_id=received.header.correlation_id if received else "",
                receipt=ReceiptInfo(
                    response_for=response_for,
                    outcome=outcome,
                    envelope_digest=digest,
                    reason_code=reason_code,
                    reason=reason[:1000],
                ),
            ),
            trace=self._receipt_trace(received),
        )
        signed = self._sign(envelope, {})
        (item,) = self._items(signed)
        return record_of(signed, Direction.OUT), item

    @staticmethod
    def _receipt_trace(received: Envelope | None) -> tuple[Hop, ...]:
        """The hub hops the answered envelope made, carried back (unsigned) so its sender can show them."""
        return tuple(received.trace) if received is not None else ()

    async def _send_receipt(self, receipt: tuple[MessageRecord, OutboxItem]) -> None:
        await self.store.accept_outgoing(receipt[0], [receipt[1]], track=False)
        self.outbox_event.set()

    # -- receiving ------------------------------------------------------------------

    async def receive(
        self,
        recipient: str,
        xml: bytes,
        attachments: Mapping[str, bytes],
        *,
        attempt: int = 1,
        replay: Replay | None = None,
        hops: tuple[Hop, ...] = (),
    ) -> ReceiveResult:
        """Verify, deduplicate, persist and hand over one envelope for hosted agency ``recipient``.

        ``xml`` and ``attachments`` are what the transport unpacked from its frame; ``attempt``
        counts handovers from 1; ``replay`` is set when an operator replays a dead letter: a
        message whose delivery here had failed is then handed over again (a duplicate of a
        delivered one still is not). ``hops`` are the hub links the frame crossed
        (exchange.hub.trace, from the broker's forward headers): they join the envelope's
        unsigned Trace, travel back in the receipt's Trace, and the sender's timeline shows them
        (docs/FEDERATION.md). Store and network failures raise (see
        :func:`is_infrastructure_error`): the transport holds the message and tries again.
        Anything else unexpected is answered once, with a non-delivery receipt, never retried.
        """
        return await self._answered(recipient, xml, self._receive(recipient, xml, attachments, attempt, replay, hops))

    async def _answered(self, recipient: str, xml: bytes, work: Awaitable[ReceiveResult]) -> ReceiveResult:
        """``work``'s answer; a failure that is not infrastructure's is answered once, never retried."""
        try:
            return await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            return await self._refuse_after_error(recipient, xml, exc)

    async def receive_many(
        self,
        recipients: Sequence[str],
        xml: bytes,
        attachments: Mapping[str, bytes],
        *,
        attempt: int = 1,
        replay: Replay | None = None,
        hops: tuple[Hop, ...] = (),
        concurrency: int = 64,
    ) -> dict[str, ReceiveResult]:
        """One frame for several hosted agencies (a fan-out bundle): verified once, then each recipient.

        Every recipient gets exactly what :meth:`receive` would have answered for it alone
        (its own dedupe, hand-over, receipt and outcome), with up to ``concurrency`` of them
        handed over at once. The signed envelope's To list stays the final word: a recipient
        it does not name is refused (``recipient-mismatch``) whatever the bundle listed.
        A store or network failure raises, as in :meth:`receive`: the transport holds the
        whole bundle and tries again, and the recipients already done answer as duplicates.
        """
        results: dict[str, ReceiveResult] = {}
        try:
            signed = await self._verified(xml, attachments, hops)
        except (SignatureError, EnvelopeError) as exc:
            if self.metrics is not None:
                self.metrics.rejections.labels(rejection_stage(exc), exc.code).inc()
            for r in recipients:
                results[r] = (
                    self._not_hosted(r)
                    if r not in self.hosted
                    else await self._refuse_unverified(r, xml, exc, count=False)
                )
            return results
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_infrastructure_error(exc):
                raise
            for r in recipients:
                results[r] = await self._refuse_after_error(r, xml, exc)
            return results
        gate = asyncio.Semaphore(max(1, concurrency))
        record = record_of(signed, Direction.IN)
        addressed = frozenset(record.recipients)
        blobs = content_addressed(signed)

        async def one(recipient: str) -> ReceiveResult:
            async with gate:
                if recipient not in self.hosted:
                    return self._not_hosted(recipient)
                return await self._answered(
                    recipient,
                    xml,
                    self._receive_verified(
                        recipient, signed, attempt, replay, hops, record=record, addressed=addressed, blobs=blobs
                    ),
                )

        unique = list(dict.fromkeys(recipients))
        answers = await asyncio.gather(*(one(r) for r in unique), return_exceptions=True)
        for recipient, answer in zip(unique, answers, strict=True):
            if isinstance(answer, BaseException):
                raise answer  # infrastructure (or cancellation): the transport holds the bundle
            results[recipient] = answer
        return results

    def _not_hosted(self, recipient: str) -> ReceiveResult:
        return ReceiveResult(Received.PERMANENT, "agency-not-hosted", f"{recipient} is not hosted by {self.node}")

    async def _verified(self, xml: bytes, attachments: Mapping[str, bytes], hops: tuple[Hop, ...]) -> SignedEnvelope:
        """The verified envelope (raises SignatureError or EnvelopeError), with hub ``hops`` in its Trace."""
        if len(xml) + sum(len(d) for d in attachments.values()) <= INLINE_VERIFY_BYTES:
            verified = self.verifier.verify(xml, attachments)
        else:
            verified = await asyncio.to_thread(self.verifier.verify, xml, attachments)
        signed: SignedEnvelope = verified.signed
        if hops and signed.envelope.header.kind is not Kind.RECEIPT:
            # Hub hops join the (unsigned, informational) trace and go back in the receipt. A
            # receipt's own trace already holds the hops of what it answers: its hops are passed on.
            signed = replace(signed, envelope=replace(signed.envelope, trace=signed.envelope.trace + tuple(hops)))
        return signed

    async def _receive(
        self,
        recipient: str,
        xml: bytes,
        attachments: Mapping[str, bytes],
        attempt: int,
        replay: Replay | None,
        hops: tuple[Hop, ...] = (),
    ) -> ReceiveResult:
        if recipient not in self.hosted:
            return self._not_hosted(recipient)
        try:
            signed = await self._verified(xml, attachments, hops)
        except (SignatureError, EnvelopeError) as exc:
            return await self._refuse_unverified(recipient, xml, exc)
        return await self._receive_verified(recipient, signed, attempt, replay, hops)

    @contextlib.asynccontextmanager
    async def _one_copy_at_a_time(self, message_id: str, recipient: str) -> AsyncIterator[None]:
        """Hold the (message, recipient) while one copy of it is received on this node.

        Two copies of one message can reach a node together: a shovel republishes what a hub that
        stopped had not confirmed, right behind the first copy. Both were taken by two workers at
        once; the second found the inbox row still RECEIVED (the first was handing over) and handed
        over again: a document twice in the E-Office (tests/integration/test_hubs.py, 301 hand-overs
        of 300). The second copy now waits for the first and then answers as a duplicate.
        """
        key = (message_id, recipient)
        entry = self._in_hand.get(key)
        if entry is None:
            entry = self._in_hand[key] = _InHand()
        entry.holders += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.holders -= 1
            if entry.holders == 0:
                self._in_hand.pop(key, None)

    async def _receive_verified(
        self,
        recipient: str,
        signed: SignedEnvelope,
        attempt: int,
        replay: Replay | None,
        hops: tuple[Hop, ...] = (),
        *,
        record: MessageRecord | None = None,
        addressed: frozenset[str] | None = None,
        blobs: Mapping[str, bytes] | None = None,
    ) -> ReceiveResult:
        """What becomes of a verified envelope for hosted agency ``recipient``: dedupe, hand-over, receipt.

        ``record`` (the store's record of ``signed``), ``addressed`` (its To list as a set) and ``blobs``
        (its attachments by SHA-256) are built once by a bundle for all its recipients: per recipient,
        the first two made a 3,355-agency bundle quadratic.

        One copy of a (message, recipient) at a time (:meth:`_one_copy_at_a_time`).
        """
        async with self._one_copy_at_a_time(signed.envelope.header.message_id, recipient):
            env = signed.envelope
            h = env.header
            base = dict(message_id=h.message_id, sender=h.sender.code, kind=h.kind.value)
            record = record if record is not None else record_of(signed, Direction.IN)
            if recipient not in (addressed if addressed is not None else frozenset(record.recipients)):
                return ReceiveResult(
                    Received.PERMANENT, "recipient-mismatch", f"routed to {recipient} but addressed to others", **base
                )
            age = abs((self.clock() - h.created_at).total_seconds())
            # A replay of a delivery that failed here is no captured-and-resent envelope: our own
            # record of it is older than any window, so the window does not apply to it.
            if age > self.limits.replay_window_seconds and not (
                replay is not None and await self.store.incoming_state(h.message_id, recipient) is InboxState.FAILED
            ):
                await self._ndr_if_possible(
                    recipient,
                    env,
                    signed.digest,
                    "envelope-stale",
                    f"created {h.created_at.isoformat()}, outside the recipient's replay window "
                    f"of {self.limits.replay_window_seconds} s",
                )
                return ReceiveResult(
                    Received.PERMANENT, "envelope-stale", "created time outside the replay window", **base
                )

            blobs = blobs if blobs is not None else content_addressed(signed)
            is_new = await self.store.accept_incoming(record, recipient, attachments=blobs)
            if not is_new:
                state = await self.store.incoming_state(h.message_id, recipient)
                if state is InboxState.FAILED and replay is not None:
                    if await self.store.reopen_incoming(
                        h.message_id, recipient, reason=f"replay {replay.count}: {replay.reason}"
                    ):
                        log.info(
                            "replay.reopened", **base, recipient=recipient, replay=replay.count, reason=replay.reason
                        )
                        return await self._after_dedupe(recipient, signed, attempt, base, replay, hops, is_new)
                    state = None  # another copy of the replay reopened it first and is handing it over
                if self.metrics is not None:
                    self.metrics.duplicates_suppressed.labels(recipient).inc()
                if state in (InboxState.HANDED_OVER, InboxState.ACKED):
                    if h.kind is not Kind.RECEIPT:
                        await self._send_receipt(
                            self._receipt(
                                recipient,
                                env,
                                h.sender.code,
                                h.message_id,
                                ReceiptOutcome.DELIVERED,
                                digest=signed.digest,
                            )
                        )
                    log.info(
                        "duplicate.suppressed",
                        **base,
                        recipient=recipient,
                        state=state.value,
                        replay=replay.count if replay else 0,
                    )
                    return ReceiveResult(Received.DUPLICATE, "duplicate", **base)
                if state is InboxState.FAILED:
                    return ReceiveResult(Received.DUPLICATE, "duplicate-of-failed", **base)
                if state is None:
                    return ReceiveResult(Received.DUPLICATE, "replay-in-progress", **base)
                # RECEIVED: an earlier attempt stopped before handover completed; hand over again.
            return await self._after_dedupe(recipient, signed, attempt, base, replay, hops, is_new)

    async def _after_dedupe(
        self,
        recipient: str,
        signed: SignedEnvelope,
        attempt: int,
        base: dict[str, str],
        replay: Replay | None,
        hops: tuple[Hop, ...] = (),
        is_new: bool = True,
    ) -> ReceiveResult:
        env = signed.envelope
        h = env.header
        if h.kind is Kind.RECEIPT:
            await self._on_receipt(env, recipient, return_hops=tuple(hops))
            adapter = self.adapters.get(recipient)
            if adapter is not None and adapter.wants_receipts:
                # The E-Office gets the signed receipt as well (proof of delivery to keep);
                # the timeline already has it, so a retry only repeats the handover.
                return await self._hand_over(recipient, signed, attempt, base, replay)
            await self.store.complete_incoming(h.message_id, recipient, InboxState.ACKED)
            return ReceiveResult(Received.DELIVERED, **base)
        if h.kind is Kind.STATUS and h.status is not None:
            await self.store.record_event(
                h.status.response_for,
                h.sender.code,
                f"status:{h.status.code.value}",
                at=h.created_at,
                status_code=h.status.code.value,
                detail=h.status.description[:500],
            )
            if is_new and hops:
                await self._record_hops(h.status.response_for, h.sender.code, (), (), status=tuple(hops))
        return await self._hand_over(recipient, signed, attempt, base, replay)

    async def _hand_over(
        self, recipient: str, signed: SignedEnvelope, attempt: int, base: dict[str, str], replay: Replay | None = None
    ) -> ReceiveResult:
        env = signed.envelope
        h = env.header
        adapter = self.adapters.get(recipient)
        if adapter is None:
            result = DeliveryResult.transient(f"no adapter is running for {recipient}", "adapter-missing")
        else:
            try:
                result = await adapter.deliver(Incoming(recipient, env, signed.xml, signed.attachment_data, attempt))
            except Exception as exc:  # noqa: BLE001 - an adapter bug or outage is transient: the bus retries
                # The exception's text is this node's business: the sender's receipt gets a fixed text.
                log.warning(
                    "adapter.error", **base, recipient=recipient, error=type(exc).__name__, detail=str(exc)[:300]
                )
                result = DeliveryResult.transient(
                    f"the {recipient} adapter failed ({type(exc).__name__})", "adapter-error"
                )
        answer = h.kind is not Kind.RECEIPT  # a receipt is never answered with a receipt
        if result.outcome is Outcome.DELIVERED:
            await self.store.complete_incoming(
                h.message_id,
                recipient,
                InboxState.HANDED_OVER,
                receipt=self._receipt(
                    recipient,
                    env,
                    h.sender.code,
                    h.message_id,
                    ReceiptOutcome.DELIVERED,
                    digest=signed.digest,
                    reason_code=REPLAYED if replay else "",
                    reason=replay.reason if replay else "",
                )
                if answer
                else None,
            )
            self.outbox_event.set()
            log.info("delivered", **base, recipient=recipient, attempt=attempt, replay=replay.count if replay else 0)
            return ReceiveResult(Received.DELIVERED, **base)
        if result.outcome is Outcome.TRANSIENT and attempt < self.max_attempts:
            log.info("delivery.retry", **base, recipient=recipient, attempt=attempt, reason=result.reason_code)
            return ReceiveResult(Received.TRANSIENT, result.reason_code, result.reason, **base)
        code = result.reason_code if result.outcome is Outcome.PERMANENT else "retries-exhausted"
        reason = (
            result.reason
            if result.outcome is Outcome.PERMANENT
            else (f"gave up after {attempt} attempts: {result.reason}")
        )
        told = f"{AFTER_REPLAY}{replay.reason}): {reason}" if replay else reason
        await self.store.complete_incoming(
            h.message_id,
            recipient,
            InboxState.FAILED,
            reason=reason,
            receipt=self._receipt(
                recipient,
                env,
                h.sender.code,
                h.message_id,
                ReceiptOutcome.FAILED,
                digest=signed.digest,
                reason_code=code,
                reason=told,
            )
            if answer
            else None,
        )
        self.outbox_event.set()
        log.warning("delivery.failed", **base, recipient=recipient, reason_code=code)
        return ReceiveResult(Received.PERMANENT, code, reason, **base)

    async def _on_receipt(self, env: Envelope, recipient: str, return_hops: tuple[Hop, ...] = ()) -> None:
        receipt = env.header.receipt
        assert receipt is not None
        sender = env.header.sender.code  # the agency that received the original
        delivered = receipt.outcome is ReceiptOutcome.DELIVERED
        detail = f"digest {receipt.envelope_digest}" if delivered else f"{receipt.reason_code}: {receipt.reason}"
        replayed = replay_of(receipt)
        if replayed is not None:
            # An operator replayed the dead letter at the recipient: the failed delivery runs again.
            # replay: only a delivery that is failed moves (a repeated receipt finds it closed otherwise).
            await self.store.record_event(
                receipt.response_for,
                sender,
                "replayed",
                at=env.header.created_at,
                state=DeliveryState.QUEUED,
                detail=replayed[:1000],
                replay=True,
            )
        # only_if_open: a receipt re-sent for a duplicate finds the delivery closed and adds nothing.
        known = await self.store.record_event(
            receipt.response_for,
            sender,
            receipt.outcome.value,
            at=env.header.created_at,
            state=DeliveryState.DELIVERED if delivered else DeliveryState.FAILED,
            detail=detail[:1000],
            only_if_open=True,
            reopen=not delivered and receipt.reason_code == EOFFICE_REFUSED,
        )
        if known:
            await self._record_hops(receipt.response_for, sender, env.trace, return_hops)
            original = await self._sent(receipt.response_for)
            if delivered and original is not None and receipt.envelope_digest != original.digest:
                log.error("receipt.digest_mismatch", message_id=receipt.response_for, recipient=sender)
                await self.store.record_event(
                    receipt.response_for,
                    sender,
                    "receipt-digest-mismatch",
                    at=self.clock(),
                    detail=receipt.envelope_digest,
                )
            if self.metrics is not None:
                self.metrics.deliveries.labels(sender, receipt.outcome.value).inc()
            if original is not None and self.metrics is not None:
                latency = (env.header.created_at - original.created_at).total_seconds()
                self.metrics.delivery_latency.labels(sender).observe(max(latency, 0.0))
                in_flight = (self.clock() - env.header.created_at).total_seconds()
                self.metrics.receipt_latency.labels(sender).observe(max(in_flight, 0.0))
        log.info(
            "receipt.received",
            message_id=receipt.response_for,
            sender=recipient,
            recipient=sender,
            outcome=receipt.outcome.value,
        )

    async def _sent(self, message_id: str) -> SentFacts | None:
        """The digest and creation time of a message this node sent, remembered for its next receipts.

        A directive to 3,355 agencies gets 3,355 receipts; reading its stored record for each one
        read the 284 KiB envelope 3,355 times. Both facts are fixed once the message is signed.
        """
        facts = self._sent_facts.get(message_id)
        if facts is None:
            record = await self.store.get_message(message_id, Direction.OUT)
            if record is None:
                return None
            facts = SentFacts(record.digest, record.created_at)
            self._sent_facts[message_id] = facts
            while len(self._sent_facts) > SENT_FACTS_KEPT:
                self._sent_facts.popitem(last=False)
        else:
            self._sent_facts.move_to_end(message_id)
        return facts

    async def _record_hops(
        self,
        message_id: str,
        recipient: str,
        forward: tuple[Hop, ...],
        back: tuple[Hop, ...],
        *,
        status: tuple[Hop, ...] = (),
    ) -> None:
        """The hub hops of a delivery on the sender's timeline: the document's way there, the way back."""
        for way, hops in (("document", forward), ("receipt", back), ("status", status)):
            for hop in hops:
                await self.store.record_event(
                    message_id, recipient, "hop", at=hop.at, detail=f"{way} via {hop.node}"[:500]
                )

    async def _refuse_unverified(
        self, recipient: str, xml: bytes, exc: ExchangeError, *, count: bool = True
    ) -> ReceiveResult:
        """An envelope that fails verification is never delivered; tell the claimed sender if we can."""
        if count and self.metrics is not None:  # a bundle counts its one refused frame once
            self.metrics.rejections.labels(rejection_stage(exc), exc.code).inc()
        try:
            from exchange.envelope.parse import parse_envelope

            _, claimed = parse_envelope(xml)
        except ExchangeError:
            return ReceiveResult(Received.PERMANENT, exc.code, exc.message)
        h = claimed.header
        base = dict(message_id=h.message_id, sender=h.sender.code, kind=h.kind.value)
        log.warning("envelope.refused", **base, recipient=recipient, reason_code=exc.code)
        await self._ndr_if_possible(recipient, claimed, hashlib.sha256(xml).hexdigest(), exc.code, exc.message)
        return ReceiveResult(Received.PERMANENT, exc.code, exc.message, **base)

    async def _refuse_after_error(self, recipient: str, xml: bytes, exc: Exception) -> ReceiveResult:
        """The receive path failed unexpectedly: answer once, permanently, instead of looping.

        Logged here, once, with the traceback. The sender gets a signed non-delivery receipt
        with a fixed text; the exception (the recipient's business) goes to the dead letter.
        """
        log.exception("receive.unexpected_error", recipient=recipient, error=type(exc).__name__)
        detail = f"{type(exc).__name__}: {exc}"[:500]
        try:
            from exchange.envelope.parse import parse_envelope

            _, claimed = parse_envelope(xml)
        except Exception as again:  # noqa: BLE001 - already failing: answer without a receipt, never loop
            return ReceiveResult(
                Received.PERMANENT,
                RECEIVE_ERROR,
                f"{detail}; no non-delivery receipt: the envelope cannot be read ({type(again).__name__})",
            )
        h = claimed.header
        base = dict(message_id=h.message_id, sender=h.sender.code, kind=h.kind.value)
        try:
            state = await self.store.incoming_state(h.message_id, recipient)
            if state in (InboxState.HANDED_OVER, InboxState.ACKED):
                # It reached the E-Office (and its receipt is enqueued) before the failure.
                return ReceiveResult(Received.DELIVERED, RECEIVE_ERROR, detail, **base)
            answer = h.kind is not Kind.RECEIPT and h.sender.code in self.directory and state is not InboxState.FAILED
            receipt = (
                self._receipt(
                    recipient,
                    claimed,
                    h.sender.code,
                    h.message_id,
                    ReceiptOutcome.FAILED,
                    digest=hashlib.sha256(xml).hexdigest(),
                    reason_code=RECEIVE_ERROR,
                    reason=RECEIVE_ERROR_TEXT,
                )
                if answer
                else None
            )
            if state is InboxState.RECEIVED:
                await self.store.complete_incoming(
                    h.message_id, recipient, InboxState.FAILED, reason=detail, receipt=receipt
                )
            elif receipt is not None:
                await self.store.accept_outgoing(receipt[0], [receipt[1]], track=False)
            self.outbox_event.set()
        except asyncio.CancelledError:
            raise
        except Exception as again:
            if is_infrastructure_error(again):
                raise  # the store is away: hold the message, answer it when the store is back
            log.error(
                "receive.ndr_failed", **base, recipient=recipient, error=type(again).__name__, detail=str(again)[:300]
            )
            return ReceiveResult(
                Received.PERMANENT,
                RECEIVE_ERROR,
                f"{detail}; the non-delivery receipt failed too ({type(again).__name__})",
                **base,
            )
        return ReceiveResult(Received.PERMANENT, RECEIVE_ERROR, detail, **base)

    async def _ndr_if_possible(self, recipient: str, env: Envelope, digest: str, code: str, reason: str) -> None:
        h = env.header
        if h.kind is Kind.RECEIPT or h.sender.code not in self.directory:
            return  # never answer a receipt; never write to an agency we do not know
        await self._send_receipt(
            self._receipt(
                recipient,
                env,
                h.sender.code,
                h.message_id,
                ReceiptOutcome.FAILED,
                digest=digest,
                reason_code=code,
                reason=reason,
            )
        )

    # -- inbox, tracking -----------------------------------------------------------

    async def inbox(
        self, agency: str, *, include_acked: bool = False, limit: int = 100, after_seq: int = 0
    ) -> list[InboxEntry]:
        self._signer(agency)
        return await self.store.list_inbox(agency, include_acked=include_acked, limit=limit, after_seq=after_seq)

    async def fetch(self, agency: str, message_id: str) -> FetchedMessage:
        """One inbox entry with its verified envelope and attachments (only ``agency``'s own)."""
        from exchange.envelope.parse import parse_envelope

        self._signer(agency)
        state = await self.store.incoming_state(message_id, agency)
        record = await self.store.get_message(message_id, Direction.IN)
        if state is None or record is None or state not in (InboxState.HANDED_OVER, InboxState.ACKED):
            raise NotFoundError(f"message {message_id} is not in {agency}'s inbox")
        _, env = parse_envelope(record.envelope_xml)
        attachments = {}
        for a in env.attachments:
            data = await self.store.get_attachment(a.sha256)
            if data is None:
                raise NotFoundError(f"attachment {a.name} of {message_id} is missing from the store")
            attachments[a.id] = data
        entry = await self.store.inbox_entry(agency, message_id)
        if entry is None:  # acknowledged away or changed between the two reads
            raise NotFoundError(f"message {message_id} is not in {agency}'s inbox")
        return FetchedMessage(entry, env, record.envelope_xml, attachments)

    async def acknowledge(self, agency: str, message_id: str) -> None:
        self._signer(agency)
        if not await self.store.ack_inbox(agency, message_id):
            raise NotFoundError(f"message {message_id} is not in {agency}'s inbox")

    async def refuse_handed_over(self, agency: str, message_id: str, reason: str) -> None:
        """The E-Office of ``agency`` could not take in a message already handed over to it.

        Its sender gets a signed non-delivery receipt (reason code ``eoffice-refused``), which
        turns that delivery to failed in its tracking; the entry then leaves the inbox listing.
        The receipt goes first: a crash in between leaves the entry listed, and a second refusal
        only repeats a receipt the sender ignores.
        """
        from exchange.envelope.parse import parse_envelope

        self._signer(agency)
        record = await self.store.get_message(message_id, Direction.IN)
        entry = await self.store.inbox_entry(agency, message_id)
        if record is None or entry is None or record.kind == Kind.RECEIPT.value:
            raise NotFoundError(f"message {message_id} is not in {agency}'s inbox")
        _, env = parse_envelope(record.envelope_xml)
        await self._send_receipt(
            self._receipt(
                agency,
                env,
                record.sender,
                message_id,
                ReceiptOutcome.FAILED,
                digest=record.digest,
                reason_code=EOFFICE_REFUSED,
                reason=reason or "the recipient's E-Office could not take it in",
            )
        )
        await self.store.ack_inbox(agency, message_id)
        log.info("delivery.refused_by_eoffice", message_id=message_id, recipient=agency, sender=record.sender)

    async def track(self, agency: str | None, message_id: str) -> TrackResult:
        """Per-recipient state and timeline of a sent message; ``agency`` None means operator access."""
        record = await self.store.get_message(message_id, Direction.OUT)
        if record is None or (agency is not None and record.sender != agency):
            raise NotFoundError(f"no message {message_id} was sent by {agency or 'this node'}")
        return TrackResult(record, await self.store.deliveries(message_id), await self.store.timeline(message_id))

    def handle(self, agency: str) -> AgencyHandle:
        """The :class:`~exchange.adapters.base.BusHandle` an adapter of ``agency`` uses."""
        self._signer(agency)
        return AgencyHandle(self, agency)


class AgencyHandle:
    """BusHandle bound to one agency: an adapter can only ever act for its own agency."""

    def __init__(self, service: ExchangeService, agency: str) -> None:
        self._service = service
        self._agency = agency

    @property
    def agency(self) -> str:
        return self._agency

    @property
    def directory(self) -> Directory:
        """The node's agency directory, read-only: the edXML adapter maps organ id aliases through it."""
        return self._service.directory

    async def submit_document(
        self,
        recipients: Sequence[str],
        document: DocumentInfo,
        files: Sequence[OutgoingFile] = (),
        *,
        operation: Operation = Operation.NEW,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        return await self._service.submit_document(
            self._agency, recipients, document, files, operation=operation, idempotency_key=idempotency_key
        )

    async def submit_status(
        self,
        document_message_id: str,
        code: StatusCode,
        *,
        description: str = "",
        staff: StaffInfo | None = None,
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        return await self._service.submit_status(
            self._agency,
            document_message_id,
            code,
            description=description,
            staff=staff,
            idempotency_key=idempotency_key,
        )

    async def submit_edxml(self, package: bytes, *, idempotency_key: str | None = None) -> SubmitResult:
        return await self._service.submit_edxml(self._agency, package, idempotency_key=idempotency_key)

    async def track(self, message_id: str) -> TrackResult:
        return await self._service.track(self._agency, message_id)
