"""Structured logs: one JSON object per line, secrets redacted, document contents dropped.

structlog and the standard library (aio-pika, aiormq, aiohttp, asyncio) share one
pipeline: stdlib records pass through ``structlog.stdlib.ProcessorFormatter``, so
every line on the stream is JSON and every line goes through the same redaction.

The redaction works on two levels, because a secret reaches a log either as a
field (``token=...``) or inside text (a formatted stdlib message, an exception,
an AMQP URL with a password):

* keys: any key that names a secret (token, secret, password, authorization,
  api_key, hmac, private_key, cookie, also as part of a longer key such as
  ``access_token`` or ``Set-Cookie``) has its value replaced, at any depth;
  keys that carry document contents (subject, content, body, attachments) are
  removed, at any depth;
* text: every string value (and every string key) is scrubbed of API tokens
  by their shape (the ``exg_`` prefix of ``exchange.tokens``, wherever it
  appears: a path segment logged as ``message_id``, an over-long header quoted
  by aiohttp's parser, an exception text), bearer/basic credentials, URL
  passwords, ``key=value`` secrets and PEM private keys.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

#: ``exchange.tokens.TOKEN_PREFIX`` (not imported: logging sits below the store; a test keeps them equal).
TOKEN_PREFIX = "exg_"

#: A key is secret if, lower-cased with '-' as '_', it contains one of these.
SECRET_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "api_key",
    "apikey",
    "hmac",
    "private_key",
    "cookie",
    "credential",
)
#: Keys whose values are document contents: removed wherever they appear.
CONTENT_KEYS = frozenset(
    {
        "subject",
        "content",
        "contents",
        "body",
        "attachment",
        "attachments",
        "attachment_data",
        "attachments_data",
        "data_base64",
    }
)
#: Keys structlog itself owns: never dropped or redacted by name.
_RESERVED = frozenset({"event", "level", "timestamp", "logger", "exception"})

_TEXT_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    # An API token by its shape, anywhere (also cut short, as aiohttp quotes only a line's first bytes).
    (re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]*"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S), REDACTED),
    # token=..., "password": "...", api-key: ..., Authorization: Bearer ..., Cookie: ...
    (
        re.compile(
            r"(?i)((?:token|secret|passw(?:or)?d|authorization|api[_-]?key|hmac|private[_-]?key|cookie|credential)"
            r"[a-z0-9_-]*[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])(?:(?:bearer|basic)\s+)?[^\s\"',;&}\]]+"
        ),
        rf"\1{REDACTED}",
    ),
    # HTTP credentials elsewhere: "Bearer <token>", "Basic <base64>" (a plain word after "basic" survives)
    (re.compile(r"(?i)\b(bearer)\s+(?!\[REDACTED\])[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {REDACTED}"),
    (re.compile(r"\b((?i:basic))\s+(?![A-Z]?[a-z]+\b)[A-Za-z0-9+/]{6,}={0,2}"), rf"\1 {REDACTED}"),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*):[^\s@/]+@"), rf"\1:{REDACTED}@"),
)


def _norm(key: object) -> str:
    return str(key).lower().replace("-", "_")


def is_secret_key(key: object) -> bool:
    """True if a field of this name holds a credential."""
    k = _norm(key)
    return k not in _RESERVED and any(w in k for w in SECRET_WORDS)


def is_content_key(key: object) -> bool:
    """True if a field of this name holds document contents."""
    return _norm(key) in CONTENT_KEYS


def scrub_text(text: str) -> str:
    """Remove credentials that appear inside free text."""
    for pattern, repl in _TEXT_RULES:
        text = pattern.sub(repl, text)
    return text


def _clean(value: Any, depth: int = 0) -> Any:
    if depth > 12:  # a pathological structure: do not log what we cannot inspect
        return "[TOO DEEP]"
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if is_content_key(k):
                continue
            out[_clean_key(k)] = REDACTED if is_secret_key(k) else _clean(v, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v, depth + 1) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"  # raw bytes are payload, never log them
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return scrub_text(str(value))  # anything else is rendered as text anyway: scrub that text


def _clean_key(key: Any) -> Any:
    return scrub_text(key) if isinstance(key, str) else key


def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact secrets and drop document contents, at any depth, in keys and values."""
    out: EventDict = {}
    for k, v in event_dict.items():
        if k not in _RESERVED and is_content_key(k):
            continue
        out[_clean_key(k)] = REDACTED if is_secret_key(k) else _clean(v)
    return out


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,  # first: message and correlation ids bound per message
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


_HANDLER_NAME = "exchange-structlog"
#: Libraries whose records are routed through the same JSON pipeline.
STDLIB_LOGGERS = ("aio_pika", "aiormq", "aiohttp", "aiohttp.access", "asyncio", "sqlalchemy", "py.warnings")
#: Loggers that echo SQL statements and their parameters (document subjects, envelope bytes) at
#: INFO: held at WARNING whatever the level, since document contents are never logged.
SQL_ECHO_LOGGERS = ("sqlalchemy.engine", "sqlalchemy.pool", "sqlalchemy.orm")


def configure_logging(level: str | int = "INFO", json: bool = True, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr) as JSON lines (or console text).

    Safe to call more than once (tests do): the previous handler is replaced.
    """
    stream = sys.stderr if stream is None else stream
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")

    shared = _shared_processors()
    renderer: Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,  # last before rendering: covers structlog events and stdlib records alike
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in STDLIB_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers.clear()  # no library-installed handler may print plain text beside ours
        lib.propagate = True
        lib.setLevel(logging.NOTSET)
    for name in SQL_ECHO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.captureWarnings(True)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Module-level loggers are created at import, before configuration: do not freeze them.
        cache_logger_on_first_use=False,
    )


@contextlib.contextmanager
def bind_message(
    message_id: str,
    sender: str | None = None,
    recipient: str | None = None,
    correlation_id: str | None = None,
) -> Iterator[None]:
    """Bind a message's ids to every log line inside the block (restored on exit, task-local)."""
    fields = {"message_id": message_id, "sender": sender, "recipient": recipient, "correlation_id": correlation_id}
    with structlog.contextvars.bound_contextvars(**{k: v for k, v in fields.items() if v is not None}):
        yield
