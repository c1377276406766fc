"""Gateway configuration: one YAML file (optionally with layers over it) loaded into frozen
dataclasses.

Every problem is collected with its key path and reported at once, before any port is bound.
Secrets never live in the YAML: it names an environment variable or a file that holds them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from proxy.access.client_address import Network, parse_network
from proxy.access.cors import PROVIDER_HEADER, CorsPolicy
from proxy.access.player_tokens import PlayerAuthSettings
from proxy.catalog.base import CatalogSettings, HttpCatalogSettings, RedisCatalogSettings
from proxy.catalog.http import create_ssl_context, parse_base_url
from proxy.catalog.missing import MissingSettings
from proxy.catalog.redis import check_url as check_redis_url
from proxy.catalog.registry import KNOWN_BACKENDS
from proxy.config.clients import ClientSettings, parse_clients
from proxy.config.fleet import FleetSettings, parse_fleet
from proxy.config.providers import (
    HEADER_NAME,
    KEY_TRANSFER_PROTOCOLS,
    ProviderAuth,
    ProviderSettings,
    UrlTemplate,
    parse_providers,
)
from proxy.config.reader import REQUIRED, ConfigError, ConfigReader
from proxy.config.resilience import ResilienceSettings, parse_resilience
from proxy.config.security import RateLimits, parse_cors, parse_player_auth, parse_rate_limits
from proxy.config.speke import SpekeSettings, parse_speke
from proxy.routing.rules import NAME_PATTERN, ProviderTraits
from proxy.upstream.fairplay import (
    DEFAULT_CLIENT_RESPONSE,
    REQUEST_FORMATS,
    RESPONSE_FORMATS,
    RequestFormat,
    ResponseFormat,
)

__all__ = [
    "Config",
    "ConfigError",
    "FairPlaySettings",
    "ProviderAuth",
    "ProviderSettings",
    "RoutingSettings",
    "RulesView",
    "UrlTemplate",
    "load_config",
    "load_rules_view",
    "merge_layer",
    "parse_config",
]


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ServerSettings:
    public: Listener = Listener("127.0.0.1", 8080)
    internal: Listener = Listener("127.0.0.1", 9090)
    max_body_bytes: int = 65_536
    shutdown_grace_seconds: float = 10.0
    # Proxies (an ingress, a load balancer) whose X-Forwarded-For entries are believed.
    trusted_proxies: tuple[Network, ...] = ()
    # Client timeouts and connection caps (proxy/config/clients.py).
    clients: ClientSettings = field(default_factory=ClientSettings)
    # License and key answers name the provider that answered (X-Drm-Gateway-Provider).
    provider_header: bool = False


LogFormat = Literal["auto", "json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    default_provider: str
    rules_file: Path | None = None
    poll_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class FairPlaySettings:
    """The application certificate players fetch, and the CKC format each client format expects."""

    certificate: bytes | None = field(default=None, repr=False)
    client_response: Mapping[RequestFormat, ResponseFormat] = field(
        default_factory=lambda: dict(DEFAULT_CLIENT_RESPONSE)
    )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    log: LogSettings
    catalog: CatalogSettings
    providers: Mapping[str, ProviderSettings]
    routing: RoutingSettings
    fairplay: FairPlaySettings = field(default_factory=FairPlaySettings)
    admin_token: str | None = field(default=None, repr=False)  # admin.token: named "admin"
    player_auth: PlayerAuthSettings = field(default_factory=PlayerAuthSettings)
    cors: CorsPolicy | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    source: Path | None = None
    missing: MissingSettings = field(default_factory=MissingSettings)
    speke: SpekeSettings | None = None  # the SPEKE endpoint for packagers; None: not served
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    # Every admin token by caller name: admin.token as "admin" plus admin.tokens.
    admin_tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    fleet: FleetSettings = field(default_factory=FleetSettings)  # the whole-fleet view


# --- loading -------------------------------------------------------------------------------


def load_config(
    path: Path, *, layers: Sequence[Path] = (), overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read, validate and build the config; raise ConfigError listing every problem.

    Each of `layers` (e.g. an environment's differences from a shared base) is merged over
    the file in order by `merge_layer`; relative paths resolve against `path`'s directory.
    """
    raw = _read_yaml(path)
    for layer in layers:
        raw = merge_layer(raw, _read_yaml(layer))
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, base_dir=path.parent, source=path)


def merge_layer(base: Any, layer: Any) -> Any:
    """`layer` over `base`: mappings merge key by key, anything else (lists too) replaces."""
    if not isinstance(base, dict) or not isinstance(layer, dict):
        return layer
    merged = dict(base)
    for key, value in layer.items():
        merged[key] = merge_layer(base[key], value) if key in base else value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError([f"{path}: YAML syntax error at line {line}: {exc.problem}"]) from None
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: must be a mapping of config sections"])
    return raw


def _set_dotted(raw: Any, dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def parse_config(
    raw: Any,
    *,
    base_dir: Path,
    source: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build a Config from a parsed YAML tree, or raise ConfigError with every problem."""
    reader = ConfigReader(base_dir, os.environ if env is None else env)
    top = reader.mapping(raw, "", _TOP_SECTIONS)
    server = _parse_server(reader, top.get("server"))
    log = _parse_log(reader, top.get("log"))
    catalog = _parse_catalog(reader, top.get("catalog"))
    providers = parse_providers(reader, top.get("providers"))
    routing = _parse_routing(reader, top.get("routing"), providers)
    admin_token, admin_tokens = _parse_admin(reader, top.get("admin"))
    fairplay = _parse_fairplay(reader, top.get("fairplay"))
    player_auth = parse_player_auth(reader, top.get("player_auth"))
    cors = parse_cors(reader, top.get("cors"))
    if cors is not None and server.provider_header:  # browser pages may read the header
        cors = cors.exposing(PROVIDER_HEADER)
    rate_limits = parse_rate_limits(reader, top.get("rate_limit"))
    missing = _parse_missing(reader, top.get("missing"))
    speke = parse_speke(reader, top.get("speke"))
    _check_speke(reader, speke, server, catalog, providers)
    resilience = parse_resilience(reader, top.get("resilience"), providers)
    fleet = parse_fleet(reader, top.get("fleet"))
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(
        server,
        log,
        catalog,
        providers,
        routing,
        fairplay,
        admin_token,
        player_auth,
        cors,
        rate_limits,
        source,
        missing=missing,
        speke=speke,
        resilience=resilience,
        admin_tokens=admin_tokens,
        fleet=fleet,
    )


@dataclass(frozen=True, slots=True)
class RulesView:
    """The part of a config the rules tooling reads: provider names and traits, and (for
    `rules explain`) the routing and catalog sections. Built without resolving a secret or
    opening a key file, so CI can check a rules change without production secrets."""

    providers: Mapping[str, ProviderTraits]
    routing: RoutingSettings | None = None
    catalog: CatalogSettings | None = None


def load_rules_view(path: Path, *, routing: bool = False) -> RulesView:
    """The providers of the config at `path` (and with `routing`, its routing and catalog
    sections), parsed by the same code as `load_config`; other sections are not read.
    Raises ConfigError listing every problem of the sections read."""
    raw = _read_yaml(path)
    # An empty environment: were a secret ever resolved here, it would fail loudly.
    reader = ConfigReader(path.parent, {})
    top = reader.mapping(raw, "", _TOP_SECTIONS)
    providers = parse_providers(reader, top.get("providers"), auth=False)
    routing_settings = _parse_routing(reader, top.get("routing"), providers) if routing else None
    catalog = None
    if routing:  # `rules explain` looks assets up: a catalog service's token is needed then
        catalog_reader = ConfigReader(path.parent, os.environ)
        catalog = _parse_catalog(catalog_reader, top.get("catalog"))
        reader.problems.extend(catalog_reader.problems)
    if reader.problems:
        raise ConfigError(reader.problems)
    # Key APIs are not parsed here (their tokens are secrets): a section present is enough.
    raw_providers = top.get("providers")
    raw_providers = raw_providers if isinstance(raw_providers, dict) else {}
    traits = {}
    for name, p in providers.items():
        protocol = _key_api_protocol(raw_providers.get(name))
        generate_only = protocol is not None and protocol not in KEY_TRANSFER_PROTOCOLS
        traits[name] = replace(
            p.traits, key_api=protocol is not None, key_generate_only=generate_only
        )
    return RulesView(traits, routing_settings, catalog)


def _key_api_protocol(raw: Any) -> str | None:
    """The protocol of a raw provider section's key API (None: it has none)."""
    if not isinstance(raw, dict) or raw.get("key_api") is None:
        return None
    section = raw["key_api"]
    protocol = section.get("protocol", "native") if isinstance(section, dict) else "native"
    return str(protocol)


KEY_RECORD_BACKENDS = ("sqlite", "redis")  # catalogs the key records write to (not http)
_TOP_SECTIONS = {
    "server",
    "log",
    "catalog",
    "routing",
    "providers",
    "fairplay",
    "admin",
    "player_auth",
    "cors",
    "rate_limit",
    "missing",
    "speke",
    "resilience",
    "fleet",
}


def _check_speke(
    reader: ConfigReader,
    speke: SpekeSettings | None,
    server: ServerSettings,
    catalog: CatalogSettings,
    providers: Mapping[str, ProviderSettings],
) -> None:
    """What the SPEKE endpoint needs of the rest: a catalog it can record key holders in, a
    provider with a key API, and a listener of its own on a port no other one takes."""
    if speke is None:
        return
    if catalog.backend not in KEY_RECORD_BACKENDS:
        reader.problem(
            "speke",
            f"needs a catalog it can record key holders in (backend "
            f"{' or '.join(KEY_RECORD_BACKENDS)}), not '{catalog.backend}'",
        )
    if providers and not any(p.key_api is not None for p in providers.values()):
        reader.problem("speke", "no provider has a key_api section to get keys from")
    if speke.listener != "own" or speke.port == 0:
        return
    for name, listener in (("public", server.public), ("internal", server.internal)):
        if listener.port == speke.port and listener.host == speke.host:
            reader.problem("speke.port", f"{speke.port} is already server.{name}'s port")


def _parse_listener(reader: ConfigReader, raw: Any, path: str, default: Listener) -> Listener:
    section = reader.mapping(raw, path, {"host", "port"})
    host = reader.value(section, "host", path, str, default.host)
    port = reader.value(section, "port", path, int, default.port)
    if port is not None and not 0 <= port <= 65535:
        reader.problem(f"{path}.port", "must be between 0 and 65535")
    return Listener(host or default.host, port if port is not None else default.port)


def _parse_server(reader: ConfigReader, raw: Any) -> ServerSettings:
    path = "server"
    section = reader.mapping(
        raw,
        path,
        {
            "public",
            "internal",
            "max_body_bytes",
            "shutdown_grace_seconds",
            "trusted_proxies",
            "clients",
            "provider_header",
        },
    )
    defaults = ServerSettings()
    return ServerSettings(
        public=_parse_listener(reader, section.get("public"), "server.public", defaults.public),
        internal=_parse_listener(
            reader, section.get("internal"), "server.internal", defaults.internal
        ),
        max_body_bytes=reader.positive(
            section, "max_body_bytes", path, int, defaults.max_body_bytes
        ),
        shutdown_grace_seconds=reader.positive(
            section, "shutdown_grace_seconds", path, float, defaults.shutdown_grace_seconds
        ),
        trusted_proxies=_parse_trusted_proxies(reader, section),
        clients=parse_clients(reader, section.get("clients")),
        provider_header=reader.value(section, "provider_header", path, bool, False),
    )


def _parse_trusted_proxies(reader: ConfigReader, section: dict[str, Any]) -> tuple[Network, ...]:
    """`server.trusted_proxies`: CIDRs, parsed once here so that no request parses one."""
    values = reader.value(section, "trusted_proxies", "server", list, [])
    networks: list[Network] = []
    for index, value in enumerate(values or ()):
        where = f"server.trusted_proxies[{index}]"
        if not isinstance(value, str):
            reader.problem(where, "must be a string (a CIDR such as 10.0.0.0/8)")
            continue
        try:
            networks.append(parse_network(value))
        except ValueError as exc:
            reader.problem(where, str(exc))
    return tuple(networks)


def _parse_log(reader: ConfigReader, raw: Any) -> LogSettings:
    section = reader.mapping(raw, "log", {"level", "format"})
    defaults = LogSettings()
    level = reader.choice(section, "level", "log", LOG_LEVELS, defaults.level)
    fmt = reader.choice(section, "format", "log", LOG_FORMATS, defaults.format)
    return LogSettings(level=level, format=fmt)


def _parse_catalog(reader: ConfigReader, raw: Any) -> CatalogSettings:
    path = "catalog"
    allowed = {"backend", "path", "ttl_seconds", "negative_ttl_seconds", "stale_seconds"}
    section = reader.mapping(
        raw, path, allowed | {"max_entries", "max_negative_entries", "http", "redis"}
    )
    defaults = CatalogSettings()
    backend = reader.value(section, "backend", path, str, "sqlite")
    known = backend in KNOWN_BACKENDS
    if backend is not None and not known:
        names = ", ".join(KNOWN_BACKENDS)
        reader.problem("catalog.backend", f"unknown catalog backend '{backend}' (known: {names})")
    db_path = None
    if backend == "sqlite":
        db_path = reader.path(section.get("path"), "catalog.path")
    elif known and "path" in section:
        reader.problem("catalog.path", "is only for backend 'sqlite'")
    http = None
    if backend == "http":
        http = _parse_catalog_http(reader, section.get("http"))
    elif known and "http" in section:
        reader.problem("catalog.http", "is only for backend 'http'")
    redis = None
    if backend == "redis":
        redis = _parse_catalog_redis(reader, section.get("redis"))
    elif known and "redis" in section:
        reader.problem("catalog.redis", "is only for backend 'redis'")
    return CatalogSettings(
        backend=backend or "sqlite",
        path=db_path,
        ttl_seconds=reader.positive(section, "ttl_seconds", path, float, defaults.ttl_seconds),
        negative_ttl_seconds=reader.positive(
            section, "negative_ttl_seconds", path, float, defaults.negative_ttl_seconds
        ),
        stale_seconds=reader.value(section, "stale_seconds", path, float, defaults.stale_seconds),
        max_entries=reader.positive(section, "max_entries", path, int, defaults.max_entries),
        max_negative_entries=reader.positive(section, "max_negative_entries", path, int, None),
        http=http,
        redis=redis,
    )


_CATALOG_REDIS_FIELDS = {"url", "password", "key_prefix", "channel", "timeouts"}


def _parse_catalog_redis(reader: ConfigReader, raw: Any) -> RedisCatalogSettings | None:
    """`catalog.redis`: the server's URL, the password from a secret, key prefix, channel."""
    path = "catalog.redis"
    if raw is None:
        reader.problem(path, "is missing, and has no default")
        return None
    section = reader.mapping(raw, path, _CATALOG_REDIS_FIELDS)
    defaults = RedisCatalogSettings(url="")
    url = reader.value(section, "url", path, str, REQUIRED)
    if url is not None:
        try:
            check_redis_url(url)
        except ValueError as exc:
            reader.problem(f"{path}.url", str(exc))
    password = None
    if "password" in section:
        password = reader.secret(section["password"], f"{path}.password")
    key_prefix = reader.value(section, "key_prefix", path, str, defaults.key_prefix)
    channel = reader.value(section, "channel", path, str, None)
    for name, value in (("key_prefix", key_prefix), ("channel", channel)):
        if value is not None and any(char <= " " for char in value):
            reader.problem(f"{path}.{name}", "must not contain spaces or control characters")
    if channel == "":
        reader.problem(f"{path}.channel", "must not be empty")
    timeouts = reader.mapping(
        section.get("timeouts"), f"{path}.timeouts", {"connect_seconds", "command_seconds"}
    )
    return RedisCatalogSettings(
        url=url if isinstance(url, str) else "",
        password=password,
        key_prefix=key_prefix,
        channel=channel or None,
        connect_timeout=reader.positive(
            timeouts, "connect_seconds", f"{path}.timeouts", float, defaults.connect_timeout
        ),
        timeout=reader.positive(
            timeouts, "command_seconds", f"{path}.timeouts", float, defaults.timeout
        ),
    )


_CATALOG_HTTP_FIELDS = {
    "base_url",
    "auth_header",
    "token",
    "timeouts",
    "max_response_bytes",
    "max_connections",
    "ca_file",
}


def _parse_catalog_http(reader: ConfigReader, raw: Any) -> HttpCatalogSettings | None:
    """`catalog.http`: the metadata service's base URL, credentials, limits (None if bad)."""
    path = "catalog.http"
    if raw is None:
        reader.problem(path, "is missing, and has no default")
        return None
    section = reader.mapping(raw, path, _CATALOG_HTTP_FIELDS)
    defaults = HttpCatalogSettings(base_url="")
    base_url = reader.value(section, "base_url", path, str, REQUIRED)
    if base_url is not None:
        try:
            parse_base_url(base_url)
        except ValueError as exc:
            reader.problem(f"{path}.base_url", str(exc))
    header = reader.value(section, "auth_header", path, str, None)
    if header is not None and not HEADER_NAME.fullmatch(header):
        reader.problem(f"{path}.auth_header", "must be an HTTP header name")
    token = reader.secret(section["token"], f"{path}.token") if "token" in section else None
    if token is not None and any(char in token for char in "\r\n\x00"):
        reader.problem(f"{path}.token", "must not contain a line break or NUL")
    if ("auth_header" in section) != ("token" in section):
        reader.problem(path, "'auth_header' and 'token' go together: set both or neither")
    timeouts = reader.mapping(
        section.get("timeouts"), f"{path}.timeouts", {"connect_seconds", "total_seconds"}
    )
    ca_file = reader.path(section["ca_file"], f"{path}.ca_file") if "ca_file" in section else None
    if ca_file is not None and not ca_file.is_file():
        reader.problem(f"{path}.ca_file", f"{ca_file} does not exist")
    elif ca_file is not None:
        try:
            create_ssl_context(ca_file)
        except OSError:
            reader.problem(f"{path}.ca_file", f"{ca_file} holds no PEM CA certificate")
    return HttpCatalogSettings(
        base_url=base_url if isinstance(base_url, str) else "",
        auth_header=header,
        token=token,
        connect_timeout=reader.positive(
            timeouts, "connect_seconds", f"{path}.timeouts", float, defaults.connect_timeout
        ),
        total_timeout=reader.positive(
            timeouts, "total_seconds", f"{path}.timeouts", float, defaults.total_timeout
        ),
        max_response_bytes=reader.positive(
            section, "max_response_bytes", path, int, defaults.max_response_bytes
        ),
        max_connections=reader.positive(
            section, "max_connections", path, int, defaults.max_connections
        ),
        ca_file=ca_file,
    )


def _parse_missing(reader: ConfigReader, raw: Any) -> MissingSettings:
    """`missing`: the titles requested without a drmResourceId that a replica remembers."""
    section = reader.mapping(raw, "missing", {"max_titles"})
    default = MissingSettings().max_titles
    return MissingSettings(reader.positive(section, "max_titles", "missing", int, default))


def _parse_routing(
    reader: ConfigReader, raw: Any, providers: Mapping[str, ProviderSettings]
) -> RoutingSettings:
    section = reader.mapping(raw, "routing", {"default_provider", "rules_file", "poll_seconds"})
    rules_file = None
    if "rules_file" in section:
        rules_file = reader.path(section["rules_file"], "routing.rules_file")
        if rules_file is not None and not rules_file.is_file():
            reader.problem("routing.rules_file", f"{rules_file} does not exist")
    poll = reader.positive(section, "poll_seconds", "routing", float, 2.0)
    # With a rules file, its `default` decides; this one is used only without a file.
    required = REQUIRED if rules_file is None else ""
    default = reader.value(section, "default_provider", "routing", str, required)
    if default and providers and default not in providers:
        known = ", ".join(sorted(providers))
        reader.problem("routing.default_provider", f"unknown provider '{default}' (known: {known})")
    elif default is not None and default in providers and providers[default].needs_drm_resource_id:
        reader.problem(
            "routing.default_provider",
            f"'{default}' needs a drmResourceId, so assets without one would have nowhere to go",
        )
    return RoutingSettings(str(default or ""), rules_file, poll)


LEGACY_ADMIN_NAME = "admin"  # the caller name of `admin.token`
ADMIN_TOKEN_MIN_LENGTH = 16


def _parse_admin(reader: ConfigReader, raw: Any) -> tuple[str | None, dict[str, str]]:
    """`admin.token` and every named token of `admin.tokens`, by caller name (the single
    token is named "admin"); no two names may share a secret, or the log could not say who."""
    section = reader.mapping(raw, "admin", {"token", "tokens"})
    token = _admin_secret(reader, section["token"], "admin.token") if "token" in section else None
    tokens = {LEGACY_ADMIN_NAME: token} if token is not None else {}
    _add_named_admin_tokens(reader, section.get("tokens"), tokens)
    return token, tokens


def _add_named_admin_tokens(reader: ConfigReader, named: Any, tokens: dict[str, str]) -> None:
    if named is not None and not isinstance(named, dict):
        reader.problem("admin.tokens", "must be a mapping of caller name to {env: ...}/{file: ...}")
        return
    for name, ref in (named or {}).items():
        where = f"admin.tokens.{name}"
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            reader.problem(where, f"the name must match ^{NAME_PATTERN.pattern}$")
            continue
        if name in tokens:
            reader.problem(where, f"'{name}' is already the name of admin.token")
            continue
        secret = _admin_secret(reader, ref, where)
        if secret is None:
            continue
        twin = next((other for other, known in tokens.items() if known == secret), None)
        if twin is not None:
            reader.problem(where, f"has the same secret as the token named '{twin}'")
            continue
        tokens[name] = secret


def _admin_secret(reader: ConfigReader, raw: Any, where: str) -> str | None:
    secret = reader.secret(raw, where)
    if secret is not None and len(secret) < ADMIN_TOKEN_MIN_LENGTH:
        reader.problem(where, f"must be at least {ADMIN_TOKEN_MIN_LENGTH} characters")
        return None
    return secret


def _parse_fairplay(reader: ConfigReader, raw: Any) -> FairPlaySettings:
    section = reader.mapping(raw, "fairplay", {"certificate_file", "client_response"})
    certificate = None
    if "certificate_file" in section:
        cert_path = reader.path(section["certificate_file"], "fairplay.certificate_file")
        try:
            certificate = cert_path.read_bytes() if cert_path else None
        except OSError as exc:
            reader.problem("fairplay.certificate_file", f"cannot read {cert_path} ({exc.strerror})")
    mapping = dict(DEFAULT_CLIENT_RESPONSE)
    overrides = reader.mapping(
        section.get("client_response"), "fairplay.client_response", set(REQUEST_FORMATS)
    )
    for request_format, response_format in overrides.items():
        if response_format not in RESPONSE_FORMATS:
            reader.problem(
                f"fairplay.client_response.{request_format}",
                f"unknown response format {response_format!r} "
                f"(known: {', '.join(RESPONSE_FORMATS)})",
            )
        else:
            mapping[cast(RequestFormat, request_format)] = cast(ResponseFormat, response_format)
    return FairPlaySettings(certificate, mapping)
