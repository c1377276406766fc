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
from proxy.config import Config, ProviderSettings, UrlTemplate
from proxy.errors import InvalidId, NoProvider, UnknownAsset, UpstreamBadResponse
from proxy.fairplay import SpcRequest, encode_ckc, encode_spc, parse_ckc_response, parse_spc_request
from proxy.providers import Upstream, UpstreamResponse, forward_headers
from proxy.tokens import TokenContext

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
        """Forward a license challenge to the chosen provider (FairPlay in its format)."""
        spc = None
        if drm == "fairplay":  # parse first: a malformed SPC is refused before any lookup
            spc = parse_spc_request(
                challenge, content_type, max_spc_bytes=self.config.server.max_body_bytes
            )
        entry = await self.resolve(info, drm, asset_id)
        upstream = self.route(info, entry, drm)
        if spc is not None:
            challenge, content_type = self._spc_for(upstream, spc, asset_id)
        answer = await self._send(
            info,
            upstream,
            upstream.settings.license_urls[drm],
            _url_values(entry, drm),
            entry=entry,
            client=client,
            method="POST",
            body=challenge,
            content_type=content_type,
        )
        return answer if spc is None else self._ckc_for(upstream, answer, spc)

    async def key(
        self, info: RequestInfo, *, asset_id: str, key_id: str, client: ClientInfo
    ) -> bytes:
        """Fetch one HLS AES-128 key (16 bytes) from the chosen provider."""
        key_id = validate_key_id(key_id)
        entry = await self.resolve(info, KEY_DRM, asset_id)
        upstream = self.route(info, entry, KEY_DRM)
        assert upstream.settings.key_url is not None  # guaranteed by can_serve
        answer = await self._send(
            info,
            upstream,
            upstream.settings.key_url,
            _url_values(entry, KEY_DRM, key_id),
            entry=entry,
            client=client,
            method="GET",
        )
        if len(answer.body) != AES_KEY_BYTES:
            metrics.UPSTREAM_BAD_RESPONSES.labels(upstream.name, "bad_key_length").inc()
            raise UpstreamBadResponse()
        return answer.body

    @staticmethod
    def _spc_for(upstream: Upstream, spc: SpcRequest, asset_id: str) -> tuple[bytes, str]:
        wanted = upstream.settings.fairplay.request
        metrics.FAIRPLAY_TRANSCODES.labels(spc.fmt, wanted).inc()
        return encode_spc(spc.spc, wanted, asset_id=spc.asset_id or asset_id)

    def _ckc_for(
        self, upstream: Upstream, answer: UpstreamResponse, spc: SpcRequest
    ) -> UpstreamResponse:
        try:
            ckc = parse_ckc_response(answer.body, upstream.settings.fairplay.response)
        except UpstreamBadResponse:
            metrics.UPSTREAM_BAD_RESPONSES.labels(upstream.name, "bad_ckc").inc()
            raise
        body, content_type = encode_ckc(ckc, self.config.fairplay.client_response[spc.fmt])
        return UpstreamResponse(body, content_type, answer.headers)

    async def _send(
        self,
        info: RequestInfo,
        upstream: Upstream,
        template: UrlTemplate,
        values: dict[str, str],
        *,
        entry: CatalogEntry,
        client: ClientInfo,
        method: str,
        body: bytes | None = None,
        content_type: str | None = None,
    ) -> UpstreamResponse:
        """Authenticate, build the URL and headers, send, and time the upstream call."""
        auth_headers, query = upstream.credentials(
            TokenContext(
                drm_resource_id=entry.drm_resource_id,
                asset_id=entry.asset_id,
                drm=info.drm,
                user_id=client.user_id,
                request_id=info.request_id,
            )
        )
        url = template.render(values)
        if query:
            url += ("&" if "?" in url else "?") + query
        headers = forward_headers(
            request_id=info.request_id,
            content_type=content_type,
            forwarded_for=client.forwarded_for,
            traceparent=client.traceparent,
            extra=auth_headers,
        )
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
