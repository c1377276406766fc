"""A new pod: `drm-gateway serve` in a fresh process, in front of both emulated providers.

A fresh process has a metrics registry no other test has touched, so what its first scrape
shows is what Prometheus sees from a pod that has had no traffic yet.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import player_token, write_serve_config
from tests.server.test_workers import start_emulators
from tests.test_deploy import missing_series, parse_scrape

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
RULES = """
version: "fresh-1"
default: legacy
rules:
  - name: ramp-playready
    when: {drm: [playready]}
    route: incoming
    percent: 50
"""
BROKEN_RULES = RULES.replace("percent: 50", "percent: 150")


@dataclass
class Served:
    """The `serve` process, its log file and its listeners (from its `started` line)."""

    process: asyncio.subprocess.Process
    log: Path
    public: str = ""
    internal: str = ""

    def lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.log.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                parsed.append({"event": "not-json", "text": line})
        return parsed


@asynccontextmanager
async def serving(tmp_path: Path, rules: str) -> AsyncIterator[Served]:
    """`drm-gateway serve` with `rules`, polled every 0.1 s; SIGTERM when the test ends."""
    legacy, incoming = await start_emulators()
    config, env = write_serve_config(tmp_path, legacy.url, incoming.url, rules, poll_seconds=0.1)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy.cli", "serve", "--config", str(config),
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
    served = Served(process, log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (started := [x for x in served.lines() if x.get("event") == "started"]):
            assert process.returncode is None, f"serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
            await asyncio.sleep(0.05)
        served.public, served.internal = started[0]["public"], started[0]["internal"]
        yield served
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), TIMEOUT)
        await incoming.stop()
        await legacy.stop()


async def scrape(http: aiohttp.ClientSession, internal: str) -> str:
    async with http.get(internal + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_a_fresh_gateway_has_every_series_the_dashboard_and_alerts_query(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, RULES) as gateway, aiohttp.ClientSession() as http:
        text = await scrape(http, gateway.internal)
    samples = parse_scrape(text)
    assert not missing_series(samples), "\n".join(missing_series(samples))
    assert not [name for name in samples if name.endswith("_created")]
    zero = [
        'drm_gateway_rules_reloads_total{result="refused"} 0.0',
        'drm_gateway_refused_requests_total{detail="expired",reason="unauthorized"} 0.0',
        'drm_gateway_requests_total{drm="aes128",outcome="error",provider="incoming",'
        'status_class="5xx"} 0.0',
        'drm_gateway_upstream_responses_total{provider="legacy",provider_error="-",'
        'status_class="timeout"} 0.0',
        'drm_gateway_routing_decisions_total{provider="incoming",reason="rule_match",'
        'rule="ramp-playready"} 0.0',
        'drm_gateway_fallbacks_total{from_provider="incoming",to_provider="legacy"} 0.0',
    ]
    assert [line for line in zero if line not in text] == []
    assert "drm_gateway_rules_file_valid 1.0" in text


async def test_serve_with_a_broken_rules_file_starts_unready_then_recovers(
    tmp_path: Path,
) -> None:
    player = {"Authorization": f"Bearer {player_token()}"}
    async with serving(tmp_path, BROKEN_RULES) as gateway, aiohttp.ClientSession() as http:
        async with http.get(gateway.internal + "/readyz") as resp:
            assert resp.status == 503
            ready = await resp.json()
        assert ready["ready"] is False
        assert any("no routing rules active" in p for p in ready["problems"])
        assert any("150 is out of range" in p for p in ready["problems"])
        async with http.post(
            gateway.public + "/v1/license/widevine/both-1", data=b"\x08\x04", headers=player
        ) as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["error"] == "rules_unavailable"
            assert body["request_id"] == resp.headers["X-Request-Id"]
        assert "drm_gateway_rules_file_valid 0.0" in await scrape(http, gateway.internal)

        (tmp_path / "routing.yaml").write_text(RULES)
        async with asyncio.timeout(TIMEOUT):
            while True:  # the poll picks the fixed file up
                async with http.get(gateway.internal + "/readyz") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
        async with http.post(
            gateway.public + "/v1/license/widevine/both-1", data=b"\x08\x04", headers=player
        ) as resp:
            assert resp.status == 200
        assert "drm_gateway_rules_file_valid 1.0" in await scrape(http, gateway.internal)
    lines = gateway.lines()
    assert not [x for x in lines if x["event"] == "not-json"], "a traceback or stray text"
    (refused,) = [x for x in lines if x["event"] == "rules_refused"]
    assert refused["trigger"] == "start" and refused["level"] == "error"
    assert any("150 is out of range" in p for p in refused["problems"])
    assert refused["serving"].startswith("nothing: not ready")
    assert gateway.process.returncode == 0
