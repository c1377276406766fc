"""What the provider transport tells the gateway's resilience: a provider asking to slow
down (429, 503 + Retry-After), failures before any answer byte, the try's limits from
TRY_LIMITS, and a full pool as its own error, not a provider timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web

from proxy.config.providers import ProviderAuth, ProviderSettings
from proxy.errors import (
    UpstreamOverloaded,
    UpstreamPoolExhausted,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.upstream.deadline import TRY_LIMITS, TryLimits
from proxy.upstream.transport import (
    MAX_RETRY_AFTER,
    ProviderTransport,
    parse_retry_after,
    status_rule,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("0", 1),  # "now" still means one second for a player
        ("7", 7),
        (" 12 ", 12),
        ("86400", MAX_RETRY_AFTER),
    ],
)
def test_retry_after_values(value: str | None, seconds: int | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == 30
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 1


def test_a_503_is_overload_only_with_a_retry_after() -> None:
    plain, advised = status_rule(503, b""), status_rule(503, b"", retry_after=True)
    assert plain is not None and type(plain.error(503)) is UpstreamUnavailable
    assert advised is not None and type(advised.error(503)) is UpstreamOverloaded
    assert advised.error(503).status == 503


@pytest.fixture
async def provider(aiohttp_server: Any) -> AsyncIterator[tuple[ProviderTransport, str]]:
    gate = asyncio.Event()

    async def answer(request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/throttled":
            return web.json_response({"errorCode": "x"}, status=429, headers={"Retry-After": "9"})
        if path == "/throttled-plain":
            return web.json_response({"errorCode": "x"}, status=429)
        if path == "/busy":
            return web.json_response({}, status=503, headers={"Retry-After": "4"})
        if path == "/slow":
            await asyncio.sleep(5)
        if path == "/held":
            await gate.wait()
        if path == "/half":  # a head and part of the body, then a reset
            response = web.StreamResponse(headers={"Content-Length": "100"})
            await response.prepare(request)
            await response.write(b"partial")
            assert request.transport is not None
            request.transport.abort()
            return response
        if path == "/reset":
            assert request.transport is not None
            request.transport.abort()
        return web.Response(body=b"license")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    settings = ProviderSettings(
        name="guarded",
        license_urls={},
        key_url=None,
        auth=ProviderAuth(),
        total_timeout=5.0,
        max_connections=1,
    )
    transport = ProviderTransport(settings)
    await transport.open()
    yield transport, str(server.make_url("/"))
    gate.set()
    await transport.close()


async def send(provider: tuple[ProviderTransport, str], path: str) -> Any:
    transport, base = provider
    return await transport.send("POST", base + path, drm="widevine", body=b"x", headers={})


async def test_a_throttling_provider_gives_its_retry_after(
    provider: tuple[ProviderTransport, str],
) -> None:
    for path, seconds in (("throttled", 9), ("throttled-plain", 1), ("busy", 4)):
        with pytest.raises(UpstreamOverloaded) as info:
            await send(provider, path)
        assert (info.value.status, info.value.retry_after) == (503, seconds)
        assert not info.value.before_answer


async def test_failures_say_whether_any_answer_byte_came(
    provider: tuple[ProviderTransport, str],
) -> None:
    with pytest.raises(UpstreamUnavailable) as info:
        await send(provider, "reset")
    assert info.value.before_answer
    with pytest.raises(UpstreamUnavailable) as info:
        await send(provider, "half")
    assert not info.value.before_answer  # part of an answer came: never retried
    transport, _ = provider
    with pytest.raises(UpstreamUnavailable) as info:  # nothing listens there
        await transport.send("POST", "http://127.0.0.1:9/", drm="widevine", headers={})
    assert info.value.before_answer


async def test_the_try_limits_bound_the_exchange(provider: tuple[ProviderTransport, str]) -> None:
    token = TRY_LIMITS.set(TryLimits(timeout=0.2, pool_wait=0.1))
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await send(provider, "slow")
    finally:
        TRY_LIMITS.reset(token)
    assert time.monotonic() - started < 1.0  # not the provider's 5 s
    assert info.value.before_answer


def _pool_timeouts() -> float:
    labels = {"provider": "guarded", "status_class": "pool_timeout", "provider_error": "-"}
    return metrics.REGISTRY.get_sample_value("drm_gateway_upstream_responses_total", labels) or 0


async def test_a_full_pool_is_its_own_error_and_not_the_providers_time(
    provider: tuple[ProviderTransport, str],
) -> None:
    held = asyncio.create_task(send(provider, "held"))  # takes the only connection
    await asyncio.sleep(0.1)
    before = _pool_timeouts()
    token = TRY_LIMITS.set(TryLimits(timeout=3.0, pool_wait=0.1))
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamPoolExhausted) as info:
            await send(provider, "fine")
    finally:
        TRY_LIMITS.reset(token)
    assert time.monotonic() - started < 1.0  # the pool wait, not the 3 s try timeout
    assert (info.value.status, info.value.retry_after) == (503, 1)
    assert _pool_timeouts() == before + 1
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)
