"""A provider's key API, as the gateway calls it: CPIX key generation, key export, key ingest.

    KeyApiClient(provider, settings)
        generate(resource_id, kids) -> {kid: key}   POST /v2/cpix (a minimal CPIX 2.3 document)
        export(resource_id, kids)   -> {kid: key}   GET  /v2/keys/{resource}?kid=...
        ingest(resource_id, keys)   -> IngestResult PUT  /v2/keys/{resource}
        close()
    key_clients(providers) -> {name: KeyApiClient} for the providers with a `key_api` section

With `key_api.protocol: speke` the provider is a SPEKE v2 endpoint (e.g. Axinom's Key Service
.../api/SpekeV2): `generate` posts the same minimal CPIX 2.3 document to `base_url` itself
with `X-Speke-Version: 2.0` and reads the keys from the answer; `export` and `ingest` raise
KeyApiError `not_supported` (not retryable): such a provider can be a `keys:` source, never
a mirror nor a backfill source or destination. The credential is the bearer token or HTTP
Basic, as configured.

With `key_api.protocol: doverunner_cpix` the provider is DoveRunner's (formerly PallyCon's)
CPIX API: `generate` posts a minimal CPIX document (root `id` = the content id, one
ContentKey per kid, one Widevine DRMSystem per kid; `build_doverunner_cpix_request`) to
`base_url` + `/` + the percent-encoded KMS token, with no Authorization header, and reads the
keys (pskc PlainValue) from the answer; export and ingest are `not_supported` as for speke.
The request URL then holds the KMS token: no message, log line or repr shows a URL.

Every call is one HTTP request (no retry here: callers decide, since all three are idempotent
for given key ids) over a keep-alive aiohttp session with verified TLS, the provider's
timeouts, no redirects followed and a bounded answer. Each failure is one `KeyApiError` with a
bounded `code` and whether trying again may help. Keys are returned to the caller and kept
nowhere else; no message, log line or repr holds a key or the bearer token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as parse_xml

from proxy.config.providers import KeyApiSettings, ProviderSettings
from proxy.domain import AES_KEY_BYTES, KeyId, parse_key_id
from proxy.errors import InvalidId

CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
# Key ids per export request (the provider may cap them; a title has a handful).
EXPORT_BATCH = 100
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# The SPEKE version asked of a `protocol: speke` endpoint.
SPEKE_VERSION = "2.0"
# The Widevine DRM system id (DASH-IF registry), named in a doverunner_cpix request.
WIDEVINE_SYSTEM_ID = "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"
# Statuses after which the same request may succeed later.
_RETRYABLE_STATUSES = frozenset({408, 425, 429})
T = TypeVar("T")
ET.register_namespace("cpix", CPIX_NS)


class KeyApiError(Exception):
    """A key API call failed.

    `code` is bounded: the provider's `errorCode` (when it is a plain token), or `timeout`,
    `connect`, `bad_answer`, `http_<status>`. `status` is the HTTP status (None: no answer).
    `retryable`: the same call may succeed later (timeouts, resets, 5xx, 429). The message
    names the provider, the operation and the resource, never a key or the token.
    """

    def __init__(
        self, provider: str, code: str, message: str, *, status: int | None, retryable: bool
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = code
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest did: keys newly stored, and keys the provider already had (same value)."""

    stored: int
    already_present: int


class KeyApiClient:
    """One provider's key API (see the module docstring)."""

    def __init__(self, provider: str, settings: KeyApiSettings) -> None:
        self.provider = provider
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"KeyApiClient({self.provider!r}, {self.settings.base_url!r})"

    def resource_id(self, asset_id: str, drm_resource_id: str | None) -> str | None:
        """The id this provider's key API knows a title by (None: the title lacks it)."""
        return self.settings.resource_id(asset_id, drm_resource_id)

    async def generate(self, resource_id: str, kids: Sequence[KeyId]) -> dict[KeyId, bytes]:
        """The provider's key for each of `kids` of `resource_id`: the one it stores, or a new
        random one it creates and stores (POST /v2/cpix)."""
        _check_kids(kids)
        body = build_cpix_request(resource_id, kids)
        headers = {"Content-Type": "application/xml", "Accept": "application/xml"}
        url = self.settings.base_url + "/v2/cpix"
        reader: Callable[[bytes], dict[KeyId, bytes]] = read_cpix_keys
        if self.settings.protocol == "speke":  # base_url is the SPEKE endpoint itself
            headers["X-Speke-Version"] = SPEKE_VERSION
            url = self.settings.base_url
        elif self.settings.protocol == "doverunner_cpix":  # the KMS token ends the URL
            body = build_doverunner_cpix_request(resource_id, kids)
            url = self.settings.request_url
            reader = _doverunner_reader(resource_id)
        answer = await self._call("generate", resource_id, "POST", url, body, headers)
        keys = self._read(answer, "generate", resource_id, reader)
        return self._exactly(keys, kids, "generate", resource_id)

    async def export(self, resource_id: str, kids: Sequence[KeyId]) -> dict[KeyId, bytes]:
        """The provider's key for each of `kids` of `resource_id` (GET /v2/keys/...)."""
        self._check_supported("export", resource_id)
        _check_kids(kids)
        keys: dict[KeyId, bytes] = {}
        for start in range(0, len(kids), EXPORT_BATCH):
            batch = kids[start : start + EXPORT_BATCH]
            query = urlencode([("kid", kid) for kid in batch])
            url = f"{self.settings.base_url}{_keys_path(resource_id)}?{query}"
            answer = await self._call("export", resource_id, "GET", url)
            found = self._read(answer, "export", resource_id, _export_reader(resource_id))
            keys.update(self._exactly(found, batch, "export", resource_id))
        return keys

    async def ingest(self, resource_id: str, keys: Mapping[KeyId, bytes]) -> IngestResult:
        """Store `keys` for `resource_id` at the provider, idempotently (PUT /v2/keys/...)."""
        self._check_supported("ingest", resource_id)
        _check_kids(list(keys))
        if any(len(key) != AES_KEY_BYTES for key in keys.values()):
            raise ValueError(f"every key must be {AES_KEY_BYTES} bytes")
        document = {"keys": [{"kid": kid, "key": _b64(key)} for kid, key in keys.items()]}
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json"}
        url = self.settings.base_url + _keys_path(resource_id)
        answer = await self._call("ingest", resource_id, "PUT", url, body, headers)
        return self._read(answer, "ingest", resource_id, _read_ingest)

    def _check_supported(self, operation: str, resource_id: str) -> None:
        """A SPEKE endpoint or DoveRunner's CPIX API only generates keys: export and ingest
        are KeyApiError `not_supported` (not retryable), raised before any request."""
        protocol = self.settings.protocol
        if protocol == "native":
            return
        message = (
            f"{self.provider} key API: {operation} of resource {resource_id!r} is not "
            f"supported: its key_api protocol is {protocol} (key generation only), so this "
            "provider can be a keys: source but not a mirror nor a backfill source or "
            "destination"
        )
        raise self._error("not_supported", message)

    async def close(self) -> None:
        """Close the connections (idempotent; the next call opens new ones)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- HTTP ------------------------------------------------------------------------------

    def _open(self) -> aiohttp.ClientSession:
        """The session, created on first use (inside the running loop)."""
        if self._session is None:
            settings = self.settings
            # doverunner_cpix: the KMS token is in the URL, no Authorization header.
            authorization = (
                {}
                if settings.protocol == "doverunner_cpix"
                else {"Authorization": settings.authorization}
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=True, limit=64),  # ssl=True: verified
                timeout=aiohttp.ClientTimeout(
                    total=settings.total_timeout, sock_connect=settings.connect_timeout
                ),
                headers=authorization,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self._session

    async def _call(
        self,
        operation: str,
        resource_id: str,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send one request; the body of a 2xx answer, else KeyApiError. The URL may hold a
        secret (doverunner_cpix): no message made here names it, nor the exception's text
        (only its type), and the exception is not chained."""
        where = f"{self.provider} key API: {operation} of resource {resource_id!r}"
        try:
            async with self._open().request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                data = await self._bounded_body(response, where)
                status = response.status
        except TimeoutError:
            raise self._error("timeout", f"{where} timed out", None, retryable=True) from None
        except aiohttp.ClientError as exc:
            message = f"{where} failed ({type(exc).__name__})"
            raise self._error("connect", message, None, retryable=True) from None
        if not 200 <= status < 300 or _looks_like_error(data):
            raise self._refused(status, data, where)
        return data

    async def _bounded_body(self, response: aiohttp.ClientResponse, where: str) -> bytes:
        limit = self.settings.max_answer_bytes
        if response.content_length is not None and response.content_length > limit:
            raise self._error("bad_answer", f"{where}: the answer is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(65_536):
            size += len(chunk)
            if size > limit:
                raise self._error("bad_answer", f"{where}: the answer is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _refused(self, status: int, data: bytes, where: str) -> KeyApiError:
        """The error for a refusal: the provider's own code where it gives a plain one."""
        code = _provider_code(data) or f"http_{status}"
        retryable = status >= 500 or status in _RETRYABLE_STATUSES or 200 <= status < 300
        return self._error(code, f"{where} answered {status} {code}", status, retryable=retryable)

    def _error(
        self, code: str, message: str, status: int | None = None, *, retryable: bool = False
    ) -> KeyApiError:
        return KeyApiError(self.provider, code, message, status=status, retryable=retryable)

    def _read(
        self, data: bytes, operation: str, resource_id: str, reader: Callable[[bytes], T]
    ) -> T:
        """`reader(data)`, a ValueError turned into KeyApiError `bad_answer`."""
        try:
            return reader(data)
        except ValueError as exc:
            where = f"{self.provider} key API: {operation} of resource {resource_id!r}"
            raise self._error("bad_answer", f"{where}: {exc}", 200) from None

    def _exactly(
        self, keys: Mapping[KeyId, bytes], kids: Sequence[KeyId], operation: str, resource: str
    ) -> dict[KeyId, bytes]:
        """The keys of `kids` only (an export also lists the resource's other keys); a kid the
        answer lacks is a `bad_answer`."""
        missing = [kid for kid in kids if kid not in keys]
        if missing:
            where = f"{self.provider} key API: {operation} of resource {resource!r}"
            message = f"{where}: the answer lacks key id {missing[0]}"
            raise self._error("bad_answer", message, 200)
        return {kid: keys[kid] for kid in kids}


def key_clients(providers: Mapping[str, ProviderSettings]) -> dict[str, KeyApiClient]:
    """A KeyApiClient per provider that has a `key_api` section."""
    return {
        name: KeyApiClient(name, settings.key_api)
        for name, settings in providers.items()
        if settings.key_api is not None
    }


# --- documents (pure) ------------------------------------------------------------------------


def build_cpix_request(resource_id: str, kids: Sequence[KeyId]) -> bytes:
    """A minimal CPIX 2.3 document asking for the keys of `kids`: one ContentKey per kid,
    without Data (the provider fills it)."""
    root = ET.Element(f"{{{CPIX_NS}}}CPIX", {"contentId": resource_id, "version": "2.3"})
    key_list = ET.SubElement(root, f"{{{CPIX_NS}}}ContentKeyList")
    for kid in kids:
        attributes = {"kid": str(uuid.UUID(hex=kid)), "commonEncryptionScheme": "cenc"}
        ET.SubElement(key_list, f"{{{CPIX_NS}}}ContentKey", attributes)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def build_doverunner_cpix_request(content_id: str, kids: Sequence[KeyId]) -> bytes:
    """A minimal CPIX document for DoveRunner's CPIX API: root `id` = the content id (CPIX
    2.x style), one ContentKey per kid (no Data: the provider fills it) and one Widevine
    DRMSystem per kid."""
    root = ET.Element(f"{{{CPIX_NS}}}CPIX", {"id": content_id})
    key_list = ET.SubElement(root, f"{{{CPIX_NS}}}ContentKeyList")
    drm_list = ET.Element(f"{{{CPIX_NS}}}DRMSystemList")
    for kid in kids:
        text = str(uuid.UUID(hex=kid))
        ET.SubElement(key_list, f"{{{CPIX_NS}}}ContentKey", {"kid": text})
        attributes = {"kid": text, "systemId": WIDEVINE_SYSTEM_ID}
        ET.SubElement(drm_list, f"{{{CPIX_NS}}}DRMSystem", attributes)
    root.append(drm_list)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _doverunner_reader(content_id: str) -> Callable[[bytes], dict[KeyId, bytes]]:
    """The keys of a DoveRunner CPIX answer, which must not name another content id."""

    def read(data: bytes) -> dict[KeyId, bytes]:
        root = _cpix_root(data)
        answered = root.get("id")
        if answered is not None and answered != content_id:
            raise ValueError("the answer names another content id")
        return _content_keys(root)

    return read


def read_cpix_keys(data: bytes) -> dict[KeyId, bytes]:
    """kid -> key of every ContentKey of a CPIX answer (defusedxml: no DTD, no entities)."""
    return _content_keys(_cpix_root(data))


def _cpix_root(data: bytes) -> ET.Element:
    """The root of a CPIX answer, parsed once with defusedxml (no DTD, no entities)."""
    try:
        root = parse_xml(data, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException):
        raise ValueError("the CPIX answer is not well-formed XML without a DTD") from None
    if root.tag != f"{{{CPIX_NS}}}CPIX":
        raise ValueError("the answer is not a CPIX document")
    return root


def _content_keys(root: ET.Element) -> dict[KeyId, bytes]:
    keys: dict[KeyId, bytes] = {}
    for number, element in enumerate(root.iter(f"{{{CPIX_NS}}}ContentKey"), start=1):
        kid = _uuid_kid(element.get("kid", ""), number)
        path = f"{{{CPIX_NS}}}Data/{{{PSKC_NS}}}Secret/{{{PSKC_NS}}}PlainValue"
        value = element.find(path)
        if value is None:
            raise ValueError(f"ContentKey #{number} carries no Data/Secret/PlainValue")
        keys[kid] = _key("".join((value.text or "").split()), f"ContentKey #{number}")
    return keys


def _export_reader(resource_id: str) -> Callable[[bytes], dict[KeyId, bytes]]:
    def read(data: bytes) -> dict[KeyId, bytes]:
        document = _json_object(data)
        if document.get("resource_id") != resource_id:
            raise ValueError("the answer names another resource")
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError('the answer has no "keys" list')
        keys: dict[KeyId, bytes] = {}
        for number, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict):
                raise ValueError(f"keys[{number}] is not an object")
            kid = _hex_kid(entry.get("kid"), number)
            keys[kid] = _key(entry.get("key"), f"keys[{number}]")
        return keys

    return read


def _read_ingest(data: bytes) -> IngestResult:
    document = _json_object(data)
    stored, present = document.get("stored"), document.get("already_present")
    if not _count(stored) or not _count(present):
        raise ValueError('the answer lacks the "stored" and "already_present" counts')
    assert isinstance(stored, int) and isinstance(present, int)
    return IngestResult(stored=stored, already_present=present)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the answer is not JSON") from None
    if not isinstance(document, dict):
        raise ValueError("the answer is not a JSON object")
    return document


def _provider_code(data: bytes) -> str | None:
    """The `errorCode` of a JSON error answer, if it is a plain bounded token."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    code = document.get("errorCode") if isinstance(document, dict) else None
    return code if isinstance(code, str) and _ERROR_CODE.match(code) else None


def _looks_like_error(data: bytes) -> bool:
    """A 2xx answer that is a JSON error (`{"errorCode": ...}`) rather than the document."""
    return data[:1] == b"{" and b'"errorCode"' in data and _provider_code(data) is not None


def _check_kids(kids: Sequence[KeyId]) -> None:
    if not kids:
        raise ValueError("no key ids given")


def _keys_path(resource_id: str) -> str:
    return f"/v2/keys/{quote(resource_id, safe='')}"


def _uuid_kid(text: str, number: int) -> KeyId:
    try:
        return KeyId(uuid.UUID(text).hex)
    except ValueError:
        raise ValueError(f"ContentKey #{number} has no UUID kid") from None


def _hex_kid(text: object, number: int) -> KeyId:
    try:
        return parse_key_id(text) if isinstance(text, str) else parse_key_id("")
    except InvalidId:
        raise ValueError(f"keys[{number}] has no 32-hex kid") from None


def _key(text: object, where: str) -> bytes:
    """A standard-base64 16-byte key; the message never shows the value."""
    try:
        key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != AES_KEY_BYTES:
        raise ValueError(f"{where}: the key is not {AES_KEY_BYTES} bytes of base64")
    return key


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")
