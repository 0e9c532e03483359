"""The operator console: server-rendered pages under ``/console`` of the node's gateway.

Operators sign in with console accounts (``exchange operator create``), never agency tokens.
Every page answers with the security headers of :mod:`exchange.console.security` (a CSP without
inline code, no framing, ``no-store``); every POST carries the session's CSRF token; a viewer
reads, an operator also replays and discards dead letters and creates and revokes tokens, each
with a reason that goes into the store's journal with the operator's name. docs/CONSOLE.md.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import structlog
from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from exchange.console import security
from exchange.console.data import ConsoleData, Session
from exchange.console.i18n import LANGUAGES, pick_language, translate
from exchange.errors import (
    BadRequestError,
    ExchangeError,
    ForbiddenError,
    NotFoundError,
)
from exchange.store.base import DeliveryState

log = structlog.get_logger("exchange.console")

PREFIX = "/console"
SESSION_COOKIE = "exchange_console"
LANG_COOKIE = "exchange_console_lang"
#: A session ends this long after sign-in, whatever happens (then the operator signs in again).
SESSION_LIFETIME = timedelta(hours=8)
#: Certificates expiring within this are flagged on the Directory page.
EXPIRY_WARNING = timedelta(days=30)

Readiness = Callable[[], Awaitable[dict[str, bool]]]


class CsrfError(ForbiddenError):
    """A form posted without (or with another session's) CSRF token."""

    code = "csrf-refused"


class RoleError(ForbiddenError):
    """A viewer tried an operator's action."""

    code = "operator-role-required"


@dataclass
class ConsoleState:
    """What the console's handlers share: the node's service and config, the templates, the throttle."""

    service: Any
    config: Any
    readiness: Readiness | None
    secure_cookies: bool
    env: Environment
    data: ConsoleData
    amqp_ssl: ssl.SSLContext | None = None
    throttle: security.LoginThrottle = field(default_factory=security.LoginThrottle)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


STATE: web.AppKey[ConsoleState] = web.AppKey("console_state", ConsoleState)
_SESSION = "console_session"
_LANG = "console_lang"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("exchange.console", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["age"] = _age
    env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else ""
    env.filters["q"] = lambda s: quote(str(s), safe="")
    return env


def _age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    st = request.app[STATE]
    lang = request.get(_LANG, "vi")
    session: Session | None = request.get(_SESSION)
    other = "en" if lang == "vi" else "vi"
    html = st.env.get_template(template).render(
        t=lambda key: translate(key, lang),
        lang=lang,
        other_lang=other,
        session=session,
        csrf=session.csrf if session else "",
        path=request.path_qs,
        prefix=PREFIX,
        lang_link=f"{PREFIX}/lang?" + urlencode({"to": other, "next": request.path_qs}),
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def _error_page(request: web.Request, exc: ExchangeError, message: str | None = None) -> web.Response:
    return _render(request, "error.html", status=exc.http_status, message=message or exc.message, code=exc.code)


# -- middleware ---------------------------------------------------------------------------------

#: Paths reachable without a session.
_OPEN = frozenset({f"{PREFIX}/login", f"{PREFIX}/lang"})


@web.middleware
async def console_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Language, session, CSRF on POST, HTML error pages, the security headers on everything."""
    st = request.app[STATE]
    request[_LANG] = pick_language(request.cookies.get(LANG_COOKIE), request.headers.get("Accept-Language"))
    try:
        response = await _guarded(request, handler, st)
    except web.HTTPException as exc:
        if exc.status < 400:
            response = web.Response(status=exc.status, headers=exc.headers)
        else:
            err: ExchangeError = (
                NotFoundError("no such page") if exc.status == 404 else BadRequestError(exc.reason or "refused")
            )
            err.http_status = exc.status
            response = _error_page(
                request, err, translate("err.not_found", request[_LANG]) if exc.status == 404 else None
            )
    except CsrfError as exc:
        response = _error_page(request, exc, translate("err.csrf", request[_LANG]))
    except RoleError as exc:
        response = _error_page(request, exc, translate("err.forbidden_role", request[_LANG]))
    except ExchangeError as exc:
        response = _error_page(request, exc)
    except Exception:
        log.exception("console.internal_error", path=request.path)
        err = ExchangeError("the console failed unexpectedly; the node's log has the details")
        err.http_status = 500
        response = _error_page(request, err)
    for name, value in security.SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if st.secure_cookies:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


async def _guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], st: ConsoleState
) -> web.StreamResponse:
    session = None
    sid = request.cookies.get(SESSION_COOKIE)
    if sid:
        session = await st.data.session(security.session_key(sid), now=st.clock())
    request[_SESSION] = session
    path = request.path
    if path == PREFIX:
        return _redirect(f"{PREFIX}/")  # the address an operator types
    is_static = path.startswith(f"{PREFIX}/static/")
    if session is None and path not in _OPEN and not is_static:
        return _redirect(f"{PREFIX}/login?" + urlencode({"next": request.path_qs}))
    if request.method == "POST":
        form = await request.post()
        request["form"] = form
        expected = session.csrf if session is not None else request.cookies.get(_LOGIN_CSRF_COOKIE, "")
        if not expected or not security.same_token(str(form.get("csrf", "")), expected):
            log.warning("console.csrf_refused", path=path, operator=session.operator.name if session else None)
            raise CsrfError("the form's CSRF token is missing or wrong; reload the page and submit it again")
    return await handler(request)


def _operator_only(request: web.Request) -> Session:
    session: Session = request[_SESSION]
    if session.operator.role != "operator":
        log.warning("console.role_refused", operator=session.operator.name, path=request.path)
        raise RoleError(f"operator {session.operator.name} has the viewer role; an operator account is needed")
    return session


def _field(request: web.Request, name: str, *, limit: int = 500) -> str:
    return " ".join(str(request["form"].get(name, "")).split())[:limit]


def _reason(request: web.Request) -> str:
    reason = _field(request, "reason")
    if not reason:
        raise BadRequestError(translate("err.reason", request[_LANG]))
    return reason


# -- sign in / out, language ----------------------------------------------------------------------

#: Before sign-in there is no session: the login form's CSRF token rides a cookie of its own.
_LOGIN_CSRF_COOKIE = "exchange_console_login"


def _redirect(location: str) -> web.Response:
    """A 303 to ``location`` (after a POST the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location})


def _safe_next(value: str | None) -> str:
    """Only a path inside the console (no scheme, no host, no ``//``): no open redirect."""
    value = value or ""
    if value.startswith(PREFIX) and not value.startswith("//") and "\\" not in value and "\n" not in value:
        return value
    return f"{PREFIX}/"


def _cookie(response: web.StreamResponse, st: ConsoleState, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(
        name, value, path=PREFIX, httponly=True, samesite="Strict", secure=st.secure_cookies, max_age=max_age
    )


async def login_page(request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
    st = request.app[STATE]
    token = security.new_secret()
    response = _render(
        request, "login.html", status=status, error=error, login_csrf=token, next=_safe_next(request.query.get("next"))
    )
    _cookie(response, st, _LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


async def login(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    lang = request[_LANG]
    name = _field(request, "name", limit=64)
    password = str(request["form"].get("password", ""))
    client = request.remote or "unknown"
    keys = (f"ip:{client}", f"name:{name.lower()}")
    if st.throttle.blocked(*keys) > 0:
        log.warning("console.login_throttled", operator=name, client=client)
        return await login_page(request, error=translate("login.throttled", lang), status=429)
    operator = await st.data.get_operator(name) if name else None
    # The hash is checked even for an unknown name, so that timing does not tell which names exist.
    good = security.check_password(password, operator.password_hash if operator else security.DUMMY_HASH)
    if operator is None or operator.disabled or not good:
        st.throttle.failed(*keys)
        log.warning("console.login_failed", operator=name, client=client)
        return await login_page(request, error=translate("login.failed", lang), status=401)
    st.throttle.succeeded(*keys)
    sid = security.new_secret()
    now = st.clock()
    await st.data.open_session(
        security.session_key(sid), operator.name, security.new_secret(), now=now, expires_at=now + SESSION_LIFETIME
    )
    log.info("console.login", operator=operator.name, role=operator.role)
    response = _redirect(_safe_next(str(request["form"].get("next", ""))))
    _cookie(response, st, SESSION_COOKIE, sid, max_age=int(SESSION_LIFETIME.total_seconds()))
    response.del_cookie(_LOGIN_CSRF_COOKIE, path=PREFIX)
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    sid = request.cookies.get(SESSION_COOKIE, "")
    await st.data.close_session(security.session_key(sid))
    response = _redirect(f"{PREFIX}/login")
    response.del_cookie(SESSION_COOKIE, path=PREFIX)
    return response


async def switch_language(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE]
    lang = request.query.get("to", "vi")
    response = _redirect(_safe_next(request.query.get("next")))
    if lang in LANGUAGES:
        _cookie(response, st, LANG_COOKIE, lang, max_age=365 * 86400)
    return response


# -- pages ------------------------------------------------------------------------------------------


async def _broker_dead_letters(st: ConsoleState) -> int | None:
    from exchange.transport.deadletters import DeadLetters

    try:
        return await asyncio.wait_for(DeadLetters(st.config, st.amqp_ssl).count(), 3)  # a page, not a wait
    except Exception:  # noqa: BLE001 (the Overview shows "unknown", never an error page)
        return None


async def overview(request: web.Request) -> web.Response:
    st = request.app[STATE]
    store = st.service.store
    if st.readiness is not None:
        health = await st.readiness()
    else:
        try:
            await store.ping()
            health = {"store": True}
        except Exception:  # noqa: BLE001 (any store failure is "store down" here)
            health = {"store": False}
    size, oldest_age = await store.outbox_stats()
    counts = await store.delivery_counts()
    unreceipted = await st.data.unreceipted(limit=1)
    now = st.clock()
    oldest = unreceipted[0] if unreceipted else None
    return _render(
        request,
        "overview.html",
        health=health,
        outbox_size=size,
        outbox_oldest=oldest_age,
        counts=counts,
        states=[s.value for s in DeliveryState],
        oldest=oldest,
        oldest_age=(now - oldest.created_at).total_seconds() if oldest else 0,
        dead_letters=await _broker_dead_letters(st),
    )


def _date(value: str, what: str) -> datetime | None:
    if not value:
        return None
    try:
        return (
            datetime.fromisoformat(value).replace(tzinfo=UTC)
            if len(value) == 10
            else datetime.fromisoformat(value).astimezone(UTC)
        )
    except ValueError:
        raise BadRequestError(f"{what} must be a date YYYY-MM-DD") from None


async def search(request: web.Request) -> web.Response:
    st = request.app[STATE]
    q = {
        k: request.query.get(k, "").strip()[:256]
        for k in ("message_id", "document_id", "agency", "since", "until", "state")
    }
    if q["state"] and q["state"] not in {s.value for s in DeliveryState}:
        raise BadRequestError(f"state must be one of {', '.join(s.value for s in DeliveryState)}")
    asked = any(q.values()) or "all" in request.query
    hits = []
    if asked:
        until = _date(q["until"], "to date")
        if until is not None and len(q["until"]) == 10:
            until += timedelta(days=1)  # the whole last day
        hits = await st.data.search(
            message_id=q["message_id"],
            document_id=q["document_id"],
            agency=q["agency"],
            since=_date(q["since"], "from date"),
            until=until,
            state=q["state"],
        )
    return _render(request, "search.html", q=q, asked=asked, hits=hits, states=[s.value for s in DeliveryState])


async def _message_or_404(st: ConsoleState, message_id: str) -> Any:
    message = await st.service.store.get_message(message_id)
    if message is None:
        raise NotFoundError(f"no message {message_id} is stored on this node; search by DocumentId instead")
    return message


async def message_page(request: web.Request) -> web.Response:
    st = request.app[STATE]
    message_id = request.match_info["message_id"]
    message = await _message_or_404(st, message_id)
    store = st.service.store
    timeline = await store.timeline(message_id)
    per_recipient: dict[str, list[Any]] = {}
    for entry in timeline:
        per_recipient.setdefault(entry.recipient, []).append(entry)
    deliveries = {d.recipient: d for d in await store.deliveries(message_id)}
    receipts = await st.data.receipts(message_id)
    entries = await st.data.journal_of(message_id)
    report = await store.verify_journal()
    attachments = _attachments_of(message.envelope_xml)
    return _render(
        request,
        "message.html",
        m=message,
        per_recipient=per_recipient,
        deliveries=deliveries,
        receipts=receipts,
        journal=entries,
        report=report,
        attachments=attachments,
    )


def _attachments_of(xml: bytes) -> list[tuple[str, str]]:
    """(attachment id, sha256) of the files an envelope names, for the evidence downloads."""
    try:
        from exchange.envelope.parse import parse_envelope

        _, env = parse_envelope(xml)
        return [(a.id, a.sha256) for a in env.attachments]
    except Exception:  # noqa: BLE001 (an envelope we cannot parse lists no attachment)
        return []


def _evidence(body: bytes, filename: str, content_type: str = "application/xml") -> web.Response:
    return web.Response(
        body=body,
        content_type=content_type,
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


def _file_name(value: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)[:120]


async def envelope_download(request: web.Request) -> web.Response:
    st = request.app[STATE]
    message = await _message_or_404(st, request.match_info["message_id"])
    log.info("console.evidence", operator=request[_SESSION].operator.name, message_id=message.message_id)
    return _evidence(message.envelope_xml, f"{_file_name(message.message_id)}.xml")


async def receipt_download(request: web.Request) -> web.Response:
    st = request.app[STATE]
    message_id = request.match_info["message_id"]
    wanted = request.match_info["receipt_id"]
    for receipt in await st.data.receipts(message_id):
        if receipt.message_id == wanted:
            return _evidence(receipt.envelope_xml, f"{_file_name(message_id)}.receipt-{_file_name(wanted)}.xml")
    raise NotFoundError(f"message {message_id} has no stored receipt {wanted}")


async def attachment_download(request: web.Request) -> web.Response:
    st = request.app[STATE]
    message = await _message_or_404(st, request.match_info["message_id"])
    wanted = request.match_info["attachment_id"]
    for att_id, sha in _attachments_of(message.envelope_xml):
        if att_id == wanted:
            data = await st.service.store.get_attachment(sha)
            if data is not None:
                return _evidence(data, _file_name(att_id), "application/octet-stream")
    raise NotFoundError(f"message {message.message_id} has no stored attachment {wanted}")


async def dead_letters(request: web.Request, *, done: list[Any] | None = None, verb: str = "") -> web.Response:
    from exchange.transport.deadletters import DeadLetters

    st = request.app[STATE]
    rows: list[dict[str, object]] = []
    error = ""
    try:
        rows = await DeadLetters(st.config, st.amqp_ssl).peek(500)
    except ExchangeError as exc:
        error = exc.message
    return _render(request, "deadletters.html", rows=rows, error=error, done=done or [], verb=verb)


async def _dead_letter_action(request: web.Request, action: str) -> web.Response:
    from exchange.transport.deadletters import DeadLetters

    st = request.app[STATE]
    session = _operator_only(request)
    reason = _reason(request)
    ids = [str(v) for v in request["form"].getall("message_id", [])][:500]
    if not ids:
        raise BadRequestError(translate("dl.none_chosen", request[_LANG]))
    letters = DeadLetters(st.config, st.amqp_ssl)
    outcomes = await (letters.replay(set(ids), reason) if action == "replay" else letters.discard(set(ids), reason))
    done = [o for o in outcomes if o.done]
    for o in done:
        await st.data.journal_action(
            session.operator.name,
            action,
            reason,
            message_id=str(o.info["message_id"]),
            recipient=str(o.info["recipient"]) or None,
            reason_code=str(o.info["reason_code"]),
        )
        log.info(
            f"console.dlq_{action}",
            operator=session.operator.name,
            message_id=o.info["message_id"],
            recipient=o.info["recipient"],
            reason=reason,
        )
    return await dead_letters(request, done=done, verb=action)


async def replay(request: web.Request) -> web.Response:
    return await _dead_letter_action(request, "replay")


async def discard(request: web.Request) -> web.Response:
    return await _dead_letter_action(request, "discard")


def _certificate_expiry(path: Any) -> datetime | None:
    if path is None:
        return None
    try:
        from cryptography import x509

        with open(path, "rb") as f:
            data = f.read()
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        return cert.not_valid_after_utc
    except (OSError, ValueError):
        return None


async def directory(request: web.Request) -> web.Response:
    st = request.app[STATE]
    service = st.service
    now = st.clock()
    rows = []
    signers = getattr(service, "signers", {}) or {}
    for entry in sorted(service.directory, key=lambda e: e.code):
        expiry = (
            signers[entry.code].certificate.not_valid_after_utc
            if entry.code in signers
            else _certificate_expiry(entry.cert)
        )
        flag = ""
        if expiry is not None:
            flag = "expired" if expiry <= now else ("expiring" if expiry - now <= EXPIRY_WARNING else "")
        rows.append({"e": entry, "expiry": expiry, "flag": flag, "hosted": entry.code in service.hosted})
    return _render(request, "directory.html", rows=rows)


async def tokens(
    request: web.Request, *, created: str = "", created_for: str = "", notice: str = "", status: int = 200
) -> web.Response:
    st = request.app[STATE]
    return _render(
        request,
        "tokens.html",
        status=status,
        tokens=await st.data.list_tokens(),
        hosted=sorted(st.service.hosted),
        created=created,
        created_for=created_for,
        notice=notice,
    )


async def create_token(request: web.Request) -> web.Response:
    from exchange.tokens import new_token

    st = request.app[STATE]
    session = _operator_only(request)
    reason = _reason(request)
    agency = _field(request, "agency", limit=32)
    if agency not in st.service.hosted:
        raise BadRequestError(f"agency {agency or '(none)'} is not hosted by this node; pick one from the list")
    label = _field(request, "label", limit=200)
    token = await new_token(st.service.store, agency, label=label)
    await st.data.journal_action(session.operator.name, "create_token", reason, recipient=agency, label=label)
    log.info("console.token_created", operator=session.operator.name, agency=agency, label=label)
    return await tokens(request, created=token, created_for=agency)


async def revoke_token(request: web.Request) -> web.Response:
    st = request.app[STATE]
    session = _operator_only(request)
    reason = _reason(request)
    agency = await st.data.revoke_token(
        _field(request, "token_id", limit=16), operator=session.operator.name, reason=reason
    )
    log.info("console.token_revoked", operator=session.operator.name, agency=agency)
    return await tokens(request, notice=translate("tok.revoked", request[_LANG]) + f" ({agency})")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    types = {"css": "text/css", "js": "text/javascript"}
    kind = types.get(name.rpartition(".")[2])
    if kind is None or "/" in name or name.startswith("."):
        raise web.HTTPNotFound()
    try:
        body = resources.files("exchange.console").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type=kind, headers={"Cache-Control": "no-store"})


def create_console(
    service: Any,
    config: Any,
    *,
    readiness: Readiness | None = None,
    secure_cookies: bool | None = None,
    amqp_ssl: ssl.SSLContext | None = None,
) -> web.Application:
    """The console application for one node (mounted at ``/console`` by :func:`mount`)."""
    app = web.Application(middlewares=[console_middleware], client_max_size=64 * 1024)
    tls = bool(getattr(getattr(config, "http", None), "tls_cert", ""))
    app[STATE] = ConsoleState(
        service=service,
        config=config,
        readiness=readiness,
        secure_cookies=tls if secure_cookies is None else secure_cookies,
        env=_environment(),
        data=ConsoleData(service.store),
        amqp_ssl=amqp_ssl,
    )
    r = app.router
    r.add_get("/", overview)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/lang", switch_language)
    r.add_get("/search", search)
    r.add_get("/messages/{message_id}", message_page)
    r.add_get("/messages/{message_id}/envelope.xml", envelope_download)
    r.add_get("/messages/{message_id}/receipts/{receipt_id}.xml", receipt_download)
    r.add_get("/messages/{message_id}/attachments/{attachment_id}", attachment_download)
    r.add_get("/deadletters", dead_letters)
    r.add_post("/deadletters/replay", replay)
    r.add_post("/deadletters/discard", discard)
    r.add_get("/directory", directory)
    r.add_get("/tokens", tokens)
    r.add_post("/tokens/create", create_token)
    r.add_post("/tokens/revoke", revoke_token)
    r.add_get("/static/{name}", static_file)
    return app


def mount(
    app: web.Application,
    service: Any,
    config: Any,
    *,
    readiness: Readiness | None = None,
    amqp_ssl: ssl.SSLContext | None = None,
) -> None:
    """Serve the console under ``/console`` of the gateway ``app`` (``amqp_ssl``: TLS to RabbitMQ, if any)."""
    app.add_subapp(PREFIX, create_console(service, config, readiness=readiness, amqp_ssl=amqp_ssl))
