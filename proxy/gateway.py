"""The request flow: catalog lookup, routing rules, provider call. No HTTP server code.

Handlers parse the player's request into typed values and call `license`, `fairplay` or
`key`; each resolves the asset, decides the route once (provider and endpoint, fallback and
shadow), and hands a call to the chosen `ProviderClient`. This module reads as the license
path from top to bottom.

Resilience (issue 17; settings in the `resilience` config section):

- Each request has one deadline (default 4 s, `proxy.upstream.deadline`); each upstream try
  gets its share of what is left, the pool-slot wait bounded apart, so a fallback always
  starts in time to finish within it, and two slow providers end in 504 within it.
- Each (provider, DRM system) has a circuit breaker (`proxy.upstream.breaker`). While it is
  open, requests go straight to the rule's fallback (where the guards allow), else get 503
  with Retry-After; no failed call first. Shadow copies skip a provider whose circuit is
  not closed.
- A failure falls back when the rule has a fallback: any upstream failure, a provider's 429
  or 503 + Retry-After, and the 4xx statuses configured for the provider (e.g. 404).
  Without a fallback, a failure before any answer byte (connect error, reset, per-try
  timeout) is retried once on the same provider while its retry budget allows
  (`proxy.upstream.budget`). A request makes at most two upstream tries.
- Hedging (a second request before the first fails) is not implemented: issue 17 makes it
  optional and off by default; the fallback-on-share above covers slow providers.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from proxy.catalog.base import Catalog, CatalogEntry
from proxy.catalog.missing import MissingStore, MissingTitles
from proxy.config import Config, UrlTemplate
from proxy.domain import ALL_DRMS, KEY_DRM, AssetId, KeyId
from proxy.errors import (
    AssetMismatch,
    CircuitOpen,
    GatewayError,
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
from proxy.upstream.breaker import REFUSED, CircuitBreaker
from proxy.upstream.budget import RetryBudget
from proxy.upstream.clearkey import parse_clearkey_request
from proxy.upstream.deadline import TRY_LIMITS, Deadline, TryLimits
from proxy.upstream.fairplay import SpcRequest, encode_ckc, parse_spc_request
from proxy.upstream.resilience import Resilience, is_failure
from proxy.upstream.window import Clock

log = get_logger("gateway")

T = TypeVar("T")
# Sends one call to one provider at one endpoint.
Send = Callable[[ProviderClient, UrlTemplate], Awaitable[T]]

# Failures worth another try (on the rule's fallback provider, or a retry); a 4xx is the
# provider's answer, which falls back only where configured.
_RETRYABLE = (UpstreamError, UpstreamTimeout)


@dataclass(frozen=True, slots=True)
class Target:
    """A provider and its endpoint for one DRM system, with what guards calls to it: its
    circuit, its retry budget, its own total timeout (no try gets more) and the 4xx statuses
    of its answers that may fall back. Resolved once per provider and DRM system."""

    client: ProviderClient
    endpoint: UrlTemplate
    circuit: CircuitBreaker
    budget: RetryBudget
    timeout: float
    fallback_statuses: frozenset[int]

    def falls_back_on(self, error: UpstreamError | UpstreamTimeout) -> bool:
        """Whether this failure of the target may go to the rule's fallback provider."""
        return not isinstance(error, UpstreamRejected) or error.status in self.fallback_statuses


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
        shadow_providers: Mapping[str, ProviderClient] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        # Titles requested without a drmResourceId (GET /admin/missing lists them).
        if missing is None:
            missing = MissingTitles(max_titles=config.missing.max_titles)
        self.missing = missing
        self.catalog = catalog
        self.providers = providers
        # Shadow copies go through clients of their own (their own connection pools), so a
        # slow shadow provider never holds a connection live traffic waits for.
        self._shadow_providers = shadow_providers if shadow_providers is not None else providers
        self.rules = rules
        self._client_response = config.fairplay.client_response
        # Whether answers name the provider that answered (server.provider_header).
        self.provider_header = config.server.provider_header
        self._max_spc_bytes = config.server.max_body_bytes
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        self._clock = clock
        served = {
            name: [drm for drm in ALL_DRMS if provider.endpoint(drm) is not None]
            for name, provider in providers.items()
        }
        self.resilience = Resilience(config.resilience, served, clock=clock)
        self._deadline = config.resilience.deadline
        self._targets: dict[tuple[str, str], Target | None] = {}
        self._shadow_targets: dict[tuple[str, str], Target | None] = {}
        self._shadow_cap = config.resilience.shadow_max_in_flight

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
        deadline = Deadline(self._deadline, clock=self._clock)
        if drm == "clearkey":  # refused here, not by the provider; still forwarded byte-exact
            parse_clearkey_request(body)
        entry = await self.resolve(info, drm, asset_id)
        call = LicenseCall(info.request_id, drm, entry, client, body, content_type)
        return await self._route(info, entry, client, deadline, lambda p, e: p.license(call, e))

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
        deadline = Deadline(self._deadline, clock=self._clock)
        # Parsed first: a malformed SPC is refused before any lookup.
        spc = parse_spc_request(body, content_type, max_spc_bytes=self._max_spc_bytes)
        entry = await self.resolve(info, "fairplay", asset_id)
        _check_spc_asset(spc, entry)
        call = FairPlayCall(info.request_id, entry, client, spc)
        answer = await self._route(info, entry, client, deadline, lambda p, e: p.fairplay(call, e))
        ckc, ckc_type = encode_ckc(answer.body, self._client_response[spc.fmt])
        return ProviderAnswer(ckc, ckc_type, answer.headers)

    async def key(
        self, info: RequestInfo, *, asset_id: AssetId, key_id: KeyId, client: ClientInfo
    ) -> bytes:
        """Fetch one HLS AES-128 key (16 bytes) from the chosen provider."""
        deadline = Deadline(self._deadline, clock=self._clock)
        entry = await self.resolve(info, KEY_DRM, asset_id)
        call = KeyCall(info.request_id, entry, client, key_id)
        return await self._route(info, entry, client, deadline, lambda p, e: p.key(call, e))

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
            shadow = self._target(decision.shadow.to, info.drm, shadow=True)
        return Route(decision, primary, fallback, shadow)

    def _target(self, provider: str | None, drm: str, *, shadow: bool = False) -> Target | None:
        if provider is None:
            return None
        key = (provider, drm)
        targets = self._shadow_targets if shadow else self._targets
        if key in targets:
            return targets[key]
        client = (self._shadow_providers if shadow else self.providers).get(provider)
        endpoint = client.endpoint(drm) if client is not None else None
        target = None
        if client is not None and endpoint is not None:
            target = Target(
                client,
                endpoint,
                self.resilience.circuit(provider, drm),
                self.resilience.budget(provider),
                client.settings.total_timeout,
                self.resilience.policy(provider).fallback_statuses,
            )
        targets[key] = target
        return target

    async def _route(
        self,
        info: RequestInfo,
        entry: CatalogEntry,
        client: ClientInfo,
        deadline: Deadline,
        send: Send[T],
    ) -> T:
        """Send on the decided route: the shadow copy aside, then the primary; on a failure
        the fallback, or without one a retry within the budget (see the module docstring)."""
        route = self.decide(info, entry, client)
        if route.shadow is not None:
            self._start_shadow(info, route.shadow, send)
        primary, fallback = route.primary, route.fallback
        # The first try keeps time for a second one where there may be one.
        last = fallback is None and not primary.budget.settings.enabled
        limits = deadline.limits(primary.timeout, last=last)
        if limits is None:  # the catalog lookup took the whole deadline
            raise UpstreamTimeout()
        try:
            return await self._try(info, primary, send, limits)
        except _RETRYABLE as exc:
            if fallback is not None and primary.falls_back_on(exc):
                return await self._fall_back(info, route, exc, deadline, send)
            if fallback is None and exc.before_answer:
                return await self._retry(info, primary, exc, deadline, send)
            raise

    async def _fall_back(
        self,
        info: RequestInfo,
        route: Route,
        exc: UpstreamError | UpstreamTimeout,
        deadline: Deadline,
        send: Send[T],
    ) -> T:
        assert route.fallback is not None
        limits = deadline.limits(route.fallback.timeout, last=True)
        if limits is None:
            raise exc  # no time left for another try
        primary, fallback = route.primary.client.name, route.fallback.client.name
        metrics.FALLBACKS.labels(primary, fallback).inc()
        if not isinstance(exc, CircuitOpen):  # an open circuit says so once, not per request
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
        return await self._try(info, route.fallback, send, limits)

    async def _retry(
        self,
        info: RequestInfo,
        target: Target,
        exc: UpstreamError | UpstreamTimeout,
        deadline: Deadline,
        send: Send[T],
    ) -> T:
        """One more try at the same provider after a failure before any answer byte, if
        time is left, its circuit is still closed and its retry budget allows."""
        limits = deadline.limits(target.timeout, last=True)
        if limits is None or not target.circuit.closed:
            raise exc
        provider = target.client.name
        if not target.budget.allow_retry(self._clock()):
            metrics.labelled(metrics.UPSTREAM_RETRIES, provider, "budget_refused").inc()
            raise exc
        metrics.labelled(metrics.UPSTREAM_RETRIES, provider, "retried").inc()
        log.info("upstream_retry", request_id=info.request_id, provider=provider, error=exc.code)
        return await self._try(info, target, send, limits, retry=True)

    async def _try(
        self,
        info: RequestInfo,
        target: Target,
        send: Send[T],
        limits: TryLimits,
        *,
        retry: bool = False,
    ) -> T:
        """One upstream try within `limits`, through the target's circuit, which judges its
        outcome (`is_failure`); CircuitOpen when the circuit refuses it. The clock is read
        once before and once after, for the circuit, the budget and `upstream_ms`."""
        circuit = target.circuit
        started = self._clock()
        ticket = circuit.admit(started)
        if ticket == REFUSED:
            metrics.labelled(metrics.CIRCUIT_REJECTED, circuit.provider, circuit.drm).inc()
            raise CircuitOpen(math.ceil(circuit.retry_after(started)))
        if not retry:
            target.budget.request(started)
        token = TRY_LIMITS.set(limits)
        try:
            answer = await send(target.client, target.endpoint)
        except BaseException as exc:
            ended = self._clock()
            info.upstream_ms = round((ended - started) * 1000, 3)
            verdict = is_failure(exc)
            if verdict is None:
                circuit.release(ticket)
            elif verdict:
                advice = exc.retry_after if isinstance(exc, GatewayError) else None
                circuit.failure(ticket, ended, retry_after=advice)
            else:
                circuit.success(ticket, ended)
            raise
        finally:
            TRY_LIMITS.reset(token)
        ended = self._clock()
        info.upstream_ms = round((ended - started) * 1000, 3)
        circuit.success(ticket, ended)
        return answer

    def _start_shadow(self, info: RequestInfo, target: Target, send: Send[T]) -> None:
        """Send a copy to the shadow provider; its answer is only compared and counted. A
        provider whose circuit is not closed gets no copy (nor is one counted); with
        `shadow_max_in_flight` copies already in flight the copy is dropped and counted."""
        if not target.circuit.closed:
            return
        if len(self._shadow_tasks) >= self._shadow_cap:
            metrics.SHADOW_REQUESTS.labels(target.client.name, "dropped").inc()
            return
        shadow_info = replace(info, provider=target.client.name)
        task = asyncio.get_running_loop().create_task(self._shadow(shadow_info, target, send))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, info: RequestInfo, target: Target, send: Send[T]) -> None:
        # Its own limits: the provider's timeout, not the player's deadline.
        limits = TryLimits(target.timeout, self._deadline.pool_wait_seconds)
        try:
            await self._try(info, target, send, limits)
            result = "match"
        except CircuitOpen:
            return  # opened since the copy was started: not sent
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
