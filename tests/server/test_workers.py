"""`run_workers`: a real 2-worker gateway in a subprocess, in front of both emulated providers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.config import parse_config
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.server.workers import run_workers
from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY,
    INCOMING_RESOURCES,
    LEGACY_API_KEY,
    LEGACY_RESOURCES,
    SEED,
    gateway_raw_config,
    player_token,
    write_catalog,
    write_serve_config,
)
from tests.test_deploy import missing_series, parse_scrape

LAUNCH = """
import sys
from pathlib import Path
from proxy.config import load_config
from proxy.observability.logs import configure_logging
from proxy.server.workers import run_workers
config = load_config(Path(sys.argv[1]))
configure_logging(level="info", fmt="json")
run_workers(config, int(sys.argv[2]))
"""
RULES = 'version: "w-1"\ndefault: legacy\nrules: []\n'
LICENSE_PATH = "/v1/license/widevine/legacy-only"
TIMEOUT = 15.0


@dataclass
class Replica:
    """The supervisor process, its log file, and the URLs from its `workers_ready` line."""

    process: asyncio.subprocess.Process
    log: Path
    ready: dict[str, Any]

    def lines(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.log.read_text().splitlines():
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue  # a traceback or a warning: not ours to parse
        return parsed

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                pytest.fail(
                    f"supervisor exited ({self.process.returncode}):\n{self.log.read_text()}"
                )
            found = [line for line in self.lines() if predicate(line)]
            if found:
                return found[-1]
            await asyncio.sleep(0.05)
        pytest.fail(f"log line not seen within {TIMEOUT} s:\n{self.log.read_text()}")

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), TIMEOUT)


async def start_emulators() -> tuple[RunningEmulator, RunningEmulator]:
    """Both emulated providers on loopback, knowing the test catalog's assets."""
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy", seed=SEED, api_key=LEGACY_API_KEY, resources=LEGACY_RESOURCES
        )
    )
    incoming = await start_emulator(
        EmulatorSettings(
            kind="incoming",
            seed=SEED,
            resources=INCOMING_RESOURCES,
            jwt_keys={"k1": INCOMING_JWT_KEY},
            jwt_algorithms=("HS256",),
        )
    )
    return legacy, incoming


@asynccontextmanager
async def replica(tmp_path: Path, workers: int = 2) -> AsyncIterator[Replica]:
    """The gateway under `run_workers` in a subprocess; killed if the test leaves it running."""
    legacy, incoming = await start_emulators()
    config_file, env = write_serve_config(
        tmp_path, legacy.url, incoming.url, RULES, poll_seconds=60
    )
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAUNCH, str(config_file), str(workers),
            stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
        )  # fmt: skip
    running = Replica(process, log, {})
    try:
        running.ready = await running.wait_for(lambda line: line.get("event") == "workers_ready")
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await incoming.stop()
        await legacy.stop()


def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a new connection per request, so the kernel picks a worker each time."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        headers={"Authorization": f"Bearer {player_token()}"},
    )


async def license_requests(http: aiohttp.ClientSession, url: str, count: int) -> None:
    for _ in range(count):
        async with http.post(
            url + LICENSE_PATH,
            data=b"\x08\x04",
            headers={"Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 200, await resp.text()


def metric_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum of one metric's samples whose labels include `labels`."""
    total = 0.0
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in exposition.splitlines():
        if line.startswith((name + "{", name + " ")) and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_both_workers_serve_metrics_add_up_and_sigterm_stops_all(tmp_path: Path) -> None:
    async with replica(tmp_path) as gateway, fresh_connections() as http:
        pids = set(gateway.ready["pids"])
        assert len(pids) == 2 and gateway.process.pid not in pids
        await license_requests(http, gateway.ready["public"], 40)

        # Each new connection is hashed to one worker: 40 all on one has odds of 2**-39.
        served_by = {
            line["worker_pid"]
            for line in gateway.lines()
            if line.get("event") == "request" and line.get("route", "").startswith("/v1/license")
        }
        assert served_by == pids
        # Whichever worker answers /metrics, it reports the requests of both.
        for _ in range(6):
            async with http.get(gateway.ready["internal"] + "/metrics") as resp:
                text = await resp.text()
            assert metric_sum(text, "drm_gateway_requests_total", drm="widevine") == 40

        assert await gateway.stop() == 0
        assert not any(alive(pid) for pid in pids)
        assert not Path(gateway.ready["metrics_dir"]).exists()
        assert gateway.lines()[-1]["event"] == "workers_stopped"


async def test_sighup_reaches_every_worker_and_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    async with replica(tmp_path) as gateway, fresh_connections() as http:
        internal = gateway.ready["internal"]
        assert gateway.process.pid is not None
        os.kill(gateway.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        reloads = 0.0
        while reloads < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            async with http.get(internal + "/metrics") as resp:
                text = await resp.text()
            reloads = metric_sum(text, "drm_gateway_rules_reloads_total", result="unchanged")
        assert reloads == 2  # each worker re-read the rules file once

        victim = gateway.ready["pids"][0]
        os.kill(victim, signal.SIGKILL)
        restarted = await gateway.wait_for(lambda line: line.get("event") == "worker_restarted")
        assert restarted["pid"] not in gateway.ready["pids"]
        await gateway.wait_for(
            lambda line: (
                line.get("event") == "started" and line.get("worker_pid") == restarted["pid"]
            )
        )
        await license_requests(http, gateway.ready["public"], 10)
        assert await gateway.stop() == 0


def test_a_port_taken_by_another_program_fails_before_any_worker_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        raw = gateway_raw_config(write_catalog(tmp_path / "c.db"), "http://x", "http://y")
        raw["server"]["public"]["port"] = taken.getsockname()[1]
        config = parse_config(raw, base_dir=tmp_path, env=ENV)
        with pytest.raises(OSError):
            run_workers(config, 2)
        with pytest.raises(ValueError, match="at least 1"):
            run_workers(config, 0)


async def wait_for_sample(
    http: aiohttp.ClientSession, internal: str, name: str, value: float, **labels: str
) -> str:
    """Scrape until the workers' merged `name{labels}` adds up to `value`; the last scrape."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        async with http.get(internal + "/metrics") as resp:
            text = await resp.text()
        if metric_sum(text, name, **labels) == value or time.monotonic() > deadline:
            assert metric_sum(text, name, **labels) == value, text
            return text
        await asyncio.sleep(0.1)


async def test_merged_scrape_is_complete_has_no_created_series_and_drops_replaced_versions(
    tmp_path: Path,
) -> None:
    async with replica(tmp_path) as gateway, fresh_connections() as http:
        internal = gateway.ready["internal"]
        async with http.get(internal + "/metrics") as resp:
            text = await resp.text()
        assert missing_series(parse_scrape(text)) == []
        assert "_created" not in text
        assert 'drm_gateway_rules_info{sha256="' in text and 'version="w-1"} 1.0' in text

        (tmp_path / "routing.yaml").write_text(RULES.replace("w-1", "w-2"))
        assert gateway.process.pid is not None
        os.kill(gateway.process.pid, signal.SIGHUP)
        await wait_for_sample(http, internal, "drm_gateway_rules_reloads_total", 2, result="ok")
        for _ in range(4):  # whichever worker answers, the replaced version is gone
            async with http.get(internal + "/metrics") as resp:
                text = await resp.text()
            assert 'version="w-1"' not in text
            assert metric_sum(text, "drm_gateway_rules_info", version="w-2") == 1

        (tmp_path / "routing.yaml").write_text("version: broken\nrules: [\n")
        os.kill(gateway.process.pid, signal.SIGHUP)
        assert metric_sum(text, "drm_gateway_rules_file_valid") == 1
        await wait_for_sample(
            http, internal, "drm_gateway_rules_reloads_total", 2, result="refused"
        )
        await wait_for_sample(http, internal, "drm_gateway_rules_file_valid", 0)
        async with http.get(internal + "/readyz") as resp:
            assert resp.status == 200  # both workers still serve w-2
        assert await gateway.stop() == 0
