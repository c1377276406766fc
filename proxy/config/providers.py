"""Provider settings: URL templates, upstream auth (none, static header, signed JWT), FairPlay
formats, timeouts. Parsed from the `providers` section of the config."""

from __future__ import annotations

import base64
import ipaddress
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

from proxy.config.reader import REQUIRED, ConfigReader
from proxy.domain import KEY_DRM, LICENSE_DRMS
from proxy.routing.rules import ProviderTraits
from proxy.upstream.fairplay import REQUEST_FORMATS, RESPONSE_FORMATS, FairPlayFormats
from proxy.upstream.http.client import Address, InvalidRequest, Origin, parse_origin
from proxy.upstream.signer import (
    ALGORITHMS,
    DEFAULT_TOKEN_HEADER,
    DEFAULT_TOKEN_LIFETIME,
    SigningKey,
    TokenSettings,
    decode_hmac_secret,
    validate_settings,
)

if TYPE_CHECKING:
    from proxy.upstream.base import ProviderKind

URL_PLACEHOLDERS = frozenset({"asset_id", "drm_resource_id", "key_id", "drm"})
PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """A URL with `{placeholders}` whose values are always percent-encoded (never `/`).

    Where the scheme and host hold no placeholder, the origin is parsed here, once, and
    `address` renders only the path and query per request."""

    template: str
    fields: frozenset[str]
    _parts: tuple[tuple[str, str | None], ...] = field(repr=False, compare=False)
    origin: Origin | None = field(default=None, repr=False, compare=False)
    _target: tuple[tuple[str, str | None], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def parse(cls, template: str) -> UrlTemplate:
        parts = _template_parts(template)
        fields = frozenset(name for _, name in parts if name)
        match = _ORIGIN.match(template)
        if match is None or "{" in match["authority"]:
            return cls(template, fields, parts)
        try:
            origin = parse_origin(match["scheme"], match["authority"])
        except InvalidRequest:
            return cls(template, fields, parts)  # refused by the config check
        target = template[match.end() :]
        target = target if target.startswith("/") else "/" + target
        return cls(template, fields, parts, origin, _template_parts(target))

    def render(self, values: Mapping[str, str]) -> str:
        """The whole URL."""
        return _render(self._parts, values)

    def address(self, values: Mapping[str, str]) -> Address:
        """Where to send: the parsed origin and the rendered path and query, or the URL."""
        if self.origin is None:
            return self.render(values)
        return self.origin, _render(self._target, values)


_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<authority>[^/?#]+)", re.IGNORECASE)


def _template_parts(template: str) -> tuple[tuple[str, str | None], ...]:
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


def _render(parts: tuple[tuple[str, str | None], ...], values: Mapping[str, str]) -> str:
    # safe="" so an id can never add a path segment, query, fragment or authority.
    return "".join(
        literal + (quote(values[name], safe="") if name else "") for literal, name in parts
    )


@dataclass(frozen=True, slots=True)
class ProviderAuth:
    """How the gateway authenticates to a provider: nothing, a static secret header, or a
    JWT signed per request from the asset's drmResourceId."""

    type: Literal["none", "header", "jwt"] = "none"
    header: str | None = None
    value: str | None = field(default=None, repr=False)
    token: TokenSettings | None = None


ResourceIdField = Literal["drm_resource_id", "asset_id"]


KeyApiProtocol = Literal["native", "speke", "doverunner_cpix"]
KEY_API_PROTOCOLS: tuple[KeyApiProtocol, ...] = ("native", "speke", "doverunner_cpix")
# Protocols with key export and ingest: a provider must have one to be a `keys:` mirror or
# an end of a backfill. The others only generate keys (source only).
KEY_TRANSFER_PROTOCOLS: frozenset[KeyApiProtocol] = frozenset({"native"})


@dataclass(frozen=True, slots=True)
class KeyApiSettings:
    """A provider's key API: its protocol, URL, credential (from a secret; never in a repr)
    and timeouts.

    `protocol` `native`: the emulators' own key API under `base_url` (CPIX key generation
    at /v2/cpix, key export and ingest at /v2/keys/...), behind the bearer `token`.
    `speke`: a provider's SPEKE v2 endpoint, `base_url` being that endpoint's URL (e.g.
    Axinom's Key Service .../api/SpekeV2): key generation only, behind the bearer `token`
    or HTTP Basic (`basic_username`, `basic_password`).
    `doverunner_cpix`: DoveRunner's (PallyCon's) CPIX API, `base_url` being its KMS URL up
    to `getKey` (e.g. https://drm-kms.doverunner.com/v2/cpix/doverunner/getKey): key
    generation only; the `token` is the KMS token, sent as the URL's last path segment
    (no Authorization header). See `request_url`.

    `resource_id_field` names the catalog id a title is known by at this API: the one the
    provider's own URL templates use (`drm_resource_id` or `asset_id`), so the keys written
    through it are the ones its licenses serve."""

    base_url: str
    token: str = field(default="", repr=False)
    connect_timeout: float = 1.0
    total_timeout: float = 10.0
    resource_id_field: ResourceIdField = "drm_resource_id"
    max_answer_bytes: int = 1_048_576
    protocol: KeyApiProtocol = "native"
    basic_username: str | None = None
    basic_password: str | None = field(default=None, repr=False)

    @property
    def transfers(self) -> bool:
        """Whether keys can be exported from and ingested into this API (not only made)."""
        return self.protocol in KEY_TRANSFER_PROTOCOLS

    def resource_id(self, asset_id: str, drm_resource_id: str | None) -> str | None:
        """The id naming this title at the key API (None: the title lacks it)."""
        return asset_id if self.resource_id_field == "asset_id" else drm_resource_id

    @property
    def request_url(self) -> str:
        """The URL key generation posts to: `base_url`, plus for `doverunner_cpix` the KMS
        token percent-encoded as the last path segment. It holds a secret then: never log
        it, never put it in a message."""
        if self.protocol == "doverunner_cpix":
            return f"{self.base_url}/{quote(self.token, safe='')}"
        return self.base_url

    @property
    def authorization(self) -> str:
        """The Authorization header value: HTTP Basic when configured, else the bearer."""
        if self.basic_username is not None:
            pair = f"{self.basic_username}:{self.basic_password or ''}".encode()
            return "Basic " + base64.b64encode(pair).decode("ascii")
        return f"Bearer {self.token}"


DEFAULT_CONNECT_TIMEOUT = 1.0
DEFAULT_TOTAL_TIMEOUT = 5.0
DEFAULT_MAX_RESPONSE_BYTES = 1_048_576
DEFAULT_MAX_CONNECTIONS = 256


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    license_urls: Mapping[str, UrlTemplate]
    key_url: UrlTemplate | None
    auth: ProviderAuth
    kind: str = "generic"
    needs_drm_resource_id: bool = False
    needs_key_ids: bool = False
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    strip_response_headers: frozenset[str] = frozenset()
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    fairplay: FairPlayFormats = field(default_factory=lambda: FairPlayFormats("binary", "binary"))
    # `generic`: the provider's own error codes counted by name (others count as "other").
    provider_errors: frozenset[str] = frozenset()
    # The kind's own settings (its config section, secrets included); None for `generic`, and
    # for every provider when the config was read without secrets (rules tooling).
    options: object | None = field(default=None, repr=False)
    # The provider's key API (backfill, SPEKE mirrors); None: it has none configured.
    key_api: KeyApiSettings | None = None

    def endpoint(self, drm: str) -> UrlTemplate | None:
        """The URL template serving `drm` (the key URL for aes128), None if there is none."""
        return self.key_url if drm == KEY_DRM else self.license_urls.get(drm)

    @property
    def traits(self) -> ProviderTraits:
        """What the routing rules need to know of this provider (the one place it is derived)."""
        served = {*self.license_urls, *([KEY_DRM] if self.key_url is not None else [])}
        return ProviderTraits(
            needs_drm_resource_id=self.needs_drm_resource_id,
            needs_key_ids=self.needs_key_ids,
            serves=frozenset(served),
        )


def parse_providers(
    reader: ConfigReader, raw: Any, *, auth: bool = True
) -> dict[str, ProviderSettings]:
    """The `providers` section. With `auth` False the `auth` sections are not read at all (no
    secret resolved, no key file opened) and every provider gets `ProviderAuth()`: settings fit
    for the rules tooling, never for serving."""
    if not isinstance(raw, dict) or not raw:
        reader.problem("providers", "must name at least one provider")
        return {}
    providers: dict[str, ProviderSettings] = {}
    for name, section in raw.items():
        if not isinstance(name, str) or not PROVIDER_NAME.match(name):
            reader.problem(f"providers.{name}", "name must match ^[a-z][a-z0-9_-]{0,31}$")
            continue
        provider = _parse_provider(reader, name, section, auth=auth)
        if provider is not None:
            providers[name] = provider
    return providers


_PROVIDER_FIELDS = {
    "kind",
    "base_url",
    "license_urls",
    "key_url",
    "auth",
    "needs_drm_resource_id",
    "timeouts",
    "strip_response_headers",
    "max_response_bytes",
    "max_connections",
    "fairplay",
    "provider_errors",
    "key_api",
}
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _parse_provider(
    reader: ConfigReader, name: str, raw: Any, *, auth: bool
) -> ProviderSettings | None:
    path = f"providers.{name}"
    kind_name = raw.get("kind", "generic") if isinstance(raw, dict) else "generic"
    kind = _parse_kind(reader, kind_name, path)
    own = {kind_name} if kind is not None and kind.options is not None else set()
    section = reader.mapping(raw, path, _PROVIDER_FIELDS | own)
    base_url = reader.value(section, "base_url", path, str, "")
    needs_id = _needs_drm_resource_id(reader, section, path, kind_name, kind)
    urls = reader.mapping(section.get("license_urls"), f"{path}.license_urls", set(LICENSE_DRMS))
    _check_served(reader, kind_name, kind, section, path)
    license_urls = {}
    for drm, template in urls.items():
        parsed = _parse_url(reader, base_url, template, f"{path}.license_urls.{drm}", needs_id)
        if parsed is not None:
            license_urls[drm] = parsed
    key_url = None
    if "key_url" in section:
        key_url = _parse_url(reader, base_url, section["key_url"], f"{path}.key_url", needs_id)
        if key_url is not None and "key_id" not in key_url.fields:
            reader.problem(f"{path}.key_url", "must contain the {key_id} placeholder")
    if not license_urls and key_url is None:
        reader.problem(path, "needs at least one of license_urls or key_url")
    timeouts = reader.mapping(
        section.get("timeouts"), f"{path}.timeouts", {"connect_seconds", "total_seconds"}
    )
    strip = reader.value(section, "strip_response_headers", path, list, [])
    for header in strip:
        if not isinstance(header, str) or not HEADER_NAME.match(header):
            reader.problem(f"{path}.strip_response_headers", f"{header!r} is not a header name")
    errors = _provider_errors(reader, section, path, kind_name, kind)
    templates = [*license_urls.values(), *([key_url] if key_url is not None else [])]
    key_api = None
    if auth:  # its token is a secret: never read for the rules tooling
        key_api = _parse_key_api(
            reader, section, path, _default_resource_field(needs_id, templates)
        )
    options = None
    if auth and kind is not None and kind.options is not None:
        options = kind.options(reader, section.get(kind_name), f"{path}.{kind_name}")
    return ProviderSettings(
        name=name,
        kind=str(kind_name),
        license_urls=license_urls,
        key_url=key_url,
        auth=_parse_auth(reader, section.get("auth"), f"{path}.auth") if auth else ProviderAuth(),
        needs_drm_resource_id=bool(needs_id),
        needs_key_ids=kind is not None and kind.needs_key_ids,
        options=options,
        provider_errors=errors,
        connect_timeout=reader.positive(
            timeouts, "connect_seconds", f"{path}.timeouts", float, DEFAULT_CONNECT_TIMEOUT
        ),
        total_timeout=reader.positive(
            timeouts, "total_seconds", f"{path}.timeouts", float, DEFAULT_TOTAL_TIMEOUT
        ),
        strip_response_headers=frozenset(str(h).lower() for h in strip),
        max_response_bytes=reader.positive(
            section, "max_response_bytes", path, int, DEFAULT_MAX_RESPONSE_BYTES
        ),
        max_connections=reader.positive(
            section, "max_connections", path, int, DEFAULT_MAX_CONNECTIONS
        ),
        fairplay=_fairplay_formats(reader, section, path, kind),
        key_api=key_api,
    )


_KEY_API_FIELDS = {
    "protocol",
    "base_url",
    "token",
    "basic",
    "timeouts",
    "resource_id",
    "max_answer_bytes",
}
_RESOURCE_ID_FIELDS: tuple[ResourceIdField, ...] = ("drm_resource_id", "asset_id")


def _parse_key_api(
    reader: ConfigReader, section: dict[str, Any], path: str, default_field: ResourceIdField
) -> KeyApiSettings | None:
    """`providers.<name>.key_api` (optional; null or absent: none). `default_field` is the id
    the provider's licenses name a title by, the default `resource_id`.

    `protocol: native` (the default) wants a bearer `token`; `protocol: speke` wants exactly
    one of `token` and `basic: {username, password}`, `base_url` being the SPEKE endpoint;
    `protocol: doverunner_cpix` wants the KMS `token` (non-empty) and no `basic`, `base_url`
    being the KMS URL up to `getKey`."""
    if "key_api" not in section:
        return None
    path = f"{path}.key_api"
    raw = reader.mapping(section["key_api"], path, _KEY_API_FIELDS)
    if not raw and not isinstance(section["key_api"], dict):
        return None  # "must be a mapping" already said
    before = len(reader.problems)
    protocol = reader.choice(raw, "protocol", path, KEY_API_PROTOCOLS, "native")
    base_url = _key_api_base_url(reader, raw, path)
    if protocol == "doverunner_cpix" and base_url is not None:
        if not urlsplit(base_url).path.endswith("/getKey"):
            # The KMS token goes after getKey, from `token`: never in base_url (not a secret).
            reader.problem(
                f"{path}.base_url",
                "protocol doverunner_cpix wants the KMS URL up to getKey "
                "(e.g. https://drm-kms.doverunner.com/v2/cpix/doverunner/getKey), "
                "the KMS token being given as token",
            )
    token, username, password = _key_api_credential(reader, raw, path, protocol)
    timeouts = reader.mapping(raw.get("timeouts"), f"{path}.timeouts", _TIMEOUT_FIELDS)
    settings = KeyApiSettings(
        base_url=base_url or "",
        token=token or "",
        connect_timeout=reader.positive(
            timeouts, "connect_seconds", f"{path}.timeouts", float, 1.0
        ),
        total_timeout=reader.positive(timeouts, "total_seconds", f"{path}.timeouts", float, 10.0),
        resource_id_field=reader.choice(
            raw, "resource_id", path, _RESOURCE_ID_FIELDS, default_field
        ),
        max_answer_bytes=reader.positive(raw, "max_answer_bytes", path, int, 1_048_576),
        protocol=protocol,
        basic_username=username,
        basic_password=password,
    )
    return settings if len(reader.problems) == before else None


def _key_api_credential(
    reader: ConfigReader, raw: dict[str, Any], path: str, protocol: KeyApiProtocol
) -> tuple[str | None, str | None, str | None]:
    """(bearer token, basic username, basic password), each from the section's secrets."""
    has_token, has_basic = "token" in raw, "basic" in raw
    if protocol in ("native", "doverunner_cpix"):
        if has_basic:
            reader.problem(
                f"{path}.basic",
                f"is for protocol: speke only (the {protocol} key API takes a token)",
            )
        if not has_token:
            reader.problem(f"{path}.token", "is missing, and has no default")
            return None, None, None
        token = reader.secret(raw["token"], f"{path}.token")
        if protocol == "doverunner_cpix" and token is not None and not token.strip():
            reader.problem(f"{path}.token", "must not be empty (it is the KMS token)")
        return token, None, None
    elif has_token == has_basic:
        reader.problem(
            path,
            "protocol speke needs exactly one credential: token (bearer) or "
            "basic {username, password}" + (", not both" if has_token else ""),
        )
        return None, None, None
    if has_token:
        return reader.secret(raw["token"], f"{path}.token"), None, None
    where = f"{path}.basic"
    basic = reader.mapping(raw["basic"], where, {"username", "password"})
    username = reader.value(basic, "username", where, str, REQUIRED)
    if username is not None and (not username or ":" in username or not username.isprintable()):
        reader.problem(f"{where}.username", "must be non-empty printable text without ':'")
    password = None
    if "password" not in basic:
        reader.problem(f"{where}.password", "is missing, and has no default")
    else:
        password = reader.secret(basic["password"], f"{where}.password")
    return None, username, password


_TIMEOUT_FIELDS = {"connect_seconds", "total_seconds"}


def _key_api_base_url(reader: ConfigReader, raw: dict[str, Any], path: str) -> str | None:
    """`base_url`: https://, or http:// to a loopback host only (keys never cross a network
    in clear); no query, fragment or credentials."""
    url = reader.value(raw, "base_url", path, str, REQUIRED)
    if url is None:
        return None
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        host = None
    plain = url.isascii() and not any(c.isspace() for c in url)
    if not plain or not host or parts.query or parts.fragment or "@" in parts.netloc:
        reader.problem(f"{path}.base_url", "must be an https:// URL with a host (no query)")
        return None
    if parts.scheme != "https" and not (parts.scheme == "http" and _is_loopback(host)):
        reader.problem(
            f"{path}.base_url", "must be an https:// URL (http:// only to a loopback host)"
        )
        return None
    return url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _default_resource_field(needs_id: bool, templates: list[UrlTemplate]) -> ResourceIdField:
    """The id the provider knows a title by: the drmResourceId where it needs one (or a URL
    template names it), else the asset id where a template names that."""
    if needs_id or any("drm_resource_id" in template.fields for template in templates):
        return "drm_resource_id"
    if any("asset_id" in template.fields for template in templates):
        return "asset_id"
    return "drm_resource_id"


def _parse_kind(reader: ConfigReader, name: Any, path: str) -> ProviderKind | None:
    # Imported here: the registry imports the provider clients, which import this module.
    from proxy.upstream.registry import PROVIDER_KINDS

    kind = PROVIDER_KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        known = ", ".join(sorted(PROVIDER_KINDS))
        reader.problem(f"{path}.kind", f"unknown provider kind '{name}' (known: {known})")
    return kind


def _needs_drm_resource_id(
    reader: ConfigReader,
    section: dict[str, Any],
    path: str,
    kind_name: str,
    kind: ProviderKind | None,
) -> bool:
    """From the config for `generic`; fixed by the protocol for every other kind."""
    configured = reader.value(section, "needs_drm_resource_id", path, bool, None)
    fixed = kind.needs_drm_resource_id if kind is not None else None
    if fixed is None:
        return bool(configured)
    if configured is not None and configured != fixed:
        reader.problem(
            f"{path}.needs_drm_resource_id",
            f"is {str(fixed).lower()} for kind '{kind_name}' (its protocol decides)",
        )
    return fixed


def _provider_errors(
    reader: ConfigReader,
    section: dict[str, Any],
    path: str,
    kind_name: str,
    kind: ProviderKind | None,
) -> frozenset[str]:
    """`provider_errors`: the error codes a generic provider answers with (`errorCode`), each
    its own value of the `provider_error` metric label; other kinds know their provider's."""
    codes = reader.value(section, "provider_errors", path, list, [])
    if codes and kind is not None and kind.options is not None:
        reader.problem(f"{path}.provider_errors", f"kind '{kind_name}' knows its provider's codes")
    for code in codes:
        if not isinstance(code, str) or not _ERROR_CODE.match(code):
            reader.problem(f"{path}.provider_errors", f"{code!r} is not an error code")
    return frozenset(str(code) for code in codes)


def _check_served(
    reader: ConfigReader,
    kind_name: str,
    kind: ProviderKind | None,
    section: dict[str, Any],
    path: str,
) -> None:
    """Endpoints only for what the kind can serve; kinds other than generic bring their own
    auth and FairPlay formats."""
    if kind is None:
        return
    urls = section.get("license_urls")
    for drm in sorted(urls) if isinstance(urls, dict) else ():
        if drm in LICENSE_DRMS and drm not in kind.drms:
            reader.problem(f"{path}.license_urls.{drm}", f"kind '{kind_name}' does not serve {drm}")
    if "key_url" in section and not kind.serves_keys:
        reader.problem(f"{path}.key_url", f"kind '{kind_name}' does not serve HLS AES-128 keys")
    if kind.options is not None and "auth" in section:
        reader.problem(
            f"{path}.auth", f"kind '{kind_name}' authenticates with its '{kind_name}' section"
        )
    if kind.fairplay is not None and "fairplay" in section:
        fixed = kind.fairplay
        reader.problem(
            f"{path}.fairplay",
            f"kind '{kind_name}' fixes its FairPlay formats ({fixed.request} in, "
            f"{fixed.response} out)",
        )


def _fairplay_formats(
    reader: ConfigReader, section: dict[str, Any], path: str, kind: ProviderKind | None
) -> FairPlayFormats:
    if kind is not None and kind.fairplay is not None:
        return kind.fairplay
    return _parse_fairplay_formats(reader, section.get("fairplay"), f"{path}.fairplay")


def _parse_url(
    reader: ConfigReader, base_url: str, raw: Any, path: str, needs_id: bool
) -> UrlTemplate | None:
    if not isinstance(raw, str) or not raw:
        reader.problem(path, "must be a URL template string")
        return None
    full = raw if "://" in raw else base_url.rstrip("/") + "/" + raw.lstrip("/")
    try:
        template = UrlTemplate.parse(full)
    except ValueError as exc:
        reader.problem(path, f"bad template ({exc})")
        return None
    unknown = template.fields - URL_PLACEHOLDERS
    if unknown:
        known = ", ".join(sorted(URL_PLACEHOLDERS))
        reader.problem(path, f"unknown placeholder {{{min(unknown)}}} (known: {known})")
        return None
    parts = urlsplit(template.render(dict.fromkeys(template.fields, "x")))
    # Sent as already encoded (never re-quoted per request), so only printable ASCII.
    printable = full.isascii() and not any(c.isspace() for c in full)
    if not printable or parts.scheme not in ("http", "https") or not parts.hostname:
        reader.problem(
            path,
            "not a URL (needs http:// or https:// and a host, or a base_url; "
            "printable ASCII only: percent-encode anything else)",
        )
        return None
    if "drm_resource_id" in template.fields and not needs_id:
        reader.problem(path, "uses {drm_resource_id} but needs_drm_resource_id is false")
    return template


def _parse_fairplay_formats(reader: ConfigReader, raw: Any, path: str) -> FairPlayFormats:
    section = reader.mapping(raw, path, {"request", "response"})
    request = reader.choice(section, "request", path, REQUEST_FORMATS, "binary")
    response = reader.choice(section, "response", path, RESPONSE_FORMATS, "binary")
    return FairPlayFormats(request, response)


_JWT_FIELDS = {
    "type",
    "header",
    "query_param",
    "algorithm",
    "keys",
    "active_kid",
    "lifetime_seconds",
    "nbf_skew_seconds",
    "claims",
    "issuer",
}


def _parse_auth(reader: ConfigReader, raw: Any, path: str) -> ProviderAuth:
    kind = raw.get("type", "none") if isinstance(raw, dict) else "none"
    if kind == "jwt":
        section = reader.mapping(raw, path, _JWT_FIELDS)
        return ProviderAuth(type="jwt", token=_parse_jwt(reader, section, path))
    section = reader.mapping(raw, path, {"type", "header", "secret"})
    if kind == "none":
        return ProviderAuth()
    if kind != "header":
        reader.problem(f"{path}.type", f"unknown auth type '{kind}' (known: none, header, jwt)")
        return ProviderAuth()
    header = reader.value(section, "header", path, str, REQUIRED)
    if header is not None and not HEADER_NAME.match(header):
        reader.problem(f"{path}.header", "is not a valid header name")
    if "secret" not in section:
        reader.problem(f"{path}.secret", "is missing, and has no default")
        return ProviderAuth()
    value = reader.secret(section["secret"], f"{path}.secret")
    return ProviderAuth(type="header", header=header, value=value)


def _parse_jwt(reader: ConfigReader, section: dict[str, Any], path: str) -> TokenSettings | None:
    """A signed per-request token; key material comes from secrets and PEM files only."""
    before = len(reader.problems)
    named = reader.value(section, "algorithm", path, str, REQUIRED)
    algorithm = next((known for known in ALGORITHMS if known == named), None)
    if named is not None and algorithm is None:
        reader.problem(f"{path}.algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    keys = _parse_signing_keys(reader, section.get("keys"), f"{path}.keys", named)
    header = reader.value(section, "header", path, str, None)
    query_param = reader.value(section, "query_param", path, str, None)
    claims = reader.value(section, "claims", path, dict, None)
    if len(reader.problems) > before or algorithm is None:
        return None
    settings = TokenSettings(
        algorithm=algorithm,
        keys=tuple(keys),
        active_kid=reader.value(section, "active_kid", path, str, keys[0].kid if keys else ""),
        header=header if header or query_param else DEFAULT_TOKEN_HEADER,
        query_param=query_param,
        lifetime_seconds=reader.value(
            section, "lifetime_seconds", path, int, DEFAULT_TOKEN_LIFETIME
        ),
        nbf_skew_seconds=reader.value(section, "nbf_skew_seconds", path, int, None),
        issuer=reader.value(section, "issuer", path, str, None),
        **({"claims": claims} if claims is not None else {}),
    )
    for problem in validate_settings(settings):
        reader.problem(path, problem)
    return settings


def _parse_signing_keys(
    reader: ConfigReader, raw: Any, path: str, algorithm: str | None
) -> list[SigningKey]:
    if not isinstance(raw, list) or not raw:
        reader.problem(
            path, "must list at least one key ({kid, secret} or {kid, private_key_file})"
        )
        return []
    keys = []
    for index, item in enumerate(raw):
        where = f"{path}[{index}]"
        entry = reader.mapping(item, where, {"kid", "secret", "private_key_file"})
        kid = reader.value(entry, "kid", where, str, REQUIRED)
        material = _key_material(reader, entry, where, algorithm)
        if kid is not None and material is not None:
            keys.append(SigningKey(kid, material))
    return keys


def _key_material(
    reader: ConfigReader, entry: dict[str, Any], where: str, algorithm: str | None
) -> bytes | None:
    hmac = bool(algorithm and algorithm.startswith("HS"))
    wanted = "secret" if hmac else "private_key_file"
    if wanted not in entry:
        reader.problem(f"{where}.{wanted}", f"is missing ({algorithm} needs a {wanted})")
        return None
    if hmac:
        value = reader.secret(entry["secret"], f"{where}.secret")
        try:
            return decode_hmac_secret(value) if value is not None else None
        except ValueError as exc:
            reader.problem(f"{where}.secret", str(exc))
            return None
    pem_path = reader.path(entry["private_key_file"], f"{where}.private_key_file")
    try:
        return pem_path.read_bytes() if pem_path else None
    except OSError as exc:
        reader.problem(f"{where}.private_key_file", f"cannot read {pem_path} ({exc.strerror})")
        return None
