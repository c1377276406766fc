"""proxy.upstream.http.client against real servers on loopback: aiohttp servers for the
ordinary cases, raw asyncio servers for the odd ones (chunk extensions,
resets, HTTP/1.0, early closes)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.config.providers import UrlTemplate
from proxy.upstream.http.client import (
    BadResponse,
    ConnectError,
    ConnectionClosed,
    HttpClient,
    InvalidRequest,
    PoolTimeout,
    ResponseTooLarge,
)
from tests.certs import make_ca_and_leaf

# Answers one request (the raw bytes, head and body) on a connection: n is its index there.
# Returns whether to keep the connection open for another request.
Handler = Callable[[bytes, asyncio.StreamWriter, int], Awaitable[bool]]


@dataclass
class Raw:
    """A raw server: what it accepted and received."""

    url: str = ""
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def answer(data: bytes, writer: asyncio.StreamWriter) -> bool:
    writer.write(data)
    await writer.drain()
    return True


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[..., Awaitable[Raw]]]:
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: Handler, *, tls: ssl.SSLContext | None = None) -> Raw:
        raw = Raw()

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raw.connections += 1
            writers.append(writer)
            try:
                n = 0
                while (request := await read_request(reader)) is not None:
                    raw.requests.append(request)
                    if not await handler(request, writer, n):
                        break
                    n += 1
                else:
                    raw.closed_by_client += 1
            except ConnectionError:
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=tls)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        raw.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        return raw

    yield start
    for writer in writers:
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., HttpClient]]:
    clients: list[HttpClient] = []

    def make(**kwargs: Any) -> HttpClient:
        clients.append(HttpClient(**({"total_timeout": 5.0} | kwargs)))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


async def test_content_length_and_request_head(make_client: Any) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path_qs, dict(request.headers), await request.read()))
        return web.Response(body=b"L" * 1500, headers={"X-Answer": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        port = runner.addresses[0][1]
        client = make_client()
        url = f"http://127.0.0.1:{port}/v1/lic%2Fense?a=1&b=%20"
        resp = await client.request("POST", url, headers={"X-Id": "42"}, body=b"\x08\x04")
        get = await client.request("GET", f"http://127.0.0.1:{port}?q=1")
    finally:
        await runner.cleanup()
    assert (resp.status, resp.body, resp.header("x-answer")) == (200, b"L" * 1500, "yes")
    assert resp.header("Content-Length") == "1500" and resp.header("missing", "-") == "-"
    path, headers, body = seen[0]
    assert (path, body) == ("/v1/lic%2Fense?a=1&b=%20", b"\x08\x04")
    assert headers["Host"] == f"127.0.0.1:{port}" and headers["Content-Length"] == "2"
    assert headers["X-Id"] == "42" and "Transfer-Encoding" not in headers
    assert seen[1][0] == "/?q=1" and "Content-Length" not in seen[1][1]
    assert get.status == 200


async def test_chunked_many_small_chunks_extensions_and_trailer(
    raw_server: Any, make_client: Any
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(500):
            writer.write(b'1;ext=%d;name="v"\r\n%c\r\n' % (i, 97 + i % 26))
            if i % 50 == 0:
                await writer.drain()  # spread the body over many reads
        writer.write(b"3\r\nend\r\n0\r\nX-Trailer: t\r\n\r\n")
        return await answer(b"", writer)

    raw = await raw_server(handler)
    client = make_client()
    expected = bytes(97 + i % 26 for i in range(500)) + b"end"
    for _ in range(3):
        resp = await client.request("GET", raw.url + "/chunks")
        assert (resp.status, resp.body) == (200, expected)
    assert raw.connections == 1  # the chunked answer was read to its end, then reused


async def test_keep_alive_reuses_one_connection(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(ok(b"answer-%d" % n), writer)

    raw = await raw_server(handler)
    client = make_client()
    bodies = [(await client.request("POST", raw.url + "/x", body=b"b")).body for _ in range(20)]
    assert bodies == [b"answer-%d" % n for n in range(20)]
    assert raw.connections == 1


async def test_an_origin_parsed_once_shares_the_pool_of_its_url(
    raw_server: Any, make_client: Any
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(ok(b"answer-%d" % n), writer)

    raw = await raw_server(handler)
    template = UrlTemplate.parse(raw.url + "/license/{drm}/{asset_id}?v=1")
    address = template.address({"drm": "widevine", "asset_id": "a b/c"})
    assert isinstance(address, tuple)
    origin, target = address
    assert (origin.host, origin.tls, target) == (
        "127.0.0.1",
        False,
        "/license/widevine/a%20b%2Fc?v=1",
    )
    client = make_client()
    first = await client.request("POST", address, body=b"b")
    second = await client.request("POST", template.render({"drm": "x", "asset_id": "y"}))
    assert (first.body, second.body) == (b"answer-0", b"answer-1")
    assert raw.connections == 1
    assert raw.requests[0].startswith(b"POST /license/widevine/a%20b%2Fc?v=1 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    "template",
    ["https://{drm}.example.com/license", "http://host:{asset_id}/x"],
)
def test_a_template_with_a_placeholder_in_its_origin_renders_the_whole_url(template: str) -> None:
    parsed = UrlTemplate.parse(template)
    assert parsed.origin is None
    assert isinstance(parsed.address({"drm": "wv", "asset_id": "1"}), str)


async def test_pool_limit_queues_waiters(raw_server: Any, make_client: Any) -> None:
    gate = asyncio.Event()

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        await gate.wait()
        return await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client(max_connections=2)
    tasks = [asyncio.create_task(client.request("GET", raw.url)) for _ in range(6)]
    async with asyncio.timeout(5):
        while len(raw.requests) < 2:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # room for a third connection, were the limit not kept
    assert (raw.connections, len(raw.requests)) == (2, 2)
    gate.set()
    assert [r.status for r in await asyncio.gather(*tasks)] == [200] * 6
    assert (raw.connections, len(raw.requests)) == (2, 6)


async def test_total_timeout_covers_the_wait_for_a_connection(
    raw_server: Any, make_client: Any
) -> None:
    gate = asyncio.Event()

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        await gate.wait()
        return await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client(max_connections=1, total_timeout=0.3)
    first = asyncio.create_task(client.request("GET", raw.url))
    with pytest.raises(TimeoutError):
        await client.request("GET", raw.url)
    gate.set()
    with pytest.raises(TimeoutError):  # the slow first one times out too
        await first
    assert (await client.request("GET", raw.url)).status == 200


async def test_a_pool_timeout_bounds_the_wait_apart_from_the_exchange(
    raw_server: Any, make_client: Any
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.3)
        return await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client(max_connections=1)
    first = asyncio.create_task(client.request("GET", raw.url))
    await asyncio.sleep(0.05)
    # ~0.25 s waiting for the slot, then a 0.3 s exchange: within its 0.45 s timeout only
    # because the timeout starts once the slot is held.
    second = await client.request("GET", raw.url, timeout=0.45, pool_timeout=1.0)
    assert second.status == 200 and (await first).status == 200
    held = asyncio.create_task(client.request("GET", raw.url))
    await asyncio.sleep(0.05)
    with pytest.raises(PoolTimeout):
        await client.request("GET", raw.url, timeout=5.0, pool_timeout=0.05)
    assert (await held).status == 200
    # Without a pool timeout the wait counts within the timeout, a TimeoutError.
    held = asyncio.create_task(client.request("GET", raw.url))
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await client.request("GET", raw.url, timeout=0.1)
    assert (await held).status == 200


async def test_a_closed_connection_says_whether_an_answer_had_begun(
    raw_server: Any, make_client: Any
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if b"/half" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
            await writer.drain()
        writer.transport.abort()
        return False

    raw = await raw_server(handler)
    client = make_client()
    with pytest.raises(ConnectionClosed) as info:
        await client.request("POST", raw.url + "/none", body=b"x")
    assert info.value.before_answer
    with pytest.raises(ConnectionClosed) as info:
        await client.request("POST", raw.url + "/half", body=b"x")
    assert not info.value.before_answer


async def test_server_closing_an_idle_connection_is_detected(
    raw_server: Any, make_client: Any
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        await answer(ok(), writer)
        return False  # keep-alive answer, then the server closes (its idle timeout, say)

    raw = await raw_server(handler)
    client = make_client()
    assert (await client.request("POST", raw.url, body=b"1")).status == 200
    await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
    # A POST is never retried: it succeeds only because the closed connection was dropped.
    assert (await client.request("POST", raw.url, body=b"2")).status == 200
    assert raw.connections == 2


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_reused_connection_closed_before_answering(
    raw_server: Any, make_client: Any, method: str
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        # The second request on a connection races the server's close: no answer at all.
        return n == 0 and await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client()
    assert (await client.request(method, raw.url)).status == 200
    if method == "GET":  # idempotent: retried once on a fresh connection
        assert (await client.request(method, raw.url)).status == 200
        assert (raw.connections, len(raw.requests)) == (2, 3)
    else:  # it may have been processed: never sent twice
        with pytest.raises(ConnectionClosed):
            await client.request(method, raw.url)
        assert (raw.connections, len(raw.requests)) == (1, 2)


async def test_reset_mid_response_is_an_error(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()
        return False

    raw = await raw_server(handler)
    with pytest.raises(ConnectionClosed):
        await make_client().request("GET", raw.url)


async def test_slow_server_times_out(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nslow")  # never finished
        await asyncio.sleep(30)
        return False

    raw = await raw_server(handler)
    with pytest.raises(TimeoutError):
        await make_client(total_timeout=0.2).request("GET", raw.url)


@pytest.mark.parametrize("chunked", [False, True])
async def test_size_cap(raw_server: Any, make_client: Any, chunked: bool) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        size = int(request.split(b" ")[1][1:])
        if chunked:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(size // 10):
                writer.write(b"a\r\n0123456789\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            writer.write(b"x" * min(size, 100))  # an oversized body never arrives in full
        await writer.drain()
        return True

    raw = await raw_server(handler)
    client = make_client(max_response_bytes=100, total_timeout=3.0)
    assert len((await client.request("GET", raw.url + "/100")).body) == 100  # at the limit
    with pytest.raises(ResponseTooLarge):  # refused at once: no wait for the rest of it
        await client.request("GET", raw.url + "/110")
    assert len((await client.request("GET", raw.url + "/50")).body) == 50  # still usable


async def test_connection_close_and_http_1_0(raw_server: Any, make_client: Any) -> None:
    answers = {
        b"/close": ok(b"closing", b"Connection: close\r\n"),
        b"/http10": b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!",
        b"/until-eof": b"HTTP/1.0 200 OK\r\n\r\nread until the server closes",
    }

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        path = request.split(b" ")[1]
        await answer(answers[path], writer)
        # The server keeps the connection open: the client must close it by itself.
        return path != b"/until-eof"

    raw = await raw_server(handler)
    client = make_client()
    for path, body in [(b"/close", b"closing"), (b"/http10", b"old!")] * 2:
        assert (await client.request("GET", raw.url + path.decode())).body == body
    resp = await client.request("GET", raw.url + "/until-eof")
    assert resp.body == b"read until the server closes"
    assert (raw.connections, len(raw.requests)) == (5, 5)  # none reused, none retried
    assert raw.closed_by_client == 4


async def test_idle_connections_expire(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client(idle_timeout=0.05)
    assert (await client.request("GET", raw.url)).status == 200
    async with asyncio.timeout(5):
        while not raw.closed_by_client:  # closed by the client's idle sweep
            await asyncio.sleep(0.01)
    assert (await client.request("GET", raw.url)).status == 200
    assert (raw.connections, len(raw.requests)) == (2, 2)


async def test_bodiless_answers_keep_the_connection(raw_server: Any, make_client: Any) -> None:
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",  # 304: length is no body
        ok(b"after"),
    ]

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(answers[n], writer)

    raw = await raw_server(handler)
    client = make_client()
    got = [await client.request("GET", raw.url) for _ in range(3)]
    assert [(r.status, r.body) for r in got] == [(204, b""), (304, b""), (200, b"after")]
    assert raw.connections == 1


async def test_head_answer_has_no_body(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", writer)

    raw = await raw_server(handler)
    resp = await make_client(total_timeout=2.0).request("HEAD", raw.url)
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "1234")


async def test_head_answer_is_not_held_to_the_size_cap(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", writer)

    raw = await raw_server(handler)
    client = make_client(max_response_bytes=100, total_timeout=2.0)
    resp = await client.request("HEAD", raw.url)  # the length of a GET's body, not this one's
    assert (resp.status, resp.body, resp.header("content-length")) == (200, b"", "5000")


async def test_status_below_100_is_a_bad_response(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        # Neither interim nor final: without the check the client waited for a real answer.
        return await answer(b"HTTP/1.1 000 Zero\r\nContent-Length: 0\r\n\r\n", writer)

    raw = await raw_server(handler)
    with pytest.raises(BadResponse):
        await make_client(total_timeout=2.0).request("GET", raw.url)


async def test_redirects_are_returned_not_followed(raw_server: Any, make_client: Any) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(
            b"HTTP/1.1 302 Found\r\nLocation: /else\r\nContent-Length: 0\r\n\r\n", writer
        )

    raw = await raw_server(handler)
    resp = await make_client().request("GET", raw.url + "/start")
    assert (resp.status, resp.header("Location")) == (302, "/else")
    assert len(raw.requests) == 1


async def test_malformed_answer_and_refused_connection(
    raw_server: Any, make_client: Any, unused_tcp_port: int
) -> None:
    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(b"SMTP ready\r\n\r\n", writer)

    raw = await raw_server(handler)
    client = make_client()
    with pytest.raises(BadResponse):
        await client.request("GET", raw.url)
    with pytest.raises(ConnectError):
        await client.request("GET", f"http://127.0.0.1:{unused_tcp_port}/")


@pytest.mark.parametrize(
    ("url", "headers"),
    [
        ("http://127.0.0.1:1/a b", {}),
        ("http://127.0.0.1:1/a\r\nX: y", {}),
        ("http://user@127.0.0.1:1/", {}),
        ("ftp://127.0.0.1/", {}),
        ("http://127.0.0.1:1/", {"X-A": "v\r\nX-Injected: 1"}),
        ("http://127.0.0.1:1/", {"X-A": "v\nx"}),
        ("http://127.0.0.1:1/", {"Bad Name": "v"}),
    ],
)
async def test_unsafe_requests_are_refused(
    make_client: Any, url: str, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidRequest):
        await make_client().request("GET", url, headers=headers)


async def test_tls_verified_with_sni(raw_server: Any, make_client: Any, tmp_path: Path) -> None:
    ca, server_context = make_ca_and_leaf(tmp_path)
    sni: list[str | None] = []
    server_context.sni_callback = lambda sock, name, ctx: sni.append(name)

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        return await answer(ok(b"secret"), writer)

    raw = await raw_server(handler, tls=server_context)
    port = raw.url.rsplit(":", 1)[1]
    trusting = make_client(ssl_context=ssl.create_default_context(cafile=ca))
    for _ in range(2):
        assert (await trusting.request("GET", f"https://localhost:{port}/")).body == b"secret"
    assert sni == ["localhost"] and raw.connections == 1
    assert (await trusting.request("GET", raw.url)).status == 200  # the IP is in the SAN too
    with pytest.raises(ConnectError, match="SSLCertVerificationError"):  # the system CAs
        await make_client().request("GET", raw.url)


async def test_cancelled_request_frees_its_connection(raw_server: Any, make_client: Any) -> None:
    gate = asyncio.Event()

    async def handler(request: bytes, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 0 and b"/slow" in request:
            await gate.wait()
        return await answer(ok(), writer)

    raw = await raw_server(handler)
    client = make_client(max_connections=1, total_timeout=2.0)
    slow = asyncio.create_task(client.request("GET", raw.url + "/slow"))
    async with asyncio.timeout(5):
        while not raw.requests:
            await asyncio.sleep(0.01)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    # The half-done exchange is not reused; its slot is free for a new connection.
    assert (await client.request("GET", raw.url + "/next")).status == 200
    assert raw.connections == 2
    gate.set()
