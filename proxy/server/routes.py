"""Thin HTTP handlers: parse the player's request, call the Gateway, build the response."""

from __future__ import annotations

import base64
from functools import partial

from aiohttp import web

from proxy.access.cors import PROVIDER_HEADER
from proxy.access.guard import PlayerGuard
from proxy.access.player_tokens import Player, bearer_token
from proxy.domain import KEY_DRM, LICENSE_DRMS, AssetId, asset_id_or_none, parse_key_id
from proxy.errors import BadRequest, BodyTooLarge, NotFound, UnsupportedMediaType
from proxy.gateway import Gateway
from proxy.server.middleware import INFO
from proxy.upstream.base import ClientInfo

GATEWAY = web.AppKey("gateway", Gateway)
GUARD = web.AppKey("guard", PlayerGuard)
MAX_BODY = web.AppKey("max_body_bytes", int)
CERTIFICATE = web.AppKey("fairplay_certificate", bytes)
CERTIFICATE_FORMATS = ("der", "base64")  # ?format= on the certificate route; der by default

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


def admit(request: web.Request, *, query_token: bool) -> tuple[Player, AssetId]:
    """Rate limits, player token and entitlement; key URIs may carry the token as ?token=.

    The path's asset id is parsed here, once; an invalid one is refused by the guard after the
    cheaper checks, and a valid one names the asset in the access log even when refused. The
    per-IP limit keys on the client address the middleware resolved behind trusted proxies,
    never on an address the player wrote."""
    guard = request.app[GUARD]
    info = request[INFO]
    asset_id = info.asset_id = asset_id_or_none(request.match_info["asset_id"])
    token = bearer_token(request.headers.get("Authorization"))
    if token is None and query_token:
        token = request.query.get(guard.token_query_param)
    player = guard.admit(ip=info.client, token=token, asset_id=asset_id)
    assert asset_id is not None  # the guard refuses an invalid one
    return player, asset_id


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


def _unaccepted_type_message(drm: str) -> str:
    """The 415 message: which content types this DRM system's challenge may come with."""
    accepted = _ACCEPTED_TYPES[drm]
    listed = ", ".join(sorted(t for t in accepted if t is not None))
    absent = " (or no Content-Type)" if None in accepted else ""
    return f"This content type is not accepted for {drm} requests; send {listed}{absent}."


async def license_handler(request: web.Request) -> web.Response:
    drm = request.match_info["drm"]
    if drm not in LICENSE_DRMS:
        raise NotFound(f"Unknown DRM system; expected one of {', '.join(LICENSE_DRMS)}.")
    request[INFO].drm = drm
    player, asset_id = admit(request, query_token=False)
    if _media_type(request) not in _ACCEPTED_TYPES[drm]:
        raise UnsupportedMediaType(_unaccepted_type_message(drm))
    challenge = await read_body(request, request.app[MAX_BODY])
    if not challenge:
        raise BadRequest("The license challenge is empty.")
    gateway, content_type = request.app[GATEWAY], request.headers.get("Content-Type")
    client = client_info(request, player)
    # FairPlay bodies are rewritten for the provider; the other systems' go byte-exact.
    send = gateway.fairplay if drm == "fairplay" else partial(gateway.license, drm=drm)
    answer = await send(
        request[INFO], asset_id=asset_id, body=challenge, content_type=content_type, client=client
    )
    response = web.Response(body=answer.body, headers=answer.headers)
    response.content_type = answer.content_type.split(";", 1)[0]
    response.headers["Cache-Control"] = "no-store"
    if gateway.provider_header:
        _name_provider(response, request)
    return response


async def key_handler(request: web.Request) -> web.Response:
    request[INFO].drm = KEY_DRM
    player, asset_id = admit(request, query_token=True)
    key_id = parse_key_id(request.match_info["key_id"])
    gateway = request.app[GATEWAY]
    key = await gateway.key(
        request[INFO],
        asset_id=asset_id,
        key_id=key_id,
        client=client_info(request, player),
    )
    response = web.Response(
        body=key,
        content_type="application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )
    if gateway.provider_header:
        _name_provider(response, request)
    return response


def _name_provider(response: web.Response, request: web.Request) -> None:
    """Name the provider whose answer this is (after a fallback: the fallback), replacing
    any header of that name the provider itself sent. Only answers carry it: an error names
    no provider (its request id finds the provider in the access log)."""
    response.headers[PROVIDER_HEADER] = request[INFO].provider


async def certificate_handler(request: web.Request) -> web.Response:
    certificate = request.app.get(CERTIFICATE)
    if certificate is None:
        raise NotFound("No FairPlay certificate is configured.")
    fmt = request.query.get("format", "der")
    if fmt not in CERTIFICATE_FORMATS:
        raise BadRequest(f"format must be one of {', '.join(CERTIFICATE_FORMATS)}.")
    if fmt == "base64":
        return web.Response(text=base64.b64encode(certificate).decode(), content_type="text/plain")
    return web.Response(body=certificate, content_type="application/x-x509-ca-cert")


def add_public_routes(app: web.Application) -> None:
    """License, key and certificate routes. HEAD runs the GET handler, so a HEAD on a key
    is authenticated and fetched like a GET; aiohttp sends the headers without the body."""
    app.router.add_post("/v1/license/{drm}/{asset_id}", license_handler)
    app.router.add_get("/v1/keys/{asset_id}/{key_id}", key_handler)
    app.router.add_get("/v1/certificate/fairplay", certificate_handler)
