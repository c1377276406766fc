"""The access-log record of one request, filled in as the request goes through the gateway.

The middleware creates it and writes the access line and request metrics from it; the
gateway adds what it decided (provider, rule, reason, timings). Neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.domain import AssetId


@dataclass(slots=True)
class RequestInfo:
    """What the access log and metrics say of one request."""

    request_id: str
    client: str = "-"  # the player's address, after trusted proxies
    forwarded_for: str = "-"  # the X-Forwarded-For chain passed upstream
    drm: str = "-"
    asset_id: AssetId | None = None
    provider: str = "-"
    rule: str = "-"
    reason: str = "-"
    rules_version: str | None = None
    fallback_from: str | None = None
    upstream_ms: float | None = None
    error: str | None = None  # the error code answered, if any
    detail: str | None = None  # which refusal of that code (GatewayError.detail)
    provider_error: str | None = None  # the provider's own error code (bounded), if any
