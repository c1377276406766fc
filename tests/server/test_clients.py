"""Client hygiene over real loopback sockets: timeouts per phase, connection caps per
listener and per peer, the internal port's own room, and `Connection: close` on stop."""

from __future__ import annotations

import asyncio
import io
import json
import resource
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from proxy.config import parse_config
from proxy.config.clients import ClientSettings, ConnectionLimits
from proxy.dev.emulator import EmulatorSettings, Faults, start_emulator
from proxy.observability.metrics import REGISTRY
from proxy.server import app
from proxy.server.protocol import ClientPolicy
from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY,
    LEGACY_API_KEY,
    SEED,
    Stack,
    StackFactory,
    free_ports,
    gateway_raw_config,
    player_token,
    write_catalog,
)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
FAST = {  # small timeouts for the tests; caps large unless a test sets its own
    "first_request_timeout_seconds": 0.5,
    "header_timeout_seconds": 0.5,
    "body_timeout_seconds": 0.5,
    "keepalive_timeout_seconds": 0.5,
}
SLOW = {name: 30 for name in FAST}  # timeouts out of the way of a cap test


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def timeouts(phase: str, listener: str = "public") -> float:
    return sample("drm_gateway_client_timeouts_total", listener=listener, phase=phase)


def refused(cap: str, listener: str = "public") -> float:
    return sample("drm_gateway_connections_refused_total", listener=listener, cap=cap)


async def gateway(make_stack: StackFactory, **clients: Any) -> Stack:
    def configure(raw: dict[str, Any]) -> None:
        raw["server"]["clients"] = clients

    return await make_stack(configure=configure)


async def connect(url: str, source: str = "127.0.0.1") -> Streams:
    parts = urlsplit(url)
    return await asyncio.open_connection(parts.hostname, parts.port, local_addr=(source, 0))


async def closed(reader: asyncio.StreamReader, within: float = 5.0) -> bytes:
    """Everything the server sent until it closed the connection (fails if it stays open)."""
    data = b""
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: status, headers, body."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def license_head(stack: Stack, extra: str = "", asset: str = "both-1") -> bytes:
    host = urlsplit(stack.gateway.public_url).netloc
    return (
        f"POST /v1/license/widevine/{asset} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {player_token()}\r\n"
        f"Content-Type: application/octet-stream\r\n{extra}"
    ).encode()


@asynccontextmanager
async def held(url: str, count: int, source: str = "127.0.0.1") -> AsyncIterator[list[Streams]]:
    """`count` connections open (and idle) for the block, closed after."""
    streams = [await connect(url, source) for _ in range(count)]
    try:
        yield streams
    finally:
        for _, writer in streams:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)


async def open_count(expected: int) -> None:
    """Wait until the public listener counts `expected` open connections (accepts are async)."""
    async with asyncio.timeout(5):
        while sample("drm_gateway_connections_open", listener="public") != expected:
            await asyncio.sleep(0.01)


# --- timeouts --------------------------------------------------------------------------------


async def test_a_header_dripped_line_by_line_is_closed(make_stack: StackFactory) -> None:
    stack = await gateway(make_stack, **FAST)
    before = timeouts("header")
    reader, writer = await connect(stack.gateway.public_url)
    writer.write(b"GET /v1/certificate/fairplay HTTP/1.1\r\n")
    sent = 0
    try:
        for sent in range(40):  # one line every 0.1 s: each arrives well within 0.5 s
            writer.write(f"X-Drip-{sent}: a\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.1)
            if reader.at_eof():
                break
    except ConnectionError:
        pass
    assert await closed(reader) == b""  # no answer, just closed
    assert sent < 39  # closed before the head could ever finish
    assert timeouts("header") == before + 1
    writer.close()


async def test_a_connection_that_never_sends_is_closed(make_stack: StackFactory) -> None:
    stack = await gateway(make_stack, **FAST)
    before = timeouts("first_request")
    reader, writer = await connect(stack.gateway.public_url)
    assert await closed(reader) == b""
    assert timeouts("first_request") == before + 1
    writer.close()


async def test_an_idle_keepalive_connection_is_closed_after_its_answer(
    make_stack: StackFactory,
) -> None:
    stack = await gateway(make_stack, **FAST)
    before = timeouts("keepalive")
    reader, writer = await connect(stack.gateway.public_url)
    for _ in range(2):  # a second request on the same connection resets the idle clock
        writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await answer(reader)
        assert status == 404
        assert headers.get("connection", "keep-alive") != "close"
        await asyncio.sleep(0.2)
    assert await closed(reader) == b""
    assert timeouts("keepalive") == before + 1
    writer.close()


async def test_an_unfinished_body_gets_408_and_frees_its_in_flight_slot(
    make_stack: StackFactory,
) -> None:
    stack = await gateway(make_stack, **FAST)
    before = timeouts("body")
    bodies = [
        (b"Content-Length: 100\r\n\r\n", b"\x08\x04" * 5),
        (b"Transfer-Encoding: chunked\r\n\r\n", b"4\r\n\x08\x04\x08\x04\r\n"),
    ]
    for framing, partial in bodies:
        reader, writer = await connect(stack.gateway.public_url)
        writer.write(license_head(stack).rstrip(b"\r\n") + b"\r\n" + framing + partial)
        status, headers, body = await answer(reader)
        assert status == 408
        assert headers["content-type"].startswith("application/json")
        assert headers["connection"] == "close"
        error = json.loads(body)
        assert error["error"] == "request_timeout"
        assert set(error) == {"error", "message", "request_id"}
        assert await closed(reader) == b""
        writer.close()
    assert timeouts("body") == before + 2
    assert sample("drm_gateway_in_flight_requests") == 0


async def test_a_body_arriving_in_time_is_served(make_stack: StackFactory) -> None:
    stack = await gateway(make_stack, **FAST)
    reader, writer = await connect(stack.gateway.public_url)
    writer.write(license_head(stack, "Content-Length: 4\r\n\r\n") + b"\x08\x04")
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"\x08\x04")
    status, _, body = await answer(reader)
    assert status == 200, body
    writer.close()


# --- caps ------------------------------------------------------------------------------------


async def test_connections_over_the_per_client_cap_are_closed_at_once(
    make_stack: StackFactory,
) -> None:
    limits = {"max_connections": 50, "max_connections_per_client": 5}
    stack = await gateway(make_stack, **SLOW, public=limits)
    url = stack.gateway.public_url
    before = refused("max_connections_per_client")
    async with held(url, 5):
        await open_count(5)
        reader, writer = await connect(url)
        assert await closed(reader) == b""
        writer.close()
        assert refused("max_connections_per_client") == before + 1
        # Another address has its own count.
        other_reader, other_writer = await connect(url, "127.0.0.2")
        other_writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await answer(other_reader))[0] == 404
        other_writer.close()
    await open_count(0)
    reader, writer = await connect(url)  # room again once they are gone
    writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answer(reader))[0] == 404
    writer.close()


async def test_connections_over_the_overall_cap_are_closed_at_once(
    make_stack: StackFactory,
) -> None:
    limits = {"max_connections": 20, "max_connections_per_client": 10}
    stack = await gateway(make_stack, **SLOW, public=limits)
    url = stack.gateway.public_url
    before = refused("max_connections")
    async with held(url, 10, "127.0.0.1"), held(url, 10, "127.0.0.2"):
        await open_count(20)
        reader, writer = await connect(url, "127.0.0.3")
        assert await closed(reader) == b""
        writer.close()
    assert refused("max_connections") == before + 1


async def test_the_internal_port_answers_while_the_public_port_is_full(
    make_stack: StackFactory,
) -> None:
    limits = {"max_connections": 200, "max_connections_per_client": 200}
    stack = await gateway(make_stack, **SLOW, public=limits)
    url = stack.gateway.public_url
    before = refused("max_connections")
    async with held(url, 200):
        await open_count(200)
        async with held(url, 50):  # over the cap: each closed at once
            pass
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(stack.internal(path)) as resp:
                    assert resp.status == 200, path
            async with http.get(stack.internal("/metrics")) as resp:
                text = await resp.text()
        assert 'drm_gateway_connections_open{listener="public"} 200.0' in text
    assert refused("max_connections") >= before + 50
    assert "drm_gateway_connections_refused_total" in text


# --- stopping --------------------------------------------------------------------------------


async def test_stop_answers_a_keepalive_request_in_flight_with_connection_close(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(legacy={"faults": Faults(latency_ms=600)})
    reader, writer = await connect(stack.gateway.public_url)
    writer.write(license_head(stack, "Content-Length: 2\r\n\r\n") + b"\x08\x04")
    idle_reader, idle_writer = await connect(stack.gateway.public_url)
    idle_writer.write(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await answer(idle_reader))[0] == 404  # now an idle keep-alive connection
    await asyncio.sleep(0.2)  # the license request waits on the slow provider
    stopping = asyncio.create_task(stack.gateway.stop())
    assert await closed(idle_reader, within=2) == b""  # idle: closed at once
    status, headers, body = await answer(reader)
    assert status == 200, body
    assert body.startswith(b"EMULATED-LICENSE")
    assert headers["connection"] == "close"
    assert await closed(reader) == b""
    await stopping
    writer.close()
    idle_writer.close()


async def test_stop_still_reads_a_body_under_way_and_answers_it(
    make_stack: StackFactory,
) -> None:
    stack = await gateway(make_stack, **SLOW)
    reader, writer = await connect(stack.gateway.public_url)
    writer.write(license_head(stack, "Content-Length: 4\r\n\r\n") + b"\x08\x04")
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler waits for the rest of the body
    stopping = asyncio.create_task(stack.gateway.stop())
    await asyncio.sleep(0.2)
    writer.write(b"\x08\x04")  # aiohttp's own shutdown would no longer read this
    status, headers, body = await answer(reader)
    assert status == 200, body
    assert headers["connection"] == "close"
    assert await closed(reader) == b""
    await stopping
    writer.close()


# --- the policy alone ------------------------------------------------------------------------


def test_the_policy_counts_per_canonical_peer_and_exempts_trusted_proxies() -> None:
    import ipaddress

    policy = ClientPolicy(
        "test",
        ClientSettings(),
        ConnectionLimits(max_connections=4, max_connections_per_client=2, backlog=8),
        trusted=(ipaddress.ip_network("10.0.0.0/8"),),
    )
    assert policy.admit("192.0.2.1") == (True, "192.0.2.1")
    assert policy.admit("::ffff:192.0.2.1") == (True, "192.0.2.1")  # dual-stack: the same
    assert policy.admit("192.0.2.1") == (False, None)
    assert policy.admit("10.1.2.3") == (True, None)  # an ingress: only the overall cap
    assert policy.admit("10.1.2.3") == (True, None)
    assert policy.admit("198.51.100.7") == (False, None)  # 4 open: the overall cap
    policy.release("192.0.2.1")
    assert policy.per_client == {"192.0.2.1": 1}
    policy.release("192.0.2.1")
    assert policy.per_client == {}
    assert policy.open == 2


def test_the_soft_descriptor_limit_is_raised_and_caps_above_it_warned(
    monkeypatch: pytest.MonkeyPatch, log_buffer: io.StringIO, tmp_path: Path
) -> None:
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _: (2048, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: raised.append(limits))
    raw = gateway_raw_config(tmp_path / "c.db", "http://127.0.0.1:1", "http://127.0.0.1:2")
    app._check_descriptors(parse_config(raw, base_dir=tmp_path, env=ENV))  # 10,256 by default
    assert raised == [(4096, 4096)]
    assert "connection_caps_above_descriptor_limit" in log_buffer.getvalue()
    raw["server"]["clients"] = {"public": {"max_connections": 1000}, "internal": {}}
    log_buffer.truncate(0)
    app._check_descriptors(parse_config(raw, base_dir=tmp_path, env=ENV))
    assert "connection_caps_above_descriptor_limit" not in log_buffer.getvalue()


async def test_sigterm_answers_a_keepalive_request_in_flight_with_connection_close(
    tmp_path: Path,
) -> None:
    """The real signal path (`drm-gateway serve`), over one raw keep-alive connection."""
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy", seed=SEED, api_key=LEGACY_API_KEY, faults=Faults(latency_ms=800)
        )
    )
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", seed=SEED, jwt_keys={"k1": INCOMING_JWT_KEY})
    )
    public, internal = free_ports(2)
    raw = gateway_raw_config(write_catalog(tmp_path / "c.db"), legacy.url, incoming.url)
    raw["server"] |= {"public": {"port": public}, "internal": {"port": internal}}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "proxy.cli", "serve", "--config", str(config)),
        cwd=Path(__file__).resolve().parents[2],
        env=ENV | {"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{public}"
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(20):
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{internal}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        reader, writer = await connect(url)
        head = (
            f"POST /v1/license/widevine/both-1 HTTP/1.1\r\nHost: 127.0.0.1:{public}\r\n"
            f"Authorization: Bearer {player_token()}\r\nContent-Type: application/octet-stream\r\n"
            "Content-Length: 2\r\n\r\n"
        )
        writer.write(head.encode() + b"\x08\x04")
        await asyncio.sleep(0.4)  # waiting on the slow provider
        proc.send_signal(signal.SIGTERM)
        status, headers, body = await answer(reader)
        assert status == 200, body
        assert headers["connection"] == "close"
        assert await closed(reader) == b""
        writer.close()
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await legacy.stop()
        await incoming.stop()
