"""Catalog backends in `make bench`: lookup latency at cache miss, and the Redis import.

    .venv/bin/python -m tests.perf.catalogbench

1. One lookup at cache miss, 32 at a time: rounds of `asyncio.gather` over 32 distinct assets
   never asked before, each through a CachedCatalog (so each is a miss and a backend call),
   over a 100,000-asset catalog held by SQLite, by Redis and by the HTTP read-through backend
   (a small aiohttp metadata service in its own process, on loopback). Each lookup is timed
   on its own; p50 and p99 over every lookup of every round, backends in the same run.
2. `drm-gateway catalog import FILE --to unix://...` (and `--db FILE`, into SQLite) of 100,000
   and of 1,000,000 assets, each a fresh process: wall time, and its peak RSS (its VmHWM,
   polled from /proc while it runs). A streamed import has about the same peak at both sizes.

redis-server runs on a private unix socket under the work dir (no persistence) and is
stopped by its PID. Environment: BENCH_CATALOG (0 skips all of this), BENCH_CATALOG_ROUNDS
(rounds of 32 lookups per backend, default 200), BENCH_IMPORT_ASSETS (default 1,000,000).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from proxy.catalog import CachedCatalog
from proxy.catalog.base import Catalog, HttpCatalogSettings, RedisCatalogSettings
from proxy.catalog.http import HttpCatalog
from proxy.catalog.redis import RedisCatalog
from proxy.catalog.sqlite import SqliteCatalog
from proxy.dev.demo import DEMO_KEY_ID
from tests.perf import servers as srv
from tests.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CATALOG_ASSETS = 100_000
CONCURRENCY = 32
HOLDERS = ("incoming", "legacy", "incoming|legacy")
TAGS = ("new-release", "kids", "")


# --- the export ------------------------------------------------------------------------------


def asset_id(i: int) -> str:
    return f"asset-{i:07d}"


def export_rows(count: int) -> Iterator[list[str]]:
    """A catalog export's rows, generated (not held): the shape `catalog import` reads."""
    for i in range(count):
        yield [asset_id(i), f"res-{asset_id(i)}", HOLDERS[i % 3], TAGS[i % 3], DEMO_KEY_ID]


def write_export(path: Path, count: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags", "key_ids"])
        writer.writerows(export_rows(count))
    return path


# --- processes -------------------------------------------------------------------------------


def run_measured(argv: list[str], log: Path, *, timeout: float = 1800) -> dict[str, Any]:
    """Run `argv` to completion (stderr to `log`): its wall time and its peak RSS.

    The peak is the child's own VmHWM, read from /proc every 20 ms while it runs: its
    `ru_maxrss` would not do, as Linux carries the parent's RSS into it across the exec."""
    started = time.perf_counter()
    with log.open("wb") as err:
        process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    status_file = Path(f"/proc/{process.pid}/status")
    peak_kib = 0
    while process.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm_kib(status_file))
        if time.perf_counter() - started > timeout:
            process.kill()
            process.wait()
            raise RuntimeError(f"{' '.join(argv[:4])} took over {timeout} s")
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{' '.join(argv[:4])} exited {process.returncode}: {tail}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1)}


def _vm_hwm_kib(status_file: Path) -> int:
    """The process's peak resident set (VmHWM), 0 once it is gone."""
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def import_argv(src: Path, *, to: str | None = None, db: Path | None = None) -> list[str]:
    target = ["--to", to] if to else ["--db", str(db)]
    return [str(VENV_BIN / "drm-gateway"), "catalog", "import", str(src), *target]


# --- the HTTP metadata service (its own process) ---------------------------------------------


def serve_metadata(port: int, count: int) -> None:
    """Answer `GET /assets/{id}` for the generated export's assets (aiohttp, one process)."""
    from aiohttp import web

    answers = {
        row[0]: json.dumps(
            {
                "asset_id": row[0],
                "drm_resource_id": row[1],
                "key_holders": row[2].split("|"),
                "tags": [row[3]] if row[3] else [],
                "key_ids": [row[4]],
            }
        ).encode()
        for row in export_rows(count)
    }

    async def asset(request: web.Request) -> web.Response:
        body = answers.get(request.match_info["asset_id"])
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(body=body, content_type="application/json")

    async def root(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/assets/{asset_id}", asset)
    app.router.add_route("HEAD", "/", root)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_metadata(port: int, count: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tests.perf.catalogbench", "--metadata", str(port), str(count)]
    process = subprocess.Popen(argv, cwd=ROOT)
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the metadata service did not start") from None
            time.sleep(0.05)


# --- lookups at cache miss ---------------------------------------------------------------------


async def miss_latencies(backend: Catalog, ids: list[str]) -> list[float]:
    """Milliseconds per lookup, `CONCURRENCY` distinct misses at a time through a cache."""
    cache = CachedCatalog(
        backend, ttl=3600, negative_ttl=30, stale_seconds=600, max_entries=len(ids)
    )

    async def timed(one: str) -> float:
        started = time.perf_counter()
        entry = await cache.get(one)
        elapsed = time.perf_counter() - started
        assert entry is not None, one
        return elapsed * 1000

    # Open the pool's connections first (one round of assets outside `ids`).
    await asyncio.gather(*(cache.get(asset_id(CATALOG_ASSETS - 1 - i)) for i in range(CONCURRENCY)))
    latencies: list[float] = []
    for start in range(0, len(ids), CONCURRENCY):
        batch = ids[start : start + CONCURRENCY]
        latencies.extend(await asyncio.gather(*(timed(one) for one in batch)))
    await cache.close()
    return latencies


def quantiles(latencies: list[float]) -> dict[str, Any]:
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "lookups": len(latencies),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(cuts[98], 3),
    }


def backends(db: Path, redis_url: str, http_base: str) -> dict[str, Catalog]:
    return {
        "sqlite": SqliteCatalog(db),
        "redis": RedisCatalog(RedisCatalogSettings(url=redis_url)),
        "http": HttpCatalog(HttpCatalogSettings(base_url=http_base, max_connections=CONCURRENCY)),
    }


# --- the whole section -------------------------------------------------------------------------


def run_all(workdir: Path | None = None) -> dict[str, Any]:
    """Run and print both parts; return their figures (bench-results.json's `catalog`)."""
    rounds = int(os.environ.get("BENCH_CATALOG_ROUNDS", "200"))
    big = int(os.environ.get("BENCH_IMPORT_ASSETS", "1000000"))
    own = workdir is None
    if workdir is None:
        work = Path(tempfile.mkdtemp(prefix="drm-gateway-catbench-"))
    else:
        work = workdir / "catalog-bench"
    work.mkdir(parents=True, exist_ok=True)
    redis = start_redis_server(work)
    metadata: subprocess.Popen[bytes] | None = None
    try:
        small = write_export(work / f"export-{CATALOG_ASSETS}.csv", CATALOG_ASSETS)
        db = work / "catalog.db"
        print("\n## Catalog: import into SQLite (`catalog import --db`)", flush=True)
        sqlite_imports = {CATALOG_ASSETS: run_measured(import_argv(small, db=db), work / "i.log")}
        _print_import(CATALOG_ASSETS, sqlite_imports[CATALOG_ASSETS])
        print(f"\n## Catalog: import into Redis (`catalog import --to`, {redis.url})", flush=True)
        imports = {
            CATALOG_ASSETS: run_measured(import_argv(small, to=redis.url), work / "import.log")
        }
        _print_import(CATALOG_ASSETS, imports[CATALOG_ASSETS])
        port = srv.free_port()
        metadata = start_metadata(port, CATALOG_ASSETS)
        ids = random.Random(15).sample(
            [asset_id(i) for i in range(CATALOG_ASSETS - CONCURRENCY)], rounds * CONCURRENCY
        )
        print(
            f"\n## Catalog backends at cache miss ({CATALOG_ASSETS:,} assets; {rounds} rounds "
            f"of {CONCURRENCY} concurrent lookups of distinct assets; ms per lookup)",
            flush=True,
        )
        misses: dict[str, Any] = {}
        for name, backend in backends(db, redis.url, f"http://127.0.0.1:{port}").items():
            misses[name] = quantiles(asyncio.run(miss_latencies(backend, ids)))
            row = misses[name]
            print(f"  {name:<7} p50 {row['p50_ms']:>7.3f} ms  p99 {row['p99_ms']:>7.3f} ms  "
                  f"({row['lookups']:,} lookups)", flush=True)  # fmt: skip
        metadata.terminate()
        metadata.wait(timeout=10)
        large = write_export(work / f"export-{big}.csv", big)
        print("\n## Catalog: the large imports (into Redis, then into a new SQLite file)")
        imports[big] = run_measured(import_argv(large, to=redis.url), work / "import.log")
        _print_import(big, imports[big])
        big_db = work / "catalog-big.db"
        sqlite_imports[big] = run_measured(import_argv(large, db=big_db), work / "i.log")
        large.unlink()
        big_db.unlink()
        _print_import(big, sqlite_imports[big], "SQLite ")
        ratio = round(imports[big]["peak_rss_mib"] / imports[CATALOG_ASSETS]["peak_rss_mib"], 2)
        print(
            f"  Redis peak RSS at {big:,} over at {CATALOG_ASSETS:,}: {ratio}x (streamed: about 1)"
        )
        sqlite_ratio = round(
            sqlite_imports[big]["peak_rss_mib"] / sqlite_imports[CATALOG_ASSETS]["peak_rss_mib"], 2
        )
        print(f"  SQLite peak RSS at {big:,} over at {CATALOG_ASSETS:,}: {sqlite_ratio}x")
    finally:
        if metadata is not None and metadata.poll() is None:
            metadata.kill()
            metadata.wait()
        redis.stop()
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "miss_c32": misses,
        "redis_import": {str(n): figures for n, figures in imports.items()},
        "redis_import_peak_rss_ratio": ratio,
        "sqlite_import": {str(n): figures for n, figures in sqlite_imports.items()},
        "sqlite_import_peak_rss_ratio": sqlite_ratio,
    }


def _print_import(count: int, figures: dict[str, Any], into: str = "") -> None:
    rate = count / figures["seconds"]
    print(
        f"  {into}{count:>9,} assets: {figures['seconds']:>7.2f} s ({rate:,.0f} assets/s), "
        f"peak RSS {figures['peak_rss_mib']} MiB",
        flush=True,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--metadata":
        serve_metadata(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(run_all(), indent=2))
