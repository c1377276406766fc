"""Ops routes on the internal port, behind the admin bearer token (constant-time compare).

Every admin call is logged with what was asked and the result; never the token.
"""

from __future__ import annotations

import csv
import hmac
import io
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.catalog import CachedCatalog
from proxy.catalog.missing import MissingListing, MissingStore, MissingTitle
from proxy.domain import ALL_DRMS, parse_asset_id
from proxy.errors import BadRequest, GatewayError, NotFound, Unauthorized
from proxy.observability.logs import get_logger
from proxy.routing.rules import RequestContext
from proxy.routing.watcher import RulesWatcher

ADMIN_TOKEN = web.AppKey("admin_token", str)
RULES = web.AppKey("rules_watcher", RulesWatcher)
ADMIN_CATALOG = web.AppKey("admin_catalog", CachedCatalog)
MISSING = web.AppKey("missing_titles", MissingStore)

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
    asset_id = parse_asset_id(asset) if asset else None
    catalog = request.app[ADMIN_CATALOG]
    dropped = catalog.invalidate(asset_id)
    answer: dict[str, Any] = {"dropped": dropped}
    missing = request.app.get(MISSING)
    if asset_id is not None and missing is not None and asset_id in missing:
        answer["missing_resolved"] = await _recheck_missing(catalog, missing, asset_id)
    return web.json_response(answer)


async def _recheck_missing(catalog: CachedCatalog, missing: MissingStore, asset_id: str) -> bool:
    """Look a listed title up afresh: it leaves the missing list if it now has its
    drmResourceId (or left the catalog). A catalog failure leaves it listed."""
    try:
        entry = await catalog.get(asset_id)
    except GatewayError:
        return False
    if entry is not None and entry.drm_resource_id is None:
        return False
    return missing.forget(asset_id)


# /admin/missing: the default and largest `limit`.
MISSING_LIMIT_DEFAULT = 100
MISSING_LIMIT_MAX = 100_000
MISSING_FORMATS = ("json", "csv")
_CSV_DRMS = ALL_DRMS  # one count column per DRM system, in this order


def _missing_limit(text: str | None) -> int:
    if text is None:
        return MISSING_LIMIT_DEFAULT
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MISSING_LIMIT_MAX:
        raise BadRequest(f"limit must be a whole number from 1 to {MISSING_LIMIT_MAX}.")
    return int(text)


def _timestamp(seconds: float) -> str:
    """ISO 8601 in UTC to the second, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _title_json(title: MissingTitle) -> dict[str, Any]:
    return {
        "asset_id": title.asset_id,
        "count": title.count,
        "by_drm": dict(title.by_drm),
        "first_seen": _timestamp(title.first_seen),
        "last_seen": _timestamp(title.last_seen),
    }


def _missing_csv(listing: MissingListing) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["asset_id", "count", *_CSV_DRMS, "first_seen", "last_seen"])
    for title in listing.titles:
        per_drm = [title.by_drm.get(drm, 0) for drm in _CSV_DRMS]
        writer.writerow(
            [
                title.asset_id,
                title.count,
                *per_drm,
                *map(_timestamp, (title.first_seen, title.last_seen)),
            ]
        )
    return out.getvalue()


async def list_missing(request: web.Request) -> web.Response:
    """Titles requested without a drmResourceId, most requested first: `scope` says whose
    traffic ("replica": this process; "fleet": every gateway sharing the Redis catalog)."""
    limit = _missing_limit(request.query.get("limit"))
    fmt = request.query.get("format", "json")
    if fmt not in MISSING_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(MISSING_FORMATS)}.")
    listing = await request.app[MISSING].listing(limit)
    if fmt == "csv":
        return web.Response(text=_missing_csv(listing), content_type="text/csv", charset="utf-8")
    return web.json_response(
        {
            "scope": listing.scope,
            "total": listing.total,
            "evicted": listing.evicted,
            "max_titles": listing.max_titles,
            "titles": [_title_json(title) for title in listing.titles],
        }
    )


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/rules", require_admin(get_rules))
    app.router.add_post("/admin/rules/reload", require_admin(reload_rules))
    app.router.add_get("/admin/explain", require_admin(explain_decision))
    app.router.add_get("/admin/catalog/{asset_id}", require_admin(catalog_entry))
    app.router.add_post("/admin/cache/invalidate", require_admin(invalidate_cache))
    app.router.add_get("/admin/missing", require_admin(list_missing))
