"""A sans-IO reader of HTTP/1.x answers: bytes in, a complete Response or an error out.

It holds no socket and no event loop (the `connection` module moves the bytes), so it is
tested and fuzzed without either. The parsing itself is llhttp's, through httptools (the C parser
uvicorn uses); this module keeps the state llhttp leaves to its caller: the head's fields,
the body under a size cap, the end of a body that runs to the end of the stream (httptools
has no llhttp_finish), HEAD answers (llhttp cannot be told they have no body), and whether
the stream can carry the next answer.

Framing: Content-Length, chunked (extensions ignored, trailers appended to the headers) and
close-delimited bodies; no body for HEAD, 1xx, 204 and 304; interim 1xx answers skipped.
No pipelining: bytes after a complete answer are not parsed, they only end the stream's reuse.
"""

from __future__ import annotations

from dataclasses import dataclass

import httptools

from proxy.upstream.http.errors import (
    BadResponse,
    ConnectionClosed,
    HttpClientError,
    ResponseTooLarge,
)


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


class _Stop(Exception):
    """Raised in a callback to halt llhttp once the answer is complete (HEAD, leftovers)."""


class ResponseReader:
    """Reads the answers on one stream, one request at a time.

    Call `start()` before each answer, then `feed()` the bytes as they come until it returns
    the Response (None: more bytes needed), or `feed_eof()` when the peer closes. After a
    Response, `keep_alive` says whether the stream can carry the next answer. `feed()` raises
    BadResponse (malformed, or bytes nobody asked for) or ResponseTooLarge (Content-Length or
    the body over the limit); `feed_eof()` raises ConnectionClosed unless the body was
    delimited by the close; after any error the stream carries nothing more.
    """

    __slots__ = (
        "_body",
        "_chunked",
        "_ended",
        "_head",
        "_headers",
        "_headers_done",
        "_length",
        "_limit",
        "_parser",
        "_reading",
        "_response",
        "_size",
        "_status",
        "keep_alive",
    )

    def __init__(self) -> None:
        # One llhttp state per stream: it moves from one answer to the next by itself.
        self._parser = httptools.HttpResponseParser(self)
        self.keep_alive = False
        self._reading = False  # start() was called and the answer is not complete yet
        self._ended = False  # the stream can carry no further answer
        self._response: Response | None = None
        self._head = False
        self._limit = 0
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._length: int | None = None
        self._chunked = False
        self._headers_done = False

    def start(self, *, head: bool, limit: int) -> None:
        """Expect the answer to one request: `head` if it was a HEAD (no body in its answer),
        `limit` the most body bytes accepted. ConnectionClosed if the stream is done with."""
        if self._ended or self._reading:
            raise ConnectionClosed("the connection cannot carry another answer")
        self._head, self._limit = head, limit
        self._reading, self.keep_alive, self._headers_done = True, False, False

    def feed(self, data: bytes) -> Response | None:
        """Parse the next bytes of the stream: the answer once complete, else None."""
        if not self._reading:
            self._end()
            raise BadResponse("data after the answer")
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._end()  # llhttp stays in its error state: nothing more can be parsed
            if self._response is None:
                raise _client_error(exc) from None
            # An error past a complete answer (a halt, leftovers) only ends the stream.
        response = self._response
        self._response = None
        return response

    def feed_eof(self) -> Response:
        """The peer closed: the answer if its body ran to the end of the stream, else
        ConnectionClosed."""
        until_close = self._reading and self._headers_done and self._until_close()
        self._end()
        if not until_close:
            raise ConnectionClosed("closed before the answer was complete")
        return self._take()

    # httptools callbacks (llhttp calls them from inside feed_data)

    def on_message_begin(self) -> None:
        if not self._reading:
            raise _Stop  # a second answer in the same bytes: pipelined leftovers
        self._status = 0
        self._headers = []
        self._body = []
        self._size = 0
        self._length = None
        self._chunked = False
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 14 and name.lower() == b"content-length":
            self._length = int(value)  # llhttp has checked it is digits
        elif len(name) == 17 and name.lower() == b"transfer-encoding":
            self._chunked = value.rstrip().lower().endswith(b"chunked")
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._status < 200:
            if self._status < 100:  # llhttp takes any 3 digits; this is neither interim nor final
                raise BadResponse("the status code is below 100")
            return  # an interim answer (100 Continue): llhttp then parses the real one
        self._headers_done = True
        if self._head:
            self._complete(keep_alive=False)
            raise _Stop  # llhttp would wait for a body of Content-Length bytes; do not reuse
        if self._length is not None and self._length > self._limit:
            raise ResponseTooLarge()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            raise ResponseTooLarge()
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200:
            self._complete(self._parser.should_keep_alive())

    # internals

    def _complete(self, keep_alive: bool) -> None:
        self._reading = False
        self.keep_alive = keep_alive
        self._ended = not keep_alive
        self._response = self._take()

    def _take(self) -> Response:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        return Response(self._status, tuple(self._headers), body)

    def _until_close(self) -> bool:
        # 1xx, 204, 304 and HEAD answers never get here: llhttp or on_headers_complete ended them.
        return self._length is None and not self._chunked

    def _end(self) -> None:
        self._reading = self.keep_alive = False
        self._ended = True


def _client_error(exc: Exception) -> HttpClientError:
    """The client's error for a parser failure: ours if a callback raised it."""
    cause = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError):
        return cause if isinstance(cause, HttpClientError) else BadResponse(str(exc))
    return BadResponse(type(exc).__name__)
