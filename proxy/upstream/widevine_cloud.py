"""The `widevine-cloud` provider kind: Google's Widevine license proxy API (GetLicense).

The gateway plays the content provider's license proxy. Each Widevine challenge is wrapped in
a signed JSON envelope and POSTed to ``/cenc/getlicense/<provider>``:

    {"request": base64(inner), "signature": base64(sig), "signer": <provider>}
    inner = {"payload": base64(challenge), "provider": <provider>,
             "content_id": base64(drmResourceId), optional policy fields}
    sig   = AES-256-CBC(SHA-1(inner), signing key, signing IV)

and the answer is JSON: ``{"status": "OK", "license": base64(license), ...}``; any other
``status`` (the service sends them inside a 200) is the provider's error code.

Where each detail comes from:

- Widevine DRM Proxy Integration (Google, rev 2.x), sections "GetLicense API" (the envelope,
  the inner fields) and "Status Codes" (`STATUSES`); public copies:
  https://fdocuments.in/document/widevine-drm-proxy-integration-chromecast-32-android-33-sample-request-with.html
  and https://pdfcoffee.com/download/widevine-drm-proxy-integration-pdf-free.html
- Google's reference proxy ("Reference Modular DRM proxy application", the doc's "Sample
  Proxy"): the signature is the SHA-1 digest of the exact inner JSON bytes, padded with zero
  bytes to the AES block size, then AES-CBC encrypted; the test provider `widevine_test`.
- https://support.google.com/widevine/answer/6048495 : POST only, URL
  ``https://license.widevine.com/getlicense/<provider>`` (UAT: license.uat.widevine.com), the
  provider name is case-sensitive.
- The optional inner fields (`allowed_track_types`, `policy_overrides` and its keys,
  `use_policy_overrides_exclusively`) as Microsoft documents Google's request:
  https://learn.microsoft.com/azure/media-services/previous/media-services-widevine-license-template-overview

Where sources disagree: Google's reference proxy zero-pads the 20-byte digest; other clients
(shaka-packager's key-server signer, CableLabs' proxy) use PKCS#7. Google's is the default,
PKCS#7 is `signature_padding: pkcs7`. Both give 32 bytes whose first AES block is the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import REQUIRED, ConfigReader
from proxy.errors import MissingResourceId, NoProvider, UpstreamAuthFailed, UpstreamBadResponse
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import FairPlayCall, LicenseCall, ProviderAnswer, ProviderKind
from proxy.upstream.transport import ProviderFault, ProviderTransport

KIND_NAME: Final = "widevine-cloud"
JSON_CONTENT_TYPE: Final = "application/json"
SIGNING_KEY_BYTES: Final = 32  # AES-256
SIGNING_IV_BYTES: Final = 16  # one AES block
SIGNATURE_PADDINGS: Final = ("zero", "pkcs7")
# "allowed_track_types" values (SD_ONLY and SD_HD in Microsoft's copy; UHD ones in later revs).
TRACK_TYPES: Final = ("SD_ONLY", "SD_HD", "SD_UHD1", "SD_UHD2")
# The non-OK statuses of the proxy integration doc's "Status Codes" table.
STATUSES: Final = (
    "SIGNATURE_FAILED",
    "INVALID_LICENSE_CHALLENGE",
    "INVALID_CONTENT_INFO",
    "POLICY_UNKNOWN",
    "MALFORMED_REQUEST",
    "INTERNAL_ERROR",
    "PROVIDER_MISSING",
    "INVALID_REQUEST",
    "ACCESS_DENIED",
    "SIGNING_KEY_EXPIRED",
)
# Statuses meaning our provider credentials are wrong, not the player's request.
AUTH_STATUSES: Final = frozenset({"SIGNATURE_FAILED", "SIGNING_KEY_EXPIRED"})
# policy_overrides fields and their JSON types, as documented.
POLICY_OVERRIDE_TYPES: Final[Mapping[str, type]] = MappingProxyType(
    {
        "can_play": bool,
        "can_persist": bool,
        "can_renew": bool,
        "license_duration_seconds": int,
        "rental_duration_seconds": int,
        "playback_duration_seconds": int,
        "renewal_server_url": str,
        "renewal_delay_seconds": int,
        "renewal_retry_interval_seconds": int,
        "renewal_recovery_duration_seconds": int,
        "renew_with_usage": bool,
    }
)
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_FIELDS = {
    "provider",
    "signing_key",
    "signing_iv",
    "signature_padding",
    "allowed_track_types",
    "policy",
    "policy_overrides",
    "use_policy_overrides_exclusively",
}


@dataclass(frozen=True, slots=True)
class WidevineCloudOptions:
    """The `widevine-cloud` section: who we are to Google, our signing secrets, license policy.

    `provider` names us in the URL, in the inner request and as the envelope's `signer`.
    `policy` names a policy registered with Google; `policy_overrides` are sent as given."""

    provider: str
    signing_key: bytes = field(repr=False)
    signing_iv: bytes = field(repr=False)
    signature_padding: str = "zero"
    allowed_track_types: str | None = None
    policy: str | None = None
    policy_overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    use_policy_overrides_exclusively: bool | None = None


def parse_options(reader: ConfigReader, raw: Any, path: str) -> WidevineCloudOptions | None:
    """The kind's config section, every problem reported; None when it has any."""
    before = len(reader.problems)
    if raw is None:
        reader.problem(path, "is missing, and has no default")
        return None
    section = reader.mapping(raw, path, _FIELDS)
    provider = reader.value(section, "provider", path, str, REQUIRED)
    if isinstance(provider, str) and not _PROVIDER_NAME.match(provider):
        reader.problem(f"{path}.provider", "must be 1-64 of [A-Za-z0-9_.-] (case-sensitive)")
    key = _hex_secret(reader, section, "signing_key", path, SIGNING_KEY_BYTES)
    iv = _hex_secret(reader, section, "signing_iv", path, SIGNING_IV_BYTES)
    padding = _choice(reader, section, "signature_padding", path, SIGNATURE_PADDINGS, "zero")
    tracks = _choice(reader, section, "allowed_track_types", path, TRACK_TYPES, None)
    policy = reader.value(section, "policy", path, str, None)
    if policy == "":
        reader.problem(f"{path}.policy", "must not be empty (leave it out to use none)")
    overrides = _policy_overrides(reader, section.get("policy_overrides"), path)
    exclusive = reader.value(section, "use_policy_overrides_exclusively", path, bool, None)
    if len(reader.problems) > before or key is None or iv is None or provider is None:
        return None
    return WidevineCloudOptions(
        provider=provider,
        signing_key=key,
        signing_iv=iv,
        signature_padding=padding,
        allowed_track_types=tracks,
        policy=policy,
        policy_overrides=overrides,
        use_policy_overrides_exclusively=exclusive,
    )


def _hex_secret(
    reader: ConfigReader, section: dict[str, Any], name: str, path: str, size: int
) -> bytes | None:
    """A secret given as hex (as Google hands them out), exactly `size` bytes."""
    where = f"{path}.{name}"
    if name not in section:
        reader.problem(where, "is missing, and has no default")
        return None
    text = reader.secret(section[name], where)
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        # Never echo the value: it is the secret.
        reader.problem(where, f"must be hexadecimal ({size * 2} hex digits for {size} bytes)")
        return None
    if len(value) != size:
        reader.problem(
            where, f"must be {size} bytes ({size * 2} hex digits), the secret has {len(value)}"
        )
        return None
    return value


def _choice(
    reader: ConfigReader,
    section: dict[str, Any],
    name: str,
    path: str,
    allowed: tuple[str, ...],
    default: str | None,
) -> Any:
    value = reader.value(section, name, path, str, default)
    if value is not None and value not in allowed:
        reader.problem(f"{path}.{name}", f"must be one of {', '.join(allowed)}")
        return default
    return value


def _policy_overrides(reader: ConfigReader, raw: Any, path: str) -> Mapping[str, Any]:
    where = f"{path}.policy_overrides"
    section = reader.mapping(raw, where, set(POLICY_OVERRIDE_TYPES))
    overrides: dict[str, Any] = {}
    for name in sorted(section.keys() & POLICY_OVERRIDE_TYPES.keys()):
        kind = POLICY_OVERRIDE_TYPES[name]
        value = reader.value(section, name, where, kind, None)
        if kind is int and value is not None and value < 0:
            reader.problem(f"{where}.{name}", "must be 0 or more seconds")
        elif value is not None:
            overrides[name] = value
    return MappingProxyType(overrides)


def sign(message: bytes, options: WidevineCloudOptions) -> bytes:
    """The envelope's signature: AES-256-CBC of the message's SHA-1 digest, padded as set."""
    digest = hashlib.sha1(message).digest()
    if options.signature_padding == "pkcs7":
        padder = sym_padding.PKCS7(algorithms.AES.block_size).padder()
        padded = padder.update(digest) + padder.finalize()
    else:
        # Google's reference proxy: zero bytes up to the next block boundary.
        padded = digest + bytes(-len(digest) % (algorithms.AES.block_size // 8))
    encryptor = Cipher(algorithms.AES(options.signing_key), modes.CBC(options.signing_iv))
    cipher = encryptor.encryptor()
    return cipher.update(padded) + cipher.finalize()


def inner_request(options: WidevineCloudOptions, challenge: bytes, content_id: str) -> bytes:
    """The inner GetLicense message, as the exact bytes that are signed and sent.

    The JSON is assembled as text around the base64 fields (which never need escaping):
    json.dumps scanning the 2 KB+ payload cost more than the signature (tests/perf)."""
    optional: dict[str, Any] = {}
    if options.allowed_track_types is not None:
        optional["allowed_track_types"] = options.allowed_track_types
    if options.policy is not None:
        optional["policy"] = options.policy
    if options.policy_overrides:
        optional["policy_overrides"] = dict(options.policy_overrides)
    if options.use_policy_overrides_exclusively is not None:
        optional["use_policy_overrides_exclusively"] = options.use_policy_overrides_exclusively
    rest = "," + json.dumps(optional, separators=(",", ":"))[1:-1] if optional else ""
    return (
        f'{{"payload":"{_b64(challenge)}","provider":{json.dumps(options.provider)},'
        f'"content_id":"{_b64(content_id.encode())}"{rest}}}'
    ).encode()


def envelope(options: WidevineCloudOptions, challenge: bytes, content_id: str) -> bytes:
    """The POST body: the inner message, its signature and the signer (JSON as text, as in
    `inner_request`)."""
    inner = inner_request(options, challenge, content_id)
    signature = _b64(sign(inner, options))
    return (
        f'{{"request":"{_b64(inner)}","signature":"{signature}",'
        f'"signer":{json.dumps(options.provider)}}}'
    ).encode()


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """The service's own error: a JSON answer whose `status` is not OK."""
    answer = _json_object(body)
    code = answer.get("status") if answer is not None else None
    if not isinstance(code, str) or code == "OK":
        return None
    if code in AUTH_STATUSES:
        return ProviderFault(code, lambda _: UpstreamAuthFailed())
    return ProviderFault(code)


def read_license(body: bytes) -> bytes | None:
    """The license bytes of an OK answer; None when the answer is not one."""
    answer = _json_object(body)
    if answer is None or answer.get("status") != "OK":
        return None
    text = answer.get("license")
    if not isinstance(text, str) or not text:
        return None  # e.g. a parse_only answer: no license to hand to the player
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A GetLicense request body taken apart: the inner message (its exact bytes and their
    JSON), the signature and the signer."""

    request: bytes
    message: Mapping[str, Any]
    signature: bytes
    signer: str


def read_envelope(body: bytes) -> Envelope:
    """The parts of an `envelope` body (for `drm-gateway token verify`); ValueError when it
    is not one."""
    outer = _bounded_json(body)
    fields = [outer.get(name) if outer else None for name in ("request", "signature", "signer")]
    if not all(isinstance(value, str) for value in fields):
        raise ValueError("not a JSON object with string request, signature and signer")
    request_b64, signature_b64, signer = (str(value) for value in fields)
    try:
        request = base64.b64decode(request_b64, validate=True)
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("request or signature is not base64") from None
    message = _bounded_json(request)
    if message is None:
        raise ValueError("request is not base64 of a JSON object")
    return Envelope(request, message, signature, signer)


def _bounded_json(body: bytes) -> dict[str, Any] | None:
    try:
        return _json_object(body)
    except RecursionError:  # nested too deep: not an envelope
        return None


def signature_matches(envelope: Envelope, options: WidevineCloudOptions) -> bool:
    """Whether the envelope's signature is `sign` of its request with these key, IV, padding."""
    return hmac.compare_digest(envelope.signature, sign(envelope.request, options))


def _json_object(body: bytes) -> dict[str, Any] | None:
    if not body.lstrip()[:1] == b"{":
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class WidevineCloudProvider(Adapter):
    """A provider speaking Google's Widevine license proxy API."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(
            settings, read_fault=read_fault, known_errors=STATUSES, json_answers=True
        )
        super().__init__(settings, transport)
        self.options = options_of(settings, WidevineCloudOptions)

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """Wrap the challenge in a signed envelope; unwrap the license from the answer."""
        content_id = call.entry.drm_resource_id
        if not content_id:
            raise MissingResourceId(
                f"Asset {call.entry.asset_id!r} has no drmResourceId; no request was signed."
            )
        body = envelope(self.options, call.challenge, content_id)
        self.tokens_signed.inc()
        answer = await self.transport.post(call, endpoint, body, content_type=JSON_CONTENT_TYPE)
        license_ = read_license(answer.body)
        if license_ is None:
            self.transport.bad_response("bad_envelope")
            raise UpstreamBadResponse()
        return ProviderAnswer(license_, "application/octet-stream", answer.headers)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """Never called: the kind serves Widevine only (the config refuses other URLs)."""
        raise NoProvider(f"Kind {KIND_NAME} serves Widevine only, not FairPlay.")


KIND = ProviderKind(
    client=WidevineCloudProvider,
    drms=frozenset({"widevine"}),
    needs_drm_resource_id=True,
    options=parse_options,
)
