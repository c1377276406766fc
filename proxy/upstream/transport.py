"""One provider's HTTP side: a keep-alive pool, the headers sent, and answers mapped to errors.

Shared by every provider kind: a kind decides what to send; this sends it, times it, refuses
what must not reach a player (redirects, empty or error-in-200 answers, oversized bodies) and
maps each failure onto the gateway's error tree with a bounded reason for logs and metrics.
The HTTP/1.1 client underneath is `proxy.upstream.http` (no cookies, no decompression, no
redirects followed, TLS verified against the system CAs with SNI).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.config.providers import ProviderSettings
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
from proxy.upstream.base import ClientInfo, ProviderAnswer
from proxy.upstream.http.client import HttpClient, HttpClientError, ResponseTooLarge

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
class StatusRule:
    """How a provider status is taken: the reason logged and counted, and the error raised."""

    why: str
    error: Callable[[int], GatewayError]


# Exact statuses first, then by class; 2xx passes (after the body checks below).
_BY_STATUS: Mapping[int, StatusRule] = {
    401: StatusRule("auth_refused", lambda _: UpstreamAuthFailed()),
}
_BY_CLASS: Mapping[int, StatusRule] = {
    3: StatusRule("redirect_not_followed", lambda _: UpstreamBadResponse()),
    4: StatusRule("rejected", UpstreamRejected),
    5: StatusRule("server_error", lambda _: UpstreamUnavailable()),
}
_OTHER = StatusRule("server_error", lambda _: UpstreamUnavailable())
_EMPTY = StatusRule("empty_body", lambda _: UpstreamBadResponse())
_ERROR_JSON = StatusRule("error_json_in_2xx", lambda _: UpstreamBadResponse())


def status_rule(status: int, body: bytes) -> StatusRule | None:
    """The rule refusing this answer, or None when it is a usable success."""
    if 200 <= status < 300:
        if not body:
            return _EMPTY
        return _ERROR_JSON if looks_like_json_error(body) else None
    return _BY_STATUS.get(status) or _BY_CLASS.get(status // 100, _OTHER)


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
    client: ClientInfo,
    extra: Mapping[str, str],
) -> CIMultiDict[str]:
    """The headers sent upstream: only what the provider needs, nothing of the player's."""
    headers: CIMultiDict[str] = CIMultiDict(extra)
    headers["X-Request-Id"] = request_id
    headers["X-Forwarded-For"] = client.forwarded_for
    if content_type:
        headers["Content-Type"] = content_type
    if client.traceparent:
        headers["traceparent"] = client.traceparent
    return headers


class ProviderTransport:
    """Sends one provider's requests over its own keep-alive pool, opened with the app."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._strip = _ALWAYS_STRIPPED | settings.strip_response_headers
        self._client: HttpClient | None = None

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

    async def send(
        self,
        method: str,
        url: str,
        *,
        drm: str,
        body: bytes | None = None,
        headers: Mapping[str, str],
    ) -> ProviderAnswer:
        """Send one request; map every failure to the gateway's error tree."""
        assert self._client is not None, "ProviderTransport.open() was not called"
        started = time.perf_counter()
        try:
            # The URL template already percent-encoded every value: the URL is sent as is.
            resp = await self._client.request(method, url, headers=headers, body=body)
        except TimeoutError:
            self._observe(drm, started, "timeout")
            raise UpstreamTimeout() from None
        except ResponseTooLarge:
            self._observe(drm, started, "too_large")
            self.bad_response("too_large")
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
        rule = status_rule(status, data)
        if rule is not None:
            self._refuse(status, rule)
        return ProviderAnswer(
            body=data,
            content_type=resp.header("Content-Type") or "application/octet-stream",
            headers=tuple((k, v) for k, v in resp.headers if k.lower() not in self._strip),
        )

    def bad_response(self, kind: str) -> None:
        """Count an answer refused as garbled (too large, bad CKC, bad key length ...)."""
        metrics.labelled(metrics.UPSTREAM_BAD_RESPONSES, self.name, kind).inc()

    def _refuse(self, status: int, rule: StatusRule) -> None:
        log.warning("upstream_error", provider=self.name, upstream_status=status, why=rule.why)
        error = rule.error(status)
        if isinstance(error, UpstreamBadResponse):
            self.bad_response(rule.why)
        raise error

    def _observe(self, drm: str, started: float, outcome: str) -> None:
        elapsed = time.perf_counter() - started
        metrics.labelled(metrics.UPSTREAM_DURATION, drm, self.name).observe(elapsed)
        metrics.labelled(metrics.UPSTREAM_RESPONSES, self.name, outcome).inc()


class _TooLarge(UpstreamBadResponse):
    message = "The DRM provider's response is too large."
