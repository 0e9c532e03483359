"""Idempotency-Key replays that answer exactly what the first request got.

As the IETF draft *The Idempotency-Key HTTP Header Field* asks: the first request with
a key is processed and its key stored with a fingerprint of the request; a later request
with the same key and the same fingerprint is answered with the first request's status
and body (201 and the stored message's id, recipients and ``created_at``, plus
``Idempotent-Replayed: true``) and sends nothing; the same key with a different request
is refused (422 ``idempotency-key-reused``).

The fingerprint is the SHA-256 of a canonical JSON of the method, the path, the request's
JSON value with sorted keys (so whitespace and key order do not matter) and the name,
media type and SHA-256 of every attachment, in order. It is written in the same
transaction as the key (``idempotency_requests``), so two racing first uses cannot both
win, and the loser is checked against the winner's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from exchange.adapters.base import OutgoingFile, SubmitResult
from exchange.gateway import render
from exchange.gateway.errors import IdempotencyKeyReusedError
from exchange.service import ExchangeService
from exchange.store.base import Direction, IdempotencyEntry

REPLAYED_HEADER = "Idempotent-Replayed"


def fingerprint(method: str, path: str, body: Any, files: Sequence[OutgoingFile] = ()) -> str:
    """The SHA-256 (hex) identifying one request: method, path, canonical JSON body, attachment digests."""
    canonical = json.dumps(
        {
            "method": method.upper(),
            "path": path,
            "body": body,
            "files": [[f.name, f.media_type, hashlib.sha256(f.data).hexdigest()] for f in files],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def created_response(result: SubmitResult, *, replayed: bool = False) -> web.Response:
    """The answer to a submission: 201 with the submitted message (the same body again on a replay)."""
    structlog.contextvars.bind_contextvars(message_id=result.message_id)
    body = render.submitted(result)
    headers = {"Location": body["track"]}
    if replayed:
        headers[REPLAYED_HEADER] = "true"
    return web.json_response(body, status=201, headers=headers)


async def _replay(service: ExchangeService, entry: IdempotencyEntry, request_fingerprint: str) -> web.Response:
    if entry.fingerprint is not None and entry.fingerprint != request_fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was already used for a different request; send a new key for a new request, "
            "or repeat the first request unchanged to get its answer again"
        )
    # The first answer was 201 with the message as stored: its id, recipients and creation time.
    record = await service.store.get_message(entry.message_id, Direction.OUT)
    if record is None:  # the key's message is gone (never deleted today): answer with what the key names
        return created_response(SubmitResult(entry.message_id, True, (), None), replayed=True)
    return created_response(SubmitResult(record.message_id, True, record.recipients, record.created_at), replayed=True)


async def submit_once(
    service: ExchangeService,
    agency: str,
    key: str | None,
    request_fingerprint: str,
    submit: Callable[[], Awaitable[SubmitResult]],
) -> web.Response:
    """Run ``submit`` unless ``agency`` used ``key`` before; then replay (or refuse) as the module says."""
    if key is not None:
        entry = await service.store.idempotency_entry(agency, key)
        if entry is not None:
            return await _replay(service, entry, request_fingerprint)
    result = await submit()
    if key is not None and not result.created:
        # A racing request with the same key committed first: answer as a replay of that one.
        entry = await service.store.idempotency_entry(agency, key)
        if entry is not None:
            return await _replay(service, entry, request_fingerprint)
    return created_response(result)
