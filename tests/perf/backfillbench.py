"""The key backfill's throughput and memory: `drm-gateway backfill` against local emulators.

    .venv/bin/python -m tests.perf.backfillbench [--titles 10000] [--concurrency 16]

Both emulated providers (legacy: every title known by its asset id; incoming: none known
until keys are ingested) serve in one child process on loopback, without access logs. A
SQLite catalog of N titles (2 key ids each, held by legacy) is written through the importer;
then `drm-gateway backfill --all --rate unlimited` runs as a fresh process, as ops run it:
export from legacy, ingest at incoming, verify with a ClearKey license through the gateway's
own provider client (JWT signed), record the holder. Printed (not asserted): titles/s and the
backfill process's peak RSS (its VmHWM, which the backfill reports itself: wait4's ru_maxrss
would count the memory of the process that started it), for N and for a catalog a tenth of
that size: a streamed run has about the same peak at both sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tests.keys.backfill_stack import (
    KEY_ENV,
    incoming_settings,
    legacy_settings,
    make_titles,
    raw_config,
    write_config,
    write_titles,
)

ROOT = Path(__file__).resolve().parents[2]


def serve_emulators(pipe: Connection) -> None:
    """Child process: both emulators until the pipe closes; sends their URLs first."""

    async def serve() -> None:
        from proxy.dev.emulator import start_emulator

        legacy = await start_emulator(legacy_settings())
        incoming = await start_emulator(incoming_settings())
        pipe.send((legacy.url, incoming.url))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv_bytes)  # EOF: stop
        await incoming.stop()
        await legacy.stop()

    try:
        asyncio.run(serve())
    except EOFError:
        pass


def run_backfill(
    work: Path, titles: int, concurrency: int, urls: tuple[str, str]
) -> dict[str, Any]:
    """One catalog of `titles`, one backfill process over it; its figures."""
    started = time.perf_counter()
    db = write_titles(work / f"catalog-{titles}.db", make_titles(titles, prefix=f"b{titles}"))
    print(f"  catalog of {titles:,} titles written in {time.perf_counter() - started:.1f} s")
    config = write_config(raw_config(db, *urls), work / f"gateway-{titles}.yaml")
    report = work / f"report-{titles}.json"
    command = [
        sys.executable, "-m", "proxy.cli", "backfill", "--config", str(config),
        "--from", "legacy", "--to", "incoming", "--all", "--rate", "unlimited",
        "--concurrency", str(concurrency), "--checkpoint", str(work / f"job-{titles}.ckpt"),
        "--report-json", str(report),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | KEY_ENV
    started = time.perf_counter()
    exit_code = subprocess.run(command, cwd=work, env=env, stdout=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - started
    data = json.loads(report.read_text())
    return {
        "titles": titles,
        "exit": exit_code,
        "wall_seconds": wall,
        "run_seconds": data["this_run"]["seconds"],
        "totals": data["totals"],
        "peak_rss_mb": data["this_run"]["peak_rss_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--titles", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=serve_emulators, args=(theirs,), daemon=True)
    child.start()
    urls = ours.recv()
    print(f"backfill bench: legacy {urls[0]}, incoming {urls[1]}, concurrency {args.concurrency}")
    try:
        with tempfile.TemporaryDirectory(prefix="backfillbench-") as tmp:
            for titles in (max(args.titles // 10, 1), args.titles):
                result = run_backfill(Path(tmp), titles, args.concurrency, urls)
                rate = result["titles"] / result["run_seconds"]
                print(
                    f"{result['titles']:>7,} titles: {rate:8,.1f} titles/s "
                    f"({result['run_seconds']:.1f} s run, {result['wall_seconds']:.1f} s with "
                    f"start-up), peak RSS {result['peak_rss_mb']} MB, exit {result['exit']}, "
                    f"{result['totals']}"
                )
    finally:
        ours.close()
        child.join(timeout=10)


if __name__ == "__main__":
    main()
