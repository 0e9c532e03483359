"""The operator console: server-rendered pages under ``/console`` of the node (docs/CONSOLE.md)."""

from __future__ import annotations

from typing import Any


def mount(app: Any, service: Any, config: Any, *, readiness: Any = None, amqp_ssl: Any = None) -> None:
    """Serve the console under ``/console`` of the gateway ``app`` (imports Jinja2 only when called)."""
    from exchange.console.app import mount as _mount

    _mount(app, service, config, readiness=readiness, amqp_ssl=amqp_ssl)
