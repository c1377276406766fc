"""The one middleware: request id, error mapping, access log and request metrics.

One layer instead of four keeps the per-request overhead to a single coroutine frame. The
request id is bound to the logging context for the whole request, so every line logged
while serving it (upstream errors, fallbacks) carries it.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.access.client_address import Network, TrustedProxies
from proxy.access.cors import CorsPolicy, merge_vary
from proxy.errors import (
    AdminUnauthorized,
    BadRequest,
    BodyTooLarge,
    CorsRefused,
    GatewayError,
    InternalError,
    NotFound,
    Overloaded,
    PackagerUnauthorized,
)
from proxy.observability import metrics
from proxy.observability.access import RequestInfo
from proxy.observability.logs import ACCESS_LOG, REQUEST_ID, get_logger
from proxy.server.admission import Admission

INFO = web.RequestKey("info", RequestInfo)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
# Free-form player headers are clipped in the access line so a player cannot bloat it.
_MAX_CLIENT_HEADER_CHARS = 64
_errors = get_logger("errors")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id_from(header: str | None) -> str:
    """The player's X-Request-Id if well-formed, else a fresh one."""
    if header and _REQUEST_ID.match(header):
        return header
    return secrets.token_hex(16)


def replica_name() -> str:
    """This replica's name for the access line: $HOSTNAME (the pod or container name under
    Kubernetes and compose), else the host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def error_fields(request: web.Request, code: str, message: str) -> dict[str, str]:
    """The error shape's fields for an error answer that also carries a report (a refused
    rules reload, an unready /readyz): clients reading `error` see every 4xx/5xx alike."""
    return {"error": code, "message": message, "request_id": request[INFO].request_id}


def error_response(error: GatewayError, request_id: str) -> web.Response:
    """The JSON body every error gets; nothing internal leaks into it."""
    response = web.json_response(
        {"error": error.code, "message": error.message, "request_id": request_id},
        status=error.status,
    )
    if error.retry_after is not None:  # rate limited; a provider overloaded or circuit open
        response.headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, PackagerUnauthorized | AdminUnauthorized):
        for challenge in error.challenges:
            response.headers.add("WWW-Authenticate", challenge)
    return response


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    if exc.status == 413:
        return BodyTooLarge()
    error = GatewayError(exc.reason or "Request failed.")
    error.status, error.code = exc.status, exc.reason.lower().replace(" ", "_")
    return error if exc.status != 404 else NotFound()


async def _refuse_target(request: web.Request) -> web.StreamResponse:
    raise BadRequest("The request target must be a path.")


def create_middleware(
    *,
    public: bool,
    cors: CorsPolicy | None = None,
    trusted_proxies: Sequence[Network] = (),
    admission: Admission | None = None,
) -> Middleware:
    """The gateway middleware; `public` adds CORS, the client address behind
    `trusted_proxies`, access logging, player metrics and (with `admission`) the cap on
    requests in flight."""
    proxies = TrustedProxies(trusted_proxies)
    behind_proxies = bool(proxies)
    replica = replica_name()  # once: it does not change while the process runs

    async def serve_public(
        request: web.Request, handler: Handler, info: RequestInfo, started: float
    ) -> web.StreamResponse:
        forwarded = request.headers.getall("X-Forwarded-For", ()) if behind_proxies else ()
        info.client, info.forwarded_for = proxies.resolve(request.remote, forwarded)
        metrics.IN_FLIGHT.inc()
        response: web.StreamResponse
        try:
            if request.method == "OPTIONS" and handler is not _refuse_target:
                response = _preflight(request, cors, info)
            elif admission is None:
                response = await _call(request, handler, info)
            else:
                response = await _admitted(request, handler, info, admission)
        finally:
            metrics.IN_FLIGHT.dec()
        response.headers["X-Request-Id"] = info.request_id
        origin = request.headers.get("Origin")
        if cors is not None and origin is not None:
            _add_cors(response, cors.response_headers(origin))
        _observe(request, response, info, time.perf_counter() - started, replica)
        return response

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        info = RequestInfo(request_id_from(request.headers.get("X-Request-Id")))
        request[INFO] = info
        # Only origin-form ("/path") is ours: an absolute-form target ("http://evil.example/…")
        # is a proxy request, and aiohttp would route its path and report its foreign host.
        if not request.raw_path.startswith("/"):
            handler = _refuse_target
        # aiohttp runs each request in its own task, so this binding is the request's alone.
        bound = REQUEST_ID.set(info.request_id)
        try:
            if public:
                return await serve_public(request, handler, info, started)
            response = await _call(request, handler, info)
            response.headers["X-Request-Id"] = info.request_id
            return response
        finally:
            REQUEST_ID.reset(bound)

    return middleware


def _preflight(request: web.Request, cors: CorsPolicy | None, info: RequestInfo) -> web.Response:
    """Answer a CORS preflight here: it never reaches a handler or a provider."""
    headers = None
    if cors is not None:
        headers = cors.preflight_headers(
            request.headers.get("Origin"),
            request.headers.get("Access-Control-Request-Method"),
            request.headers.get("Access-Control-Request-Headers"),
        )
    if headers is None:
        info.reason = "cors_refused"
        return _answer(info, CorsRefused())
    return web.Response(status=204, headers=headers)


def _add_cors(response: web.StreamResponse, headers: dict[str, str]) -> None:
    for name, value in headers.items():
        if name == "Vary":  # one Vary, each field once, whoever set it before
            response.headers["Vary"] = merge_vary([*response.headers.getall("Vary", ()), value])
        elif name not in response.headers:
            response.headers[name] = value


def _answer(info: RequestInfo, error: GatewayError) -> web.Response:
    """The error's JSON answer; its code and detail are noted for the access line."""
    info.error, info.detail = error.code, error.detail
    if error.provider_error != "-":
        info.provider_error = error.provider_error
    return error_response(error, info.request_id)


async def _call(request: web.Request, handler: Handler, info: RequestInfo) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        if info.provider == "-" and exc.status < 500:
            # Refused before reaching a provider.
            metrics.labelled(metrics.REFUSED, exc.code, exc.detail).inc()
        if isinstance(exc, InternalError):
            # The detail is for ops; the player gets the generic message.
            _errors.error("internal_error", request_id=info.request_id, error=exc.message)
            return _answer(info, InternalError())
        return _answer(info, exc)
    except web.HTTPException as exc:
        response = _answer(info, _from_http_exception(exc))
        if "Allow" in exc.headers:  # a 405 names the methods the route takes (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        _errors.exception("unhandled_error", request_id=info.request_id, path=request.path)
        return _answer(info, InternalError())


async def _admitted(
    request: web.Request, handler: Handler, info: RequestInfo, admission: Admission
) -> web.StreamResponse:
    """`_call` within a slot of `admission`; refused with 503 when none comes free in time."""
    try:
        await admission.acquire()
    except Overloaded as exc:
        metrics.labelled(metrics.REFUSED, exc.code, exc.detail).inc()
        return _answer(info, exc)
    try:
        return await _call(request, handler, info)
    finally:
        admission.release()


def _client_header(request: web.Request, name: str) -> str | None:
    value = request.headers.get(name)
    return value[:_MAX_CLIENT_HEADER_CHARS] if value is not None else None


def _observe(
    request: web.Request,
    response: web.StreamResponse,
    info: RequestInfo,
    seconds: float,
    replica: str,
) -> None:
    status = response.status
    outcome = "ok" if status < 400 else "client_error" if status < 500 else "error"
    labelled = metrics.labelled
    labelled(metrics.REQUESTS, info.drm, info.provider, metrics.status_class(status), outcome).inc()
    labelled(metrics.REQUEST_DURATION, info.drm, info.provider).observe(seconds)
    route = request.match_info.route.resource
    ACCESS_LOG.info(
        "request",
        request_id=info.request_id,
        method=request.method,
        route=route.canonical if route is not None else "-",
        client=info.client,
        platform=_client_header(request, "X-Client-Platform"),
        app_version=_client_header(request, "X-App-Version"),
        replica=replica,
        drm=info.drm,
        asset_id=info.asset_id,
        provider=info.provider,
        rule=info.rule,
        reason=info.reason,
        rules_version=info.rules_version,
        fallback_from=info.fallback_from,
        status=status,
        error=info.error,
        detail=info.detail,
        provider_error=info.provider_error,
        bytes_in=request.content_length or 0,
        bytes_out=response.content_length or 0,
        duration_ms=round(seconds * 1000, 3),
        upstream_ms=info.upstream_ms,
        traceparent=request.headers.get("traceparent"),
    )
