"""The HTTP/1.1 server edge: aiohttp's protocol, with every answer ours.

aiohttp answers a request its parser rejects by itself, in text/plain quoting the offending
bytes (an Authorization header, a ?token=), and logs it with a traceback holding the same
bytes. Here such a request gets the gateway's JSON error with a fresh X-Request-Id and one log
line naming only the parser's exception class. No response carries aiohttp's `Server` header.

aiohttp has no public hook for either, so this module is the one place that leans on its
internals (`AppRunner._make_server`, `Request._prepare_hook`, `_make_request(_cls=)`); the
integration tests over raw sockets fail at once if a new aiohttp version moves them.

Client hygiene (`server.clients`, proxy/config/clients.py) lives here too, per listener: a
connection over the listener's caps (in all, per peer address) is closed as soon as it is
accepted; one timer per connection bounds each phase (before the first request, the head,
the body, idle between requests); and a stopping server answers what it is handling with
`Connection: close` instead of dropping the connection under it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from proxy.access.client_address import Network
from proxy.config.clients import ClientSettings, ConnectionLimits
from proxy.errors import BadRequest, GatewayError, HeadersTooLarge, InternalError, UriTooLong
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.server.middleware import error_response, request_id_from

# aiohttp's LineTooLong names the limit it hit, so the request line and a header field get
# different limits: a long request line is a 414 (RFC 9112 section 3), long header fields a
# 431 (RFC 6585 section 5).
MAX_REQUEST_LINE_BYTES = 8192
MAX_HEADER_FIELD_BYTES = 8190
_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, both parsers

_DRAIN_POLL_SECONDS = 0.05

log = get_logger("http")

Phase = Literal["first_request", "header", "body", "keepalive", "busy"]


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"
    message = "The request body did not arrive in time."


class GatewayRequest(web.Request):
    """aiohttp's request, whose responses go out without a `Server` header, and with
    `Connection: close` once its connection is closing (server stopping, body timed out)."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Runs after aiohttp has set its default headers (keep-alive decided) and before
        # they are written.
        response.headers.popall(hdrs.SERVER, None)
        protocol = self.protocol
        if isinstance(protocol, GatewayProtocol) and protocol.closing:
            response.force_close()  # the connection closes after this answer ...
            response.headers[hdrs.CONNECTION] = "close"  # ... and the client hears it
        await super()._prepare_hook(response)


class ClientPolicy:
    """One listener's client rules: its timeouts, its connection caps and their counts.

    The per-client cap is per peer address; a peer in `trusted` (an ingress carrying many
    players) is held to the overall cap alone.
    """

    def __init__(
        self,
        listener: str,
        settings: ClientSettings,
        limits: ConnectionLimits,
        trusted: Sequence[Network] = (),
    ) -> None:
        self.listener = listener
        self.first_request_timeout = settings.first_request_timeout_seconds
        self.header_timeout = settings.header_timeout_seconds
        self.body_timeout = settings.body_timeout_seconds
        self.keepalive_timeout = settings.keepalive_timeout_seconds
        self.max_connections = limits.max_connections
        self.max_per_client = limits.max_connections_per_client
        self.backlog = limits.backlog
        self._trusted = tuple(trusted)
        self.open = 0
        self.per_client: dict[str, int] = {}
        metrics.initialise_clients((listener,))
        self._open_gauge = metrics.labelled(metrics.CONNECTIONS_OPEN, listener)

    def admit(self, peer: str | None) -> tuple[bool, str | None]:
        """(admitted, the key its per-client count is kept under) for a new connection."""
        if self.open >= self.max_connections:
            self._refuse("max_connections")
            return False, None
        key = self._client_key(peer)
        if key is not None:
            count = self.per_client.get(key, 0)
            if count >= self.max_per_client:
                self._refuse("max_connections_per_client")
                return False, None
            self.per_client[key] = count + 1
        self.open += 1
        self._open_gauge.inc()
        return True, key

    def release(self, key: str | None) -> None:
        self.open -= 1
        self._open_gauge.dec()
        if key is not None:
            count = self.per_client.pop(key, 1) - 1
            if count > 0:
                self.per_client[key] = count

    def timed_out(self, phase: str) -> None:
        metrics.labelled(metrics.CLIENT_TIMEOUTS, self.listener, phase).inc()

    def _refuse(self, cap: str) -> None:
        metrics.labelled(metrics.CONNECTIONS_REFUSED, self.listener, cap).inc()

    def _client_key(self, peer: str | None) -> str | None:
        """The per-client count's key: the peer's canonical address; None when uncapped
        (no per-client cap, no address, or a trusted proxy)."""
        if not self.max_per_client or not peer:
            return None
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return peer
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack socket's IPv4 peer
        if any(address in network for network in self._trusted):
            return None
        return str(address)


def _parse_error(exc: HttpProcessingError) -> GatewayError:
    if isinstance(exc, LineTooLong):
        request_line = exc.args[1:2] == (MAX_REQUEST_LINE_BYTES,)
        return UriTooLong() if request_line else HeadersTooLarge()
    if exc.message == _TOO_MANY_HEADERS:
        return HeadersTooLarge()
    return BadRequest("The request is not valid HTTP/1.1.")


class GatewayProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 protocol, answering what it cannot handle with our JSON errors,
    within its listener's caps and timeouts."""

    __slots__ = ("_admitted", "_body", "_client_key", "_phase", "_policy", "_timer", "closing")

    def __init__(self, manager: web.Server, *, policy: ClientPolicy, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._policy = policy
        self._admitted = False
        self._client_key: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._phase: Phase = "first_request"
        self._body: StreamReader | None = None  # the request body being waited for
        self.closing = False  # answers go out with `Connection: close`

    # --- caps -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple | list) and peer else None
        self._admitted, self._client_key = self._policy.admit(host)
        if not self._admitted:
            transport.close()  # nothing read, nothing written
            return
        super().connection_made(transport)
        self._arm("first_request", self._policy.first_request_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._disarm("busy")
        self._policy.release(self._client_key)
        super().connection_lost(exc)

    # --- timeouts ---------------------------------------------------------------------------

    def _arm(self, phase: Phase, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._phase = phase
        self._timer = self._loop.call_later(seconds, self._expire, phase)

    def _disarm(self, phase: Phase) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._phase = phase

    def _settle(self) -> None:
        """A request is complete: the handler's time (no client timer) or idle again."""
        self._body = None
        if self._request_in_progress or self._messages:
            self._disarm("busy")
        else:
            self._arm("keepalive", self._policy.keepalive_timeout)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close or not data:
            super().data_received(data)
            return
        idle = self._phase in ("first_request", "keepalive")
        count = self._request_count
        super().data_received(data)
        if self._request_count != count:  # a head is complete (the last one may wait a body)
            payload = self._messages[-1][1] if self._messages else None
            if payload is not None and not payload.is_eof():
                self._body = payload
                self._arm("body", self._policy.body_timeout)
            else:
                self._settle()
        elif idle:
            self._arm("header", self._policy.header_timeout)  # the clock runs from byte one
        elif self._phase == "body" and self._body is not None and self._body.is_eof():
            self._settle()

    def _expire(self, phase: Phase) -> None:
        self._timer = None
        self._policy.timed_out(phase)
        body = self._body
        if phase == "body" and body is not None and self._request_in_progress:
            # The handler answers 408 (our JSON) as its read fails, which frees its in-flight
            # slot; the connection closes after that answer, without lingering for the rest.
            self._body = None
            self._phase = "busy"
            self.closing = True
            self._lingering_time = 0.0
            body.set_exception(RequestTimeout())
            return
        self.force_close()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._phase == "busy" and not self._messages and self.transport is not None:
            self._arm("keepalive", self._policy.keepalive_timeout)
        return result

    # --- stopping ---------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self.transport is not None and (
            self._request_in_progress
            or bool(self._messages)
            or self._phase in ("header", "body", "busy")
        )

    def drain(self) -> None:
        """The server stops: close at once if idle, else answer the request under way with
        `Connection: close` (still reading its body: aiohttp's close() would stop reading)."""
        self.closing = True
        if not self._busy():
            self.force_close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Let the request under way finish (within `timeout`) before aiohttp's shutdown,
        which stops reading at once and would starve a body still arriving."""
        self.closing = True
        loop = self._loop
        deadline = loop.time() + (timeout if timeout is not None else 15.0)
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(_DRAIN_POLL_SECONDS)
        remaining = max(0.0, deadline - loop.time())
        await super().shutdown(remaining)

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
    """aiohttp's low-level server, making GatewayProtocol connections under one policy."""

    def __init__(self, *args: Any, policy: ClientPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def __call__(self) -> GatewayProtocol:
        return GatewayProtocol(self, loop=self._loop, policy=self.policy, **self._kwargs)

    def pre_shutdown(self) -> None:
        for connection in self.connections:
            if isinstance(connection, GatewayProtocol):
                connection.drain()
            else:  # pragma: no cover - every connection is ours
                connection.close()


class GatewayRunner(web.AppRunner):
    """An AppRunner serving its app through GatewayServer, GatewayProtocol and GatewayRequest,
    under `policy` (default: the public listener's default caps and timeouts)."""

    def __init__(
        self, app: web.Application, *, policy: ClientPolicy | None = None, **kwargs: Any
    ) -> None:
        if policy is None:
            defaults = ClientSettings()
            policy = ClientPolicy("public", defaults, defaults.public)
        self.policy = policy
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
            policy=self.policy,
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
