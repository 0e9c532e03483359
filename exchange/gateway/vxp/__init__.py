"""A drop-in for the national hub's client protocol, under ``/vxp/`` on the node's gateway.

An E-Office that talks to the hub through its SDK points the SDK's endpoint at
``http(s)://<node>/vxp`` and keeps working: the same operations (``sendEdoc``,
``getReceivedEdocList``, ``getEdoc``, ``updateStatus``, ``getSentEdocList``,
``getAgenciesList``, ``countReceiveEdoc``, ``countReceiveStatus``), the same signed
headers (:mod:`.auth`), the same JSON answers and a table of error codes (:mod:`.errors`).
Each system id maps to one hosted agency and has one shared secret, created and rotated
with ``exchange vxp secret create|rotate|list`` (sealed at rest, :mod:`.secrets`).
docs/API.md ("The national hub's protocol") is the reference.
"""

from __future__ import annotations

from aiohttp import web

from exchange.gateway.keys import HTTP, SERVICE
from exchange.gateway.vxp.auth import DEFAULT_WINDOW_SECONDS, HeaderVerifier
from exchange.gateway.vxp.views import PREFIX, VxpGateway, add_routes, secret_lookup

__all__ = ["PREFIX", "mount"]


def mount(app: web.Application, *, window_seconds: int = DEFAULT_WINDOW_SECONDS) -> VxpGateway:
    """Add the hub's operations to the gateway ``app`` (which already holds the service and HTTP config).

    These routes authenticate themselves (signed headers, not tokens) and answer the hub's JSON, also
    when they refuse: the gateway middleware leaves everything under :data:`PREFIX` to them.
    """
    from exchange.gateway.uploads import EDXML_LIMIT

    service = app[SERVICE]

    async def lookup(system_id: str) -> tuple[str, str] | None:
        return await secret_lookup(service, system_id)

    async def replay(system_id: str, signature: str, expires_at, now) -> bool:  # type: ignore[no-untyped-def]
        return await service.store.remember_vxp_signature(system_id, signature, expires_at=expires_at, now=now)

    gw = VxpGateway(
        service=service,
        verifier=HeaderVerifier(lookup, replay, window_seconds=window_seconds),
        max_package_bytes=min(app[HTTP].max_body_bytes, EDXML_LIMIT),
    )
    add_routes(app.router, gw)
    return gw
