"""The hub's operations under ``/vxp/``: thin translations to the service's use cases.

Each operation verifies the signed headers (:mod:`exchange.gateway.vxp.auth`), acts for
the one agency the system id maps to, and answers the hub's JSON. Sending is
``submit_edxml``; listing and fetching are the inbox; ``updateStatus`` is a business
status (``submit_status``) plus the inbox acknowledgement, or, for ``fail``, the
non-delivery of ``refuse_handed_over``; the sent listing is tracking. A docId is a
message id, so another agency's (another system's) document answers not-found, exactly
like a document that does not exist.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol, cast

import structlog
from aiohttp import BodyPartReader, web

from exchange.envelope.model import Kind
from exchange.errors import ExchangeError, NotFoundError, PayloadTooLargeError
from exchange.gateway.errors import InternalError
from exchange.gateway.uploads import check_declared_length
from exchange.gateway.vxp import mapping
from exchange.gateway.vxp.auth import (
    HUB_TZ,
    HeaderVerifier,
    SignedCall,
    check_file_hash,
)
from exchange.gateway.vxp.errors import (
    OK_CODE,
    VxpAuthError,
    VxpBadRequestError,
    VxpNotFoundError,
    hub_code,
)
from exchange.gateway.vxp.secrets import sealing_key, unseal
from exchange.service import ExchangeService
from exchange.store.base import (
    Delivery,
    DeliveryState,
    Direction,
    InboxEntry,
    InboxState,
)

log = structlog.get_logger("exchange.gateway.vxp")

PREFIX = "/vxp/"
MAX_PAGE = 500
#: How far a listing pages through the inbox or the sent messages to apply its filters.
SCAN_LIMIT = 10_000
#: How many of an agency's latest outgoing messages tell what it reported about what it received.
REPORT_SCAN = 2_000
_CHUNK = 64 * 1024
_SERVICE_TYPES = {"edoc": "eDoc", "status": "status"}
_MESSAGE_KINDS = {"edoc": Kind.DOCUMENT.value, "status": Kind.STATUS.value}
_DUMPS = functools.partial(json.dumps, ensure_ascii=False)
_SEND_STATUS = {
    DeliveryState.SUBMITTED: ("pending", "accepted by the bus, on its way to the recipient's node"),
    DeliveryState.QUEUED: ("pending", "on its way to the recipient's node"),
    DeliveryState.DELIVERED: ("done", "delivered into the recipient's E-Office channel (signed receipt)"),
    DeliveryState.FAILED: ("fail", "not delivered"),
}


@dataclass
class VxpGateway:
    """What the operations share: the service, the header verifier, the upload limit."""

    service: ExchangeService
    verifier: HeaderVerifier
    max_package_bytes: int


def hub_time(at: datetime | None) -> str:
    """Times in answers: ISO 8601 in the hub's zone (``2026-12-01T14:30:05+07:00``), or empty."""
    return at.astimezone(HUB_TZ).isoformat(timespec="seconds") if at is not None else ""


def answer(data: Any = None, **extra: Any) -> web.Response:
    """The hub's success answer."""
    return web.json_response(
        {"status": "OK", "ErrorCode": OK_CODE, "ErrorDesc": "Success", **extra, "data": data}, dumps=_DUMPS
    )


def refusal(exc: ExchangeError) -> web.Response:
    """The hub's failure answer, with our stable code beside its ErrorCode and a fitting HTTP status."""
    return web.json_response(
        {"status": "FAIL", "ErrorCode": hub_code(exc), "ErrorDesc": exc.message, "code": exc.code, "data": None},
        status=exc.http_status,
        dumps=_DUMPS,
    )


# -- helpers -------------------------------------------------------------------------------------------


def _int_param(call: SignedCall, name: str, default: int, low: int, high: int) -> int:
    raw = call.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise VxpBadRequestError(f"{name} must be an integer from {low} to {high}")
    return value


def _date_param(call: SignedCall, name: str) -> date | None:
    raw = call.get(name).strip()
    if not raw:
        return None
    for fmt in ("%d/%m/%Y", "%Y-%m-%d", "%Y/%m/%d", "%d-%m-%Y", "%d%m%Y"):
        try:
            return datetime.strptime(raw[:10], fmt).date()
        except ValueError:
            continue
    raise VxpBadRequestError(f"{name} {raw[:20]!r} is not a date (dd/MM/yyyy or yyyy-MM-dd)")


def _kinds(call: SignedCall) -> set[str]:
    """The message kinds a listing is about: ``messagetype`` edoc or status, both when absent."""
    raw = call.get("messagetype").strip().lower()
    if not raw:
        return set(_MESSAGE_KINDS.values())
    if raw not in _MESSAGE_KINDS:
        raise VxpBadRequestError(f"messagetype {raw[:20]!r} must be edoc or status")
    return {_MESSAGE_KINDS[raw]}


def _check_servicetype(call: SignedCall) -> None:
    raw = call.get("servicetype").strip().lower()
    if raw and raw not in _SERVICE_TYPES:
        raise VxpBadRequestError(f"servicetype {raw[:20]!r} must be eDoc or status")


def _doc_id(call: SignedCall) -> str:
    doc_id = call.get("docId").strip()
    if not doc_id or len(doc_id) > 64:
        raise VxpBadRequestError("docId is missing or too long; use the DocId sendEdoc or a listing answered")
    structlog.contextvars.bind_contextvars(message_id=doc_id)
    return doc_id


async def _read_package(request: web.Request, limit: int) -> bytes:
    """The .edxml file of a sendEdoc: the first file part of a multipart body (the SDK's ``file_doc``),
    or the whole body when it is not multipart. Streamed; refused (413) past ``limit``."""
    check_declared_length(request, limit)
    out = bytearray()

    async def take(read: Callable[[int], Awaitable[bytes]]) -> bytes:
        while chunk := await read(_CHUNK):
            out.extend(chunk)
            if len(out) > limit:
                raise PayloadTooLargeError(
                    f"the package is over the {limit}-byte limit of an edXML package", detail={"limit": limit}
                )
        return bytes(out)

    if request.content_type.lower().startswith("multipart/"):
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if isinstance(part, BodyPartReader) and (part.filename is not None or part.name == "file_doc"):
                    return await take(part.read_chunk)
                if isinstance(part, BodyPartReader):
                    await part.release()
        except (ValueError, AssertionError) as exc:  # aiohttp's refusals of a broken multipart body
            raise VxpBadRequestError(
                f"the multipart body is broken ({exc}); send the package as one file part"
            ) from exc
        raise VxpBadRequestError("the multipart body has no file part; send the .edxml package as 'file_doc'")
    return await take(request.content.read)


async def _scan_inbox(service: ExchangeService, agency: str, *, include_acked: bool) -> AsyncIterator[InboxEntry]:
    """Every visible inbox entry of ``agency``, oldest first, up to SCAN_LIMIT."""
    after, seen = 0, 0
    while seen < SCAN_LIMIT:
        entries = await service.inbox(agency, include_acked=include_acked, limit=MAX_PAGE, after_seq=after)
        if not entries:
            return
        for entry in entries:
            yield entry
        seen += len(entries)
        after = entries[-1].seq


async def _reported(service: ExchangeService, agency: str) -> dict[str, tuple[str, datetime]]:
    """What ``agency`` last reported about each message it received: hub word and time (newest sent first).

    Read from its own recent outgoing statuses and non-delivery receipts (the latest REPORT_SCAN).
    """
    from exchange.envelope.parse import parse_envelope
    from exchange.service import EOFFICE_REFUSED

    words: dict[str, tuple[str, datetime]] = {}
    for record in await service.store.list_sent(agency, limit=REPORT_SCAN):
        if not record.relates_to or record.relates_to in words:
            continue
        if record.kind == Kind.STATUS.value:
            _, env = parse_envelope(record.envelope_xml)
            if env.header.status is not None:
                words[record.relates_to] = (mapping.word_of(env.header.status.code), record.created_at)
        elif record.kind == Kind.RECEIPT.value:
            _, env = parse_envelope(record.envelope_xml)
            receipt = env.header.receipt
            if receipt is not None and receipt.reason_code == EOFFICE_REFUSED:
                words[record.relates_to] = (mapping.FAIL, record.created_at)
    return words


def _received_item(entry: InboxEntry, reported: tuple[str, datetime] | None) -> dict[str, Any]:
    pending = entry.state is InboxState.HANDED_OVER
    if pending:
        word, desc, updated = "inbox", "waiting to be taken by the E-Office", entry.received_at
    elif reported is not None:
        word, updated = reported
        desc = (
            "the E-Office refused it (non-delivery sent)"
            if word == mapping.FAIL
            else f"taken; last status sent: {word}"
        )
    else:
        word, desc, updated = "inbox", "taken; no status sent yet", entry.acked_at or entry.received_at
    return {
        "docId": entry.message_id,
        "serviceType": "eDoc",
        "messageType": "status" if entry.kind == Kind.STATUS.value else "edoc",
        "created_time": hub_time(entry.received_at),
        "updated_time": hub_time(updated),
        "from": entry.sender,
        "to": entry.agency,
        "status": word,
        "status_desc": desc,
        "title": entry.subject,
        "priority": entry.priority,
    }


# -- operations ----------------------------------------------------------------------------------------


async def send_edoc(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """sendEdoc: the .edxml package, checked against ``hash-file``, sent as the agency's envelope."""
    _check_servicetype(call)
    _kinds(call)  # refuses an unknown messagetype; the package itself says what it is
    claimed = call.get("hash-file")
    if not claimed:
        raise VxpAuthError("sendEdoc needs the signed header hash-file (SHA-256 hex of the package)")
    package = await _read_package(request, gw.max_package_bytes)
    check_file_hash(claimed, package)
    # The same bytes sent again (an SDK retry after a timeout) answer the same DocId and send nothing.
    key = f"vxp-package:{hashlib.sha256(package).hexdigest()}"
    result = await gw.service.submit_edxml(call.agency, package, idempotency_key=key)
    structlog.contextvars.bind_contextvars(message_id=result.message_id)
    return answer(
        {"docId": result.message_id, "created": result.created, "to": list(result.recipients)}, DocId=result.message_id
    )


async def get_received_edoc_list(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """getReceivedEdocList: by default what waits to be taken (status ``inbox``); filters and pages."""
    _check_servicetype(call)
    kinds = _kinds(call)
    word = call.get("status").strip().lower()
    if word and word != "inbox" and word not in mapping.WORDS:
        mapping.code_of(word)  # raises the typed refusal naming the words
    low, high = _date_param(call, "fromDate"), _date_param(call, "toDate")
    size = _int_param(call, "pageSize", 100, 1, MAX_PAGE)
    index = _int_param(call, "pageIndex", 1, 1, SCAN_LIMIT // size or 1)
    handled = bool(word) and word != "inbox"
    reported = await _reported(gw.service, call.agency) if handled else {}
    start = datetime.combine(low, time.min, HUB_TZ) if low else None
    end = datetime.combine(high, time.min, HUB_TZ) + timedelta(days=1) if high else None
    items: list[dict[str, Any]] = []
    skip = (index - 1) * size
    async for entry in _scan_inbox(gw.service, call.agency, include_acked=handled):
        if entry.kind not in kinds or (start and entry.received_at < start) or (end and entry.received_at >= end):
            continue
        item = _received_item(entry, reported.get(entry.message_id))
        if (item["status"] != word) if handled else entry.state is not InboxState.HANDED_OVER:
            continue
        if skip:
            skip -= 1
            continue
        items.append(item)
        if len(items) == size:
            break
    return answer(items)


async def get_edoc(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """getEdoc: the received message as an edXML package, base64 in ``data`` (as the SDK reads it)."""
    from exchange.envelope.edxml import export_package, reference_of

    doc_id = _doc_id(call)
    fetched = await gw.service.fetch(call.agency, doc_id)
    envelope = fetched.envelope
    h = envelope.header
    if h.kind is Kind.RECEIPT:
        raise VxpNotFoundError(f"message {doc_id} is not in {call.agency}'s inbox")
    targets: dict[str, str] = {}
    if h.document is not None:
        if not h.document.document_id:  # the package names the document as the sender's E-Office will
            ref = reference_of(h.sender.code, h.document, h.created_at)
            envelope = replace(envelope, header=replace(h, document=replace(h.document, document_id=ref.document_id)))
        if h.document.relates_to:
            original = await gw.service.store.get_message(h.document.relates_to, Direction.IN)
            if original is not None and original.document_id:
                targets[h.document.relates_to] = original.document_id
    package = await asyncio.to_thread(export_package, envelope, fetched.attachments, document_id_of=targets.get)
    return answer(base64.b64encode(package).decode(), docId=doc_id, sha256=hashlib.sha256(package).hexdigest())


async def update_status(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """updateStatus: a hub word about a received message (see mapping.py for what each word does)."""
    doc_id = _doc_id(call)
    word = call.get("status").strip().lower()
    code = mapping.code_of(word)
    entry = await gw.service.store.inbox_entry(call.agency, doc_id)
    if entry is None:
        raise VxpNotFoundError(f"message {doc_id} is not in {call.agency}'s inbox")
    description = call.get("description")[:1000]
    status_id = None
    if code is None:
        await gw.service.refuse_handed_over(call.agency, doc_id, description or "the E-Office answered fail")
    else:
        if entry.kind == Kind.DOCUMENT.value:
            # One status per (document, word): a retried call sends nothing twice.
            result = await gw.service.submit_status(
                call.agency, doc_id, code, description=description, idempotency_key=f"vxp-status:{doc_id}:{code.value}"
            )
            status_id = result.message_id
        await gw.service.acknowledge(call.agency, doc_id)  # a status is taken in, never answered
    return answer({"docId": doc_id, "status": word, "code": code.value if code else None, "statusId": status_id})


async def get_sent_edoc_list(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """getSentEdocList: per recipient of a sent document (``docId``), or of the latest sent ones."""
    from exchange.envelope.parse import parse_envelope

    service = gw.service
    size = _int_param(call, "pageSize", 50, 1, MAX_PAGE)
    if call.get("docId"):
        tracks = [await service.track(call.agency, _doc_id(call))]
    else:
        kinds = _kinds(call)
        recent = await service.store.list_sent(call.agency, limit=min(SCAN_LIMIT, size * 10))
        records = [r for r in recent if r.kind in kinds]
        tracks = [await service.track(call.agency, r.message_id) for r in records[:size]]
    items = []
    for tracked in tracks:
        record = tracked.message
        _, env = parse_envelope(record.envelope_xml)
        doc = env.header.document
        delivered_at = {e.recipient: e.at for e in tracked.timeline if e.event == "delivered"}
        for d in tracked.deliveries:
            items.append(
                _sent_item(
                    record.message_id,
                    record.kind,
                    record.sender,
                    record.created_at,
                    d,
                    delivered_at.get(d.recipient),
                    record.subject,
                    doc.code.notation if doc else "",
                )
            )
    return answer(items)


def _sent_item(
    message_id: str,
    kind: str,
    sender: str,
    sent_at: datetime,
    d: Delivery,
    delivered_at: datetime | None,
    title: str,
    notation: str,
) -> dict[str, Any]:
    send_word, send_desc = _SEND_STATUS[d.state]
    if d.state is DeliveryState.FAILED and d.reason:
        send_desc = f"not delivered: {d.reason}"
    return {
        "serviceType": "eDoc",
        "messageType": "status" if kind == Kind.STATUS.value else "edoc",
        "senderDocId": message_id,
        "receiverDocId": message_id,
        "fromCode": sender,
        "toCode": d.recipient,
        "sendStatus": send_word,
        "sendStatusDesc": send_desc,
        "receiveStatus": mapping.word_of(d.status_code),
        "receiveStatusDesc": mapping.describe(d.status_code),
        "sentTime": hub_time(sent_at),
        "receivedTime": hub_time(delivered_at),
        "title": title,
        "notation": notation,
    }


async def get_agencies_list(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """getAgenciesList: the agency directory (retired agencies say their successor)."""
    hosted = gw.service.hosted
    items = [
        {
            "id": e.code,
            "code": e.code,
            "name": e.name,
            "pid": e.parent or "",
            "mail": "",
            "retired": e.retired,
            "successor": e.successor or "",
            "hostedHere": e.code in hosted,
        }
        for e in gw.service.directory
    ]
    return answer(items)


async def _count(gw: VxpGateway, call: SignedCall, kind: str) -> web.Response:
    n = 0
    async for entry in _scan_inbox(gw.service, call.agency, include_acked=False):
        n += entry.kind == kind
    return answer({"count": n}, count=n)


async def count_receive_edoc(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """countReceiveEdoc: documents waiting to be taken."""
    return await _count(gw, call, Kind.DOCUMENT.value)


async def count_receive_status(gw: VxpGateway, request: web.Request, call: SignedCall) -> web.Response:
    """countReceiveStatus: statuses waiting to be taken."""
    return await _count(gw, call, Kind.STATUS.value)


Operation = Callable[[VxpGateway, web.Request, SignedCall], Awaitable[web.Response]]

#: name -> (operation, the signed headers it cannot do without besides systemid and timestamp).
OPERATIONS: dict[str, tuple[Operation, tuple[str, ...]]] = {
    "sendEdoc": (send_edoc, ("hash-file",)),
    "getReceivedEdocList": (get_received_edoc_list, ()),
    "getEdoc": (get_edoc, ("docId",)),
    "updateStatus": (update_status, ("docId", "status")),
    "getSentEdocList": (get_sent_edoc_list, ()),
    "getAgenciesList": (get_agencies_list, ()),
    "countReceiveEdoc": (count_receive_edoc, ()),
    "countReceiveStatus": (count_receive_status, ()),
}


def _handler(
    gw: VxpGateway, operation: Operation, required: tuple[str, ...]
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            call = await gw.verifier.verify(request.headers, lambda name: request.headers.getall(name, []), required)
            structlog.contextvars.bind_contextvars(agency=call.agency, vxp_system=call.system_id)
            return await operation(gw, request, call)
        except NotFoundError as exc:
            # The service's not-found keeps its message; one code for all (absent, or another system's).
            return refusal(exc if isinstance(exc, VxpNotFoundError) else VxpNotFoundError(exc.message))
        except ExchangeError as exc:
            if exc.http_status >= 500:
                log.error("vxp.refused", code=exc.code, status=exc.http_status)
            return refusal(exc)
        except Exception:
            log.exception("vxp.internal_error")
            return refusal(
                InternalError(
                    "the node failed unexpectedly; its log has the details under the request id of this answer"
                )
            )

    return handle


async def unknown_operation(request: web.Request) -> web.Response:
    return refusal(
        VxpNotFoundError(
            f"no hub operation {request.path[len(PREFIX) :][:60]!r}; the operations are {', '.join(OPERATIONS)}"
        )
    )


def add_routes(router: web.UrlDispatcher, gw: VxpGateway) -> None:
    """Every operation on any method (the SDK POSTs most calls and GETs the counts)."""
    for name, (operation, required) in OPERATIONS.items():
        router.add_route("*", f"{PREFIX}{name}", _handler(gw, operation, required))
    router.add_route("*", PREFIX + "{tail:.*}", unknown_operation)


class _IdentityKey(Protocol):
    @property
    def key(self) -> object: ...


class _SignerWithIdentity(Protocol):
    """What :func:`secret_lookup` needs of a hosted agency's signer beyond ``EnvelopeSigner``: its key."""

    @property
    def identity(self) -> _IdentityKey: ...


async def secret_lookup(service: ExchangeService, system_id: str) -> tuple[str, str] | None:
    """The agency and plaintext secret of a system hosted here, or None."""
    from exchange.errors import ForbiddenError

    system = await service.store.get_vxp_system(system_id)
    if system is None:
        return None
    # every signer the service holds (an EnvelopeSigner or its lazy stand-in) has .identity.key
    signer = cast("_SignerWithIdentity | None", service.signers.get(system.agency))
    if signer is None:
        raise ForbiddenError(f"system {system_id} acts for agency {system.agency}, which this node does not host")
    key = sealing_key(signer.identity.key)
    return system.agency, unseal(key, system.system_id, system.agency, system.sealed)
