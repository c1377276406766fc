"""A misbehaving provider cannot redirect the gateway, flood it, or pose as TLS-verified."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.certs import make_ca_and_leaf
from tests.conftest import StackFactory

Upstream = Callable[..., Any]


@pytest.fixture
async def rogue(tmp_path: Path) -> AsyncIterator[Upstream]:
    """rogue(handler, tls=False) -> base URL of a one-route provider that misbehaves."""
    runners: list[web.AppRunner] = []

    async def start(handler: Any, *, tls: bool = False) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        # Signed by a private CA that no system trust store holds.
        context = make_ca_and_leaf(tmp_path)[1] if tls else None
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def legacy_at(url: str) -> Callable[[dict[str, Any]], None]:
    def configure(raw: dict[str, Any]) -> None:
        raw["providers"]["legacy"]["base_url"] = url
        raw["providers"]["legacy"]["max_response_bytes"] = 65_536

    return configure


async def status_code(stack: Any) -> tuple[int, str]:
    async with stack.http.post(stack.url("/v1/license/widevine/both-1"), data=b"\x08\x04") as resp:
        return resp.status, (await resp.json())["error"]


async def test_redirects_are_not_followed(make_stack: StackFactory, rogue: Upstream) -> None:
    followed: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        if request.path.startswith("/elsewhere"):
            followed.append(request.path)
            return web.Response(body=b"should never be fetched")
        raise web.HTTPFound("/elsewhere")

    stack = await make_stack(configure=legacy_at(await rogue(handler)))
    assert await status_code(stack) == (502, "upstream_bad_response")
    assert followed == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_answers_are_refused(
    make_stack: StackFactory, rogue: Upstream, chunked: bool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=b"x" * 200_000)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(50):
            await response.write(b"y" * 8_192)
        await response.write_eof()
        return response

    stack = await make_stack(configure=legacy_at(await rogue(handler)))
    assert await status_code(stack) == (502, "upstream_bad_response")


async def test_tls_is_verified(make_stack: StackFactory, rogue: Upstream) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"license from an unverified host")

    url = await rogue(handler, tls=True)
    assert url.startswith("https://")
    stack = await make_stack(configure=legacy_at(url))
    assert await status_code(stack) == (502, "upstream_unavailable")
    assert "upstream_unreachable" in stack.logs.getvalue()


async def test_oversized_request_headers_are_refused(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.post(
        stack.url("/v1/license/widevine/both-1"),
        data=b"\x08\x04",
        headers={"X-Padding": "p" * 20_000},
    ) as resp:
        assert resp.status in (400, 431)
    assert (await stack.stats(stack.legacy))["total"] == 0
