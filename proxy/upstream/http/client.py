"""A lean HTTP/1.1 client for the gateway's upstream calls.

Why not aiohttp's client: on the license hot path it cost about a quarter of the gateway's
CPU (issue 8's profile), most of it in generality the gateway never uses; with this client the
gateway's CPU per request fell from ~330-470 to ~190 us (`make bench`, 32 connections). It
does what the gateway needs and nothing more: one keep-alive pool per origin on asyncio
protocols (`connection`), responses parsed by a sans-IO reader on httptools (llhttp, the C
parser uvicorn uses; see `reader`), bodies buffered in memory under a size cap; no redirects,
cookies, decompression, proxies or pipelining. Errors are in `errors` (all in this package).

HTTP/1.1 behaviour: Content-Length, chunked and close-delimited bodies; no body for HEAD,
1xx, 204 and 304; `Connection: close` and HTTP/1.0 answers end the connection; interim 1xx
answers are skipped. A request is retried once on a fresh connection only when it cannot
have reached the server (the pooled connection was found closed before writing), or when it
is idempotent and a reused connection closed without a byte of answer (the server dropped
an idle connection while we wrote to it).

Timeouts: `total_timeout` (or a request's `timeout`) bounds connecting and the exchange. The
wait for a free connection slot counts within it, unless the request gives a
`pool_timeout`: then the wait is bounded on its own (PoolTimeout) and the timeout starts
once a slot is held, so a full pool is never mistaken for a slow server.

Errors: TimeoutError for the connect and total timeouts; HttpClientError and its subclasses
for everything else (refused, reset, TLS refused, malformed answer, answer too large, no
slot within the pool timeout). A ConnectionClosed says whether any answer byte had come.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.upstream.http.connection import Connection
from proxy.upstream.http.errors import (
    BadResponse,
    ConnectError,
    ConnectionClosed,
    HttpClientError,
    InvalidRequest,
    PoolTimeout,
    ResponseTooLarge,
)
from proxy.upstream.http.reader import Response

__all__ = [
    "Address",
    "BadResponse",
    "ConnectError",
    "ConnectionClosed",
    "HttpClient",
    "HttpClientError",
    "InvalidRequest",
    "Origin",
    "PoolTimeout",
    "Response",
    "ResponseTooLarge",
]

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # always send a Content-Length, even 0
_URL = re.compile(r"(https?)://([^/?#]+)([^#]*)", re.IGNORECASE)
_UNSAFE_TARGET = re.compile(r"[^\x21-\x7e]")  # no space, control or non-ASCII character
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SET_BY_CLIENT = frozenset({"host", "content-length", "transfer-encoding"})
_CHECKED_TOKENS_MAX = 1024


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port, parsed once (`parse_origin`)."""

    tls: bool
    host: str
    port: int
    host_header: str


# What a request is sent to: an absolute URL (parsed per request), or an origin parsed once
# with the already percent-encoded path and query (the provider URL templates' fast path).
Address = str | tuple[Origin, str]


class HttpClient:
    """Keep-alive pools (one per origin, each at most `max_connections`) and the request API.

    Waiters queue, first come first served, while a pool is at its limit. Idle connections
    are closed after `idle_timeout` seconds, and dropped as soon as the server closes them.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        connect_timeout: float = 1.0,
        total_timeout: float = 5.0,
        max_response_bytes: int = 1_048_576,
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.max_response_bytes = max_response_bytes
        self.idle_timeout = idle_timeout
        self._ssl_context = ssl_context
        self._pools: dict[Origin, _Pool] = {}
        self._closed = False

    @property
    def ssl_context(self) -> ssl.SSLContext:
        # Made on first https use: loading the system CAs takes milliseconds.
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def request(
        self,
        method: str,
        url: Address,
        *,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        timeout: float | None = None,
        pool_timeout: float | None = None,
    ) -> Response:
        """Send one request and read the whole answer, within `timeout` (default: the total
        timeout); with a `pool_timeout`, the wait for a connection slot is bounded by it
        alone and `timeout` starts once a slot is held (see the module docstring).

        `url` must be already percent-encoded (it is sent as is); an (Origin, target) pair
        skips parsing. Host and Content-Length are set here; the same names in `headers` are
        ignored. 3xx answers are returned, never followed.
        """
        if self._closed:
            raise ConnectionClosed("the client is closed")
        pool, target = self._pool_for(url) if isinstance(url, str) else self._pool_at(*url)
        data = _serialize(method, target, pool.origin.host_header, headers, body)
        loop = asyncio.get_running_loop()
        limit = self.total_timeout if timeout is None else timeout
        now = loop.time()
        # Without a pool timeout the slot wait counts within the limit, as it always did.
        deadline = None if pool_timeout is not None else now + limit
        wait_until = now + pool_timeout if pool_timeout is not None else now + limit
        head = method == "HEAD"
        for attempt in (1, 2):
            try:
                conn, deadline = await pool.acquire(wait_until, limit, deadline)
            except PoolTimeout:
                if pool_timeout is None:
                    raise TimeoutError() from None
                raise
            if conn.closed:  # went away while it was handed to us: nothing was written
                wait_until = _second_wait(loop, deadline, pool_timeout)
                continue
            reused = conn.served > 0
            try:
                answer = await conn.exchange(data, self.max_response_bytes, head, deadline)
            except ConnectionClosed as exc:
                conn.close()
                if attempt == 1 and reused and not conn.got_bytes and method in IDEMPOTENT:
                    wait_until = _second_wait(loop, deadline, pool_timeout)
                    continue
                exc.before_answer = not conn.got_bytes
                raise
            except BaseException:
                conn.close()  # the exchange is out of step: the connection cannot be reused
                raise
            pool.release(conn)
            return answer
        raise ConnectionClosed(
            "the server closed the connection before answering", before_answer=True
        )

    async def close(self) -> None:
        """Close every connection (in-flight requests fail) and wait briefly for them."""
        self._closed = True
        lost = [lost for pool in self._pools.values() for lost in pool.close_all()]
        self._pools.clear()
        if lost:
            await asyncio.wait(lost, timeout=1.0)

    def _pool_for(self, url: str) -> tuple[_Pool, str]:
        match = _URL.match(url)
        if match is None:
            raise InvalidRequest("not an absolute http(s) URL")
        scheme, authority, target = match.groups()
        if not target or target[0] == "?":
            target = "/" + target
        if _UNSAFE_TARGET.search(target):
            raise InvalidRequest("the URL path or query has unencoded characters")
        return self._pool_at(parse_origin(scheme, authority), target)

    def _pool_at(self, origin: Origin, target: str) -> tuple[_Pool, str]:
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self, origin)
        return pool, target


def _second_wait(
    loop: asyncio.AbstractEventLoop, deadline: float, pool_timeout: float | None
) -> float:
    """How long a second attempt may wait for a slot: no longer than the first could (with
    a pool timeout), and never past the exchange's deadline."""
    return deadline if pool_timeout is None else min(deadline, loop.time() + pool_timeout)


def parse_origin(scheme: str, authority: str) -> Origin:
    """The origin of `scheme://authority` (InvalidRequest if it is not a plain host[:port])."""
    scheme, authority = scheme.lower(), authority.lower()
    if "@" in authority or _UNSAFE_TARGET.search(authority):
        raise InvalidRequest("the URL authority is not a plain host[:port]")
    tls = scheme == "https"
    host, port = authority, 443 if tls else 80
    if authority.startswith("["):  # IPv6 literal
        host, _, rest = authority[1:].partition("]")
        if rest:
            port = _port(rest.removeprefix(":"))
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
        port = _port(port_text)
    if not host:
        raise InvalidRequest("the URL has no host")
    return Origin(tls, host, port, authority)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InvalidRequest("the URL port is not a number in 1..65535")
    return int(text)


_checked_tokens: set[str] = set()


def _check_token(token: str) -> None:
    """Method and header names are HTTP tokens; remembered once checked (they are few)."""
    if token in _checked_tokens:
        return
    if not _TOKEN.fullmatch(token):
        raise InvalidRequest("a method or header name is not an HTTP token")
    if len(_checked_tokens) < _CHECKED_TOKENS_MAX:
        _checked_tokens.add(token)


def _serialize(
    method: str,
    target: str,
    host: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes | None,
) -> bytes:
    """The request head and body as bytes, refusing anything that could split the request."""
    _check_token(method)
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        _check_token(name)
        if "\r" in value or "\n" in value or "\x00" in value:
            raise InvalidRequest("a header value contains CR, LF or NUL")
        if name.lower() not in _SET_BY_CLIENT:
            lines.append(f"{name}: {value}\r\n")
    if body is not None or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body) if body else 0}\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("utf-8")
    return head + body if body else head


class _Pool:
    """The connections to one origin: idle ones (most recent last), a count, the waiters."""

    def __init__(self, client: HttpClient, origin: Origin) -> None:
        self.client = client
        self.origin = origin
        self.idle: list[Connection] = []
        self.active: set[Connection] = set()
        self.count = 0  # open or being opened; never above client.max_connections
        # A waiter gets either a connection (handed over) or None (a free slot to connect).
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None

    async def acquire(
        self, wait_until: float, limit: float, deadline: float | None
    ) -> tuple[Connection, float]:
        """A live idle connection, else a new one, else wait until `wait_until` for one
        (PoolTimeout after). Returns it with the exchange's deadline: `deadline`, or when
        None, `limit` seconds from the moment a slot was held (connecting counts within)."""
        conn = self._take_idle()
        if conn is None:
            if self.count >= self.client.max_connections:
                conn = await self._wait(wait_until)
            else:
                self.count += 1
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + limit
        if conn is not None:
            return conn, deadline
        try:
            return await self._connect(deadline), deadline
        except BaseException:
            self._free_slot()
            raise

    def release(self, conn: Connection) -> None:
        """Back to the pool after a complete answer (or closed, if it must not be reused)."""
        if not conn.keep_alive or conn.closed or self.client._closed:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = asyncio.get_running_loop().time()
        self.idle.append(conn)
        if self._sweep is None:
            self._schedule_sweep()

    def forget(self, conn: Connection) -> None:
        """Called once per connection when it closes, whoever closed it."""
        self.active.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        self._free_slot()

    def close_all(self) -> list[asyncio.Future[None]]:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionClosed("the client is closed"))
        conns = list(self.active)
        for conn in conns:
            conn.close()
        return [conn.lost for conn in conns if not conn.lost.done()]

    def _take_idle(self) -> Connection | None:
        idle = self.idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since < self.client.idle_timeout and not conn.closed:
                return conn
            conn.close()
        return None

    async def _wait(self, deadline: float) -> Connection | None:
        waiter: asyncio.Future[Connection | None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except TimeoutError:
            self._give_up(waiter)
            raise PoolTimeout("no connection came free in time") from None
        except BaseException:
            self._give_up(waiter)
            raise

    def _give_up(self, waiter: asyncio.Future[Connection | None]) -> None:
        """A waiter stops waiting: what it was handed just then goes to the next one."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            # Handed a connection or a slot just as we gave up: pass it on.
            handed = waiter.result()
            if handed is None:
                self._free_slot()
            else:
                self.release(handed)
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def _free_slot(self) -> None:
        """A connection slot is free: give it to the first waiter, or count it down."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.count -= 1

    async def _connect(self, deadline: float) -> Connection:
        loop = asyncio.get_running_loop()
        origin = self.origin
        timeout = min(self.client.connect_timeout, deadline - loop.time())
        context = self.client.ssl_context if origin.tls else None
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self.forget),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(type(exc).__name__) from exc
        if conn.closed:  # closed by the server at once: the caller frees the slot
            raise ConnectionClosed("closed as soon as it was opened", before_answer=True)
        conn.registered = True  # from now on its closing frees the slot (forget)
        self.active.add(conn)
        return conn

    def _schedule_sweep(self) -> None:
        delay = self.idle[0].idle_since + self.client.idle_timeout
        self._sweep = asyncio.get_running_loop().call_at(delay, self._close_expired)

    def _close_expired(self) -> None:
        """Close connections idle for longer than idle_timeout (the oldest are first)."""
        self._sweep = None
        now = asyncio.get_running_loop().time()
        while self.idle and now - self.idle[0].idle_since >= self.client.idle_timeout:
            self.idle[0].close()  # forget() removes it from the list
        if self.idle:
            self._schedule_sweep()
