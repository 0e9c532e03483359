"""The HTTP gateway: the aiohttp API E-Office systems and operators call.

``app.create_app`` assembles it; ``auth`` issues and checks per-agency API
tokens (and mutual-TLS identities); ``views`` holds the handlers, which only
translate HTTP to :class:`exchange.service.ExchangeService` calls and back.
docs/API.md and ``openapi.yaml`` describe every endpoint.
"""
