"""No request without a valid, entitled player token reaches a provider; refusals say why;
rate limits key on the client behind trusted proxies."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from proxy.access.player_tokens import TOKEN_REFUSALS, issue_token
from proxy.observability.metrics import REGISTRY
from tests.conftest import PLAYER_SECRET, Stack, StackFactory, player_token

LICENSE = "/v1/license/widevine/both-1"
KEY = "/v1/keys/both-1/00112233445566778899aabbccddeeff"


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def alg_none_token() -> str:
    claims = {"sub": "u", "entitlements": ["*"], "exp": time.time() + 600}
    claims |= {"iss": "test-idp", "aud": "drm-gateway"}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def hs_token(secret: bytes, **kw: Any) -> str:
    return issue_token(
        secret_or_private_key=secret,
        algorithm="HS256",
        kid=None,
        user_id="u",
        entitlements=["*"],
        ttl_seconds=600,
        issuer=kw.pop("issuer", "test-idp"),
        audience=kw.pop("audience", "drm-gateway"),
        **kw,
    )


def rs_token() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return issue_token(
        secret_or_private_key=pem,
        algorithm="RS256",
        kid="k1",
        user_id="u",
        entitlements=["*"],
        ttl_seconds=600,
        issuer="test-idp",
        audience="drm-gateway",
    )


# case -> (the token, the refusal's detail in the access line and the metric)
REFUSALS: dict[str, tuple[Callable[[], str | None], str]] = {
    "no_token": (lambda: None, "missing_token"),
    "malformed": (lambda: "not.a.jwt", "malformed"),
    "garbage": (lambda: "x" * 50, "malformed"),
    "expired": (lambda: player_token(ttl=-120), "expired"),
    "not_yet_valid": (lambda: player_token(clock=lambda: time.time() + 3600), "not_yet_valid"),
    "wrong_audience": (
        lambda: hs_token(PLAYER_SECRET.encode(), audience="someone-else"),
        "wrong_audience",
    ),
    "wrong_issuer": (lambda: hs_token(PLAYER_SECRET.encode(), issuer="evil-idp"), "wrong_issuer"),
    "alg_none": (alg_none_token, "alg_not_allowed"),
    "rs256_not_allowed": (rs_token, "alg_not_allowed"),
    "bad_signature": (lambda: hs_token(b"a-different-secret-of-32-bytes-xx"), "bad_signature"),
    "lifetime_too_long": (lambda: player_token(ttl=400 * 86_400), "lifetime_too_long"),
}


def refused_count(detail: str) -> float:
    labels = {"reason": "unauthorized", "detail": detail}
    return REGISTRY.get_sample_value("drm_gateway_refused_requests_total", labels) or 0.0


async def emulator_total(stack: Stack) -> int:
    return int((await stack.stats(stack.legacy))["total"]) + int(
        (await stack.stats(stack.incoming))["total"]
    )


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_tokens_never_reach_a_provider(make_stack: StackFactory, case: str) -> None:
    stack = await make_stack()
    factory, detail = REFUSALS[case]
    token = factory()
    before = refused_count(detail)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=headers) as resp:
        assert resp.status == 401, case
        body = await resp.json()
    assert body["error"] == "unauthorized"
    if token:
        assert token not in json.dumps(body)
    async with stack.anon.get(stack.url(KEY), params={"token": token} if token else None) as resp:
        assert resp.status == 401
    assert await emulator_total(stack) == 0
    refused = [json.loads(x) for x in stack.logs.getvalue().splitlines() if '"access"' in x]
    assert [(x["drm"], x["asset_id"], x["status"], x["error"], x["detail"]) for x in refused] == [
        ("widevine", "both-1", 401, "unauthorized", detail),
        ("aes128", "both-1", 401, "unauthorized", detail),
    ]
    # drm_gateway_refused_requests_total{reason="unauthorized", detail=...} says which refusal.
    assert refused_count(detail) - before == 2
    async with stack.anon.get(stack.internal("/metrics")) as resp:
        assert f'detail="{detail}",reason="unauthorized"' in await resp.text()


def test_every_token_refusal_detail_is_bounded() -> None:
    assert {detail for _, detail in REFUSALS.values()} <= set(TOKEN_REFUSALS.values())


async def test_not_entitled_is_403(make_stack: StackFactory) -> None:
    stack = await make_stack()
    headers = {"Authorization": f"Bearer {player_token(['other-*', 'both-2'])}"}
    async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=headers) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "not_entitled"
    async with stack.anon.post(
        stack.url("/v1/license/widevine/both-2"), data=b"\x08\x04", headers=headers
    ) as resp:
        assert resp.status == 200  # exact entitlement
    prefixed = {"Authorization": f"Bearer {player_token(['both-*'])}"}
    async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=prefixed) as resp:
        assert resp.status == 200  # prefix entitlement
    assert (await stack.stats(stack.legacy))["total"] == 2


async def test_key_uri_token_in_query(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.anon.get(stack.url(KEY), params={"token": player_token()}) as resp:
        assert resp.status == 200
        assert len(await resp.read()) == 16
    # The query token is accepted only on key URIs, never on license requests.
    async with stack.anon.post(
        stack.url(LICENSE), params={"token": player_token()}, data=b"\x08\x04"
    ) as resp:
        assert resp.status == 401
    assert "token=" not in stack.logs.getvalue()


async def test_user_id_reaches_the_provider_token(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.anon.post(
        stack.url("/v1/license/widevine/incoming-only"),
        data=b"\x08\x04",
        headers={"Authorization": f"Bearer {player_token(user='viewer-42')}"},
    ) as resp:
        assert resp.status == 200


async def test_rate_limit_per_user_gives_429_with_retry_after(make_stack: StackFactory) -> None:
    stack = await make_stack(rate_limit={"per_user": {"rate_per_second": 0.5, "burst": 3}})
    statuses = []
    for _ in range(5):
        async with stack.http.post(stack.url(LICENSE), data=b"\x08\x04") as resp:
            statuses.append(resp.status)
            retry_after = resp.headers.get("Retry-After")
    assert statuses == [200, 200, 200, 429, 429]
    assert retry_after is not None and int(retry_after) >= 1
    assert (await stack.stats(stack.legacy))["total"] == 3
    # Another user has their own bucket.
    other = {"Authorization": f"Bearer {player_token(user='someone-else')}"}
    async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=other) as resp:
        assert resp.status == 200


async def test_rate_limit_per_ip_before_authentication(make_stack: StackFactory) -> None:
    stack = await make_stack(rate_limit={"per_ip": {"rate_per_second": 0.5, "burst": 2}})
    statuses = []
    for _ in range(4):
        async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04") as resp:
            statuses.append(resp.status)
    assert statuses == [401, 401, 429, 429]


def trusting(*cidrs: str) -> Callable[[dict[str, Any]], None]:
    """A make_stack `configure` that sets server.trusted_proxies."""

    def configure(raw: dict[str, Any]) -> None:
        raw["server"]["trusted_proxies"] = list(cidrs)

    return configure


# Each user sends 3 requests: within every bucket's burst, so under every limit.
SMALL_LIMITS = {
    "per_user": {"rate_per_second": 1, "burst": 5},
    "per_ip": {"rate_per_second": 1, "burst": 5},
}


async def hundred_users_behind_one_ingress(stack: Stack) -> list[int]:
    """100 players, each with its own token and address, all connecting from this loopback
    peer (as through an ingress that appends the player's address to X-Forwarded-For)."""

    async def user(i: int) -> list[int]:
        headers = {
            "Authorization": f"Bearer {player_token(user=f'viewer-{i}')}",
            "X-Forwarded-For": f"203.0.113.{i}",
        }
        statuses = []
        for _ in range(3):
            async with stack.anon.post(
                stack.url(LICENSE), data=b"\x08\x04", headers=headers
            ) as resp:
                statuses.append(resp.status)
        return statuses

    return [status for each in await asyncio.gather(*map(user, range(100))) for status in each]


async def test_users_behind_a_trusted_ingress_get_a_bucket_each(make_stack: StackFactory) -> None:
    stack = await make_stack(rate_limit=SMALL_LIMITS, configure=trusting("127.0.0.0/8", "::1"))
    statuses = await hundred_users_behind_one_ingress(stack)
    assert statuses.count(429) == 0 and set(statuses) == {200}
    clients = {x["client"] for x in access_lines(stack)}
    assert clients == {f"203.0.113.{i}" for i in range(100)}


async def test_without_trusted_proxies_users_share_the_peers_bucket(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(rate_limit=SMALL_LIMITS)
    statuses = await hundred_users_behind_one_ingress(stack)
    assert statuses.count(429) > 0
    assert {x["client"] for x in access_lines(stack)} == {"127.0.0.1"}


async def test_spoofed_forwarded_for_from_an_untrusted_peer_keeps_its_bucket(
    make_stack: StackFactory,
) -> None:
    # Only 10.0.0.0/8 is trusted: this loopback peer is a player, whatever it writes.
    limits = {"per_ip": {"rate_per_second": 0.5, "burst": 2}}
    stack = await make_stack(rate_limit=limits, configure=trusting("10.0.0.0/8"))
    statuses = []
    for i in range(4):
        spoofed = {"X-Forwarded-For": f"198.51.100.{i}, 10.0.0.{i}"}
        async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=spoofed) as resp:
            statuses.append(resp.status)
    assert statuses == [401, 401, 429, 429]
    assert [(x["client"], x["error"], x["detail"]) for x in access_lines(stack)][-1] == (
        "127.0.0.1",
        "rate_limited",
        "ip",
    )


def access_lines(stack: Stack) -> list[dict[str, Any]]:
    return [
        line
        for line in map(json.loads, stack.logs.getvalue().splitlines())
        if line["component"] == "access"
    ]


async def test_cors_preflight_and_response_headers(make_stack: StackFactory) -> None:
    stack = await make_stack(cors={"allowed_origins": ["http://127.0.0.1:8000"]})
    preflight = {
        "Origin": "http://127.0.0.1:8000",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with stack.anon.options(stack.url(LICENSE), headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    async with stack.anon.options(
        stack.url(LICENSE), headers={**preflight, "Origin": "https://evil.example"}
    ) as resp:
        assert resp.status == 403
        assert (await resp.json())["error"] == "cors_refused"
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with stack.http.post(
        stack.url(LICENSE), data=b"\x08\x04", headers={"Origin": "http://127.0.0.1:8000"}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:8000"
        assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
    assert await emulator_total(stack) == 1  # preflights never reach a provider


async def test_auth_none_mode_warns_in_readyz(make_stack: StackFactory) -> None:
    stack = await make_stack(player_auth={"mode": "none"})
    async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04") as resp:
        assert resp.status == 200
    async with stack.anon.get(stack.internal("/readyz")) as resp:
        body = await resp.json()
    assert any("OFF" in w for w in body["warnings"])
    assert "player_auth_off" in stack.logs.getvalue()


async def test_missing_player_auth_section_is_a_config_error() -> None:
    from pathlib import Path

    from proxy.config import ConfigError, parse_config
    from tests.conftest import ENV, gateway_raw_config

    raw = gateway_raw_config(Path("c.db"), "http://a", "http://b")
    del raw["player_auth"]
    with pytest.raises(ConfigError, match="player_auth: is missing"):
        parse_config(raw, base_dir=Path("."), env=ENV)


async def test_no_secret_in_logs_of_an_auth_run(make_stack: StackFactory) -> None:
    stack = await make_stack()
    for factory, _ in REFUSALS.values():
        token = factory()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with stack.anon.post(stack.url(LICENSE), data=b"\x08\x04", headers=headers):
            pass
    async with stack.http.post(stack.url(LICENSE), data=b"\x08\x04"):
        pass
    logs = stack.logs.getvalue()
    assert "eyJ" not in logs and PLAYER_SECRET not in logs
