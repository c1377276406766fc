"""The console's sampler and per-minute ring (pure, on a registry of the test's own), and
`GET /admin/summary` / `GET /admin/ui` through the real gateway in front of both emulators,
their figures checked against the /metrics text."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from proxy.server.console import (
    BUCKETS,
    CONSOLE,
    PAGE_HEADERS,
    ConsoleSampler,
    CounterHistory,
    Reading,
    SeriesKey,
    SummaryShape,
    build_summary,
    console_ctx,
    increments,
    iso,
    read_families,
)
from tests.conftest import ADMIN_TOKEN, Stack, StackFactory
from tests.server.test_workers import fresh_connections, license_requests, replica

T0 = 1_700_000_000.0 - 1_700_000_000.0 % 60  # a minute boundary
R = "drm_gateway_requests_total"
F = "drm_gateway_fallbacks_total"
D = "drm_gateway_routing_decisions_total"
Samples = list[tuple[str, dict[str, str], float]]  # /metrics as (name, labels, value)


def reading(**series: float) -> Reading:
    """A reading of request counters named `<drm>__<provider>__<outcome>`."""
    return Reading({(R, tuple(name.split("__"))): value for name, value in series.items()}, {})


# --- pure parts ------------------------------------------------------------------------------


def test_increments_count_new_series_whole_and_a_reset_from_zero() -> None:
    key_a, key_b, key_c = (R, ("a",)), (R, ("b",)), (R, ("c",))
    before: dict[SeriesKey, float] = {key_a: 5.0, key_b: 7.0, key_c: 2.0}
    after: dict[SeriesKey, float] = {key_a: 8.0, key_b: 3.0, key_c: 2.0, (R, ("new",)): 4.0}
    assert increments(before, after) == {key_a: 3.0, key_b: 3.0, (R, ("new",)): 4.0}


def test_the_first_reading_is_the_baseline_and_increments_land_in_their_minute() -> None:
    history = CounterHistory()
    history.record(T0 + 5, reading(widevine__legacy__ok=100))  # before: not this hour's
    history.record(T0 + 15, reading(widevine__legacy__ok=103))
    history.record(T0 + 65, reading(widevine__legacy__ok=104, widevine__incoming__ok=2))
    window = history.window(T0 + 70)
    assert len(window) == BUCKETS
    assert [b.start for b in window[-2:]] == [T0, T0 + 60]
    assert window[0].start == T0 + 60 - (BUCKETS - 1) * 60
    assert window[-2].counts == {(R, ("widevine", "legacy", "ok")): 3.0}
    assert window[-1].counts == {
        (R, ("widevine", "legacy", "ok")): 1.0,
        (R, ("widevine", "incoming", "ok")): 2.0,
    }
    assert all(not b.counts for b in window[:-2])
    assert history.since == T0 + 5


def test_the_ring_keeps_one_hour_and_no_more_buckets_than_that() -> None:
    history = CounterHistory()
    value = 0.0
    for minute in range(3 * 60):  # three hours of traffic, sampled every 10 s
        for tick in range(6):
            value += 1
            history.record(T0 + minute * 60 + tick * 10, reading(clearkey__legacy__ok=value))
        assert len(history._ring) <= BUCKETS
    now = T0 + 3 * 60 * 60 - 1
    window = history.window(now)
    assert window[0].start == T0 + (3 * 60 - BUCKETS) * 60
    # Every minute of the last hour holds its six increments (the first reading is the
    # baseline, and it is two hours gone).
    assert [sum(b.counts.values()) for b in window] == [6.0] * BUCKETS


def test_quiet_hours_expire_the_buckets_too() -> None:
    history = CounterHistory()
    history.record(T0, reading(fairplay__legacy__ok=1))
    history.record(T0 + 10, reading(fairplay__legacy__ok=2))
    history.record(T0 + 2 * 3600, reading(fairplay__legacy__ok=2))  # no increment
    assert not history._ring
    assert all(not b.counts for b in history.window(T0 + 2 * 3600))


def test_a_clock_that_steps_back_adds_to_the_newest_bucket() -> None:
    history = CounterHistory()
    history.record(T0 + 70, reading(widevine__legacy__ok=0))
    history.record(T0 + 75, reading(widevine__legacy__ok=1))
    history.record(T0 + 30, reading(widevine__legacy__ok=3))
    assert [(b.start, b.counts) for b in history._ring] == [
        (T0 + 60, {(R, ("widevine", "legacy", "ok")): 3.0})
    ]


def own_registry() -> tuple[CollectorRegistry, dict[str, Any]]:
    """A registry with metrics named like the gateway's (their label names too)."""
    registry = CollectorRegistry()
    made = {
        "requests": Counter(
            "drm_gateway_requests",
            "x",
            ["drm", "provider", "status_class", "outcome"],
            registry=registry,
        ),
        "fallbacks": Counter(
            "drm_gateway_fallbacks", "x", ["from_provider", "to_provider"], registry=registry
        ),
        "decisions": Counter(
            "drm_gateway_routing_decisions", "x", ["provider", "rule", "reason"], registry=registry
        ),
        "circuit": Gauge("drm_gateway_circuit_state", "x", ["provider", "drm"], registry=registry),
        "other": Counter("drm_gateway_other", "x", ["drm"], registry=registry),
    }
    return registry, made


def test_read_families_keeps_the_tracked_labels_and_sums_the_rest() -> None:
    registry, m = own_registry()
    m["requests"].labels("widevine", "legacy", "2xx", "ok").inc(3)
    m["requests"].labels("widevine", "legacy", "5xx", "error").inc(1)
    m["requests"].labels("widevine", "legacy", "4xx", "client_error").inc(2)
    m["decisions"].labels("incoming", "ramp", "rule_match").inc(4)
    m["decisions"].labels("legacy", "ramp", "fallback").inc(1)
    m["circuit"].labels("incoming", "widevine").set(2)
    m["other"].labels("widevine").inc(9)
    got = read_families(registry.collect())
    assert got.counters == {
        (R, ("widevine", "legacy", "ok")): 3.0,
        (R, ("widevine", "legacy", "error")): 1.0,
        (R, ("widevine", "legacy", "client_error")): 2.0,
        (D, ("ramp", "incoming")): 4.0,
        (D, ("ramp", "legacy")): 1.0,
    }
    assert got.gauges == {("drm_gateway_circuit_state", ("incoming", "widevine")): 2.0}


def families_of(registry: CollectorRegistry) -> Iterator[Metric]:
    yield from registry.collect()


def test_the_summary_of_a_sampled_registry() -> None:
    registry, m = own_registry()
    clock = iter([T0 + 1, T0 + 20, T0 + 70, T0 + 80])
    sampler = ConsoleSampler(collect=lambda: families_of(registry), clock=lambda: next(clock))
    requests, decisions = m["requests"], m["decisions"]
    requests.labels("widevine", "legacy", "2xx", "ok").inc(10)  # before the baseline
    sampler.sample()
    requests.labels("widevine", "legacy", "2xx", "ok").inc(3)
    requests.labels("widevine", "incoming", "2xx", "ok").inc(1)
    requests.labels("widevine", "-", "4xx", "client_error").inc(5)  # refused: no provider
    decisions.labels("incoming", "ramp", "rule_match").inc(1)
    decisions.labels("legacy", "default", "default").inc(3)
    sampler.sample()
    requests.labels("widevine", "incoming", "5xx", "error").inc(2)
    requests.labels("playready", "incoming", "2xx", "ok").inc(4)
    m["fallbacks"].labels("incoming", "legacy").inc(1)
    decisions.labels("incoming", "ramp", "rule_match").inc(6)
    m["circuit"].labels("incoming", "widevine").set(1)
    sampler.sample()
    now = sampler.sample()
    body = build_summary(sampler.history, now, SummaryShape("legacy", ("legacy", "incoming")))

    share = {row["drm"]: row for row in body["share"]}
    assert share["widevine"]["hour"] == {"requests": 6, "incoming": 3, "share": 0.5}
    assert share["widevine"]["total"] == {"requests": 16, "incoming": 3, "share": 3 / 16}
    assert share["playready"]["hour"] == {"requests": 4, "incoming": 4, "share": 1.0}
    assert share["fairplay"]["hour"] == {"requests": 0, "incoming": 0, "share": None}
    minutes = share["widevine"]["minutes"]
    assert len(minutes) == BUCKETS == len(body["minutes"])
    assert minutes[-2:] == [
        {"requests": 4, "incoming": 1, "share": 0.25},
        {"requests": 2, "incoming": 2, "share": 1.0},
    ]
    assert body["minutes"][-1] == iso(T0 + 60)
    providers = {row["provider"]: row for row in body["by_provider"]}
    assert providers["incoming"]["hour"] == {
        "requests": 7,
        "errors": 2,
        "upstream_failures": 0,
        "fallbacks_from": 1,
        "fallbacks_to": 0,
        "circuit_rejected": 0,
    }
    assert providers["legacy"]["hour"]["fallbacks_to"] == 1
    assert providers["legacy"]["total"]["requests"] == 13
    assert body["circuits"] == [{"provider": "incoming", "drm": "widevine", "state": "half_open"}]
    rules = {row["rule"]: row for row in body["decisions"]}
    assert rules["ramp"] == {
        "rule": "ramp",
        "total": 7,
        "hour": 7,
        "hour_share": 0.7,
        "hour_by_provider": {"incoming": 7},
    }
    assert rules["default"]["hour_share"] == 0.3


def test_an_empty_summary_has_no_shares() -> None:
    body = build_summary(CounterHistory(), T0, SummaryShape("legacy", ("legacy",)))
    assert body["since"] is None
    assert {row["hour"]["share"] for row in body["share"]} == {None}
    assert body["circuits"] == body["decisions"] == []


async def test_the_sampler_runs_with_the_app_and_stops_with_it() -> None:
    app = web.Application()
    before = asyncio.all_tasks()
    context = console_ctx(app)
    await anext(context)
    sampler = app[CONSOLE]
    assert sampler.history.latest is not None  # the baseline, taken at start
    started = asyncio.all_tasks() - before
    assert len(started) == 1
    try:
        await anext(context)
    except StopAsyncIteration:
        pass
    assert all(task.done() for task in started)


async def test_a_failed_reading_is_logged_and_sampling_goes_on(log_buffer: io.StringIO) -> None:
    registry, m = own_registry()
    calls = 0

    def collect() -> Iterator[Metric]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError("a worker's metrics file went away")
        return families_of(registry)

    sampler = ConsoleSampler(collect=collect)
    sampler.sample()  # the baseline
    m["requests"].labels("widevine", "incoming", "2xx", "ok").inc(2)
    task = asyncio.get_running_loop().create_task(sampler.run(0.01))
    try:
        async with asyncio.timeout(5):
            while calls < 4:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    hour = sum(sum(b.counts.values()) for b in sampler.history.window(time.time()))
    assert hour == 2
    failed = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    assert [line["event"] for line in failed if line.get("component") == "console"] == [
        "console_sample_failed"
    ]


# --- through the gateway ---------------------------------------------------------------------

CONSOLE_RULES = """\
version: "console-1"
default: legacy
rules:
  - name: new-releases
    when: {tags_any: [new-release]}
    route: incoming
  - name: ramp
    when: {asset_ids: [both-1, both-2]}
    route: incoming
    fallback: legacy
"""


async def start_console_stack(make_stack: StackFactory, tmp_path: Path, **kw: Any) -> Stack:
    """Both emulators and the gateway, with rules that send both-1/both-2 to incoming with a
    legacy fallback and new releases to incoming."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(CONSOLE_RULES)
    return await make_stack(routing={"rules_file": str(rules), "poll_seconds": 0.5}, **kw)


# A ClearKey license request for one key id (base64url, unpadded).
CLEARKEY_REQUEST = json.dumps({"kids": ["AAECAwQFBgcICQoLDA0ODw"], "type": "temporary"}).encode()


async def license(stack: Stack, drm: str, asset: str) -> int:
    body = CLEARKEY_REQUEST if drm == "clearkey" else b"\x08\x04"
    async with stack.http.post(stack.url(f"/v1/license/{drm}/{asset}"), data=body) as r:
        await r.read()
        return r.status


async def drive_console_traffic(stack: Stack) -> None:
    """Licenses from both providers, titles without a drmResourceId (no-res-unknown-holders
    the most requested), and exactly one fallback (incoming failing, legacy answering)."""
    for drm, asset in (
        ("widevine", "both-1"),
        ("widevine", "both-1"),
        ("playready", "both-2"),
        ("clearkey", "incoming-only"),
        ("widevine", "legacy-only"),
        ("widevine", "no-res-unknown-holders"),
        ("playready", "no-res-unknown-holders"),
        ("widevine", "no-res-unknown-holders"),
    ):
        assert await license(stack, drm, asset) == 200, (drm, asset)
    await stack.faults(stack.incoming, error_rate=1.0)
    try:
        assert await license(stack, "widevine", "both-2") == 200  # served by the fallback
    finally:
        await stack.faults(stack.incoming, error_rate=0.0)


async def scrape(stack: Stack) -> Samples:
    """Every sample of /metrics as (name, labels, value)."""
    async with stack.anon.get(stack.internal("/metrics")) as resp:
        text = await resp.text()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def metric_sum(samples: Samples, name: str, **labels: Any) -> int:
    """The sum of the `name` samples whose labels match (a callable tests a label's value)."""

    def matches(have: dict[str, str]) -> bool:
        for label, want in labels.items():
            value = have.get(label)
            if callable(want) and not want(value):
                return False
            if not callable(want) and value != want:
                return False
        return True

    return round(sum(v for n, have, v in samples if n == name and matches(have)))


def incoming_share(samples: Samples, drm: str) -> dict[str, Any]:
    """The incoming share of `drm` from /metrics samples, as the summary states it."""
    routed = metric_sum(samples, R, drm=drm, provider=lambda p: p != "-")
    incoming = metric_sum(samples, R, drm=drm, provider=lambda p: p not in ("-", "legacy"))
    return {
        "requests": routed,
        "incoming": incoming,
        "share": incoming / routed if routed else None,
    }


def minus(after: Samples, before: Samples) -> Samples:
    """The samples of `after` less their value in `before` (the hour's increments)."""
    old = {(n, tuple(sorted(labels.items()))): v for n, labels, v in before}
    return [
        (n, labels, v - old.get((n, tuple(sorted(labels.items()))), 0.0)) for n, labels, v in after
    ]


async def get_json(stack: Stack, path: str, headers: dict[str, str] | None = None) -> Any:
    async with stack.anon.get(
        stack.internal(path), headers=headers or stack.admin_headers()
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        return await resp.json()


async def test_the_summary_matches_metrics_since_start_and_in_the_hour(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await start_console_stack(make_stack, tmp_path)
    baseline = await scrape(stack)  # what the sampler's first reading saw
    await drive_console_traffic(stack)
    body = await get_json(stack, "/admin/summary")
    now = await scrape(stack)
    hour = minus(now, baseline)

    share = {row["drm"]: row for row in body["share"]}
    for drm in ("widevine", "playready", "clearkey", "fairplay", "aes128"):
        assert share[drm]["total"] == incoming_share(now, drm), drm
        assert share[drm]["hour"] == incoming_share(hour, drm), drm
    # What the traffic was: widevine 2 incoming + 4 legacy (one a fallback), playready 1 + 1.
    assert share["widevine"]["hour"] == {"requests": 6, "incoming": 2, "share": 2 / 6}
    assert share["playready"]["hour"]["share"] == 0.5
    assert share["clearkey"]["hour"]["share"] == 1.0

    providers = {row["provider"]: row for row in body["by_provider"]}
    assert set(providers) == {"legacy", "incoming"}
    for name, row in providers.items():
        for span, samples in (("total", now), ("hour", hour)):
            assert row[span] == {
                "requests": metric_sum(samples, R, provider=name),
                "errors": metric_sum(samples, R, provider=name, outcome="error"),
                "upstream_failures": metric_sum(
                    samples,
                    "drm_gateway_upstream_responses_total",
                    provider=name,
                    status_class=lambda s: s != "2xx",
                ),
                "fallbacks_from": metric_sum(samples, F, from_provider=name),
                "fallbacks_to": metric_sum(samples, F, to_provider=name),
                "circuit_rejected": metric_sum(
                    samples, "drm_gateway_circuit_rejected_total", provider=name
                ),
            }, (name, span)
    assert providers["incoming"]["hour"]["fallbacks_from"] == 1
    assert providers["incoming"]["hour"]["upstream_failures"] >= 1

    states = {0: "closed", 1: "half_open", 2: "open"}
    assert body["circuits"] == [
        {"provider": labels["provider"], "drm": labels["drm"], "state": states[int(v)]}
        for n, labels, v in sorted(
            (s for s in now if s[0] == "drm_gateway_circuit_state"),
            key=lambda s: (s[1]["provider"], s[1]["drm"]),
        )
    ]
    decisions = {row["rule"]: row for row in body["decisions"]}
    all_hour = metric_sum(hour, D)
    for rule in ("ramp", "new-releases", "default"):
        in_hour = metric_sum(hour, D, rule=rule)
        assert decisions[rule]["hour"] == in_hour
        assert decisions[rule]["total"] == metric_sum(now, D, rule=rule)
        assert decisions[rule]["hour_share"] == in_hour / all_hour
    assert decisions["ramp"]["hour"] == 4
    assert body["missing_requests"] == {
        "hour": metric_sum(hour, "drm_gateway_assets_without_resource_id_total"),
        "total": metric_sum(now, "drm_gateway_assets_without_resource_id_total"),
    }
    assert body["missing_requests"]["hour"] == 4
    assert body["default_provider"] == "legacy"
    assert body["scope"] == "replica"


async def test_the_page_and_the_summary_need_the_admin_token(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await start_console_stack(make_stack, tmp_path)
    basic = base64.b64encode(f"anyone:{ADMIN_TOKEN}".encode()).decode()
    for path in ("/admin/ui", "/admin/ui/console.js", "/admin/ui/console.css", "/admin/summary"):
        async with stack.anon.get(stack.internal(path)) as resp:
            assert resp.status == 401, path
            challenges = resp.headers.getall("WWW-Authenticate")
            # Chromium answers only a line's first challenge: Basic must lead one.
            assert any(c.startswith("Basic ") for c in challenges)
            assert (await resp.json())["error"] == "unauthorized"
        wrong = base64.b64encode(b"admin:not-the-token-at-all").decode()
        async with stack.anon.get(
            stack.internal(path), headers={"Authorization": f"Basic {wrong}"}
        ) as resp:
            assert resp.status == 401, path
        async with stack.anon.get(
            stack.internal(path), headers={"Authorization": f"Basic {basic}"}
        ) as resp:
            assert resp.status == 200, path
            if path != "/admin/summary":
                for name, value in PAGE_HEADERS.items():
                    assert resp.headers[name] == value, (path, name)
                assert ADMIN_TOKEN not in await resp.text()
    kinds = {}
    for name in ("", "/console.js", "/console.css"):
        async with stack.anon.get(
            stack.internal(f"/admin/ui{name}"), headers=stack.admin_headers()
        ) as resp:
            kinds[name] = resp.content_type
    assert kinds == {"": "text/html", "/console.js": "text/javascript", "/console.css": "text/css"}
    for name in ("index.html", "nope.js", "..%2fconsole.py"):
        async with stack.anon.get(
            stack.internal(f"/admin/ui/{name}"), headers=stack.admin_headers()
        ) as resp:
            assert resp.status == 404, name
            assert (await resp.json())["error"] == "not_found"


async def test_the_page_references_only_its_own_files(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """No CDN, no inline script or style: everything the page loads is served next to it."""
    stack = await start_console_stack(make_stack, tmp_path)
    async with aiohttp.ClientSession(headers=stack.admin_headers()) as http:
        async with http.get(stack.internal("/admin/ui")) as resp:
            html = await resp.text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org', "")
    assert "https://" not in html
    assert "<style" not in html and " style=" not in html
    assert html.count("<script") == 1 and 'src="ui/console.js"' in html


async def test_under_workers_every_worker_sums_up_the_whole_replica(tmp_path: Path) -> None:
    """`serve --workers 2`: whichever worker answers, the summary holds both workers' requests,
    as the merged /metrics does; the legacy provider is the rules file's default."""
    async with replica(tmp_path) as gateway, fresh_connections() as http:
        await license_requests(http, gateway.ready["public"], 20)
        internal, admin = gateway.ready["internal"], {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for _ in range(4):  # a new connection each: the kernel picks the worker
            async with http.get(internal + "/admin/summary", headers=admin) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            async with http.get(internal + "/metrics") as resp:
                samples = [
                    (s.name, s.labels, s.value)
                    for family in text_string_to_metric_families(await resp.text())
                    for s in family.samples
                ]
            widevine = {row["drm"]: row for row in body["share"]}["widevine"]
            assert widevine["hour"] == {"requests": 20, "incoming": 0, "share": 0.0}
            assert widevine["total"] == incoming_share(samples, "widevine")
            assert body["default_provider"] == "legacy"
