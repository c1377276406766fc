"""Axinom DRM License Service, emulated from Axinom's public documentation.

Routes (the real service has one host per DRM with ``POST /AcquireLicense``; on one port the
DRM is a path prefix): ``POST /widevine/AcquireLicense``, ``POST /playready/AcquireLicense``,
``POST /fairplay/AcquireLicense``. No ClearKey or HLS AES-128 route: Axinom's License
Acquisition API is exposed by the Widevine, PlayReady and FairPlay implementations only.

Plus the Key Service's SPEKE v2 endpoint, ``POST /api/SpekeV2`` (the real one is
``https://key-server-management.axprod.net/api/SpekeV2``; "key-service/speke"): HTTP Basic
auth ``<tenant id>:<management key>`` (secrets ``tenant_id`` and ``management_key``; 401
otherwise), ``X-Speke-Version: 2.0`` (400 otherwise), a CPIX 2.3 document with
``CPIX@contentId`` and ContentKeys each with a ``kid`` and ``commonEncryptionScheme``. The
answer is the same document, each ContentKey given ``Data/pskc:Secret/pskc:PlainValue``.
Keys come from the tenant's key seed (Axinom's Key Seed model); this emulator's own
derivation, not Axinom's, is ``HMAC-SHA256(key_seed, b"axinom-emulator-speke" + kid's 16
bytes)[:16]``, so the same seed and kid give the same key on every request and restart
(whatever the contentId). DRMSystem elements are returned as sent (no PSSH filled in). The
licenses stay synthetic: the emulator never encrypts, so its licenses carry no key.

What is checked, and where the documentation says so (docs.axinom.com/services/drm/...):

- ``X-AxDRM-Message`` carries a License Service Message as a JWT signed with HMAC-SHA256, the
  key being the communication key, base64-decoded ("license-service/license-service-message",
  "license-service/sign-license-service-message"). Its claims: ``version`` 1, ``com_key_id``
  (selects the key: checked before the signature), optional ``id``, ``begin_date`` and
  ``expiration_date`` (ISO-8601), and ``message``: the Entitlement Message, ``type``
  "entitlement_message", ``version`` 2, ``content_keys_source.inline`` [{``id``: key id
  GUID}, ...], optional ``license`` and ``license_server`` ("license-service/
  entitlement-message").
- ``license_server.access_control.prevent_drm_message_reuse`` makes a message usable once and
  then needs its ``id`` (release notes, April 2025): a bounded replay cache.
- Every key id must be in the key store (``settings.resources``; None: all known). The license
  carries exactly the entitled keys, so no key outside the entitlement can be asked for.
- Widevine and PlayReady challenges raw in; FairPlay a raw binary SPC in, a raw CKC out
  (Axinom's FairPlay integration sample); the answer is the synthetic license.
- ``license_server.return_license_request_info``: the success carries a License Request Info
  Message, itself a signed License Service Message, in the ``X-AxDRM-Message`` response
  header ("license-service/license-request-info-message").
- Failures: 400 (the request is not understood or invalid), 403 (understood, but policy
  denies a license), 500 (internal); PlayReady always 500 with a SOAP fault; the detail in
  the ``X-AxDRM-ErrorMessage`` header ("quickstart/troubleshooting"). Which refusal gets 400
  and which 403 is this emulator's reading of those two definitions.

``request[VERIFIED]`` records the communication key id, the key ids and the message id, never
the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.auth import ReplayCache
from proxy.dev.emulator.cpix import CPIX_NS, PSKC_NS, with_plain_keys
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.keys import b64url_decode, b64url_encode
from proxy.dev.emulator.settings import EmulatorSettings

DEMO_SECRETS: Mapping[str, str] = {
    "com_key_id": "a9c1f3e2-5b7d-4e8f-9a0b-1c2d3e4f5a6b",
    "com_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    # The Key Service (SPEKE v2): Basic auth tenant id : management key, and the key seed.
    "tenant_id": "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
    "management_key": "0c9b8a79-6857-4463-b2a1-90f8e7d6c5b4",
    "key_seed": "ZW11bGF0ZWQtYXhpbm9tLWtleS1zZWVkLWRvLW5vdC11c2U=",
}
DRMS = ("widevine", "playready", "fairplay")
MESSAGE_HEADER = "X-AxDRM-Message"
ERROR_HEADER = "X-AxDRM-ErrorMessage"
MAX_REPLAY_ENTRIES = 50_000
# How long a message id without an expiration_date is remembered (the cache is bounded too).
UNDATED_REPLAY_SECONDS = 86_400
_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_CONTENT_TYPES = {
    "widevine": "application/octet-stream",
    "playready": "text/xml; charset=utf-8",
    "fairplay": "application/octet-stream",
}
Handler = Callable[[web.Request], Awaitable[web.Response]]


class Refusal(Exception):
    """A request the license service refuses: its status and the error header's text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _invalid(message: str) -> Refusal:
    return Refusal(400, message)


def _denied(message: str) -> Refusal:
    return Refusal(403, message)


@dataclass(frozen=True, slots=True)
class Entitlement:
    """What a verified License Service Message grants (no key material)."""

    com_key_id: str
    key_ids: tuple[uuid.UUID, ...]
    message_id: str | None
    expires_at: float | None
    prevent_reuse: bool
    return_request_info: bool


@dataclass(frozen=True, slots=True)
class CommunicationKey:
    """The tenant's communication key: its id (a GUID) and the decoded key bytes."""

    key_id: str
    key: bytes = field(repr=False)

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> CommunicationKey:
        """From ``com_key_id`` and ``com_key`` (base64, as Axinom hands it out)."""
        merged = {**DEMO_SECRETS, **secrets}
        try:
            key_id = str(uuid.UUID(merged["com_key_id"]))
            key = base64.b64decode(merged["com_key"], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("axinom: com_key_id must be a GUID and com_key base64") from None
        if not key:
            raise ValueError("axinom: com_key must not be empty")
        return cls(key_id, key)


# --- the License Service Message --------------------------------------------------------------


def verify_message(token: str, com_key: CommunicationKey, now: float, skew: float) -> Entitlement:
    """Check the JWT and the messages inside it; raise a Refusal naming the first problem."""
    claims = _verified_claims(token, com_key)
    if claims.get("version") != 1 or isinstance(claims.get("version"), bool):
        raise _invalid("License Service Message version must be 1.")
    expires_at = _check_dates(claims, now, skew)
    message = claims.get("message")
    if not isinstance(message, dict):
        raise _invalid("License Service Message has no message object.")
    if message.get("type") != "entitlement_message":
        raise _invalid("The message type must be entitlement_message.")
    if message.get("version") != 2 or isinstance(message.get("version"), bool):
        raise _invalid("Only Entitlement Message version 2 is supported.")
    if "license" in message and not isinstance(message["license"], dict):
        raise _invalid("The license section must be an object.")
    server = _object(message, "license_server")
    access = _object(server, "access_control")
    message_id = claims.get("id")
    if message_id is not None and not isinstance(message_id, str):
        raise _invalid("The License Service Message id must be a string.")
    prevent_reuse = _flag(access, "prevent_drm_message_reuse")
    if prevent_reuse and not message_id:
        raise _invalid("prevent_drm_message_reuse needs a License Service Message id.")
    return Entitlement(
        com_key_id=com_key.key_id,
        key_ids=_inline_key_ids(message),
        message_id=message_id,
        expires_at=expires_at,
        prevent_reuse=prevent_reuse,
        return_request_info=_flag(server, "return_license_request_info"),
    )


def _verified_claims(token: str, com_key: CommunicationKey) -> dict[str, Any]:
    """The claims of a JWT signed HS256 with this communication key, checked by hand (the
    header's alg first, then the com_key_id that picks the key, then the signature)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid("The X-AxDRM-Message header is not a valid JWT.")
    header, claims = _json_part(parts[0]), _json_part(parts[1])
    if header.get("alg") != "HS256":
        raise _invalid("The License Service Message must be signed with HS256.")
    if not _same_guid(claims.get("com_key_id"), com_key.key_id):
        raise _invalid("Unknown communication key ID.")
    try:
        signature = b64url_decode(parts[2])
    except ValueError:
        signature = b""
    if not hmac.compare_digest(signature, _hs256(com_key.key, parts[0], parts[1])):
        raise _invalid("The License Service Message signature is not valid.")
    return claims


def _json_part(part: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(part))
    except (ValueError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise _invalid("The X-AxDRM-Message header is not a valid JWT.")
    return value


def _hs256(key: bytes, header: str, payload: str) -> bytes:
    return hmac.new(key, f"{header}.{payload}".encode("ascii"), hashlib.sha256).digest()


def _same_guid(value: Any, expected: str) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == expected
    except ValueError:
        return False


def _check_dates(claims: Mapping[str, Any], now: float, skew: float) -> float | None:
    """Refuse a message before its begin_date or after its expiration_date."""
    begins = _date(claims, "begin_date")
    if begins is not None and now + skew < begins:
        raise _denied("The License Service Message is not valid yet (begin_date).")
    expires = _date(claims, "expiration_date")
    if expires is not None and now - skew > expires:
        raise _denied("The License Service Message has expired (expiration_date).")
    return expires


def _date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _invalid(f"The {name} is not an ISO-8601 date.")
    # ISO-8601 without an offset is read as UTC.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _object(parent: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = parent.get(name, {})
    if not isinstance(value, dict):
        raise _invalid(f"The {name} section must be an object.")
    return value


def _flag(section: Mapping[str, Any], name: str) -> bool:
    """A documented boolean; Axinom's own samples write some of them as "true" strings."""
    value = section.get(name, False)
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _inline_key_ids(message: Mapping[str, Any]) -> tuple[uuid.UUID, ...]:
    source = _object(message, "content_keys_source")
    inline = source.get("inline")
    if not isinstance(inline, list) or not inline:
        raise _invalid("content_keys_source.inline must list at least one key.")
    key_ids = []
    for entry in inline:
        raw = entry.get("id") if isinstance(entry, dict) else None
        try:
            key_ids.append(uuid.UUID(raw) if isinstance(raw, str) else None)
        except ValueError:
            key_ids.append(None)
    if None in key_ids:
        raise _invalid("Every inline key needs an id that is a GUID.")
    return tuple(k for k in key_ids if k is not None)


# --- the license request ----------------------------------------------------------------------


def check_challenge(drm: str, body: bytes) -> bytes:
    """The challenge as sent; a FairPlay one must be a raw binary SPC."""
    if not body:
        raise _invalid("The license request body is empty.")
    if drm == "fairplay" and not body.startswith(_SPC_PREFIXES):
        raise _invalid("The FairPlay license request is not a binary SPC.")
    return body


def check_key_store(resources: Mapping[str, str] | None, key_ids: tuple[uuid.UUID, ...]) -> None:
    """Every entitled key must be known to the key store (hex or GUID form); None: all are."""
    if resources is None:
        return
    for key_id in key_ids:
        if key_id.hex not in resources and str(key_id) not in resources:
            raise _denied(f"Content key {key_id} is not known to the key store.")


def request_info_message(drm: str, challenge: bytes, com_key: CommunicationKey) -> str:
    """A License Request Info Message in a License Service Message, signed HS256 (JWT)."""
    device = str(uuid.UUID(bytes=hashlib.sha256(challenge).digest()[:16]))
    info = {
        "version": 1,
        "type": f"{drm}_license_request_info",
        "device_info": {"device_id": device, "recommended_client_id": device},
    }
    envelope = {"version": 1, "com_key_id": com_key.key_id, "message": info}
    header = b64url_encode(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64url_encode(json.dumps(envelope, separators=(",", ":")).encode())
    signature = b64url_encode(_hs256(com_key.key, header, payload))
    return f"{header}.{payload}.{signature}"


def refusal_response(drm: str, refusal: Refusal) -> web.Response:
    """The service's error answer: status and header; PlayReady: 500 and a SOAP fault."""
    headers = {ERROR_HEADER: refusal.message}
    if drm != "playready":
        return web.Response(status=refusal.status, headers=headers)
    # DRM_E_SERVER_INVALID_MESSAGE for what the caller got wrong, else INTERNAL_ERROR.
    code = "0x8004C601" if refusal.status < 500 else "0x8004C600"
    fault = (
        '<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
        "<soap:Fault><faultcode>soap:Server</faultcode>"
        f"<faultstring>{escape(refusal.message)}</faultstring>"
        f"<detail><Exception><StatusCode>{code}</StatusCode></Exception></detail>"
        "</soap:Fault></soap:Body></soap:Envelope>"
    )
    return web.Response(
        status=500, body=fault.encode(), content_type="text/xml", charset="utf-8", headers=headers
    )


# --- routes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AxinomState:
    """The communication key, the replay cache of message ids and the Key Service tenant,
    shared by the routes."""

    com_key: CommunicationKey
    replay: ReplayCache
    tenant: KeyServiceTenant | None = None


AXINOM = web.AppKey("axinom_state", AxinomState)


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """``POST /<drm>/AcquireLicense`` for Widevine, PlayReady and FairPlay."""
    com_key = CommunicationKey.from_secrets(settings.secrets)
    tenant = KeyServiceTenant.from_secrets(settings.secrets)
    app[AXINOM] = AxinomState(com_key, ReplayCache(MAX_REPLAY_ENTRIES), tenant)
    app[STATE].replay_caches.append(app[AXINOM].replay)
    for drm in DRMS:
        app.router.add_post(f"/{drm}/AcquireLicense", _license_handler(drm), name=f"license:{drm}")
    app.router.add_post(SPEKE_PATH, _speke, name="keys:speke")


def _license_handler(drm: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        """Verify the message, the challenge and the keys, then answer with a license."""
        request[SEEN] = (drm, None)
        try:
            return await _acquire_license(request, drm)
        except Refusal as refusal:
            return refusal_response(drm, refusal)

    return handle


async def _acquire_license(request: web.Request, drm: str) -> web.Response:
    settings = request.app[STATE].settings
    state = request.app[AXINOM]
    token = request.headers.get(MESSAGE_HEADER, "").strip()
    if not token:
        raise _invalid("The X-AxDRM-Message header is missing.")
    now = time.time()
    entitlement = verify_message(token, state.com_key, now, settings.clock_skew)
    key_ids = [key_id.hex for key_id in entitlement.key_ids]
    request[VERIFIED] = {
        "com_key_id": entitlement.com_key_id,
        "key_ids": key_ids,
        "message_id": entitlement.message_id,
    }
    request[SEEN] = (drm, ",".join(key_ids))
    challenge = check_challenge(drm, await request.read())
    request[CHALLENGE] = challenge
    check_key_store(settings.resources, entitlement.key_ids)
    _check_reuse(state.replay, entitlement, now)
    headers = {}
    if entitlement.return_request_info:
        headers[MESSAGE_HEADER] = request_info_message(drm, challenge, state.com_key)
    body = synthetic_license(settings.name, drm, challenge)
    return web.Response(body=body, headers={"Content-Type": _CONTENT_TYPES[drm], **headers})


def _check_reuse(replay: ReplayCache, entitlement: Entitlement, now: float) -> None:
    """A message marked single-use is refused the second time (last check: a refused
    request does not use it up)."""
    if not entitlement.prevent_reuse or entitlement.message_id is None:
        return
    until = entitlement.expires_at or now + UNDATED_REPLAY_SECONDS
    if not replay.add(entitlement.message_id, max(until, now + 1), now):
        raise _denied("This License Service Message was already used.")


# --- the Key Service: SPEKE v2 ----------------------------------------------------------------

SPEKE_PATH = "/api/SpekeV2"
SPEKE_VERSION = "2.0"
ENCRYPTION_SCHEMES = frozenset({"cenc", "cbc1", "cens", "cbcs"})
MAX_SPEKE_BODY = 1_048_576
_DERIVATION_LABEL = b"axinom-emulator-speke"
ET.register_namespace("cpix", CPIX_NS)
ET.register_namespace("pskc", PSKC_NS)


@dataclass(frozen=True, slots=True)
class KeyServiceTenant:
    """The Key Service tenant: its id, management key (Basic auth) and key seed."""

    tenant_id: str
    management_key: str = field(repr=False)
    key_seed: bytes = field(repr=False)

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, str]) -> KeyServiceTenant:
        """From ``tenant_id``, ``management_key`` and ``key_seed`` (base64)."""
        merged = {**DEMO_SECRETS, **secrets}
        try:
            seed = base64.b64decode(merged["key_seed"], validate=True)
        except (ValueError, binascii.Error):
            raise ValueError("axinom: key_seed must be base64") from None
        if len(seed) < 16 or not merged["tenant_id"] or not merged["management_key"]:
            raise ValueError("axinom: key_seed must be 16+ bytes, tenant_id and key non-empty")
        return cls(merged["tenant_id"], merged["management_key"], seed)

    def key(self, kid: uuid.UUID) -> bytes:
        """The content key of `kid`: HMAC-SHA256(key seed, label + kid bytes), 16 bytes."""
        mac = hmac.new(self.key_seed, _DERIVATION_LABEL + kid.bytes, hashlib.sha256)
        return mac.digest()[:16]

    def authorized(self, header: str) -> bool:
        """True for ``Basic base64(<tenant id>:<management key>)`` (constant-time compare)."""
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            pair = base64.b64decode(value.strip(), validate=True)
        except (ValueError, binascii.Error):
            return False
        expected = f"{self.tenant_id}:{self.management_key}".encode()
        return hmac.compare_digest(pair, expected)


def _speke_error(status: int, message: str) -> web.Response:
    """A Key Service refusal: the status and a plain-text message (never a key)."""
    return web.Response(status=status, text=message, content_type="text/plain")


async def _speke(request: web.Request) -> web.Response:
    """``POST /api/SpekeV2``: the keys of every ContentKey, derived from the key seed."""
    tenant = request.app[AXINOM].tenant
    assert tenant is not None
    request[SEEN] = (None, None)
    if not tenant.authorized(request.headers.get("Authorization", "")):
        response = _speke_error(401, "Invalid tenant ID or management key.")
        response.headers["WWW-Authenticate"] = 'Basic realm="Key Service"'
        return response
    if request.headers.get("X-Speke-Version", "").strip() != SPEKE_VERSION:
        return _speke_error(400, "The X-Speke-Version header must be 2.0.")
    body = await request.read()
    if len(body) > MAX_SPEKE_BODY:
        return _speke_error(413, "The CPIX document is too large.")
    try:
        root, kids = read_speke_request(body)
    except Refusal as refusal:
        return _speke_error(refusal.status, refusal.message)
    request[SEEN] = (None, root.get("contentId"))
    request[VERIFIED] = {
        "tenant_id": tenant.tenant_id,
        "content_id": root.get("contentId"),
        "key_ids": [kid.hex for kid in kids],
    }
    document = fill_speke_answer(root, tenant)
    return web.Response(
        body=document,
        content_type="application/xml",
        charset="utf-8",
        headers={"X-Speke-Version": SPEKE_VERSION, "X-Speke-User-Agent": "axinom-emulator"},
    )


def read_speke_request(body: bytes) -> tuple[ET.Element, list[uuid.UUID]]:
    """The CPIX root and its ContentKey kids; a Refusal (400) naming the first problem."""
    try:
        root = parse_xml(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise _invalid("The request is not a well-formed CPIX document.") from None
    if root.tag != f"{{{CPIX_NS}}}CPIX":
        raise _invalid("The request is not a CPIX document.")
    if not root.get("contentId"):
        raise _invalid("Missing CPIX@contentId.")
    if root.get("version") != "2.3":
        raise _invalid("Unsupported CPIX@version: SPEKE 2.0 uses CPIX 2.3.")
    elements = root.findall(f"{{{CPIX_NS}}}ContentKeyList/{{{CPIX_NS}}}ContentKey")
    if not elements:
        raise _invalid("The CPIX document has no ContentKey.")
    kids = []
    for element in elements:
        try:
            kid = uuid.UUID(element.get("kid", ""))
        except ValueError:
            raise _invalid("Every ContentKey needs a kid that is a GUID.") from None
        if element.get("commonEncryptionScheme") not in ENCRYPTION_SCHEMES:
            raise _invalid(f"Missing or unknown ContentKey@commonEncryptionScheme for KID {kid}.")
        kids.append(kid)
    return root, kids


def fill_speke_answer(root: ET.Element, tenant: KeyServiceTenant) -> bytes:
    """The request document with each ContentKey's key as ``Data/Secret/PlainValue``."""
    return with_plain_keys(root, tenant.key)
