"""Every Prometheus metric of the gateway, in one place, all named `drm_gateway_*`.

Labels carry bounded values only (DRM system, provider, rule, reason, status class), never an
asset id or a user id.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

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
    "Provider answers by provider and status class (or error kind: timeout, connect).",
    ["provider", "status_class"],
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
    "The active routing rules: 1, labelled with their version and sha256 (0 once replaced).",
    ["version", "sha256"],
    registry=REGISTRY,
    multiprocess_mode="max",
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
    "Player requests refused before reaching a provider, by reason.",
    ["reason"],
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
    "Shadow copies sent, by shadow provider and whether its answer matched (match, differ, error).",
    ["provider", "result"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "drm_gateway_fallbacks_total",
    "Requests retried on the rule's fallback provider after an upstream failure.",
    ["from_provider", "to_provider"],
    registry=REGISTRY,
)
BUILD_INFO = Info("drm_gateway_build", "Gateway version.", registry=REGISTRY)


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
