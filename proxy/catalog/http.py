"""The HTTP read-through catalog backend: a metadata service asked one asset at a time.

Lookup: `GET {base_url}/assets/{asset_id}` (the asset id percent-encoded as one path
segment), with `Accept: application/json` and the configured auth header. The answers:

- 200 with a JSON object (other fields are ignored, so the service may add some):

      {"asset_id": "movie-1",             # required, the id asked for
       "drm_resource_id": "res-1" | null, # required; null: not propagated yet
       "key_holders": ["legacy"] | null,  # optional, default null (unknown: any provider)
       "tags": ["kids"],                  # optional, default []
       "key_ids": ["00112233445566778899aabbccddeeff"]}  # optional, default [] (or null)

  Ids, provider names, tags and key ids follow the importer's rules (`catalog import`): a key
  id is 32 hex digits (a GUID 8-4-4-4-12 is accepted too), kept as lowercase hex, duplicates
  dropped. `drm_resource_id` must be present, even as null: a service that renamed the field
  would otherwise send every asset to the legacy provider without a word.
- 404: the asset is unknown (None; the cache in front remembers it for the negative TTL).
- Anything else (3xx, other 4xx, 5xx, a timeout, a refused or broken connection, an answer
  over the size cap, not JSON, a field of the wrong type or form, another asset's id) raises
  CatalogUnavailable. The cause is logged once per distinct failure, with the service's base
  URL and what broke; never the answer's body or the token.

Readiness (`ping`): `HEAD {base_url}` with the auth header. The service is up when it answers
with anything but a 5xx, 401, 403 or 407: a base URL may well have no page of its own (404,
405), but a refused credential would fail every lookup.

It uses the gateway's lean HTTP client (`proxy.upstream.http`), the one the providers use: one
keep-alive pool per origin, connect and total timeouts, a response size cap, TLS verified
against the system's CAs (plus `ca_file`), and the origin parsed once here.
"""

from __future__ import annotations

import re
import ssl
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

import orjson

from proxy.catalog.base import CatalogEntry, HttpCatalogSettings

# The importer's own patterns, so an id the HTTP service sends is valid exactly when the
# same id in an import file would be. Importing them has no side effect.
from proxy.catalog.importer import _ID, _KEY_ID, _PROVIDER, _TAG
from proxy.errors import CatalogUnavailable
from proxy.observability.logs import FailureLog, get_logger
from proxy.upstream.http.client import HttpClient, HttpClientError, Origin, parse_origin

log = get_logger("catalog")

_NOT_READY = frozenset({401, 403, 407})
_ACCEPT = ("Accept", "application/json")


class BadAnswer(Exception):
    """The service's answer is not one the schema allows; the message names what is wrong
    (a field, a status), never a value from the answer."""


def parse_base_url(base_url: str) -> tuple[Origin, str]:
    """The origin and path prefix (no trailing slash) of `base_url`; ValueError if it is not
    an absolute http(s) URL without query, fragment or credentials."""
    scheme, sep, rest = base_url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError("must be an absolute http:// or https:// URL")
    if "?" in rest or "#" in rest:
        raise ValueError("must have no query or fragment")
    authority, slash, path = rest.partition("/")
    if any(char <= " " or char > "~" for char in path):
        raise ValueError("its path has unencoded characters")
    try:
        origin = parse_origin(scheme, authority)
    except HttpClientError as exc:
        raise ValueError(str(exc)) from None
    return origin, (slash + path).rstrip("/")


class HttpCatalog:
    """A Catalog reading one asset per request from a metadata service (see the module)."""

    def __init__(self, settings: HttpCatalogSettings, *, client: HttpClient | None = None) -> None:
        self._base_url = settings.base_url
        self._origin, self._prefix = parse_base_url(settings.base_url)
        headers = [_ACCEPT]
        if settings.auth_header is not None and settings.token is not None:
            headers.append((settings.auth_header, settings.token))
        self._headers = tuple(headers)
        self._client = client or HttpClient(
            max_connections=settings.max_connections,
            connect_timeout=settings.connect_timeout,
            total_timeout=settings.total_timeout,
            max_response_bytes=settings.max_response_bytes,
            ssl_context=_ssl_context(settings) if self._origin.tls else None,
        )
        self._failures = FailureLog(log, "catalog_unavailable", url=self._base_url)

    def __repr__(self) -> str:
        return f"HttpCatalog({self._base_url!r})"

    @property
    def base_url(self) -> str:
        """The metadata service's base URL (no secret: credentials in it are refused)."""
        return self._base_url

    async def get(self, asset_id: str) -> CatalogEntry | None:
        """Look up one asset; None when the service says 404, CatalogUnavailable otherwise."""
        target = f"{self._prefix}/assets/{quote(asset_id, safe='')}"
        try:
            response = await self._client.request(
                "GET", (self._origin, target), headers=self._headers
            )
            if response.status == 404:
                entry = None
            elif response.status != 200:
                raise BadAnswer(f"status {response.status}")
            else:
                entry = decode_entry(asset_id, response.body)
        except (TimeoutError, HttpClientError, BadAnswer) as exc:
            self._failures.failed(exc)
            raise CatalogUnavailable() from exc
        self._failures.recovered()
        return entry

    async def ping(self) -> None:
        """Raise CatalogUnavailable unless `HEAD {base_url}` answers (see the module)."""
        try:
            response = await self._client.request(
                "HEAD", (self._origin, self._prefix or "/"), headers=self._headers
            )
            if response.status >= 500 or response.status in _NOT_READY:
                raise BadAnswer(f"readiness probe got status {response.status}")
        except (TimeoutError, HttpClientError, BadAnswer) as exc:
            self._failures.failed(exc)
            raise CatalogUnavailable() from exc
        self._failures.recovered()

    async def close(self) -> None:
        """Close the connections to the service."""
        await self._client.close()


def _ssl_context(settings: HttpCatalogSettings) -> ssl.SSLContext:
    """The system's CAs, plus `ca_file`; hostname and chain always verified.

    Raises CatalogUnavailable (the cause says why) when `ca_file` holds no certificate."""
    try:
        return create_ssl_context(settings.ca_file)
    except OSError as exc:  # ssl.SSLError included
        log.warning("catalog_unavailable", url=settings.base_url, error=type(exc).__name__)
        raise CatalogUnavailable() from exc


def create_ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context trusting the system's CAs and those in `ca_file`; OSError
    (ssl.SSLError among them) when the file cannot be read or holds no certificate."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context


def decode_entry(asset_id: str, body: bytes) -> CatalogEntry:
    """The CatalogEntry in a 200 answer's body for `asset_id`; BadAnswer if the body does not
    follow the schema (see the module)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadAnswer("the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise BadAnswer("the answer is not a JSON object")
    if answer.get("asset_id") != asset_id:
        raise BadAnswer("field 'asset_id' is missing or names another asset")
    if "drm_resource_id" not in answer:
        raise BadAnswer("field 'drm_resource_id' is missing (null when not propagated)")
    drm_resource_id = answer["drm_resource_id"]
    if drm_resource_id is not None and not _is_match(_ID, drm_resource_id):
        raise BadAnswer("field 'drm_resource_id' is not a valid id or null")
    holders = answer.get("key_holders")
    if holders is not None:
        holders = _name_set(_strings(holders, "key_holders", _PROVIDER))
    return CatalogEntry(
        asset_id=asset_id,
        drm_resource_id=drm_resource_id,
        key_holders=holders,
        tags=_name_set(_strings(answer.get("tags", []), "tags", _TAG)),
        key_ids=_key_ids(answer.get("key_ids", [])),
    )


def _is_match(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _strings(value: object, name: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    """`value` as a sorted tuple of distinct strings, each matching `pattern`."""
    if not isinstance(value, list) or not all(_is_match(pattern, item) for item in value):
        raise BadAnswer(f"field '{name}' is not a list of valid names")
    return tuple(sorted(set(value)))


@lru_cache(maxsize=4096)
def _name_set(names: tuple[str, ...]) -> frozenset[str]:
    # Few distinct key-holder and tag sets exist: cached entries share them (as in SQLite's).
    return frozenset(names)


def _key_ids(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(_is_match(_KEY_ID, item) for item in value):
        raise BadAnswer("field 'key_ids' is not a list of key ids (32 hex digits or a GUID)")
    return tuple(dict.fromkeys(item.replace("-", "").lower() for item in value))
