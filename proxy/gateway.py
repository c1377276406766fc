"""The request flow: catalog lookup, routing rules, provider call. No HTTP server code.

Handlers parse the player's request into typed values and call `license`, `fairplay` or
`key`; each resolves the asset, decides the route once (provider and endpoint, fallback and
shadow), and hands a call to the chosen `ProviderClient`. This module reads as the license
path from top to bottom.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from proxy.catalog.base import Catalog, CatalogEntry
from proxy.catalog.missing import MissingStore, MissingTitles
from proxy.config import Config, UrlTemplate
from proxy.domain import KEY_DRM, AssetId, KeyId
from proxy.errors import (
    AssetMismatch,
    NoProvider,
    UnknownAsset,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from proxy.observability import metrics
from proxy.observability.access import RequestInfo
from proxy.observability.logs import get_logger
from proxy.routing.rules import Decision, RequestContext, evaluate
from proxy.routing.watcher import RulesWatcher
from proxy.upstream.base import (
    ClientInfo,
    FairPlayCall,
    KeyCall,
    LicenseCall,
    ProviderAnswer,
    ProviderClient,
)
from proxy.upstream.clearkey import parse_clearkey_request
from proxy.upstream.fairplay import SpcRequest, encode_ckc, parse_spc_request

log = get_logger("gateway")

T = TypeVar("T")
# Sends one call to one provider at one endpoint.
Send = Callable[[ProviderClient, UrlTemplate], Awaitable[T]]

# Failures worth retrying on the rule's fallback provider; a 4xx is the provider's answer.
_RETRYABLE = (UpstreamError, UpstreamTimeout)


@dataclass(frozen=True, slots=True)
class Target:
    """A provider and its endpoint for this request's DRM system."""

    client: ProviderClient
    endpoint: UrlTemplate


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes, resolved once: the provider, its fallback and a shadow copy."""

    decision: Decision
    primary: Target
    fallback: Target | None
    shadow: Target | None


def _check_spc_asset(spc: SpcRequest, entry: CatalogEntry) -> None:
    """The entitled path asset decides what goes upstream: a body `assetId` (players copy it
    from the skd:// URI) must name that asset or its drmResourceId."""
    if spc.asset_id and spc.asset_id not in (entry.asset_id, entry.drm_resource_id):
        raise AssetMismatch()


class Gateway:
    """Serves license and key requests from the catalog, routing rules and provider clients."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        providers: Mapping[str, ProviderClient],
        rules: RulesWatcher,
        *,
        missing: MissingStore | None = None,
    ) -> None:
        self.config = config
        # Titles requested without a drmResourceId (GET /admin/missing lists them).
        if missing is None:
            missing = MissingTitles(max_titles=config.missing.max_titles)
        self.missing = missing
        self.catalog = catalog
        self.providers = providers
        self.rules = rules
        self._client_response = config.fairplay.client_response
        self._max_spc_bytes = config.server.max_body_bytes
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    async def license(
        self,
        info: RequestInfo,
        *,
        drm: str,
        asset_id: AssetId,
        body: bytes,
        content_type: str | None,
        client: ClientInfo,
    ) -> ProviderAnswer:
        """Forward a Widevine, PlayReady or ClearKey challenge byte-exact (FairPlay bodies are
        rewritten: see `fairplay`)."""
        if drm == "clearkey":  # refused here, not by the provider; still forwarded byte-exact
            parse_clearkey_request(body)
        entry = await self.resolve(info, drm, asset_id)
        call = LicenseCall(info.request_id, drm, entry, client, body, content_type)
        return await self._route(info, entry, client, lambda p, e: p.license(call, e))

    async def fairplay(
        self,
        info: RequestInfo,
        *,
        asset_id: AssetId,
        body: bytes,
        content_type: str | None,
        client: ClientInfo,
    ) -> ProviderAnswer:
        """Rewrite the player's FairPlay body for the chosen provider, and its CKC back."""
        # Parsed first: a malformed SPC is refused before any lookup.
        spc = parse_spc_request(body, content_type, max_spc_bytes=self._max_spc_bytes)
        entry = await self.resolve(info, "fairplay", asset_id)
        _check_spc_asset(spc, entry)
        call = FairPlayCall(info.request_id, entry, client, spc)
        answer = await self._route(info, entry, client, lambda p, e: p.fairplay(call, e))
        ckc, ckc_type = encode_ckc(answer.body, self._client_response[spc.fmt])
        return ProviderAnswer(ckc, ckc_type, answer.headers)

    async def key(
        self, info: RequestInfo, *, asset_id: AssetId, key_id: KeyId, client: ClientInfo
    ) -> bytes:
        """Fetch one HLS AES-128 key (16 bytes) from the chosen provider."""
        entry = await self.resolve(info, KEY_DRM, asset_id)
        call = KeyCall(info.request_id, entry, client, key_id)
        return await self._route(info, entry, client, lambda p, e: p.key(call, e))

    async def resolve(self, info: RequestInfo, drm: str, asset_id: AssetId) -> CatalogEntry:
        info.drm, info.asset_id = drm, asset_id
        entry = await self.catalog.get(asset_id)
        if entry is None:
            self.missing.forget(asset_id)  # left the catalog: nothing to propagate
            raise UnknownAsset()
        if entry.drm_resource_id is None:
            metrics.labelled(metrics.ASSETS_WITHOUT_RESOURCE_ID, drm).inc()
            self.missing.record(asset_id, drm)
        else:  # a title that gained its id leaves the list (a dict miss for every other)
            self.missing.forget(asset_id)
        return entry

    def decide(self, info: RequestInfo, entry: CatalogEntry, client: ClientInfo) -> Route:
        """Evaluate the active rules (read once: one version per request) into a Route."""
        rules = self.rules.active()  # RulesUnavailable (503) while no file has validated
        info.rules_version = rules.version
        context = RequestContext(
            info.drm, entry.asset_id, entry, client.platform, client.app_version, client.user_id
        )
        decision = evaluate(rules, context, self.rules.providers)
        primary = self._target(decision.provider, info.drm)
        if primary is None:
            raise NoProvider(f"The chosen provider has no endpoint for {info.drm}.")
        info.provider, info.rule, info.reason = decision.provider, decision.rule, decision.reason
        metrics.labelled(
            metrics.ROUTING_DECISIONS, decision.provider, decision.rule, decision.reason
        ).inc()
        fallback = self._target(decision.fallback, info.drm)
        shadow = None
        if decision.shadow is not None and random.random() * 100 < decision.shadow.percent:
            shadow = self._target(decision.shadow.to, info.drm)
        return Route(decision, primary, fallback, shadow)

    def _target(self, provider: str | None, drm: str) -> Target | None:
        client = self.providers.get(provider) if provider is not None else None
        endpoint = client.endpoint(drm) if client is not None else None
        return Target(client, endpoint) if client is not None and endpoint is not None else None

    async def _route(
        self, info: RequestInfo, entry: CatalogEntry, client: ClientInfo, send: Send[T]
    ) -> T:
        """Send on the decided route: the shadow copy aside, the fallback on failure."""
        route = self.decide(info, entry, client)
        if route.shadow is not None:
            self._start_shadow(info, route.shadow, send)
        try:
            return await self._timed(info, route.primary, send)
        except _RETRYABLE as exc:
            if route.fallback is None or isinstance(exc, UpstreamRejected):
                raise
            return await self._fall_back(info, route, exc, send)

    async def _fall_back(
        self, info: RequestInfo, route: Route, exc: UpstreamError | UpstreamTimeout, send: Send[T]
    ) -> T:
        assert route.fallback is not None
        primary, fallback = route.primary.client.name, route.fallback.client.name
        metrics.FALLBACKS.labels(primary, fallback).inc()
        log.warning(
            "fallback",
            request_id=info.request_id,
            provider=primary,
            fallback=fallback,
            error=exc.code,
        )
        info.fallback_from, info.provider = primary, fallback
        if exc.provider_error != "-":
            info.provider_error = exc.provider_error
        return await self._timed(info, route.fallback, send)

    @staticmethod
    async def _timed(info: RequestInfo, target: Target, send: Send[T]) -> T:
        started = time.perf_counter()
        try:
            return await send(target.client, target.endpoint)
        finally:
            info.upstream_ms = round((time.perf_counter() - started) * 1000, 3)

    def _start_shadow(self, info: RequestInfo, target: Target, send: Send[T]) -> None:
        """Send a copy to the shadow provider; its answer is only compared and counted."""
        shadow_info = replace(info, provider=target.client.name)
        task = asyncio.get_running_loop().create_task(self._shadow(shadow_info, target, send))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, info: RequestInfo, target: Target, send: Send[T]) -> None:
        try:
            await self._timed(info, target, send)
            result = "match"
        except UpstreamRejected:
            result = "differ"
        except Exception:  # a shadow never affects the player: count and move on
            result = "error"
        metrics.SHADOW_REQUESTS.labels(target.client.name, result).inc()

    async def close(self) -> None:
        """Cancel shadow requests still in flight."""
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
