"""One HTTP/1.1 client connection on an asyncio protocol: it moves bytes between the
transport and its sans-IO ResponseReader (proxy.upstream.http.reader), and owns what needs the event
loop: the deadline, closing, and telling the pool whether it can be reused. The pool and
the request API are in proxy.upstream.http.client; the errors in proxy.upstream.http.errors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from proxy.upstream.http.errors import HttpClientError
from proxy.upstream.http.reader import Response, ResponseReader


class Connection(asyncio.Protocol):
    """One connection: sends a request and hands its answer's bytes to the reader.

    `registered` is set by the pool once connected; `closed`, `served`, `keep_alive` and
    `got_bytes` tell it whether the connection can be reused or a failed request retried.
    """

    def __init__(self, on_close: Callable[[Connection], None]) -> None:
        self._on_close = on_close  # called once, if registered: the pool frees its slot
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False
        self.registered = False
        self.served = 0
        self.idle_since = 0.0
        self.keep_alive = False
        self.got_bytes = False
        self._reader = ResponseReader()
        self._answer: asyncio.Future[Response] | None = None

    async def exchange(self, data: bytes, limit: int, head: bool, deadline: float) -> Response:
        """Write one request and wait for its whole answer, failing with TimeoutError at
        `deadline` (a timer handle: cheaper on the hot path than a timeout context)."""
        assert self.transport is not None
        self._reader.start(head=head, limit=limit)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Response] = loop.create_future()
        self._answer = answer
        self.got_bytes, self.keep_alive = False, False
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
        self.got_bytes = True
        try:
            # Bytes nobody asked for are a BadResponse too: the stream is out of step.
            response = self._reader.feed(data)
        except HttpClientError as exc:
            self._fail(exc)
            return
        if response is not None:
            self._answered(response)

    def eof_received(self) -> bool | None:
        if self._answer is None or self._answer.done():
            self.close()  # the server ended an idle connection: out of the pool at once
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        answer = self._answer
        if answer is not None and not answer.done():
            try:
                self._answered(self._reader.feed_eof())  # a body delimited by the close
            except HttpClientError as error:
                answer.set_exception(error)
        self._closed()

    # internals

    def _answered(self, response: Response) -> None:
        answer = self._answer
        if answer is not None and not answer.done():
            self.served += 1
            self.keep_alive = self._reader.keep_alive
            answer.set_result(response)

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
