"""The migration console in headless Chromium: refused without credentials, signed in with HTTP
Basic (a named admin token), and every figure it shows equal to /metrics and /admin/* fetched
alongside, before and after more traffic (the page refreshes itself). A screenshot is saved to
tests/e2e/artifacts/console.png."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from proxy.dev.media import stop
from tests.conftest import ADMIN_TOKEN, Stack, StackFactory
from tests.e2e.tools import E2E_DIR, Tools
from tests.server.test_console import (
    CONSOLE_RULES,
    D,
    F,
    R,
    Samples,
    drive_console_traffic,
    incoming_share,
    license,
    metric_sum,
    minus,
    scrape,
    start_console_stack,
)

CONSOLE_SCRIPT = E2E_DIR / "console.mjs"
SCREENSHOT = E2E_DIR / "artifacts" / "console.png"
STEP_TIMEOUT = 60.0  # one step of the driver: a page load, a refresh, a screenshot
CALLER = "oncall"
STATES = {0: "closed", 1: "half_open", 2: "open"}


class ConsolePage:
    """console.mjs running: send it commands, read its JSON events."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), STEP_TIMEOUT)
        if not line:
            assert self.proc.stderr is not None
            error = await self.proc.stderr.read()
            raise AssertionError(f"console.mjs ended: {error.decode(errors='replace')[-2000:]}")
        event: dict[str, Any] = json.loads(line)
        assert event["event"] != "error", event
        return event

    async def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.event()


@asynccontextmanager
async def console_page(tools: Tools, url: str, password: str) -> AsyncIterator[ConsolePage]:
    env = os.environ | {"CONSOLE_USER": CALLER, "CONSOLE_PASSWORD": password}
    proc = await asyncio.create_subprocess_exec(
        tools.node,
        str(CONSOLE_SCRIPT),
        "--url",
        url,
        "--timeout-ms",
        "150000",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # its own process group: stop() signals it and its browser
    )
    try:
        yield ConsolePage(proc)
        assert proc.stdin is not None
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        await asyncio.wait_for(proc.wait(), STEP_TIMEOUT)
        assert proc.returncode == 0
    finally:
        await stop(proc)


def parsed(value: str) -> Any:
    """A data-v value as the JSON value it was (numbers, null), else the string."""
    try:
        return json.loads(value)
    except ValueError:
        return value


async def admin_get(stack: Stack, path: str) -> tuple[int, Any]:
    async with stack.anon.get(stack.internal(path), headers=stack.admin_headers()) as resp:
        return resp.status, await resp.json()


def assert_summary_figures(shown: dict[str, Any], now: Samples, hour: Samples) -> None:
    """Shares, provider errors and fallbacks, and circuits equal the /metrics text."""
    for drm in ("widevine", "playready", "fairplay", "clearkey", "aes128"):
        for span, samples in (("hour", hour), ("total", now)):
            expected = incoming_share(samples, drm)
            assert {k: shown[f"share|{drm}|{span}|{k}"] for k in expected} == expected, (drm, span)
    for provider in ("legacy", "incoming"):
        for span, samples in (("hour", hour), ("total", now)):
            key = f"provider|{provider}|{span}|"
            assert shown[key + "requests"] == metric_sum(samples, R, provider=provider)
            assert shown[key + "errors"] == metric_sum(
                samples, R, provider=provider, outcome="error"
            )
            assert shown[key + "upstream_failures"] == metric_sum(
                samples,
                "drm_gateway_upstream_responses_total",
                provider=provider,
                status_class=lambda s: s != "2xx",
            )
            assert shown[key + "fallbacks_from"] == metric_sum(samples, F, from_provider=provider)
            assert shown[key + "fallbacks_to"] == metric_sum(samples, F, to_provider=provider)
    circuits = {
        f"circuit|{labels['provider']}|{labels['drm']}": STATES[int(value)]
        for name, labels, value in now
        if name == "drm_gateway_circuit_state"
    }
    assert circuits
    assert {k: v for k, v in shown.items() if k.startswith("circuit|")} == circuits


def assert_rules(shown: dict[str, Any], rules: dict[str, Any], now: Samples, hour: Samples) -> None:
    """The current rules as /admin/rules has them, each with its decisions from /metrics."""
    assert shown["rules|version"] == rules["version"]
    assert shown["rules|sha256"] == rules["sha256"]
    all_hour = metric_sum(hour, D)
    for rule in [*rules["rules"], {"name": "default", "route": rules["default"]}]:
        name = rule["name"]
        assert shown[f"rule|{name}|route"] == rule["route"]
        in_hour = metric_sum(hour, D, rule=name)
        assert shown[f"rule|{name}|hour"] == in_hour, name
        assert shown[f"rule|{name}|total"] == metric_sum(now, D, rule=name), name
        assert shown[f"rule|{name}|hour_share"] == (in_hour / all_hour if all_hour else None)
        if name != "default":
            assert shown[f"rule|{name}|percent"] == rule.get("percent")


def assert_missing(shown: dict[str, Any], listing: dict[str, Any]) -> None:
    assert shown["missing|total"] == listing["total"]
    titles = [(t["asset_id"], t["count"]) for t in listing["titles"]]
    on_page = [
        (shown[f"missing|{i}|asset"], shown[f"missing|{i}|count"])
        for i in range(1, len(titles) + 1)
    ]
    assert on_page == titles
    assert f"missing|{len(titles) + 1}|asset" not in shown


def assert_fleet_and_history(
    shown: dict[str, Any], fleet: tuple[int, Any], history: tuple[int, Any]
) -> None:
    """Fleet and history as their endpoints answer, or "unavailable" where they are absent."""
    status, body = fleet
    if status == 404:
        assert shown["fleet|status"] == "unavailable"
    else:
        assert status == 200, body
        assert shown["fleet|status"] == "ok"
        assert shown["fleet|agree"] == body["agree"]
        for replica in body["replicas"]:
            rid = replica["replica_id"]
            assert shown[f"fleet|{rid}|rules_version"] == replica["rules_version"]
            assert shown[f"fleet|{rid}|rules_sha256"] == replica["rules_sha256"]
    status, body = history
    if status == 404:
        assert shown["history|status"] == "unavailable"
        return
    assert status == 200, body
    assert shown["history|status"] == "ok"
    entries = body["entries"]
    assert [
        (shown[f"history|{i}|result"], shown[f"history|{i}|who"])
        for i in range(1, len(entries) + 1)
    ] == [(e["result"], e["who"]) for e in entries]
    # The reload this test made through the admin API, by the named token.
    assert ("accepted", "console-2", CALLER) in {
        (e["result"], e["version"], e["who"]) for e in entries
    }


async def check_page(stack: Stack, event: dict[str, Any], baseline: Samples) -> Samples:
    """Everything the page shows against /metrics and /admin/* fetched now; the samples."""
    assert event["state"] == "ready" and event["banner"] is None, event
    shown = {key: parsed(value) for key, value in event["values"].items()}
    now = await scrape(stack)
    hour = minus(now, baseline)
    assert_summary_figures(shown, now, hour)
    status, rules = await admin_get(stack, "/admin/rules")
    assert status == 200
    assert_rules(shown, rules, now, hour)
    status, listing = await admin_get(stack, "/admin/missing?limit=20")
    assert status == 200
    assert_missing(shown, listing)
    assert_fleet_and_history(
        shown,
        await admin_get(stack, "/admin/fleet"),
        await admin_get(stack, "/admin/rules/history?limit=10"),
    )
    status, summary = await admin_get(stack, "/admin/summary")
    assert status == 200
    for row in summary["share"]:  # one chart point per minute with requests
        points = sum(minute["share"] is not None for minute in row["minutes"])
        assert event["charts"].get(row["drm"], 0) == points, row["drm"]
    problems = [
        line
        for line in event["console"]
        if line.startswith("pageerror") or "Content Security Policy" in line
    ]
    assert not problems, event["console"]
    return now


async def test_the_console_shows_what_metrics_and_admin_say(
    make_stack: StackFactory, e2e_tools: Tools, tmp_path: Path
) -> None:
    oncall = secrets.token_urlsafe(24)
    stack = await start_console_stack(
        make_stack,
        tmp_path,
        admin={"token": {"env": "ADMIN_TOKEN"}, "tokens": {CALLER: {"env": "ONCALL_TOKEN"}}},
        env={"ONCALL_TOKEN": oncall},
    )
    baseline = await scrape(stack)
    # A rules change by the named caller, for the history (where the gateway keeps one).
    rules_file = tmp_path / "routing.yaml"
    rules_file.write_text(
        CONSOLE_RULES.replace('"console-1"', '"console-2"').replace(
            "fallback: legacy", "fallback: legacy\n    percent: 100\n    stickiness: asset"
        )
    )
    async with stack.anon.post(
        stack.internal("/admin/rules/reload"), headers={"Authorization": f"Bearer {oncall}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["version"] == "console-2"
    await drive_console_traffic(stack)

    async with console_page(e2e_tools, stack.internal("/admin/ui"), oncall) as page:
        refused = await page.event()
        assert refused["event"] == "refused"
        assert refused["status"] == 401
        # One challenge per line, Basic first: the one line Chromium answers with credentials.
        assert refused["wwwAuthenticate"][0].startswith("Basic ")
        assert refused["contentType"].startswith("application/json")
        assert json.loads(refused["body"])["error"] == "unauthorized"
        for secret in (oncall, ADMIN_TOKEN):
            assert secret not in refused["body"]

        first = await page.event()
        assert first["event"] == "values"
        await check_page(stack, first, baseline)
        shown = {key: parsed(value) for key, value in first["values"].items()}
        assert shown["missing|1|asset"] == "no-res-unknown-holders"  # most requested first
        assert shown["provider|incoming|hour|fallbacks_from"] == 1

        # More traffic: the page shows it on its own, at its next refresh.
        for _ in range(3):
            assert await license(stack, "widevine", "legacy-only") == 200
        again = await page.command("values")
        assert again["refreshes"] > first["refreshes"]
        await check_page(stack, again, baseline)
        later = {key: parsed(value) for key, value in again["values"].items()}
        assert later["provider|legacy|hour|requests"] == shown["provider|legacy|hour|requests"] + 3

        SCREENSHOT.parent.mkdir(exist_ok=True)
        shot = await page.command(f"screenshot {SCREENSHOT}")
        assert shot["path"] == str(SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
