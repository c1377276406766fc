"""One provider's HTTP side: a keep-alive pool, the headers sent, and answers mapped to errors.

Shared by every provider kind: a kind decides what to send; this sends it, times it, refuses
what must not reach a player (redirects, empty or error-in-200 answers, oversized bodies) and
maps each failure onto the gateway's error tree with a bounded reason for logs and metrics.
The HTTP/1.1 client underneath is `proxy.upstream.http` (no cookies, no decompression, no
redirects followed, TLS verified against the system CAs with SNI).

Within a gateway try, the limits come from `proxy.upstream.deadline.TRY_LIMITS` (the try's
share of the request's deadline, and a separate pool-slot wait); otherwise the provider's
own timeouts apply. A provider asking to slow down (429, or 503 with Retry-After) becomes
UpstreamOverloaded carrying its Retry-After (clamped to 1..MAX_RETRY_AFTER seconds);
failures before any answer byte are marked `before_answer` (the gateway may retry them).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamOverloaded,
    UpstreamPoolExhausted,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.upstream.base import Call, ClientInfo, ProviderAnswer, url_values
from proxy.upstream.deadline import TRY_LIMITS
from proxy.upstream.http.client import (
    Address,
    ConnectError,
    ConnectionClosed,
    HttpClient,
    HttpClientError,
    PoolTimeout,
    ResponseTooLarge,
)

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
        "x-drm-gateway-provider",  # ours alone: a provider cannot forge it (server.provider_header)
    }
)
_JSON_ERROR_KEYS = ("errorCode", "error_code", "error", "errors")
# The longest Retry-After passed on to players (a provider's "come back in an hour" must not
# keep players away that long: the circuit breaker probes the provider well before).
MAX_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class StatusRule:
    """How a provider status is taken: the reason logged and counted, and the error raised."""

    why: str
    error: Callable[[int], GatewayError]


# Exact statuses first, then by class; 2xx passes (after the body checks below).
_BY_STATUS: Mapping[int, StatusRule] = {
    401: StatusRule("auth_refused", lambda _: UpstreamAuthFailed()),
    429: StatusRule("throttled", lambda _: UpstreamOverloaded()),
}
_BY_CLASS: Mapping[int, StatusRule] = {
    3: StatusRule("redirect_not_followed", lambda _: UpstreamBadResponse()),
    4: StatusRule("rejected", UpstreamRejected),
    5: StatusRule("server_error", lambda _: UpstreamUnavailable()),
}
_OTHER = StatusRule("server_error", lambda _: UpstreamUnavailable())
_EMPTY = StatusRule("empty_body", lambda _: UpstreamBadResponse())
_ERROR_JSON = StatusRule("error_json_in_2xx", lambda _: UpstreamBadResponse())
_OVERLOADED = StatusRule("overloaded", lambda _: UpstreamOverloaded())


@dataclass(frozen=True, slots=True)
class ProviderFault:
    """A provider's own error code, read from its answer by the provider kind.

    `error` None takes the error from the status table (a 2xx: a bad response); a kind sets
    it where the code says more, e.g. UpstreamAuthFailed for "our signature is wrong"."""

    code: str
    error: Callable[[int], GatewayError] | None = None


# Reads a provider's error code from (status, headers, body); None: the answer has none.
ReadFault = Callable[[int, Mapping[str, str], bytes], ProviderFault | None]
OTHER_PROVIDER_ERROR = "other"


def status_rule(
    status: int, body: bytes, *, json_errors: bool = True, retry_after: bool = False
) -> StatusRule | None:
    """The rule refusing this answer, or None when it is a usable success. `json_errors`
    False: the kind's own reader judges JSON bodies (its successes are JSON envelopes).
    `retry_after`: the answer has a Retry-After header (a 503 with one is overload)."""
    if 200 <= status < 300:
        if not body:
            return _EMPTY
        return _ERROR_JSON if json_errors and looks_like_json_error(body) else None
    if status == 503 and retry_after:
        return _OVERLOADED
    return _BY_STATUS.get(status) or _BY_CLASS.get(status // 100, _OTHER)


def parse_retry_after(value: str | None, *, now: float | None = None) -> int | None:
    """A Retry-After header (delay-seconds or an HTTP-date) as whole seconds in
    1..MAX_RETRY_AFTER; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(MAX_RETRY_AFTER, max(1, math.ceil(seconds)))


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

    def __init__(
        self,
        settings: ProviderSettings,
        *,
        read_fault: ReadFault | None = None,
        known_errors: Collection[str] = (),
        strip: Collection[str] = (),
        json_answers: bool = False,
    ) -> None:
        """`read_fault` finds the provider's own error code in an answer; codes outside
        `known_errors` are counted as "other" so the metric label stays bounded. `strip`
        names response headers the kind never passes to players. `json_answers`: the kind's
        successes are JSON envelopes, so `read_fault` alone says which JSON is an error (the
        generic error-in-2xx sniffing would parse every answer once more)."""
        self.settings = settings
        self.name = settings.name
        self._strip = (
            _ALWAYS_STRIPPED | settings.strip_response_headers | {h.lower() for h in strip}
        )
        self._read_fault = read_fault
        self._sniff_json_errors = not (json_answers and read_fault is not None)
        self._known_errors = frozenset(known_errors)
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

    async def post(
        self,
        call: Call,
        endpoint: UrlTemplate,
        body: bytes,
        *,
        content_type: str | None,
        headers: Mapping[str, str] | None = None,
        query: str = "",
    ) -> ProviderAnswer:
        """POST `body` to the call's endpoint with the kind's `headers` and a `query` suffix
        (already encoded)."""
        url = with_query(endpoint.address(url_values(call)), query)
        sent = forward_headers(
            request_id=call.request_id,
            content_type=content_type,
            client=call.client,
            extra=headers or {},
        )
        return await self.send("POST", url, drm=call.drm, body=body, headers=sent)

    async def send(
        self,
        method: str,
        url: Address,
        *,
        drm: str,
        body: bytes | None = None,
        headers: Mapping[str, str],
    ) -> ProviderAnswer:
        """Send one request; map every failure to the gateway's error tree."""
        assert self._client is not None, "ProviderTransport.open() was not called"
        limits = TRY_LIMITS.get()
        timeout = pool_timeout = None
        if limits is not None:
            timeout, pool_timeout = limits.timeout, limits.pool_wait
        started = time.perf_counter()
        try:
            # The URL template already percent-encoded every value: the URL is sent as is.
            resp = await self._client.request(
                method, url, headers=headers, body=body, timeout=timeout, pool_timeout=pool_timeout
            )
        except TimeoutError:
            self._observe(drm, started, "timeout")
            timed_out = UpstreamTimeout()
            timed_out.before_answer = True  # a per-try timeout may be retried
            raise timed_out from None
        except PoolTimeout:
            self._observe(drm, started, "pool_timeout")
            log.warning("upstream_pool_exhausted", provider=self.name, wait_seconds=pool_timeout)
            raise UpstreamPoolExhausted() from None
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
            unreachable = UpstreamUnavailable()
            # Not connected, or closed before a byte of answer: nothing was answered.
            unreachable.before_answer = isinstance(exc, ConnectError) or (
                isinstance(exc, ConnectionClosed) and exc.before_answer
            )
            raise unreachable from None
        status, data = resp.status, resp.body
        fault = (
            self._read_fault(status, CIMultiDict(resp.headers), data) if self._read_fault else None
        )
        code = self._bounded(fault.code) if fault is not None else "-"
        self._observe(drm, started, metrics.status_class(status), code)
        if status >= 300:
            retry_after = resp.header("Retry-After") or None
            rule = status_rule(status, data, retry_after=retry_after is not None)
        else:
            retry_after, rule = None, status_rule(status, data, json_errors=self._sniff_json_errors)
        if fault is not None:
            self._refuse(status, _fault_rule(fault, rule), code, retry_after)
        elif rule is not None:
            self._refuse(status, rule, code, retry_after)
        return ProviderAnswer(
            body=data,
            content_type=resp.header("Content-Type") or "application/octet-stream",
            headers=tuple((k, v) for k, v in resp.headers if k.lower() not in self._strip),
        )

    def bad_response(self, kind: str) -> None:
        """Count an answer refused as garbled (too large, bad CKC, bad key length ...)."""
        metrics.labelled(metrics.UPSTREAM_BAD_RESPONSES, self.name, kind).inc()

    def _bounded(self, code: str) -> str:
        return code if code in self._known_errors else OTHER_PROVIDER_ERROR

    def _refuse(self, status: int, rule: StatusRule, code: str, retry_after: str | None) -> None:
        log.warning(
            "upstream_error",
            provider=self.name,
            upstream_status=status,
            why=rule.why,
            provider_error=code,
        )
        error = rule.error(status)
        error.provider_error = code
        if isinstance(error, UpstreamOverloaded):
            error.retry_after = parse_retry_after(retry_after) or error.retry_after
        if isinstance(error, UpstreamBadResponse):
            self.bad_response(rule.why)
        raise error

    def _observe(self, drm: str, started: float, outcome: str, code: str = "-") -> None:
        elapsed = time.perf_counter() - started
        metrics.labelled(metrics.UPSTREAM_DURATION, drm, self.name).observe(elapsed)
        metrics.labelled(metrics.UPSTREAM_RESPONSES, self.name, outcome, code).inc()


def _fault_rule(fault: ProviderFault, rule: StatusRule | None) -> StatusRule:
    """How an answer carrying a provider error code is refused."""
    if fault.error is not None:
        return StatusRule("provider_error", fault.error)
    if rule is None or rule is _ERROR_JSON or rule is _EMPTY:
        return _PROVIDER_ERROR_IN_2XX
    return rule


_PROVIDER_ERROR_IN_2XX = StatusRule("error_json_in_2xx", lambda _: UpstreamBadResponse())


def with_query(url: Address, query: str) -> Address:
    """`url` with an already encoded `query` suffix."""
    if not query:
        return url
    if isinstance(url, str):
        return url + ("&" if "?" in url else "?") + query
    origin, target = url
    return origin, target + ("&" if "?" in target else "?") + query


class _TooLarge(UpstreamBadResponse):
    message = "The DRM provider's response is too large."
