"""The request flow: catalog lookup, provider choice, upstream call. No HTTP server code.

Handlers parse the player's request into these calls and turn the result into a response, so
this module reads as the license path from top to bottom.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from proxy import metrics
from proxy.catalog.base import Catalog, CatalogEntry
from proxy.config import Config, ProviderSettings
from proxy.errors import InvalidId, NoProvider, UnknownAsset, UpstreamBadResponse
from proxy.providers import Upstream, UpstreamResponse, forward_headers

ASSET_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
KEY_ID = re.compile(r"^[0-9a-fA-F]{32}$")
AES_KEY_BYTES = 16
KEY_DRM = "aes128"  # the label used for HLS AES-128 key requests in logs, metrics and rules


@dataclass(slots=True)
class RequestInfo:
    """What the access log and metrics say of one request, filled in as it progresses."""

    request_id: str
    drm: str = "-"
    asset_id: str | None = None
    provider: str = "-"
    rule: str = "-"
    reason: str = "-"
    upstream_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Facts about the player taken from its request (never its token)."""

    forwarded_for: str
    traceparent: str | None = None
    platform: str | None = None
    app_version: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    provider: str
    rule: str
    reason: str


def validate_asset_id(asset_id: str) -> str:
    if not ASSET_ID.match(asset_id):
        raise InvalidId("The asset id is not valid: expected 1-128 of [A-Za-z0-9._:-].")
    return asset_id


def validate_key_id(key_id: str) -> str:
    if not KEY_ID.match(key_id):
        raise InvalidId("The key id is not valid: expected 32 hexadecimal characters.")
    return key_id.lower()


def can_serve(provider: ProviderSettings, entry: CatalogEntry, drm: str) -> str | None:
    """None if the provider can serve this asset and DRM system, else the guard's reason."""
    if provider.needs_drm_resource_id and entry.drm_resource_id is None:
        return "guard_no_resource_id"
    if entry.key_holders is not None and provider.name not in entry.key_holders:
        return "guard_key_holders"
    if drm == KEY_DRM:
        return None if provider.key_url is not None else "guard_no_endpoint"
    return None if drm in provider.license_urls else "guard_no_endpoint"


def choose_provider(
    default: str, providers: Mapping[str, ProviderSettings], entry: CatalogEntry, drm: str
) -> Choice:
    """The default provider, unless a guard refuses it; then the first provider that can."""
    refused = can_serve(providers[default], entry, drm)
    if refused is None:
        return Choice(default, "default", "default")
    for name, provider in providers.items():
        if name != default and can_serve(provider, entry, drm) is None:
            return Choice(name, "default", refused)
    raise NoProvider()


class Gateway:
    """Serves license and key requests from the catalog, routing and upstream clients."""

    def __init__(self, config: Config, catalog: Catalog, upstreams: Mapping[str, Upstream]):
        self.config = config
        self.catalog = catalog
        self.upstreams = upstreams

    async def resolve(self, info: RequestInfo, drm: str, asset_id: str) -> CatalogEntry:
        info.drm, info.asset_id = drm, validate_asset_id(asset_id)
        entry = await self.catalog.get(asset_id)
        if entry is None:
            raise UnknownAsset()
        if entry.drm_resource_id is None:
            metrics.ASSETS_WITHOUT_RESOURCE_ID.labels(drm).inc()
        return entry

    def route(self, info: RequestInfo, entry: CatalogEntry, drm: str) -> Upstream:
        choice = choose_provider(self.config.default_provider, self.config.providers, entry, drm)
        info.provider, info.rule, info.reason = choice.provider, choice.rule, choice.reason
        metrics.ROUTING_DECISIONS.labels(choice.provider, choice.rule, choice.reason).inc()
        return self.upstreams[choice.provider]

    async def license(
        self,
        info: RequestInfo,
        *,
        drm: str,
        asset_id: str,
        challenge: bytes,
        content_type: str | None,
        client: ClientInfo,
    ) -> UpstreamResponse:
        """Forward a license challenge byte-exact to the chosen provider."""
        entry = await self.resolve(info, drm, asset_id)
        upstream = self.route(info, entry, drm)
        url = upstream.settings.license_urls[drm].render(_url_values(entry, drm))
        headers = forward_headers(
            request_id=info.request_id,
            content_type=content_type,
            forwarded_for=client.forwarded_for,
            traceparent=client.traceparent,
            extra=upstream.auth_headers(),
        )
        return await self._send(info, upstream, "POST", url, body=challenge, headers=headers)

    async def key(
        self, info: RequestInfo, *, asset_id: str, key_id: str, client: ClientInfo
    ) -> bytes:
        """Fetch one HLS AES-128 key (16 bytes) from the chosen provider."""
        key_id = validate_key_id(key_id)
        entry = await self.resolve(info, KEY_DRM, asset_id)
        upstream = self.route(info, entry, KEY_DRM)
        assert upstream.settings.key_url is not None  # guaranteed by can_serve
        url = upstream.settings.key_url.render(_url_values(entry, KEY_DRM, key_id))
        headers = forward_headers(
            request_id=info.request_id,
            content_type=None,
            forwarded_for=client.forwarded_for,
            traceparent=client.traceparent,
            extra=upstream.auth_headers(),
        )
        answer = await self._send(info, upstream, "GET", url, body=None, headers=headers)
        if len(answer.body) != AES_KEY_BYTES:
            raise UpstreamBadResponse()
        return answer.body

    async def _send(
        self,
        info: RequestInfo,
        upstream: Upstream,
        method: str,
        url: str,
        *,
        body: bytes | None,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        started = time.perf_counter()
        try:
            return await upstream.send(method, url, drm=info.drm, body=body, headers=headers)
        finally:
            info.upstream_ms = round((time.perf_counter() - started) * 1000, 3)


def _url_values(entry: CatalogEntry, drm: str, key_id: str = "") -> dict[str, str]:
    return {
        "asset_id": entry.asset_id,
        "drm_resource_id": entry.drm_resource_id or "",
        "key_id": key_id,
        "drm": drm,
    }
