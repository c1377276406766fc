"""Upstream client: one pooled keep-alive session per provider, and error mapping.

Tuned for the hot path: no cookie jar, no automatic decompression, no redirects followed,
response size capped, TLS verified (aiohttp's default for https).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy import metrics
from proxy.config import ProviderSettings
from proxy.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.logs import get_logger
from proxy.tokens import TokenContext, TokenSigner

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
    """Talks to one provider over a pooled keep-alive session opened with the app."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._strip = _ALWAYS_STRIPPED | settings.strip_response_headers
        self._session: aiohttp.ClientSession | None = None
        auth = settings.auth
        self._static = {auth.header: auth.value} if auth.header and auth.value else {}
        self.signer = TokenSigner(auth.token) if auth.token is not None else None
        self._tokens_signed = metrics.TOKENS_SIGNED.labels(self.name)

    async def open(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=self.settings.total_timeout, sock_connect=self.settings.connect_timeout
        )
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, ttl_dns_cache=300, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        assert self._session is not None, "Upstream.open() was not called"
        started = time.perf_counter()
        try:
            # encoded=True: the URL template already percent-encoded every value, so yarl
            # need not parse and re-quote it on each request.
            async with self._session.request(
                method, URL(url, encoded=True), data=body, headers=headers, allow_redirects=False
            ) as resp:
                data = await _read_capped(resp, self.settings.max_response_bytes)
                status, resp_headers = resp.status, resp.headers
        except TimeoutError:
            self._observe(drm, started, "timeout")
            raise UpstreamTimeout() from None
        except aiohttp.ClientError as exc:
            self._observe(drm, started, "connect")
            log.warning("upstream_unreachable", provider=self.name, error=type(exc).__name__)
            raise UpstreamUnavailable() from None
        self._observe(drm, started, metrics.status_class(status))
        _raise_for_status(self.name, status, data, resp_headers.get("Content-Type", ""))
        return UpstreamResponse(
            body=data,
            content_type=resp_headers.get("Content-Type", "application/octet-stream"),
            headers=tuple((k, v) for k, v in resp_headers.items() if k.lower() not in self._strip),
        )

    def _observe(self, drm: str, started: float, outcome: str) -> None:
        elapsed = time.perf_counter() - started
        metrics.labelled(metrics.UPSTREAM_DURATION, drm, self.name).observe(elapsed)
        metrics.labelled(metrics.UPSTREAM_RESPONSES, self.name, outcome).inc()


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refusing as soon as it passes `limit` bytes."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise _TooLarge()
        return await resp.read()
    chunks, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(UpstreamBadResponse):
    message = "The DRM provider's response is too large."


def _raise_for_status(provider: str, status: int, body: bytes, content_type: str) -> None:
    if 200 <= status < 300:
        if not body:
            _reject(provider, status, "empty_body", UpstreamBadResponse())
        if looks_like_json_error(body, content_type):
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


def looks_like_json_error(body: bytes, content_type: str) -> bool:
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
