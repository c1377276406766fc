"""One HTTP/1.1 client connection on an asyncio protocol, its answer parsed by httptools
(llhttp, the C parser uvicorn uses); and the client's errors and Response. The pool and the
request API are in proxy.upstream.http.client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools

_NO_BODY_STATUS = frozenset({204, 304})


class HttpClientError(Exception):
    """The upstream could not be reached or broke the exchange (timeouts are TimeoutError)."""


class ConnectError(HttpClientError):
    """Connecting failed: refused, unreachable, DNS, or TLS verification refused."""


class ConnectionClosed(HttpClientError):
    """The connection closed or was reset before the answer was complete."""


class BadResponse(HttpClientError):
    """The answer is not valid HTTP/1.x."""


class ResponseTooLarge(HttpClientError):
    """The answer's body exceeds the client's max_response_bytes."""


class InvalidRequest(HttpClientError, ValueError):
    """The URL, method or a header cannot be sent safely (e.g. a CR or LF in a value)."""


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer: status, headers in wire order (names as sent), the whole body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str, default: str = "") -> str:
        """The first value of header `name` (case-insensitive), or `default`."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default


class Connection(asyncio.Protocol):
    """One connection: sends a request, parses its answer with llhttp, one at a time.

    `registered` is set by the pool once connected; `closed`, `served`, `keep_alive` and
    `got_bytes` tell it whether the connection can be reused or a failed request retried.
    """

    def __init__(self, on_close: Callable[[Connection], None]) -> None:
        self._on_close = on_close  # called once, if registered: the pool frees its slot
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.registered = False
        self.served = 0
        self.idle_since = 0.0
        self.keep_alive = False
        self.got_bytes = False
        self._answer: asyncio.Future[Response] | None = None
        self._limit = 0
        self._head = False
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._length: int | None = None
        self._chunked = False
        self._headers_done = False

    async def exchange(self, data: bytes, limit: int, head: bool, deadline: float) -> Response:
        """Write one request and wait for its whole answer, failing with TimeoutError at
        `deadline` (a timer handle: cheaper on the hot path than a timeout context)."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Response] = loop.create_future()
        self._answer = answer
        self._limit, self._head, self.got_bytes, self.keep_alive = limit, head, False, False
        self.transport.write(data)
        timer = loop.call_at(deadline, self._time_out)
        try:
            return await answer
        finally:
            timer.cancel()
            self._answer = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._closed()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            # Bytes nobody asked for: the stream is out of step and cannot be reused.
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause if isinstance(cause, HttpClientError) else BadResponse(str(exc)))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(BadResponse(type(exc).__name__))

    def eof_received(self) -> bool | None:
        if self._answer is None or self._answer.done():
            self.close()  # the server ended an idle connection: out of the pool at once
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        answer = self._answer
        if answer is not None and not answer.done():
            if self._headers_done and self._until_close():
                self._finish()  # a body delimited by the end of the connection
            else:
                answer.set_exception(ConnectionClosed("closed before the answer was complete"))
        self._closed()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._answer is None or self._answer.done():
            raise BadResponse("data after the answer")
        self._begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            self._length = int(value)  # llhttp has checked it is digits
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.rstrip().lower().endswith(b"chunked")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self.parser.get_status_code()
        if self._status < 200:
            return  # an interim answer (100 Continue): llhttp then parses the real one
        self._headers_done = True
        if self._length is not None and self._length > self._limit:
            raise ResponseTooLarge()
        if self._head:
            # llhttp cannot be told a HEAD answer has no body: end here, and do not reuse.
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            raise ResponseTooLarge()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200 and not self._head:
            self.keep_alive = self.parser.should_keep_alive()
            self._finish()

    # internals

    def _begin(self) -> None:
        self._status = 0
        self._headers = []
        self._body = []
        self._size = 0
        self._length = None
        self._chunked = False
        self._headers_done = False

    def _until_close(self) -> bool:
        return not (
            self._length is not None
            or self._chunked
            or self._head
            or self._status in _NO_BODY_STATUS
        )

    def _finish(self) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            self.served += 1
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            answer.set_result(Response(self._status, tuple(self._headers), body))

    def _fail(self, error: Exception) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.close()

    def _time_out(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # no graceful close for a server that does not answer
        self._fail(TimeoutError())

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.keep_alive = False
            if self.registered:
                self._on_close(self)
