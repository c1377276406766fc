"""The `doverunner` provider kind: DoveRunner (formerly PallyCon) Multi-DRM, token proxy mode.

Where each detail comes from:

- License token ("custom data v2"): DoveRunner/PallyCon "License Token Guide" (token JSON,
  policy v2, SHA-256 hash message, AES-256 settings; https://pallycon.com/docs/en/multidrm/
  license/license-token and its source, github.com/daniel-inka/pallycon-docs-v3
  content/multidrm/license/license-token.en.md) and the official token samples
  (github.com/doverunner/drm-license-token-sample-python, -java). The token is base64 of a
  JSON object: drm_type ("Widevine", "PlayReady", "FairPlay"; case-sensitive), site_id,
  user_id ("LICENSETOKEN" when there is no user), cid (our drmResourceId), policy, timestamp
  (UTC `yyyy-mm-ddThh:mm:ssZ`, valid 600 s by default), hash, response_format, key_rotation.
- policy = base64(AES-256-CBC(policy JSON, key = the 32-character site key as bytes,
  IV = b"0123456789abcdef", PKCS#7)); hash = base64(SHA-256(access key + drm_type + site_id +
  user_id + cid + policy + timestamp)), the digest's bytes (not hex) into base64. The
  "License Token Tutorial" publishes sample inputs and outputs: tests reproduce them.
- Where it goes: header `pallycon-customdata-v2` (Multi-DRM Native Client Integration Guide);
  DoveRunner's proxy samples send the newer `doverunner-customdata-v2`
  (github.com/doverunner/drm-license-proxy-sample-php); the header is configurable.
- License endpoint `/ri/licenseManager.do` for every DRM; Widevine and PlayReady challenges as
  the body (`application/octet-stream`, as the official proxy samples send them); FairPlay as
  the form `spc=<base64>`, the CKC answered as base64 text (Native Client Integration Guide).
- Failures are HTTP 200 with `{"errorCode": ..., "message": ...}`; the codes are those of the
  "License Error Code" page (pallycon-docs-v3 content/multidrm/license/license-errorcode.en.md).

- ClearKey: a separate, token-less URL (`/ri/clearkey/licenseManager.do`) with the site id and
  content id as the query parameters `siteId` and `cid` (DoveRunner's official proxy samples,
  github.com/doverunner/drm-license-proxy-sample-java `SampleService.getClearKeyLicense` and
  -php `ProxyService::getClearKeyLicense`). The samples fetch it with GET and no body; the
  gateway POSTs the player's W3C license request there instead (forwarded as sent, like every
  challenge), so the answer holds the key ids the player asked for. No public document says
  how the service takes a POST: confirm with DoveRunner before routing ClearKey to it.

HLS AES-128 keys are not served (no such drm_type or URL in the documents). Only
`response_format: original` is sent: players expect the DRM's own license bytes.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import REQUIRED, ConfigReader
from proxy.errors import (
    GatewayError,
    MissingResourceId,
    UpstreamAuthFailed,
)
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
)
from proxy.upstream.fairplay import FairPlayFormats
from proxy.upstream.transport import ProviderFault, ProviderTransport

HEADERS = ("pallycon-customdata-v2", "doverunner-customdata-v2")
DRM_TYPES: Mapping[str, str] = {
    "widevine": "Widevine",
    "playready": "PlayReady",
    "fairplay": "FairPlay",
}
CLEARKEY = "clearkey"  # served at its own token-less URL (see above)
NO_USER = "LICENSETOKEN"
POLICY_IV = b"0123456789abcdef"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
TOKEN_LIFETIME_SECONDS = 600  # how long the service accepts a token's timestamp (guide)
# The token's fields the hash covers, in order, after the access key (License Token Guide).
HASHED_FIELDS = ("drm_type", "site_id", "user_id", "cid", "policy", "timestamp")
SITE_KEY_LENGTH = 32
CHALLENGE_CONTENT_TYPE = "application/octet-stream"
# The License Error Code page, every code it lists (bounded `provider_error` labels).
KNOWN_ERRORS = frozenset(
    "1002 1003 1004 1005 1006 2001 2701 2702 7001 7002 7006 7007 7008 7009 7010 7011 7012 7013 "
    "7016 7017 7018 7019 7021 7101 7102 7103 7104 7105 7106 7107 7110 7111 7112 7113 7201 7202 "
    "7203 7204 7205 7206 7300 7301 7302 7303 7304 7305 7306 7308 7315 7316 7317 8002 8004 8006 "
    "8701 8705 8706 8707 8708 8709 8710 8711 8712 8715 8716 9001 9999".split()
)
# Codes that say our token is wrong: unknown site id, custom data or token unreadable or
# invalid (a wrong site key garbles the policy), expired (our clock), bad DRM type, hash
# mismatch (a wrong access key). The player can do nothing about these.
AUTH_ERRORS = frozenset(
    {"1003", "7007", "7008", "7009", "7010", "7011", "7013", "7016", "7018", "7019"}
)
_POLICY_FIELDS = {"policy_version", "playback_policy", "security_policy", "external_key"}
_OPTION_FIELDS = {"site_id", "site_key", "access_key", "header", "policy", "key_rotation"}
_SITE_ID = re.compile(r"^[A-Za-z0-9]{4}$")  # "Service Site ID (4 byte)" in the guides
# external_key members holding key material, and their length in hex characters.
_SECRET_KEY_FIELDS: Mapping[str, int] = {"key": 32, "cek": 64}
_HEX = re.compile(r"^[0-9a-fA-F]*$")


@dataclass(frozen=True, slots=True)
class DoveRunnerOptions:
    """The `doverunner` config section: site credentials, the header and the license policy.

    `policy_json` is the policy v2 JSON sent (encrypted) in every token; it holds external
    content keys when the config gives some, so it is never shown."""

    site_id: str
    site_key: bytes = field(repr=False)
    access_key: str = field(repr=False)
    policy_json: str = field(repr=False)
    header: str = HEADERS[0]
    key_rotation: bool = False


def parse_options(reader: ConfigReader, raw: Any, path: str) -> DoveRunnerOptions | None:
    """Read a provider's `doverunner` section, reporting every problem to `reader`."""
    if raw is None:
        reader.problem(path, "is missing, and has no default (site_id, site_key, access_key)")
        return None
    before = len(reader.problems)
    section = reader.mapping(raw, path, _OPTION_FIELDS)
    site_id = reader.value(section, "site_id", path, str, REQUIRED)
    if site_id is not None and not _SITE_ID.match(site_id):
        reader.problem(f"{path}.site_id", "must be the 4-character site id from the console")
    site_key = _site_key(reader, section, path)
    access_key = _required_secret(reader, section, "access_key", path)
    header = reader.value(section, "header", path, str, HEADERS[0])
    if header is not None and header.lower() not in HEADERS:
        reader.problem(f"{path}.header", f"must be one of {', '.join(HEADERS)}")
    policy = _policy(reader, section.get("policy"), f"{path}.policy")
    key_rotation = reader.value(section, "key_rotation", path, bool, False)
    if len(reader.problems) > before:
        return None
    assert site_id is not None and site_key is not None
    assert access_key is not None and policy is not None
    return DoveRunnerOptions(
        site_id=site_id,
        site_key=site_key,
        access_key=access_key,
        policy_json=json.dumps(policy, separators=(",", ":")),
        header=header.lower(),
        key_rotation=key_rotation,
    )


def _required_secret(
    reader: ConfigReader, section: Mapping[str, Any], name: str, path: str
) -> str | None:
    if name not in section:
        reader.problem(f"{path}.{name}", "is missing, and has no default")
        return None
    return reader.secret(section[name], f"{path}.{name}")


def _site_key(reader: ConfigReader, section: Mapping[str, Any], path: str) -> bytes | None:
    """The site key's characters are the AES-256 key itself, so there must be 32 of them."""
    value = _required_secret(reader, section, "site_key", path)
    if value is None:
        return None
    key = value.encode("utf-8")
    if len(key) != SITE_KEY_LENGTH:
        reader.problem(f"{path}.site_key", f"must be {SITE_KEY_LENGTH} characters (an AES-256 key)")
        return None
    return key


def _policy(reader: ConfigReader, raw: Any, path: str) -> dict[str, Any] | None:
    """The license policy v2 JSON; external key material comes from secrets only."""
    section = reader.mapping(raw, path, _POLICY_FIELDS)
    version = section.get("policy_version", 2)
    if version != 2 or isinstance(version, bool):
        reader.problem(f"{path}.policy_version", "must be 2 (license policy specification v2.0)")
    policy: dict[str, Any] = {"policy_version": 2}
    playback = section.get("playback_policy")
    if playback is not None:
        if not isinstance(playback, dict):
            reader.problem(f"{path}.playback_policy", "must be a mapping")
        policy["playback_policy"] = playback
    security = section.get("security_policy")
    if security is not None:
        tracks = security if isinstance(security, list) else [security]
        if not tracks or not all(isinstance(track, dict) for track in tracks):
            reader.problem(f"{path}.security_policy", "must be a mapping or a list of them")
        policy["security_policy"] = security
    if "external_key" in section:
        external = _resolve_key_material(reader, section["external_key"], f"{path}.external_key")
        if not isinstance(external, dict) or not external:
            reader.problem(f"{path}.external_key", "must be a non-empty mapping")
        policy["external_key"] = external
    return policy


def _resolve_key_material(reader: ConfigReader, node: Any, path: str) -> Any:
    """A copy of `node` whose `key`/`cek` members are read from their secret references."""
    if isinstance(node, list):
        return [_resolve_key_material(reader, item, f"{path}[{i}]") for i, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    resolved: dict[str, Any] = {}
    for name, value in node.items():
        where = f"{path}.{name}"
        if name in _SECRET_KEY_FIELDS:
            resolved[name] = _hex_secret(reader, value, where, _SECRET_KEY_FIELDS[name])
        else:
            resolved[name] = _resolve_key_material(reader, value, where)
    return resolved


def _hex_secret(reader: ConfigReader, raw: Any, path: str, length: int) -> str | None:
    value = reader.secret(raw, path)
    if value is not None and (len(value) != length or not _HEX.match(value)):
        reader.problem(path, f"must be {length} hexadecimal characters")
    return value


# --- the license token ------------------------------------------------------------------------


def encrypt_policy(policy_json: str, site_key: bytes) -> str:
    """base64(AES-256-CBC(policy JSON, site key, fixed IV, PKCS#7)), as the token carries it."""
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    data = padder.update(policy_json.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(site_key), modes.CBC(POLICY_IV)).encryptor()
    return base64.b64encode(encryptor.update(data) + encryptor.finalize()).decode("ascii")


def utc_timestamp(now: float) -> str:
    """The token's timestamp: UTC, `yyyy-mm-ddThh:mm:ssZ`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


class LicenseTokenBuilder:
    """Builds `pallycon-customdata-v2` values. What never changes per request is done once:
    the encrypted policy, the JSON around the per-request fields and, per DRM type, the
    hash state over access key + drm_type + site_id (SHA-256 is a stream: `copy` resumes it)."""

    def __init__(self, options: DoveRunnerOptions) -> None:
        self.policy = encrypt_policy(options.policy_json, options.site_key)
        tail = {"response_format": "original", "key_rotation": options.key_rotation}
        self._tail = "," + json.dumps(tail, separators=(",", ":"))[1:]
        self._policy_field = ',"policy":' + json.dumps(self.policy)
        self._policy_bytes = self.policy.encode("ascii")
        self._heads: dict[str, tuple[str, Any]] = {}
        for drm, drm_type in DRM_TYPES.items():
            fixed = {"drm_type": drm_type, "site_id": options.site_id}
            head = json.dumps(fixed, separators=(",", ":"))[:-1]
            prefix = options.access_key + drm_type + options.site_id
            self._heads[drm] = (head, hashlib.sha256(prefix.encode("utf-8")))
        self._second = -1
        self._timestamp = ""

    def build(self, drm: str, *, user_id: str, cid: str, timestamp: str | None = None) -> str:
        """The base64 token for one request (`timestamp` None: now)."""
        when = self._now() if timestamp is None else timestamp
        head, hash_prefix = self._heads[drm]
        hasher = hash_prefix.copy()
        hasher.update((user_id + cid).encode("utf-8"))
        hasher.update(self._policy_bytes)
        hasher.update(when.encode("ascii"))
        digest = base64.b64encode(hasher.digest()).decode("ascii")
        document = (
            f"{head},"
            f'"user_id":{json.dumps(user_id)},"cid":{json.dumps(cid)}{self._policy_field},'
            f'"timestamp":"{when}","hash":"{digest}"{self._tail}'
        )
        return base64.b64encode(document.encode("utf-8")).decode("ascii")

    def _now(self) -> str:
        """The current timestamp, formatted once per second."""
        second = int(time.time())
        if second != self._second:
            self._second, self._timestamp = second, utc_timestamp(second)
        return self._timestamp


# --- answers ----------------------------------------------------------------------------------


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """DoveRunner's `{"errorCode", "message"}` answer (HTTP 200 as documented, any status
    accepted); codes meaning our token is wrong become UpstreamAuthFailed."""
    if body.lstrip()[:1] != b"{":  # licenses are binary, XML or base64: never JSON
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    code = document.get("errorCode") if isinstance(document, dict) else None
    if code is None or isinstance(code, bool | dict | list):
        return None
    text = str(code)
    return ProviderFault(text, _auth_failed if text in AUTH_ERRORS else None)


def _auth_failed(_: int) -> GatewayError:
    return UpstreamAuthFailed()


# --- the client -------------------------------------------------------------------------------


class DoveRunnerProvider(Adapter):
    """A DoveRunner license service, reached with a license token built per request."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(settings, read_fault=read_fault, known_errors=KNOWN_ERRORS)
        super().__init__(settings, transport)
        options = options_of(settings, DoveRunnerOptions)
        self.header = options.header
        self.site_id = options.site_id
        self.tokens = LicenseTokenBuilder(options)

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        if call.drm == CLEARKEY:
            return await self._clearkey(call, endpoint)
        return await self._post(call, endpoint, call.challenge, CHALLENGE_CONTENT_TYPE)

    async def _clearkey(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """The player's W3C request to the ClearKey URL, named by site id and content id."""
        query = f"siteId={quote(self.site_id, safe='')}&cid={quote(_cid(call), safe='')}"
        return await self.transport.post(
            call, endpoint, call.challenge, content_type="application/json", query=query
        )

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        # Form in, base64 CKC out; no assetId: DoveRunner's form has the spc field only (the
        # cid is in the token).
        body, content_type = self.spc_body(call)
        return self.ckc_answer(await self._post(call, endpoint, body, content_type))

    async def _post(
        self, call: Call, endpoint: UrlTemplate, body: bytes, content_type: str
    ) -> ProviderAnswer:
        cid = _cid(call)
        token = self.tokens.build(call.drm, user_id=call.client.user_id or NO_USER, cid=cid)
        self.tokens_signed.inc()
        headers = {self.header: token}
        return await self.transport.post(
            call, endpoint, body, content_type=content_type, headers=headers
        )


def _cid(call: Call) -> str:
    """The content id DoveRunner knows the asset by: its drmResourceId."""
    cid = call.entry.drm_resource_id
    if cid is None:  # the routing guard never sends such an asset here
        raise MissingResourceId()
    return cid


def decode_token(token: str) -> dict[str, Any]:
    """The JSON inside a token (for `drm-gateway token` and tests); ValueError if garbled."""
    try:
        document = json.loads(base64.b64decode(token, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not a DoveRunner license token") from exc
    if not isinstance(document, dict):
        raise ValueError("not a DoveRunner license token")
    return document


def decrypt_policy(policy: str, site_key: bytes) -> dict[str, Any]:
    """The policy JSON object a token's `policy` field encrypts (`encrypt_policy` undone);
    ValueError when it is not base64 or does not decrypt with `site_key` to a JSON object."""
    try:
        data = base64.b64decode(policy, validate=True)
        decryptor = Cipher(algorithms.AES(site_key), modes.CBC(POLICY_IV)).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = padding.PKCS7(algorithms.AES.block_size).unpadder()
        document = json.loads(unpadder.update(padded) + unpadder.finalize())
    except (ValueError, RecursionError) as exc:  # binascii and Unicode errors included
        raise ValueError("the policy does not decrypt with the site key") from exc
    if not isinstance(document, dict):
        raise ValueError("the policy does not decrypt with the site key")
    return document


def mask_key_material(policy: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a decrypted policy with its external content keys replaced, for display."""
    masked = dict(policy)
    if "external_key" in masked:
        masked["external_key"] = _masked(masked["external_key"])
    return masked


def _masked(node: Any) -> Any:
    if isinstance(node, list):
        return [_masked(item) for item in node]
    if isinstance(node, dict):
        return {
            name: "(secret, not shown)" if name in _SECRET_KEY_FIELDS else _masked(value)
            for name, value in node.items()
        }
    return node


def token_hash(access_key: str, document: Mapping[str, Any]) -> str:
    """The `hash` a token with these fields must carry: base64(SHA-256(access key + drm_type +
    site_id + user_id + cid + policy + timestamp)), absent fields taken as empty."""
    message = access_key + "".join(str(document.get(name, "")) for name in HASHED_FIELDS)
    return base64.b64encode(hashlib.sha256(message.encode("utf-8")).digest()).decode("ascii")


def parse_timestamp(text: str) -> float:
    """A token's `yyyy-mm-ddThh:mm:ssZ` timestamp as seconds since the epoch; ValueError."""
    return float(calendar.timegm(time.strptime(text, TIMESTAMP_FORMAT)))


KIND = ProviderKind(
    client=DoveRunnerProvider,
    drms=frozenset({*DRM_TYPES, CLEARKEY}),
    needs_drm_resource_id=True,
    fairplay=FairPlayFormats("form", "base64"),
    options=parse_options,
)
