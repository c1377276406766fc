"""Ops routes on the internal port, behind the admin tokens (constant-time compare).

Several named tokens may be configured; the one a request carries names its caller, which
the change log of the rules records. Every admin call is logged with the caller, what was
asked and the result; never the token.
"""

from __future__ import annotations

import base64
import csv
import hmac
import io
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from proxy.catalog import CachedCatalog
from proxy.catalog.missing import MissingListing, MissingStore, MissingTitle
from proxy.domain import ALL_DRMS, parse_asset_id
from proxy.errors import AdminUnauthorized, BadRequest, FleetUnavailable, GatewayError, NotFound
from proxy.observability.logs import get_logger
from proxy.routing.history import FleetHistory
from proxy.routing.rules import RequestContext
from proxy.routing.watcher import RulesWatcher
from proxy.server.middleware import error_fields

# Every admin token by caller name (config: admin.token is "admin", plus admin.tokens).
ADMIN_TOKENS: web.AppKey[Mapping[str, str]] = web.AppKey("admin_tokens")
RULES = web.AppKey("rules_watcher", RulesWatcher)
ADMIN_CATALOG = web.AppKey("admin_catalog", CachedCatalog)
MISSING = web.AppKey("missing_titles", MissingStore)

ADMIN_CALLER = web.RequestKey("admin_caller", str)

log = get_logger("admin")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_caller(request: web.Request) -> str:
    """The name of the admin token this request came with ("admin": admin.token); only
    for handlers behind `require_admin`, which sets it."""
    return request[ADMIN_CALLER]


def require_admin(handler: Handler) -> Handler:
    """Refuse with 401 unless the request carries a configured admin token (Bearer, or Basic
    with any user name); the token's name becomes the request's `ADMIN_CALLER`."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        caller = match_admin_token(
            request.app.get(ADMIN_TOKENS, {}), presented_token(request.headers)
        )
        remote = request.remote or "unknown"
        if caller is None:
            log.warning(
                "admin_refused",
                caller=None,
                remote=remote,
                path=request.path,
                method=request.method,
            )
            raise AdminUnauthorized()
        request[ADMIN_CALLER] = caller
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except (GatewayError, web.HTTPException) as exc:
            status = exc.status
            raise
        finally:
            log.info(
                "admin_call",
                caller=caller,
                remote=remote,
                path=request.path,
                method=request.method,
                result=status,
            )
        return response

    return guarded


def presented_token(headers: Mapping[str, str]) -> bytes | None:
    """The token of `Authorization: Bearer <token>` or `Basic base64(<name>:<token>)` (the
    name is not checked: the token alone says who), or None."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value.encode() if value else None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):  # binascii.Error is a ValueError
        return None
    _, colon, token = decoded.partition(b":")
    return token if colon and token else None


def match_admin_token(tokens: Mapping[str, str], given: bytes | None) -> str | None:
    """The name of the token equal to `given`, or None. Every token is compared, each in
    constant time, so how long this takes does not say which one matched, or how nearly."""
    found: str | None = None
    for name, secret in tokens.items():
        # compare_digest on bytes of any length takes time independent of where they differ.
        if hmac.compare_digest(given or b"", secret.encode()) and given:
            found = name
    return found


async def get_rules(request: web.Request) -> web.Response:
    return web.json_response(request.app[RULES].to_dict())


# `?scope=`: this replica (the default), or every replica sharing the Redis catalog.
SCOPES = ("replica", "fleet")
RELOAD_COMMAND, INVALIDATE_COMMAND = "rules.reload", "cache.invalidate"
# Runs an admin command on every live replica: (request, command, arguments) -> the answer.
# Set by proxy/server/fleet.py when Redis links the replicas; unset, scope=fleet answers 409.
FleetCommand = Callable[[web.Request, str, Mapping[str, str]], Awaitable[web.Response]]
FLEET_COMMAND: web.AppKey[FleetCommand] = web.AppKey("fleet_command")


def request_scope(request: web.Request) -> str:
    """The request's `scope` ("replica" when absent); 400 for any other value."""
    scope = request.query.get("scope", SCOPES[0])
    if scope not in SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(SCOPES)}.")
    return scope


async def _on_fleet(request: web.Request, command: str, args: Mapping[str, str]) -> web.Response:
    run = request.app.get(FLEET_COMMAND)
    if run is None:
        raise FleetUnavailable()
    return await run(request, command, args)


async def reload_rules(request: web.Request) -> web.Response:
    if request_scope(request) == "fleet":
        return await _on_fleet(request, RELOAD_COMMAND, {})
    result = request.app[RULES].reload("admin", who=admin_caller(request))
    return reload_answer(request, {**result.to_dict(), "scope": "replica"}, result.result)


RULES_REFUSED = "The rules file is refused; the rules active before keep serving."


def reload_answer(request: web.Request, answer: dict[str, Any], result: str) -> web.Response:
    """A reload's answer: 200, or 422 with the error shape's fields when a file is refused."""
    if result != "refused":
        return web.json_response(answer)
    refused = error_fields(request, "rules_refused", RULES_REFUSED)
    return web.json_response({**refused, **answer}, status=422)


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
    if request_scope(request) == "fleet":
        return await _on_fleet(request, INVALIDATE_COMMAND, {"asset": asset_id} if asset_id else {})
    answer = await invalidate_here(request.app[ADMIN_CATALOG], request.app.get(MISSING), asset_id)
    return web.json_response({**answer, "scope": "replica"})


async def invalidate_here(
    catalog: CachedCatalog, missing: MissingStore | None, asset_id: str | None
) -> dict[str, Any]:
    """Drop `asset_id` (None: every entry) from this replica's catalog cache; a title on the
    missing list is looked up afresh. The answer of POST /admin/cache/invalidate."""
    answer: dict[str, Any] = {"dropped": catalog.invalidate(asset_id)}
    if asset_id is not None and missing is not None and asset_id in missing:
        answer["missing_resolved"] = await _recheck_missing(catalog, missing, asset_id)
    return answer


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
    return query_limit(text, default=MISSING_LIMIT_DEFAULT, maximum=MISSING_LIMIT_MAX)


def query_limit(text: str | None, *, default: int, maximum: int) -> int:
    """The `limit` query parameter: a whole number 1..maximum, `default` when absent."""
    if text is None:
        return default
    digits = text.isascii() and text.isdigit() and len(text) <= len(str(maximum))
    if not digits or not 1 <= int(text) <= maximum:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}.")
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


# /admin/rules/history: the default and largest `limit`.
HISTORY_LIMIT_DEFAULT = 100
HISTORY_LIMIT_MAX = 1000


async def rules_history(request: web.Request) -> web.Response:
    """The rules versions accepted and refused, who asked and the diff, newest first: this
    replica's (`scope=replica`, the default) or, with Redis, every replica's (`scope=fleet`)."""
    limit = query_limit(
        request.query.get("limit"), default=HISTORY_LIMIT_DEFAULT, maximum=HISTORY_LIMIT_MAX
    )
    scope = request_scope(request)
    history = request.app[RULES].history
    note = None
    if scope == "fleet":
        fleet, note = await _fleet_history(history.fleet, limit)
        if fleet is not None:
            return web.json_response({"scope": "fleet", "note": None, "entries": fleet})
    entries = [change.to_dict() for change in history.entries(limit)]
    return web.json_response({"scope": "replica", "note": note, "entries": entries})


async def _fleet_history(
    fleet: FleetHistory | None, limit: int
) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The fleet's newest entries, or None and why this replica's are shown instead."""
    if fleet is None:
        return None, "no Redis configured: this replica's history only"
    try:
        return await fleet.entries(limit), None
    except GatewayError:  # the store logged why
        return None, "Redis does not answer: this replica's history only"


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/rules", require_admin(get_rules))
    app.router.add_post("/admin/rules/reload", require_admin(reload_rules))
    app.router.add_get("/admin/explain", require_admin(explain_decision))
    app.router.add_get("/admin/catalog/{asset_id}", require_admin(catalog_entry))
    app.router.add_post("/admin/cache/invalidate", require_admin(invalidate_cache))
    app.router.add_get("/admin/missing", require_admin(list_missing))
    app.router.add_get("/admin/rules/history", require_admin(rules_history))
