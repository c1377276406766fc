"""Every Prometheus metric of the gateway, in one place, all named `drm_gateway_*`.

Labels carry bounded values only (DRM system, provider, rule, reason, status class), never an
asset id or a user id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

from proxy.domain import ALL_DRMS as DRM_SYSTEMS
from proxy.errors import GatewayError, Overloaded, UpstreamError
from proxy.upstream.fairplay import REQUEST_FORMATS

if TYPE_CHECKING:
    from proxy.config.providers import ProviderSettings
    from proxy.routing.rules import RuleSet

# A `_created` series per label set doubles the series count and no panel or alert reads it.
# Workers import this module too, so it holds under `serve --workers N`.
disable_created_metrics()  # type: ignore[no-untyped-call]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets for 1 ms .. 5 s.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(
    "drm_gateway_requests_total",
    "Player requests handled, by DRM system, provider, status class and outcome.",
    ["drm", "provider", "status_class", "outcome"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "drm_gateway_request_duration_seconds",
    "Time from request received to response sent, by DRM system and provider.",
    ["drm", "provider"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "drm_gateway_upstream_duration_seconds",
    "Time spent waiting for the provider, by DRM system and provider.",
    ["drm", "provider"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_RESPONSES = Counter(
    "drm_gateway_upstream_responses_total",
    "Provider answers by provider, status class (or error kind: timeout, connect) and the "
    "provider's own error code (bounded per provider kind: 'other' beyond the known ones; "
    "'-' for none).",
    ["provider", "status_class", "provider_error"],
    registry=REGISTRY,
)
ROUTING_DECISIONS = Counter(
    "drm_gateway_routing_decisions_total",
    "Routing decisions by provider, rule and reason.",
    ["provider", "rule", "reason"],
    registry=REGISTRY,
)
ASSETS_WITHOUT_RESOURCE_ID = Counter(
    "drm_gateway_assets_without_resource_id_total",
    "Requests for assets whose catalog entry has no drmResourceId, by DRM system.",
    ["drm"],
    registry=REGISTRY,
)
TITLES_WITHOUT_RESOURCE_ID = Gauge(
    "drm_gateway_titles_without_resource_id",
    "Distinct titles requested without a drmResourceId in the list GET /admin/missing names: "
    "this replica's, or the fleet's when the catalog is in Redis (bounded by "
    "missing.max_titles).",
    registry=REGISTRY,
    # Under --workers each worker keeps its own list: the sum over live workers (a title seen
    # by two workers counts twice), so a new title in any worker shows as an increase.
    multiprocess_mode="livesum",
)
TITLES_WITHOUT_RESOURCE_ID_EVICTED = Counter(
    "drm_gateway_titles_without_resource_id_evicted_total",
    "Titles dropped from the list of titles without a drmResourceId to stay within "
    "missing.max_titles (the least recently seen first).",
    registry=REGISTRY,
)
TITLES_WITHOUT_RESOURCE_ID_DROPPED = Counter(
    "drm_gateway_titles_without_resource_id_dropped_total",
    "New titles without a drmResourceId not recorded in the fleet's list because this "
    "replica's queue of titles not yet written to Redis was full (Redis slow or down).",
    registry=REGISTRY,
)
CATALOG_LOOKUPS = Counter(
    "drm_gateway_catalog_lookups_total",
    "Catalog lookups by result: hit, miss, coalesced, negative_hit, stale, error.",
    ["result"],
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "drm_gateway_in_flight_requests",
    "Player requests being handled right now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",  # under --workers: the sum over live workers
)
CONNECTIONS_OPEN = Gauge(
    "drm_gateway_connections_open",
    "Client connections open right now, by listener (public, internal, speke).",
    ["listener"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED = Counter(
    "drm_gateway_connections_refused_total",
    "Client connections closed as soon as accepted, by listener and the cap they were over "
    "(max_connections, max_connections_per_client).",
    ["listener", "cap"],
    registry=REGISTRY,
)
CLIENT_TIMEOUTS = Counter(
    "drm_gateway_client_timeouts_total",
    "Client connections closed for slowness, by listener and phase (first_request, header, "
    "body, keepalive).",
    ["listener", "phase"],
    registry=REGISTRY,
)
FAIRPLAY_TRANSCODES = Counter(
    "drm_gateway_fairplay_transcodes_total",
    "FairPlay bodies rewritten, by the client's request format and the provider's format.",
    ["client_format", "provider_format"],
    registry=REGISTRY,
)
UPSTREAM_BAD_RESPONSES = Counter(
    "drm_gateway_upstream_bad_responses_total",
    "Provider answers refused as garbled, empty or error-in-200, by provider and kind.",
    ["provider", "kind"],
    registry=REGISTRY,
)
TOKENS_SIGNED = Counter(
    "drm_gateway_provider_tokens_signed_total",
    "Per-request provider tokens signed, by provider.",
    ["provider"],
    registry=REGISTRY,
)
RULES_RELOADS = Counter(
    "drm_gateway_rules_reloads_total",
    "Routing rules reload attempts, by result (ok, unchanged, refused).",
    ["result"],
    registry=REGISTRY,
)
RULES_INFO = Gauge(
    "drm_gateway_rules_info",
    "The active routing rules: 1, labelled with their version and sha256 (gone once replaced).",
    ["version", "sha256"],
    registry=REGISTRY,
    multiprocess_mode="livemax",  # a dead worker's version leaves with it
)
RULES_FILE_VALID = Gauge(
    "drm_gateway_rules_file_valid",
    "1 if the rules file validated at the last load attempt, 0 if it was refused.",
    registry=REGISTRY,
    multiprocess_mode="livemin",  # under --workers: 0 if any live worker refused it
)
RULES_LOADED_TIMESTAMP = Gauge(
    "drm_gateway_rules_loaded_timestamp_seconds",
    "When the active routing rules were loaded (Unix time).",
    registry=REGISTRY,
    multiprocess_mode="max",
)
REFUSED = Counter(
    "drm_gateway_refused_requests_total",
    "Player requests refused before reaching a provider, by reason (the error code) and "
    "detail (why a player token was refused, e.g. expired; admin_token; which rate limit: "
    "ip, user; else -).",
    ["reason", "detail"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "drm_gateway_rate_limited_total",
    "Player requests refused by the rate limiter, by limit (user, ip).",
    ["limit"],
    registry=REGISTRY,
)
SHADOW_REQUESTS = Counter(
    "drm_gateway_shadow_requests_total",
    "Shadow copies by shadow provider and result: match, differ, error, or dropped (not sent: "
    "resilience.shadow_max_in_flight copies already in flight).",
    ["provider", "result"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "drm_gateway_fallbacks_total",
    "Requests retried on the rule's fallback provider after an upstream failure.",
    ["from_provider", "to_provider"],
    registry=REGISTRY,
)
CIRCUIT_STATE = Gauge(
    "drm_gateway_circuit_state",
    "Circuit breaker state per provider and DRM system: 0 closed, 1 half-open, 2 open "
    "(by severity: under --workers, the worst live worker's).",
    ["provider", "drm"],
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
CIRCUIT_TRANSITIONS = Counter(
    "drm_gateway_circuit_transitions_total",
    "Circuit breaker state changes, by provider, DRM system and new state (open, half_open, "
    "closed).",
    ["provider", "drm", "to"],
    registry=REGISTRY,
)
CIRCUIT_REJECTED = Counter(
    "drm_gateway_circuit_rejected_total",
    "Requests not sent to a provider because its circuit was open (they went to the "
    "fallback, or were answered 503 with Retry-After).",
    ["provider", "drm"],
    registry=REGISTRY,
)
UPSTREAM_RETRIES = Counter(
    "drm_gateway_upstream_retries_total",
    "Second tries at the same provider after a failure before any answer byte, by result: "
    "retried, or budget_refused (the provider's retry budget was spent).",
    ["provider", "result"],
    registry=REGISTRY,
)
SPEKE_REQUESTS = Counter(
    "drm_gateway_speke_requests_total",
    "SPEKE key requests from packagers, by result: ok, or the error code of the answer "
    "(invalid_cpix, unknown_content, unauthorized, key_source_failed, key_mirror_failed, ...).",
    ["result"],
    registry=REGISTRY,
)
KEY_MIRROR_WRITES = Counter(
    "drm_gateway_key_mirror_writes_total",
    "Content keys written to a mirror provider, by provider and result: ok, failed (the "
    "packager's request failed), queued (put on the retry queue), retry_ok, retry_failed.",
    ["provider", "result"],
    registry=REGISTRY,
)
KEY_MIRROR_QUEUE = Gauge(
    "drm_gateway_key_mirror_queue",
    "Mirror writes waiting on the durable retry queue in the catalog store.",
    registry=REGISTRY,
    multiprocess_mode="livemax",  # one shared queue: every worker sees the same count
)
FLEET_MESSAGES_IGNORED = Counter(
    "drm_gateway_fleet_messages_ignored_total",
    "Fleet commands and replies read from Redis pub/sub and ignored as malformed.",
    registry=REGISTRY,
)
BUILD_INFO = Info("drm_gateway_build", "Gateway version.", registry=REGISTRY)


# Label values known before any traffic (keep in step with the code that counts them).
REQUEST_OUTCOMES = (("2xx", "ok"), ("4xx", "client_error"), ("5xx", "error"))
UPSTREAM_OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "timeout", "connect", "too_large", "pool_timeout")
BAD_RESPONSE_KINDS = (
    "empty_body",
    "error_json_in_2xx",
    "redirect_not_followed",
    "too_large",
    "bad_key_length",
    "bad_ckc",
)
CATALOG_RESULTS = ("hit", "negative_hit", "miss", "coalesced", "stale", "error")
RELOAD_RESULTS = ("ok", "unchanged", "refused")
RATE_LIMITS = ("user", "ip")
SHADOW_RESULTS = ("match", "differ", "error", "dropped")
SPEKE_RESULTS = (
    "ok",
    "invalid_cpix",
    "unknown_content",
    "content_id_conflict",
    "key_conflict",
    "invalid_id",
    "unauthorized",
    "body_too_large",
    "unsupported_media_type",
    "key_source_failed",
    "key_mirror_failed",
    "no_key_policy",
    "rules_unavailable",
    "catalog_unavailable",
    "internal_error",
    "other",
)
CONNECTION_CAPS = ("max_connections", "max_connections_per_client")
CLIENT_PHASES = ("first_request", "header", "body", "keepalive")
MIRROR_RESULTS = ("ok", "failed", "queued", "retry_ok", "retry_failed")
NO_PROVIDER = "-"  # the provider label of a request refused before one was chosen
# Gauges whose label sets `forget` withdraws; multiprocess mode shows them only while not 0.
_WITHDRAWN_AT_ZERO = frozenset({"drm_gateway_rules_info"})

_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *values: str) -> Any:
    """`metric.labels(*values)`, resolved once per label set (they are few and bounded):
    prometheus-client's own lookup costs about 1.5 us, on every request."""
    key = (id(metric), values)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*values)
    return child


def status_class(status: int) -> str:
    """'2xx', '4xx', '5xx' ... for a label."""
    return f"{status // 100}xx"


def _refusal_codes() -> list[str]:
    """Codes of the errors counted as refusals: client errors, none of them a provider's,
    and the gateway's own load shedding (503 overloaded, before any provider)."""
    codes, pending = {Overloaded.code}, [GatewayError]
    while pending:
        error = pending.pop()
        pending.extend(error.__subclasses__())
        if error.status < 500 and not issubclass(error, UpstreamError):
            codes.add(error.code)
    return sorted(codes)


def _zero_requests(drm: str, provider: str) -> None:
    labelled(REQUEST_DURATION, drm, provider)
    for status, outcome in REQUEST_OUTCOMES:
        labelled(REQUESTS, drm, provider, status, outcome)


def initialise(
    providers: Mapping[str, ProviderSettings], refusal_details: Mapping[str, Iterable[str]]
) -> None:
    """Create at 0 every series whose label values are known at start.

    `refusal_details` names the bounded details of the refusal codes that have some (the
    others are counted with detail "-").

    A counter series that first appears at 1 shows no increase, so an alert on
    `increase(...) > 0` would miss the first event, and a panel over no series says
    "No data". Rule names are known per rules version: see `initialise_decisions`.
    """
    for name, settings in providers.items():
        for drm in DRM_SYSTEMS:
            if settings.endpoint(drm) is not None:
                _zero_requests(drm, name)
                labelled(UPSTREAM_DURATION, drm, name)
        for outcome in UPSTREAM_OUTCOMES:
            labelled(UPSTREAM_RESPONSES, name, outcome, "-")
        for kind in BAD_RESPONSE_KINDS:
            labelled(UPSTREAM_BAD_RESPONSES, name, kind)
        for result in SHADOW_RESULTS:
            labelled(SHADOW_REQUESTS, name, result)
        for other in providers:
            if other != name:
                labelled(FALLBACKS, name, other)
        if settings.auth.token is not None or settings.options is not None:
            labelled(TOKENS_SIGNED, name)
        if settings.endpoint("fairplay") is not None:
            for client_format in REQUEST_FORMATS:
                labelled(FAIRPLAY_TRANSCODES, client_format, settings.fairplay.request)
    for drm in DRM_SYSTEMS:
        _zero_requests(drm, NO_PROVIDER)
        labelled(ASSETS_WITHOUT_RESOURCE_ID, drm)
    TITLES_WITHOUT_RESOURCE_ID.set(0)  # a new process holds no list yet
    for values, metric in (
        (CATALOG_RESULTS, CATALOG_LOOKUPS),
        (RELOAD_RESULTS, RULES_RELOADS),
        (RATE_LIMITS, RATE_LIMITED),
    ):
        for value in values:
            labelled(metric, value)
    initialise_clients()
    for code in _refusal_codes():
        for detail in refusal_details.get(code, ("-",)):
            labelled(REFUSED, code, detail)


def initialise_clients(listeners: Iterable[str] = ("public", "internal")) -> None:
    """Create at 0 the connection series of each listener."""
    for listener in listeners:
        labelled(CONNECTIONS_OPEN, listener)
        for cap in CONNECTION_CAPS:
            labelled(CONNECTIONS_REFUSED, listener, cap)
        for phase in CLIENT_PHASES:
            labelled(CLIENT_TIMEOUTS, listener, phase)


def initialise_speke(providers: Iterable[str]) -> None:
    """Create at 0 the SPEKE series: every result, and each provider's mirror writes (any
    provider may become a mirror once it has a key_api)."""
    for result in SPEKE_RESULTS:
        labelled(SPEKE_REQUESTS, result)
    for provider in providers:
        for result in MIRROR_RESULTS:
            labelled(KEY_MIRROR_WRITES, provider, result)
    KEY_MIRROR_QUEUE.set(0)


def speke_result(code: str) -> str:
    """The `result` label of a SPEKE answer with this error code (bounded: 'other' beyond)."""
    return code if code in SPEKE_RESULTS else "other"


def initialise_decisions(rules: RuleSet) -> None:
    """Create at 0 the decision series a rules version makes by name (a rule's match and the
    default), so a panel by rule lists every rule before its first request."""
    for rule in rules.rules:
        labelled(ROUTING_DECISIONS, rule.route, rule.name, "rule_match")
    labelled(ROUTING_DECISIONS, rules.default, "default", "default")


def _multiprocess() -> bool:
    return MULTIPROC_ENV in os.environ


def forget(gauge: Gauge, *values: str) -> None:
    """Withdraw one label set of an info-style gauge from the scrape (a replaced version).

    Multiprocess mode cannot delete a sample from a worker's file (prometheus-client warns
    and keeps it), so there the sample is set to 0 and `scrape_registry` leaves it out.
    """
    if _multiprocess():
        gauge.labels(*values).set(0)
    else:
        gauge.remove(*values)


class _LiveWorkers:
    """Every worker's samples merged, less the label sets `forget` withdrew (set to 0)."""

    def __init__(self) -> None:
        self._merged = multiprocess.MultiProcessCollector(None)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        for family in self._merged.collect():  # type: ignore[no-untyped-call]
            if family.name in _WITHDRAWN_AT_ZERO:
                family.samples = [s for s in family.samples if s.value != 0]
            yield family


def scrape_registry() -> CollectorRegistry:
    """What /metrics exposes: this process's registry, or under `serve --workers N` every
    live worker's samples merged."""
    if not _multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_LiveWorkers())
    registry.register(BUILD_INFO)  # an Info is per process (the same in every worker)
    return registry
