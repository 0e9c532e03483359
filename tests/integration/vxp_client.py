"""A client of the national hub's protocol, written from the scheme alone (not from the node's code).

It does what the hub's SDK does: every call's headers (``systemid``, ``timestamp`` in
``ddMMyyyy'T'HHmmss+SSSS``, the call's own) in clear and as ``XroadVnpt-<name>``, the signed
names in ``XroadVnpt-sign-header-key``, their JSON in ``XroadVnpt-sign-header`` and its
HMAC-SHA256 hex under the shared secret in ``XroadVnpt-hash-header``; ``hash-file`` is the
SHA-256 hex of the uploaded package, sent as the multipart part ``file_doc``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone

import aiohttp

VIETNAM = timezone(timedelta(hours=7))


def hub_timestamp(at: datetime) -> str:
    local = at.astimezone(VIETNAM)
    return f"{local:%d%m%Y}T{local:%H%M%S}+{local.microsecond // 1000:04d}"


def signed_headers(call: dict[str, str], secret: str) -> dict[str, str]:
    prefixed = {"XroadVnpt-" + name: value for name, value in call.items()}
    sign_header = json.dumps(prefixed)
    digest = hmac.new(secret.encode("utf-8"), sign_header.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        **call,
        **prefixed,
        "XroadVnpt-sign-header-key": ";".join(call),
        "XroadVnpt-sign-header": sign_header,
        "XroadVnpt-hash-header": digest,
    }


@dataclass
class VxpClient:
    """One E-Office system on a node's ``/vxp`` endpoint."""

    http: aiohttp.ClientSession
    endpoint: str  # e.g. http://127.0.0.1:8080/vxp
    system_id: str
    secret: str
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    last_headers: dict[str, str] = field(default_factory=dict)

    def headers(self, **call: str) -> dict[str, str]:
        # Each call is signed anew; a millisecond timestamp also tells apart two calls in a row.
        base = {"systemid": self.system_id, "timestamp": hub_timestamp(self.clock())}
        self.last_headers = signed_headers({**base, **call}, self.secret)
        return self.last_headers

    async def raw(
        self, operation: str, headers: dict[str, str], *, data: object = None, method: str = "POST"
    ) -> tuple[int, dict]:
        async with self.http.request(method, f"{self.endpoint}/{operation}", headers=headers, data=data) as r:
            return r.status, await r.json(content_type=None)

    async def call(self, operation: str, *, method: str = "POST", **params: str) -> dict:
        status, body = await self.raw(
            operation, self.headers(**{"Content-Type": "application/json", **params}), method=method
        )
        assert body["status"] == "OK" and body["ErrorCode"] == "0", (operation, status, body)
        assert status == 200
        return body

    def send_form(self, package: bytes) -> aiohttp.FormData:
        form = aiohttp.FormData()
        form.add_field("file_doc", package, filename="package.edxml", content_type="application/octet-stream")
        return form

    async def send_edoc(self, package: bytes, *, messagetype: str = "edoc") -> str:
        headers = self.headers(
            **{
                "Content-Type": "application/octet-stream",
                "servicetype": "eDoc",
                "messagetype": messagetype,
                "hash-file": hashlib.sha256(package).hexdigest(),
            }
        )
        headers.pop("Content-Type")  # the multipart body brings its own (as the SDK's HTTP library does)
        status, body = await self.raw("sendEdoc", headers, data=self.send_form(package))
        assert status == 200 and body["status"] == "OK", body
        return body["DocId"]

    async def received(self, **params: str) -> list[dict]:
        return (await self.call("getReceivedEdocList", servicetype="eDoc", **params))["data"]

    async def get_edoc(self, doc_id: str) -> bytes:
        return base64.b64decode((await self.call("getEdoc", docId=doc_id))["data"])

    async def update_status(self, doc_id: str, status: str) -> dict:
        return (await self.call("updateStatus", docId=doc_id, status=status))["data"]

    async def sent(self, doc_id: str) -> list[dict]:
        return (await self.call("getSentEdocList", docId=doc_id))["data"]

    async def agencies(self) -> list[dict]:
        return (await self.call("getAgenciesList"))["data"]

    async def count(self, what: str) -> int:
        return (await self.call(what, method="GET"))["count"]
