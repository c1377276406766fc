"""The `drmtoday` provider kind: castLabs DRMtoday.

Auth (config `drmtoday.auth`): an upfront authorization token in `x-dt-auth-token` (the
default), the `x-dt-custom-data` header, or both.

- Upfront token: a JWT signed with the merchant's shared secret (HS256/HS384/HS512; HS512
  by default) whose claims are `crt` (the Customer Rights Token, a JSON *string*: a list
  with one entry `{"assetId": <drmResourceId>, "profile": {"purchase": {}}, "storeLicense":
  false, ...}`), `optData` (a JSON *string*: `{"merchant", "userId", "sessionId"}`), `iat`,
  `exp` and a unique `jti`; header `{"alg", "typ": "JWT"}` plus `kid` when configured.
  Sources: castLabs' "License Delivery Authorization" page
  (fe.drmtoday.com/documentation/integration/license_delivery_authorization.html#upfront-
  authorization-token: `x-dt-auth-token`, claims jti/iat/exp/optData/crt, "optData and crt
  have to be serialized JSON", HS256/HS384/HS512, `kid` names the shared secret for
  rotation), castLabs' RTC DRM SDK README (the HS512 sample with `crt` as a list of
  `{assetId, profile: {purchase: {}}}`), and production tokens seen in public player code
  (HS512, `crt` entries with assetId, variantId, profile/purchase, storeLicense; `optData`
  with userId, merchant, sessionId).
- Custom data: base64 of the JSON `{"userId", "sessionId", "merchant"}` (the same page's
  "Custom Data Header" section; castLabs' iOS/Swift and dash.js integrations).

`userId` is the player's user, else `default_user_id`; `sessionId` is the gateway's request
id (unique per request, nothing secret). The asset is the catalog's drmResourceId, so the
kind needs one.

Answers: Widevine (`/license-proxy-widevine/cenc/`) wraps the license in JSON
`{"license": <base64>, "status": "OK", ...}` unless the URL asked `?specConform=true`, then
it is the raw license (Bitmovin's DRMtoday guide, dash.js `DRMToday.js`); the answer is
unwrapped whichever came back, told apart by its first byte. PlayReady is raw SOAP both
ways. FairPlay (`/license-server-fairplay/`) takes the form `spc=<percent-encoded base64>&
assetId=<drmResourceId>[&variantId=...]` and answers the CKC as base64 text (castLabs'
FairPlay samples).

Errors: DRMtoday answers a refused request with an HTTP error status and its own code in
the `x-dt-resp-code` header (e.g. 3000 "General Request Authentication Error", 40001
"Widevine Device Certificate Revocation"; the code table of castLabs' player); codes become
the bounded `provider_error` label, 3000 maps to "our credentials were refused". A JSON
Widevine envelope whose `status` is not OK is an error in a 200. The `x-dt-*` response
headers never reach players.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import REQUIRED, ConfigReader
from proxy.errors import MissingResourceId, UpstreamAuthFailed, UpstreamBadResponse
from proxy.observability import metrics
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
)
from proxy.upstream.fairplay import FairPlayFormats, encode_spc
from proxy.upstream.signer import decode_hmac_secret, segment_bytes, segment_json
from proxy.upstream.transport import ProviderFault, ProviderTransport

AUTH_MODES = ("token", "custom_data", "both")
HASHES: Mapping[str, Callable[..., Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
DEFAULT_CRT: Mapping[str, Any] = {"profile": {"purchase": {}}, "storeLicense": False}
MIN_SECRET_BYTES = 32  # "We recommend using a secret with 32 bytes" (castLabs)
AUTH_TOKEN_HEADER = "x-dt-auth-token"
CUSTOM_DATA_HEADER = "x-dt-custom-data"
RESP_CODE_HEADER = "x-dt-resp-code"
BINARY = "application/octet-stream"
# DRMtoday's response codes (castLabs player's table); anything else counts as "other".
KNOWN_ERRORS = frozenset(
    {
        "1000", "2000", "3000", "10001", "30000", "40000", "40001", "40002", "41000",
        "42000", "43000", "44000", "44001", "45000", "45001", "60000", "60001", "60100",
        "70000", "70001", "80000", "80001", "90000", "90001", "widevine_status",
    }
)  # fmt: skip
_AUTH_REFUSED = "3000"  # General Request Authentication Error: our token or custom data
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_SECTION = {"merchant", "auth", "token", "default_user_id", "crt", "variant_id"}
_TOKEN_SECTION = {"secret", "algorithm", "kid", "lifetime_seconds"}


# -- options -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpfrontTokenSettings:
    """How the upfront token is signed: the shared secret (bytes), algorithm, optional kid."""

    secret: bytes = field(repr=False)
    algorithm: str = "HS512"
    kid: str | None = None
    lifetime_seconds: int = 60


@dataclass(frozen=True, slots=True)
class DrmTodayOptions:
    """The `drmtoday` section of one provider."""

    merchant: str
    auth: str = "token"
    token: UpfrontTokenSettings | None = None
    default_user_id: str = "anonymous"
    crt: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_CRT))
    variant_id: str | None = None

    @property
    def sends_custom_data(self) -> bool:
        return self.auth in ("custom_data", "both")


def parse_options(reader: ConfigReader, raw: Any, path: str) -> DrmTodayOptions | None:
    """The kind's config section, every problem reported to `reader`."""
    if raw is None:
        reader.problem(path, "is missing (kind 'drmtoday' needs at least its merchant)")
        return None
    before = len(reader.problems)
    section = reader.mapping(raw, path, _SECTION)
    merchant = _text(reader, section, "merchant", path, REQUIRED)
    auth = reader.value(section, "auth", path, str, "token")
    if auth not in AUTH_MODES:
        reader.problem(f"{path}.auth", f"must be one of {', '.join(AUTH_MODES)}")
    token = _token_section(reader, section, path, auth)
    options = DrmTodayOptions(
        merchant=merchant or "",
        auth=auth,
        token=token,
        default_user_id=_text(reader, section, "default_user_id", path, "anonymous") or "",
        crt=_crt(reader, section.get("crt"), f"{path}.crt"),
        variant_id=_text(reader, section, "variant_id", path, None),
    )
    return options if len(reader.problems) == before else None


def _text(
    reader: ConfigReader, section: dict[str, Any], key: str, path: str, default: Any
) -> str | None:
    value = reader.value(section, key, path, str, default)
    if isinstance(value, str) and not value.strip():
        reader.problem(f"{path}.{key}", "must not be empty")
    return value if isinstance(value, str) else None


def _token_section(
    reader: ConfigReader, section: dict[str, Any], path: str, auth: Any
) -> UpfrontTokenSettings | None:
    where = f"{path}.token"
    if auth not in ("token", "both"):
        if "token" in section:
            reader.problem(where, "is used only with auth 'token' or 'both'")
        return None
    if "token" not in section:
        reader.problem(where, "is missing, and has no default (auth sends an upfront token)")
        return None
    raw = reader.mapping(section["token"], where, _TOKEN_SECTION)
    algorithm = reader.value(raw, "algorithm", where, str, "HS512")
    if algorithm not in HASHES:
        reader.problem(f"{where}.algorithm", f"must be one of {', '.join(HASHES)}")
    kid = _text(reader, raw, "kid", where, None)
    lifetime = reader.positive(raw, "lifetime_seconds", where, int, 60)
    if "secret" not in raw:
        reader.problem(f"{where}.secret", "is missing, and has no default")
        return None
    secret = _secret_bytes(reader, raw["secret"], f"{where}.secret", algorithm)
    if secret is None or algorithm not in HASHES:
        return None
    return UpfrontTokenSettings(secret, algorithm, kid, lifetime)


def _secret_bytes(reader: ConfigReader, raw: Any, where: str, algorithm: Any) -> bytes | None:
    """The shared secret: `hex:<hex>` (as DRMtoday's dashboard shows it), `base64:<...>`,
    or the text itself as UTF-8; at least the 32 bytes DRMtoday recommends for any algorithm
    (RFC 7518 asks the hash's size, 64 bytes for HS512, which DRMtoday's own secrets lack)."""
    value = reader.secret(raw, where)
    if value is None:
        return None
    try:
        secret = bytes.fromhex(value[4:]) if value.startswith("hex:") else decode_hmac_secret(value)
    except ValueError:
        reader.problem(where, "is not valid hex after 'hex:' or base64 after 'base64:'")
        return None
    if len(secret) < MIN_SECRET_BYTES:
        reader.problem(where, f"is {len(secret)} bytes; at least {MIN_SECRET_BYTES} are needed")
        return None
    return secret


def _crt(reader: ConfigReader, raw: Any, where: str) -> dict[str, Any]:
    """Extra Customer Rights Token fields over the defaults; the gateway sets `assetId`."""
    fields = dict(DEFAULT_CRT)
    extra = reader.mapping(raw, where, set(raw) if isinstance(raw, dict) else set())
    if "assetId" in extra:
        reader.problem(f"{where}.assetId", "is set by the gateway (the asset's drmResourceId)")
    fields.update((str(k), v) for k, v in extra.items() if k != "assetId")
    try:
        _JSON.encode(fields)
    except (TypeError, ValueError):
        reader.problem(where, "must hold only JSON values (strings, numbers, booleans, lists)")
    return fields


# -- request building (pure) ---------------------------------------------------------------


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _inner(text: str) -> str:
    """A JSON-escaped string without its quotes, to splice into a precomputed JSON string."""
    return _JSON.encode(text)[1:-1]


class _HmacKey:
    """HMAC (RFC 2104) with the key schedule done once: per message, two hash copies.
    hmac.HMAC.copy() costs a third more, in Python code, on every token."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes, new_hash: Callable[..., Any]) -> None:
        inner, outer = new_hash(), new_hash()
        block = inner.block_size
        key = (new_hash(key).digest() if len(key) > block else key).ljust(block, b"\0")
        inner.update(bytes(b ^ 0x36 for b in key))
        outer.update(bytes(b ^ 0x5C for b in key))
        self._inner, self._outer = inner, outer

    def sign(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        digest: bytes = outer.digest()
        return digest


def _uuid4() -> str:
    """A random (version 4) UUID as text; str(uuid.uuid4()) costs twice as much."""
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def _signing(token: UpfrontTokenSettings | None) -> tuple[bytes, _HmacKey | None]:
    """The JWT's encoded header with its dot, and the signing key (none without a token)."""
    if token is None:
        return b"", None
    header = {"alg": token.algorithm, "typ": "JWT"}
    if token.kid is not None:
        header["kid"] = token.kid
    return _b64url(_JSON.encode(header).encode()) + b".", _HmacKey(
        token.secret, HASHES[token.algorithm]
    )


class DrmTodayAuth:
    """Builds the auth headers of one request; everything that does not change per request
    (the JWT header, the HMAC key schedule, the JSON around the ids) is computed once."""

    __slots__ = ("_clock", "_crt", "_custom", "_hmac", "_lifetime", "_opt", "_prefix", "options")

    def __init__(self, options: DrmTodayOptions, *, clock: Callable[[], float] = time.time):
        self.options = options
        self._clock = clock
        merchant = _JSON.encode(options.merchant)
        # Inside the payload the crt/optData claims are JSON strings holding JSON: the
        # constant parts are escaped once here, the ids per request.
        entry = dict(options.crt)
        if options.variant_id is not None:
            entry["variantId"] = options.variant_id
        tail = _JSON.encode(entry)[1:]  # `"profile":...}` (or `}` when empty)
        self._crt = ('"[{\\"assetId\\":', _inner(("," if entry else "") + tail + "]") + '"')
        self._opt = ('"{\\"merchant\\":' + _inner(merchant) + ',\\"userId\\":', ',\\"sessionId\\":')
        self._custom = ('{"userId":', ',"sessionId":', ',"merchant":' + merchant + "}")
        self._prefix, self._hmac = _signing(options.token)
        self._lifetime = options.token.lifetime_seconds if options.token is not None else 0

    def __repr__(self) -> str:
        return f"DrmTodayAuth(merchant={self.options.merchant!r}, auth={self.options.auth!r})"

    def headers(self, asset_id: str, user_id: str | None, session_id: str) -> dict[str, str]:
        """The `x-dt-auth-token` and/or `x-dt-custom-data` headers for one request."""
        user = user_id or self.options.default_user_id
        headers: dict[str, str] = {}
        if self._hmac is not None:
            headers[AUTH_TOKEN_HEADER] = self.token(asset_id, user, session_id)
        if self.options.sends_custom_data:
            headers[CUSTOM_DATA_HEADER] = self.custom_data(user, session_id)
        return headers

    def token(self, asset_id: str, user: str, session_id: str) -> str:
        """A fresh upfront authorization token for one asset, user and session."""
        if self._hmac is None:
            raise ValueError("this provider's auth sends no upfront token")
        crt = self._crt[0] + _inner(_JSON.encode(asset_id)) + self._crt[1]
        opt = self._opt[0] + _inner(_JSON.encode(user))
        opt += self._opt[1] + _inner(_JSON.encode(session_id)) + '}"'
        iat = int(self._clock())
        payload = (
            f'{{"crt":{crt},"optData":{opt},"iat":{iat},"exp":{iat + self._lifetime},'
            f'"jti":"{_uuid4()}"}}'
        )
        signing_input = self._prefix + _b64url(payload.encode())
        return (signing_input + b"." + _b64url(self._hmac.sign(signing_input))).decode("ascii")

    def custom_data(self, user: str, session_id: str) -> str:
        """base64 of `{"userId", "sessionId", "merchant"}`."""
        parts = self._custom
        text = parts[0] + _JSON.encode(user) + parts[1] + _JSON.encode(session_id) + parts[2]
        return base64.b64encode(text.encode()).decode("ascii")


def fairplay_form(spc: bytes, asset_id: str, variant_id: str | None) -> tuple[bytes, str]:
    """`spc=<percent-encoded base64>&assetId=<id>[&variantId=<id>]` and its content type."""
    body, content_type = encode_spc(spc, "form", asset_id=asset_id)
    if variant_id is not None:
        body += b"&variantId=" + quote(variant_id, safe="").encode("ascii")
    return body, content_type


# -- answers -------------------------------------------------------------------------------


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """DRMtoday's own error code: `x-dt-resp-code` (0 is success), or a Widevine JSON
    envelope whose status is not OK."""
    code = headers.get(RESP_CODE_HEADER)
    if code is not None and code.strip().lstrip("0"):
        normalized = code.strip().lstrip("0")
        if normalized == _AUTH_REFUSED:
            return ProviderFault(normalized, lambda _: UpstreamAuthFailed())
        return ProviderFault(normalized)
    if 200 <= status < 300 and body[:1] == b"{":
        envelope = _json_object(body)
        if envelope is not None and envelope.get("status", "OK") != "OK":
            return ProviderFault("widevine_status")
    return None


def unwrap_widevine(body: bytes) -> bytes | None:
    """The license bytes of a Widevine answer: the JSON envelope's base64 `license`, or the
    body itself when it is raw (specConform); None when the envelope is garbled."""
    if body.lstrip()[:1] != b"{":
        return body
    envelope = _json_object(body)
    license_ = envelope.get("license") if envelope is not None else None
    if not isinstance(license_, str) or not license_.isascii():
        return None
    try:
        raw = base64.b64decode(license_, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw or None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return document if isinstance(document, dict) else None


# -- the client ----------------------------------------------------------------------------


class DrmTodayProvider(Adapter):
    """A DRMtoday merchant: upfront token and/or custom data, JSON-wrapped Widevine, base64
    FairPlay CKCs."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(
            settings,
            read_fault=read_fault,
            known_errors=KNOWN_ERRORS,
            strip=(RESP_CODE_HEADER, "x-dt-client-info", "x-dt-error-message"),
            json_answers=True,  # Widevine licenses come in a JSON envelope
        )
        super().__init__(settings, transport)
        self.options = options_of(settings, DrmTodayOptions)
        self.auth = DrmTodayAuth(self.options)

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        answer = await self._post(call, endpoint, call.challenge, call.content_type)
        if call.drm != "widevine":
            return answer
        license_ = unwrap_widevine(answer.body)
        if license_ is None:
            self.transport.bad_response("bad_license")
            raise UpstreamBadResponse()
        return ProviderAnswer(license_, BINARY, answer.headers)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        metrics.labelled(metrics.FAIRPLAY_TRANSCODES, call.spc.fmt, "form").inc()
        body, content_type = fairplay_form(
            call.spc.spc, _resource_id(call), self.options.variant_id
        )
        return self.ckc_answer(await self._post(call, endpoint, body, content_type))

    async def _post(
        self, call: Call, endpoint: UrlTemplate, body: bytes, content_type: str | None
    ) -> ProviderAnswer:
        headers = self.auth.headers(_resource_id(call), call.client.user_id, call.request_id)
        if AUTH_TOKEN_HEADER in headers:
            self.tokens_signed.inc()
        return await self.transport.post(
            call, endpoint, body, content_type=content_type, headers=headers
        )


def _resource_id(call: Call) -> str:
    """The asset's drmResourceId: DRMtoday's assetId (the routing guard ensures one)."""
    if not call.entry.drm_resource_id:
        raise MissingResourceId(
            f"Asset {call.entry.asset_id!r} has no drmResourceId; no DRMtoday request was built."
        )
    return call.entry.drm_resource_id


# -- reading credentials back (`drm-gateway token verify`) ---------------------------------


def verify_token(token: str, settings: UpfrontTokenSettings) -> dict[str, Any]:
    """The claims of an upfront token signed with `settings`' secret, algorithm and kid (when
    one is configured), as DRMtoday checks it; ValueError says why not, never quoting the
    secret."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (header.payload.signature)")
    header, claims = segment_json(parts[0]), segment_json(parts[1])
    if header.get("alg") != settings.algorithm:
        raise ValueError(f"the header's alg is not {settings.algorithm}")
    if settings.kid is not None and header.get("kid") != settings.kid:
        raise ValueError(f"the header's kid is not {settings.kid!r}")
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    expected = _HmacKey(settings.secret, HASHES[settings.algorithm]).sign(signing_input)
    if not hmac.compare_digest(segment_bytes(parts[2]), expected):
        raise ValueError("the signature does not match the shared secret")
    return claims


def unpack_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The claims with `crt` and `optData` parsed from the JSON strings they travel as;
    ValueError when either is missing or not a JSON-encoded string."""
    unpacked = dict(claims)
    for name in ("crt", "optData"):
        value = claims.get(name)
        if not isinstance(value, str):
            raise ValueError(f"the {name} claim is not a JSON-encoded string")
        try:
            unpacked[name] = json.loads(value)
        except (ValueError, RecursionError):
            raise ValueError(f"the {name} claim is not valid JSON") from None
    return unpacked


def decode_custom_data(value: str) -> dict[str, Any]:
    """The JSON object inside an `x-dt-custom-data` value; ValueError when garbled."""
    try:
        document = json.loads(base64.b64decode(value, validate=True))
    except (ValueError, RecursionError):  # binascii and Unicode errors included
        raise ValueError("not base64 of a JSON object") from None
    if not isinstance(document, dict):
        raise ValueError("not base64 of a JSON object")
    return document


KIND = ProviderKind(
    client=DrmTodayProvider,
    drms=frozenset({"widevine", "playready", "fairplay"}),
    needs_drm_resource_id=True,
    fairplay=FairPlayFormats("form", "base64"),
    options=parse_options,
)
