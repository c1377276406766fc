"""castLabs DRMtoday, emulated from castLabs' public documentation and samples.

Routes (all POST, the real service's paths on ``lic.drmtoday.com``):

- ``/license-proxy-widevine/cenc/`` -- Widevine: the CDM's challenge raw in; the answer is
  JSON ``{"license": "<base64>"}``, or the raw license with ``?specConform=true``;
- ``/license-proxy-headerauth/drmtoday/RightsManager.asmx`` -- PlayReady: raw in, raw out;
- ``/license-server-fairplay/`` -- FairPlay: a form ``spc=<url-encoded base64>`` with optional
  ``assetId``, ``variantId`` and ``keyId`` fields; the CKC is answered as base64 text.

Authorization, on every route:

- the upfront token ``x-dt-auth-token``: a JWT (HS256, HS384 or HS512) signed with the
  merchant's shared secret, with ``iat`` and ``jti`` (replay protection), an optional ``exp``,
  and ``optData`` and ``crt`` as JSON-encoded *strings*: ``optData`` holds ``merchant`` (and
  ``userId``, ``sessionId``), ``crt`` the Customer Rights Token: a list of rights (or one
  right), each naming an ``assetId``. The token must be signed with the shared secret, issued
  within the last ``MAX_TOKEN_AGE`` seconds (and not in the future), not expired, never seen
  before, for the configured merchant; the asset requested must be one the crt grants. A
  ``kid`` header names which of several shared secrets signed; with the one secret configured
  here it is not required (the W3C EME tests' DRMtoday tokens carry none);
- ``x-dt-custom-data`` (also read as ``dt-custom-data``, the name castLabs' ExoPlayer sample
  uses): base64 of JSON ``{"userId", "sessionId", "merchant"}``. Without a token DRMtoday would
  ask the merchant's callback; this emulator plays a callback that grants any asset its key
  store knows, named by the ``assetId`` query parameter (FairPlay: form field). With both, the
  merchants must agree.

The content id is the ``assetId`` (crt, query parameter or FairPlay form): the resource in the
key store. Failures are answered DRMtoday's way: the status (400 malformed request, 403
authentication or authorization refused, 403 for an asset it has no keys for) with an empty
body and the headers ``x-dt-resp-code`` (castLabs' five-digit response codes: 02000 general
request error, 03000 general request authentication error, 40000/42000/43000 general
Widevine/PlayReady/FairPlay error) and ``x-dt-error-message`` (a short reason). Successes carry
``x-dt-resp-code: 00000``.

Not emulated: ClearKey and HLS AES-128 keys (no DRMtoday document read says this license
service delivers them), license callbacks, CSL (stream limiting) and output protection.

Sources: castLabs' DRMtoday "License Delivery Authorization" documentation (upfront token in
``x-dt-auth-token``; HS256/HS384/HS512 with a shared secret; claims ``jti``, ``iat``, optional
``exp``, ``optData``, ``crt``; custom data fields); castLabs' sample players
github.com/castlabs/drmtoday-media3-demo (``DrmtodayCallback.java``: paths, ``dt-custom-data``
JSON, Widevine's ``{"license": ...}`` answer, ``assetId`` query parameter) and
github.com/castlabs/drmtoday-avplayer-demo (``DRMtoday.swift``: ``x-dt-custom-data``, the
FairPlay form with a percent-encoded base64 SPC, ``assetId``/``variantId`` fields, the CKC
answered base64); the W3C EME tests' DRMtoday message handler
(github.com/web-platform-tests/wpt, encrypted-media/util/drm-messagehandler.js: ``optData``
and ``crt`` as JSON strings, ``crt`` a list of rights with ``assetId``, a random ``jti``);
``?specConform=true`` as players configure it (lic.drmtoday.com/license-proxy-widevine/cenc/
?specConform=true); the response codes as castLabs' player code lists them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import jwt
from aiohttp import web

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.auth import ReplayCache
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.keys import derivation_id_for
from proxy.dev.emulator.settings import EmulatorSettings

DEMO_SECRETS = {
    "merchant": "demo-merchant",
    "token_secret": "demo-drmtoday-upfront-token-secret-0123456789abcdef0123456789ab",
}

WIDEVINE_PATH = "/license-proxy-widevine/cenc/"
PLAYREADY_PATH = "/license-proxy-headerauth/drmtoday/RightsManager.asmx"
FAIRPLAY_PATH = "/license-server-fairplay/"

TOKEN_HEADER = "x-dt-auth-token"
CUSTOM_DATA_HEADERS = ("x-dt-custom-data", "dt-custom-data")
RESP_CODE_HEADER = "x-dt-resp-code"
ERROR_MESSAGE_HEADER = "x-dt-error-message"
ALGORITHMS = ("HS256", "HS384", "HS512")
MAX_TOKEN_AGE = 600.0  # seconds since iat a token is accepted for
CLOCK_SKEW = 5.0  # seconds an iat may lie in the future
MAX_JTIS = 100_000  # the replay cache's bound

# castLabs' response codes.
OK = "00000"
REQUEST_ERROR = "02000"
AUTH_ERROR = "03000"
DRM_ERRORS = {"widevine": "40000", "playready": "42000", "fairplay": "43000"}

_FORM = "application/x-www-form-urlencoded"
_BINARY = "application/octet-stream"
_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_KEY_ID = re.compile(r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})$")
_FORM_FIELDS = frozenset({"spc", "assetId", "variantId", "keyId"})

Handler = Callable[[web.Request], Awaitable[web.Response]]


class Refused(Exception):
    """A request DRMtoday would not serve: its status, response code and a short reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


def _bad_request(reason: str) -> Refused:
    return Refused(400, REQUEST_ERROR, reason)


def _not_authorized(reason: str) -> Refused:
    return Refused(403, AUTH_ERROR, reason)


@dataclass(frozen=True, slots=True)
class Grant:
    """Who asked and what they may get: the crt's asset ids, or None for the callback path."""

    merchant: str
    user_id: str | None
    asset_ids: frozenset[str] | None
    via: str


# --- the upfront token -------------------------------------------------------------------------


class UpfrontTokenVerifier:
    """Verifies DRMtoday upfront tokens: signature, iat freshness, exp, replayed jti, claims."""

    def __init__(self, *, max_entries: int = MAX_JTIS) -> None:
        self.replay_cache = ReplayCache(max_entries)

    def verify(self, token: str, secret: bytes, merchant: str, now: float) -> Grant:
        """The grant a valid token carries; Refused (403) for every way it can be wrong."""
        claims = _decode(token, secret, now)
        opt_data = _json_claim(claims, "optData")
        if not isinstance(opt_data, dict) or opt_data.get("merchant") != merchant:
            raise _not_authorized("unknown_merchant")
        user_id = opt_data.get("userId")
        user = user_id if isinstance(user_id, str) else None
        grant = Grant(merchant, user, _rights(claims), "token")
        iat = float(claims["iat"])
        if not self.replay_cache.add(str(claims["jti"]), iat + MAX_TOKEN_AGE + CLOCK_SKEW, now):
            raise _not_authorized("replayed_token")
        return grant


def _decode(token: str, secret: bytes, now: float) -> dict[str, Any]:
    """The claims of a token signed with `secret`, fresh and well-formed."""
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError:
        raise _not_authorized("malformed_token") from None
    if algorithm not in ALGORITHMS:
        raise _not_authorized("unsupported_algorithm")
    options: Any = {"require": ["iat", "jti", "optData", "crt"], "verify_iat": False}
    try:
        # The demo secret is shorter than SHA-512's output; that must not become a 500.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(
                token, secret, algorithms=[algorithm], options=options, leeway=CLOCK_SKEW
            )
    except jwt.InvalidSignatureError:
        raise _not_authorized("invalid_signature") from None
    except jwt.ExpiredSignatureError:
        raise _not_authorized("token_expired") from None
    except jwt.InvalidTokenError:
        raise _not_authorized("invalid_token") from None
    _check_fresh(claims, now)
    return claims


def _check_fresh(claims: Mapping[str, Any], now: float) -> None:
    iat, jti = claims["iat"], claims["jti"]
    if not isinstance(iat, int) or isinstance(iat, bool):
        raise _not_authorized("invalid_iat")
    if iat > now + CLOCK_SKEW:
        raise _not_authorized("token_from_the_future")
    if now - iat > MAX_TOKEN_AGE:
        raise _not_authorized("token_too_old")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise _not_authorized("invalid_jti")


def _json_claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim that DRMtoday wants as a JSON-encoded string, decoded."""
    raw = claims[name]
    if not isinstance(raw, str):
        raise _not_authorized(f"{name}_not_a_json_string")
    try:
        return json.loads(raw)
    except ValueError:
        raise _not_authorized(f"{name}_not_json") from None


def _rights(claims: Mapping[str, Any]) -> frozenset[str]:
    """The asset ids the crt grants: a list of rights, or (as castLabs' newer pages write it)
    one right; each must name its assetId."""
    crt = _json_claim(claims, "crt")
    rights = crt if isinstance(crt, list) else [crt]
    assets = [r.get("assetId") if isinstance(r, dict) else None for r in rights]
    if not assets or not all(isinstance(a, str) and a for a in assets):
        raise _not_authorized("crt_without_asset")
    return frozenset(str(a) for a in assets)


# --- custom data ---------------------------------------------------------------------------------


def _custom_data(request: web.Request) -> dict[str, Any] | None:
    """The decoded custom data header, None if absent; 400 when it is not base64 JSON."""
    values = [v for name in CUSTOM_DATA_HEADERS for v in request.headers.getall(name, [])]
    if not values:
        return None
    if len(values) != 1:
        raise _bad_request("custom_data_repeated")
    try:
        data = json.loads(base64.b64decode(values[0].strip(), validate=True))
    except (binascii.Error, ValueError):
        raise _bad_request("custom_data_not_base64_json") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise _bad_request("custom_data_not_an_object_of_strings")
    return data


def _callback_grant(data: Mapping[str, Any], merchant: str) -> Grant:
    """Custom data alone: DRMtoday's callback path, here a callback that grants known assets."""
    if data.get("merchant") != merchant:
        raise _not_authorized("unknown_merchant")
    if not data.get("userId") or not data.get("sessionId"):
        raise _not_authorized("custom_data_without_user_or_session")
    return Grant(merchant, str(data["userId"]), None, "custom_data")


# --- the routes --------------------------------------------------------------------------------


@dataclass
class DrmTodayState:
    """The emulator's own state: the upfront token verifier with its replay cache."""

    verifier: UpfrontTokenVerifier


DRMTODAY = web.AppKey("drmtoday_state", DrmTodayState)


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """Register DRMtoday's three license paths."""
    _secrets(settings)  # refuse an unusable merchant or secret at start
    app[DRMTODAY] = DrmTodayState(UpfrontTokenVerifier())
    app[STATE].replay_caches.append(app[DRMTODAY].verifier.replay_cache)
    app.router.add_post(WIDEVINE_PATH, _answering(_widevine), name="license:widevine")
    app.router.add_post(PLAYREADY_PATH, _answering(_playready), name="license:playready")
    app.router.add_post(FAIRPLAY_PATH, _answering(_fairplay), name="license:fairplay")


def _secrets(settings: EmulatorSettings) -> tuple[str, bytes]:
    """(merchant, shared secret bytes); the secret is used as its UTF-8 bytes."""
    values = {**DEMO_SECRETS, **settings.secrets}
    merchant, secret = values["merchant"], values["token_secret"]
    if not merchant or not secret:
        raise ValueError("drmtoday needs a non-empty merchant and token_secret")
    return merchant, secret.encode()


def _answering(handler: Handler) -> Handler:
    """A refusal becomes DRMtoday's error answer (status and x-dt headers, empty body)."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            response = await handler(request)
        except Refused as refused:
            headers = {RESP_CODE_HEADER: refused.code, ERROR_MESSAGE_HEADER: refused.reason}
            return web.Response(status=refused.status, headers=headers)
        response.headers[RESP_CODE_HEADER] = OK
        return response

    return wrapped


async def _widevine(request: web.Request) -> web.Response:
    challenge = await _authorized_challenge(request, "widevine", request.query.get("assetId"))
    license_ = _synthetic(request, "widevine", challenge)
    if request.query.get("specConform", "").lower() == "true":
        return web.Response(body=license_, content_type=_BINARY)
    body = json.dumps({"license": base64.b64encode(license_).decode("ascii")})
    return web.Response(text=body, content_type="application/json")


async def _playready(request: web.Request) -> web.Response:
    challenge = await _authorized_challenge(request, "playready", request.query.get("assetId"))
    return web.Response(body=_synthetic(request, "playready", challenge), content_type=_BINARY)


async def _fairplay(request: web.Request) -> web.Response:
    fields = _fairplay_form(await request.read(), request.headers.get("Content-Type"))
    spc = _spc(fields["spc"])
    _authorize(request, "fairplay", fields.get("assetId"))
    request[CHALLENGE] = spc
    ckc = base64.b64encode(_synthetic(request, "fairplay", spc))
    return web.Response(body=ckc, content_type="text/plain")


async def _authorized_challenge(request: web.Request, drm: str, asked: str | None) -> bytes:
    challenge = await request.read()
    if not challenge:
        raise _bad_request("empty_challenge")
    _authorize(request, drm, asked)
    request[CHALLENGE] = challenge
    return challenge


def _authorize(request: web.Request, drm: str, asked: str | None) -> None:
    """Check who asks and for which asset; record what was verified (never the secret)."""
    merchant, secret = _secrets(request.app[STATE].settings)
    grant = _grant(request, merchant, secret)
    asset = _asset(grant, asked)
    request[SEEN] = (drm, asset)
    try:
        derivation_id_for(request.app[STATE].settings.resources, asset)
    except EmulatorError:
        raise Refused(403, DRM_ERRORS[drm], "unknown_asset") from None
    request[VERIFIED] = {
        "merchant": grant.merchant,
        "userId": grant.user_id,
        "assetId": asset,
        "auth": grant.via,
    }


def _grant(request: web.Request, merchant: str, secret: bytes) -> Grant:
    data = _custom_data(request)
    token = request.headers.get(TOKEN_HEADER, "").strip()
    if not token:
        if data is None:
            raise _not_authorized("no_token_and_no_custom_data")
        return _callback_grant(data, merchant)
    verifier = request.app[DRMTODAY].verifier
    grant = verifier.verify(token, secret, merchant, time.time())
    if data is not None and data.get("merchant") != grant.merchant:
        raise _not_authorized("custom_data_merchant_differs")
    return grant


def _asset(grant: Grant, asked: str | None) -> str:
    """The asset served: the one asked for (which the crt must grant), else the crt's only."""
    if asked is not None:
        if not asked:
            raise _bad_request("empty_asset_id")
        if grant.asset_ids is not None and asked not in grant.asset_ids:
            raise _not_authorized("asset_not_granted")
        return asked
    if grant.asset_ids is None:
        raise _bad_request("no_asset_id")  # the emulated callback needs the asset named
    if len(grant.asset_ids) != 1:
        raise _bad_request("ambiguous_asset")
    return next(iter(grant.asset_ids))


def _fairplay_form(body: bytes, content_type: str | None) -> dict[str, str]:
    """The FairPlay form's fields (each at most once, `spc` required)."""
    if (content_type or "").split(";", 1)[0].strip().lower() != _FORM:
        raise _bad_request("not_a_form")
    try:
        parsed = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise _bad_request("malformed_form") from None
    if any(len(v) != 1 for v in parsed.values()) or "spc" not in parsed:
        raise _bad_request("form_needs_one_spc")
    if set(parsed) - _FORM_FIELDS:
        raise _bad_request("unknown_form_field")
    fields = {name: values[0] for name, values in parsed.items()}
    if "keyId" in fields and not _KEY_ID.match(fields["keyId"]):
        raise _bad_request("malformed_key_id")
    return fields


def _spc(text: str) -> bytes:
    """The SPC of the form's `spc` field (base64, already percent-decoded)."""
    try:
        spc = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_request("spc_not_base64") from None
    if not spc.startswith(_SPC_PREFIXES):
        raise _bad_request("not_an_spc")
    return spc


def _synthetic(request: web.Request, drm: str, challenge: bytes) -> bytes:
    return synthetic_license(request.app[STATE].settings.name, drm, challenge)
