"""Node configuration: one typed, frozen place, loaded from TOML with environment overrides.

Environment overrides use ``EXCHANGE__SECTION__KEY`` (double underscores), e.g.
``EXCHANGE__AMQP__URL`` or ``EXCHANGE__HTTP__PORT``; they win over the file so a
secret (the AMQP password in its URL) need not be written to disk.
"""

from __future__ import annotations

import os
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from exchange.envelope.codes import check_agency_code
from exchange.errors import ConfigError, InvalidAgencyCodeError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = structlog.get_logger("exchange.config")

ENV_PREFIX = "EXCHANGE__"


@dataclass(frozen=True, slots=True)
class AmqpConfig:
    """How to reach RabbitMQ and how the topology behaves."""

    url: str = "amqp://guest:guest@127.0.0.1:5672/"
    prefix: str = "exchange"
    prefetch: int = 64
    confirm_timeout: float = 10.0
    #: Backoff before the n-th retry of a transient delivery failure, in seconds.
    retry_delays: tuple[int, ...] = (1, 5, 30, 120, 600)
    #: Handover attempts before the message is dead-lettered (first try included).
    max_attempts: int = 6
    #: Broker-side guard against a message that crashes the consumer every time.
    delivery_limit: int = 20
    #: Recipients of one node that a single published copy of a fan-out serves (up to 500);
    #: 1 publishes a copy per recipient, for receiving nodes older than bundles (docs/ARCHITECTURE.md).
    bundle_max: int = 500
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The gateway's listener."""

    host: str = "127.0.0.1"
    port: int = 8080
    tls_cert: str = ""
    tls_key: str = ""
    #: Client CA for optional mutual TLS (agencies present certificates).
    tls_client_ca: str = ""
    max_body_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """Sizes we refuse above, and the replay window."""

    max_xml_bytes: int = 1024 * 1024
    max_attachment_bytes: int = 32 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    #: The replay window: a received envelope whose signed CreatedAt lies further than this in
    #: the past or the future is refused (``envelope-stale``). See docs/ARCHITECTURE.md.
    replay_window_seconds: int = 7 * 24 * 3600

    @property
    def created_window_seconds(self) -> int:
        """The replay window under its former name."""
        return self.replay_window_seconds


@dataclass(frozen=True, slots=True)
class AgencyConfig:
    """An agency this node hosts: its signing identity and the adapter to its E-Office."""

    code: str
    name: str
    key: Path
    cert: Path
    adapter: str = "pull"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything one ``exchange serve`` process needs."""

    name: str
    data_dir: Path
    amqp: AmqpConfig
    store_url: str
    http: HttpConfig
    ca_files: tuple[Path, ...]
    crl_files: tuple[Path, ...]
    directory_file: Path
    agencies: tuple[AgencyConfig, ...]
    limits: LimitsConfig = LimitsConfig()
    log_level: str = "INFO"
    source: Path | None = None

    def agency(self, code: str) -> AgencyConfig | None:
        return next((a for a in self.agencies if a.code == code), None)


def _coerce(value: str, like: Any) -> Any:
    if isinstance(like, bool):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if isinstance(like, int):
        return int(value)
    if isinstance(like, float):
        return float(value)
    if isinstance(like, (list, tuple)):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if len(path) != 2:
            raise ConfigError(f"environment override {key} must name SECTION__KEY, e.g. EXCHANGE__AMQP__URL")
        section = raw.setdefault(path[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"environment override {key}: [{path[0]}] is not a table")
        section[path[1]] = value  # typed against the section's defaults in _section


#: Keys renamed in a release, still read under their old name (with a warning) for a deprecation period.
RENAMED_KEYS: dict[tuple[str, str], str] = {("limits", "created_window_seconds"): "replay_window_seconds"}


def _section(raw: Mapping[str, Any], name: str, cls: type[DataclassInstance], defaults: Any) -> Any:
    table = dict(raw.get(name, {}))
    for (section, old), new in RENAMED_KEYS.items():
        if section != name or old not in table:
            continue
        if new in table:
            raise ConfigError(f"[{name}] sets both {old} (its former name) and {new}: keep only {new}")
        warnings.warn(
            f"[{name}] {old} is deprecated and will be refused in a later release: rename it to {new}",
            DeprecationWarning,
            stacklevel=2,
        )
        log.warning("config.deprecated_key", section=name, key=old, use=new)
        table[new] = table.pop(old)
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{name}] has unknown keys {sorted(unknown)}; known keys are {sorted(known)}")
    for k, v in table.items():
        default = getattr(defaults, k)
        try:
            if isinstance(v, str) and not isinstance(default, str):
                v = _coerce(v, default)
            if isinstance(default, tuple) and isinstance(v, list):
                v = tuple(type(default[0])(x) for x in v) if default else tuple(v)
        except ValueError:
            raise ConfigError(f"[{name}] {k} = {v!r} is not a valid {type(default).__name__}") from None
        if not isinstance(v, type(default)) and not (isinstance(default, float) and isinstance(v, int)):
            raise ConfigError(f"[{name}] {k} must be a {type(default).__name__}, not {type(v).__name__}")
        table[k] = v
    try:
        return cls(**{**{k: getattr(defaults, k) for k in known}, **table})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{name}] is invalid: {exc}") from exc


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read, override from the environment and validate a node's TOML configuration."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"configuration file {path} does not exist; run `exchange serve --dev` once to generate a "
            "working local configuration, or copy deploy/examples/production.toml"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    _apply_env(raw, os.environ if environ is None else environ)
    base = path.parent

    def rel(p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else (base / q)

    node = raw.get("node", {})
    if "name" not in node:
        raise ConfigError(f"{path}: [node] name is required (a short name for this node, e.g. 'node-a')")
    data_dir = rel(node.get("data_dir", "."))
    store_url = raw.get("store", {}).get("url") or f"sqlite:///{data_dir / 'exchange.db'}"
    if store_url.startswith("sqlite:///") and not store_url.startswith("sqlite:////"):
        store_url = f"sqlite:///{rel(store_url[len('sqlite:///') :])}"
    pki = raw.get("pki", {})
    agencies = []
    for i, a in enumerate(raw.get("agencies", [])):
        try:
            code = check_agency_code(a["code"])
            agencies.append(
                AgencyConfig(
                    code=code,
                    name=a.get("name", code),
                    key=rel(a["key"]),
                    cert=rel(a["cert"]),
                    adapter=a.get("adapter", "pull"),
                    options=dict(a.get("options", {})),
                )
            )
        except KeyError as exc:
            raise ConfigError(f"{path}: [[agencies]] #{i + 1} lacks {exc.args[0]!r}") from None
        except InvalidAgencyCodeError as exc:
            raise ConfigError(f"{path}: [[agencies]] #{i + 1}: {exc.message}") from None
    if len({a.code for a in agencies}) != len(agencies):
        raise ConfigError(f"{path}: an agency is listed twice in [[agencies]]")
    directory = raw.get("directory", {}).get("file")
    if not directory:
        raise ConfigError(f"{path}: [directory] file is required (the agency directory TOML)")
    cfg = NodeConfig(
        name=str(node["name"]),
        data_dir=data_dir,
        amqp=_section(raw, "amqp", AmqpConfig, AmqpConfig()),
        store_url=store_url,
        http=_section(raw, "http", HttpConfig, HttpConfig()),
        ca_files=tuple(rel(p) for p in pki.get("ca_files", [])),
        crl_files=tuple(rel(p) for p in pki.get("crl_files", [])),
        directory_file=rel(directory),
        agencies=tuple(agencies),
        limits=_section(raw, "limits", LimitsConfig, LimitsConfig()),
        log_level=str(raw.get("log", {}).get("level", "INFO")).upper(),
        source=path,
    )
    if not cfg.ca_files:
        raise ConfigError(f"{path}: [pki] ca_files is empty: the node needs a trust store to verify envelopes")
    if cfg.amqp.max_attempts < 1 or not cfg.amqp.retry_delays:
        raise ConfigError(f"{path}: [amqp] max_attempts must be >= 1 and retry_delays non-empty")
    if not 1 <= cfg.amqp.bundle_max <= 500:
        raise ConfigError(f"{path}: [amqp] bundle_max must be between 1 and 500 (got {cfg.amqp.bundle_max})")
    _check_replay_window(path, cfg)
    return cfg


def retry_span_seconds(amqp: AmqpConfig) -> int:
    """Seconds from a message's first handover attempt to its last, by the retry schedule."""
    delays = amqp.retry_delays
    return sum(delays[min(attempt, len(delays)) - 1] for attempt in range(1, amqp.max_attempts))


def _check_replay_window(path: Path, cfg: NodeConfig) -> None:
    # Each attempt checks the window again: one shorter than the retry schedule would refuse the
    # last retries of a message as stale.
    window, span = cfg.limits.replay_window_seconds, retry_span_seconds(cfg.amqp)
    if window <= span:
        raise ConfigError(
            f"{path}: [limits] replay_window_seconds = {window} must be longer than the node's retry schedule "
            f"({span} s by [amqp] retry_delays and max_attempts), or the last retries are refused as stale; "
            "the default is 604800 (7 days)"
        )
