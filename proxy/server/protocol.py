"""The HTTP/1.1 server edge: aiohttp's protocol, with every answer ours.

aiohttp answers a request its parser rejects by itself, in text/plain quoting the offending
bytes (an Authorization header, a ?token=), and logs it with a traceback holding the same
bytes. Here such a request gets the gateway's JSON error with a fresh X-Request-Id and one log
line naming only the parser's exception class. No response carries aiohttp's `Server` header.

aiohttp has no public hook for either, so this module is the one place that leans on its
internals (`AppRunner._make_server`, `Request._prepare_hook`, `_make_request(_cls=)`); the
integration tests over raw sockets fail at once if a new aiohttp version moves them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from proxy.errors import BadRequest, GatewayError, HeadersTooLarge, InternalError, UriTooLong
from proxy.observability.logs import get_logger
from proxy.server.middleware import error_response, request_id_from

# aiohttp's LineTooLong names the limit it hit, so the request line and a header field get
# different limits: a long request line is a 414 (RFC 9112 section 3), long header fields a
# 431 (RFC 6585 section 5).
MAX_REQUEST_LINE_BYTES = 8192
MAX_HEADER_FIELD_BYTES = 8190
_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, both parsers

log = get_logger("http")


class GatewayRequest(web.Request):
    """aiohttp's request, whose responses go out without a `Server` header."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Runs after aiohttp has set its default headers and before they are written.
        response.headers.popall(hdrs.SERVER, None)
        await super()._prepare_hook(response)


def _parse_error(exc: HttpProcessingError) -> GatewayError:
    if isinstance(exc, LineTooLong):
        request_line = exc.args[1:2] == (MAX_REQUEST_LINE_BYTES,)
        return UriTooLong() if request_line else HeadersTooLarge()
    if exc.message == _TOO_MANY_HEADERS:
        return HeadersTooLarge()
    return BadRequest("The request is not valid HTTP/1.1.")


class GatewayProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering what it cannot handle with our JSON errors."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A parse error (or an exception that escaped the app) as our JSON error.

        `message` is aiohttp's text for the client, which quotes the request: never used.
        """
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; the connection is broken")
        request_id = request_id_from(None)
        if isinstance(exc, HttpProcessingError):
            error = _parse_error(exc)
            log.info(
                "bad_http_request",
                request_id=request_id,
                status=error.status,
                error=error.code,
                parse_error=type(exc).__name__,
            )
        else:
            error = InternalError()
            log.error("unhandled_error", request_id=request_id, status=status, exc_info=exc)
        response = error_response(error, request_id)
        response.headers["X-Request-Id"] = request_id
        response.force_close()
        return response


class GatewayServer(web.Server):
    """aiohttp's low-level server, making GatewayProtocol connections."""

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner serving its app through GatewayServer, GatewayProtocol and GatewayRequest."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(
            app,
            access_log=None,  # the middleware writes the access line
            max_line_size=MAX_REQUEST_LINE_BYTES,
            max_field_size=MAX_HEADER_FIELD_BYTES,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # starts the app
        return GatewayServer(
            server.request_handler,
            request_factory=self._make_request,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.Request:
        return self.app._make_request(message, payload, protocol, writer, task, _cls=GatewayRequest)
