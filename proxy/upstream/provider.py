"""Upstream client: one keep-alive connection pool per provider, and error mapping.

The HTTP/1.1 client is proxy.upstream.http.client (lean, for the hot path): no cookies, no automatic
decompression, no redirects followed, response size capped, TLS verified against the system
CAs with SNI.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.config import ProviderSettings
from proxy.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.upstream.http.client import HttpClient, HttpClientError, ResponseTooLarge
from proxy.upstream.signer import TokenContext, TokenSigner

log = get_logger("providers")

# Never passed back to players: hop-by-hop headers and what would reveal the provider.
_ALWAYS_STRIPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "trailer",
        "te",
        "proxy-authenticate",
        "server",
        "date",
        "set-cookie",
        "via",
        "x-powered-by",
        "location",
        "x-request-id",
    }
)
_JSON_ERROR_KEYS = ("errorCode", "error_code", "error", "errors")


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A provider's successful answer, headers already filtered for the player."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


class Upstream:
    """Talks to one provider over a keep-alive connection pool opened with the app."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._strip = _ALWAYS_STRIPPED | settings.strip_response_headers
        self._client: HttpClient | None = None
        auth = settings.auth
        self._static = {auth.header: auth.value} if auth.header and auth.value else {}
        self.signer = TokenSigner(auth.token) if auth.token is not None else None
        self._tokens_signed = metrics.TOKENS_SIGNED.labels(self.name)

    async def open(self) -> None:
        self._client = HttpClient(
            max_connections=self.settings.max_connections,
            connect_timeout=self.settings.connect_timeout,
            total_timeout=self.settings.total_timeout,
            max_response_bytes=self.settings.max_response_bytes,
            idle_timeout=30.0,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def credentials(self, context: TokenContext) -> tuple[dict[str, str], str]:
        """Headers to add, and a query suffix, that authenticate this request upstream."""
        if self.signer is None:
            return self._static, ""
        token = self.signer.sign(context)
        self._tokens_signed.inc()
        if self.signer.query_param:
            return {}, f"{self.signer.query_param}={token}"
        assert self.signer.header is not None
        return {self.signer.header: token}, ""

    async def send(
        self,
        method: str,
        url: str,
        *,
        drm: str,
        body: bytes | None = None,
        headers: Mapping[str, str],
    ) -> UpstreamResponse:
        """Send one request; map every failure to the gateway's error tree."""
        assert self._client is not None, "Upstream.open() was not called"
        started = time.perf_counter()
        try:
            # The URL template already percent-encoded every value: the URL is sent as is.
            resp = await self._client.request(method, url, headers=headers, body=body)
        except TimeoutError:
            self._observe(drm, started, "timeout")
            raise UpstreamTimeout() from None
        except ResponseTooLarge:
            self._observe(drm, started, "too_large")
            metrics.labelled(metrics.UPSTREAM_BAD_RESPONSES, self.name, "too_large").inc()
            log.warning("upstream_error", provider=self.name, why="response_too_large")
            raise _TooLarge() from None
        except HttpClientError as exc:
            self._observe(drm, started, "connect")
            log.warning(
                "upstream_unreachable",
                provider=self.name,
                error=type(exc).__name__,
                detail=str(exc),
            )
            raise UpstreamUnavailable() from None
        status, data = resp.status, resp.body
        self._observe(drm, started, metrics.status_class(status))
        content_type = resp.header("Content-Type")
        _raise_for_status(self.name, status, data)
        return UpstreamResponse(
            body=data,
            content_type=content_type or "application/octet-stream",
            headers=tuple((k, v) for k, v in resp.headers if k.lower() not in self._strip),
        )

    def _observe(self, drm: str, started: float, outcome: str) -> None:
        elapsed = time.perf_counter() - started
        metrics.labelled(metrics.UPSTREAM_DURATION, drm, self.name).observe(elapsed)
        metrics.labelled(metrics.UPSTREAM_RESPONSES, self.name, outcome).inc()


class _TooLarge(UpstreamBadResponse):
    message = "The DRM provider's response is too large."


def _raise_for_status(provider: str, status: int, body: bytes) -> None:
    if 200 <= status < 300:
        if not body:
            _reject(provider, status, "empty_body", UpstreamBadResponse())
        if looks_like_json_error(body):
            _reject(provider, status, "error_json_in_2xx", UpstreamBadResponse())
        return
    if 300 <= status < 400:
        _reject(provider, status, "redirect_not_followed", UpstreamBadResponse())
    if status == 401:
        _reject(provider, status, "auth_refused", UpstreamAuthFailed())
    if 400 <= status < 500:
        _reject(provider, status, "rejected", UpstreamRejected(status))
    _reject(provider, status, "server_error", UpstreamUnavailable())


def _reject(provider: str, status: int, why: str, error: GatewayError) -> None:
    log.warning("upstream_error", provider=provider, upstream_status=status, why=why)
    if isinstance(error, UpstreamBadResponse):
        metrics.UPSTREAM_BAD_RESPONSES.labels(provider, why).inc()
    raise error


def looks_like_json_error(body: bytes) -> bool:
    """A 2xx whose body is a JSON error object (some providers answer errors this way)."""
    if not body.lstrip()[:1] == b"{":
        return False
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and any(key in parsed for key in _JSON_ERROR_KEYS)


def forward_headers(
    *,
    request_id: str,
    content_type: str | None,
    forwarded_for: str,
    traceparent: str | None,
    extra: Mapping[str, str],
) -> CIMultiDict[str]:
    """The headers sent upstream: only what the provider needs, nothing of the player's."""
    headers: CIMultiDict[str] = CIMultiDict(extra)
    headers["X-Request-Id"] = request_id
    headers["X-Forwarded-For"] = forwarded_for
    if content_type:
        headers["Content-Type"] = content_type
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


async def open_upstreams(settings: Mapping[str, ProviderSettings]) -> dict[str, Upstream]:
    """Open one Upstream per configured provider."""
    upstreams = {name: Upstream(s) for name, s in settings.items()}
    for upstream in upstreams.values():
        await upstream.open()
    return upstreams


async def close_upstreams(upstreams: Mapping[str, Upstream]) -> None:
    await asyncio.gather(*(u.close() for u in upstreams.values()))
