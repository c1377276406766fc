"""Per-request provider tokens, verified for real by the incoming emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from proxy.observability.metrics import REGISTRY
from proxy.upstream.signer import SigningKey, TokenContext, TokenSettings, TokenSigner
from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY,
    INCOMING_JWT_KEY_B64,
    LEGACY_API_KEY,
    StackFactory,
    gateway_raw_config,
    write_catalog,
)

INCOMING_ASSET = "/v1/license/widevine/incoming-only"


async def status_and_code(stack: Any, path: str = INCOMING_ASSET) -> tuple[int, str | None]:
    async with stack.http.post(stack.url(path), data=b"\x08\x04") as resp:
        if resp.status == 200:
            return 200, None
        return resp.status, (await resp.json())["error"]


async def test_fresh_token_accepted_every_time(make_stack: StackFactory) -> None:
    stack = await make_stack()
    before = (
        REGISTRY.get_sample_value(
            "drm_gateway_provider_tokens_signed_total", {"provider": "incoming"}
        )
        or 0
    )
    for _ in range(20):  # a reused jti would be refused as a replay
        assert await status_and_code(stack) == (200, None)
    after = REGISTRY.get_sample_value(
        "drm_gateway_provider_tokens_signed_total", {"provider": "incoming"}
    )
    assert after == before + 20
    seen = (await stack.stats(stack.incoming))["recent"][-1]
    assert "x-drm-token" in {n.lower() for n in seen["header_names"]}
    # The token goes only to the provider that wants it.
    assert await status_and_code(stack, "/v1/license/widevine/legacy-only") == (200, None)
    legacy_seen = (await stack.stats(stack.legacy))["recent"][-1]
    assert "x-drm-token" not in {n.lower() for n in legacy_seen["header_names"]}


async def test_wrong_key_is_a_502(make_stack: StackFactory) -> None:
    stack = await make_stack(incoming={"jwt_keys": {"k1": b"another-secret-of-32-bytes-long!!"}})
    assert await status_and_code(stack) == (502, "upstream_auth_failed")


async def test_expired_token_is_a_502_not_a_hang(make_stack: StackFactory, tmp_path: Path) -> None:
    def short_lived(raw: dict[str, Any]) -> None:
        raw["providers"]["incoming"]["auth"]["lifetime_seconds"] = 1

    stack = await make_stack(incoming={"clock_skew": 0.0}, configure=short_lived)
    await stack.faults(stack.incoming, latency_ms=1600)  # the emulator checks after the delay
    assert await status_and_code(stack) == (502, "upstream_auth_failed")
    codes = [r["status"] for r in (await stack.stats(stack.incoming))["recent"]]
    assert codes == [401]


async def test_missing_token_header_is_a_502(make_stack: StackFactory, tmp_path: Path) -> None:
    def no_auth(raw: dict[str, Any]) -> None:
        raw["providers"]["incoming"]["auth"] = {"type": "none"}

    stack = await make_stack(configure=no_auth)
    assert await status_and_code(stack) == (502, "upstream_auth_failed")


async def test_key_rotation_with_two_kids(make_stack: StackFactory, tmp_path: Path) -> None:
    new_key = "a7" * 32  # a raw secret of 64 characters, from a file
    (tmp_path / "k2.secret").write_text(new_key + "\n")

    def rotate(raw: dict[str, Any]) -> None:
        auth = raw["providers"]["incoming"]["auth"]
        auth["keys"].append({"kid": "k2", "secret": {"file": str(tmp_path / "k2.secret")}})
        auth["active_kid"] = "k2"

    # The provider accepts both keys while the gateway moves to the new one.
    emulator_keys = {"k1": INCOMING_JWT_KEY, "k2": new_key.encode()}
    stack = await make_stack(incoming={"jwt_keys": emulator_keys}, configure=rotate)
    assert await status_and_code(stack) == (200, None)
    await stack.incoming.stop()
    only_old = await make_stack(incoming={"jwt_keys": {"k1": INCOMING_JWT_KEY}}, configure=rotate)
    assert await status_and_code(only_old) == (502, "upstream_auth_failed")


async def test_replayed_token_is_refused_by_the_emulator(make_stack: StackFactory) -> None:
    stack = await make_stack()
    signer = TokenSigner(
        TokenSettings(
            algorithm="HS256", keys=(SigningKey("k1", INCOMING_JWT_KEY),), active_kid="k1"
        )
    )
    token = signer.sign(TokenContext("res-inc-1", "incoming-only", "widevine"))
    statuses = []
    for _ in range(2):
        async with stack.http.post(
            f"{stack.incoming.url}/license/widevine/res-inc-1",
            data=b"\x08\x04",
            headers={"X-Drm-Token": token},
        ) as resp:
            statuses.append((resp.status, (await resp.read())[:40]))
    assert statuses[0][0] == 200
    assert statuses[1][0] == 401 and b"replayed" in statuses[1][1]


async def test_no_secret_reaches_logs_errors_or_metrics(make_stack: StackFactory) -> None:
    stack = await make_stack()
    paths = [
        INCOMING_ASSET,
        "/v1/license/widevine/legacy-only",
        "/v1/license/fairplay/incoming-only",
        "/v1/license/widevine/unknown",
    ]
    bodies = []
    for path in paths:
        async with stack.http.post(stack.url(path), data=b"\x00\x00\x00\x01" + bytes(40)) as resp:
            bodies.append(await resp.text(errors="replace"))
    await stack.faults(stack.incoming, status=401)
    async with stack.http.post(stack.url(INCOMING_ASSET), data=b"\x08\x04") as resp:
        bodies.append(await resp.text())
    async with stack.http.get(stack.internal("/metrics")) as resp:
        metrics_text = await resp.text()
    logs = stack.logs.getvalue()
    assert "access" in logs  # logs were captured
    for text in (logs, metrics_text, *bodies):
        assert "eyJ" not in text  # every JWT starts with base64 of '{"'
        assert LEGACY_API_KEY not in text
        assert INCOMING_JWT_KEY_B64 not in text
        assert INCOMING_JWT_KEY.hex() not in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
    )


def test_token_sign_and_verify_cli(tmp_path: Path) -> None:
    db = write_catalog(tmp_path / "catalog.db")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_raw_config(db, "http://a", "http://b")))
    common = ("--config", str(config), "--provider", "incoming")

    def sign(asset: str) -> subprocess.CompletedProcess[str]:
        return run_cli("token", "sign", *common, "--asset", asset, "--drm", "widevine")

    def verify(asset: str, token: str) -> subprocess.CompletedProcess[str]:
        return run_cli("token", "verify", *common, "--asset", asset, token)

    signed = sign("incoming-only")
    assert signed.returncode == 0, signed.stderr
    token = signed.stdout.strip()
    assert token.count(".") == 2
    ok = verify("incoming-only", token)
    assert ok.returncode == 0 and ok.stdout.startswith("ok")
    wrong = verify("both-1", token)
    assert wrong.returncode == 1 and "drmResourceId" in wrong.stdout
    assert token not in wrong.stdout
    missing = sign("legacy-only")
    assert missing.returncode == 1 and "no drmResourceId" in missing.stderr
    assert missing.stdout == ""
