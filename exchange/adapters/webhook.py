"""The webhook adapter: POST every incoming document and status to the E-Office, HMAC-signed.

Options (``[agencies.options]``):

``url``
    Where to POST (http or https). Redirects are not followed.
``secret`` or ``secret_env``
    The shared HMAC secret, or the name of the environment variable that holds
    it (preferred: the TOML then holds no secret). Never logged.
``timeout``
    Seconds for the whole request, default 10.
``receipts``
    ``true``: also POST the signed receipts that come back for what this agency
    sent (``kind`` "receipt", with a ``receipt`` object: ``response_for``,
    ``outcome``, ``envelope_digest``, ``reason_code``, ``reason``). Default false.

Request: ``POST url`` with ``Content-Type: application/json`` and

* ``Idempotency-Key: <message id>``: the same message may be POSTed again
  (a retry after a timeout, a redelivery after a crash); the E-Office must
  register a message id once and answer 2xx to repeats.
* ``X-Exchange-Timestamp: <unix seconds>``
* ``X-Exchange-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``
* ``X-Exchange-Message-Id``, ``X-Exchange-Kind``, ``X-Exchange-Attempt``: for routing and logs.

Body: :func:`exchange.adapters.jsonform.message_json` (``message_id``, ``kind``,
``operation``, ``sender``, ``recipient``, ``document``, ``status`` or ``receipt`` fields,
``attachments`` with their manifest entries) where every attachment also has
``data_base64``, plus ``envelope_xml_base64``: the exact signed envelope bytes,
the evidence an E-Office can keep and verify (``exchange verify``).

Answer: 2xx → delivered; 408, 429, 5xx, a timeout or a connection error →
transient (the bus retries with backoff); any other status → permanent. The
sender's signed receipt gets a code (``eoffice-refused``, ``eoffice-unavailable``)
and a fixed text with the HTTP status only: the E-Office's answer is the recipient
agency's business, so its start (up to ``ANSWER_LOG_CHARS`` characters) is logged
on the recipient's node (``webhook.refused`` / ``webhook.retry``, key ``answer``)
and never leaves it.

E-Office implementers check requests with :func:`verify_webhook`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from exchange.adapters.base import Adapter, BusHandle, DeliveryResult, Incoming
from exchange.adapters.jsonform import b64, message_json
from exchange.errors import AdapterError

log = structlog.get_logger("exchange.adapters.webhook")

SIGNATURE_HEADER = "X-Exchange-Signature"
TIMESTAMP_HEADER = "X-Exchange-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Statuses that mean "try again later" although they are not 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
DEFAULT_TIMEOUT = 10.0
DEFAULT_TOLERANCE = 300
#: How much of an E-Office's error answer is read, and logged (locally only).
ANSWER_LOG_CHARS = 200


def _key(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def sign_webhook(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Exchange-Signature`` value for ``body`` sent at ``timestamp``: ``sha256=<hex>``."""
    mac = hmac.new(_key(secret), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_webhook(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str | None,
    tolerance: float = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> bool:
    """True if ``signature`` is ours for exactly ``body`` and ``timestamp`` is within ``tolerance`` seconds.

    For E-Office implementers: pass the raw request body (before any JSON
    parsing) and the ``X-Exchange-Timestamp`` and ``X-Exchange-Signature``
    headers. The comparison is constant-time. The timestamp window limits
    replays of a captured request; within it, deduplicate by the
    ``Idempotency-Key`` header (the message id).
    """
    try:
        sent_at = int(timestamp)
    except (TypeError, ValueError):
        return False
    if not timestamp.isascii():
        return False
    if abs((time.time() if now is None else now) - sent_at) > tolerance:
        return False
    if not isinstance(signature, str) or not signature.startswith("sha256="):
        return False
    expected = sign_webhook(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii", "replace"))


def webhook_body(message: Incoming) -> bytes:
    """The JSON body POSTed for ``message`` (UTF-8)."""
    doc = message_json(message.envelope, recipient=message.agency, attempt=message.attempt)
    for entry in doc["attachments"]:
        entry["data_base64"] = b64(message.attachments[entry["id"]])
    doc["envelope_xml_base64"] = b64(message.xml)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _secret_of(agency: str, options: Mapping[str, Any]) -> bytes:
    if options.get("secret_env"):
        name = str(options["secret_env"])
        value = os.environ.get(name, "")
        if not value:
            raise AdapterError(
                f"webhook adapter of {agency}: environment variable {name} (options.secret_env) is not set "
                "or empty; export the shared HMAC secret in it"
            )
        return value.encode("utf-8")
    secret = options.get("secret")
    if not secret:
        raise AdapterError(
            f"webhook adapter of {agency} needs options.secret_env (preferred) or options.secret: "
            "the shared HMAC secret the E-Office verifies requests with"
        )
    return str(secret).encode("utf-8")


class WebhookAdapter(Adapter):
    """POSTs each incoming document and status (and receipt, if asked) to the E-Office's URL."""

    kind = "webhook"
    wants_receipts = False

    def __init__(self, agency: str, options: Mapping[str, Any], bus: BusHandle) -> None:
        # Keep the secret out of ``self.options`` so nothing that prints options can leak it.
        super().__init__(agency, {k: v for k, v in options.items() if k != "secret"}, bus)
        self._raw_secret = options.get("secret")
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WebhookAdapter(agency={self.agency!r}, url={self._safe_url!r})"

    async def start(self) -> None:
        url = str(self.options.get("url", ""))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AdapterError(f"webhook adapter of {self.agency} needs options.url, an http(s) URL of the E-Office")
        self._url = url
        self._safe_url = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        opts = dict(self.options)
        if self._raw_secret is not None:
            opts["secret"] = self._raw_secret
        self._secret = _secret_of(self.agency, opts)
        try:
            timeout = float(self.options.get("timeout", DEFAULT_TIMEOUT))
        except (TypeError, ValueError):
            raise AdapterError(f"webhook adapter of {self.agency}: options.timeout must be seconds") from None
        if timeout <= 0:
            raise AdapterError(f"webhook adapter of {self.agency}: options.timeout must be positive")
        self.wants_receipts = self.bool_option("receipts")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def stop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(self, message: Incoming) -> DeliveryResult:
        if self._session is None:
            return DeliveryResult.transient("the webhook adapter is not running", "adapter-stopped")
        body = await asyncio.to_thread(webhook_body, message) if message.attachments else webhook_body(message)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            IDEMPOTENCY_HEADER: message.message_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(self._secret, timestamp, body),
            "X-Exchange-Message-Id": message.message_id,
            "X-Exchange-Kind": message.envelope.header.kind.value,
            "X-Exchange-Attempt": str(message.attempt),
        }
        base = dict(message_id=message.message_id, recipient=self.agency, url=self._safe_url)
        try:
            async with self._session.post(self._url, data=body, headers=headers, allow_redirects=False) as resp:
                status = resp.status
                text = (
                    ""
                    if 200 <= status < 300
                    else (await resp.content.read(4 * ANSWER_LOG_CHARS)).decode("utf-8", "replace")
                )
        except TimeoutError:
            log.info("webhook.timeout", **base)
            return DeliveryResult.transient("the E-Office did not answer in time", "eoffice-timeout")
        except aiohttp.ClientError as exc:
            log.info("webhook.unreachable", **base, error=type(exc).__name__)
            return DeliveryResult.transient(
                f"the E-Office is unreachable ({type(exc).__name__})", "eoffice-unreachable"
            )
        if 200 <= status < 300:
            return DeliveryResult.delivered()
        # The answer's text stays here, in this node's log; the sender's receipt gets the status only.
        answer = " ".join(text.split())[:ANSWER_LOG_CHARS]
        if status >= 500 or status in TRANSIENT_STATUSES:
            log.info("webhook.retry", **base, status=status, answer=answer)
            return DeliveryResult.transient(f"the E-Office is unavailable (HTTP {status})", "eoffice-unavailable")
        log.warning("webhook.refused", **base, status=status, answer=answer)
        return DeliveryResult.permanent(f"the E-Office refused the message (HTTP {status})", "eoffice-refused")
