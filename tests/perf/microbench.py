"""Micro-benchmarks of the hot pure functions (timeit, microseconds per call), each provider
kind's per-request building cost beside the generic JWT's, and the memory a 1,000,000-entry
catalog cache takes (RSS of a fresh process, bytes per entry).

    .venv/bin/python -m tests.perf.microbench
"""

from __future__ import annotations

import asyncio
import base64
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
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.dev.demo import DEMO_KEY_ID
from proxy.dev.kinds import kind_env, provider_section
from proxy.observability import metrics
from proxy.routing.file import load_rules_file
from proxy.routing.rules import ProviderTraits, RequestContext, evaluate
from proxy.upstream import axinom, doverunner, drmtoday, ezdrm, verimatrix, widevine_cloud
from proxy.upstream.breaker import BreakerSettings, CircuitBreaker
from proxy.upstream.budget import RetryBudget, RetryBudgetSettings
from proxy.upstream.deadline import TRY_LIMITS, Deadline, DeadlineSettings
from proxy.upstream.fairplay import encode_ckc, encode_spc, parse_ckc_response, parse_spc_request
from proxy.upstream.http.reader import ResponseReader
from proxy.upstream.signer import SigningKey, TokenContext, TokenSettings, TokenSigner

PERF = Path(__file__).resolve().parent
ROOT = PERF.parents[1]
SECRET = b"bench-player-secret-0123456789abcdef"
PROVIDERS = {"legacy": ProviderTraits(False), "incoming": ProviderTraits(True)}
MEMORY_ENTRIES = 1_000_000
# Bytes per cached entry at 1,000,000 before issue 15's change (cachetools' LRUCache holding
# found and missing assets alike), on the machine the target was set on.
CACHE_BYTES_BEFORE = 432
GENERIC_TOKEN = "tokens.TokenSigner.sign HS256"
# The request every kind case builds for: the bench's Widevine request (2 KB challenge).
CHALLENGE = b"c" * 2048
RESOURCE_ID, ASSET_ID, USER_ID, REQUEST_ID = "res-asset-00009", "asset-00009", "user-1", "req-1"


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
    context = TokenContext(RESOURCE_ID, ASSET_ID, "widevine", USER_ID, REQUEST_ID)
    return {GENERIC_TOKEN: lambda: signer.sign(context)}


def kind_settings(kind: str) -> ProviderSettings:
    """The kind's dev provider section (proxy/dev/demo_data/providers), read as `serve` does."""
    reader = ConfigReader(PERF, kind_env(kind))
    section = provider_section(kind, "http://127.0.0.1:9")
    settings = parse_providers(reader, {"incoming": section}).get("incoming")
    if reader.problems or settings is None:
        raise RuntimeError(f"{kind}: " + "; ".join(reader.problems))
    return settings


def kind_cases() -> dict[str, Callable[[], object]]:
    """What each kind's adapter builds per Widevine request, with the builder it keeps."""
    dove = kind_settings("doverunner").options
    axi = kind_settings("axinom").options
    dt = kind_settings("drmtoday").options
    ez = kind_settings("ezdrm").options
    vmx = kind_settings("verimatrix").options
    wv = kind_settings("widevine-cloud").options
    assert isinstance(dove, doverunner.DoveRunnerOptions)
    assert isinstance(axi, axinom.AxinomOptions)
    assert isinstance(dt, drmtoday.DrmTodayOptions)
    assert isinstance(ez, ezdrm.EzdrmOptions)
    assert isinstance(vmx, verimatrix.VerimatrixOptions)
    assert isinstance(wv, widevine_cloud.WidevineCloudOptions)
    tokens = doverunner.LicenseTokenBuilder(dove)
    entitlements = axinom.EntitlementSigner(axi)
    auth = drmtoday.DrmTodayAuth(dt)
    vmx_signer = TokenSigner(vmx.token_settings())
    context = TokenContext(RESOURCE_ID, ASSET_ID, "widevine", USER_ID, REQUEST_ID)
    key_ids = (DEMO_KEY_ID,)
    return {
        KIND_CASES["doverunner"]: lambda: tokens.build(
            "widevine", user_id=USER_ID, cid=RESOURCE_ID
        ),
        KIND_CASES["axinom"]: lambda: entitlements.sign(key_ids),
        KIND_CASES["drmtoday"]: lambda: auth.headers(RESOURCE_ID, USER_ID, REQUEST_ID),
        KIND_CASES["ezdrm"]: lambda: ezdrm.build_query(ez, USER_ID),
        KIND_CASES["verimatrix"]: lambda: vmx_signer.sign(context),
        KIND_CASES["widevine-cloud"]: lambda: widevine_cloud.envelope(wv, CHALLENGE, RESOURCE_ID),
        # For scale: DoveRunner's AES is done once per provider, not per request.
        "kind doverunner: encrypt_policy (AES-256-CBC; once at start-up)": lambda: (
            doverunner.encrypt_policy(dove.policy_json, dove.site_key)
        ),
    }


# Per kind, the name of its per-request building case (compared with GENERIC_TOKEN).
KIND_CASES = {
    "doverunner": "kind doverunner: LicenseTokenBuilder.build (SHA-256 hash, base64 JSON)",
    "axinom": "kind axinom: EntitlementSigner.sign (HS256 JWT of the key ids)",
    "drmtoday": "kind drmtoday: DrmTodayAuth.headers (HS512 upfront token)",
    "ezdrm": "kind ezdrm: build_query (pX)",
    "verimatrix": "kind verimatrix: TokenSigner.sign (HS256 JWT, kid header)",
    "widevine-cloud": "kind widevine-cloud: envelope (2 KB challenge, SHA-1 + AES-256-CBC)",
}


def answer_cases() -> dict[str, Callable[[], object]]:
    """Unwrapping the JSON envelopes two kinds answer with (a 1.5 KB license)."""
    license_b64 = base64.b64encode(bytes(1536)).decode("ascii")
    drmtoday_answer = json.dumps({"license": license_b64}).encode()
    google_answer = json.dumps({"status": "OK", "license": license_b64}).encode()
    return {
        "kind drmtoday: unwrap_widevine (JSON answer)": lambda: drmtoday.unwrap_widevine(
            drmtoday_answer
        ),
        "kind widevine-cloud: read_license": lambda: widevine_cloud.read_license(google_answer),
    }


def kind_ratios(micro: dict[str, float]) -> dict[str, float]:
    """Each kind's request-building cost over the generic JWT's, from one run's figures."""
    generic = micro[GENERIC_TOKEN]
    return {kind: round(micro[name] / generic, 2) for kind, name in KIND_CASES.items()}


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
    """A catalog backend answering every id with an entry built the way SQLite rows are, but
    ids starting with `ghost-`, which it does not know."""

    async def get(self, asset_id: str) -> CatalogEntry | None:
        return None if asset_id.startswith("ghost-") else _entry(asset_id)

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


RESILIENCE_TRY = "resilience: closed circuit + retry budget, per upstream try"


def resilience_cases() -> dict[str, Callable[[], object]]:
    """What issue 17 adds to each upstream try on the healthy path: the circuit's admit and
    verdict and the budget's count, with the two clock reads the try makes for them (and
    for upstream_ms); and per request, the deadline and the first try's limits."""
    circuit = CircuitBreaker(BreakerSettings())
    budget = RetryBudget(RetryBudgetSettings())
    settings = DeadlineSettings()
    clock = time.monotonic

    def closed_try() -> None:
        started = clock()
        ticket = circuit.admit(started)
        budget.request(started)
        circuit.success(ticket, clock())

    def deadline() -> None:
        limits = Deadline(settings).limits(5.0, last=False)
        TRY_LIMITS.reset(TRY_LIMITS.set(limits))

    return {
        RESILIENCE_TRY: closed_try,
        "resilience: deadline + first try's limits + TRY_LIMITS set/reset, per request": deadline,
    }


def run_micro() -> dict[str, float]:
    cases: dict[str, Callable[[], object]] = {}
    groups = (
        rules_cases, auth_cases, token_cases, kind_cases, answer_cases, fairplay_cases,
        http_cases, metrics_cases, resilience_cases,
    )  # fmt: skip
    for group in groups:
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
    """Fill a cache with `entries` found assets, then with as many unknown ones as it keeps
    (its separate cap for known-missing assets); RSS growth of each step. Then ten times as
    many unknown ids again: the cap holds, and the found assets stay."""
    cache = _cache(entries)

    async def fill(prefix: str, count: int) -> None:
        for i in range(count):
            await cache.get(f"{prefix}{i:07d}")

    gc.collect()
    before = rss_kib()
    asyncio.run(fill("asset-", entries))
    gc.collect()
    after = rss_kib()
    assert len(cache) == entries
    cap = entries // 10  # CachedCatalog's default cap for known-missing assets
    asyncio.run(fill("ghost-", cap))
    gc.collect()
    final = rss_kib()
    negatives = cache.negative_count
    assert negatives == cap and len(cache) == entries + negatives
    asyncio.run(fill("ghost-more-", 10 * cap))  # far past the cap: the found ones must stay
    gc.collect()
    # Over its cap, the oldest generation of unknown ids goes whole (three quarters stay).
    churned = cache.negative_count
    assert cap * 3 // 4 <= churned <= cap and len(cache) == entries + churned
    return {
        "entries": entries,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "bytes_per_entry": round((after - before) * 1024 / entries),
        "negative_entries": negatives,
        "bytes_per_negative_entry": round((final - after) * 1024 / negatives),
        "bytes_per_entry_all": round((final - before) * 1024 / (entries + negatives)),
        "rss_after_negative_churn_mib": round(rss_kib() / 1024, 1),
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


def run_all() -> tuple[dict[str, float], dict[str, float], dict[str, Any]]:
    """Run and print both sections; return (micro-benchmarks, each kind's request-building
    cost over the generic JWT's, catalog memory)."""
    print("\n## Micro-benchmarks (timeit, best of 5, microseconds per call)", flush=True)
    micro = run_micro()
    ratios = kind_ratios(micro)
    by_case = {name: ratios[kind] for kind, name in KIND_CASES.items()}
    for name, us in micro.items():
        ratio = f"  ({by_case[name]:.2f}x the generic JWT)" if name in by_case else ""
        print(f"  {us:>9.2f} us  {name}{ratio}")
    print(f"\n## Memory: a CachedCatalog filled with {MEMORY_ENTRIES:,} entries", flush=True)
    memory = catalog_memory()
    print(
        f"  RSS {memory['rss_before_mib']} MiB -> {memory['rss_after_mib']} MiB: "
        f"{memory['bytes_per_entry']} bytes per cached entry "
        "(asset id, drmResourceId, shared key-holder and tag sets, its dict slot); "
        f"{CACHE_BYTES_BEFORE} before issue 15 (target <= 300)"
    )
    print(
        f"  then {memory['negative_entries']:,} known-missing assets (their own cap): "
        f"{memory['bytes_per_negative_entry']} bytes each; {memory['bytes_per_entry_all']} "
        "bytes per entry counting both; after 10x as many more unknown ids, RSS "
        f"{memory['rss_after_negative_churn_mib']} MiB (cap held, found assets kept)"
    )
    return micro, ratios, memory


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--catalog-memory":
        print(json.dumps(catalog_memory_child(int(sys.argv[2]))))
    else:
        run_all()
