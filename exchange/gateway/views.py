"""The agency endpoints under /v1: thin translations between HTTP and ExchangeService.

Scoping is the service's: every call passes the authenticated agency, and the
service answers NotFoundError (404) for a message that is not that agency's,
so a caller cannot even learn that another agency's message exists.
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import quote

import structlog
from aiohttp import web

from exchange.adapters.base import OutgoingFile, SubmitResult
from exchange.config import HttpConfig
from exchange.envelope.model import Operation
from exchange.errors import BadRequestError, NotFoundError
from exchange.gateway import render
from exchange.gateway.auth import Principal
from exchange.gateway.errors import MetadataError, UnsupportedMediaTypeError
from exchange.gateway.idempotency import fingerprint, submit_once
from exchange.gateway.keys import CORRELATION_ID, HTTP, PRINCIPAL, SERVICE
from exchange.gateway.metadata import DocumentSubmission, parse_document, parse_status
from exchange.gateway.uploads import (
    EDXML_LIMIT,
    MEDIA_TYPE,
    Limits,
    is_xml,
    media_type,
    read_body,
    read_document_form,
    read_json,
)
from exchange.service import ExchangeService, FetchedMessage

MAX_PAGE = 500
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")


def _app_parts(request: web.Request) -> tuple[ExchangeService, HttpConfig]:
    return request.app[SERVICE], request.app[HTTP]


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _agency(request: web.Request) -> str:
    return _principal(request).agency


def _correlation_id(request: web.Request) -> str:
    return request[CORRELATION_ID]


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        raise BadRequestError("Idempotency-Key must be 1 to 200 visible ASCII characters (e.g. a UUID)")
    return key


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequestError(f"query parameter {name} must be an integer from {low} to {high}")
    return value


def _bool_query(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise BadRequestError(f"query parameter {name} must be true or false")
    return raw in ("true", "1")


def _digest_header(data: bytes) -> str:
    """RFC 9530 Repr-Digest of a body: what the E-Office can check the download against."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


# -- who am I, directory --------------------------------------------------------------------------


async def me(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    principal = _principal(request)
    entry = service.directory.get(principal.agency)
    return web.json_response(
        {
            "agency": principal.agency,
            "name": entry.name if entry else "",
            "auth": principal.method,
            "node": service.node,
        }
    )


async def directory(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    code = request.query.get("code")
    if code:
        entry = service.directory.require(code)
        entries = [entry, *service.directory.children(code)]
    else:
        entries = list(service.directory)
    return web.json_response({"items": [render.agency(e, service.hosted) for e in entries]})


# -- sending --------------------------------------------------------------------------------------


async def submit_document(request: web.Request) -> web.Response:
    """multipart/form-data (metadata + files) or application/json (metadata only)."""
    service, http = _app_parts(request)
    agency = _agency(request)
    key = _idempotency_key(request)
    kind = media_type(request)
    if kind == "multipart/form-data":
        limits = Limits(
            body=http.max_body_bytes,
            attachment=service.limits.max_attachment_bytes,
            message=service.limits.max_message_bytes,
        )
        raw, files = await read_document_form(request, limits)
    elif kind == "application/json":
        raw, files = await read_json(request), []
    else:
        raise UnsupportedMediaTypeError(
            f"submit a document as multipart/form-data (a 'metadata' JSON field and file parts) or as "
            f"application/json (metadata only), not {request.content_type or 'no Content-Type'}; "
            "edXML packages go to POST /v1/edxml"
        )
    submission = parse_document(raw)
    files = _describe(files, submission)
    request_fingerprint = fingerprint(request.method, request.path, raw, files)

    async def submit() -> SubmitResult:
        recipients = submission.recipients
        if not recipients and submission.operation is not Operation.NEW:
            # A revoke / update / replace goes by default to everyone who received the original.
            original = await service.track(agency, submission.document.relates_to or "")
            recipients = original.message.recipients
        return await service.submit_document(
            agency,
            recipients,
            submission.document,
            files,
            operation=submission.operation,
            idempotency_key=key,
            correlation_id=_correlation_id(request),
            idempotency_fingerprint=request_fingerprint,
        )

    return await submit_once(service, agency, key, request_fingerprint, submit)


def _describe(files: list[OutgoingFile], submission: DocumentSubmission) -> list[OutgoingFile]:
    names = {f.name for f in files}
    unknown = sorted(set(submission.descriptions) - names)
    if unknown:
        raise MetadataError(
            f"metadata.descriptions names {unknown}, which are not among the uploaded files {sorted(names)}",
            detail={"field": "metadata.descriptions"},
        )
    return [OutgoingFile(f.name, f.data, f.media_type, submission.descriptions.get(f.name, "")) for f in files]


async def submit_edxml(request: web.Request) -> web.Response:
    """A QCVN 102 edXML package (document or status), as the raw XML body."""
    service, http = _app_parts(request)
    if not is_xml(media_type(request)):
        raise UnsupportedMediaTypeError(
            f"send the edXML package as application/xml, not {request.content_type or 'no Content-Type'}"
        )
    key = _idempotency_key(request)
    package = await read_body(request, min(http.max_body_bytes, EDXML_LIMIT))
    agency = _agency(request)
    request_fingerprint = fingerprint(request.method, request.path, hashlib.sha256(package).hexdigest())
    return await submit_once(
        service,
        agency,
        key,
        request_fingerprint,
        lambda: service.submit_edxml(agency, package, idempotency_key=key, idempotency_fingerprint=request_fingerprint),
    )


# -- inbox ----------------------------------------------------------------------------------------


async def inbox(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    after = _int_query(request, "after", 0, 0, 2**62)
    limit = _int_query(request, "limit", 100, 1, MAX_PAGE)
    entries = await service.inbox(
        _agency(request), include_acked=_bool_query(request, "include_acked"), limit=limit, after_seq=after
    )
    next_after = entries[-1].seq if entries else after
    return web.json_response({"items": [render.inbox_entry(e) for e in entries], "next_after": next_after})


async def _fetch(request: web.Request) -> FetchedMessage:
    service, _ = _app_parts(request)
    message_id = request.match_info["message_id"]
    structlog.contextvars.bind_contextvars(message_id=message_id)
    return await service.fetch(_agency(request), message_id)


async def fetch(request: web.Request) -> web.Response:
    fetched = await _fetch(request)
    return web.json_response(render.fetched(fetched, hashlib.sha256(fetched.xml).hexdigest()))


async def attachment(request: web.Request) -> web.Response:
    fetched = await _fetch(request)
    attachment_id = request.match_info["attachment_id"]
    meta = next((a for a in fetched.envelope.attachments if a.id == attachment_id), None)
    if meta is None:
        raise NotFoundError(f"message {fetched.envelope.message_id} has no attachment {attachment_id}")
    data = fetched.attachments[attachment_id]
    # A ZIP-wrapped edXML attachment is offered as the file inside, typed as its manifest says (docs/EDXML.md).
    from dataclasses import replace

    from exchange.envelope.edxml.files import offered_file

    offered = offered_file(fetched.envelope.header.document, meta, data)
    meta, data = replace(meta, name=offered.name, media_type=offered.media_type), offered.data
    # Names and media types come from another agency's envelope: nothing of them may break a header.
    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in meta.name)
    media = meta.media_type if MEDIA_TYPE.fullmatch(meta.media_type) else "application/octet-stream"
    return web.Response(
        body=data,
        headers={
            "Content-Type": media,
            "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(meta.name)}",
            "Repr-Digest": _digest_header(data),
        },
    )


async def envelope(request: web.Request) -> web.Response:
    """The signed envelope exactly as received: the evidence to keep beside the document."""
    fetched = await _fetch(request)
    return web.Response(
        body=fetched.xml, headers={"Content-Type": "application/xml", "Repr-Digest": _digest_header(fetched.xml)}
    )


async def acknowledge(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    message_id = request.match_info["message_id"]
    structlog.contextvars.bind_contextvars(message_id=message_id)
    await service.acknowledge(_agency(request), message_id)
    return web.json_response({"message_id": message_id, "state": "acked"})


async def send_status(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    message_id = request.match_info["message_id"]
    structlog.contextvars.bind_contextvars(response_for=message_id)
    key = _idempotency_key(request)
    raw = await read_json(request)
    status = parse_status(raw)
    agency = _agency(request)
    request_fingerprint = fingerprint(request.method, request.path, raw)
    return await submit_once(
        service,
        agency,
        key,
        request_fingerprint,
        lambda: service.submit_status(
            agency,
            message_id,
            status.code,
            description=status.description,
            staff=status.staff,
            idempotency_key=key,
            correlation_id=_correlation_id(request),
            idempotency_fingerprint=request_fingerprint,
        ),
    )


# -- sent -----------------------------------------------------------------------------------------


async def track(request: web.Request) -> web.Response:
    service, _ = _app_parts(request)
    message_id = request.match_info["message_id"]
    structlog.contextvars.bind_contextvars(message_id=message_id)
    return web.json_response(render.tracked(await service.track(_agency(request), message_id)))


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/me", me)
    router.add_get("/v1/directory", directory)
    router.add_post("/v1/documents", submit_document)
    router.add_post("/v1/edxml", submit_edxml)
    router.add_get("/v1/inbox", inbox)
    router.add_get("/v1/inbox/{message_id}", fetch)
    router.add_get("/v1/inbox/{message_id}/attachments/{attachment_id}", attachment)
    router.add_get("/v1/inbox/{message_id}/envelope", envelope)
    router.add_post("/v1/inbox/{message_id}/ack", acknowledge)
    router.add_post("/v1/inbox/{message_id}/status", send_status)
    router.add_get("/v1/sent/{message_id}", track)
