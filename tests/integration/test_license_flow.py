"""The gateway against both emulated providers over loopback: happy paths and routing guards."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import pytest

from proxy.dev.emulator import derive_key
from proxy.observability.metrics import REGISTRY
from proxy.server.middleware import replica_name
from tests.conftest import SEED, StackFactory, player_token

LICENSE_DRMS = ("widevine", "playready")
KID = "00112233445566778899aabbccddeeff"


def synthetic_license(provider: str, drm: str, challenge: bytes) -> bytes:
    digest = hashlib.sha256(challenge).hexdigest().encode()
    return b"EMULATED-LICENSE\n" + provider.encode() + b"\n" + drm.encode() + b"\n" + digest


@pytest.mark.parametrize("drm", LICENSE_DRMS)
@pytest.mark.parametrize(
    ("asset", "provider"),
    [("both-1", "legacy"), ("legacy-only", "legacy"), ("incoming-only", "incoming")],
)
async def test_license_reaches_the_right_provider_byte_exact(
    make_stack: StackFactory, drm: str, asset: str, provider: str
) -> None:
    stack = await make_stack()
    challenge = bytes(range(256)) * 3 + b"\r\n\x00end"
    async with stack.http.post(
        stack.url(f"/v1/license/{drm}/{asset}"),
        data=challenge,
        headers={"Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.read() == synthetic_license(provider, drm, challenge)
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["X-Request-Id"]


async def test_widevine_service_certificate_request_is_forwarded(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.post(stack.url("/v1/license/widevine/both-1"), data=b"\x08\x04") as resp:
        assert resp.status == 200
        assert await resp.read() == synthetic_license("legacy", "widevine", b"\x08\x04")


async def test_default_provider_incoming_is_refused_by_config() -> None:
    # The config guard: assets without a drmResourceId would have nowhere to go.
    from pathlib import Path

    from proxy.config import ConfigError, parse_config
    from tests.conftest import ENV, gateway_raw_config

    raw = gateway_raw_config(Path("x.db"), "http://a", "http://b")
    raw["routing"] = {"default_provider": "incoming"}
    with pytest.raises(ConfigError, match="needs a drmResourceId"):
        parse_config(raw, base_dir=Path("."), env=ENV)


async def test_clearkey_license_holds_the_derived_keys(make_stack: StackFactory) -> None:
    stack = await make_stack()
    kids = [KID, "ffeeddccbbaa99887766554433221100"]
    request = {
        "kids": [base64.urlsafe_b64encode(bytes.fromhex(k)).rstrip(b"=").decode() for k in kids],
        "type": "temporary",
    }
    for asset, resource in (("both-1", "res-both-1"), ("incoming-only", "res-inc-1")):
        async with stack.http.post(
            stack.url(f"/v1/license/clearkey/{asset}"), json=request
        ) as resp:
            assert resp.status == 200, await resp.text()
            body = json.loads(await resp.read())
        got = {
            base64.urlsafe_b64decode(k["kid"] + "==").hex(): base64.urlsafe_b64decode(k["k"] + "==")
            for k in body["keys"]
        }
        assert got == {k: derive_key(SEED, resource, k) for k in kids}


@pytest.mark.parametrize(
    ("asset", "resource"),
    [("both-1", "res-both-1"), ("legacy-only", "res-legacy-only"), ("incoming-only", "res-inc-1")],
)
async def test_aes128_key_bytes(make_stack: StackFactory, asset: str, resource: str) -> None:
    stack = await make_stack()
    async with stack.http.get(stack.url(f"/v1/keys/{asset}/{KID.upper()}")) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert resp.headers["Cache-Control"] == "no-store"
        assert await resp.read() == derive_key(SEED, resource, KID)


@pytest.mark.parametrize(
    ("trusted", "upstream_xff"),
    [
        # Direct players: what a player writes in X-Forwarded-For never travels upstream.
        ([], "127.0.0.1"),
        # Behind a trusted ingress (this peer): the client it saw, then the ingress; the
        # entry the player wrote before its own address is dropped.
        (["127.0.0.0/8"], "203.0.113.7, 127.0.0.1"),
    ],
)
async def test_forwarded_headers_reach_the_provider(
    make_stack: StackFactory, trusted: list[str], upstream_xff: str
) -> None:
    stack = await make_stack(configure=lambda raw: raw["server"].update(trusted_proxies=trusted))
    headers = {
        "X-Request-Id": "player-req-0001",
        "X-Forwarded-For": "198.51.100.66, 203.0.113.7",
        "Content-Type": "text/xml; charset=utf-8",
        "Authorization": f"Bearer {player_token(user='forwarding-test')}",
        "Cookie": "session=abc",
    }
    async with stack.http.post(
        stack.url("/v1/license/playready/both-1"), data=b"<challenge/>", headers=headers
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] == "player-req-0001"
        assert "X-Emulator" not in resp.headers
    seen = (await stack.stats(stack.legacy))["recent"][-1]
    assert seen["headers"]["X-Request-Id"] == "player-req-0001"
    assert seen["headers"]["X-Forwarded-For"] == upstream_xff
    assert seen["headers"]["Content-Type"] == "text/xml; charset=utf-8"
    # The player's credentials and cookies never travel to a provider.
    names = {n.lower() for n in seen["header_names"]}
    assert "authorization" not in names and "cookie" not in names
    assert "x-api-key" in names


async def test_malformed_request_id_is_replaced(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.post(
        stack.url("/v1/license/widevine/both-1"),
        data=b"\x08\x04",
        headers={"X-Request-Id": "bad id\twith spaces"},
    ) as resp:
        assert resp.status == 200
        assert resp.headers["X-Request-Id"] != "bad id\twith spaces"
        assert len(resp.headers["X-Request-Id"]) == 32


async def test_guards_route_and_refuse(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.post(stack.url("/v1/license/widevine/orphan"), data=b"x") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "no_provider"
    legacy_before = (await stack.stats(stack.legacy))["total"]
    incoming_before = (await stack.stats(stack.incoming))["total"]
    async with stack.http.post(stack.url("/v1/license/widevine/orphan"), data=b"x") as resp:
        assert resp.status == 503
    assert (await stack.stats(stack.legacy))["total"] == legacy_before
    assert (await stack.stats(stack.incoming))["total"] == incoming_before


CLIENT_HEADERS = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Client-Platform": "android-tv",
    "X-App-Version": "5.12.0",
}


def access_line(logs: str, request_id: str) -> dict[str, Any]:
    lines: list[dict[str, Any]] = [json.loads(line) for line in logs.splitlines()]
    access = [ln for ln in lines if ln.get("request_id") == request_id]
    assert len(access) == 1
    assert access[0]["component"] == "access"
    return access[0]


async def test_access_log_line(make_stack: StackFactory) -> None:
    stack = await make_stack(
        configure=lambda raw: raw["server"].update(trusted_proxies=["127.0.0.1"])
    )
    async with stack.http.post(
        stack.url("/v1/license/widevine/incoming-only"),
        data=b"\x08\x04",
        headers={"X-Request-Id": "req-access-log-1", **CLIENT_HEADERS},
    ) as resp:
        assert resp.status == 200
    line = access_line(stack.logs.getvalue(), "req-access-log-1")
    assert (line["drm"], line["asset_id"], line["provider"], line["status"]) == (
        "widevine",
        "incoming-only",
        "incoming",
        200,
    )
    assert line["reason"] == "guard_key_holders"
    assert line["duration_ms"] > 0 and line["upstream_ms"] > 0
    # Who asked: the client behind the trusted proxy, its platform and app, which replica.
    assert (line["client"], line["platform"], line["app_version"]) == (
        "203.0.113.7",
        "android-tv",
        "5.12.0",
    )
    assert line["replica"] == replica_name() and line["replica"]
    assert (line["error"], line["detail"]) == (None, None)


@pytest.mark.parametrize(
    ("path", "entitled", "status", "error", "detail"),
    [
        ("/v1/license/widevine/both-1", None, 401, "unauthorized", "missing_token"),
        ("/v1/license/widevine/both-1", ["other"], 403, "not_entitled", "-"),
        ("/v1/license/widevine/unknown-asset", ["*"], 404, "unknown_asset", "-"),
    ],
)
async def test_access_line_of_a_refusal_names_its_error_and_detail(
    make_stack: StackFactory,
    path: str,
    entitled: list[str] | None,
    status: int,
    error: str,
    detail: str,
) -> None:
    stack = await make_stack()
    headers = {"X-Request-Id": "req-refused-0001", **CLIENT_HEADERS}
    if entitled is not None:  # a valid token with these entitlements; else no token
        headers["Authorization"] = f"Bearer {player_token(entitled)}"
    async with stack.anon.post(stack.url(path), data=b"\x08\x04", headers=headers) as resp:
        assert resp.status == status
    line = access_line(stack.logs.getvalue(), "req-refused-0001")
    assert (line["status"], line["error"], line["detail"]) == (status, error, detail)
    # No trusted proxies: the peer is the client, and the platform headers are still named.
    assert (line["client"], line["platform"], line["app_version"]) == (
        "127.0.0.1",
        "android-tv",
        "5.12.0",
    )


async def test_fifty_concurrent_misses_make_one_backend_call(make_stack: StackFactory) -> None:
    stack = await make_stack()

    def misses() -> float:
        return (
            REGISTRY.get_sample_value("drm_gateway_catalog_lookups_total", {"result": "miss"}) or 0
        )

    before = misses()
    responses = await asyncio.gather(
        *(
            stack.http.post(stack.url("/v1/license/widevine/both-2"), data=b"\x08\x04")
            for _ in range(50)
        )
    )
    assert [r.status for r in responses] == [200] * 50
    for r in responses:
        r.release()
    assert misses() - before == 1


async def test_internal_port_health_ready_metrics(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.get(stack.internal("/healthz")) as resp:
        assert resp.status == 200
    async with stack.http.get(stack.internal("/readyz")) as resp:
        assert resp.status == 200
        assert (await resp.json())["ready"] is True
    async with stack.http.post(stack.url("/v1/license/widevine/both-1"), data=b"\x08\x04"):
        pass
    async with stack.http.get(stack.internal("/metrics")) as resp:
        text = await resp.text()
    assert 'drm_gateway_requests_total{drm="widevine",outcome="ok",provider="legacy"' in text
    # Ops routes are not served on the public port, and licenses not on the internal one.
    async with stack.http.get(stack.url("/metrics")) as resp:
        assert resp.status == 404
    async with stack.http.post(stack.internal("/v1/license/widevine/both-1"), data=b"x") as resp:
        assert resp.status == 404
