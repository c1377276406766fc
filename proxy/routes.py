"""Thin HTTP handlers: parse the player's request, call the Gateway, build the response."""

from __future__ import annotations

import base64

from aiohttp import web

from proxy.auth import Player, bearer_token
from proxy.config import DRM_SYSTEMS
from proxy.config_providers import KEY_DRM
from proxy.errors import BadRequest, BodyTooLarge, NotFound, UnsupportedMediaType
from proxy.gateway import ASSET_ID, ClientInfo, Gateway
from proxy.guard import PlayerGuard
from proxy.middlewares import INFO

GATEWAY = web.AppKey("gateway", Gateway)
GUARD = web.AppKey("guard", PlayerGuard)
MAX_BODY = web.AppKey("max_body_bytes", int)
CERTIFICATE = web.AppKey("fairplay_certificate", bytes)

# Content types each DRM system's challenge may come with (None: header absent).
_ACCEPTED_TYPES: dict[str, frozenset[str | None]] = {
    "widevine": frozenset({None, "application/octet-stream", "application/x-protobuf"}),
    "playready": frozenset(
        {None, "text/xml", "application/xml", "application/octet-stream", "text/plain"}
    ),
    "clearkey": frozenset({None, "application/json", "text/plain", "application/octet-stream"}),
    "fairplay": frozenset(
        {
            None,
            "application/octet-stream",
            "application/x-www-form-urlencoded",
            "application/json",
            "text/plain",
        }
    ),
}


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read the body, refusing with 413 as soon as it passes `limit` (never read whole)."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def admit(request: web.Request, *, query_token: bool) -> Player:
    """Rate limits, player token and entitlement; key URIs may carry the token as ?token=.

    The per-IP limit keys on the client address the middleware resolved behind trusted
    proxies, never on an address the player wrote."""
    guard = request.app[GUARD]
    info = request[INFO]
    asset_id = request.match_info["asset_id"]
    if ASSET_ID.match(asset_id):  # so refusals name the asset in the access log
        info.asset_id = asset_id
    token = bearer_token(request.headers.get("Authorization"))
    if token is None and query_token:
        token = request.query.get(guard.token_query_param)
    return guard.admit(ip=info.client, token=token, asset_id=asset_id)


def client_info(request: web.Request, player: Player) -> ClientInfo:
    """What the gateway passes on about the player: its address chain and client headers.

    The chain is the client, the trusted proxies and the peer: what a player wrote in
    X-Forwarded-For before its own address never travels upstream."""
    return ClientInfo(
        forwarded_for=request[INFO].forwarded_for,
        traceparent=request.headers.get("traceparent"),
        platform=request.headers.get("X-Client-Platform"),
        app_version=request.headers.get("X-App-Version"),
        user_id=player.user_id,
    )


def _media_type(request: web.Request) -> str | None:
    raw = request.headers.get("Content-Type")
    return raw.split(";", 1)[0].strip().lower() if raw else None


async def license_handler(request: web.Request) -> web.Response:
    drm = request.match_info["drm"]
    if drm not in DRM_SYSTEMS:
        raise NotFound(f"Unknown DRM system; expected one of {', '.join(DRM_SYSTEMS)}.")
    request[INFO].drm = drm
    player = admit(request, query_token=False)
    if _media_type(request) not in _ACCEPTED_TYPES[drm]:
        raise UnsupportedMediaType(f"This content type is not accepted for {drm} requests.")
    challenge = await read_body(request, request.app[MAX_BODY])
    if not challenge:
        raise BadRequest("The license challenge is empty.")
    answer = await request.app[GATEWAY].license(
        request[INFO],
        drm=drm,
        asset_id=request.match_info["asset_id"],
        challenge=challenge,
        content_type=request.headers.get("Content-Type"),
        client=client_info(request, player),
    )
    response = web.Response(body=answer.body, headers=answer.headers)
    response.content_type = answer.content_type.split(";", 1)[0]
    response.headers["Cache-Control"] = "no-store"
    return response


async def key_handler(request: web.Request) -> web.Response:
    request[INFO].drm = KEY_DRM
    player = admit(request, query_token=True)
    key = await request.app[GATEWAY].key(
        request[INFO],
        asset_id=request.match_info["asset_id"],
        key_id=request.match_info["key_id"],
        client=client_info(request, player),
    )
    return web.Response(
        body=key,
        content_type="application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )


async def certificate_handler(request: web.Request) -> web.Response:
    certificate = request.app.get(CERTIFICATE)
    if certificate is None:
        raise NotFound("No FairPlay certificate is configured.")
    if request.query.get("format") == "base64":
        return web.Response(text=base64.b64encode(certificate).decode(), content_type="text/plain")
    return web.Response(body=certificate, content_type="application/x-x509-ca-cert")


def add_public_routes(app: web.Application) -> None:
    app.router.add_post("/v1/license/{drm}/{asset_id}", license_handler)
    app.router.add_get("/v1/keys/{asset_id}/{key_id}", key_handler, allow_head=False)
    app.router.add_get("/v1/certificate/fairplay", certificate_handler, allow_head=False)
