"""Routing rules live: shares follow the percent, hot reload is atomic, admin routes work."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from proxy.observability.metrics import REGISTRY
from proxy.routing.rules import BUCKETS, bucket
from proxy.server.app import install_signal_handlers
from tests.conftest import ADMIN_TOKEN, Stack, StackFactory, write_catalog

ASSET_COUNT = 2_000
ASSETS = [f"ramp-{i:04d}" for i in range(ASSET_COUNT)]


def ramp_rules(version: str, percent: float) -> str:
    return (
        f'version: "{version}"\n'
        "default: legacy\n"
        "rules:\n"
        "  - name: ramp\n"
        "    route: incoming\n"
        f"    percent: {percent}\n"
    )


def in_ramp(asset: str, percent: float) -> bool:
    return bucket("ramp", asset) < round(percent * 100)


async def ramp_stack(make_stack: StackFactory, tmp_path: Path, percent: float) -> Stack:
    db = write_catalog(tmp_path / "ramp.db", [(a, f"res-{a}", None, ("catalog",)) for a in ASSETS])
    rules = tmp_path / "routing.yaml"
    rules.write_text(ramp_rules("v0", percent))
    return await make_stack(
        db=db,
        legacy={"resources": None},
        incoming={"resources": None},
        routing={"rules_file": str(rules), "poll_seconds": 0.1},
        catalog={"backend": "sqlite", "path": str(db), "ttl_seconds": 300},
    )


async def served_by(stack: Stack, assets: list[str], concurrency: int = 64) -> dict[str, str]:
    """Which provider answered each asset (read from the synthetic license)."""
    gate = asyncio.Semaphore(concurrency)
    result: dict[str, str] = {}

    async def one(asset: str) -> None:
        async with (
            gate,
            stack.http.post(stack.url(f"/v1/license/widevine/{asset}"), data=b"\x08\x04") as resp,
        ):
            assert resp.status == 200, await resp.text()
            result[asset] = (await resp.read()).split(b"\n")[1].decode()

    await asyncio.gather(*(one(a) for a in assets))
    return result


async def wait_for_version(stack: Stack, version: str, timeout: float = 5.0) -> None:
    async def current() -> str:
        async with stack.http.get(
            stack.internal("/admin/rules"), headers=stack.admin_headers()
        ) as resp:
            return str((await resp.json())["version"])

    async with asyncio.timeout(timeout):
        while await current() != version:
            await asyncio.sleep(0.05)


async def test_operator_changes_percent_and_the_share_follows(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 0)
    rules = tmp_path / "routing.yaml"
    at_zero = await served_by(stack, ASSETS)
    assert set(at_zero.values()) == {"legacy"}

    rules.write_text(ramp_rules("v25", 25))
    await wait_for_version(stack, "v25")  # picked up by the file poll
    at_25 = await served_by(stack, ASSETS)
    incoming_25 = {a for a, p in at_25.items() if p == "incoming"}
    assert abs(len(incoming_25) / ASSET_COUNT - 0.25) <= 0.03
    assert incoming_25 == {a for a in ASSETS if in_ramp(a, 25)}

    rules.write_text(ramp_rules("v100", 100))
    await wait_for_version(stack, "v100")
    at_100 = await served_by(stack, ASSETS)
    assert set(at_100.values()) == {"incoming"}  # no asset moved back: all moved forward


async def test_reload_under_load_is_atomic(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 0)
    rules = tmp_path / "routing.yaml"
    percents: dict[str, float] = {"v0": 0}

    async def rewrite() -> None:
        for i in range(20):
            if i % 4 == 3:
                rules.write_text("version: broken\nrules: [\n")  # refused, old rules stay
            else:
                percent = (i * 37) % 101
                percents[f"v{i + 1}"] = percent
                rules.write_text(ramp_rules(f"v{i + 1}", percent))
            await asyncio.sleep(0.08)

    # 2,000 requests, 100 in flight at a time, while the file is rewritten 20 times.
    results = await asyncio.gather(served_by(stack, ASSETS, concurrency=100), rewrite())
    assert len(results[0]) == ASSET_COUNT  # served_by asserts every request got a 200
    lines = [json.loads(x) for x in stack.logs.getvalue().splitlines() if '"access"' in x]
    decisions = [x for x in lines if x.get("drm") == "widevine"]
    assert len(decisions) == ASSET_COUNT
    versions = {x["rules_version"] for x in decisions}
    assert len(versions) >= 3
    for line in decisions:  # each decision matches exactly the version that made it
        percent = percents[line["rules_version"]]
        expected = "incoming" if in_ramp(line["asset_id"], percent) else "legacy"
        assert line["provider"] == expected, line


async def test_refused_file_keeps_the_last_good_rules(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 100)
    rules = tmp_path / "routing.yaml"
    refused = REGISTRY.get_sample_value("drm_gateway_rules_reloads_total", {"result": "refused"})
    rules.write_text(ramp_rules("bad", 120))
    async with stack.http.post(
        stack.internal("/admin/rules/reload"), headers=stack.admin_headers()
    ) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body["result"] == "refused" and body["version"] == "v0"
    assert body["error"] == "rules_refused" and body["request_id"] == resp.headers["X-Request-Id"]
    assert any("percent" in p and "ramp" in p for p in body["problems"])
    after = REGISTRY.get_sample_value("drm_gateway_rules_reloads_total", {"result": "refused"})
    assert after == (refused or 0) + 1
    assert set((await served_by(stack, ASSETS[:50])).values()) == {"incoming"}
    info = REGISTRY.get_sample_value(
        "drm_gateway_rules_info",
        {"version": "v0", "sha256": stack.gateway.public_app[_rules_key()].rules.sha256},
    )
    assert info == 1


def _rules_key() -> Any:
    from proxy.server.admin import RULES

    return RULES


async def test_sighup_reloads(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 0)
    rules = tmp_path / "routing.yaml"
    stop = asyncio.Event()
    install_signal_handlers(stack.gateway, stop)
    loop = asyncio.get_running_loop()
    try:
        watcher = stack.gateway.public_app[_rules_key()]
        watcher.poll_seconds = 3600  # only the signal can reload now
        rules.write_text(ramp_rules("v-hup", 100))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for_version(stack, "v-hup", timeout=2)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    assert not stop.is_set()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {ADMIN_TOKEN}"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    ],
)
async def test_admin_routes_refuse_without_the_token(
    make_stack: StackFactory, headers: dict[str, str]
) -> None:
    stack = await make_stack()
    for method, path in [
        ("GET", "/admin/rules"),
        ("POST", "/admin/rules/reload"),
        ("GET", "/admin/explain?asset=both-1&drm=widevine"),
        ("GET", "/admin/catalog/both-1"),
        ("POST", "/admin/cache/invalidate"),
    ]:
        async with stack.anon.request(method, stack.internal(path), headers=headers) as resp:
            assert resp.status == 401, path
            assert (await resp.json())["error"] == "unauthorized"
    assert "admin_refused" in stack.logs.getvalue()
    assert ADMIN_TOKEN not in stack.logs.getvalue()


async def test_explain_catalog_and_invalidate(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 50)
    asset = next(a for a in ASSETS if not in_ramp(a, 50))
    async with stack.anon.get(
        stack.internal(f"/admin/explain?asset={asset}&drm=widevine"),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as resp:
        assert resp.status == 200
        explained = await resp.json()
    assert explained["decision"]["provider"] == "legacy"
    assert explained["decision"]["reason"] == "rollout_excluded"
    verdict = explained["verdicts"][0]
    assert verdict["outcome"] == "rollout_excluded"
    assert verdict["bucket"] == bucket("ramp", asset) and verdict["bucket"] < BUCKETS
    assert (await stack.stats(stack.legacy))["total"] == 0  # explain calls no provider

    async with stack.anon.get(
        stack.internal(f"/admin/catalog/{asset}"), headers=stack.admin_headers()
    ) as resp:
        assert (await resp.json())["drm_resource_id"] == f"res-{asset}"
    async with stack.anon.post(
        stack.internal("/admin/cache/invalidate"), headers=stack.admin_headers()
    ) as resp:
        assert (await resp.json())["dropped"] >= 1
    async with stack.anon.get(
        stack.internal("/admin/explain?asset=../x&drm=widevine"), headers=stack.admin_headers()
    ) as resp:
        assert resp.status == 400
    assert "admin_call" in stack.logs.getvalue()


async def test_explain_and_access_line_name_the_guard_that_overrode_the_default(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    # The ramp leaves the title out, then the key-holder guard sends it to incoming anyway.
    rules = tmp_path / "routing.yaml"
    rules.write_text(ramp_rules("v-guard", 0))
    stack = await make_stack(routing={"rules_file": str(rules)})
    async with stack.anon.get(
        stack.internal("/admin/explain?asset=incoming-only&drm=widevine"),
        headers=stack.admin_headers(),
    ) as resp:
        explained = await resp.json()
    assert explained["decision"]["provider"] == "incoming"
    assert (explained["decision"]["rule"], explained["decision"]["reason"]) == (
        "guard:key_holders",
        "guard_key_holders",
    )
    assert explained["override"] == (
        "'legacy' is unconfigured or lacks the keys (key holders: incoming); 'incoming' serves"
    )
    assert [v["outcome"] for v in explained["verdicts"]] == ["rollout_excluded"]
    async with stack.http.post(
        stack.url("/v1/license/widevine/incoming-only"),
        data=b"\x08\x04",
        headers={"X-Request-Id": "req-guard-override"},
    ) as resp:
        assert resp.status == 200
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    (access,) = [ln for ln in lines if ln.get("request_id") == "req-guard-override"]
    assert (access["provider"], access["rule"], access["reason"]) == (
        "incoming",
        "guard:key_holders",
        "guard_key_holders",
    )


async def test_decisions_are_counted(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 100)
    labels = {"provider": "incoming", "rule": "ramp", "reason": "rule_match"}
    before = REGISTRY.get_sample_value("drm_gateway_routing_decisions_total", labels) or 0
    await served_by(stack, ASSETS[:10])
    after = REGISTRY.get_sample_value("drm_gateway_routing_decisions_total", labels)
    assert after == before + 10


async def rules_stack(make_stack: StackFactory, tmp_path: Path, text: str, poll: float) -> Stack:
    """The default test stack with `text` as its rules file, polled every `poll` seconds."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(text)
    return await make_stack(routing={"rules_file": str(rules), "poll_seconds": poll})


async def readiness(stack: Stack) -> tuple[int, dict[str, Any]]:
    async with stack.anon.get(stack.internal("/readyz")) as resp:
        return resp.status, await resp.json()


def file_valid() -> float | None:
    return REGISTRY.get_sample_value("drm_gateway_rules_file_valid")


async def test_a_broken_rules_file_at_start_leaves_the_gateway_up_but_unready(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await rules_stack(make_stack, tmp_path, ramp_rules("bad", 120), poll=0.1)
    status, ready = await readiness(stack)
    assert status == 503 and ready["ready"] is False and ready["error"] == "not_ready"
    assert f"no routing rules active: {tmp_path / 'routing.yaml'} is refused" in ready["problems"]
    assert any("120 is out of range" in p for p in ready["problems"])
    assert file_valid() == 0
    for method, path in [
        ("POST", "/v1/license/widevine/both-1"),
        ("GET", "/v1/keys/both-1/" + "ab" * 16),
    ]:
        async with stack.http.request(method, stack.url(path), data=b"\x08\x04") as resp:
            assert resp.status == 503, path
            body = await resp.json()
            assert body["error"] == "rules_unavailable", path
            assert body["request_id"] == resp.headers["X-Request-Id"]
    async with stack.http.get(
        stack.internal("/admin/explain?asset=both-1&drm=widevine"), headers=stack.admin_headers()
    ) as resp:
        assert resp.status == 503 and (await resp.json())["error"] == "rules_unavailable"
    async with stack.http.get(
        stack.internal("/admin/rules"), headers=stack.admin_headers()
    ) as resp:
        shown = await resp.json()
    assert shown["version"] is None and shown["file_valid"] is False and shown["problems"]
    refused = [json.loads(x) for x in stack.logs.getvalue().splitlines() if "rules_refused" in x]
    assert [(x["trigger"], x["level"]) for x in refused] == [("start", "error")]
    assert (await stack.stats(stack.legacy))["total"] == 0

    (tmp_path / "routing.yaml").write_text(ramp_rules("fixed", 100))
    await wait_for_version(stack, "fixed")  # the poll picks the fixed file up
    status, ready = await readiness(stack)
    assert status == 200 and ready["problems"] == [] and ready["warnings"] == []
    assert file_valid() == 1
    async with stack.http.post(stack.url("/v1/license/widevine/both-1"), data=b"\x08\x04") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("trigger", ["admin", "sighup"])
async def test_a_reload_brings_up_a_gateway_started_with_a_broken_file(
    make_stack: StackFactory, tmp_path: Path, trigger: str
) -> None:
    stack = await rules_stack(make_stack, tmp_path, ramp_rules("bad", 120), poll=3600)
    async with stack.http.post(
        stack.internal("/admin/rules/reload"), headers=stack.admin_headers()
    ) as resp:
        assert resp.status == 422
        body = await resp.json()
    assert body["result"] == "refused" and body["version"] is None and body["problems"]
    (tmp_path / "routing.yaml").write_text(ramp_rules("fixed", 100))
    if trigger == "admin":
        async with stack.http.post(
            stack.internal("/admin/rules/reload"), headers=stack.admin_headers()
        ) as resp:
            assert resp.status == 200 and (await resp.json())["result"] == "ok"
    else:
        stop = asyncio.Event()
        install_signal_handlers(stack.gateway, stop)
        loop = asyncio.get_running_loop()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await wait_for_version(stack, "fixed", timeout=2)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    assert (await readiness(stack))[0] == 200
    assert file_valid() == 1


async def test_a_refused_reload_while_serving_stays_ready_with_a_warning(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 100)
    rules = tmp_path / "routing.yaml"
    good = rules.read_text()
    rules.write_text(ramp_rules("bad", 120))
    await wait_for(lambda: file_valid() == 0)  # the poll tried it
    status, ready = await readiness(stack)
    assert status == 200 and ready["problems"] == []
    assert f"{rules} is refused; serving version v0" in ready["warnings"]
    assert any("120 is out of range" in w for w in ready["warnings"])
    assert set((await served_by(stack, ASSETS[:20])).values()) == {"incoming"}
    rules.write_text(good)
    await wait_for(lambda: file_valid() == 1)  # back to the active file: unchanged, valid
    assert (await readiness(stack))[1]["warnings"] == []


async def wait_for(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_a_replaced_rules_version_leaves_the_scrape(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await ramp_stack(make_stack, tmp_path, 0)
    (tmp_path / "routing.yaml").write_text(ramp_rules("v-next", 10))
    await wait_for_version(stack, "v-next")
    async with stack.anon.get(stack.internal("/metrics")) as resp:
        text = await resp.text()
    versions = re.findall(
        r'^drm_gateway_rules_info\{sha256="\w+",version="([^"]+)"\} (\S+)$', text, re.M
    )
    assert ("v-next", "1.0") in versions
    assert "v0" not in {version for version, _ in versions}
