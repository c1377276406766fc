"""The request flow: catalog lookup, routing rules, upstream call. No HTTP server code.

Handlers parse the player's request into these calls and turn the result into a response, so
this module reads as the license path from top to bottom.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

from proxy import metrics
from proxy.catalog.base import Catalog, CatalogEntry
from proxy.config import Config, UrlTemplate
from proxy.config_providers import KEY_DRM
from proxy.errors import (
    InvalidId,
    NoProvider,
    UnknownAsset,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRejected,
    UpstreamTimeout,
)
from proxy.fairplay import SpcRequest, encode_ckc, encode_spc, parse_ckc_response, parse_spc_request
from proxy.logs import get_logger
from proxy.providers import Upstream, UpstreamResponse, forward_headers
from proxy.rules import Decision, RequestContext, evaluate
from proxy.rules_watcher import RulesWatcher
from proxy.tokens import TokenContext

ASSET_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
KEY_ID = re.compile(r"^[0-9a-fA-F]{32}$")
AES_KEY_BYTES = 16

log = get_logger("gateway")


@dataclass(slots=True)
class RequestInfo:
    """What the access log and metrics say of one request, filled in as it progresses."""

    request_id: str
    drm: str = "-"
    asset_id: str | None = None
    provider: str = "-"
    rule: str = "-"
    reason: str = "-"
    rules_version: str | None = None
    fallback_from: str | None = None
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
class Call:
    """One upstream request to make, independent of which provider answers it."""

    drm: str
    entry: CatalogEntry
    client: ClientInfo
    body: bytes | None = None
    content_type: str | None = None
    spc: SpcRequest | None = None
    key_id: str = ""


def validate_asset_id(asset_id: str) -> str:
    if not ASSET_ID.match(asset_id):
        raise InvalidId("The asset id is not valid: expected 1-128 of [A-Za-z0-9._:-].")
    return asset_id


def validate_key_id(key_id: str) -> str:
    if not KEY_ID.match(key_id):
        raise InvalidId("The key id is not valid: expected 32 hexadecimal characters.")
    return key_id.lower()


# Failures worth retrying on the rule's fallback provider; a 4xx is the provider's answer.
_RETRYABLE = (UpstreamError, UpstreamTimeout)


class Gateway:
    """Serves license and key requests from the catalog, routing rules and upstream clients."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        upstreams: Mapping[str, Upstream],
        rules: RulesWatcher,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.upstreams = upstreams
        self.rules = rules
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    async def resolve(self, info: RequestInfo, drm: str, asset_id: str) -> CatalogEntry:
        info.drm, info.asset_id = drm, validate_asset_id(asset_id)
        entry = await self.catalog.get(asset_id)
        if entry is None:
            raise UnknownAsset()
        if entry.drm_resource_id is None:
            metrics.labelled(metrics.ASSETS_WITHOUT_RESOURCE_ID, drm).inc()
        return entry

    def decide(self, info: RequestInfo, entry: CatalogEntry, client: ClientInfo) -> Decision:
        """Evaluate the active rules (read once: one version per request)."""
        rules = self.rules.active()  # RulesUnavailable (503) while no file has validated
        info.rules_version = rules.version
        context = RequestContext(
            info.drm, entry.asset_id, entry, client.platform, client.app_version, client.user_id
        )
        decision = evaluate(rules, context, self.rules.providers)
        if self.upstreams[decision.provider].settings.endpoint(info.drm) is None:
            raise NoProvider(f"The chosen provider has no endpoint for {info.drm}.")
        info.provider, info.rule, info.reason = decision.provider, decision.rule, decision.reason
        metrics.labelled(
            metrics.ROUTING_DECISIONS, decision.provider, decision.rule, decision.reason
        ).inc()
        return decision

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
        call = Call(drm, entry, client, challenge, content_type, spc)
        return await self._route_and_send(info, call)

    async def key(
        self, info: RequestInfo, *, asset_id: str, key_id: str, client: ClientInfo
    ) -> bytes:
        """Fetch one HLS AES-128 key (16 bytes) from the chosen provider."""
        key_id = validate_key_id(key_id)
        entry = await self.resolve(info, KEY_DRM, asset_id)
        answer = await self._route_and_send(info, Call(KEY_DRM, entry, client, key_id=key_id))
        return answer.body

    async def _route_and_send(self, info: RequestInfo, call: Call) -> UpstreamResponse:
        decision = self.decide(info, call.entry, call.client)
        self._maybe_shadow(info, call, decision)
        try:
            return await self._send(info, self.upstreams[decision.provider], call)
        except _RETRYABLE as exc:
            if decision.fallback is None or isinstance(exc, UpstreamRejected):
                raise
            metrics.FALLBACKS.labels(decision.provider, decision.fallback).inc()
            log.warning(
                "fallback",
                request_id=info.request_id,
                provider=decision.provider,
                fallback=decision.fallback,
                error=exc.code,
            )
            info.fallback_from, info.provider = decision.provider, decision.fallback
            return await self._send(info, self.upstreams[decision.fallback], call)

    async def _send(self, info: RequestInfo, upstream: Upstream, call: Call) -> UpstreamResponse:
        """Authenticate, encode, send and time one upstream call; check what comes back."""
        body, content_type = call.body, call.content_type
        if call.spc is not None:
            body, content_type = self._spc_for(upstream, call.spc, call.entry.asset_id)
        template = upstream.settings.endpoint(call.drm)
        assert template is not None  # decide() checked the endpoint exists
        url, auth_headers = self._target(upstream, template, info, call)
        headers = forward_headers(
            request_id=info.request_id,
            content_type=content_type,
            forwarded_for=call.client.forwarded_for,
            traceparent=call.client.traceparent,
            extra=auth_headers,
        )
        method = "GET" if call.drm == KEY_DRM else "POST"
        started = time.perf_counter()
        try:
            answer = await upstream.send(method, url, drm=call.drm, body=body, headers=headers)
        finally:
            info.upstream_ms = round((time.perf_counter() - started) * 1000, 3)
        if call.drm == KEY_DRM and len(answer.body) != AES_KEY_BYTES:
            metrics.UPSTREAM_BAD_RESPONSES.labels(upstream.name, "bad_key_length").inc()
            raise UpstreamBadResponse()
        return answer if call.spc is None else self._ckc_for(upstream, answer, call.spc)

    @staticmethod
    def _target(
        upstream: Upstream, template: UrlTemplate, info: RequestInfo, call: Call
    ) -> tuple[str, dict[str, str]]:
        """The upstream URL and the auth headers (a signed token where the provider wants one)."""
        entry = call.entry
        auth_headers, query = upstream.credentials(
            TokenContext(
                drm_resource_id=entry.drm_resource_id,
                asset_id=entry.asset_id,
                drm=call.drm,
                user_id=call.client.user_id,
                request_id=info.request_id,
            )
        )
        url = template.render(
            {
                "asset_id": entry.asset_id,
                "drm_resource_id": entry.drm_resource_id or "",
                "key_id": call.key_id,
                "drm": call.drm,
            }
        )
        if query:
            url += ("&" if "?" in url else "?") + query
        return url, auth_headers

    @staticmethod
    def _spc_for(upstream: Upstream, spc: SpcRequest, asset_id: str) -> tuple[bytes, str]:
        wanted = upstream.settings.fairplay.request
        metrics.labelled(metrics.FAIRPLAY_TRANSCODES, spc.fmt, wanted).inc()
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

    def _maybe_shadow(self, info: RequestInfo, call: Call, decision: Decision) -> None:
        """Send a sampled copy to the shadow provider; its answer is only compared."""
        shadow = decision.shadow
        if shadow is None or random.random() * 100 >= shadow.percent:
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow(replace(info, provider=shadow.to), call, shadow.to)
        )
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, info: RequestInfo, call: Call, provider: str) -> None:
        try:
            await self._send(info, self.upstreams[provider], call)
            result = "match"
        except UpstreamRejected:
            result = "differ"
        except Exception:  # a shadow never affects the player: count and move on
            result = "error"
        metrics.SHADOW_REQUESTS.labels(provider, result).inc()

    async def close(self) -> None:
        """Cancel shadow requests still in flight."""
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
