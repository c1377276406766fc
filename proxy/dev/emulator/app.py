"""The emulated DRM provider as an aiohttp app, and an in-process runner for tests and the demo.

Routes (legacy and incoming):

- ``POST /license/{drm}/{resource}`` and ``GET /keys/{resource}/{key_id}`` (the kind's own
  auth): licenses and AES-128 keys. A key is the stored one for (resource, key id) when the key
  store has it (``keystore``), else the one derived from the seed for a resource the
  ``resources`` setting knows; 404 ``unknown_resource`` when neither applies.
- the key API (``keyapi``), when ``key_api_token`` is set (else these answer 404), each behind
  ``Authorization: Bearer <key_api_token>``: ``POST /v2/cpix`` (CPIX key generation),
  ``GET /v2/keys/{resource}?kid=...`` (export) and ``PUT /v2/keys/{resource}`` (ingest).

A provider kind (``proxy.dev.emulator.kinds``) has its own license and key paths instead. Fault
modes apply to the license, key and key API routes. Every kind has ``GET /healthz`` and the
unauthenticated loopback controls ``GET /_emulator/stats`` (request counters, the last requests,
key API counters, key store size), ``GET|POST /_emulator/faults`` and ``POST /_emulator/reset``
(clears stats and key API counters, switches faults off, forgets every jti; stored keys are the
provider's data and are kept). Every error is answered as real providers do:
``{"errorCode": "...", "message": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.dev.emulator.auth import (
    ReplayCache,
    TokenVerifier,
    check_legacy_request,
    extract_token,
)
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import (
    BINARY_CONTENT_TYPE,
    CKC_TAG_CONTENT_TYPE,
    check_binary_spc,
    decode_form_spc,
    encode_ckc_tag,
    synthetic_license,
)
from proxy.dev.emulator.faults import Fault, FaultInjector
from proxy.dev.emulator.keys import (
    clearkey_answer,
    derivation_id_for,
    derive_key,
    normalize_key_id,
)
from proxy.dev.emulator.keystore import KeyStore
from proxy.dev.emulator.kinds import add_kind_routes
from proxy.dev.emulator.settings import (
    PROVIDER_KINDS,
    EmulatorSettings,
    Faults,
    faults_from_json,
)
from proxy.dev.emulator.stats import RequestRecord, StatsRecorder, recorded_headers, sha256_hex

DRM_SYSTEMS = ("widevine", "playready", "fairplay", "clearkey")
# Route names (before any ':') that are recorded and get fault modes; the key API's are named
# cpix, key_export and key_ingest.
_PROVIDER_ROUTES = ("license", "keys", "cpix", "key_export", "key_ingest")
_JSON = "application/json"

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class EmulatorState:
    """Everything the handlers share: settings, counters, fault modes, token verifier, and
    the stored keys."""

    settings: EmulatorSettings
    stats: StatsRecorder
    faults: FaultInjector
    verifier: TokenVerifier | None
    keys: KeyStore = field(default_factory=KeyStore)
    # A provider kind's caches of used token ids, forgotten by /_emulator/reset.
    replay_caches: list[ReplayCache] = field(default_factory=list)


STATE = web.AppKey("emulator_state", EmulatorState)
# The challenge as the provider understood it (the decoded SPC for FairPlay), for the stats.
CHALLENGE = web.RequestKey("emulator_challenge", bytes)
# (drm, resource) as a provider kind's handler understood them, where the path does not say.
SEEN = web.RequestKey("emulator_seen", tuple[str | None, str | None])
# What a provider kind's handler verified (content id, key ids, user; never a secret).
VERIFIED = web.RequestKey("emulator_verified", dict[str, Any])


def error_response(status: int, code: str, message: str) -> web.Response:
    """The provider-style JSON error answer."""
    body = json.dumps({"errorCode": code, "message": message}).encode()
    return web.Response(status=status, body=body, content_type=_JSON)


def _json_response(data: Any) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), content_type=_JSON)


def _to_response(exc: Exception) -> web.Response:
    if isinstance(exc, EmulatorError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        code = exc.reason.lower().replace(" ", "_")
        return error_response(exc.status, code, exc.reason + ".")
    log.exception("emulator handler failed")
    return error_response(500, "internal_error", "The emulated provider failed.")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error, including aiohttp's own 404/405/413, into a provider-style JSON body."""
    try:
        return await handler(request)
    except (EmulatorError, web.HTTPException) as exc:
        return _to_response(exc)


@web.middleware
async def provider_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On license, key and key API routes: read the body, apply faults, answer, record."""
    route = (request.match_info.route.name or "").partition(":")[0]
    if route not in _PROVIDER_ROUTES:
        return await handler(request)
    state = request.app[STATE]
    body: bytes | None = None
    fault: Fault | None = None
    response: web.StreamResponse
    try:
        body = await request.read() if request.can_read_body else None
        fault = await _apply_latency_and_draw(state.faults)
        faulted = _fault_response(request, fault, state.faults.faults)
        response = faulted if faulted is not None else await handler(request)
    except Exception as exc:
        response = _to_response(exc)
    _record(request, state, route, body, fault, response)
    return response


async def _apply_latency_and_draw(injector: FaultInjector) -> Fault | None:
    if injector.latency_seconds > 0:
        await asyncio.sleep(injector.latency_seconds)
    return injector.draw()


def _fault_response(
    request: web.Request, fault: Fault | None, faults: Faults
) -> web.Response | None:
    if fault is Fault.RESET:
        _abort_connection(request)
        # Never written: the transport is gone, so aiohttp drops it as a client disconnect.
        return web.Response(status=500)
    if fault is Fault.ERROR:
        return error_response(500, "EMULATED_FAULT", "Emulated provider failure.")
    if fault is Fault.ERROR_JSON:
        body = json.dumps({"errorCode": "EMULATED_FAULT", "message": "Emulated error in a 200."})
        return web.Response(status=200, body=body.encode(), content_type=_JSON)
    if fault is Fault.STATUS and faults.status is not None:
        response = error_response(faults.status, "EMULATED_STATUS", "Emulated forced status.")
        if faults.retry_after is not None:
            response.headers["Retry-After"] = str(faults.retry_after)
        return response
    return None


def _abort_connection(request: web.Request) -> None:
    """Close the connection with a TCP RST so the client really sees a reset, not an answer."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _record(
    request: web.Request,
    state: EmulatorState,
    route: str,
    body: bytes | None,
    fault: Fault | None,
    response: web.StreamResponse,
) -> None:
    info = request.match_info
    drm, resource = request.get(SEEN, (info.get("drm"), info.get("resource")))
    state.stats.record(
        RequestRecord(
            method=request.method,
            path=_recorded_path(request),
            route=route,
            drm=drm,
            resource=resource,
            status=None if fault is Fault.RESET else response.status,
            fault=fault.value if fault is not None else None,
            challenge_sha256=sha256_hex(request.get(CHALLENGE)),
            body_sha256=sha256_hex(body),
            headers=recorded_headers(request.headers),
            header_names=tuple(request.headers.keys()),
            verified=request.get(VERIFIED, {}),
        )
    )


def _authenticate(request: web.Request, state: EmulatorState, resource: str) -> None:
    settings = state.settings
    if settings.kind == "legacy":
        check_legacy_request(request.headers, settings)
        return
    # Incoming ignores a legacy X-Api-Key: real providers do not mind unknown headers.
    token = extract_token(request.headers, settings.token_header)
    if state.verifier is not None:
        state.verifier.verify(token, resource)


def key_lookup(state: EmulatorState, resource: str) -> Callable[[str], bytes]:
    """How keys of ``resource`` are found: ``key_for(key id as lowercase hex)`` answers the
    stored key, else the derived one (404 ``unknown_key`` when the resource has stored keys but
    no derivation). 404 ``unknown_resource`` at once if it has neither."""
    store, settings = state.keys, state.settings
    derivation_id: str | None
    try:
        derivation_id = derivation_id_for(settings.resources, resource)
    except EmulatorError:
        if not store.has_resource(resource):
            raise
        derivation_id = None

    def key_for(key_id: str) -> bytes:
        stored = store.get(resource, key_id)
        if stored is not None:
            return stored
        if derivation_id is None:
            raise EmulatorError(404, "unknown_key", "This key id is not known for this resource.")
        return derive_key(settings.seed, derivation_id, key_id)

    return key_for


async def handle_license(request: web.Request) -> web.Response:
    """``POST /license/{drm}/{resource}``: a synthetic license, or a real ClearKey one."""
    state = request.app[STATE]
    settings = state.settings
    drm, resource = request.match_info["drm"], request.match_info["resource"]
    _authenticate(request, state, resource)
    if drm not in DRM_SYSTEMS:
        raise EmulatorError(404, "unknown_drm", "This DRM system is not served here.")
    key_for = key_lookup(state, resource)
    body = await request.read()
    if not body:
        raise EmulatorError(400, "empty_challenge", "The license challenge is empty.")
    if drm == "fairplay":
        return _fairplay_answer(request, settings, body)
    request[CHALLENGE] = body
    if drm == "clearkey":
        answer = clearkey_answer(body, key_for)
        return web.Response(body=answer, content_type=_JSON)
    license_ = synthetic_license(settings.name, drm, body)
    return web.Response(body=license_, content_type=BINARY_CONTENT_TYPE)


def _fairplay_answer(request: web.Request, settings: EmulatorSettings, body: bytes) -> web.Response:
    content_type = request.headers.get("Content-Type")
    if settings.kind == "legacy":
        spc = decode_form_spc(body, content_type)
        request[CHALLENGE] = spc
        ckc = encode_ckc_tag(synthetic_license(settings.name, "fairplay", spc))
        return web.Response(body=ckc, content_type=CKC_TAG_CONTENT_TYPE)
    spc = check_binary_spc(body, content_type)
    request[CHALLENGE] = spc
    ckc = synthetic_license(settings.name, "fairplay", spc)
    return web.Response(body=ckc, content_type=BINARY_CONTENT_TYPE)


async def handle_key(request: web.Request) -> web.Response:
    """``GET /keys/{resource}/{key_id}``: the 16 raw bytes of an AES-128 key."""
    state = request.app[STATE]
    resource = request.match_info["resource"]
    _authenticate(request, state, resource)
    key_for = key_lookup(state, resource)
    key = key_for(normalize_key_id(request.match_info["key_id"]))
    headers = {"Cache-Control": "no-store"}
    return web.Response(body=key, content_type=BINARY_CONTENT_TYPE, headers=headers)


async def handle_healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: always 200 while the server runs."""
    settings = request.app[STATE].settings
    return _json_response({"status": "ok", "kind": settings.kind, "name": settings.name})


async def handle_stats(request: web.Request) -> web.Response:
    """``GET /_emulator/stats``: counters, the last requests and the fault modes in force."""
    state = request.app[STATE]
    snapshot = state.stats.snapshot()
    snapshot.update(
        kind=state.settings.kind, name=state.settings.name, faults=state.faults.faults.as_json()
    )
    store = state.keys
    snapshot["key_store"] = {
        "resources": store.resource_count,
        "keys": len(store),
        "persistent": store.path is not None,
    }
    return _json_response(snapshot)


async def handle_get_faults(request: web.Request) -> web.Response:
    """``GET /_emulator/faults``: the fault modes in force."""
    return _json_response(request.app[STATE].faults.faults.as_json())


async def handle_set_faults(request: web.Request) -> web.Response:
    """``POST /_emulator/faults``: replace the fault modes (absent keys are switched off)."""
    try:
        faults = faults_from_json(await request.json())
    except ValueError as exc:  # includes malformed JSON
        raise EmulatorError(400, "bad_faults", str(exc)) from None
    request.app[STATE].faults.replace(faults)
    return _json_response(faults.as_json())


async def handle_reset(request: web.Request) -> web.Response:
    """``POST /_emulator/reset``: clear the stats (key API counters included), switch faults
    off, forget every jti. Stored keys are kept: they are the provider's data, not test state."""
    state = request.app[STATE]
    state.stats.clear()
    state.faults.replace(Faults())
    caches = [*state.replay_caches, *([state.verifier.replay_cache] if state.verifier else [])]
    for cache in caches:
        cache.clear()
    return _json_response({"status": "reset"})


def create_emulator_app(settings: EmulatorSettings) -> web.Application:
    """Build the emulated provider described by ``settings``."""
    # Imported here: the key API's handlers use this module's STATE and key_lookup.
    from proxy.dev.emulator.keyapi import add_key_api_routes

    app = web.Application(middlewares=[error_middleware, provider_middleware])
    verifier = TokenVerifier(settings) if settings.verifies_tokens else None
    # Reads (and locks) the key store file: ValueError if it is malformed or in use.
    store = KeyStore(settings.key_store_path)
    app[STATE] = EmulatorState(
        settings=settings,
        stats=StatsRecorder(),
        faults=FaultInjector(settings.faults),
        verifier=verifier,
        keys=store,
    )

    async def close_store(_: web.Application) -> None:
        store.close()

    app.on_cleanup.append(close_store)
    if settings.kind in PROVIDER_KINDS:
        add_kind_routes(settings.kind)(app, settings)
    else:
        app.router.add_post("/license/{drm}/{resource}", handle_license, name="license")
        app.router.add_get("/keys/{resource}/{key_id}", handle_key, name="keys", allow_head=False)
        add_key_api_routes(app, settings)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/_emulator/stats", handle_stats)
    app.router.add_get("/_emulator/faults", handle_get_faults)
    app.router.add_post("/_emulator/faults", handle_set_faults)
    app.router.add_post("/_emulator/reset", handle_reset)
    return app


@dataclass
class RunningEmulator:
    """An emulator serving on a real socket; ``await stop()`` when done."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8081``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def app(self) -> web.Application:
        """The served application (its state is ``app[STATE]``)."""
        return self.runner.app

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.runner.cleanup()


async def start_emulator(
    settings: EmulatorSettings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    access_log: bool = False,
) -> RunningEmulator:
    """Start an emulator on ``host:port`` (port 0: an ephemeral one) in the running loop."""
    app = create_emulator_app(settings)
    runner, bound_port = await start_site(app, host, port, access_log=access_log)
    return RunningEmulator(runner=runner, host=host, port=bound_port)


async def start_site(
    app: web.Application, host: str, port: int, *, access_log: bool = False
) -> tuple[web.AppRunner, int]:
    """Serve `app` on `host:port` (0: an ephemeral port); the runner and the bound port."""
    kwargs: dict[str, Any] = {} if access_log else {"access_log": None}
    runner = web.AppRunner(app, shutdown_timeout=1.0, **kwargs)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


# Path parameters that are credentials (DoveRunner's KMS token ends its CPIX URL): the stats
# show the route's template there instead of the value.
_SECRET_PATH_PARAMETERS = frozenset({"kms_token"})


def _recorded_path(request: web.Request) -> str:
    """The request's path as the stats show it, with credential segments masked."""
    if not _SECRET_PATH_PARAMETERS & request.match_info.keys():
        return request.path
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "[masked]"
