"""`POST /v2/speke`: the SPEKE v2 endpoint packagers get content keys from.

Served on the internal port or on a listener of its own (`speke.listener`), behind the
packager credential from config (a bearer token or HTTP Basic, compared in constant time;
401 with a WWW-Authenticate challenge otherwise). The handler checks the credential, the
content type (application/xml or text/xml, else 415) and the body size (413), then hands
the document to `SpekeService` (proxy/keys/speke.py). Every answer carries
`X-Speke-User-Agent: drm-gateway/<version>` and echoes a supported `X-Speke-Version`;
refusals are the gateway's JSON errors (a CPIX document the spec refuses: 422 with the
spec's message). One `speke` log line per request: what was decided, never a key or token.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final

from aiohttp import web

from proxy import __version__
from proxy.catalog import CachedCatalog
from proxy.catalog.keys import KeyRecords, MirrorJob, open_key_records
from proxy.config import Config
from proxy.config.speke import PackagerCredential, SpekeSettings
from proxy.errors import GatewayError, PackagerUnauthorized, UnsupportedMediaType
from proxy.keys.client import KeyApiClient, key_clients
from proxy.keys.cpix import SPEKE_VERSIONS
from proxy.keys.mirrors import MirrorDrainer, Transfer
from proxy.keys.speke import SpekeAnswer, SpekeService
from proxy.keys.transfer import Verifier, transfer_title
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.routing.watcher import RulesWatcher
from proxy.server.middleware import create_middleware
from proxy.server.routes import read_body
from proxy.upstream.base import ProviderClient

SPEKE_PATH: Final = "/v2/speke"
USER_AGENT: Final = f"drm-gateway/{__version__}"
REALM: Final = "drm-gateway SPEKE"
SPEKE = web.AppKey("speke_service", SpekeService)
SPEKE_SETTINGS = web.AppKey("speke_settings", SpekeSettings)
# The `detail` of a refused packager (drm_gateway_refused_requests_total).
SPEKE_REFUSALS: Final = ("missing_credential", "invalid_credential")
_XML_TYPES: Final = frozenset({"application/xml", "text/xml"})

log = get_logger("speke")


def add_speke_route(app: web.Application, settings: SpekeSettings) -> None:
    """Serve `POST /v2/speke` on `app`; its answers get the SPEKE headers."""
    app[SPEKE_SETTINGS] = settings
    app.router.add_post(SPEKE_PATH, handle_speke)
    app.on_response_prepare.append(_speke_headers)


def create_speke_app(settings: SpekeSettings) -> web.Application:
    """A listener of its own for the endpoint (`speke.listener: own`): only `/v2/speke`."""
    app = web.Application(middlewares=[create_middleware(public=False)])
    add_speke_route(app, settings)
    return app


async def handle_speke(request: web.Request) -> web.Response:
    """Credential, content type, body; then the keys from the service (see module doc)."""
    started = time.perf_counter()
    try:
        answer = await _answer(request)
    except GatewayError as exc:
        _observe(exc.code, started, status=exc.status)
        raise
    except Exception:
        _observe("internal_error", started, status=500)
        raise
    _observe("ok", started, status=200, answer=answer)
    return web.Response(
        body=answer.document,
        content_type="application/xml",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


async def _answer(request: web.Request) -> SpekeAnswer:
    settings = request.app[SPEKE_SETTINGS]
    check_credential(request.headers.get("Authorization"), settings.credential)
    if request.content_type not in _XML_TYPES:
        raise UnsupportedMediaType("The CPIX document must be sent as application/xml.")
    body = await read_body(request, settings.max_body_bytes)
    service = request.app[SPEKE]
    return await service.answer(
        body, request.headers.get("X-Speke-Version"), request.query.get("asset")
    )


def check_credential(header: str | None, credential: PackagerCredential) -> None:
    """Nothing if `header` carries the packager credential, else PackagerUnauthorized."""
    scheme, _, value = (header or "").strip().partition(" ")
    if credential.scheme == "bearer":
        challenge = f'Bearer realm="{REALM}"'
        given: bytes | None = value.strip().encode("utf-8", "surrogateescape")
        expected = credential.secret.encode()
    else:
        challenge = f'Basic realm="{REALM}", charset="UTF-8"'
        given = _basic(value.strip())
        expected = f"{credential.username}:{credential.secret}".encode()
    if scheme.lower() != credential.scheme or not given:
        raise PackagerUnauthorized(challenge, detail="missing_credential")
    # compare_digest on bytes of any length takes time independent of where they differ.
    if not hmac.compare_digest(given, expected):
        raise PackagerUnauthorized(challenge, detail="invalid_credential")


def _basic(value: str) -> bytes | None:
    """The `user:password` bytes of an HTTP Basic credential, None if malformed."""
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return decoded if b":" in decoded else None


async def _speke_headers(request: web.Request, response: web.StreamResponse) -> None:
    """X-Speke-User-Agent on every SPEKE answer, and the supported X-Speke-Version echoed
    (only a value we know: no answer echoes request bytes)."""
    if request.path != SPEKE_PATH:
        return
    response.headers["X-Speke-User-Agent"] = USER_AGENT
    version = (request.headers.get("X-Speke-Version") or "").strip()
    if version in SPEKE_VERSIONS:
        response.headers["X-Speke-Version"] = version


def _observe(
    result: str, started: float, *, status: int, answer: SpekeAnswer | None = None
) -> None:
    """The request's metric and its one log line (decisions and counts, never a key)."""
    metrics.labelled(metrics.SPEKE_REQUESTS, metrics.speke_result(result)).inc()
    fields: dict[str, object] = {}
    if answer is not None:
        decision = answer.decision
        fields = {
            "asset_id": answer.asset_id,
            "source": decision.source,
            "key_rule": decision.rule,
            "holders": list(answer.holders),
            "queued": list(answer.queued),
            "key_count": answer.key_count,
        }
    log.info(
        "speke_request",
        result=result,
        status=status,
        duration_ms=round((time.perf_counter() - started) * 1000, 3),
        **fields,
    )


def speke_context(
    *,
    config: Config,
    catalog: CachedCatalog,
    rules: RulesWatcher,
    providers: Mapping[str, ProviderClient],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx for the app serving SPEKE: the key API clients, the key records, the
    service, and the mirror queue's drain (a background task, cancelled at the end)."""
    settings = config.speke
    assert settings is not None

    async def context(app: web.Application) -> AsyncIterator[None]:
        clients = key_clients(config.providers)
        records = open_key_records(config.catalog)
        app[SPEKE] = SpekeService(
            policy=lambda: rules.active().keys,
            clients=clients,
            records=records,
            public_base_url=settings.public_base_url,
            on_recorded=catalog.invalidate,  # routing sees the new holders at once
        )
        drainer = MirrorDrainer(
            records,
            mirror_transfer(clients, records, providers),
            settings.mirror_queue,
            on_written=lambda job: catalog.invalidate(job.asset_id),
        )
        task = asyncio.get_running_loop().create_task(drainer.run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            for client in clients.values():
                await client.close()
            await records.close()

    return context


def mirror_transfer(
    clients: Mapping[str, KeyApiClient],
    records: KeyRecords,
    providers: Mapping[str, ProviderClient],
) -> Transfer:
    """How the drain copies one queued title: `transfer_title` (export from the source, ingest
    at the mirror, verify through the gateway's own client for the mirror, record the holder);
    None when done, else the bounded reason it failed."""

    async def transfer(job: MirrorJob) -> str | None:
        source, target = clients.get(job.source), clients.get(job.target)
        provider = providers.get(job.target)
        if source is None or target is None or provider is None:
            return "not_configured"  # a provider renamed or its key_api removed since
        outcome = await transfer_title(
            job.asset_id,
            job.drm_resource_id,
            job.key_ids,
            source=source,
            target=target,
            verify=Verifier(provider),
            records=records,
            target_name=job.target,
        )
        return outcome.reason or "failed" if outcome.outcome == "failed" else None

    return transfer
