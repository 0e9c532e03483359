"""Assemble the gateway: routes, the problem+json / auth / logging middleware, the public probes.

``create_app(service, http=..., metrics=..., readiness=...)`` is what
``exchange.node.Node`` calls; everything else is an implementation detail.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from exchange.config import HttpConfig
from exchange.errors import AuthError, ExchangeError, NotFoundError, PayloadTooLargeError
from exchange.gateway import views, vxp
from exchange.gateway.auth import Authenticator
from exchange.gateway.errors import InternalError, MethodNotAllowedError, NotReadyError
from exchange.gateway.keys import AUTH, CORRELATION_ID, HTTP, PRINCIPAL, SERVICE
from exchange.observability.tracing import correlation_id, new_trace_id
from exchange.service import ExchangeService

if TYPE_CHECKING:
    from exchange.observability.metrics import Metrics

log = structlog.get_logger("exchange.gateway")

Readiness = Callable[[], Awaitable[dict[str, bool]]]

PROBLEM_JSON = "application/problem+json"
#: Paths that need no credentials: probes, metrics, the API description.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.yaml", "/v1/openapi.json"})


def problem_response(exc: ExchangeError, request: web.Request | None = None) -> web.Response:
    """The RFC 9457 answer for a refusal: type, title, status, detail and the stable ``code``."""
    body = exc.to_problem()
    if request is not None:
        body["instance"] = request.path
    headers = {}
    if isinstance(exc, AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="exchange"'
    allow = exc.detail.get("allow") if exc.detail else None
    if allow:
        headers["Allow"] = str(allow)
    return web.Response(
        status=exc.http_status, headers=headers, content_type=PROBLEM_JSON, text=json.dumps(body, ensure_ascii=False)
    )


def _from_http_exception(exc: web.HTTPException) -> ExchangeError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowedError(f"{exc.method} is not allowed here; allowed: {allowed}", detail={"allow": allowed})
    if exc.status == 404:
        return NotFoundError("no such endpoint; see GET /v1/openapi.yaml for the API")
    if exc.status == 413:
        return PayloadTooLargeError("the request body is over the gateway's limit ([http] max_body_bytes)")
    err = ExchangeError(exc.reason or "request refused")
    err.http_status = exc.status
    err.code = exc.reason.lower().replace(" ", "-") if exc.reason else "http-error"
    return err


def _is_console(path: str) -> bool:
    return path == "/console" or path.startswith("/console/")


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def gateway_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Per request: bind log context, authenticate agency endpoints, turn every refusal into problem+json."""
    structlog.contextvars.clear_contextvars()  # keep-alive connections reuse one task (and its context)
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-Id", "")
    if not (0 < len(request_id) <= 128 and request_id.isascii() and request_id.isprintable()):
        request_id = uuid.uuid4().hex
    correlation = correlation_id(request.headers.get("traceparent")) or new_trace_id()
    request[CORRELATION_ID] = correlation
    structlog.contextvars.bind_contextvars(request_id=request_id, correlation_id=correlation)
    route = _route_of(request)
    status = 500
    try:
        if (
            request.match_info.http_exception is None
            and request.path not in PUBLIC_PATHS
            and not request.path.startswith(vxp.PREFIX)  # the hub protocol signs its own calls
            and not _is_console(request.path)
        ):  # operator sessions, not agency tokens (exchange.console)
            principal = await request.app[AUTH].authenticate(request)
            request[PRINCIPAL] = principal
            structlog.contextvars.bind_contextvars(agency=principal.agency)
        response = await handler(request)
        status = response.status
    except ExchangeError as exc:
        response = problem_response(exc, request)
        status = response.status
        if status >= 500:
            log.error("http.refused", code=exc.code, status=status, route=route)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem_response(_from_http_exception(exc), request)
        status = response.status
    except Exception:
        log.exception("http.internal_error", route=route, method=request.method)
        response = problem_response(
            InternalError(f"the gateway failed unexpectedly; the node's log has the details (request id {request_id})"),
            request,
        )
    finally:
        log.info(
            "http.request",
            method=request.method,
            route=route,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        structlog.contextvars.clear_contextvars()
    response.headers["X-Request-Id"] = request_id
    return response


def load_openapi_text() -> str:
    """The hand-written part of the OpenAPI document (exchange/gateway/openapi.yaml), as shipped."""
    return resources.files("exchange.gateway").joinpath("openapi.yaml").read_text(encoding="utf-8")


def load_openapi() -> dict[str, Any]:
    """The served OpenAPI document: openapi.yaml with the metadata JSON Schema's definitions as components.

    The metadata schemas (DocumentSubmission, StatusSubmission, Document...) live once, in
    ``exchange/metadata/document-metadata-1.json``; the served document carries them under
    ``components/schemas`` so that clients and validators see one description.
    """
    import yaml

    from exchange.metadata.schema import openapi_components

    spec: dict[str, Any] = yaml.safe_load(load_openapi_text())
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    clash = sorted(set(schemas) & set(openapi_components()))
    if clash:  # a schema described twice would drift: the JSON Schema file is the only source
        raise RuntimeError(f"openapi.yaml redefines the metadata schemas {clash}; remove them there")
    schemas.update(openapi_components())
    return spec


def _yaml_text(spec: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, width=120)


def create_app(
    service: ExchangeService,
    *,
    http: HttpConfig = HttpConfig(),
    metrics: Metrics | None = None,
    readiness: Readiness | None = None,
) -> web.Application:
    """The gateway application for one node's ``service``."""
    app = web.Application(client_max_size=http.max_body_bytes, middlewares=[gateway_middleware])
    app[SERVICE] = service
    app[HTTP] = http
    app[AUTH] = Authenticator(service.store, service.hosted, mtls=bool(http.tls_client_ca))

    openapi = load_openapi()
    openapi_text = _yaml_text(openapi)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if readiness is not None:
            checks = await readiness()
        else:
            try:
                await service.store.ping()
                checks = {"store": True}
            except Exception:  # noqa: BLE001 - any failure to answer is "store not ready", never a 500
                checks = {"store": False}
        failed = sorted(k for k, ok in checks.items() if not ok)
        if failed:
            exc = NotReadyError(f"not ready: {', '.join(failed)} unusable", detail={"checks": checks})
            body = exc.to_problem()
            body.pop("extra", None)
            body["checks"] = checks
            return web.Response(status=503, content_type=PROBLEM_JSON, text=json.dumps(body))
        return web.json_response({"ready": True, "checks": checks})

    async def openapi_yaml(_: web.Request) -> web.Response:
        return web.Response(text=openapi_text, content_type="application/yaml")

    async def openapi_json(_: web.Request) -> web.Response:
        return web.json_response(openapi)

    if metrics is not None:
        metrics_handler = metrics.aiohttp_handler()
    else:
        from exchange.observability.metrics import REGISTRY, make_metrics_handler

        metrics_handler = make_metrics_handler(REGISTRY)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/v1/openapi.yaml", openapi_yaml)
    app.router.add_get("/v1/openapi.json", openapi_json)
    views.add_routes(app.router)
    vxp.mount(app)
    return app
