"""Two gateways sharing one Redis: the fleet view lists both and flags where they disagree,
fleet-wide admin calls are answered by both, and a stopped one leaves the list. Without
Redis the same calls say they act on one replica only."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from proxy import __version__
from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import import_to_redis
from proxy.server.admin import RULES
from tests.conftest import ADMIN_TOKEN, Stack, StackFactory, write_catalog, write_serve_config
from tests.integration.test_catalog_redis import license_status, redis_catalog
from tests.integration.test_rules_flow import ramp_rules
from tests.redis_server import RedisServer
from tests.server.test_workers import LAUNCH, Replica, start_emulators

OPS_TOKEN = "ops-token-for-the-fleet-test-4b1f"
BOUND_SECONDS = 10.0  # generous: the point is "seen", not a race against the clock
HEARTBEAT_SECONDS = 0.2


async def replica(
    make_stack: StackFactory, redis: RedisServer, rules: Path, replica_id: str
) -> Stack:
    """A gateway on the shared Redis catalog, beating every 0.2 s, polling its rules file."""
    return await make_stack(
        configure=redis_catalog(redis),
        routing={"rules_file": str(rules), "poll_seconds": 0.1},
        fleet={"replica_id": replica_id, "heartbeat_seconds": HEARTBEAT_SECONDS},
        admin={"token": {"env": "ADMIN_TOKEN"}, "tokens": {"ops-alice": {"env": "OPS_TOKEN"}}},
        env={"OPS_TOKEN": OPS_TOKEN},
    )


async def admin(
    stack: Stack, method: str, path: str, token: str = ADMIN_TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with stack.anon.request(method, stack.internal(path), headers=headers) as resp:
        return resp.status, await resp.json()


async def fleet_view(stack: Stack) -> dict[str, Any]:
    status, body = await admin(stack, "GET", "/admin/fleet")
    assert status == 200, body
    return body


async def view_until(stack: Stack, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The stack's fleet view once `wanted` holds (fails after BOUND_SECONDS)."""
    started = time.monotonic()
    while not wanted(view := await fleet_view(stack)):
        assert time.monotonic() - started < BOUND_SECONDS, view
        await asyncio.sleep(0.05)
    return view


def ids(view: dict[str, Any]) -> list[str]:
    return [entry["replica_id"] for entry in view["replicas"]]


def log_lines(stack: Stack, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == event]


async def test_two_gateways_share_one_fleet_view(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    export = write_catalog(tmp_path / "seed.db").with_suffix(".csv")
    assert not (await import_to_redis(export, RedisCatalogSettings(url=redis_server.url))).rejected
    rules_a, rules_b = tmp_path / "rules-a.yaml", tmp_path / "rules-b.yaml"
    for rules in (rules_a, rules_b):
        rules.write_text(ramp_rules("v1", 10))
    a = await replica(make_stack, redis_server, rules_a, "gw-a")
    b = await replica(make_stack, redis_server, rules_b, "gw-b")

    view = await view_until(a, lambda v: ids(v) == ["gw-a", "gw-b"])
    assert (view["scope"], view["self"], view["note"]) == ("fleet", "gw-a", None)
    assert view["agree"] and view["disagreements"] == []
    sha = a.gateway.public_app[RULES].rules.sha256  # type: ignore[union-attr]
    for entry in view["replicas"]:
        assert (entry["version"], entry["rules_version"], entry["rules_sha256"]) == (
            __version__,
            "v1",
            sha,
        )
        assert entry["catalog"] == {"backend": "redis", "ok": True}
        assert entry["circuits"]["incoming/widevine"] == "closed"
        assert entry["in_flight"] == 0 and entry["age_seconds"] >= 0
        assert entry["seen_at"].endswith("Z")
    assert (await fleet_view(b))["self"] == "gw-b"

    # One replica's rules file changes: both views say the rules differ, and where.
    rules_a.write_text(ramp_rules("v2", 50))
    view = await view_until(b, lambda v: not v["agree"])
    (rules_differ,) = view["disagreements"]
    assert rules_differ.startswith("rules differ: ")
    assert "v1 (sha256 " in rules_differ and "on gw-b" in rules_differ
    assert "v2 (sha256 " in rules_differ and "on gw-a" in rules_differ

    # A fleet-wide reload asked of B reaches A too; each answers as a plain reload would.
    rules_b.write_text(ramp_rules("v2", 50))
    status, answer = await admin(b, "POST", "/admin/rules/reload?scope=fleet", OPS_TOKEN)
    assert status == 200, answer
    assert (answer["scope"], answer["missing"]) == ("fleet", [])
    assert sorted(answer["replicas"]) == ["gw-a", "gw-b"]
    for body in answer["replicas"].values():
        assert body["result"] in ("ok", "unchanged") and body["version"] == "v2", answer
    ran_on_a = [line for line in log_lines(a, "fleet_command") if line["replica_id"] == "gw-a"]
    assert ran_on_a[-1]["requested_by"] == "gw-b"
    assert ran_on_a[-1]["who"] == "ops-alice"  # the caller, not a token, travels
    assert OPS_TOKEN not in a.logs.getvalue()
    await view_until(a, lambda v: v["agree"] and len(v["replicas"]) == 2)

    # A fleet-wide invalidation: each replica drops the title it had cached.
    for stack in (a, b):
        assert (await license_status(stack, "both-1"))[0] == 200
    status, answer = await admin(a, "POST", "/admin/cache/invalidate?scope=fleet&asset=both-1")
    assert status == 200, answer
    assert answer["replicas"] == {"gw-a": {"dropped": 1}, "gw-b": {"dropped": 1}}
    assert answer["missing"] == []

    status, error = await admin(a, "POST", "/admin/rules/reload?scope=everywhere")
    assert status == 400 and error["error"] == "bad_request" and "scope" in error["message"]

    # B stops: it leaves A's list, and a fleet-wide call is A's alone.
    await b.gateway.stop()
    await view_until(a, lambda v: ids(v) == ["gw-a"])
    status, answer = await admin(a, "POST", "/admin/cache/invalidate?scope=fleet")
    assert status == 200 and sorted(answer["replicas"]) == ["gw-a"] and answer["missing"] == []


async def test_without_redis_a_gateway_acts_on_one_replica(make_stack: StackFactory) -> None:
    stack = await make_stack()  # the SQLite catalog: no Redis
    view = await fleet_view(stack)
    assert (view["scope"], view["agree"], view["disagreements"]) == ("replica", True, [])
    assert "one replica only" in view["note"]
    (entry,) = view["replicas"]
    assert entry["replica_id"] == view["self"] and entry["catalog"]["backend"] == "sqlite"
    for path in ("/admin/rules/reload?scope=fleet", "/admin/cache/invalidate?scope=fleet"):
        status, error = await admin(stack, "POST", path)
        assert status == 409 and error["error"] == "fleet_unavailable", error
        assert "one replica only" in error["message"] and error["request_id"]
    status, body = await admin(stack, "POST", "/admin/rules/reload")
    assert status == 200 and body["scope"] == "replica"
    status, body = await admin(stack, "POST", "/admin/cache/invalidate?scope=replica")
    assert status == 200 and body["scope"] == "replica" and "dropped" in body
    status, body = await admin(stack, "POST", "/admin/cache/invalidate?scope=")
    assert status == 400


async def test_each_worker_is_a_replica_and_a_fleet_call_reaches_every_one(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    export = write_catalog(tmp_path / "seed.db").with_suffix(".csv")
    assert not (await import_to_redis(export, RedisCatalogSettings(url=redis_server.url))).rejected
    legacy, incoming = await start_emulators()
    config_file, env = write_serve_config(
        tmp_path, legacy.url, incoming.url, ramp_rules("w1", 10), poll_seconds=60
    )
    raw = yaml.safe_load(config_file.read_text())
    raw["catalog"] = {"backend": "redis", "redis": {"url": redis_server.url}}
    raw["fleet"] = {"replica_id": "gw", "heartbeat_seconds": HEARTBEAT_SECONDS}
    config_file.write_text(yaml.safe_dump(raw))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCH, str(config_file), "2",
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
    running = Replica(process, log, {})
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    # A new connection per request: the kernel picks either worker each time.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:
        ready = await running.wait_for(lambda line: line.get("event") == "workers_ready")
        internal = ready["internal"]
        started = time.monotonic()
        while True:
            async with http.get(f"{internal}/admin/fleet", headers=headers) as resp:
                view = await resp.json()
            if ids(view) == ["gw-w0", "gw-w1"]:
                break
            assert time.monotonic() - started < BOUND_SECONDS, view
            await asyncio.sleep(0.05)
        assert view["agree"] and view["self"] in ("gw-w0", "gw-w1"), view
        url = f"{internal}/admin/rules/reload?scope=fleet"
        async with http.post(url, headers=headers) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert sorted(answer["replicas"]) == ["gw-w0", "gw-w1"] and answer["missing"] == []
    finally:
        await http.close()
        await running.stop()
        await incoming.stop()
        await legacy.stop()
