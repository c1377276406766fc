"""The `axinom` provider kind: Axinom DRM's License Service, authorised by an entitlement message.

Every license request carries the header `X-AxDRM-Message`: a JWT (HS256) whose payload is an
Axinom "License Service Message" wrapping an "Entitlement Message" v2 that lists the content
key ids the player may get. The message is built from the asset's key ids in the catalog, so
the kind needs key ids and no drmResourceId. Sources (Axinom's public documentation):

- License Service Message (fields `version` 1, `com_key_id`, `message`, optional
  `expiration_date`; HMAC-SHA256 with the communication key; delivery in `X-AxDRM-Message`):
  https://docs.axinom.com/services/drm/license-service/license-service-message
- The key is the base64-DECODED communication key (their samples decode it before signing):
  https://docs.axinom.com/services/drm/license-service/sign-license-service-message
- Entitlement Message v2 (`type`, `version` 2, `content_keys_source.inline[].id` as GUIDs,
  optional `license`): https://docs.axinom.com/services/drm/license-service/entitlement-message
  and .../entitlement-message/license-configuration (the `license` section's fields).
- One endpoint per DRM, `POST /AcquireLicense`, the CDM's challenge as the body:
  https://docs.axinom.com/services/drm/license-service/license-acquisition-api ;
  FairPlay takes the raw SPC and answers the raw CKC (Axinom's FairPlay sample app,
  github.com/Axinom/drm-fairplay-integration-sample, PlayerViewController.swift).
- Errors: 400 invalid license request, 403 license denied, 500 internal error; PlayReady
  answers every error 500 with a SOAP fault; the explanation is in the `X-AxDRM-ErrorMessage`
  response header: https://docs.axinom.com/services/drm/quickstart/troubleshooting and the
  documented messages in Axinom's FAQ (portal.axinom.com/mosaic/faq/drm/troubleshooting).
- Example tokens (the header segment and payload shape reproduced by the tests):
  github.com/Axinom/public-test-vectors, X-AxDRM-Message-headers/*.xml.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import REQUIRED, ConfigReader
from proxy.errors import (
    GatewayError,
    InternalError,
    UpstreamAuthFailed,
    UpstreamRejected,
)
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import (
    FairPlayCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
)
from proxy.upstream.fairplay import BINARY_CONTENT_TYPE, FairPlayFormats
from proxy.upstream.signer import segment_bytes, segment_json
from proxy.upstream.transport import ProviderFault, ProviderTransport

MESSAGE_HEADER = "X-AxDRM-Message"
ERROR_HEADER = "X-AxDRM-ErrorMessage"
COM_KEY_MIN_BYTES = 32  # RFC 7518 §3.2: an HS256 key at least as long as the hash
MAX_MESSAGE_LIFETIME = 3600  # the docs ask for a *short* expiration_date
GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# The entitlement message's `license` section, top-level fields as documented.
LICENSE_FIELDS = frozenset(
    {
        "start_datetime",
        "expiration_datetime",
        "duration",
        "allow_persistence",
        "concurrency_interval",
        "concurrency_grace_period",
        "fairplay",
        "playready",
        "widevine",
    }
)
_OPTION_FIELDS = {"com_key_id", "com_key", "message_lifetime_seconds", "license"}
# {"alg":"HS256","typ":"JWT"} exactly as Axinom's published tokens start.
_HEADER_SEGMENT = b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class AxinomOptions:
    """The `providers.<name>.axinom` section: the communication key and the message policy."""

    com_key_id: str
    com_key: bytes = field(repr=False)
    message_lifetime_seconds: int = 60
    license: Mapping[str, Any] | None = None


def parse_options(reader: ConfigReader, raw: Any, path: str) -> AxinomOptions | None:
    """Read the kind's section, reporting every problem; None when it is unusable."""
    before = len(reader.problems)
    section = reader.mapping(raw, path, _OPTION_FIELDS)
    com_key_id = reader.value(section, "com_key_id", path, str, REQUIRED)
    if isinstance(com_key_id, str) and not GUID.match(com_key_id):
        reader.problem(f"{path}.com_key_id", "must be a GUID (8-4-4-4-12 hexadecimal digits)")
    com_key = _communication_key(reader, section, path)
    lifetime = reader.positive(section, "message_lifetime_seconds", path, int, 60)
    if lifetime is not None and lifetime > MAX_MESSAGE_LIFETIME:
        reader.problem(
            f"{path}.message_lifetime_seconds", f"must be at most {MAX_MESSAGE_LIFETIME} seconds"
        )
    license_ = _license_section(reader, section.get("license"), f"{path}.license")
    if len(reader.problems) > before or com_key is None or com_key_id is None:
        return None
    return AxinomOptions(com_key_id.lower(), com_key, lifetime, license_)


def _communication_key(reader: ConfigReader, section: dict[str, Any], path: str) -> bytes | None:
    """The communication key as Axinom shows it (base64), decoded: the HMAC key is the bytes."""
    if "com_key" not in section:
        reader.problem(f"{path}.com_key", "is missing, and has no default")
        return None
    text = reader.secret(section["com_key"], f"{path}.com_key")
    if text is None:
        return None
    try:
        key = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        reader.problem(f"{path}.com_key", "is not base64 (Axinom shows the key base64-encoded)")
        return None
    if len(key) < COM_KEY_MIN_BYTES:
        reader.problem(
            f"{path}.com_key", f"decodes to {len(key)} bytes; at least {COM_KEY_MIN_BYTES} needed"
        )
        return None
    return key


def _license_section(reader: ConfigReader, raw: Any, path: str) -> Mapping[str, Any] | None:
    """The optional `license` section, passed through: known fields, JSON values only."""
    if raw is None:
        return None
    section = reader.mapping(raw, path, set(LICENSE_FIELDS))
    for name, value in section.items():
        if name in LICENSE_FIELDS and not _is_json_value(value):
            reader.problem(f"{path}.{name}", "must hold only JSON values (no NaN or infinity)")
    return dict(section)


def _is_json_value(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, list):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


# --- the message ------------------------------------------------------------------------------


def key_id_guid(key_id_hex: str) -> str:
    """A 32-hex-digit key id in the GUID form entitlement messages use (8-4-4-4-12)."""
    h = key_id_hex.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@lru_cache(maxsize=8192)
def _inline_keys(key_ids: tuple[str, ...]) -> str:
    """The `inline` array's JSON for an asset's key ids (cached: assets repeat)."""
    return ",".join(f'{{"id":"{key_id_guid(k)}"}}' for k in key_ids)


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class EntitlementSigner:
    """Builds and signs one License Service Message per request, from the asset's key ids.

    Everything that does not change per request is done here once: the JSON around the key
    ids, the keyed HMAC state, the expiration text (per second)."""

    __slots__ = ("_clock", "_expiry", "_lifetime", "_mac", "_prefix")

    def __init__(self, options: AxinomOptions, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lifetime = options.message_lifetime_seconds
        self._mac = hmac.new(options.com_key, digestmod=hashlib.sha256)
        license_ = f'"license":{_JSON.encode(options.license)},' if options.license else ""
        self._prefix = (
            f'{{"version":1,"com_key_id":"{options.com_key_id}",'
            f'"message":{{"type":"entitlement_message","version":2,{license_}'
            '"content_keys_source":{"inline":['
        )
        self._expiry: tuple[int, str] = (-1, "")

    def __repr__(self) -> str:
        return f"EntitlementSigner(lifetime_seconds={self._lifetime})"

    def sign(self, key_ids: tuple[str, ...]) -> str:
        """The `X-AxDRM-Message` value entitling exactly `key_ids` (32 lowercase hex each)."""
        payload = (
            f'{self._prefix}{_inline_keys(key_ids)}]}}}},"expiration_date":"{self._expires()}"}}'
        )
        signing_input = _HEADER_SEGMENT + _b64url(payload.encode())
        mac = self._mac.copy()
        mac.update(signing_input)
        return (signing_input + b"." + _b64url(mac.digest())).decode("ascii")

    def _expires(self) -> str:
        """ISO-8601 with an offset, as the docs write it; formatted once per second."""
        now = int(self._clock())
        cached_at, text = self._expiry
        if cached_at != now:
            moment = datetime.fromtimestamp(now + self._lifetime, UTC)
            text = moment.isoformat(timespec="seconds")
            self._expiry = (now, text)
        return text


# --- errors -------------------------------------------------------------------------------------

# Bounded provider codes: the documented message kinds, then the category of the status.
KNOWN_ERRORS = frozenset(
    {
        "bad_signature",
        "unknown_com_key",
        "message_expired",
        "bad_challenge",
        "revoked_device",
        "security_level",
        "invalid_request",
        "license_denied",
        "internal_error",
    }
)


def _auth_failed(_: int) -> GatewayError:
    return UpstreamAuthFailed()


def _rejected_400(_: int) -> GatewayError:
    return UpstreamRejected(400)


def _rejected_403(_: int) -> GatewayError:
    return UpstreamRejected(403)


# (words in the lowercased message, code, how the player is answered). Our key, id or message
# lifetime wrong: 502 auth failed. The player's device or request: its own 400/403, also for
# PlayReady, whose status is always 500 (the message says which it was).
_MESSAGE_KINDS: tuple[tuple[str, str, Callable[[int], GatewayError]], ...] = (
    ("signature", "bad_signature", _auth_failed),
    ("communication key", "unknown_com_key", _auth_failed),
    ("expired", "message_expired", _auth_failed),
    ("revoked", "revoked_device", _rejected_400),
    ("security level", "security_level", _rejected_403),
    ("does not represent a valid", "bad_challenge", _rejected_400),
    ("invalid license request", "invalid_request", _rejected_400),
    ("license denied", "license_denied", _rejected_403),
)
_BY_STATUS: Mapping[int, str] = {400: "invalid_request", 403: "license_denied"}
_FAULT_STRING = re.compile(rb"<faultstring>([^<]{0,512})</faultstring>", re.IGNORECASE)
_MAX_MESSAGE_CHARS = 512  # classify on a bounded prefix; the text itself is never kept


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """Axinom's error explanation as a bounded code (never the text, which may echo input)."""
    if 200 <= status < 300:
        return None
    message = headers.get(ERROR_HEADER) or _soap_fault_string(body)
    lowered = message[:_MAX_MESSAGE_CHARS].lower()
    for words, code, error in _MESSAGE_KINDS:
        if words in lowered:
            return ProviderFault(code, error)
    if status in _BY_STATUS:
        return ProviderFault(_BY_STATUS[status])
    return ProviderFault("internal_error") if status >= 500 else None


def _soap_fault_string(body: bytes) -> str:
    """A PlayReady SOAP fault's faultstring, for an answer whose header went missing."""
    found = _FAULT_STRING.search(body[:65536])
    return found.group(1).decode("utf-8", "replace") if found else ""


# --- the client ---------------------------------------------------------------------------------


class AxinomProvider(Adapter):
    """An Axinom DRM License Service: one `/AcquireLicense` endpoint per DRM system."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(
            settings,
            read_fault=read_fault,
            known_errors=KNOWN_ERRORS,
            strip=(MESSAGE_HEADER, ERROR_HEADER),
        )
        super().__init__(settings, transport)
        self.signer = EntitlementSigner(options_of(settings, AxinomOptions))

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        headers = {MESSAGE_HEADER: self._message(call.entry.key_ids)}
        content_type = call.content_type or BINARY_CONTENT_TYPE
        return await self.transport.post(
            call, endpoint, call.challenge, content_type=content_type, headers=headers
        )

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        headers = {MESSAGE_HEADER: self._message(call.entry.key_ids)}
        body, content_type = self.spc_body(call)  # the raw SPC
        answer = await self.transport.post(
            call, endpoint, body, content_type=content_type, headers=headers
        )
        return self.ckc_answer(answer)

    def _message(self, key_ids: tuple[str, ...]) -> str:
        if not key_ids:
            # The rules' key-id guard keeps such assets away; reaching here is our bug.
            raise InternalError("The gateway could not build the provider request.")
        token = self.signer.sign(key_ids)
        self.tokens_signed.inc()
        return token


# --- reading a message back (`drm-gateway token verify`) ---------------------------------------


def verify_message(token: str, com_key: bytes) -> dict[str, Any]:
    """The claims of an `X-AxDRM-Message` signed HS256 with `com_key` (the decoded key), as
    the License Service checks it; ValueError says why not, never quoting the key."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (header.payload.signature)")
    header, claims = segment_json(parts[0]), segment_json(parts[1])
    if header.get("alg") != "HS256":
        raise ValueError("the header's alg is not HS256")
    signature = segment_bytes(parts[2])
    expected = hmac.new(com_key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise ValueError("the signature does not match the communication key")
    return claims


def entitled_key_ids(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The key ids a message's `content_keys_source.inline` entitles, as 32 lowercase hex
    digits each; ValueError when the message holds no such list of GUIDs."""
    message = claims.get("message")
    source = message.get("content_keys_source") if isinstance(message, dict) else None
    inline = source.get("inline") if isinstance(source, dict) else None
    if not isinstance(inline, list) or not inline:
        raise ValueError("the message has no content_keys_source.inline key list")
    ids = [item.get("id") if isinstance(item, dict) else None for item in inline]
    if not all(isinstance(i, str) and GUID.match(i) for i in ids):
        raise ValueError("an inline key id is not a GUID")
    return tuple(str(i).replace("-", "").lower() for i in ids)


KIND = ProviderKind(
    client=AxinomProvider,
    drms=frozenset({"widevine", "playready", "fairplay"}),
    needs_drm_resource_id=False,
    needs_key_ids=True,
    fairplay=FairPlayFormats("binary", "binary"),
    options=parse_options,
)
