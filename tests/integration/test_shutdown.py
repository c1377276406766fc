"""Graceful shutdown: SIGTERM turns /readyz unready at once and lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import yaml

from proxy.dev.emulator import EmulatorSettings, Faults, start_emulator
from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY,
    LEGACY_API_KEY,
    SEED,
    gateway_raw_config,
    player_token,
    write_catalog,
)

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_ready(http: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(20):
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy", seed=SEED, api_key=LEGACY_API_KEY, faults=Faults(latency_ms=1500)
        )
    )
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", seed=SEED, jwt_keys={"k1": INCOMING_JWT_KEY})
    )
    public, internal = free_port(), free_port()
    raw = gateway_raw_config(write_catalog(tmp_path / "c.db"), legacy.url, incoming.url)
    raw["server"] |= {
        "public": {"port": public},
        "internal": {"port": internal},
        "shutdown_grace_seconds": 10,
    }
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "serve",
        "--config",
        str(config),
        cwd=ROOT,
        env=ENV | {"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    headers = {"Authorization": f"Bearer {player_token()}"}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, f"http://127.0.0.1:{internal}/readyz")
            burst = [
                asyncio.create_task(
                    http.post(
                        f"http://127.0.0.1:{public}/v1/license/widevine/both-1",
                        data=b"\x08\x04",
                        headers=headers,
                    )
                )
                for _ in range(20)
            ]
            await asyncio.sleep(0.5)  # all 20 are now waiting on the slow provider
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{internal}/readyz") as resp:
                assert resp.status == 503
                assert "shutting down" in (await resp.json())["problems"][0]
            responses = await asyncio.gather(*burst)
            assert [r.status for r in responses] == [200] * 20
            for r in responses:
                assert (await r.read()).startswith(b"EMULATED-LICENSE\nlegacy")
        async with asyncio.timeout(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await legacy.stop()
        await incoming.stop()
