"""SPEKE endpoint throughput: a 2-key (video + audio) document with all four DRM systems.

    .venv/bin/python -m tests.perf.spekebench [--requests 2000] [--concurrency 16]

Both emulated providers (key APIs on, legacy the source, incoming the mirror) and the gateway
run in one child process on loopback (`drm-gateway demo`-like, logs at warning); this process
only sends: `--concurrency` packagers in parallel, each request a new title (`?asset=` and
its own contentId), so every request generates keys at the source, writes them to the
mirror, records the title in a real SQLite catalog and renders the answer. Prints
requests/s and p50/p99 latency; every answer must be a 200 holding both keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.keys.cpix_docs import two_key_request
from tests.keys.speke_stack import LEGACY_TO_INCOMING, PACKAGER_TOKEN, bearer_headers

ROOT = Path(__file__).resolve().parents[2]


async def _serve(work: Path) -> None:
    """The child: both emulators and the gateway, until killed; prints the SPEKE URL."""
    import yaml

    from proxy.config import parse_config
    from proxy.dev.emulator import EmulatorSettings, start_emulator
    from proxy.observability.logs import configure_logging
    from proxy.server.app import start_gateway
    from tests.conftest import ENV, SEED, gateway_raw_config, write_catalog
    from tests.keys.speke_stack import (
        INCOMING_KEY_API_TOKEN,
        KEY_ENV,
        LEGACY_KEY_API_TOKEN,
        rules_text,
    )

    configure_logging(level="warning", fmt="json", stream=open(os.devnull, "w"))
    legacy = await start_emulator(
        EmulatorSettings(kind="legacy", seed=SEED, api_key=ENV["LEGACY_API_KEY"],
                         resources=None, key_api_token=LEGACY_KEY_API_TOKEN)
    )  # fmt: skip
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", seed=SEED, resources=None,
                         key_api_token=INCOMING_KEY_API_TOKEN)
    )  # fmt: skip
    rules = work / "routing.yaml"
    rules.write_text(rules_text(LEGACY_TO_INCOMING))
    raw = gateway_raw_config(write_catalog(work / "catalog.db", []), legacy.url, incoming.url)
    for name in ("legacy", "incoming"):
        provider = raw["providers"][name]
        provider["key_api"] = {
            "base_url": provider["base_url"],
            "token": {"env": f"{name.upper()}_KEY_API_TOKEN"},
        }
    raw["routing"] = {"default_provider": "legacy", "rules_file": str(rules)}
    raw["speke"] = {
        "listener": "internal",
        "credential": {"bearer": {"env": "SPEKE_TOKEN"}},
        "public_base_url": "https://drm.example.test",
    }
    (work / "gateway.yaml").write_text(yaml.safe_dump(raw))
    gateway = await start_gateway(parse_config(raw, base_dir=work, env={**ENV, **KEY_ENV}))
    print(json.dumps({"speke": gateway.internal_url + "/v2/speke"}), flush=True)
    await asyncio.Event().wait()


async def _send(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    template = two_key_request()
    latencies: list[float] = []
    failures = 0
    counter = iter(range(requests))
    headers = bearer_headers()
    assert PACKAGER_TOKEN in headers["Authorization"]

    async def packager(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for n in counter:
            body = template.replace(b'contentId="movie-1"', f'contentId="res-b{n}"'.encode())
            started = time.perf_counter()
            async with session.post(
                url, data=body, headers=headers, params={"asset": f"b{n}"}
            ) as resp:
                answer = await resp.read()
            latencies.append(time.perf_counter() - started)
            if resp.status != 200 or answer.count(b"PlainValue>") != 4:  # 2 keys, open + close
                failures += 1

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(packager(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cuts = statistics.quantiles(latencies, n=100)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "failures": failures,
        "rps": round(requests / elapsed, 1),
        "p50_ms": round(cuts[49] * 1000, 2),
        "p99_ms": round(cuts[98] * 1000, 2),
    }


def run(requests: int, concurrency: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="drm-gateway-spekebench-"))
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.perf.spekebench", "--serve", str(work)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        url = json.loads(child.stdout.readline())["speke"]
        asyncio.run(_send(url, min(200, requests), concurrency))  # warm-up
        return asyncio.run(_send(url, requests, concurrency))
    finally:
        child.kill()
        child.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        asyncio.run(_serve(args.serve))
        return
    result = run(args.requests, args.concurrency)
    print(
        "SPEKE, 2 keys x 4 DRM systems, source + mirror write per request, "
        f"c{result['concurrency']}: "
        f"{result['rps']:,.1f} req/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
        f"{result['failures']} failures of {result['requests']:,}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
