"""The fleet view's parts: its config section, replica ids, where replicas disagree, the
messages it refuses, and, against a real Redis, heartbeats that expire, replicas that do not
answer, garbage on the channel and a Redis that stops answering."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import create_client, import_to_redis
from proxy.config import ConfigError, parse_config
from proxy.config.fleet import FleetSettings
from proxy.observability.metrics import REGISTRY
from proxy.server.app import ADMISSION, CATALOG
from proxy.server.fleet import (
    FLEET,
    Fleet,
    Replica,
    _Ignored,
    disagreements,
    parse_command,
    parse_reply,
    replica_id,
)
from proxy.server.routes import GATEWAY
from tests.conftest import ADMIN_TOKEN, ENV, Stack, StackFactory, gateway_raw_config, write_catalog
from tests.integration.test_catalog_redis import redis_catalog
from tests.integration.test_fleet_two_replicas import admin, fleet_view, ids, view_until
from tests.redis_server import RedisServer

# --- config and ids --------------------------------------------------------------------------


def fleet_config(tmp_path: Path, section: Any) -> Any:
    raw = gateway_raw_config(tmp_path / "c.db", "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["fleet"] = section
    return parse_config(raw, base_dir=tmp_path, env=ENV)


def test_the_fleet_section_is_optional_and_checked(tmp_path: Path) -> None:
    assert fleet_config(tmp_path, None).fleet == FleetSettings(None, 5.0, 2.0)
    settings = fleet_config(
        tmp_path, {"replica_id": "gw-eu-1", "heartbeat_seconds": 1, "reply_timeout_seconds": 0.5}
    ).fleet
    assert settings == FleetSettings("gw-eu-1", 1.0, 0.5) and settings.ttl_seconds == 3.0
    bad = {
        "replica_id": "gw eu*",
        "heartbeat_seconds": 0,
        "reply_timeout_seconds": 31,
        "ttl": 9,
    }
    with pytest.raises(ConfigError) as caught:
        fleet_config(tmp_path, bad)
    problems = "\n".join(caught.value.problems)
    for field in ("replica_id", "heartbeat_seconds", "reply_timeout_seconds", "ttl"):
        assert f"fleet.{field}:" in problems


def test_replica_ids_differ_per_process_and_per_worker() -> None:
    default = FleetSettings()
    assert replica_id(default, pid=41, process="MainProcess").endswith("-41")
    assert replica_id(default, pid=41) != replica_id(default, pid=42)
    named = FleetSettings(replica_id="gw-a")
    assert replica_id(named, pid=41, process="MainProcess") == "gw-a"
    # Each worker of `serve --workers` is its own replica, under a name that survives a restart.
    assert replica_id(named, pid=41, process="drm-gateway-worker-3") == "gw-a-w3"
    assert replica_id(named, pid=99, process="drm-gateway-worker-3") == "gw-a-w3"


# --- disagreement --------------------------------------------------------------------------


def entry(name: str, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "replica_id": name,
        "version": "1.4.0",
        "rules_version": "v7",
        "rules_sha256": "ab" * 32,
        "catalog": {"backend": "redis", "ok": True},
        "circuits": {"incoming/widevine": "closed", "legacy/widevine": "closed"},
        "in_flight": 3,
    }
    return base | changes


def test_agreeing_replicas_have_nothing_to_say() -> None:
    assert disagreements([entry("a"), entry("b"), entry("c")]) == []
    everywhere = {"incoming/widevine": "open", "legacy/widevine": "closed"}
    assert disagreements([entry("a", circuits=everywhere), entry("b", circuits=everywhere)]) == []


def test_each_kind_of_disagreement_is_named_with_its_replicas() -> None:
    found = disagreements(
        [
            entry("a"),
            entry("b", rules_version="v8", rules_sha256="cd" * 32, version="1.5.0"),
            entry("c", catalog={"backend": "redis", "ok": False}),
            entry(
                "d",
                rules_version=None,
                rules_sha256=None,
                circuits={"incoming/widevine": "open", "legacy/widevine": "closed"},
            ),
        ]
    )
    assert found == [
        f"rules differ: no rules active on d; v7 (sha256 {'ab' * 6}) on a, c; "
        f"v8 (sha256 {'cd' * 6}) on b",
        "gateway versions differ: 1.4.0 on a, c, d; 1.5.0 on b",
        "catalog does not answer on c",
        "circuit incoming/widevine open on some replicas only: closed on a, b, c; open on d",
    ]


# --- messages ------------------------------------------------------------------------------

GOOD = {
    "id": "0123456789abcdef",
    "command": "cache.invalidate",
    "from": "gw-a",
    "who": "ops-alice",
    "args": {"asset": "both-1"},
}


def test_a_well_formed_command_is_read() -> None:
    command = parse_command(orjson.dumps(GOOD))
    assert (command.id, command.command, command.sender, command.who) == (
        "0123456789abcdef",
        "cache.invalidate",
        "gw-a",
        "ops-alice",
    )
    assert command.args == {"asset": "both-1"}


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"x" * 20_000, "larger than"),
        (orjson.dumps(GOOD | {"id": "short"}), "'id'"),
        (orjson.dumps(GOOD | {"from": "gw a"}), "'from'"),
        (orjson.dumps(GOOD | {"who": ""}), "'who'"),
        (orjson.dumps(GOOD | {"who": "a\nb"}), "'who'"),
        (orjson.dumps(GOOD | {"command": "shell"}), "unknown command"),
        (orjson.dumps(GOOD | {"args": {"asset": "../etc"}}), "'args.asset'"),
        (orjson.dumps(GOOD | {"args": {"token": "x"}}), "'args'"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "who"}), "'who'"),
    ],
)
def test_malformed_commands_are_refused_saying_why(data: bytes, why: str) -> None:
    with pytest.raises(_Ignored, match=why.replace("[", r"\[")):
        parse_command(data)


def test_replies_are_checked_too() -> None:
    good = {"id": "0123456789abcdef", "replica_id": "gw-b", "body": {"dropped": 2}}
    assert parse_reply(orjson.dumps(good)) == ("0123456789abcdef", "gw-b", {"dropped": 2})
    for bad in (good | {"body": 3}, good | {"replica_id": None}, good | {"id": "Z" * 16}):
        with pytest.raises(_Ignored):
            parse_reply(orjson.dumps(bad))


# --- against a real Redis ------------------------------------------------------------------


async def redis_stack(
    tmp_path: Path, make_stack: StackFactory, redis: RedisServer, **fleet: Any
) -> Stack:
    export = write_catalog(tmp_path / "seed.db").with_suffix(".csv")
    assert not (await import_to_redis(export, RedisCatalogSettings(url=redis.url))).rejected
    section = {"replica_id": "gw-a", "heartbeat_seconds": 0.2, **fleet}
    return await make_stack(configure=redis_catalog(redis), fleet=section)


def ghost(stack: Stack, redis: RedisServer, name: str, heartbeat: float) -> Fleet:
    """Another replica on the same Redis, built from the stack's parts, that the test drives
    by hand: it beats only when told, and answers only once started."""
    public = stack.gateway.public_app
    gateway = public[GATEWAY]
    replica = Replica(
        name,
        backend="redis",
        catalog=public[CATALOG],
        rules=gateway.rules,
        resilience=gateway.resilience,
        missing=None,
        admission=public[ADMISSION],
        ping_seconds=1.0,
    )
    settings = FleetSettings(name, heartbeat, reply_timeout_seconds=0.3)
    return Fleet(replica, create_client(RedisCatalogSettings(url=redis.url)), settings=settings)


async def test_a_replica_that_stops_beating_leaves_after_its_ttl(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    stack = await redis_stack(tmp_path, make_stack, redis_server, reply_timeout_seconds=0.5)
    crashed = ghost(stack, redis_server, "gw-crashed", heartbeat=0.5)
    beat_at = time.monotonic()
    await crashed.beat()  # one heartbeat, then silence: as if killed
    assert ids(await fleet_view(stack)) == ["gw-a", "gw-crashed"]
    # While its heartbeat lives, a fleet-wide call waits for it, then names it missing.
    status, answer = await admin(stack, "POST", "/admin/rules/reload?scope=fleet")
    assert status == 200 and answer["missing"] == ["gw-crashed"], answer
    assert sorted(answer["replicas"]) == ["gw-a"]
    await view_until(stack, lambda v: ids(v) == ["gw-a"])
    gone_after = time.monotonic() - beat_at
    assert gone_after >= 1.5 * 0.99  # not before its TTL, 3 intervals (1% for clock grain)
    print(f"a silent replica left the fleet view {gone_after:.2f} s after its last heartbeat")
    await crashed.close()


async def test_a_started_replica_answers_and_garbage_is_ignored(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    stack = await redis_stack(tmp_path, make_stack, redis_server)
    other = ghost(stack, redis_server, "gw-other", heartbeat=0.2)
    await other.start()
    try:
        ignored = REGISTRY.get_sample_value("drm_gateway_fleet_messages_ignored_total") or 0.0
        raw = Redis.from_url(redis_server.url)
        try:
            for junk in (b"nonsense", orjson.dumps(GOOD | {"command": "rm"}), b"{}"):
                await raw.publish("drm-gateway:fleet:commands", junk)
                await raw.publish("drm-gateway:fleet:replies:gw-a", junk)
        finally:
            await raw.aclose()
        started = time.monotonic()
        # Each of the two replicas reads the three commands; gw-a reads the three replies.
        while REGISTRY.get_sample_value("drm_gateway_fleet_messages_ignored_total") != ignored + 9:
            assert time.monotonic() - started < 10
            await asyncio.sleep(0.02)
        listener = Redis.from_url(redis_server.url)
        overheard = listener.pubsub()
        try:
            await overheard.subscribe("drm-gateway:fleet:commands")
            asked = time.monotonic()
            status, answer = await admin(stack, "POST", "/admin/cache/invalidate?scope=fleet")
            took = time.monotonic() - asked
            sent = [
                message["data"]
                for _ in range(3)
                if (message := await overheard.get_message(timeout=1.0)) is not None
                and message["type"] == "message"
            ]
        finally:
            await overheard.aclose()  # type: ignore[no-untyped-call]
            await listener.aclose()
        assert status == 200 and sorted(answer["replicas"]) == ["gw-a", "gw-other"], answer
        assert answer["missing"] == []
        print(f"fleet-wide invalidate answered by 2 replicas in {took * 1000:.1f} ms")
        # What went over Redis: the command and the caller's name, never a credential.
        (command,) = sent
        assert orjson.loads(command) | {"id": "-"} == {
            "id": "-",
            "command": "cache.invalidate",
            "from": "gw-a",
            "who": "admin",
            "args": {},
        }
        assert ADMIN_TOKEN.encode() not in command
    finally:
        await other.close()


async def test_a_redis_that_stops_answering_is_said_so(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    stack = await redis_stack(tmp_path, make_stack, redis_server)
    assert stack.gateway.public_app[FLEET].linked
    redis_server.stop()
    view = await fleet_view(stack)
    assert view["scope"] == "fleet" and view["note"] and "Redis does not answer" in view["note"]
    assert ids(view) == ["gw-a"] and not view["agree"]
    assert view["replicas"][0]["catalog"] == {"backend": "redis", "ok": False}
    status, error = await admin(stack, "POST", "/admin/rules/reload?scope=fleet")
    assert status == 503 and "nothing was done" in error["message"], error
