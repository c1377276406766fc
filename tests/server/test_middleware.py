"""The middleware alone, on a small aiohttp app over loopback: request ids, the error mapping
(ours, aiohttp's and unexpected ones) and the client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.errors import NotEntitled, UpstreamTimeout
from proxy.server.middleware import INFO, create_middleware

Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError("secret internals: token=abc")


async def refused(request: web.Request) -> web.Response:
    raise NotEntitled()


async def slow(request: web.Request) -> web.Response:
    raise UpstreamTimeout()


async def client_address(request: web.Request) -> web.Response:
    info = request[INFO]
    return web.json_response({"client": info.client, "forwarded_for": info.forwarded_for})


@pytest.fixture
async def client(aiohttp_client: Client) -> TestClient[web.Request, web.Application]:
    proxies = (ipaddress.ip_network("127.0.0.0/8"),)
    app = web.Application(middlewares=[create_middleware(public=True, trusted_proxies=proxies)])
    app.router.add_get("/boom", boom)
    app.router.add_get("/refused", refused)
    app.router.add_get("/slow", slow)
    app.router.add_get("/client", client_address)
    return await aiohttp_client(app)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/refused", 403, "not_entitled"),
        ("/slow", 504, "upstream_timeout"),
        ("/boom", 500, "internal_error"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_every_error_is_our_json_shape(
    client: TestClient[web.Request, web.Application], path: str, status: int, code: str
) -> None:
    async with client.get(path) as resp:
        assert resp.status == status
        body = await resp.json()
    assert body["error"] == code and body["request_id"] == resp.headers["X-Request-Id"]
    assert "secret" not in body["message"] and "token" not in body["message"]


async def test_405_names_the_allowed_methods(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.post("/refused") as resp:
        assert resp.status == 405 and "GET" in resp.headers["Allow"]
        assert (await resp.json())["error"] == "method_not_allowed"


async def test_a_well_formed_request_id_is_kept_and_a_bad_one_replaced(
    client: TestClient[web.Request, web.Application],
) -> None:
    async with client.get("/refused", headers={"X-Request-Id": "player-req-0001"}) as resp:
        assert resp.headers["X-Request-Id"] == "player-req-0001"
    async with client.get("/refused", headers={"X-Request-Id": "bad id;<script>"}) as resp:
        assert len(resp.headers["X-Request-Id"]) == 32


async def test_the_client_is_the_rightmost_untrusted_forwarded_address(
    client: TestClient[web.Request, web.Application],
) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9, 198.51.100.4, 127.0.0.5"}
    async with client.get("/client", headers=headers) as resp:
        seen = await resp.json()
    assert seen["client"] == "198.51.100.4"
    assert seen["forwarded_for"].split(", ")[0] == "198.51.100.4"  # nothing the player wrote
