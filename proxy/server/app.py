"""Application factories and lifecycle: a public app for players, an internal one for ops.

Each resource (catalog, provider sessions) is opened and closed by its own cleanup_ctx on the
public app; the internal app reads the same state for /readyz and /metrics.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proxy import __version__
from proxy.access.guard import PlayerGuard
from proxy.access.player_tokens import TOKEN_REFUSALS
from proxy.catalog import CachedCatalog, build_catalog
from proxy.catalog.missing import MissingStore, MissingTitles
from proxy.catalog.missing_redis import RedisMissingTitles
from proxy.catalog.redis import RedisCatalog, create_client
from proxy.config import Config, Listener
from proxy.gateway import Gateway
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.routing.history_redis import open_fleet_history
from proxy.routing.watcher import RulesWatcher
from proxy.server.admin import ADMIN_CATALOG, ADMIN_TOKENS, MISSING, RULES, add_admin_routes
from proxy.server.admission import OVERLOAD_DETAILS, Admission
from proxy.server.console import SummaryShape, add_console_routes, console_ctx
from proxy.server.fleet import FLEET, add_fleet_routes, open_fleet, replica_id
from proxy.server.middleware import create_middleware, error_fields
from proxy.server.openapi import add_openapi_route
from proxy.server.protocol import ClientPolicy, GatewayRunner
from proxy.server.routes import CERTIFICATE, GATEWAY, GUARD, MAX_BODY, add_public_routes
from proxy.server.speke import SPEKE_REFUSALS, add_speke_route, create_speke_app, speke_context
from proxy.upstream.base import ProviderClient
from proxy.upstream.registry import close_providers, open_providers

CONFIG = web.AppKey("config", Config)
CATALOG = web.AppKey("catalog", CachedCatalog)
PROVIDERS: web.AppKey[Mapping[str, ProviderClient]] = web.AppKey("providers")
# A second client per provider for shadow copies: their own connection pools.
SHADOW_PROVIDERS: web.AppKey[Mapping[str, ProviderClient]] = web.AppKey("shadow_providers")
PUBLIC_APP = web.AppKey("public_app", web.Application)
DRAINING = web.AppKey("draining", asyncio.Event)
ADMISSION = web.AppKey("admission", Admission)

log = get_logger("app")


def _count_catalog_lookup(result: str) -> None:
    metrics.labelled(metrics.CATALOG_LOOKUPS, result).inc()


async def _catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[CONFIG].catalog
    app[CATALOG] = build_catalog(settings, observe=_count_catalog_lookup)
    yield
    await app[CATALOG].close()


async def _catalog_changes_ctx(app: web.Application) -> AsyncIterator[None]:
    """With the Redis backend: drop each asset announced as changed from the cache, and clear
    it whole on every (re)subscription, since announcements made meanwhile are lost."""
    catalog = app[CATALOG]
    backend = catalog.backend
    if not isinstance(backend, RedisCatalog):
        yield
        return
    follower = asyncio.get_running_loop().create_task(
        backend.follow_changes(catalog.invalidate_many, catalog.invalidate)
    )
    yield
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)


async def _providers_ctx(app: web.Application) -> AsyncIterator[None]:
    providers = await open_providers(app[CONFIG].providers)
    app[PROVIDERS] = providers
    shadows = await open_providers(app[CONFIG].providers)  # connections opened on first use
    app[SHADOW_PROVIDERS] = shadows
    yield
    await close_providers(providers)
    await close_providers(shadows)


async def _rules_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    watcher = RulesWatcher.from_config(config)
    app[RULES] = watcher
    poller = asyncio.get_running_loop().create_task(watcher.poll_forever())
    # With the Redis catalog, each change also goes to the fleet's change log.
    redis = config.catalog.redis if config.catalog.backend == "redis" else None
    async with open_fleet_history(redis, watcher.history, replica=replica_id(config.fleet)):
        yield
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)
    watcher.close()


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    async with _missing_store(app[CONFIG]) as missing:
        gateway = Gateway(
            app[CONFIG],
            app[CATALOG],
            app[PROVIDERS],
            app[RULES],
            missing=missing,
            shadow_providers=app[SHADOW_PROVIDERS],
        )
        app[GATEWAY] = gateway
        yield
        await gateway.close()


async def _fleet_ctx(app: web.Application) -> AsyncIterator[None]:
    """Heartbeats and fleet-wide admin calls (with the Redis catalog); stopped before the
    gateway and catalog close."""
    resources = app[CONFIG], app[CATALOG], app[RULES], app[GATEWAY], app[ADMISSION]
    async with open_fleet(*resources) as fleet:
        app[FLEET] = fleet
        yield


@asynccontextmanager
async def _missing_store(config: Config) -> AsyncIterator[MissingStore]:
    """Where titles requested without a drmResourceId are recorded: fleet-wide in Redis with
    the Redis catalog (flushed by a background task, cancelled and flushed once more at the
    end), else in this replica's memory."""
    redis = config.catalog.redis
    if config.catalog.backend != "redis" or redis is None:
        yield MissingTitles(
            max_titles=config.missing.max_titles,
            on_size=metrics.TITLES_WITHOUT_RESOURCE_ID.set,
            on_eviction=metrics.TITLES_WITHOUT_RESOURCE_ID_EVICTED.inc,
        )
        return
    fleet = RedisMissingTitles(
        create_client(redis),
        key_prefix=redis.key_prefix,
        max_titles=config.missing.max_titles,
        on_size=metrics.TITLES_WITHOUT_RESOURCE_ID.set,
        on_eviction=metrics.TITLES_WITHOUT_RESOURCE_ID_EVICTED.inc,
        on_drop=metrics.TITLES_WITHOUT_RESOURCE_ID_DROPPED.inc,
    )
    flusher = asyncio.get_running_loop().create_task(fleet.run())
    try:
        yield fleet
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await fleet.close()


def create_public_app(config: Config) -> web.Application:
    """The player-facing app: license, key and certificate routes."""
    in_flight = config.server.clients.in_flight
    admission = Admission(in_flight.max_requests, in_flight.max_queued, in_flight.queue_seconds)
    app = web.Application(
        middlewares=[
            create_middleware(
                public=True,
                cors=config.cors,
                trusted_proxies=config.server.trusted_proxies,
                admission=admission,
            )
        ],
        client_max_size=config.server.max_body_bytes,
    )
    app[CONFIG] = config
    app[DRAINING] = asyncio.Event()
    app[ADMISSION] = admission
    app[GUARD] = PlayerGuard(config.player_auth, config.rate_limits)
    app[MAX_BODY] = config.server.max_body_bytes
    if config.fairplay.certificate is not None:
        app[CERTIFICATE] = config.fairplay.certificate
    app.cleanup_ctx.extend(
        [_catalog_ctx, _catalog_changes_ctx, _providers_ctx, _rules_ctx, _gateway_ctx, _fleet_ctx]
    )
    add_public_routes(app)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once the catalog backend answers, providers are configured and rules are active."""
    public = request.app[PUBLIC_APP]
    problems = []
    if public[DRAINING].is_set():
        problems.append("shutting down: finishing in-flight requests")
    if CATALOG not in public:
        problems.append("catalog not open")
    else:
        try:
            await public[CATALOG].ping()
        except Exception:
            problems.append("catalog backend does not answer")
    if not public.get(PROVIDERS):
        problems.append("no providers configured")
    rules_problems, warnings = public[RULES].readiness()
    problems += rules_problems
    rules = public[RULES].rules
    if public[CONFIG].speke is not None and rules is not None and rules.keys is None:
        warnings.append("speke: the rules file has no keys section; key requests answer 503")
    if public[GUARD].auth_off:
        warnings.append("player authentication is OFF (player_auth.mode: none): development only")
    report = {"ready": not problems, "problems": problems, "warnings": warnings}
    if not problems:
        return web.json_response({**report, "version": __version__})
    # Unready is an error answer too: the error shape's fields, then the report.
    refused = error_fields(request, "not_ready", "The gateway is not ready; see problems.")
    return web.json_response({**refused, **report, "version": __version__}, status=503)


async def metrics_handler(request: web.Request) -> web.Response:
    body = generate_latest(metrics.scrape_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_internal_app(public: web.Application) -> web.Application:
    """The ops app (never exposed publicly): health, readiness, metrics, admin.

    Built after the public app has started, so it shares the open catalog and rules.
    """
    app = web.Application(middlewares=[create_middleware(public=False)])
    app[PUBLIC_APP] = public
    app[RULES] = public[RULES]
    app[ADMIN_CATALOG] = public[CATALOG]
    app[MISSING] = public[GATEWAY].missing
    config = public[CONFIG]
    app[ADMIN_TOKENS] = config.admin_tokens
    add_admin_routes(app)
    add_fleet_routes(app, public[FLEET])
    if config.speke is not None and config.speke.listener == "internal":
        add_speke_route(app, config.speke)
        app.cleanup_ctx.append(_speke_ctx(public))
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    add_openapi_route(app)
    add_console_routes(app, SummaryShape(config.routing.default_provider, tuple(config.providers)))
    app.cleanup_ctx.append(console_ctx)
    return app


def _speke_ctx(public: web.Application) -> Callable[[web.Application], AsyncIterator[None]]:
    """The SPEKE endpoint's resources (key API clients, key records, the mirror queue's
    drain), opened on the app that serves it, from the public app's open catalog and rules."""
    return speke_context(
        config=public[CONFIG],
        catalog=public[CATALOG],
        rules=public[RULES],
        providers=public[PROVIDERS],
    )


def create_own_speke_app(public: web.Application) -> web.Application:
    """The SPEKE endpoint on a listener of its own (`speke.listener: own`)."""
    settings = public[CONFIG].speke
    assert settings is not None
    app = create_speke_app(settings)
    app.cleanup_ctx.append(_speke_ctx(public))
    return app


@dataclass
class RunningGateway:
    """A started gateway: its listeners' URLs (the SPEKE one when it has its own), and how to
    stop it."""

    public_url: str
    internal_url: str
    public_app: web.Application
    _runners: tuple[GatewayRunner, ...]
    speke_url: str | None = None
    _stopped: bool = False

    async def stop(self) -> None:
        """Unready at once, finish the packagers' key requests on a SPEKE listener of its own,
        stop accepting players, let in-flight requests finish (up to the configured grace),
        then close the internal port last so probes see the drain.

        Each connection answers the request it is handling with `Connection: close`; an idle
        keep-alive connection is closed at once. A second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        public, internal, *own = self._runners
        self.public_app[DRAINING].set()
        for runner in own:
            await runner.cleanup()
        await public.cleanup()
        await internal.cleanup()


async def start_gateway(config: Config, *, reuse_port: bool = False) -> RunningGateway:
    """Open resources and bind every listener (port 0 picks a free port).

    `reuse_port` lets several worker processes share the same ports (SO_REUSEPORT).
    """
    metrics.BUILD_INFO.info({"version": __version__})
    # Every known series at 0, so alerts see the first event.
    details = {
        "unauthorized": (*TOKEN_REFUSALS.values(), "admin_token", *SPEKE_REFUSALS),
        "rate_limited": metrics.RATE_LIMITS,
        "overloaded": OVERLOAD_DETAILS,
    }
    metrics.initialise(config.providers, details)
    metrics.initialise_speke(config.providers)  # even when off: the dashboard shows zeros
    _check_descriptors(config)
    public_app = create_public_app(config)
    server = config.server
    grace = server.shutdown_grace_seconds
    clients, trusted = server.clients, server.trusted_proxies
    # Each listener counts its own connections: a flood of one leaves the others their room.
    public = GatewayRunner(
        public_app,
        shutdown_timeout=grace,
        policy=ClientPolicy("public", clients, clients.public, trusted),
    )
    await public.setup()
    runners = [public]
    try:
        internal = GatewayRunner(
            create_internal_app(public_app),
            policy=ClientPolicy("internal", clients, clients.internal),
        )
        runners.append(internal)
        await internal.setup()
        listeners = [config.server.public, config.server.internal]
        speke = config.speke
        if speke is not None and speke.listener == "own":
            own = GatewayRunner(
                create_own_speke_app(public_app),
                shutdown_timeout=grace,
                policy=ClientPolicy("speke", clients, clients.public, trusted),
            )
            runners.append(own)
            await own.setup()
            listeners.append(Listener(speke.host, speke.port))
        urls = [
            await _listen(runner, listener, reuse_port)
            for runner, listener in zip(runners, listeners, strict=True)
        ]
    except BaseException:
        for runner in reversed(runners):
            await runner.cleanup()
        raise
    speke_url = urls[2] if len(urls) > 2 else None
    log.info(
        "started",
        public=urls[0],
        internal=urls[1],
        speke=speke_url or (urls[1] if config.speke is not None else None),
        providers=sorted(config.providers),
    )
    if config.player_auth.mode == "none":
        log.warning("player_auth_off", detail="every player is admitted: development only")
    return RunningGateway(urls[0], urls[1], public_app, tuple(runners), speke_url)


# Descriptors besides client connections: upstream pools, catalog, Redis, logs, the loop.
_DESCRIPTOR_MARGIN = 1024


def _check_descriptors(config: Config) -> None:
    """Raise the soft file-descriptor limit to the hard one (as Go's runtime does); warn if
    the listeners' connection caps still do not fit under it: past the limit every accept
    fails, the internal port's too."""
    clients = config.server.clients
    caps = clients.public.max_connections + clients.internal.max_connections
    if config.speke is not None and config.speke.listener == "own":
        caps += clients.public.max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # pragma: no cover - e.g. a hard limit of RLIM_INFINITY
            pass
    if soft != resource.RLIM_INFINITY and caps + _DESCRIPTOR_MARGIN > soft:
        log.warning(
            "connection_caps_above_descriptor_limit",
            max_connections=caps,
            descriptor_limit=soft,
            detail="lower server.clients.*.max_connections or raise `ulimit -n`",
        )


async def _listen(runner: GatewayRunner, listener: Listener, reuse_port: bool) -> str:
    """Bind `runner` to the listener; its URL (the port chosen for port 0)."""
    site = web.TCPSite(
        runner,
        listener.host,
        listener.port,
        backlog=runner.policy.backlog,
        reuse_address=True,
        reuse_port=reuse_port,
    )
    await site.start()
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop where available (measurably faster), else on asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
    else:
        uvloop.run(main)


def settle_heap() -> None:
    """Once started: collect, then freeze what is left (modules, config, rules, pools) out
    of the garbage collector's sight. A full collection walked every object the imports made
    (redis-py, cryptography, aiohttp ...) and stalled the loop for about 10 ms now and
    then: the full path's p99 at 32 connections was 19-20 ms, 11.2-11.4 ms frozen."""
    gc.collect()
    gc.freeze()


def install_signal_handlers(gateway: RunningGateway, stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM stop the gateway; SIGHUP reloads the routing rules."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.public_app[RULES].reload, "sighup")


async def serve(config: Config) -> None:
    """Run until SIGINT or SIGTERM, then close every resource."""
    gateway = await start_gateway(config)
    settle_heap()
    stop = asyncio.Event()
    install_signal_handlers(gateway, stop)
    try:
        await stop.wait()
    finally:
        log.info("stopping", grace_seconds=config.server.shutdown_grace_seconds)
        await gateway.stop()
        log.info("stopped")
