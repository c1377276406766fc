"""Every Prometheus metric of the gateway, in one place, all named `drm_gateway_*`.

Labels carry bounded values only (DRM system, provider, rule, reason, status class), never an
asset id or a user id.
"""

from __future__ import annotations

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
)
BUILD_INFO = Info("drm_gateway_build", "Gateway version.", registry=REGISTRY)


def status_class(status: int) -> str:
    """'2xx', '4xx', '5xx' ... for a label."""
    return f"{status // 100}xx"
