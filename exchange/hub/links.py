"""Declaring a hub link as code, through the RabbitMQ management HTTP API.

A link moves what the upstream hub cannot deliver itself to one neighbouring hub::

    upstream hub                                                          downstream hub
    {prefix}.route     direct ─ no local queue ─▶ {prefix}.hubs  topic   (alternate exchange, by policy)
    {prefix}.hubs      topic  ─ neighbour pattern, e.g. *.*.*.H79.* ─▶ {prefix}.link.{name}
                              ─ home pattern (this hub's own codes) ─▶ {prefix}.unrouted
                              ─ no pattern matches ─▶ {prefix}.upstream  fanout (alternate exchange)
    {prefix}.upstream  fanout ─ pattern "#" links ─▶ {prefix}.link.{name}
                              ─ no upstream link (the national hub) ─▶ {prefix}.unrouted  (alternate)
    {prefix}.unrouted  fanout ──▶ {prefix}.unrouted  quorum: parked for the operator, alerted on

    {prefix}.link.{name}  quorum ══ dynamic shovel (on-confirm, forward headers) ══▶ {prefix}.route
                          (store-and-forward: waits here while the neighbour is down)

A hub's home patterns (its own province, e.g. ``*.*.*.H41.*``) are what stops a routing loop: a
message for a code of this province that no local node hosts is parked here, instead of going up
to the national hub, which would send it straight back.

The routing key (``{agency code}.{lane}``) is kept across the shovel, so the downstream hub
routes the message like one published there: to its own lane queue, or on through its own links.
The shovel runs on the upstream broker and connects to both sides as the link's own user:

* upstream user ``{prefix}-link-{name}``: configure ``^$``, write ``^$``, read ``^{link queue}$``
  (it consumes the link queue and nothing else; the shovel's passive declare needs no configure right);
* downstream user ``{prefix}-link-{name}`` (created by the downstream operator, or by us when given
  its management API): configure ``^$``, write ``^{prefix}\\.route$``, read ``^$``.

A message the downstream cannot route (an agency it does not know) would be dropped by the broker
(the shovel does not publish mandatory), so every hub parks such messages in ``{prefix}.unrouted``
instead, with an alert on its depth. The price: on a hub, a node's mandatory publish for such a
code is accepted into the parking queue rather than returned to it.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import aiohttp

from exchange.errors import BrokerUnavailableError, ConfigError, ExchangeError

if TYPE_CHECKING:
    from exchange.routing.directory import Directory


class HubLinkError(ExchangeError):
    """The management API of a hub refused a declaration (credentials, permissions or a conflict)."""

    code = "hub-link-refused"
    http_status = 502


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
#: "#" (everything), or the five words of a routing key {code}.{lane}, each exact or "*".
_PATTERN_RE = re.compile(r"^(#|(\*|\d{3})\.(\*|\d{2})\.(\*|\d{2})\.(\*|[A-Z]\d{2})\.(\*|express|urgent|normal))$")


@dataclass(frozen=True, slots=True)
class HubNames:
    """The names a hub deployment adds to the node topology's (same prefix)."""

    prefix: str

    @property
    def route(self) -> str:
        return f"{self.prefix}.route"

    @property
    def hubs(self) -> str:
        return f"{self.prefix}.hubs"

    @property
    def upstream(self) -> str:
        return f"{self.prefix}.upstream"

    @property
    def unrouted(self) -> str:
        return f"{self.prefix}.unrouted"

    @property
    def policy(self) -> str:
        return f"{self.prefix}.route-to-hubs"

    def link_queue(self, link: str) -> str:
        return f"{self.prefix}.link.{link}"

    def link_user(self, link: str) -> str:
        return f"{self.prefix}-link-{link}"

    def shovel(self, link: str) -> str:
        return f"{self.prefix}.link.{link}"


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for the shovel's connection to a side (files on the upstream broker's machine)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""
    verify: bool = True

    def query(self, host: str) -> dict[str, str]:
        q: dict[str, str] = {}
        if self.ca_file:
            q["cacertfile"] = self.ca_file
        if self.cert_file:
            q["certfile"] = self.cert_file
        if self.key_file:
            q["keyfile"] = self.key_file
        q["verify"] = "verify_peer" if self.verify else "verify_none"
        q["server_name_indication"] = self.server_name or host
        return q


@dataclass(frozen=True, slots=True)
class Side:
    """One broker of a link: where the shovel connects (AMQP) and where we declare (management API).

    ``amqp`` is the address the SHOVEL uses (as seen from the upstream broker), without
    credentials: the link's own user is put in by us. ``api`` is the management HTTP API with an
    administrator's credentials (``http://admin:secret@host:15672``); leave it empty on a side
    whose operator declares their half themselves (``exchange hub link --print`` shows what).
    """

    amqp: str
    api: str = ""
    vhost: str = "/"
    tls: Tls | None = None

    def shovel_uri(self, user: str, password: str) -> str:
        parts = urlsplit(self.amqp)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"link address {self.amqp!r} must be an amqp:// or amqps:// URL")
        if parts.username or parts.password:
            raise ConfigError(
                "a link address carries no credentials: each link gets its own user; "
                "remove user:password from the amqp URL"
            )
        host = parts.hostname or "localhost"
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
        query = urlencode(self.tls.query(host)) if (parts.scheme == "amqps" and self.tls) else parts.query
        if parts.scheme == "amqp" and self.tls:
            raise ConfigError(f"TLS options given for {self.amqp!r}: use an amqps:// URL")
        return urlunsplit((parts.scheme, netloc, "/" + quote(self.vhost, safe=""), query, ""))


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link from an upstream hub to one neighbouring (downstream) hub."""

    name: str
    upstream: Side
    downstream: Side
    #: Topic patterns on {prefix}.hubs: routing keys ``{code}.{lane}``, e.g. ``*.*.*.H79.*`` or ``#``.
    patterns: tuple[str, ...]
    prefix: str = "exchange"
    #: Seconds the shovel waits before reconnecting after a failure.
    reconnect_delay: int = 5
    prefetch: int = 500
    #: Refuse new messages once the backlog holds this many bytes (0: no limit); senders keep theirs in the outbox.
    max_backlog_bytes: int = 0
    #: The link user's password (on both sides); generated when empty, never logged.
    password: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ConfigError(f"link name {self.name!r} must be lower-case letters, digits and '-', e.g. h41-national")
        if not self.patterns:
            raise ConfigError(f"link {self.name} has no patterns: give the agency codes it carries, e.g. '*.*.*.H79.*'")
        for p in self.patterns:
            _check_pattern(f"link {self.name}", p)

    @property
    def names(self) -> HubNames:
        return HubNames(self.prefix)


def province_pattern(province: str) -> str:
    """The binding pattern for every agency of one level-1 group, e.g. ``H79`` → ``*.*.*.H79.*``."""
    if not re.fullmatch(r"[A-Z]\d{2}", province):
        raise ConfigError(f"province group {province!r} must look like H79 (QCVN 102 level 1)")
    return f"*.*.*.{province}.*"


def hub_patterns(directory: Directory, hubs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The binding patterns that carry every agency the directory places on ``hubs``.

    A level-1 group (a province, a ministry) wholly on those hubs gets one pattern
    (``*.*.*.H29.*``); a group split between hubs gets one exact pattern per agency
    (``000.00.11.H29.*``), so the link never takes an agency that lives elsewhere.
    """
    wanted = set(hubs)
    groups: dict[str, list[str]] = {}
    split: set[str] = set()
    for e in directory:
        group = e.code[-3:]
        if e.hub in wanted:
            groups.setdefault(group, []).append(e.code)
        else:
            split.add(group)
    out: list[str] = []
    for group, codes in sorted(groups.items()):
        if group in split:
            out += [f"{code}.*" for code in sorted(codes)]
        else:
            out.append(province_pattern(group))
    return tuple(out)


def quorum_link_arguments(max_backlog_bytes: int) -> dict[str, Any]:
    """The link queue's arguments.

    No delivery limit and no dead-lettering, on purpose: the only consumer is the shovel, which
    never rejects; a flapping WAN returns its in-flight window each time, and a delivery limit
    would eventually dead-letter documents that did nothing wrong.
    """
    args: dict[str, Any] = {"x-queue-type": "quorum"}
    if max_backlog_bytes:
        args["x-max-length-bytes"] = max_backlog_bytes
        args["x-overflow"] = "reject-publish"  # the sender's publish is nacked: it stays in its outbox
    return args


def shovel_definition(spec: LinkSpec, password: str) -> dict[str, Any]:
    """The dynamic shovel's parameter value (RabbitMQ 3.10 keys)."""
    n = spec.names
    user = n.link_user(spec.name)
    return {
        "src-protocol": "amqp091",
        "src-uri": spec.upstream.shovel_uri(user, password),
        "src-queue": n.link_queue(spec.name),
        "src-prefetch-count": spec.prefetch,
        "src-delete-after": "never",
        "dest-protocol": "amqp091",
        "dest-uri": spec.downstream.shovel_uri(user, password),
        "dest-exchange": n.route,
        # No dest-exchange-key: the routing key {code}.{lane} travels unchanged.
        "dest-add-forward-headers": True,
        "dest-add-timestamp-header": True,
        "ack-mode": "on-confirm",
        "reconnect-delay": spec.reconnect_delay,
    }


class ManagementApi:
    """A small client of the RabbitMQ management HTTP API (credentials from the URL, never logged)."""

    def __init__(self, url: str, *, timeout: float = 15.0, ssl: Any = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"management API address must be http(s)://user:password@host:port, got scheme {parts.scheme!r}"
            )
        self.base = urlunsplit(
            (parts.scheme, f"{parts.hostname}:{parts.port or 15672}", parts.path.rstrip("/"), "", "")
        )
        self.display = self.base  # what messages show: no credentials
        self._auth = (
            aiohttp.encode_basic_auth(parts.username or "guest", parts.password or "guest")
            if hasattr(aiohttp, "encode_basic_auth")
            else aiohttp.BasicAuth(parts.username or "guest", parts.password or "guest").encode()
        )
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ssl = ssl
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ManagementApi:
        self._session = aiohttp.ClientSession(headers={"Authorization": self._auth}, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, *, ok_missing: bool = False) -> Any:
        assert self._session is not None, "use ManagementApi as an async context manager"
        try:
            async with self._session.request(method, f"{self.base}/api{path}", json=body, ssl=self._ssl) as resp:
                text = await resp.text()
                if resp.status == 404 and ok_missing:
                    return None
                if resp.status in (401, 403):
                    raise HubLinkError(
                        f"{self.display} refused {method} {path} ({resp.status}): check the "
                        "administrator credentials in the management API URL"
                    )
                if resp.status >= 400:
                    reason = _reason(text)
                    raise HubLinkError(
                        f"{self.display}: {method} {path} failed ({resp.status}: {reason}); "
                        "fix the conflicting object or the link's settings, then run the command again"
                    )
                return json.loads(text) if text.strip() else None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise BrokerUnavailableError(
                f"management API {self.display} is unreachable ({type(exc).__name__}); "
                "check the hub is up and its rabbitmq_management plugin enabled"
            ) from None

    @staticmethod
    def vh(vhost: str) -> str:
        return quote(vhost, safe="")


def _reason(text: str) -> str:
    try:
        return str(json.loads(text).get("reason", text))[:300]
    except (ValueError, AttributeError):
        return text[:300]


async def declare_hub(
    api: ManagementApi, prefix: str, vhost: str = "/", *, home: tuple[str, ...] | None = None
) -> None:
    """Give one hub its routing fabric: route exchange, alternate exchanges and the parking lot.

    ``home`` (topic patterns of this hub's own agencies) replaces the hub's home bindings when
    given; None leaves them as they are (a link declaration does not own them).

    The alternate exchange is set by a policy rather than an exchange argument so that a broker whose
    ``{prefix}.route`` already exists (declared by nodes) needs no redeclaration, and the node
    topology stays unchanged on a broker that is not a hub.
    """
    n, v = HubNames(prefix), api.vh(vhost)
    await api.request("PUT", f"/exchanges/{v}/{quote(n.route, safe='')}", {"type": "direct", "durable": True})
    await api.request("PUT", f"/exchanges/{v}/{quote(n.unrouted, safe='')}", {"type": "fanout", "durable": True})
    await api.request(
        "PUT", f"/queues/{v}/{quote(n.unrouted, safe='')}", {"durable": True, "arguments": {"x-queue-type": "quorum"}}
    )
    await api.request(
        "POST", f"/bindings/{v}/e/{quote(n.unrouted, safe='')}/q/{quote(n.unrouted, safe='')}", {"routing_key": ""}
    )
    await api.request(
        "PUT",
        f"/exchanges/{v}/{quote(n.upstream, safe='')}",
        {"type": "fanout", "durable": True, "arguments": {"alternate-exchange": n.unrouted}},
    )
    await api.request(
        "PUT",
        f"/exchanges/{v}/{quote(n.hubs, safe='')}",
        {"type": "topic", "durable": True, "arguments": {"alternate-exchange": n.upstream}},
    )
    if home is not None:
        for p in home:
            _check_pattern("home", p)
        await _set_bindings(api, v, n.hubs, "e", n.unrouted, tuple(home))
    await api.request(
        "PUT",
        f"/policies/{v}/{quote(n.policy, safe='')}",
        {
            "pattern": f"^{re.escape(n.route)}$",
            "apply-to": "exchanges",
            "priority": 10,
            "definition": {"alternate-exchange": n.hubs},
        },
    )


async def ensure_user(
    api: ManagementApi, vhost: str, user: str, password: str, configure: str, write: str, read: str
) -> None:
    """A user with no tags (no management access) and exactly these permissions in ``vhost``."""
    await api.request("PUT", f"/users/{quote(user, safe='')}", {"password": password, "tags": ""})
    await api.request(
        "PUT",
        f"/permissions/{api.vh(vhost)}/{quote(user, safe='')}",
        {"configure": configure, "write": write, "read": read},
    )


async def _set_bindings(api: ManagementApi, v: str, source: str, kind: str, dest: str, keys: tuple[str, ...]) -> None:
    """Make the bindings ``source`` → ``dest`` exactly ``keys`` (removed patterns are unbound)."""
    s, d = quote(source, safe=""), quote(dest, safe="")
    existing = await api.request("GET", f"/bindings/{v}/e/{s}/{kind}/{d}") or []
    for b in existing:
        if b.get("routing_key") not in keys:
            # ok_missing: another node of this hub applying the same [hub] at once may have unbound it.
            await api.request(
                "DELETE", f"/bindings/{v}/e/{s}/{kind}/{d}/{quote(b['properties_key'], safe='')}", ok_missing=True
            )
    have = {b.get("routing_key") for b in existing}
    for key in keys:
        if key not in have:
            await api.request("POST", f"/bindings/{v}/e/{s}/{kind}/{d}", {"routing_key": key})


def _check_pattern(what: str, p: str) -> None:
    if not _PATTERN_RE.match(p):
        raise ConfigError(
            f"{what}: pattern {p!r} is not a topic pattern over '{{code}}.{{lane}}' keys, e.g. '*.*.*.H79.*' or '#'"
        )


def upstream_permissions(spec: LinkSpec) -> tuple[str, str, str]:
    """(configure, write, read) of the link user on the upstream hub."""
    return "^$", "^$", f"^{re.escape(spec.names.link_queue(spec.name))}$"


def downstream_permissions(spec: LinkSpec) -> tuple[str, str, str]:
    """(configure, write, read) of the link user on the downstream hub."""
    return "^$", f"^{re.escape(spec.names.route)}$", "^$"


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply_link`` did, for the operator (never the password)."""

    link: str
    queue: str
    shovel: str
    user: str
    patterns: tuple[str, ...]
    downstream_declared: bool
    password_generated: bool


async def apply_link(
    spec: LinkSpec, *, upstream_api: ManagementApi, downstream_api: ManagementApi | None = None
) -> tuple[Applied, str]:
    """Declare (idempotently) everything of one link; returns what was done and the link password.

    Without ``downstream_api`` the downstream half (its hub fabric and the link user) is the
    downstream operator's to declare, with the same password and the permissions of
    ``downstream_permissions``.
    """
    n = spec.names
    password = spec.password or secrets.token_urlsafe(24)
    user = n.link_user(spec.name)
    up_v = upstream_api.vh(spec.upstream.vhost)
    queue = n.link_queue(spec.name)
    await declare_hub(upstream_api, spec.prefix, spec.upstream.vhost)
    await upstream_api.request(
        "PUT",
        f"/queues/{up_v}/{quote(queue, safe='')}",
        {"durable": True, "arguments": quorum_link_arguments(spec.max_backlog_bytes)},
    )
    # "#" means "everything no other link or home pattern claims": the upstream fanout, not the
    # topic exchange (where "#" would also copy the messages of every other link).
    await _set_bindings(upstream_api, up_v, n.hubs, "q", queue, tuple(p for p in spec.patterns if p != "#"))
    await _set_bindings(upstream_api, up_v, n.upstream, "q", queue, ("",) if "#" in spec.patterns else ())
    await ensure_user(upstream_api, spec.upstream.vhost, user, password, *upstream_permissions(spec))
    if downstream_api is not None:
        await declare_hub(downstream_api, spec.prefix, spec.downstream.vhost)
        await ensure_user(downstream_api, spec.downstream.vhost, user, password, *downstream_permissions(spec))
    # Set again at every apply (a node applies its [hub] at every start): RabbitMQ 3.10 leaves a
    # running shovel alone when its definition is unchanged (measured: same start time, no reconnect).
    await upstream_api.request(
        "PUT",
        f"/parameters/shovel/{up_v}/{quote(n.shovel(spec.name), safe='')}",
        {"value": shovel_definition(spec, password)},
    )
    return Applied(
        spec.name, queue, n.shovel(spec.name), user, spec.patterns, downstream_api is not None, not spec.password
    ), password


async def remove_link(spec: LinkSpec, *, upstream_api: ManagementApi, delete_queue: bool = False) -> None:
    """Stop and delete a link's shovel and user; its queue (and any backlog) stays unless asked."""
    n = spec.names
    up_v = upstream_api.vh(spec.upstream.vhost)
    await upstream_api.request(
        "DELETE", f"/parameters/shovel/{up_v}/{quote(n.shovel(spec.name), safe='')}", ok_missing=True
    )
    await upstream_api.request("DELETE", f"/users/{quote(n.link_user(spec.name), safe='')}", ok_missing=True)
    if delete_queue:
        await upstream_api.request(
            "DELETE", f"/queues/{up_v}/{quote(n.link_queue(spec.name), safe='')}", ok_missing=True
        )
