"""Requests aiohttp cannot parse answered as problem+json, and logged without echoing them.

aiohttp refuses a malformed request (a header or request line over 8190 bytes, a bad
header, a bad method) inside its protocol handler, before any middleware runs: its
``RequestHandler.handle_error`` answers ``400 text/plain`` with the parser's message,
which quotes the first ~100 bytes of the offending line, and logs the same text with a
traceback (``aiohttp.server``). Both can carry a credential (an over-long
``Authorization`` header, a token in the query string of an over-long URL). aiohttp
has no public hook for this (aio-libs/aiohttp#3287), so the gateway's runner builds its
protocol handlers from :class:`ProblemRequestHandler`, which answers problem+json with
a fixed text and logs the error class only.
"""

from __future__ import annotations

import json
import uuid

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from exchange.errors import ExchangeError
from exchange.gateway.errors import InternalError, MalformedRequestError, RequestLineTooLongError

log = structlog.get_logger("exchange.gateway")

PROBLEM_JSON = "application/problem+json"


def _refusal(status: int, exc: BaseException | None) -> ExchangeError:
    if isinstance(exc, LineTooLong):
        return RequestLineTooLongError(
            "a request line or header is over the gateway's limit of 8190 bytes; send a shorter URL or header "
            "(credentials go in 'Authorization: Bearer <token>', never in the URL)"
        )
    if isinstance(exc, HttpProcessingError) or 400 <= status < 500:
        err: ExchangeError = MalformedRequestError(
            "the request is not valid HTTP/1.1; check the request line and headers your client sends"
        )
    else:
        err = InternalError("the gateway failed unexpectedly; the node's log has the details")
    if err.http_status != status and status >= 400:
        err.http_status = status  # e.g. 504 on a handler timeout: keep aiohttp's status
    return err


class ProblemRequestHandler(RequestHandler):
    """aiohttp's protocol handler, with errors answered as problem+json and logged without their text."""

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        # Never the parser's message or traceback: both quote the raw request line / header.
        error = type(exc).__name__ if exc is not None else None
        if isinstance(exc, HttpProcessingError):
            log.warning("http.unparseable", status=status, error=error, remote=request.remote)
        else:
            log.error("http.protocol_error", status=status, error=error, remote=request.remote)
        if request.writer.output_size > 0:  # as aiohttp: part of an answer is out, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        refusal = _refusal(status, exc)
        body = refusal.to_problem()
        request_id = uuid.uuid4().hex
        response = web.Response(
            status=refusal.http_status,
            content_type=PROBLEM_JSON,
            text=json.dumps(body),
            headers={"X-Request-Id": request_id},
        )
        response.force_close()
        return response


class ProblemServer(web.Server):
    """``web.Server`` whose connections are served by :class:`ProblemRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """The AppRunner the node serves the gateway with: aiohttp's, with :class:`ProblemServer`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        problem_server = ProblemServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        return problem_server
