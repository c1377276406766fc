"""Tests for proxy.dev.emulator: real emulated providers on loopback, talked to with aiohttp."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.dev.emulator import (
    EmulatorSettings,
    Faults,
    RunningEmulator,
    derive_key,
    load_resource_ids,
)
from proxy.dev.emulator.cli import parse_jwt_key, settings_from_args
from proxy.dev.emulator.stats import RequestRecord, StatsRecorder
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import (
    API_KEY,
    BINARY_SPC,
    ES_KID,
    HS_KID,
    HS_SECRET,
    KEY_ID,
    SEED,
    b64url,
    error_code,
    es256_key_pair,
    form_spc,
    free_port,
    get,
    key_status,
    make_token,
    parse,
    post,
    set_faults,
    stats,
    synthetic,
    unb64url,
)

RESOURCES = {"asset-1": "res-1", "res-1": "res-1"}
Start = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start emulators from EmulatorSettings keywords; all are stopped after the test."""

    async def _start(**kwargs: Any) -> RunningEmulator:
        kwargs.setdefault("seed", SEED)
        kwargs.setdefault("resources", RESOURCES)
        if kwargs["kind"] == "legacy":
            kwargs.setdefault("api_key", API_KEY)
        return await launch(EmulatorSettings(**kwargs))

    return _start


AUTH = {"legacy": {"X-Api-Key": API_KEY}, "incoming": {"X-Drm-Token": "any-token"}}


# -- key derivation and settings ---------------------------------------------------------------


def test_derive_key_golden_vector() -> None:
    expected = hmac.new(
        b"drm-gateway-demo-seed", b"title-0001:" + KEY_ID.encode(), hashlib.sha256
    ).digest()[:16]
    assert expected.hex() == "5da177496cac49aad1a4e8b55bf93f66"
    assert derive_key(b"drm-gateway-demo-seed", "title-0001", KEY_ID) == expected
    assert derive_key(b"drm-gateway-demo-seed", "title-0001", KEY_ID.upper()) == expected
    assert derive_key(b"other-seed", "title-0001", KEY_ID) != expected


def test_load_resource_ids(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# backfill\nres-1\n\nasset-7 , res-7  # legacy addresses by asset\n")
    assert load_resource_ids(path) == {"res-1": "res-1", "asset-7": "res-7"}
    path.write_text("ok\na,b,c\n,x\n")
    with pytest.raises(ValueError, match=r"line 2.*line 3"):
        load_resource_ids(path)


def test_settings_refuse_bad_values_all_at_once() -> None:
    with pytest.raises(ValueError, match=r"api key.*HS1"):
        EmulatorSettings(kind="legacy", jwt_algorithms=("HS1",))
    with pytest.raises(ValueError, match=r"error_rate.*status"):
        Faults(error_rate=1.5, status=200)
    settings = EmulatorSettings(kind="incoming")
    assert settings.name == "incoming" and settings.accepts_all_resources


# -- licenses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["legacy", "incoming"])
@pytest.mark.parametrize(
    ("drm", "challenge"),
    [("widevine", b"\x08\x04"), ("widevine", b"\x08\x01" * 500), ("playready", b"<soap/>\xff")],
)
async def test_synthetic_license_is_exact(
    start: Start, http: aiohttp.ClientSession, kind: str, drm: str, challenge: bytes
) -> None:
    emulator = await start(kind=kind, name=f"{kind}-x")
    url = f"{emulator.url}/license/{drm}/res-1"
    status, content_type, body = await post(http, url, challenge, **AUTH[kind])
    assert (status, content_type) == (200, "application/octet-stream")
    assert body == synthetic(f"{kind}-x", drm, challenge)


@pytest.mark.parametrize("kind", ["legacy", "incoming"])
async def test_empty_challenge_is_refused(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind=kind)
    status, _, body = await post(http, f"{emulator.url}/license/widevine/res-1", b"", **AUTH[kind])
    assert (status, error_code(body)) == (400, "empty_challenge")


async def test_legacy_fairplay_form_in_ckc_tag_out(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="legacy")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (form_spc(BINARY_SPC), form_spc(BINARY_SPC, asset_id="asset 1/é")):
        url = f"{emulator.url}/license/fairplay/asset-1"
        status, content_type, answer = await post(http, url, body, **AUTH["legacy"], **form)
        assert (status, content_type) == (200, "text/plain")
        expected = base64.b64encode(synthetic("legacy", "fairplay", BINARY_SPC))
        assert answer == b"<ckc>" + expected + b"</ckc>"
    recent = (await stats(http, emulator))["recent"]
    assert recent[-1]["challenge_sha256"] == hashlib.sha256(BINARY_SPC).hexdigest()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (BINARY_SPC, "application/octet-stream"),
        (BINARY_SPC, "application/x-www-form-urlencoded"),
        (b"spc=" + base64.b64encode(BINARY_SPC), "application/x-www-form-urlencoded"),  # raw '+'
        (b"assetId=a", "application/x-www-form-urlencoded"),
        (b"spc=", "application/x-www-form-urlencoded"),
        (form_spc(BINARY_SPC), "application/octet-stream"),
    ],
)
async def test_legacy_fairplay_refuses_other_formats(
    start: Start, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    emulator = await start(kind="legacy")
    url = f"{emulator.url}/license/fairplay/res-1"
    headers = {**AUTH["legacy"], "Content-Type": content_type}
    status, _, answer = await post(http, url, body, **headers)
    assert (status, error_code(answer)) == (400, "bad_spc")


async def test_incoming_fairplay_binary_in_binary_out(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming")
    spc = b"\x00\x00\x00\x02rest-of-spc"
    headers = {**AUTH["incoming"], "Content-Type": "application/octet-stream"}
    status, content_type, answer = await post(
        http, f"{emulator.url}/license/fairplay/res-1", spc, **headers
    )
    assert (status, content_type) == (200, "application/octet-stream")
    assert answer == synthetic("incoming", "fairplay", spc)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (form_spc(BINARY_SPC), "application/x-www-form-urlencoded"),
        (form_spc(BINARY_SPC), "application/octet-stream"),
        (b"\x00\x00\x00\x03xx", "application/octet-stream"),
        (BINARY_SPC, "text/plain"),
    ],
)
async def test_incoming_fairplay_refuses_other_formats(
    start: Start, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    emulator = await start(kind="incoming")
    headers = {**AUTH["incoming"], "Content-Type": content_type}
    status, _, answer = await post(http, f"{emulator.url}/license/fairplay/res-1", body, **headers)
    assert (status, error_code(answer)) == (400, "bad_spc")


@pytest.mark.parametrize("kind", ["legacy", "incoming"])
async def test_clearkey_license_holds_derived_keys(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind=kind)
    kids = [bytes.fromhex(KEY_ID), bytes(range(16))]
    request = json.dumps({"kids": [b64url(kid) for kid in kids], "type": "temporary"}).encode()
    url = f"{emulator.url}/license/clearkey/asset-1"  # asset-1 derives from res-1
    status, content_type, body = await post(http, url, request, **AUTH[kind])
    assert (status, content_type) == (200, "application/json")
    answer = json.loads(body)
    assert answer["type"] == "temporary"
    assert [unb64url(key["kid"]) for key in answer["keys"]] == kids
    for key, kid in zip(answer["keys"], kids, strict=True):
        assert key["kty"] == "oct"
        assert unb64url(key["k"]) == derive_key(SEED, "res-1", kid.hex())


@pytest.mark.parametrize(
    "request_body",
    [
        b"not json",
        b"[]",
        b'{"kids": []}',
        b'{"kids": ["AAAA"]}',  # 3 bytes, not 16
        b'{"kids": ["!!!!!!!!!!!!!!!!!!!!!!"]}',
        b'{"kids": [7]}',
        b'{"kids": ["ABEiM0RVZneImaq7zN3u_w"], "type": "forever"}',
    ],
)
async def test_clearkey_malformed_request_is_refused(
    start: Start, http: aiohttp.ClientSession, request_body: bytes
) -> None:
    emulator = await start(kind="incoming")
    url = f"{emulator.url}/license/clearkey/res-1"
    status, _, body = await post(http, url, request_body, **AUTH["incoming"])
    assert (status, error_code(body)) == (400, "bad_clearkey_request")


# -- AES-128 keys and the key store --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["legacy", "incoming"])
async def test_aes_key_bytes(start: Start, http: aiohttp.ClientSession, kind: str) -> None:
    emulator = await start(kind=kind)
    for key_id in (KEY_ID, KEY_ID.upper()):
        url = f"{emulator.url}/keys/asset-1/{key_id}"
        status, content_type, body = await get(http, url, **AUTH[kind])
        assert (status, content_type) == (200, "application/octet-stream")
        assert body == derive_key(SEED, "res-1", KEY_ID)
    status, _, body = await get(http, f"{emulator.url}/keys/asset-1/abc", **AUTH[kind])
    assert (status, error_code(body)) == (400, "invalid_key_id")


@pytest.mark.parametrize("kind", ["legacy", "incoming"])
async def test_unknown_resource_is_404(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind=kind)
    status, _, body = await get(http, f"{emulator.url}/keys/res-9/{KEY_ID}", **AUTH[kind])
    assert (status, error_code(body)) == (404, "unknown_resource")
    url = f"{emulator.url}/license/widevine/res-9"
    status, _, body = await post(http, url, b"\x08\x04", **AUTH[kind])
    assert (status, error_code(body)) == (404, "unknown_resource")


async def test_accept_all_store_derives_from_the_resource(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming", resources=None)
    status, _, body = await get(http, f"{emulator.url}/keys/anything/{KEY_ID}", **AUTH["incoming"])
    assert status == 200 and body == derive_key(SEED, "anything", KEY_ID)


async def test_unknown_routes_and_methods_answer_json(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming")
    url = f"{emulator.url}/license/widevine2/res-1"
    status, _, body = await post(http, url, b"x", **AUTH["incoming"])
    assert (status, error_code(body)) == (404, "unknown_drm")
    status, _, body = await get(http, f"{emulator.url}/nowhere")
    assert (status, error_code(body)) == (404, "not_found")
    status, _, body = await get(http, f"{emulator.url}/license/widevine/res-1")
    assert (status, error_code(body)) == (405, "method_not_allowed")
    status, _, _ = await get(http, f"{emulator.url}/healthz")
    assert status == 200


# -- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"X-Api-Key": "wrong"}, "invalid_api_key"),
        ({"X-Api-Key": API_KEY + "x"}, "invalid_api_key"),
        ({"X-Api-Key": API_KEY, "X-Drm-Token": "leaked"}, "token_leak"),
        ({"X-Api-Key": API_KEY, "x-drm-token": ""}, "token_leak"),
    ],
)
async def test_legacy_refuses_bad_auth_and_leaked_tokens(
    start: Start, http: aiohttp.ClientSession, headers: dict[str, str], code: str
) -> None:
    emulator = await start(kind="legacy")
    status, _, body = await get(http, f"{emulator.url}/keys/res-1/{KEY_ID}", **headers)
    assert (status, error_code(body)) == (401, code)
    status, _, body = await post(http, f"{emulator.url}/license/widevine/res-1", b"c", **headers)
    assert (status, error_code(body)) == (401, code)


async def test_legacy_token_header_name_is_configurable(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="legacy", token_header="X-Other-Token")
    url = f"{emulator.url}/keys/res-1/{KEY_ID}"
    assert (await get(http, url, **{"X-Api-Key": API_KEY, "X-Drm-Token": "t"}))[0] == 200
    status, _, body = await get(http, url, **{"X-Api-Key": API_KEY, "X-Other-Token": "t"})
    assert (status, error_code(body)) == (401, "token_leak")


async def test_incoming_needs_a_token_and_ignores_an_api_key(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming")
    url = f"{emulator.url}/keys/res-1/{KEY_ID}"
    for headers in ({}, {"X-Drm-Token": "  "}, {"X-Api-Key": API_KEY}):
        status, _, body = await get(http, url, **headers)
        assert (status, error_code(body)) == (401, "missing_token")
    assert (await get(http, url, **{"X-Drm-Token": "t", "X-Api-Key": API_KEY}))[0] == 200


@pytest.fixture
async def verifying(start: Start) -> tuple[RunningEmulator, Any]:
    """An incoming emulator verifying HS256 (HS_KID) and ES256 (ES_KID) tokens."""
    private, public_pem = es256_key_pair()
    emulator = await start(
        kind="incoming",
        jwt_keys={HS_KID: HS_SECRET, ES_KID: public_pem},
        jwt_algorithms=("HS256", "ES256"),
    )
    return emulator, private


async def test_jwt_hs256_and_es256_tokens_are_accepted(
    verifying: tuple[RunningEmulator, Any], http: aiohttp.ClientSession
) -> None:
    emulator, es_private = verifying
    assert await key_status(http, emulator, make_token(HS_SECRET)) == (200, None)
    es_token = make_token(es_private, algorithm="ES256", kid=ES_KID)
    assert await key_status(http, emulator, es_token) == (200, None)
    bearer = "Bearer " + make_token(HS_SECRET)
    assert await key_status(http, emulator, bearer) == (200, None)
    token = make_token(HS_SECRET, resource="asset-1")
    status, _, _ = await post(
        http, f"{emulator.url}/license/widevine/asset-1", b"\x08\x04", **{"X-Drm-Token": token}
    )
    assert status == 200


async def test_jwt_bad_tokens_are_refused(
    verifying: tuple[RunningEmulator, Any], http: aiohttp.ClientSession
) -> None:
    emulator, _ = verifying
    now = int(time.time())
    other_private, _ = es256_key_pair()
    cases = {
        "token_expired": make_token(HS_SECRET, exp=now - 30),
        "token_not_yet_valid": make_token(HS_SECRET, nbf=now + 60),
        "invalid_signature": make_token(b"x" * 32),
        "unknown_kid": make_token(HS_SECRET, kid="nope"),
        "resource_mismatch": make_token(HS_SECRET, resource="asset-1"),
        "invalid_token": make_token(HS_SECRET, exp=None),
    }
    cases_es = {"invalid_signature": make_token(other_private, algorithm="ES256", kid=ES_KID)}
    for code, token in [*cases.items(), *cases_es.items()]:
        assert await key_status(http, emulator, token) == (401, code), code
    assert await key_status(http, emulator, make_token(HS_SECRET, kid=None)) == (
        401,
        "unknown_kid",
    )
    assert await key_status(http, emulator, make_token(HS_SECRET, jti=None)) == (
        401,
        "invalid_token",
    )
    assert await key_status(http, emulator, "not.a.jwt") == (401, "invalid_token")
    # Inside the clock skew (5 s) an expired token still passes.
    assert await key_status(http, emulator, make_token(HS_SECRET, exp=now - 2)) == (200, None)


async def test_jwt_algorithm_confusion_is_refused(
    start: Start, http: aiohttp.ClientSession
) -> None:
    _, public_pem = es256_key_pair()
    emulator = await start(kind="incoming", jwt_keys={HS_KID: HS_SECRET, ES_KID: public_pem})
    # The classic attack: an HS256 token whose HMAC secret is the public PEM of an ES256 key.
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": ES_KID}).encode())
    claims = {"drmResourceId": "res-1", "exp": int(time.time()) + 60, "jti": "j-1"}
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert await key_status(http, emulator, f"{signing_input}.{b64url(mac)}") == (
        401,
        "invalid_token",
    )
    # An algorithm outside the allowed list is refused even with the right secret.
    hs256_only = await start(
        kind="incoming", jwt_keys={HS_KID: HS_SECRET * 2}, jwt_algorithms=("HS256",)
    )
    hs512 = make_token(HS_SECRET * 2, algorithm="HS512")
    assert await key_status(http, hs256_only, hs512) == (401, "invalid_token")


async def test_jwt_nested_resource_claim(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(
        kind="incoming", jwt_keys={HS_KID: HS_SECRET}, resource_id_claim="message.drmResourceId"
    )
    nested = make_token(HS_SECRET, claim_path="message.drmResourceId")
    assert await key_status(http, emulator, nested) == (200, None)
    flat = make_token(HS_SECRET)
    assert await key_status(http, emulator, flat) == (401, "resource_mismatch")


async def test_jwt_replayed_jti_is_refused_until_reset(
    verifying: tuple[RunningEmulator, Any], http: aiohttp.ClientSession
) -> None:
    emulator, _ = verifying
    token = make_token(HS_SECRET)
    assert await key_status(http, emulator, token) == (200, None)
    assert await key_status(http, emulator, token) == (401, "replayed")
    same_jti = make_token(HS_SECRET, jti=json.loads(unb64url(token.split(".")[1]))["jti"])
    assert await key_status(http, emulator, same_jti) == (401, "replayed")
    async with http.post(f"{emulator.url}/_emulator/reset") as response:
        assert response.status == 200
    assert await key_status(http, emulator, token) == (200, None)


# -- faults ------------------------------------------------------------------------------------


async def test_latency_fault_delays_license_and_key_answers(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming", faults=Faults(latency_ms=150))
    began = time.monotonic()
    status, _, _ = await get(http, f"{emulator.url}/keys/res-1/{KEY_ID}", **AUTH["incoming"])
    assert status == 200 and time.monotonic() - began >= 0.15
    assert (await set_faults(http, emulator, latency_ms=100))[0] == 200
    began = time.monotonic()
    url = f"{emulator.url}/license/widevine/res-1"
    status, _, _ = await post(http, url, b"\x08\x04", **AUTH["incoming"])
    assert status == 200 and time.monotonic() - began >= 0.1


async def test_error_fault_answers_500_json(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(kind="legacy", faults=Faults(error_rate=1.0))
    status, content_type, body = await get(
        http, f"{emulator.url}/keys/res-1/{KEY_ID}", **AUTH["legacy"]
    )
    assert (status, content_type, error_code(body)) == (500, "application/json", "EMULATED_FAULT")
    # Faults spare the health and control routes.
    assert (await get(http, f"{emulator.url}/healthz"))[0] == 200
    assert (await stats(http, emulator))["recent"][0]["fault"] == "error"


async def test_reset_fault_resets_the_connection(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(kind="incoming")
    assert (await set_faults(http, emulator, reset_rate=1.0))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, f"{emulator.url}/license/widevine/res-1", b"c", **AUTH["incoming"])
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, f"{emulator.url}/keys/res-1/{KEY_ID}", **AUTH["incoming"])
    recent = (await stats(http, emulator))["recent"]
    assert recent[0]["status"] is None and recent[0]["fault"] == "reset"


async def test_error_json_fault_answers_200_with_an_error(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming", faults=Faults(error_json_rate=1.0))
    url = f"{emulator.url}/license/playready/res-1"
    status, content_type, body = await post(http, url, b"<challenge/>", **AUTH["incoming"])
    assert (status, content_type, error_code(body)) == (200, "application/json", "EMULATED_FAULT")


async def test_status_fault_forces_the_status(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(kind="incoming")
    assert (await set_faults(http, emulator, status=403))[0] == 200
    url = f"{emulator.url}/license/widevine/res-1"
    status, _, body = await post(http, url, b"\x08\x04", **AUTH["incoming"])
    assert (status, error_code(body)) == (403, "EMULATED_STATUS")
    status, _, _ = await get(http, f"{emulator.url}/keys/res-1/{KEY_ID}", **AUTH["incoming"])
    assert status == 403


async def test_a_forced_status_may_carry_a_retry_after(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming")
    assert (await set_faults(http, emulator, status=429, retry_after=7))[0] == 200
    url = f"{emulator.url}/license/widevine/res-1"
    async with http.post(url, data=b"\x08\x04", headers=AUTH["incoming"]) as response:
        assert (response.status, response.headers["Retry-After"]) == (429, "7")
    assert (await set_faults(http, emulator, status=503))[0] == 200
    async with http.post(url, data=b"\x08\x04", headers=AUTH["incoming"]) as response:
        assert response.status == 503 and "Retry-After" not in response.headers


async def test_fault_rates_are_deterministic_with_a_seed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(kind="incoming")
    url = f"{emulator.url}/keys/res-1/{KEY_ID}"
    runs = []
    for _ in range(2):
        assert (await set_faults(http, emulator, error_rate=0.5, seed=7))[0] == 200
        runs.append([(await get(http, url, **AUTH["incoming"]))[0] for _ in range(24)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 500}


@pytest.mark.parametrize(
    "body",
    [
        {"error_rate": 2},
        {"status": 200},
        {"latency": 5},
        {"seed": "x"},
        [1],
        {"reset_rate": True},
        {"retry_after": -1},
    ],
)
async def test_bad_fault_settings_are_refused(
    start: Start, http: aiohttp.ClientSession, body: Any
) -> None:
    emulator = await start(kind="incoming")
    async with http.post(f"{emulator.url}/_emulator/faults", json=body) as response:
        assert response.status == 400
        assert error_code(await response.read()) == "bad_faults"
    async with http.get(f"{emulator.url}/_emulator/faults") as response:
        assert await response.json() == Faults().as_json()


# -- stats and reset ---------------------------------------------------------------------------


async def test_stats_record_requests_without_secret_values(
    start: Start, http: aiohttp.ClientSession
) -> None:
    legacy = await start(kind="legacy")
    headers = {
        **AUTH["legacy"],
        "X-Request-Id": "req-1",
        "X-Forwarded-For": "203.0.113.9",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "Content-Type": "application/octet-stream",
    }
    challenge = b"\x08\x04"
    await post(http, f"{legacy.url}/license/widevine/res-1", challenge, **headers)
    await get(http, f"{legacy.url}/keys/res-1/{KEY_ID}", **{"X-Api-Key": "wrong"})
    data = await stats(http, legacy)
    assert data["total"] == 2
    assert {"route": "license", "drm": "widevine", "status": 200, "count": 1} in data["by_route"]
    assert {"route": "keys", "drm": None, "status": 401, "count": 1} in data["by_route"]
    first, second = data["recent"]
    assert first["method"] == "POST" and first["path"] == "/license/widevine/res-1"
    assert (first["drm"], first["resource"], first["status"]) == ("widevine", "res-1", 200)
    assert first["challenge_sha256"] == hashlib.sha256(challenge).hexdigest()
    assert first["headers"] == {
        "X-Request-Id": "req-1",
        "X-Forwarded-For": "203.0.113.9",
        "Content-Type": "application/octet-stream",
        "traceparent": headers["traceparent"],
    }
    assert "X-Api-Key" in first["header_names"]
    assert second["status"] == 401 and second["challenge_sha256"] is None
    serialized = json.dumps(data)
    assert API_KEY not in serialized and "wrong" not in serialized

    incoming = await start(kind="incoming")
    secret_token = "secret-token-value"
    await get(http, f"{incoming.url}/keys/res-1/{KEY_ID}", **{"X-Drm-Token": secret_token})
    data = await stats(http, incoming)
    assert "X-Drm-Token" in data["recent"][0]["header_names"]
    assert secret_token not in json.dumps(data)


def test_stats_keep_only_the_last_requests() -> None:
    recorder = StatsRecorder(history=200)
    for number in range(205):
        recorder.record(
            RequestRecord(
                method="GET",
                path=f"/keys/r/{number}",
                route="keys",
                drm=None,
                resource="r",
                status=200,
                fault=None,
                challenge_sha256=None,
                body_sha256=None,
                headers={},
                header_names=(),
            )
        )
    snapshot = recorder.snapshot()
    assert snapshot["total"] == 205 and len(snapshot["recent"]) == 200
    assert snapshot["recent"][0]["path"] == "/keys/r/5"


async def test_reset_clears_stats_and_faults(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(kind="incoming", faults=Faults(status=503))
    url = f"{emulator.url}/keys/res-1/{KEY_ID}"
    assert (await get(http, url, **AUTH["incoming"]))[0] == 503
    async with http.post(f"{emulator.url}/_emulator/reset") as response:
        assert response.status == 200
    data = await stats(http, emulator)
    assert (data["total"], data["recent"], data["faults"]) == (0, [], Faults().as_json())
    assert (await get(http, url, **AUTH["incoming"]))[0] == 200


# -- command line --------------------------------------------------------------------------------


def test_cli_builds_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMULATOR_SEED", raising=False)
    monkeypatch.setenv("LEGACY_API_KEY", "from-env")
    ids = tmp_path / "ids.txt"
    ids.write_text("asset-1,res-1\n")
    args = parse("emulate", "legacy", "--resource-ids", str(ids), "--error-rate", "0.25")
    settings = settings_from_args(args)
    assert (settings.kind, settings.name, settings.api_key) == ("legacy", "legacy", "from-env")
    assert settings.seed == b"drm-gateway-demo-seed"
    assert settings.resources == {"asset-1": "res-1"}
    assert settings.faults == Faults(error_rate=0.25)
    incoming = settings_from_args(parse("emulate", "incoming", "--seed", "s"))
    assert incoming.api_key is None and incoming.seed == b"s" and incoming.accepts_all_resources


def test_cli_parses_jwt_keys(tmp_path: Path) -> None:
    _, public_pem = es256_key_pair()
    pem_file = tmp_path / "es.pem"
    pem_file.write_text(public_pem)
    secret_file = tmp_path / "secret.bin"
    secret_file.write_bytes(b"raw-secret\n")
    assert parse_jwt_key("hs=base64:" + base64.b64encode(HS_SECRET).decode()) == ("hs", HS_SECRET)
    assert parse_jwt_key(f"es={pem_file}") == ("es", public_pem)
    assert parse_jwt_key(f"raw={secret_file}") == ("raw", b"raw-secret\n")
    for bad in ("nokid", "=x", "k=base64:!!"):
        with pytest.raises(ValueError):
            parse_jwt_key(bad)


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    port = free_port()
    script = (
        "import argparse, sys\n"
        "from proxy.dev.emulator.cli import register\n"
        "parser = argparse.ArgumentParser()\n"
        "register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    argv = [sys.executable, "-c", script, "emulate", "incoming", "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                status, _, _ = await get(http, f"{url}/keys/r/{KEY_ID}", **{"X-Drm-Token": "t"})
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
        assert status == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_cli_reports_a_bad_resource_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("a,b,c\n")
    args = parse("emulate", "incoming", "--resource-ids", str(ids))
    assert args.func(args) == 2
    assert "line 1" in capsys.readouterr().err
