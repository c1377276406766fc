"""A real Prometheus scrapes the gateway; every dashboard and alert expression is evaluated.

Each dashboard query must parse and return data on a gateway that has had no traffic yet, and
after traffic that exercises every panel (errors, fallbacks, shadows, reloads, refusals, rate
limits); each alert rule must parse.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from scripts.deploy_checks import dashboard_expressions, substitute_variables
from tests.conftest import Stack, StackFactory, player_token

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
RULES = """
version: "live-1"
default: legacy
rules:
  - name: ramp-playready
    when: {drm: [playready]}
    route: incoming
    fallback: legacy
    shadow: {to: legacy, percent: 100}
"""

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None and os.environ.get("CI") != "true",
    reason="prometheus is not installed (make tools installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def drive_traffic(stack: Stack, rounds: int) -> None:
    """Every kind of request the dashboard shows, spread over several scrapes."""
    limited = {"Authorization": f"Bearer {player_token(user='greedy')}"}
    for round_no in range(rounds):
        for path in (
            "/v1/license/widevine/both-1",
            "/v1/license/widevine/legacy-only",
            "/v1/license/playready/both-1",  # rule with shadow and fallback
            "/v1/license/widevine/unknown-asset",  # refused: 404
        ):
            async with stack.http.post(stack.url(path), data=b"\x08\x04"):
                pass
        async with stack.http.post(
            stack.url("/v1/license/fairplay/both-1"),
            data=b"\x00\x00\x00\x01" + bytes(40),
            headers={"Content-Type": "application/octet-stream"},
        ):
            pass
        for _ in range(12):  # past the per-user burst: rate limited
            async with stack.anon.post(
                stack.url("/v1/license/widevine/both-2"), data=b"\x08\x04", headers=limited
            ):
                pass
        async with stack.anon.post(stack.url("/v1/license/widevine/both-1"), data=b"x"):
            pass  # no token: refused
        if round_no == 1:
            await stack.faults(stack.incoming, error_rate=1.0)  # fallbacks from now on
        if round_no == 3:
            await stack.faults(stack.incoming, error_json_rate=1.0)  # garbled answers
        await asyncio.sleep(1.0)


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_dashboard_and_alerts_against_real_prometheus(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    assert PROMETHEUS is not None, "prometheus must be installed in CI (make tools)"
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES)
    stack = await make_stack(
        routing={"rules_file": str(rules), "poll_seconds": 0.2},
        rate_limit={"per_user": {"rate_per_second": 10, "burst": 10}},
    )
    port = free_port()
    internal = stack.gateway.internal_url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "drm-gateway", "static_configs": [{"targets": [internal]}]}
                ],
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(30):
                while True:
                    try:
                        async with http.get(f"{base}/-/ready") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        pass
                    await asyncio.sleep(0.2)
            # Before any traffic every panel already shows data (zeros), not "No data".
            await wait_for_scrapes(http, base, 3)  # rate() needs two samples
            await check_dashboard(http, base)
            rules.write_text(RULES.replace("percent: 100", "percent: 150"))  # a refused reload
            await drive_traffic(stack, rounds=6)
            await asyncio.sleep(2.5)  # two more scrapes
            await check_dashboard(http, base)
            await check_alerts(http, base)
    finally:
        proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def wait_for_scrapes(http: aiohttp.ClientSession, base: str, count: int) -> None:
    async with asyncio.timeout(30):
        while True:
            result = await query(http, base, 'count_over_time(up{job="drm-gateway"}[1m])')
            samples = result.get("data", {}).get("result", [])
            if samples and float(samples[0]["value"][1]) >= count:
                return
            await asyncio.sleep(0.2)


async def check_dashboard(http: aiohttp.ClientSession, base: str) -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/drm-gateway.json").read_text())
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    empty, broken = [], []
    for title, expr in expressions:
        result = await query(http, base, substitute_variables(expr))
        if result["status"] != "success":
            broken.append((title, expr, result.get("error")))
        elif not result["data"]["result"]:
            empty.append((title, expr))
    assert not broken, broken
    assert not empty, f"{len(empty)} dashboard queries returned no data: {empty}"


async def check_alerts(http: aiohttp.ClientSession, base: str) -> None:
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    assert len(alerts) >= 5
    for rule in alerts:
        result = await query(http, base, rule["expr"])
        assert result["status"] == "success", (rule["alert"], result.get("error"))
