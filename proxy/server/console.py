"""The migration console on the internal port: a static page (`GET /admin/ui`) and the last hour
of this process's counters behind it (`GET /admin/summary`), both behind the admin token.

A sampler reads the counters the page needs from the metric objects (never the /metrics text)
every `SAMPLE_SECONDS` and adds their increments to a ring of per-minute buckets covering an
hour, so memory stays bounded by buckets x series. Every summary request reads the counters
once more, so its totals equal what /metrics shows at that moment. Under `serve --workers N`
the merged samples of every live worker are read, as /metrics does.

The summary carries every figure the page shows (shares included), so the page only formats.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.metrics_core import Metric

from proxy.domain import ALL_DRMS
from proxy.errors import NotFound
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.server.admin import RULES, require_admin

if TYPE_CHECKING:
    from proxy.routing.rules import RuleSet

log = get_logger("console")

SAMPLE_SECONDS = 10.0
BUCKET_SECONDS = 60
BUCKETS = 60  # an hour of minutes
NO_PROVIDER = metrics.NO_PROVIDER
CIRCUIT_STATES = {0: "closed", 1: "half_open", 2: "open"}

# A series: (sample name, the label values kept, in the order listed below).
SeriesKey = tuple[str, tuple[str, ...]]
Counts = dict[SeriesKey, float]

REQUESTS = "drm_gateway_requests_total"
FALLBACKS = "drm_gateway_fallbacks_total"
DECISIONS = "drm_gateway_routing_decisions_total"
UPSTREAM = "drm_gateway_upstream_responses_total"
REJECTED = "drm_gateway_circuit_rejected_total"
WITHOUT_ID = "drm_gateway_assets_without_resource_id_total"
CIRCUIT = "drm_gateway_circuit_state"

# The counters the page shows, each with the labels it keeps (the others are summed over).
COUNTERS: Mapping[str, tuple[str, ...]] = {
    REQUESTS: ("drm", "provider", "outcome"),
    FALLBACKS: ("from_provider", "to_provider"),
    DECISIONS: ("rule", "provider"),
    UPSTREAM: ("provider", "status_class"),
    REJECTED: ("provider",),
    WITHOUT_ID: ("drm",),
}
GAUGES: Mapping[str, tuple[str, ...]] = {CIRCUIT: ("provider", "drm")}
_METRIC_OBJECTS = (
    metrics.REQUESTS,
    metrics.FALLBACKS,
    metrics.ROUTING_DECISIONS,
    metrics.UPSTREAM_RESPONSES,
    metrics.CIRCUIT_REJECTED,
    metrics.ASSETS_WITHOUT_RESOURCE_ID,
    metrics.CIRCUIT_STATE,
)


@dataclass(frozen=True, slots=True)
class Reading:
    """The tracked counters (cumulative) and gauges at one moment."""

    counters: Counts
    gauges: Counts


def read_families(families: Iterable[Metric]) -> Reading:
    """The tracked series of `families`, label sets reduced to the kept labels (summed)."""
    counters: Counts = {}
    gauges: Counts = {}
    for family in families:
        for sample in family.samples:
            for tracked, into in ((COUNTERS, counters), (GAUGES, gauges)):
                kept = tracked.get(sample.name)
                if kept is not None:
                    key = (sample.name, tuple(sample.labels.get(name, "") for name in kept))
                    into[key] = into.get(key, 0.0) + sample.value
    return Reading(counters, gauges)


def collect_tracked() -> Iterator[Metric]:
    """This process's tracked metric families, or under `--workers` every live worker's
    samples merged (all families: the merge reads every worker's files anyway)."""
    if metrics.MULTIPROC_ENV in os.environ:
        yield from metrics.scrape_registry().collect()
        return
    for metric in _METRIC_OBJECTS:
        yield from metric.collect()


def increments(before: Mapping[SeriesKey, float], after: Mapping[SeriesKey, float]) -> Counts:
    """What each counter added from `before` to `after`; a counter that went down was reset
    (a restarted worker) and counts from 0, as Prometheus' rate() does."""
    added: Counts = {}
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if delta < 0:
            delta = value
        if delta:
            added[key] = delta
    return added


@dataclass(slots=True)
class Bucket:
    """The increments counted in one bucket, from `start` (Unix time) on."""

    start: float
    counts: Counts = field(default_factory=dict)


class CounterHistory:
    """Per-bucket increments of the tracked counters over the last `buckets` buckets, plus the
    latest reading. Only buckets that saw an increment are stored, at most `buckets` of them."""

    def __init__(self, *, bucket_seconds: int = BUCKET_SECONDS, buckets: int = BUCKETS) -> None:
        self.bucket_seconds = bucket_seconds
        self.buckets = buckets
        self._ring: deque[Bucket] = deque()
        self._keys: dict[SeriesKey, SeriesKey] = {}
        self.latest: Reading | None = None
        self.latest_at: float | None = None
        self.since: float | None = None  # the first reading: increments count from there

    def _start(self, at: float) -> float:
        return at - at % self.bucket_seconds

    def record(self, at: float, reading: Reading) -> None:
        """Add what the counters did since the last reading to the bucket of `at`."""
        latest = self.latest
        self.latest, self.latest_at = reading, at
        if latest is None:
            self.since = at
            return
        added = increments(latest.counters, reading.counters)
        if not added:
            self._expire(at)
            return
        start = self._start(at)
        ring = self._ring
        if not ring or ring[-1].start < start:
            ring.append(Bucket(start))
        bucket = ring[-1]  # a clock that stepped back adds to the newest bucket
        for key, value in added.items():
            key = self._keys.setdefault(key, key)  # one key object per series, not per bucket
            bucket.counts[key] = bucket.counts.get(key, 0.0) + value
        self._expire(at)

    def _expire(self, now: float) -> None:
        oldest = self._start(now) - (self.buckets - 1) * self.bucket_seconds
        while self._ring and self._ring[0].start < oldest:
            self._ring.popleft()

    def window(self, now: float) -> list[Bucket]:
        """The last `buckets` buckets up to the one of `now`, oldest first, empty ones too."""
        newest = self._start(now)
        stored = {bucket.start: bucket for bucket in self._ring}
        starts = (
            newest - (self.buckets - 1 - i) * self.bucket_seconds for i in range(self.buckets)
        )
        return [stored.get(start) or Bucket(start) for start in starts]


class ConsoleSampler:
    """Reads the tracked metrics into a CounterHistory, on a timer and on demand."""

    def __init__(
        self,
        history: CounterHistory | None = None,
        *,
        collect: Callable[[], Iterable[Metric]] = collect_tracked,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.history = history or CounterHistory()
        self._collect = collect
        self._clock = clock

    def sample(self) -> float:
        """Record a reading now; its time."""
        at = self._clock()
        self.history.record(at, read_families(self._collect()))
        return at

    async def run(self, interval: float = SAMPLE_SECONDS) -> None:
        """Sample every `interval` seconds until cancelled; a failed reading is logged and the
        next one tried (the increments it missed land in the next reading's bucket)."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.sample()
            except Exception:
                log.exception("console_sample_failed")


def iso(seconds: float) -> str:
    """ISO 8601 in UTC to the second, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True, slots=True)
class SummaryShape:
    """What the summary is about: the DRM systems, the providers and the legacy one (the
    config's routing.default_provider; empty: the active rules' default, see `legacy_of`)."""

    default_provider: str
    providers: tuple[str, ...]
    drms: tuple[str, ...] = ALL_DRMS


PROVIDER_FIELDS = (
    "requests",  # player requests it answered (the fallback's when one answered)
    "errors",  # of those, answered 5xx
    "upstream_failures",  # its answers other than 2xx (timeouts and resets too)
    "fallbacks_from",  # requests that left it for the rule's fallback
    "fallbacks_to",  # requests it got as the fallback
    "circuit_rejected",  # requests its open circuit kept from it
)


@dataclass(slots=True)
class Tally:
    """The sums the summary shows, from one pass over a set of counts."""

    routed: dict[str, float] = field(default_factory=dict)  # drm -> reached a provider
    incoming: dict[str, float] = field(default_factory=dict)  # drm -> of those, not legacy
    providers: dict[str, dict[str, float]] = field(default_factory=dict)
    decisions: dict[str, dict[str, float]] = field(default_factory=dict)  # rule -> provider
    without_id: float = 0.0

    def _add(self, provider: str, name: str, value: float) -> None:
        fields = self.providers.setdefault(provider, {})
        fields[name] = fields.get(name, 0.0) + value

    def add(self, key: SeriesKey, value: float, legacy: str) -> None:
        """Count one series' value where it belongs."""
        name, labels = key
        if name == REQUESTS:
            drm, provider, outcome = labels
            if provider != NO_PROVIDER:
                self.routed[drm] = self.routed.get(drm, 0.0) + value
                if provider != legacy:
                    self.incoming[drm] = self.incoming.get(drm, 0.0) + value
            self._add(provider, "requests", value)
            if outcome == "error":
                self._add(provider, "errors", value)
        elif name == UPSTREAM:
            if labels[1] != "2xx":
                self._add(labels[0], "upstream_failures", value)
        elif name == FALLBACKS:
            self._add(labels[0], "fallbacks_from", value)
            self._add(labels[1], "fallbacks_to", value)
        elif name == REJECTED:
            self._add(labels[0], "circuit_rejected", value)
        elif name == DECISIONS:
            by_provider = self.decisions.setdefault(labels[0], {})
            by_provider[labels[1]] = by_provider.get(labels[1], 0.0) + value
        elif name == WITHOUT_ID:
            self.without_id += value

    def share(self, drm: str) -> dict[str, Any]:
        """Requests for `drm` that went to a provider, how many to an incoming one (any but
        the legacy one), and that share (None without requests)."""
        routed, incoming = round(self.routed.get(drm, 0.0)), round(self.incoming.get(drm, 0.0))
        return {"requests": routed, "incoming": incoming, "share": _ratio(incoming, routed)}

    def provider(self, name: str) -> dict[str, int]:
        fields = self.providers.get(name, {})
        return {key: round(fields.get(key, 0.0)) for key in PROVIDER_FIELDS}

    def rule(self, name: str) -> int:
        return round(sum(self.decisions.get(name, {}).values()))


def tally(counts: Mapping[SeriesKey, float], legacy: str, *, only: str | None = None) -> Tally:
    """The Tally of `counts` (of the series named `only`, if given), `legacy` being the
    provider incoming shares are counted against."""
    result = Tally()
    for key, value in counts.items():
        if only is None or key[0] == only:
            result.add(key, value, legacy)
    return result


def _decisions(total: Tally, hour: Tally) -> list[dict[str, Any]]:
    """Per rule (as counted: rule names, "default", guard:*): decisions since start and in the
    hour, the rule's share of the hour's decisions, and the hour's decisions per provider."""
    all_hour = sum(hour.rule(rule) for rule in hour.decisions)
    answer = []
    for rule, providers in sorted(total.decisions.items()):
        in_hour = hour.decisions.get(rule, {})
        answer.append(
            {
                "rule": rule,
                "total": total.rule(rule),
                "hour": hour.rule(rule),
                "hour_share": _ratio(hour.rule(rule), all_hour),
                "hour_by_provider": {p: round(in_hour.get(p, 0.0)) for p in sorted(providers)},
            }
        )
    return answer


def _circuits(gauges: Counts) -> list[dict[str, str]]:
    states = sorted(labels for name, labels in gauges if name == CIRCUIT)
    return [
        {
            "provider": provider,
            "drm": drm,
            "state": CIRCUIT_STATES.get(int(gauges[CIRCUIT, (provider, drm)]), "unknown"),
        }
        for provider, drm in states
    ]


def build_summary(history: CounterHistory, now: float, shape: SummaryShape) -> dict[str, Any]:
    """What GET /admin/summary answers: the hour per minute and in total, and since start."""
    latest = history.latest
    legacy = shape.default_provider
    total = tally(latest.counters if latest is not None else {}, legacy)
    window = history.window(now)
    minutes = [tally(bucket.counts, legacy, only=REQUESTS) for bucket in window]
    merged: Counts = {}
    for bucket in window:
        for key, value in bucket.counts.items():
            merged[key] = merged.get(key, 0.0) + value
    hour = tally(merged, legacy)
    return {
        "scope": "replica",
        "generated_at": iso(now),
        "since": iso(history.since) if history.since is not None else None,
        "sample_seconds": SAMPLE_SECONDS,
        "bucket_seconds": history.bucket_seconds,
        "window_seconds": history.bucket_seconds * history.buckets,
        "default_provider": legacy,
        "providers": list(shape.providers),
        "minutes": [iso(bucket.start) for bucket in window],
        "share": [
            {
                "drm": drm,
                "hour": hour.share(drm),
                "total": total.share(drm),
                "minutes": [minute.share(drm) for minute in minutes],
            }
            for drm in shape.drms
        ],
        "by_provider": [
            {"provider": name, "hour": hour.provider(name), "total": total.provider(name)}
            for name in shape.providers
        ],
        "circuits": _circuits(latest.gauges if latest is not None else {}),
        "decisions": _decisions(total, hour),
        "missing_requests": {"hour": round(hour.without_id), "total": round(total.without_id)},
    }


# --- HTTP edge -------------------------------------------------------------------------------

CONSOLE = web.AppKey("console_sampler", ConsoleSampler)
CONSOLE_SHAPE = web.AppKey("console_shape", SummaryShape)
PAGE_DIR = Path(__file__).resolve().parent / "console"
# name -> content type; served at /admin/ui (the page) and /admin/ui/<name>.
PAGE_FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
# Read once, at import: a missing file stops the start rather than a later request.
_PAGE_BODIES = {
    name: ((PAGE_DIR / name).read_bytes(), content_type)
    for name, content_type in PAGE_FILES.items()
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def legacy_of(shape: SummaryShape, rules: RuleSet | None) -> SummaryShape:
    """`shape` with its legacy provider named: without one in the config, the default of the
    rules active now (a rules file's `default` decides then)."""
    if shape.default_provider or rules is None:
        return shape
    return replace(shape, default_provider=rules.default)


async def summary(request: web.Request) -> web.Response:
    """The last hour and the totals, read afresh (so the totals equal /metrics now)."""
    sampler = request.app[CONSOLE]
    now = sampler.sample()
    shape = legacy_of(request.app[CONSOLE_SHAPE], request.app[RULES].rules)
    body = build_summary(sampler.history, now, shape)
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _page_file(name: str) -> web.Response:
    body, content_type = _PAGE_BODIES[name]
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS)


async def page(request: web.Request) -> web.Response:
    """The console page."""
    return _page_file("index.html")


async def page_asset(request: web.Request) -> web.Response:
    """The page's script or style sheet."""
    name = request.match_info["file"]
    if name == "index.html" or name not in _PAGE_BODIES:
        raise NotFound()
    return _page_file(name)


def add_console_routes(app: web.Application, shape: SummaryShape) -> None:
    """GET /admin/ui, /admin/ui/{file} (its script and style) and /admin/summary, behind the
    admin token."""
    app[CONSOLE_SHAPE] = shape
    app.router.add_get("/admin/ui", require_admin(page))
    app.router.add_get("/admin/ui/{file}", require_admin(page_asset))
    app.router.add_get("/admin/summary", require_admin(summary))


async def console_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sampler: a first reading at start (the hour counts from it), then one every
    SAMPLE_SECONDS until the app stops."""
    sampler = ConsoleSampler()
    sampler.sample()
    app[CONSOLE] = sampler
    task = asyncio.get_running_loop().create_task(sampler.run())
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
