"""Named admin tokens (Bearer and Basic) and the rules change log over HTTP, on a gateway in
front of the emulated providers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import AdminUnauthorized
from proxy.server.admin import RULES
from proxy.server.app import install_signal_handlers
from tests.conftest import ADMIN_TOKEN, Stack, StackFactory
from tests.integration.test_catalog_redis import redis_catalog
from tests.integration.test_rules_flow import ramp_rules, wait_for_version
from tests.redis_server import RedisServer

ALICE = "alice-admin-token-6f0e2b9d41"
CI = "ci-deploy-admin-token-93c7aa10"
TOKEN_ENV = {"ALICE_ADMIN_TOKEN": ALICE, "CI_ADMIN_TOKEN": CI}
TOKENS = {"admin": ADMIN_TOKEN, "alice": ALICE, "ci": CI}
# One challenge per line, Basic first: Chromium reads only the first challenge of a line.
CHALLENGES = ['Basic realm="drm-gateway admin"', 'Bearer realm="drm-gateway admin"']


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


async def named_stack(make_stack: StackFactory, tmp_path: Path, *, poll: float = 3600) -> Stack:
    """A gateway with the single admin token and two named ones, and a rules file."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(ramp_rules("v1", 10))
    return await make_stack(
        admin={
            "token": {"env": "ADMIN_TOKEN"},
            "tokens": {"alice": {"env": "ALICE_ADMIN_TOKEN"}, "ci": {"env": "CI_ADMIN_TOKEN"}},
        },
        routing={"default_provider": "legacy", "rules_file": str(rules), "poll_seconds": poll},
        env=TOKEN_ENV,
    )


def log_events(stack: Stack, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    return [line for line in lines if line.get("event") == event]


def assert_no_token_logged(stack: Stack) -> None:
    logs = stack.logs.getvalue()
    for token in TOKENS.values():
        assert token not in logs
        assert base64.b64encode(token.encode()).decode()[:16] not in logs


async def history(stack: Stack, query: str = "", token: str = ALICE) -> tuple[int, Any]:
    url = stack.internal(f"/admin/rules/history{query}")
    async with stack.anon.get(url, headers=bearer(token)) as resp:
        return resp.status, await resp.json()


# --- who may call ---------------------------------------------------------------------------


async def test_each_named_token_is_accepted_and_names_its_caller(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await named_stack(make_stack, tmp_path)
    for name, token in TOKENS.items():
        for headers in (bearer(token), basic(name, token)):
            async with stack.anon.get(stack.internal("/admin/rules"), headers=headers) as resp:
                assert resp.status == 200, (name, await resp.text())
    calls = [
        (line["caller"], line["path"], line["result"]) for line in log_events(stack, "admin_call")
    ]
    assert calls == [(name, "/admin/rules", 200) for name in TOKENS for _ in range(2)]
    assert all(line["remote"] == "127.0.0.1" for line in log_events(stack, "admin_call"))
    assert_no_token_logged(stack)


async def test_basic_ignores_the_user_name_the_token_says_who(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await named_stack(make_stack, tmp_path)
    for user in ("", "someone-else", "admin"):
        async with stack.anon.get(stack.internal("/admin/rules"), headers=basic(user, CI)) as resp:
            assert resp.status == 200
    assert {line["caller"] for line in log_events(stack, "admin_call")} == {"ci"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong-token-of-some-length"),
        bearer(ALICE[:-1]),
        bearer(ALICE + "x"),
        bearer(""),
        {"Authorization": f"Token {ALICE}"},
        {"Authorization": ALICE},
        basic("alice", "wrong-token-of-some-length"),
        basic("alice", ""),
        {"Authorization": "Basic " + base64.b64encode(ALICE.encode()).decode()},  # no colon
        {"Authorization": f"Basic {ALICE}"},  # not base64
        {"Authorization": "Basic w6k="},  # base64 of a lone non-ASCII byte pair, no colon
    ],
)
async def test_a_wrong_credential_gets_401_with_both_challenges(
    make_stack: StackFactory, tmp_path: Path, headers: dict[str, str]
) -> None:
    stack = await named_stack(make_stack, tmp_path)
    for method, path in [("GET", "/admin/rules/history"), ("POST", "/admin/rules/reload")]:
        async with stack.anon.request(method, stack.internal(path), headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers.getall("WWW-Authenticate") == CHALLENGES
            body = await resp.json()
    assert body["error"] == "unauthorized"
    assert body["message"] == AdminUnauthorized.message
    refused = log_events(stack, "admin_refused")
    assert len(refused) == 2 and all(line["caller"] is None for line in refused)
    assert not log_events(stack, "admin_call")
    assert len(stack.gateway.public_app[RULES].history) == 1  # nothing reloaded
    assert_no_token_logged(stack)


async def test_without_any_admin_token_every_admin_call_is_refused(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(admin={})
    for headers in ({}, bearer(""), basic("", "")):
        async with stack.anon.get(stack.internal("/admin/rules"), headers=headers) as resp:
            assert resp.status == 401 and resp.headers.getall("WWW-Authenticate") == CHALLENGES


# --- the change log over HTTP ----------------------------------------------------------------


async def test_the_history_lists_file_edits_the_poll_found(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await named_stack(make_stack, tmp_path, poll=0.05)
    rules = tmp_path / "routing.yaml"
    for version, percent in (("v2", 25), ("v3", 50)):
        rules.write_text(ramp_rules(version, percent))
        await wait_for_version(stack, version)
    status, answer = await history(stack)
    assert status == 200 and answer["scope"] == "replica" and answer["note"] is None
    entries = answer["entries"]
    assert [(e["version"], e["who"], e["trigger"], e["result"]) for e in entries] == [
        ("v3", "file", "poll", "accepted"),
        ("v2", "file", "poll", "accepted"),
        ("v1", "start", "start", "accepted"),
    ]
    newest = entries[0]
    assert (newest["previous_version"], newest["problems"]) == ("v2", [])
    assert newest["previous_sha256"] == entries[1]["sha256"]
    assert "-    percent: 25\n+    percent: 50\n" in newest["diff"]
    assert newest["at"].endswith("Z") and newest["at"] >= entries[1]["at"]
    loaded = log_events(stack, "rules_loaded")
    assert [(line["who"], line["version"]) for line in loaded][-2:] == [
        ("file", "v2"),
        ("file", "v3"),
    ]


async def test_an_admin_reload_is_recorded_under_the_callers_name(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await named_stack(make_stack, tmp_path)  # the poll is too slow to see the edit
    rules = tmp_path / "routing.yaml"
    rules.write_text(ramp_rules("v2", 40))
    reload = stack.internal("/admin/rules/reload")
    async with stack.anon.post(reload, headers=basic("alice", ALICE)) as resp:
        assert resp.status == 200 and (await resp.json())["version"] == "v2"
    rules.write_text(ramp_rules("v3", 140).replace("incoming", "elsewhere"))
    async with stack.anon.post(reload, headers=bearer(CI)) as resp:
        assert resp.status == 422
        problems = (await resp.json())["problems"]

    status, answer = await history(stack, token=ADMIN_TOKEN)
    assert status == 200
    refused, accepted, start = answer["entries"]
    assert (refused["result"], refused["who"], refused["trigger"]) == ("refused", "ci", "admin")
    assert refused["problems"] == problems and len(problems) == 2
    assert any("'elsewhere' is not configured" in p for p in problems)
    assert refused["version"] is None and refused["previous_version"] == "v2"
    assert "+    route: elsewhere\n" in refused["diff"]
    assert (accepted["result"], accepted["who"], accepted["version"]) == ("accepted", "alice", "v2")
    assert start["who"] == "start"

    assert [line["who"] for line in log_events(stack, "rules_loaded")] == ["start", "alice"]
    (line,) = log_events(stack, "rules_refused")
    assert (line["who"], line["diff"]) == ("ci", "+3/-3 lines")
    assert_no_token_logged(stack)


async def test_a_sighup_reload_is_recorded_as_sighup(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await named_stack(make_stack, tmp_path)  # the poll is too slow to see the edit
    (tmp_path / "routing.yaml").write_text(ramp_rules("v-hup", 30))
    loop = asyncio.get_running_loop()
    install_signal_handlers(stack.gateway, asyncio.Event())
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_version(stack, "v-hup")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    _, answer = await history(stack, "?limit=1")
    (entry,) = answer["entries"]
    assert (entry["version"], entry["who"], entry["trigger"]) == ("v-hup", "sighup", "sighup")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "1.5", "ten", "", "\u0661", "9" * 5000])
async def test_the_limit_is_a_whole_number_from_1_to_1000(
    make_stack: StackFactory, tmp_path: Path, limit: str
) -> None:
    stack = await named_stack(make_stack, tmp_path)
    status, answer = await history(stack, f"?limit={limit}")
    assert status == 400
    assert answer["error"] == "bad_request"
    assert answer["message"] == "limit must be a whole number from 1 to 1000."


async def test_limit_and_scope(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await named_stack(make_stack, tmp_path)
    rules = tmp_path / "routing.yaml"
    for i in range(3):
        rules.write_text(ramp_rules(f"v{i + 2}", i + 20))
        async with stack.anon.post(
            stack.internal("/admin/rules/reload"), headers=bearer(ALICE)
        ) as resp:
            assert resp.status == 200
    for limit, versions in (("1", ["v4"]), ("3", ["v4", "v3", "v2"]), ("1000", None)):
        _, answer = await history(stack, f"?limit={limit}")
        assert [e["version"] for e in answer["entries"]] == (versions or ["v4", "v3", "v2", "v1"])
    _, answer = await history(stack, "?scope=fleet")
    assert answer["scope"] == "replica" and "no Redis" in answer["note"]
    assert len(answer["entries"]) == 4
    status, answer = await history(stack, "?scope=everywhere")
    assert status == 400 and answer["message"] == "scope must be one of replica, fleet."


async def test_with_redis_the_fleet_scope_lists_every_replicas_changes(
    make_stack: StackFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    rules = tmp_path / "routing.yaml"
    rules.write_text(ramp_rules("v1", 10))
    stacks = [
        await make_stack(
            admin={"tokens": {"alice": {"env": "ALICE_ADMIN_TOKEN"}}},
            routing={"default_provider": "legacy", "rules_file": str(rules), "poll_seconds": 3600},
            fleet={"replica_id": f"gw-{name}"},
            env=TOKEN_ENV,
            configure=redis_catalog(redis_server),
        )
        for name in ("a", "b")
    ]
    rules.write_text(ramp_rules("v2", 20))
    async with stacks[0].anon.post(
        stacks[0].internal("/admin/rules/reload"), headers=bearer(ALICE)
    ) as resp:
        assert resp.status == 200
    async with asyncio.timeout(5):  # pushed in the background
        while len((await history(stacks[1], "?scope=fleet"))[1]["entries"]) < 3:
            await asyncio.sleep(0.02)
    status, answer = await history(stacks[1], "?scope=fleet")
    assert status == 200 and answer["scope"] == "fleet"
    entries = answer["entries"]
    assert (entries[0]["replica"], entries[0]["who"], entries[0]["version"]) == (
        "gw-a",
        "alice",
        "v2",
    )
    assert sorted((e["replica"], e["who"]) for e in entries[1:]) == [
        ("gw-a", "start"),
        ("gw-b", "start"),
    ]
    _, own = await history(stacks[1])  # the replica's own log did not change
    assert own["scope"] == "replica" and [e["who"] for e in own["entries"]] == ["start"]

    redis_server.stop()  # the fleet's log cannot be read: say so, show this replica's
    status, answer = await history(stacks[0], "?scope=fleet")
    assert status == 200 and answer["scope"] == "replica"
    assert answer["note"] == "Redis does not answer: this replica's history only"
    assert [e["who"] for e in answer["entries"]] == ["alice", "start"]
