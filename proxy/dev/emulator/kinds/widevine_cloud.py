"""Emulates Google's Widevine cloud license service, as its license proxy API is documented.

Route: ``POST /cenc/getlicense/{provider}`` (route name ``license:widevine``); Widevine only.

Sources: Google's "Widevine DRM Proxy Integration" document (GetLicense API, Status Codes,
Sample Request with signing) and the reference proxy it points to (Google's "Reference
Modular DRM proxy application", posting to ``https://license.uat.widevine.com/cenc/getlicense/
widevine_test`` with the public test credentials used as DEMO_SECRETS below).

The request is JSON ``{"request": base64(message), "signature": base64(sig), "signer": name}``
where ``message`` is the inner JSON ``{"payload": base64(challenge), "provider": name,
"content_id": base64(content id), ...}`` and ``sig`` is AES-256-CBC(SHA-1(message bytes))
with the provider's signing key and IV. The answer is always HTTP 200 with JSON: ``{"status":
"OK", "license": base64(license), "license_metadata": {...}}``, or ``{"status": <code>}``.

Padding of the 20-byte digest before AES-CBC: Google's reference proxy pads it with zero bytes
to 32; Shaka Packager's signer (for the key server API) and Axinom's description of the same
scheme use PKCS#7. Google's proxy documentation is followed: zero padding is accepted, and
PKCS#7 only when the ``signature_padding`` setting says so (``--secret
signature_padding=pkcs7`` accepts only PKCS#7, ``=either`` accepts both).

What is checked, in order, and the documented status answered when it fails:
- the outer JSON and its three fields, the inner JSON: ``MALFORMED_REQUEST``;
- ``signer`` is the configured provider and the signature verifies with its key and IV:
  ``SIGNATURE_FAILED``;
- the inner ``provider`` is present (``PROVIDER_MISSING``) and, like the URL's, names the
  signer (``ACCESS_DENIED``: a signer may ask for its own provider's licenses only);
- ``payload`` is non-empty base64: ``INVALID_LICENSE_CHALLENGE``;
- ``content_id`` is base64 of a resource in the key store: ``INVALID_CONTENT_INFO``. The
  service certificate request (payload ``08 04``) needs none, as in the reference proxy.
Other documented statuses (never produced here): ``POLICY_UNKNOWN``, ``INVALID_REQUEST``,
``INTERNAL_ERROR``, ``SIGNING_KEY_EXPIRED``. The protocol has no timestamp or nonce, so there
is nothing to refuse as stale or replayed. ``request[VERIFIED]`` holds the signer and the
content id, never the key or IV.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.keys import derivation_id_for
from proxy.dev.emulator.settings import EmulatorSettings

# Google's public test provider and its signing key and IV (hex), from the reference proxy.
DEMO_SECRETS: Mapping[str, str] = {
    "provider": "widevine_test",
    "signing_key": "1ae8ccd0e7985cc0b6203a55855a1034afc252980e970ca90e5202689f947ab9",
    "signing_iv": "d58ce954203b7c9a9a9d467f59839249",
    "signature_padding": "zero",
}
PATH = "/cenc/getlicense/{provider}"
DRM = "widevine"
OK = "OK"
SIGNATURE_FAILED = "SIGNATURE_FAILED"
INVALID_LICENSE_CHALLENGE = "INVALID_LICENSE_CHALLENGE"
INVALID_CONTENT_INFO = "INVALID_CONTENT_INFO"
MALFORMED_REQUEST = "MALFORMED_REQUEST"
PROVIDER_MISSING = "PROVIDER_MISSING"
ACCESS_DENIED = "ACCESS_DENIED"
# The status values the documentation lists besides OK (the last four are never produced).
ERROR_STATUSES = (
    SIGNATURE_FAILED,
    INVALID_LICENSE_CHALLENGE,
    INVALID_CONTENT_INFO,
    MALFORMED_REQUEST,
    PROVIDER_MISSING,
    ACCESS_DENIED,
    "POLICY_UNKNOWN",
    "INVALID_REQUEST",
    "INTERNAL_ERROR",
    "SIGNING_KEY_EXPIRED",
)
SERVICE_CERTIFICATE_REQUEST = b"\x08\x04"
_PADDINGS = {"zero": ("zero",), "pkcs7": ("pkcs7",), "either": ("zero", "pkcs7")}
_BLOCK = 16


@dataclass(frozen=True)
class SigningConfig:
    """The provider this service knows, its signing key and IV, and the paddings accepted."""

    provider: str
    key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    paddings: tuple[str, ...] = ("zero",)

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> SigningConfig:
        """Parse the kind's settings; ValueError naming every bad one (never its value)."""
        merged = {**DEMO_SECRETS, **secrets}
        problems: list[str] = []
        key = _hex(merged["signing_key"], 32, "signing_key", problems)
        iv = _hex(merged["signing_iv"], 16, "signing_iv", problems)
        paddings = _PADDINGS.get(merged["signature_padding"])
        if paddings is None:
            problems.append(f"signature_padding must be one of {', '.join(_PADDINGS)}")
        if not merged["provider"]:
            problems.append("provider must not be empty")
        if problems:
            raise ValueError("widevine-cloud: " + "; ".join(problems))
        assert paddings is not None
        return cls(merged["provider"], key, iv, paddings)

    def signatures(self, message: bytes) -> list[bytes]:
        """Every signature of ``message`` accepted: AES-CBC of its padded SHA-1."""
        digest = hashlib.sha1(message).digest()
        fill = -len(digest) % _BLOCK or _BLOCK
        padded = {
            "zero": digest + bytes(-len(digest) % _BLOCK),
            "pkcs7": digest + bytes([fill]) * fill,
        }
        return [self._encrypt(padded[name]) for name in self.paddings]

    def _encrypt(self, data: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(self.key), modes.CBC(self.iv)).encryptor()
        return encryptor.update(data) + encryptor.finalize()


def _hex(text: str, size: int, name: str, problems: list[str]) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != size:
        problems.append(f"{name} must be {size} bytes in hex")
    return value


CONFIG = web.AppKey("widevine_cloud_signing", SigningConfig)


class Refusal(Exception):
    """A request the service refuses with a documented status (answered inside a 200)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """``POST /cenc/getlicense/{provider}``; ValueError if the kind's settings are bad."""
    app[CONFIG] = SigningConfig.from_secrets(settings.secrets)
    app.router.add_post(PATH, handle_getlicense, name=f"license:{DRM}")


async def handle_getlicense(request: web.Request) -> web.Response:
    """Verify the signed envelope, then answer a synthetic Widevine license."""
    config = request.app[CONFIG]
    settings = request.app[STATE].settings
    request[SEEN] = (DRM, None)
    try:
        message = _verified_message(request, config, await request.read())
        challenge, content_id = _license_request(request, config, message)
        if challenge != SERVICE_CERTIFICATE_REQUEST:
            _check_known(settings, content_id)
    except Refusal as refusal:
        return _answer({"status": refusal.status})
    request[CHALLENGE] = challenge
    license_ = synthetic_license(settings.name, DRM, challenge)
    return _answer(_license_answer(license_, content_id))


def _verified_message(request: web.Request, config: SigningConfig, body: bytes) -> dict[str, Any]:
    """The inner request, once its signer and signature are verified."""
    envelope = _json_object(body)
    encoded, signature_text, signer = (
        envelope.get(name) for name in ("request", "signature", "signer")
    )
    if not (isinstance(encoded, str) and isinstance(signature_text, str)):
        raise Refusal(MALFORMED_REQUEST)
    if not isinstance(signer, str):
        raise Refusal(MALFORMED_REQUEST)
    message = _b64(encoded, MALFORMED_REQUEST)
    signature = _b64(signature_text, MALFORMED_REQUEST)
    # Only the configured provider's key is known: any other signer cannot be verified.
    if not hmac.compare_digest(signer.encode(), config.provider.encode()):
        raise Refusal(SIGNATURE_FAILED)
    if not any(hmac.compare_digest(signature, good) for good in config.signatures(message)):
        raise Refusal(SIGNATURE_FAILED)
    request[VERIFIED] = {"signer": signer}
    return _json_object(message)


def _license_request(
    request: web.Request, config: SigningConfig, message: dict[str, Any]
) -> tuple[bytes, str | None]:
    """The challenge and the content id named by a verified inner request."""
    provider = message.get("provider")
    if provider is None:
        raise Refusal(PROVIDER_MISSING)
    if provider != config.provider or request.match_info["provider"] != config.provider:
        raise Refusal(ACCESS_DENIED)
    payload = message.get("payload")
    challenge = _b64(payload, INVALID_LICENSE_CHALLENGE) if isinstance(payload, str) else b""
    if not challenge:
        raise Refusal(INVALID_LICENSE_CHALLENGE)
    content_id = _content_id(message.get("content_id"))
    if content_id is not None:
        request[VERIFIED] = {"signer": config.provider, "content_id": content_id}
        request[SEEN] = (DRM, content_id)
    elif challenge != SERVICE_CERTIFICATE_REQUEST:
        raise Refusal(INVALID_CONTENT_INFO)
    return challenge, content_id


def _content_id(raw: Any) -> str | None:
    """The content id text (base64 of it on the wire); None when absent."""
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise Refusal(INVALID_CONTENT_INFO)
    try:
        text = _b64(raw, INVALID_CONTENT_INFO).decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(INVALID_CONTENT_INFO) from None
    if not text:
        raise Refusal(INVALID_CONTENT_INFO)
    return text


def _check_known(settings: EmulatorSettings, content_id: str | None) -> None:
    """The key store must hold the content (unknown content: the content info is invalid)."""
    try:
        derivation_id_for(settings.resources, content_id or "")
    except EmulatorError:
        raise Refusal(INVALID_CONTENT_INFO) from None


def _license_answer(license_: bytes, content_id: str | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"license_type": "STREAMING", "request_type": "NEW"}
    if content_id is not None:
        metadata["content_id"] = base64.b64encode(content_id.encode()).decode()
    return {
        "status": OK,
        "license": base64.b64encode(license_).decode(),
        "license_metadata": metadata,
    }


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal(MALFORMED_REQUEST) from None
    if not isinstance(value, dict):
        raise Refusal(MALFORMED_REQUEST)
    return value


def _b64(text: str, status: str) -> bytes:
    """Standard base64 (as the reference proxy writes it); ``status`` refuses anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(status) from None


def _answer(data: Mapping[str, Any]) -> web.Response:
    # Every answer, refusals included, is a 200: the status field says what happened.
    return web.Response(body=json.dumps(data).encode(), content_type="application/json")
