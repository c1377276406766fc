"""DoveRunner (formerly PallyCon) Multi-DRM, emulated from its public documentation.

Routes (the real service's paths): ``POST /ri/licenseManager.do`` for Widevine, PlayReady
and FairPlay, the license token's ``drm_type`` saying which one the body is for; and
``POST /ri/clearkey/licenseManager.do?siteId=<site id>&cid=<content id>`` for ClearKey
(see "ClearKey" below).

The license token (custom data v2) arrives in the ``pallycon-customdata-v2`` header, or in
the newer ``doverunner-customdata-v2`` header, or as a URL parameter of either name. It is
base64 of a JSON object ``{drm_type, site_id, user_id, cid, policy, timestamp, hash,
response_format, key_rotation}``. The emulator verifies it the way the service describes:

- ``site_id`` is this site's (else 1003);
- ``drm_type`` is exactly ``Widevine``, ``PlayReady`` or ``FairPlay`` (case-sensitive;
  absent means ``PlayReady``, the documented default), else 7018;
- ``hash`` = base64(SHA-256(access_key + drm_type + site_id + user_id + cid + policy +
  timestamp)), recomputed here with ``policy`` as the encrypted base64 text (else 7019);
- ``timestamp`` (UTC ``yyyy-mm-ddThh:mm:ssZ``) is within 600 s of now (else 7011);
- ``policy`` decrypts (AES-256-CBC, key = the 32-character site key as bytes, IV = the
  ASCII ``0123456789abcdef``, PKCS#7) to a JSON object (else 7013);
- ``cid`` is in the key store (else 7001: no packaging information for that content).

Bodies: Widevine and PlayReady send the CDM's challenge raw and get the (synthetic) license
raw; FairPlay sends ``spc=<base64 SPC>`` (a form) and gets the CKC as base64 text. Every
failure is HTTP 200 with ``{"errorCode": "<code>", "message": "..."}``. Only the
``original`` response format is emulated (``custom``/``json`` get 9999, unsupported mode).
Tokens are not single-use in the documentation, so no replay cache is kept. Not emulated:
a token inside PlayReady's own CustomData element, and HLS AES-128 key delivery.

ClearKey. What the sources give (DoveRunner's official license proxy samples, v2.3.0, 2025:
github.com/doverunner/drm-license-proxy-sample-java, src/main/resources/application.properties
and SampleService.getClearKeyLicense; github.com/doverunner/drm-license-proxy-sample-php,
src/Config/Config.php and ProxyService::getClearKeyLicense). The HTML5 player guide in the
docs source above (2020) has no ClearKey section; no newer page describing this URL could
be read, so these samples are the only description:

- path: ``/ri/clearkey/licenseManager.do`` on the license host (drm-license.doverunner.com),
  a URL of its own beside ``/ri/licenseManager.do``;
- parameters: ``siteId`` and ``cid``, in the query, spelt with that case (both samples);
- no license token: neither sample sends a custom-data header or parameter for ClearKey;
- answer: both samples hand the body back to the player unchanged, so it is what a ClearKey
  CDM accepts: a W3C ClearKey license, ``{"keys": [{"kty": "oct", "kid", "k"}], "type"}``
  (W3C Encrypted Media Extensions, "Clear Key", https://www.w3.org/TR/encrypted-media/#clear-key).
  Its content type is not shown; ``application/json`` here.

Where this emulator departs from the samples, and why: the samples call the URL with GET
and no body (the service knows a cid's key ids from packaging). The emulator derives keys
from key ids (``keys.derive_key``) and keeps no key-id list per content, so it takes the
ClearKey CDM's own license request, ``{"kids": [...], "type": ...}`` (the W3C format), as a
POST body and answers the key ids asked for; GET is not served (aiohttp's 405). Errors are
not documented for this URL; they are answered like the main path's (HTTP 200 +
``errorCode``) with the table's codes: 9001 (missing request parameter) when ``siteId`` or
``cid`` is absent, empty or repeated, or the body is not a ClearKey license request; 1003 for
another site id; 7001 for a cid outside the key store. Checked in that order: parameters,
site, content, body.

CPIX API (packaging keys). ``POST /v2/cpix/doverunner/getKey/{kms_token}``, the path of the
documented KMS URL V2 (https://drm-kms.doverunner.com/v2/cpix/doverunner/getKey/<token>;
CPIX API Guide, https://pallycon.com/docs/en/multidrm/packaging/cpix-api/): the last path
segment is the KMS token the console shows (secret ``kms_token``), the body a CPIX document
(``Content-Type: application/xml``) following DASH-IF CPIX 2.x: the root's ``id`` attribute
is the content id, a ContentKeyList holds ContentKeys whose ``kid`` is any UUID the caller
picks, a DRMSystemList names the DRM systems wanted. The answer is the same document with
each ContentKey given ``Data/pskc:Secret/pskc:PlainValue`` (base64 key); DRMSystem elements
are returned as sent (no PSSH filled in). The guide documents neither the statuses nor the
body of a refusal; this emulator's reading, from DoveRunner's Service API guide (401 when
the token is wrong or its user cannot be found): a KMS token other than this site's is 401,
a body that is not such a CPIX document (not well-formed, DTD, another root, no or empty
``id``, no ContentKey, a kid that is not a UUID, a repeated kid) is 400, a body over 1 MiB
413; each refusal is a plain-text message naming neither the token nor a key. The token is
compared in constant time and never recorded in ``request[VERIFIED]`` (the stats' path,
recorded by the common middleware, does hold it: the emulator's stats are a test tool).
Keys: this emulator's own rule, not DoveRunner's (which stores random keys per content and
kid), is ``HMAC-SHA256(key_seed, b"doverunner-emulator-cpix" + len(content id) as 4 bytes
big-endian + content id UTF-8 + kid's 16 bytes)[:16]`` (``cpix_key``), ``key_seed`` being the
base64 secret ``cpix_key_seed`` (16+ bytes): the same seed, content id and kid give the same
key on every request and restart, and another content id gives another key. Any content id
is accepted (the CPIX API registers content as it is packaged: the key store is not asked).

Sources: DoveRunner/PallyCon License Token Guide (token JSON, hash message, AES256 settings)
https://pallycon.com/docs/en/multidrm/license/license-token/ ; License Token Tutorial (the
sample values and outputs the tests reuse)
https://pallycon.com/docs/en/multidrm/license/license-token-tutorial/ ; License Error Code
table https://pallycon.com/docs/en/multidrm/license/license-errorcode/ ; Multi-DRM license
integration guide (path, header or URL parameter, FairPlay ``spc=`` body and base64 CKC,
errors as 200 + JSON; docs source github.com/daniel-inka/pallycon-docs-v3,
content/multidrm/license/multidrm-license.ko.md; the error table also as
content/multidrm/license/license-errorcode.en.md there) ; DoveRunner's license proxy samples
(github.com/doverunner/drm-license-proxy-sample-php: the ``doverunner-customdata-v2``
header; it and drm-license-proxy-sample-java: the ClearKey URL, see above).
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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.cpix import CPIX_NS, PSKC_NS, with_plain_keys
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.keys import clearkey_license, derivation_id_for
from proxy.dev.emulator.settings import EmulatorSettings

DEMO_SECRETS = {
    "site_id": "DEMO",
    "site_key": "demo0123456789abcdefghijklmnopqr",
    "access_key": "demoAccessKey0123456789abcdefghi",
    # The CPIX API: the KMS token ending the KMS URL, and the seed the emulator's keys derive
    # from (base64, 16+ bytes).
    "kms_token": "demo-kms-token-0123456789abcdefghijklmn",
    "cpix_key_seed": "ZW11bGF0ZWQtZG92ZXJ1bm5lci1jcGl4LXNlZWQtZG8tbm90LXVzZQ==",
}

LICENSE_PATH = "/ri/licenseManager.do"
CLEARKEY_PATH = "/ri/clearkey/licenseManager.do"
# The ClearKey URL's query parameters, spelt as the proxy samples spell them (case-sensitive).
CLEARKEY_SITE_PARAM = "siteId"
CLEARKEY_CID_PARAM = "cid"
TOKEN_NAMES = ("pallycon-customdata-v2", "doverunner-customdata-v2")
POLICY_IV = b"0123456789abcdef"
TOKEN_LIFETIME_SECONDS = 600
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# drm_type as the token spells it (case-sensitive) -> the emulator's DRM name.
DRM_TYPES = {"Widevine": "widevine", "PlayReady": "playready", "FairPlay": "fairplay"}
DEFAULT_DRM_TYPE = "PlayReady"
_TEXT_FIELDS = ("site_id", "user_id", "cid", "policy", "timestamp", "hash")
_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_BINARY = "application/octet-stream"

# The documented error codes this emulator answers, with its own short messages.
MESSAGES = {
    "1003": "Unknown site id.",
    "7001": "No packaging information for this content id.",
    "7009": "The token could not be parsed.",
    "7010": "No token data in the request.",
    "7011": "The token has expired.",
    "7013": "The token's policy is not valid JSON data.",
    "7016": "The token is not valid.",
    "7018": "The token's DRM type is not valid.",
    "7019": "The hash values do not match.",
    "7107": "The Widevine license challenge is not valid.",
    "7205": "The PlayReady license request could not be parsed.",
    "7305": "The FairPlay SPC is missing.",
    "7317": "The FairPlay SPC is not valid.",
    "9001": "A request parameter is missing or not valid.",
    "9999": "Unsupported mode.",
}


class Refused(Exception):
    """A request the service refuses: answered 200 with its ``errorCode``."""

    def __init__(self, code: str) -> None:
        super().__init__(MESSAGES[code])
        self.code = code


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """Register the license and ClearKey paths, after checking the site key fits AES-256."""
    if len(site_secrets(settings)["site_key"].encode()) != 32:
        raise ValueError("the doverunner site_key must be 32 bytes (AES-256)")
    app.router.add_post(LICENSE_PATH, handle_license, name="license:doverunner")
    app.router.add_post(CLEARKEY_PATH, handle_clearkey, name="license:clearkey")
    cpix_key_seed(site_secrets(settings))  # a bad seed fails at start, not per request
    app.router.add_post(CPIX_PATH, handle_cpix, name="keys:cpix")


def site_secrets(settings: EmulatorSettings) -> dict[str, str]:
    """The site's id and keys: the demo's, overridden by the settings' (``--secret``)."""
    return {**DEMO_SECRETS, **settings.secrets}


def error_answer(code: str) -> web.Response:
    """The service's error answer: HTTP 200 with a JSON ``errorCode``."""
    body = {"errorCode": code, "message": MESSAGES[code]}
    return web.json_response(body, status=200)


async def handle_license(request: web.Request) -> web.Response:
    """``POST /ri/licenseManager.do``: verify the token, answer in the token's DRM system."""
    try:
        return await _license(request)
    except Refused as refused:
        return error_answer(refused.code)


async def _license(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    secrets = site_secrets(settings)
    source, text = _token_text(request)
    token = parse_token(text)
    drm = verify_token(token, secrets, now=time.time())
    policy = decrypt_policy(token["policy"], secrets["site_key"])
    request[SEEN] = (drm, token["cid"])
    request[VERIFIED] = _verified(token, policy, source)
    _known_content(settings, token["cid"])
    if token.get("response_format", "original").lower() != "original":
        raise Refused("9999")
    body = await request.read()
    if drm == "fairplay":
        spc = read_spc(body)
        request[CHALLENGE] = spc
        ckc = synthetic_license(settings.name, drm, spc)
        return web.Response(body=base64.b64encode(ckc), content_type="text/plain")
    if not body:
        raise Refused("7107" if drm == "widevine" else "7205")
    request[CHALLENGE] = body
    return web.Response(body=synthetic_license(settings.name, drm, body), content_type=_BINARY)


async def handle_clearkey(request: web.Request) -> web.Response:
    """``POST /ri/clearkey/licenseManager.do?siteId=&cid=``: a W3C ClearKey license."""
    try:
        return await _clearkey(request)
    except Refused as refused:
        return error_answer(refused.code)


async def _clearkey(request: web.Request) -> web.Response:
    settings = request.app[STATE].settings
    site_id = _single_param(request, CLEARKEY_SITE_PARAM)
    cid = _single_param(request, CLEARKEY_CID_PARAM)
    request[SEEN] = ("clearkey", cid)
    if not _same(site_id, site_secrets(settings)["site_id"]):
        raise Refused("1003")
    derivation_id = _known_content(settings, cid)
    request[VERIFIED] = {"site_id": site_id, "cid": cid}
    body = await request.read()
    request[CHALLENGE] = body
    try:
        answer = clearkey_license(body, seed=settings.seed, derivation_id=derivation_id)
    except EmulatorError:  # not a W3C ClearKey license request
        raise Refused("9001") from None
    return web.Response(body=answer, content_type="application/json")


def _single_param(request: web.Request, name: str) -> str:
    """The one non-empty value of query parameter `name` (9001 if absent, empty or repeated)."""
    values = request.query.getall(name, [])
    if len(values) != 1 or not values[0]:
        raise Refused("9001")
    return values[0]


def _token_text(request: web.Request) -> tuple[str, str]:
    """(where the token came from, the token): headers first, then URL parameters."""
    for name in TOKEN_NAMES:
        value = request.headers.get(name)
        if value:
            return f"header:{name}", value
    for name in TOKEN_NAMES:
        value = request.query.get(name)
        if value:
            # An unencoded `+` in a URL reads as a space; base64 holds no spaces.
            return f"query:{name}", value.replace(" ", "+")
    raise Refused("7010")


def parse_token(text: str) -> dict[str, Any]:
    """The token JSON; 7009 if it is not base64 of a JSON object, 7016 if a field is wrong."""
    try:
        token = json.loads(base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError):
        raise Refused("7009") from None
    if not isinstance(token, dict):
        raise Refused("7009")
    token.setdefault("drm_type", DEFAULT_DRM_TYPE)
    texts_ok = all(isinstance(token.get(name), str) for name in ("drm_type", *_TEXT_FIELDS))
    rotation_ok = isinstance(token.get("key_rotation", False), bool)
    format_ok = isinstance(token.get("response_format", "original"), str)
    if not (texts_ok and rotation_ok and format_ok):
        raise Refused("7016")
    return token


def verify_token(token: Mapping[str, Any], secrets: Mapping[str, str], *, now: float) -> str:
    """Check site, DRM type, hash and timestamp, in that order; the DRM the token is for."""
    if not _same(token["site_id"], secrets["site_id"]):
        raise Refused("1003")
    drm = DRM_TYPES.get(token["drm_type"])
    if drm is None:
        raise Refused("7018")
    if not _same(token["hash"], token_hash(token, secrets["access_key"])):
        raise Refused("7019")
    if abs(now - _timestamp(token["timestamp"])) > TOKEN_LIFETIME_SECONDS:
        raise Refused("7011")
    return drm


def token_hash(token: Mapping[str, Any], access_key: str) -> str:
    """base64(SHA-256(access_key + drm_type + site_id + user_id + cid + policy + timestamp))."""
    fields = ("drm_type", "site_id", "user_id", "cid", "policy", "timestamp")
    message = access_key + "".join(token[name] for name in fields)
    return base64.b64encode(hashlib.sha256(message.encode()).digest()).decode()


def _timestamp(text: str) -> float:
    try:
        return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise Refused("7016") from None


def decrypt_policy(text: str, site_key: str) -> dict[str, Any]:
    """The policy JSON object; 7013 when it does not decrypt to one."""
    try:
        encrypted = base64.b64decode(text, validate=True)
        decryptor = Cipher(algorithms.AES(site_key.encode()), modes.CBC(POLICY_IV)).decryptor()
        padded = decryptor.update(encrypted) + decryptor.finalize()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        policy = json.loads(unpadder.update(padded) + unpadder.finalize())
    except (binascii.Error, ValueError):  # bad base64, length, padding, UTF-8 or JSON
        raise Refused("7013") from None
    if not isinstance(policy, dict):
        raise Refused("7013")
    return policy


def read_spc(body: bytes) -> bytes:
    """The SPC of a ``spc=<base64>`` form body (7305 if absent, 7317 if not an SPC)."""
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        fields = {}
    values = fields.get("spc", [])
    if len(values) != 1 or not values[0]:
        raise Refused("7305")
    try:
        spc = base64.b64decode(values[0], validate=True)
    except (binascii.Error, ValueError):
        raise Refused("7317") from None
    if not spc.startswith(_SPC_PREFIXES):
        raise Refused("7317")
    return spc


def _verified(token: Mapping[str, Any], policy: Mapping[str, Any], source: str) -> dict[str, Any]:
    """What the checks established (never the keys, the hash or the policy's values)."""
    return {
        "drm_type": token["drm_type"],
        "site_id": token["site_id"],
        "user_id": token["user_id"],
        "cid": token["cid"],
        "policy_keys": sorted(policy),
        "token_in": source,
    }


def _known_content(settings: EmulatorSettings, cid: str) -> str:
    """The id the content's keys derive from; 7001 (no packaging information) if unknown."""
    try:
        return derivation_id_for(settings.resources, cid)
    except EmulatorError:
        raise Refused("7001") from None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# --- the CPIX API (packaging keys) -----------------------------------------------------------

CPIX_PATH = "/v2/cpix/doverunner/getKey/{kms_token}"
MAX_CPIX_BODY = 1_048_576
_CPIX_LABEL = b"doverunner-emulator-cpix"
ET.register_namespace("cpix", CPIX_NS)
ET.register_namespace("pskc", PSKC_NS)


class CpixRefused(Exception):
    """A CPIX request refused with `status` and a plain-text message (no token, no key)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def cpix_key_seed(secrets: Mapping[str, str]) -> bytes:
    """The ``cpix_key_seed`` secret's bytes (ValueError unless base64 of 16+ bytes)."""
    try:
        seed = base64.b64decode(secrets["cpix_key_seed"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("doverunner: cpix_key_seed must be base64") from None
    if len(seed) < 16:
        raise ValueError("doverunner: cpix_key_seed must be 16+ bytes")
    return seed


def cpix_key(seed: bytes, content_id: str, kid: uuid.UUID) -> bytes:
    """This emulator's key for `kid` of `content_id` (the rule in the module docstring)."""
    cid = content_id.encode()
    message = _CPIX_LABEL + len(cid).to_bytes(4, "big") + cid + kid.bytes
    return hmac.new(seed, message, hashlib.sha256).digest()[:16]


async def handle_cpix(request: web.Request) -> web.Response:
    """``POST /v2/cpix/doverunner/getKey/{kms_token}``: the keys of every ContentKey."""
    secrets = site_secrets(request.app[STATE].settings)
    request[SEEN] = (None, None)
    if not _same(request.match_info["kms_token"], secrets["kms_token"]):
        return _cpix_refusal(CpixRefused(401, "Invalid KMS token."))
    body = await request.read()
    if len(body) > MAX_CPIX_BODY:
        return _cpix_refusal(CpixRefused(413, "The CPIX document is too large."))
    try:
        root, content_id, kids = read_cpix_request(body)
    except CpixRefused as refused:
        return _cpix_refusal(refused)
    request[SEEN] = (None, content_id)
    request[VERIFIED] = {"content_id": content_id, "key_ids": [kid.hex for kid in kids]}
    document = fill_cpix_answer(root, cpix_key_seed(secrets), content_id)
    return web.Response(body=document, content_type="application/xml", charset="utf-8")


def _cpix_refusal(refused: CpixRefused) -> web.Response:
    return web.Response(status=refused.status, text=refused.message, content_type="text/plain")


def read_cpix_request(body: bytes) -> tuple[ET.Element, str, list[uuid.UUID]]:
    """(root, content id, ContentKey kids) of a CPIX request; CpixRefused (400) otherwise."""
    try:
        root = parse_xml(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise CpixRefused(400, "The request is not a well-formed CPIX document.") from None
    if root.tag != f"{{{CPIX_NS}}}CPIX":
        raise CpixRefused(400, "The request is not a CPIX document.")
    content_id = root.get("id", "")
    if not content_id.strip():
        raise CpixRefused(400, "Missing CPIX@id (the content id).")
    elements = root.findall(f"{{{CPIX_NS}}}ContentKeyList/{{{CPIX_NS}}}ContentKey")
    if not elements:
        raise CpixRefused(400, "The CPIX document has no ContentKey.")
    kids: list[uuid.UUID] = []
    for element in elements:
        try:
            kid = uuid.UUID(element.get("kid", ""))
        except ValueError:
            raise CpixRefused(400, "Every ContentKey needs a kid that is a UUID.") from None
        if kid in kids:
            raise CpixRefused(400, f"ContentKey {kid} is listed twice.")
        kids.append(kid)
    return root, content_id, kids


def fill_cpix_answer(root: ET.Element, seed: bytes, content_id: str) -> bytes:
    """The request document with each ContentKey's key as ``Data/Secret/PlainValue``."""
    return with_plain_keys(root, lambda kid: cpix_key(seed, content_id, kid))
