"""Typed keys of what the gateway keeps on the application and on each request."""

from __future__ import annotations

from aiohttp import web

from exchange.config import HttpConfig
from exchange.gateway.auth import Authenticator, Principal
from exchange.service import ExchangeService

SERVICE: web.AppKey[ExchangeService] = web.AppKey("service", ExchangeService)
HTTP: web.AppKey[HttpConfig] = web.AppKey("http", HttpConfig)
AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
CORRELATION_ID: web.RequestKey[str] = web.RequestKey("correlation_id", str)
