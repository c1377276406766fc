"""Ops routes on the internal port, behind the admin bearer token (constant-time compare).

Every admin call is logged with what was asked and the result; never the token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web

from proxy.catalog import CachedCatalog
from proxy.domain import ALL_DRMS, parse_asset_id
from proxy.errors import BadRequest, GatewayError, NotFound, Unauthorized
from proxy.observability.logs import get_logger
from proxy.routing.rules import RequestContext
from proxy.routing.watcher import RulesWatcher

ADMIN_TOKEN = web.AppKey("admin_token", str)
RULES = web.AppKey("rules_watcher", RulesWatcher)
ADMIN_CATALOG = web.AppKey("admin_catalog", CachedCatalog)

log = get_logger("admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_admin(handler: Handler) -> Handler:
    """Refuse with 401 unless `Authorization: Bearer <admin token>` matches."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        expected = request.app.get(ADMIN_TOKEN)
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        ok = bool(expected) and scheme.lower() == "bearer"
        # compare_digest on bytes of any length takes time independent of where they differ.
        ok = hmac.compare_digest(token.encode(), (expected or "").encode()) and ok
        who = request.remote or "unknown"
        if not ok:
            log.warning("admin_refused", who=who, path=request.path, method=request.method)
            raise Unauthorized("A valid admin token is required.", detail="admin_token")
        try:
            response = await handler(request)
        except GatewayError as exc:
            log.info(
                "admin_call", who=who, path=request.path, method=request.method, result=exc.status
            )
            raise
        log.info(
            "admin_call", who=who, path=request.path, method=request.method, result=response.status
        )
        return response

    return guarded


async def get_rules(request: web.Request) -> web.Response:
    return web.json_response(request.app[RULES].to_dict())


async def reload_rules(request: web.Request) -> web.Response:
    result = request.app[RULES].reload("admin")
    return web.json_response(result.to_dict(), status=422 if result.result == "refused" else 200)


async def explain_decision(request: web.Request) -> web.Response:
    """The decision with every rule's verdict; no provider is called."""
    query = request.query
    asset_id = parse_asset_id(query.get("asset", ""))
    drm = query.get("drm", "")
    if drm not in ALL_DRMS:
        raise BadRequest(f"drm must be one of {', '.join(ALL_DRMS)}.")
    entry = await request.app[ADMIN_CATALOG].get(asset_id)
    if entry is None:
        raise NotFound(f"Asset '{asset_id}' is not in the catalog.")
    context = RequestContext(
        drm, asset_id, entry, query.get("platform"), query.get("app_version"), query.get("user")
    )
    return web.json_response(request.app[RULES].explain(context))


async def catalog_entry(request: web.Request) -> web.Response:
    asset_id = parse_asset_id(request.match_info["asset_id"])
    entry = await request.app[ADMIN_CATALOG].get(asset_id)
    if entry is None:
        raise NotFound(f"Asset '{asset_id}' is not in the catalog.")
    data = asdict(entry)
    data["key_holders"] = sorted(entry.key_holders) if entry.key_holders is not None else None
    data["tags"] = sorted(entry.tags)
    return web.json_response(data)


async def invalidate_cache(request: web.Request) -> web.Response:
    asset = request.query.get("asset")
    dropped = request.app[ADMIN_CATALOG].invalidate(parse_asset_id(asset) if asset else None)
    return web.json_response({"dropped": dropped})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/rules", require_admin(get_rules))
    app.router.add_post("/admin/rules/reload", require_admin(reload_rules))
    app.router.add_get("/admin/explain", require_admin(explain_decision))
    app.router.add_get("/admin/catalog/{asset_id}", require_admin(catalog_entry))
    app.router.add_post("/admin/cache/invalidate", require_admin(invalidate_cache))
