"""The ``[hub]`` section of a node's TOML: this hub, its home codes and its links.

::

    [hub]
    name = "h41"                                  # this hub (the directory's `hub` of its agencies)
    api = "http://admin@127.0.0.1:15672"          # this broker's management API; password below
    api_password_env = "EXCHANGE_HUB_API_PASSWORD"
    amqp = "amqp://127.0.0.1:5672"                # this broker as its own shovels reach it
    home = ["*.*.*.H41.*"]                        # codes of this hub: never sent upstream

    [[hub.links]]
    name = "h41-national"
    to = "amqps://hub.national.example.vn:5671"   # the neighbour, as this broker reaches it
    patterns = ["#"]                              # everything not for home or another link
    # or: hubs = ["h29"]                          # the agencies the directory places on those hubs
    password_env = "EXCHANGE_HUB_LINK_H41_NATIONAL"
    ca_file = "/etc/rabbitmq/tls/national-ca.pem" # files on THIS broker's machine
    cert_file = "/etc/rabbitmq/tls/h41-link.pem"
    key_file = "/etc/rabbitmq/tls/h41-link.key"

The prefix is the node's ``[amqp] prefix``. Passwords come from the environment only, so they are
never written in the file or printed back.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from exchange.errors import ConfigError
from exchange.hub.links import LinkSpec, Side, Tls, _check_pattern, hub_patterns
from exchange.routing.directory import Directory

_LINK_KEYS = {
    "name",
    "to",
    "vhost",
    "patterns",
    "password_env",
    "ca_file",
    "cert_file",
    "key_file",
    "server_name",
    "verify",
    "reconnect_delay",
    "prefetch",
    "max_backlog_bytes",
    "downstream_api",
    "hubs",
}
_HUB_KEYS = {"name", "api", "api_password_env", "amqp", "vhost", "home", "links", "prefix"}


@dataclass(frozen=True, slots=True)
class HubConfig:
    """This hub and the links it starts (each link's queue and shovel live on this hub)."""

    name: str
    prefix: str
    api: str
    vhost: str
    home: tuple[str, ...]
    links: tuple[LinkSpec, ...]


def _with_password(url: str, password: str) -> str:
    if not password:
        return url
    p = urlsplit(url)
    netloc = f"{quote(p.username or 'guest', safe='')}:{quote(password, safe='')}@{p.hostname}" + (
        f":{p.port}" if p.port else ""
    )
    return urlunsplit((p.scheme, netloc, p.path, p.query, ""))


def hub_config(
    raw: Mapping[str, Any],
    *,
    prefix: str,
    environ: Mapping[str, str] | None = None,
    source: str = "config",
    directory: Directory | None = None,
    link_secrets: bool = True,
) -> HubConfig | None:
    """Parse ``raw["hub"]`` (None when the node is not a hub operator's).

    ``link_secrets=False`` reads the section without the links' passwords (empty), for what only
    reads the hub (``exchange hub status``): an operator looking at a link need not hold its secret.
    """
    env = os.environ if environ is None else environ
    hub = raw.get("hub")
    if hub is None:
        return None
    if not isinstance(hub, dict):
        raise ConfigError(f"{source}: [hub] must be a table")
    unknown = set(hub) - _HUB_KEYS
    if unknown:
        raise ConfigError(f"{source}: [hub] has unknown keys {sorted(unknown)}; known keys are {sorted(_HUB_KEYS)}")
    for key in ("name", "api", "amqp"):
        if not hub.get(key):
            raise ConfigError(
                f"{source}: [hub] {key} is required (see docs/FEDERATION.md, 'What each operator configures')"
            )
    prefix = str(hub.get("prefix", prefix))
    vhost = str(hub.get("vhost", "/"))
    api = _with_password(
        str(hub["api"]), env.get(str(hub.get("api_password_env", "")), "") if hub.get("api_password_env") else ""
    )
    home = tuple(str(p) for p in hub.get("home", []))
    for p in home:
        _check_pattern(f"{source}: [hub] home", p)
    here = Side(amqp=str(hub["amqp"]), api=api, vhost=vhost)
    links = []
    for i, link in enumerate(hub.get("links", [])):
        where = f"{source}: [[hub.links]] #{i + 1}"
        unknown = set(link) - _LINK_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; known keys are {sorted(_LINK_KEYS)}")
        for key in ("name", "to"):
            if not link.get(key):
                raise ConfigError(f"{where} lacks {key!r}")
        patterns = [str(p) for p in link.get("patterns", [])]
        if link.get("hubs"):
            if directory is None:
                raise ConfigError(f"{where}: hubs = [...] needs the node's [directory] file to know who is where")
            patterns += hub_patterns(directory, [str(h) for h in link["hubs"]])
        if not patterns:
            raise ConfigError(f"{where} carries nothing: give patterns = [...] or hubs = [...] that the directory uses")
        password = ""
        if link.get("password_env") and link_secrets:
            password = env.get(str(link["password_env"]), "")
            if not password:
                raise ConfigError(
                    f"{where}: the environment variable {link['password_env']} (the link password "
                    "agreed with the neighbour's operator) is not set"
                )
        tls = None
        if str(link["to"]).startswith("amqps://"):
            tls = Tls(
                ca_file=str(link.get("ca_file", "")),
                cert_file=str(link.get("cert_file", "")),
                key_file=str(link.get("key_file", "")),
                server_name=str(link.get("server_name", "")),
                verify=bool(link.get("verify", True)),
            )
        try:
            links.append(
                LinkSpec(
                    name=str(link["name"]),
                    upstream=here,
                    downstream=Side(
                        amqp=str(link["to"]),
                        api=str(link.get("downstream_api", "")),
                        vhost=str(link.get("vhost", "/")),
                        tls=tls,
                    ),
                    patterns=tuple(dict.fromkeys(patterns)),
                    prefix=prefix,
                    reconnect_delay=int(link.get("reconnect_delay", 5)),
                    prefetch=int(link.get("prefetch", 500)),
                    max_backlog_bytes=int(link.get("max_backlog_bytes", 0)),
                    password=password,
                )
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    if len({link.name for link in links}) != len(links):
        raise ConfigError(f"{source}: two [[hub.links]] have the same name")
    return HubConfig(str(hub["name"]), prefix, api, vhost, home, tuple(links))


def load_hub_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, link_secrets: bool = True
) -> HubConfig | None:
    """The ``[hub]`` section of the node TOML at ``path`` (the prefix comes from its ``[amqp]``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    directory = None
    if raw.get("directory", {}).get("file"):
        file = Path(raw["directory"]["file"]).expanduser()
        directory = Directory.load(file if file.is_absolute() else path.parent / file)
    return hub_config(
        raw,
        prefix=str(raw.get("amqp", {}).get("prefix", "exchange")),
        environ=environ,
        source=str(path),
        directory=directory,
        link_secrets=link_secrets,
    )
