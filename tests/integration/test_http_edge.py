"""The HTTP edge over raw sockets: what aiohttp's parser rejects, absolute-form targets, headers.

Every answer is the gateway's JSON error with X-Request-Id and no `Server` header, on both
ports; no byte of a player token or a provider key reaches an answer or the process's output.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from proxy.dev.emulator import EmulatorSettings, start_emulator
from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY,
    LEGACY_API_KEY,
    SEED,
    Stack,
    StackFactory,
    gateway_raw_config,
    player_token,
    write_catalog,
)

ROOT = Path(__file__).resolve().parents[2]
LICENSE = "/v1/license/widevine/both-1"
KEY = "/v1/keys/both-1/00112233445566778899aabbccddeeff"


@dataclass(frozen=True)
class Answer:
    """One HTTP response as it came off the socket."""

    raw: bytes
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


async def exchange(url: str, request: bytes) -> Answer:
    """Send `request` as-is on a new connection and read one response."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
    finally:
        writer.close()
    return Answer(head + body, int(status_line.split()[1]), headers, body)


def head(target: str, token: str, *extra: str, method: str = "POST") -> str:
    """A request head carrying the player token and a provider API key, CRLF line endings."""
    lines = [
        f"{method} {target} HTTP/1.1",
        "Host: gateway.test",
        f"Authorization: Bearer {token}",
        f"X-Api-Key: {LEGACY_API_KEY}",
        *extra,
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


# name: (expected status, request built from a valid player token)
MALFORMED: dict[str, tuple[int, Callable[[str], bytes]]] = {
    "control character after the token": (
        400,
        lambda t: head(LICENSE, t + "\x01", "Content-Length: 2").encode() + b"\x08\x04",
    ),
    "NUL inside the token": (
        400,
        lambda t: head(LICENSE, t[:20] + "\x00" + t[20:], "Content-Length: 0").encode(),
    ),
    "bare LF line endings": (
        400,
        lambda t: head(LICENSE, t, "Content-Length: 2").replace("\r\n", "\n").encode() + b"ab",
    ),
    "Authorization line over 8190 bytes": (431, lambda t: head(LICENSE, t + "a" * 9000).encode()),
    "too many header fields": (
        431,
        lambda t: head(LICENSE, t, *(f"X-Token-{i}: {t}" for i in range(140))).encode(),
    ),
    "request line over 8192 bytes with ?token=": (
        414,
        lambda t: head(f"{KEY}?token={t}{'a' * 9000}", t, method="GET").encode(),
    ),
    "bad request line with ?token=": (
        400,
        lambda t: head(f"{KEY}?token={t} HTTP/1.1 extra", t, method="GET").encode(),
    ),
    "bad chunk size quoting the token": (
        400,
        lambda t: head(LICENSE, t, "Transfer-Encoding: chunked").encode() + f"zz{t}\r\n".encode(),
    ),
    "Content-Length with Transfer-Encoding": (
        400,
        lambda t: (
            head(LICENSE, t, "Content-Length: 3", "Transfer-Encoding: chunked").encode()
            + b"3\r\nabc\r\n0\r\n\r\n"
        ),
    ),
    "duplicate Content-Length": (
        400,
        lambda t: head(LICENSE, t, "Content-Length: 2", "Content-Length: 2").encode() + b"ab",
    ),
    "obsolete line folding of the token": (
        400,
        lambda t: head(LICENSE, t).replace(f"Bearer {t}", f"Bearer\r\n {t}").encode(),
    ),
    "space in a header name": (
        400,
        lambda t: head(LICENSE, t).replace("X-Api-Key:", "X-Api Key:").encode(),
    ),
    "TLS handshake carrying the token": (
        400,
        lambda t: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + t.encode() + b"\r\n\r\n",
    ),
}


def leaked(data: bytes, token: str) -> list[str]:
    """Which secrets (the token, its parts, the API key) appear in `data`."""
    _header, payload, signature = token.split(".")
    secrets = {"token": token, "payload": payload, "signature": signature}
    secrets |= {"api key": LEGACY_API_KEY, "any JWT": "eyJ"}
    return [name for name, value in secrets.items() if value.encode() in data]


def assert_ours(answer: Answer, status: int) -> None:
    """The gateway's JSON error shape, with X-Request-Id and no Server header."""
    assert answer.status == status, answer.raw[:300]
    assert answer.headers["content-type"].startswith("application/json")
    body = json.loads(answer.body)
    assert set(body) == {"error", "message", "request_id"}
    assert answer.headers["x-request-id"] == body["request_id"]
    assert "server" not in answer.headers


def both_ports(stack: Stack) -> dict[str, str]:
    return {"public": stack.gateway.public_url, "internal": stack.gateway.internal_url}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_request_gets_our_json_error(make_stack: StackFactory, case: str) -> None:
    stack = await make_stack()
    token = player_token()
    status, build = MALFORMED[case]
    for port, url in both_ports(stack).items():
        answer = await exchange(url, build(token))
        assert_ours(answer, status)
        assert leaked(answer.raw, token) == [], port
    assert leaked(stack.logs.getvalue().encode(), token) == []
    assert (await stack.stats(stack.legacy))["total"] == 0


async def test_parse_errors_leak_nothing_to_the_process_output(tmp_path: Path) -> None:
    """`serve` as in production, stdout and stderr as one stream: every line is one JSON
    object and none holds the token, its signature or the provider's API key."""
    legacy = await start_emulator(
        EmulatorSettings(kind="legacy", seed=SEED, api_key=LEGACY_API_KEY)
    )
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", seed=SEED, jwt_keys={"k1": INCOMING_JWT_KEY})
    )
    raw = gateway_raw_config(write_catalog(tmp_path / "c.db"), legacy.url, incoming.url)
    raw["log"] = {"level": "debug", "format": "json"}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)),
        cwd=ROOT,
        env=ENV | {"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output = b""
    token = player_token()
    try:
        async with asyncio.timeout(30):
            while b'"started"' not in output:
                line = await proc.stdout.readline()
                assert line, output
                output += line
        started = json.loads(output.splitlines()[-1])
        for _status, build in MALFORMED.values():
            for url in (started["public"], started["internal"]):
                await exchange(url, build(token))
        valid = head(LICENSE, token, "Content-Length: 2").encode() + b"\x08\x04"
        ok = await exchange(started["public"], valid)
        assert ok.status == 200  # a served request, so access lines are in the output too
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = await proc.communicate()
        output += rest
        await legacy.stop()
        await incoming.stop()
    lines = output.decode().splitlines()
    assert sum('"bad_http_request"' in text for text in lines) == 2 * len(MALFORMED)
    for text in lines:
        assert isinstance(json.loads(text), dict), text
    assert leaked(output, token) == []


@pytest.mark.parametrize(
    ("port", "request_head"),
    [
        ("public", f"POST http://evil.example{LICENSE} HTTP/1.1\r\nContent-Length: 2"),
        ("public", f"GET http://gateway.test{KEY}?token={{token}} HTTP/1.1"),
        ("public", f"OPTIONS http://evil.example{LICENSE} HTTP/1.1\r\nOrigin: http://a.test"),
        ("public", "CONNECT evil.example:443 HTTP/1.1"),
        ("internal", "GET http://evil.example/healthz HTTP/1.1"),
        ("internal", "GET http://evil.example/metrics HTTP/1.1"),
    ],
)
async def test_absolute_form_target_is_refused(
    make_stack: StackFactory, port: str, request_head: str
) -> None:
    stack = await make_stack()
    token = player_token()
    request = request_head.format(token=token) + (
        f"\r\nHost: gateway.test\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    answer = await exchange(both_ports(stack)[port], request.encode() + b"\x08\x04")
    assert_ours(answer, 400)
    assert json.loads(answer.body)["error"] == "bad_request"
    assert (await stack.stats(stack.legacy))["total"] == 0


@pytest.mark.parametrize(
    ("port", "request_head", "status"),
    [
        ("public", f"POST {LICENSE} HTTP/1.1\r\nContent-Length: 2", 200),
        ("public", f"GET {KEY} HTTP/1.1", 200),
        ("public", "GET /v1/certificate/fairplay HTTP/1.1", 404),
        ("public", "GET /nowhere HTTP/1.1", 404),
        ("public", f"GET {LICENSE} HTTP/1.1", 405),
        ("public", f"OPTIONS {LICENSE} HTTP/1.1\r\nOrigin: http://a.test", 403),
        ("internal", "GET /healthz HTTP/1.1", 200),
        ("internal", "GET /metrics HTTP/1.1", 200),
        ("internal", "GET /admin/rules HTTP/1.1", 401),
    ],
)
async def test_no_server_header_on_any_answer(
    make_stack: StackFactory, port: str, request_head: str, status: int
) -> None:
    stack = await make_stack()
    request = f"{request_head}\r\nHost: gateway.test\r\nConnection: close\r\n"
    if port == "public":
        request += f"Authorization: Bearer {player_token()}\r\n"
    body = b"\x08\x04" if "Content-Length" in request_head else b""
    answer = await exchange(both_ports(stack)[port], request.encode() + b"\r\n" + body)
    assert answer.status == status, answer.raw[:300]
    assert "server" not in answer.headers
    assert answer.headers["x-request-id"]
