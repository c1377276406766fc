"""Micro-benchmarks of the hot pure functions (timeit, microseconds per call), and the memory
a 1,000,000-entry catalog cache takes (RSS of a fresh process, bytes per entry).

    .venv/bin/python -m tests.perf.microbench
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.access.player_tokens import PlayerAuthenticator, PlayerAuthSettings, issue_token
from proxy.catalog import CachedCatalog, CatalogEntry
from proxy.catalog.sqlite import decode_row
from proxy.observability import metrics
from proxy.routing.file import load_rules_file
from proxy.routing.rules import ProviderTraits, RequestContext, evaluate
from proxy.upstream.fairplay import encode_ckc, encode_spc, parse_ckc_response, parse_spc_request
from proxy.upstream.http.reader import ResponseReader
from proxy.upstream.signer import SigningKey, TokenContext, TokenSettings, TokenSigner

PERF = Path(__file__).resolve().parent
ROOT = PERF.parents[1]
SECRET = b"bench-player-secret-0123456789abcdef"
PROVIDERS = {"legacy": ProviderTraits(False), "incoming": ProviderTraits(True)}
MEMORY_ENTRIES = 1_000_000


def per_call_us(func: Callable[[], object], *, repeat: int = 5) -> float:
    """The best of `repeat` timeit rounds, each long enough to be measured (~0.2 s)."""
    timer = timeit.Timer(func)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def _entry(asset_id: str) -> CatalogEntry:
    return decode_row(asset_id, (f"res-{asset_id}", '["incoming"]', '["new-release"]'))


def rules_cases() -> dict[str, Callable[[], object]]:
    rules = load_rules_file(PERF / "rules.yaml", providers=PROVIDERS)
    entry = _entry("asset-00009")
    matched = RequestContext("widevine", "asset-00009", entry, "android", "6.4.1", "user-1")
    ramped = RequestContext("playready", "asset-00013", _entry("asset-00013"), "web", "6.4.1")
    return {
        "rules.evaluate, 20 rules, match at rule 14": lambda: evaluate(rules, matched, PROVIDERS),
        "rules.evaluate, 20 rules, 10% rollout at rule 8": lambda: evaluate(
            rules, ramped, PROVIDERS
        ),
    }


def auth_cases() -> dict[str, Callable[[], object]]:
    settings = PlayerAuthSettings(
        algorithms=("HS256",), hmac_secret=SECRET, issuer="idp", audience="drm-gateway"
    )
    token = issue_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        kid=None,
        user_id="user-1",
        entitlements=["*"],
        ttl_seconds=3600,
        issuer="idp",
        audience="drm-gateway",
    )
    cached = PlayerAuthenticator(settings)
    uncached = PlayerAuthenticator(PlayerAuthSettings(**{**_fields(settings), "cache_size": 0}))
    return {
        "auth.authenticate HS256, verified-token cache hit": lambda: cached.authenticate(token),
        "auth.authenticate HS256, full verification": lambda: uncached.authenticate(token),
    }


def _fields(settings: PlayerAuthSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


def token_cases() -> dict[str, Callable[[], object]]:
    signer = TokenSigner(
        TokenSettings(
            algorithm="HS256",
            keys=(SigningKey("k1", b"bench-incoming-jwt-key-0123456789abcdef"),),
            active_kid="k1",
        )
    )
    context = TokenContext("res-asset-00009", "asset-00009", "widevine", "user-1", "req-1")
    return {"tokens.TokenSigner.sign HS256": lambda: signer.sign(context)}


def fairplay_cases() -> dict[str, Callable[[], object]]:
    spc = b"\x00\x00\x00\x01" + bytes(range(256)) * 8
    form, _ = encode_spc(spc, "form", asset_id="asset-00009")
    ckc = b"\x00\x00\x00\x01" + bytes(1100)
    ckc_tag, _ = encode_ckc(ckc, "ckc_tag")
    limit = 65536
    return {
        "fairplay.parse_spc_request binary 2 KB": lambda: parse_spc_request(
            spc, "application/octet-stream", max_spc_bytes=limit
        ),
        "fairplay.parse_spc_request form 2 KB": lambda: parse_spc_request(
            form, "application/x-www-form-urlencoded", max_spc_bytes=limit
        ),
        "fairplay.encode_spc form": lambda: encode_spc(spc, "form", asset_id="asset-00009"),
        "fairplay.parse_ckc_response ckc_tag": lambda: parse_ckc_response(ckc_tag, "ckc_tag"),
        "fairplay.encode_ckc binary": lambda: encode_ckc(ckc, "binary"),
    }


def http_cases() -> dict[str, Callable[[], object]]:
    # A provider's typical license answer: aiohttp's head, a 1 KiB body, in one read.
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 1024\r\nDate: Wed, 02 Dec 2026 10:00:00 GMT\r\n"
        b"Server: Python/3.11 aiohttp/3.10.5\r\n\r\n" + bytes(1024)
    )
    reader = ResponseReader()

    def read() -> object:
        reader.start(head=False, limit=1_048_576)
        return reader.feed(answer)

    return {"httpreader.ResponseReader start + feed, 1 KiB answer": read}


class _MemoryBackend:
    """A catalog backend answering every id with an entry built the way SQLite rows are."""

    async def get(self, asset_id: str) -> CatalogEntry | None:
        return _entry(asset_id)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def _cache(max_entries: int) -> CachedCatalog:
    return CachedCatalog(
        _MemoryBackend(), ttl=3600, negative_ttl=30, stale_seconds=600, max_entries=max_entries
    )


def catalog_hit_us() -> float:
    """CachedCatalog.get on a warm entry, awaited in a loop (no suspension on a hit)."""
    cache = _cache(10)
    calls = 200_000

    async def run() -> float:
        await cache.get("asset-00009")
        started = time.perf_counter()
        for _ in range(calls):
            await cache.get("asset-00009")
        return time.perf_counter() - started

    return min(asyncio.run(run()) for _ in range(3)) / calls * 1e6


def metrics_cases() -> dict[str, Callable[[], object]]:
    counter = metrics.REQUESTS
    return {
        "metrics: labels(...).inc() (as the middleware does)": lambda: counter.labels(
            "widevine", "incoming", "2xx", "ok"
        ).inc(),
    }


def run_micro() -> dict[str, float]:
    cases: dict[str, Callable[[], object]] = {}
    for group in (rules_cases, auth_cases, token_cases, fairplay_cases, http_cases, metrics_cases):
        cases.update(group())
    results = {name: round(per_call_us(func), 2) for name, func in cases.items()}
    results["catalog.CachedCatalog.get, cache hit"] = round(catalog_hit_us(), 2)
    return results


# --- memory (in a fresh process, so nothing else inflates its RSS) -------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def catalog_memory_child(entries: int) -> dict[str, Any]:
    cache = _cache(entries)

    async def fill() -> None:
        for i in range(entries):
            await cache.get(f"asset-{i:07d}")

    gc.collect()
    before = rss_kib()
    asyncio.run(fill())
    gc.collect()
    after = rss_kib()
    assert len(cache) == entries
    return {
        "entries": entries,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "bytes_per_entry": round((after - before) * 1024 / entries),
    }


def catalog_memory(entries: int = MEMORY_ENTRIES) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.perf.microbench", "--catalog-memory", str(entries)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=600,
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run_all() -> tuple[dict[str, float], dict[str, Any]]:
    """Run and print both sections; return (micro-benchmarks, catalog memory)."""
    print("\n## Micro-benchmarks (timeit, best of 5, microseconds per call)", flush=True)
    micro = run_micro()
    for name, us in micro.items():
        print(f"  {us:>9.2f} us  {name}")
    print(f"\n## Memory: a CachedCatalog filled with {MEMORY_ENTRIES:,} entries", flush=True)
    memory = catalog_memory()
    print(
        f"  RSS {memory['rss_before_mib']} MiB -> {memory['rss_after_mib']} MiB: "
        f"{memory['bytes_per_entry']} bytes per cached entry "
        "(asset id, drmResourceId, shared key-holder and tag sets, LRU bookkeeping)"
    )
    return micro, memory


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--catalog-memory":
        print(json.dumps(catalog_memory_child(int(sys.argv[2]))))
    else:
        run_all()
