"""Verimatrix Multi-DRM (Streamkeeper), emulated from Verimatrix's public documentation.

Routes (the service's own paths): ``POST /widevine``, ``POST /playready``, ``POST /fairplay``.
No ClearKey or HLS AES-128 route: the Multi-DRM documentation names no such service.

Every request carries a JWT in the ``Authorization`` header. Public client code sends the bare
token; a ``Bearer`` prefix is accepted too. What is checked, and where it is documented
(docs.verimatrix.com):

- "authorization-overview": ``kid`` in the JWT header (the service access key; unknown:
  MDRM-504); ``iat`` required, not in the future; ``exp`` and ``nbf`` optional; a Multi-DRM
  token lives at most ``iat`` + 120 s; ±5 s of clock skew; ``jti``, ``iss`` and ``ver``
  (numeric) required. The algorithm is left to "your Verimatrix representative": an HMAC
  secret verifies HS256/HS384/HS512, a PEM public key ES256 (what public samples use).
- "drm-application-specific-token-authentication": ``aud`` must match the key's purpose
  (``urn:verimatrix:multidrm`` in public samples, DEMO_SECRETS ``audience``); ``sub`` is the
  content id used when the keys were requested, i.e. the resource in the key store.
- "drm-specific-integration": FairPlay is JSON both ways, ``{"spc": base64}`` sent as
  ``application/json`` and ``{"ckc": base64}`` answered; RFC 4648 section 4 or 5 alphabet.
- "client-status-codes-authorization", "-fairplay", "-verimatrix-key-manager": the MDRM error
  codes and statuses used below. The documents show no error body: failures are answered as
  ``{"errorCode": "MDRM-508", "message": ...}``, the documented code and message.

Choices where the documents leave room (each also in the report): a token whose ``exp`` lies
more than 120 s after ``iat`` is refused (the service caps it instead: a gateway must never
rely on that); ``ver`` must be 1; a replayed ``jti`` is refused as MDRM-505; an empty
Widevine/PlayReady challenge gets the service's generic code (MDRM-700 / MDRM-1100) with 400.
Widevine and PlayReady answers are synthetic licenses (``fairplay.synthetic_license``).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.auth import ReplayCache
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import BINARY_CONTENT_TYPE, media_type, synthetic_license
from proxy.dev.emulator.keys import derivation_id_for
from proxy.dev.emulator.settings import EmulatorSettings

DEMO_SECRETS: Mapping[str, str] = {
    "key_id": "demo-kid",  # the service access key's id, the JWT header's kid
    "signing_secret": "demo-verimatrix-signing-secret-0123456789ab",  # HMAC bytes, or a PEM
    "issuer": "drm-gateway",
    "audience": "urn:verimatrix:multidrm",
}
DRMS = ("widevine", "playready", "fairplay")
MAX_TOKEN_AGE = 120  # seconds after iat, for Multi-DRM license requests
CLOCK_SKEW = 5
SUPPORTED_VERSIONS = (1,)
MAX_REPLAY_ENTRIES = 100_000
_HMAC_ALGORITHMS = ["HS256", "HS384", "HS512"]
# pyjwt's own claim checks, off: each is done below with the documented skew and MDRM code.
_CHECKED_BY_HAND = ("exp", "nbf", "iat", "aud", "iss", "sub", "jti")
_JSON = "application/json"
_BINARY_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")

REPLAY = web.AppKey("verimatrix_replay", ReplayCache)
Handler = Callable[[web.Request], Awaitable[web.Response]]


@dataclass(frozen=True, slots=True)
class Verified:
    """The checked facts of a license token (never the token or the secret)."""

    kid: str
    iss: str
    sub: str


def _mdrm(status: int, code: str, message: str) -> EmulatorError:
    return EmulatorError(status, code, message)


# Per service: (missing token, malformed token, unknown content, generic) codes. FairPlay has
# its own token codes; Widevine and PlayReady use the authorization service's (MDRM-5xx).
_SERVICE_CODES: Mapping[str, tuple[str, str, str, str]] = {
    "widevine": ("MDRM-501", "MDRM-502", "MDRM-717", "MDRM-700"),
    "playready": ("MDRM-501", "MDRM-502", "MDRM-1110", "MDRM-1100"),
    "fairplay": ("MDRM-1001", "MDRM-1002", "MDRM-1011", "MDRM-1000"),
}


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """The three license routes; the replay cache lives with the app."""
    app[REPLAY] = ReplayCache(MAX_REPLAY_ENTRIES)
    app[STATE].replay_caches.append(app[REPLAY])
    for drm in DRMS:
        app.router.add_post(f"/{drm}", _license_handler(drm), name=f"license:{drm}")


def _license_handler(drm: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        """``POST /<drm>``: verify the token and the subject, then answer the challenge."""
        request[SEEN] = (drm, None)
        settings = request.app[STATE].settings
        secrets = {**DEMO_SECRETS, **settings.secrets}  # settings built without them: the demo's
        facts = verify_token(request.headers, secrets, request.app[REPLAY], drm)
        request[SEEN] = (drm, facts.sub)
        request[VERIFIED] = {
            "kid": facts.kid,
            "iss": facts.iss,
            "sub": facts.sub,
            "jti_present": True,  # the jti itself is not recorded
        }
        _check_subject(settings, facts.sub, drm)
        body = await request.read()
        if drm == "fairplay":
            return _fairplay_answer(request, settings, body)
        if not body:
            raise _mdrm(400, _SERVICE_CODES[drm][3], "The license request body is empty.")
        request[CHALLENGE] = body
        license_ = synthetic_license(settings.name, drm, body)
        return web.Response(body=license_, content_type=BINARY_CONTENT_TYPE)

    return handle


def _check_subject(settings: EmulatorSettings, sub: str, drm: str) -> None:
    """The key manager knows no content under this subject: the service's own 404."""
    try:
        derivation_id_for(settings.resources, sub)
    except EmulatorError:
        code = _SERVICE_CODES[drm][2]
        raise _mdrm(404, code, "Requested content encryption key does not exist") from None


# --- the token ------------------------------------------------------------------------------


def verify_token(
    headers: Mapping[str, str], secrets: Mapping[str, str], replay: ReplayCache, drm: str
) -> Verified:
    """Check the Authorization token as the documents describe; EmulatorError if refused."""
    token = _token_from(headers, drm)
    kid = _kid_of(token, secrets, drm)
    claims = _decode(token, secrets["signing_secret"], drm)
    now = time.time()
    iat = _check_times(claims, now)
    _check_identity(claims, secrets)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise _invalid("The token has no jti.")
    expires = min(iat + MAX_TOKEN_AGE, float(claims.get("exp", iat + MAX_TOKEN_AGE)))
    if not replay.add(jti, expires + CLOCK_SKEW, now):
        raise _invalid("The token's jti was already used.")
    return Verified(kid=kid, iss=claims["iss"], sub=claims["sub"])


def _token_from(headers: Mapping[str, str], drm: str) -> str:
    value = headers.get("Authorization", "").strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value:
        raise _mdrm(401, _SERVICE_CODES[drm][0], "Authorization token is required")
    return value


def _malformed(drm: str) -> EmulatorError:
    return _mdrm(401, _SERVICE_CODES[drm][1], "Failed to decode JSON web token; malformed")


def _invalid(why: str) -> EmulatorError:
    return _mdrm(401, "MDRM-505", f"JSON web token is invalid: {why}")


def _kid_of(token: str, secrets: Mapping[str, str], drm: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise _malformed(drm) from None
    kid = header.get("kid")
    if not isinstance(kid, str) or kid != secrets["key_id"]:
        raise _mdrm(401, "MDRM-504", "Failed to resolve JSON web key")
    return kid


def _decode(token: str, secret: str, drm: str) -> dict[str, Any]:
    """The verified claims; every time and identity check is done by hand afterwards."""
    key, algorithms = _verification_key(secret)
    options: Any = {f"verify_{claim}": False for claim in _CHECKED_BY_HAND}
    try:
        # A short HMAC secret is the operator's choice; pyjwt's warning must not become a 500.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            claims: dict[str, Any] = jwt.decode(token, key, algorithms=algorithms, options=options)
    except jwt.DecodeError as exc:
        if isinstance(exc, jwt.InvalidSignatureError):
            raise _invalid("the signature does not verify.") from None
        raise _malformed(drm) from None
    except jwt.InvalidTokenError:  # e.g. an algorithm this key may not be used with
        raise _invalid("the algorithm is not allowed for this key.") from None
    return claims


def _verification_key(secret: str) -> tuple[bytes | ec.EllipticCurvePublicKey, list[str]]:
    """An HMAC secret verifies HS*, a PEM public key ES256: never one as the other."""
    if not secret.lstrip().startswith("-----BEGIN"):
        return secret.encode(), _HMAC_ALGORITHMS
    public = load_pem_public_key(secret.encode())
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValueError("the Verimatrix signing key must be an EC P-256 public key")
    return public, ["ES256"]


def _number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (true and false included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _check_times(claims: Mapping[str, Any], now: float) -> float:
    """iat required and not ahead; nbf, exp optional; 120 s at most from iat. Returns iat."""
    iat = _number(claims.get("iat"))
    if iat is None:
        raise _mdrm(401, "MDRM-509", "JSON web token is missing issued at (iat) claim")
    if iat > now + CLOCK_SKEW:
        raise _mdrm(401, "MDRM-510", "JSON web token is inactive before its iat timestamp")
    nbf = _number(claims.get("nbf", iat))
    if nbf is None or nbf > now + CLOCK_SKEW:
        raise _mdrm(401, "MDRM-511", "JSON web token is inactive before its nbf timestamp")
    exp = _number(claims.get("exp", iat + MAX_TOKEN_AGE))
    if exp is None or exp - iat > MAX_TOKEN_AGE:
        raise _invalid(f"exp must be a number at most {MAX_TOKEN_AGE} s after iat.")
    if now > min(exp, iat + MAX_TOKEN_AGE) + CLOCK_SKEW:
        raise _mdrm(401, "MDRM-508", "JSON web token is expired")
    return iat


def _check_identity(claims: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
    """aud (403 when wrong), then iss, ver and sub."""
    aud = claims.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if secrets["audience"] not in audiences:
        raise _mdrm(403, "MDRM-503", "Recipient does not allow access for specified audience")
    if claims.get("iss") != secrets["issuer"]:
        raise _invalid("iss is not the issuer registered with this key.")
    if _number(claims.get("ver")) not in SUPPORTED_VERSIONS:
        raise _invalid("ver is not a supported version number.")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise _invalid("sub (the content id) is missing.")


# --- FairPlay -------------------------------------------------------------------------------


def _fairplay_answer(request: web.Request, settings: EmulatorSettings, body: bytes) -> web.Response:
    """``{"spc": base64}`` in (application/json), ``{"ckc": base64}`` out."""
    spc = decode_spc_json(body, request.headers.get("Content-Type"))
    request[CHALLENGE] = spc
    ckc = synthetic_license(settings.name, "fairplay", spc)
    answer = json.dumps({"ckc": base64.b64encode(ckc).decode("ascii")}).encode()
    return web.Response(body=answer, content_type=_JSON)


def decode_spc_json(body: bytes, content_type: str | None) -> bytes:
    """The SPC of a FairPlay request; MDRM-1004 when absent, MDRM-1007 when unparsable."""
    unparsable = _mdrm(400, "MDRM-1007", "Failed to parse request payload")
    if media_type(content_type) != _JSON:
        raise unparsable
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise unparsable from None
    if not isinstance(document, dict):
        raise unparsable
    spc_text = document.get("spc")
    if spc_text is None or spc_text == "":
        raise _mdrm(400, "MDRM-1004", "SPC must be present in request")
    spc = _b64decode_either(spc_text) if isinstance(spc_text, str) else None
    if spc is None or not spc.startswith(_BINARY_SPC_PREFIXES):
        raise unparsable
    return spc


def _b64decode_either(text: str) -> bytes | None:
    """RFC 4648 base64, standard (section 4) or URL-safe (section 5) alphabet; None if not."""
    if not text.isascii():
        return None
    standard = text.replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
