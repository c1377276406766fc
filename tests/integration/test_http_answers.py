"""Answers that say what is wrong: ClearKey bodies, 405 Allow, HEAD, certificate format, 415
and Vary, against the gateway and both emulated providers over loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from proxy.dev.emulator.keys import derive_key
from tests.conftest import SEED, Stack, StackFactory, player_token

KEY_ID = "00112233445566778899aabbccddeeff"
KEY = f"/v1/keys/both-1/{KEY_ID}"
KID_B64 = base64.urlsafe_b64encode(bytes.fromhex(KEY_ID)).rstrip(b"=").decode()
CERTIFICATE = b"0\x82\x01\x0atest-der-bytes"
ORIGIN = "http://127.0.0.1:8000"


async def provider_calls(stack: Stack) -> int:
    return int(
        (await stack.stats(stack.legacy))["total"] + (await stack.stats(stack.incoming))["total"]
    )


async def json_error(resp: Any) -> dict[str, Any]:
    body: dict[str, Any] = await resp.json()
    assert set(body) == {"error", "message", "request_id"}
    assert resp.headers["X-Request-Id"] == body["request_id"]
    return body


async def raw_exchange(base_url: str, request_head: str) -> tuple[str, bytes]:
    """Send one request on a fresh connection, read until the server closes it: (head, rest)."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    host = f"Host: {url.netloc}\r\nConnection: close\r\n\r\n"
    writer.write(request_head.encode() + host.encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


# --- ClearKey bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"notjson",
        b'["not", "an", "object"]',
        b'{"kids": []}',
        b'{"kids": ["' + KEY_ID.encode() + b'"]}',
        b'{"kids": ["' + KID_B64.encode() + b'=="]}',
        b'{"kids": ["' + KID_B64.encode() + b'"], "type": "forever"}',
    ],
)
async def test_clearkey_body_not_a_license_request_is_400_before_any_provider(
    make_stack: StackFactory, body: bytes
) -> None:
    stack = await make_stack()
    async with stack.http.post(stack.url("/v1/license/clearkey/both-1"), data=body) as resp:
        assert resp.status == 400
        error = await json_error(resp)
    assert error["error"] == "bad_request"
    assert error["message"].startswith("Invalid ClearKey license request: ")
    assert body.decode() not in error["message"]
    assert await provider_calls(stack) == 0


async def test_valid_clearkey_request_is_forwarded_byte_exact(make_stack: StackFactory) -> None:
    stack = await make_stack()
    body = b'{ "type" : "temporary",\n  "kids" : [ "' + KID_B64.encode() + b'" ] }'
    async with stack.http.post(
        stack.url("/v1/license/clearkey/both-1"),
        data=body,
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        (key,) = json.loads(await resp.read())["keys"]
    assert base64.urlsafe_b64decode(key["k"] + "==") == derive_key(SEED, "res-both-1", KEY_ID)
    (seen,) = (await stack.stats(stack.legacy))["recent"]
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


# --- 405, HEAD ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "method", "path", "allow"),
    [
        ("public", "GET", "/v1/license/widevine/both-1", {"POST"}),
        ("public", "PUT", KEY, {"GET", "HEAD"}),
        ("public", "DELETE", "/v1/certificate/fairplay", {"GET", "HEAD"}),
        ("internal", "POST", "/healthz", {"GET", "HEAD"}),
        ("internal", "GET", "/admin/rules/reload", {"POST"}),
    ],
)
async def test_405_carries_allow_and_the_json_shape(
    make_stack: StackFactory, port: str, method: str, path: str, allow: set[str]
) -> None:
    stack = await make_stack()
    url = stack.url(path) if port == "public" else stack.internal(path)
    async with stack.http.request(method, url) as resp:
        assert resp.status == 405
        assert (await json_error(resp))["error"] == "method_not_allowed"
        assert {m.strip() for m in resp.headers["Allow"].split(",")} == allow


async def test_head_on_a_key_authenticates_and_sends_no_key(make_stack: StackFactory) -> None:
    stack = await make_stack()
    head, rest = await raw_exchange(stack.gateway.public_url, f"HEAD {KEY} HTTP/1.1\r\n")
    assert head.startswith("HTTP/1.1 401 ") and rest == b""
    assert await provider_calls(stack) == 0
    token = player_token()
    head, rest = await raw_exchange(
        stack.gateway.public_url, f"HEAD {KEY} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n"
    )
    assert head.startswith("HTTP/1.1 200 ")
    assert "Content-Length: 16" in head and "Cache-Control: no-store" in head
    assert rest == b""  # the key itself never leaves on a HEAD
    (seen,) = (await stack.stats(stack.legacy))["recent"]
    assert seen["method"] == "GET"  # one upstream fetch, as for a GET
    entitled_elsewhere = player_token(["other-asset"])
    head, rest = await raw_exchange(
        stack.gateway.public_url,
        f"HEAD {KEY} HTTP/1.1\r\nAuthorization: Bearer {entitled_elsewhere}\r\n",
    )
    assert head.startswith("HTTP/1.1 403 ") and rest == b""


async def test_head_works_where_get_does(make_stack: StackFactory, tmp_path: Path) -> None:
    cert = tmp_path / "fp.der"
    cert.write_bytes(CERTIFICATE)
    stack = await make_stack(fairplay={"certificate_file": str(cert)})
    head, rest = await raw_exchange(
        stack.gateway.public_url, "HEAD /v1/certificate/fairplay HTTP/1.1\r\n"
    )
    assert head.startswith("HTTP/1.1 200 ") and rest == b""
    assert f"Content-Length: {len(CERTIFICATE)}" in head
    admin = stack.admin_headers()
    for path, headers in [
        ("/healthz", {}),
        ("/readyz", {}),
        ("/metrics", {}),
        ("/admin/rules", admin),
        ("/admin/explain?asset=both-1&drm=widevine", admin),
        ("/admin/catalog/both-1", admin),
    ]:
        async with stack.anon.head(stack.internal(path), headers=headers) as resp:
            assert resp.status == 200, path
            assert resp.headers["X-Request-Id"]
    async with stack.anon.head(stack.internal("/admin/rules")) as resp:
        assert resp.status == 401  # HEAD needs the admin token like GET


# --- certificate format, 415 ----------------------------------------------------------------


async def test_certificate_format_is_der_base64_or_400(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    cert = tmp_path / "fp.der"
    cert.write_bytes(CERTIFICATE)
    stack = await make_stack(fairplay={"certificate_file": str(cert)})
    async with stack.http.get(stack.url("/v1/certificate/fairplay?format=der")) as resp:
        assert resp.status == 200 and await resp.read() == CERTIFICATE
    async with stack.http.get(stack.url("/v1/certificate/fairplay?format=foo")) as resp:
        assert resp.status == 400
        error = await json_error(resp)
    assert error["error"] == "bad_request"
    assert error["message"] == "format must be one of der, base64."


@pytest.mark.parametrize(
    ("drm", "listed"),
    [
        ("widevine", "application/octet-stream, application/x-protobuf (or no Content-Type)"),
        ("clearkey", "application/json, application/octet-stream, text/plain (or no"),
    ],
)
async def test_415_lists_the_accepted_types(
    make_stack: StackFactory, drm: str, listed: str
) -> None:
    stack = await make_stack()
    async with stack.http.post(
        stack.url(f"/v1/license/{drm}/both-1"),
        data=b"x",
        headers={"Content-Type": "multipart/form-data"},
    ) as resp:
        assert resp.status == 415
        error = await json_error(resp)
    assert error["error"] == "unsupported_media_type"
    assert f"not accepted for {drm} requests; send {listed}" in error["message"]


# --- Vary -------------------------------------------------------------------------------------


async def test_vary_origin_appears_once(make_stack: StackFactory) -> None:
    stack = await make_stack(cors={"allowed_origins": [ORIGIN]})
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    license_url = stack.url("/v1/license/widevine/both-1")
    async with stack.anon.options(license_url, headers=preflight) as resp:
        assert resp.status == 204
        varies = resp.headers.getall("Vary")
    assert varies == ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers"]
    for origin in (ORIGIN, "https://other.example"):
        async with stack.http.post(
            license_url, data=b"\x08\x04", headers={"Origin": origin}
        ) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Vary") == ["Origin"]
        async with stack.anon.post(
            license_url, data=b"\x08\x04", headers={"Origin": origin}
        ) as resp:
            assert resp.status == 401
            assert resp.headers.getall("Vary") == ["Origin"]
