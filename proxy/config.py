"""Gateway configuration: one YAML file loaded into frozen dataclasses.

Every problem is collected with its key path and reported at once, before any port is bound.
Secrets never live in the YAML: it names an environment variable or a file that holds them.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml

from proxy.catalog.base import CatalogSettings

DRM_SYSTEMS: tuple[str, ...] = ("widevine", "playready", "fairplay", "clearkey")
URL_PLACEHOLDERS = frozenset({"asset_id", "drm_resource_id", "key_id", "drm"})
PROVIDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


class ConfigError(ValueError):
    """The configuration has problems; `problems` lists every one with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class UrlTemplate:
    """A URL with `{placeholders}` whose values are always percent-encoded (never `/`)."""

    template: str
    fields: frozenset[str]
    _parts: tuple[tuple[str, str | None], ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, template: str) -> UrlTemplate:
        parts = tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))
        fields = frozenset(name for _, name in parts if name)
        return cls(template, fields, parts)

    def render(self, values: Mapping[str, str]) -> str:
        # safe="" so an id can never add a path segment, query, fragment or authority.
        return "".join(
            literal + (quote(values[name], safe="") if name else "")
            for literal, name in self._parts
        )


@dataclass(frozen=True, slots=True)
class ProviderAuth:
    """How the gateway authenticates to a provider: nothing, or a static secret header."""

    type: Literal["none", "header"] = "none"
    header: str | None = None
    value: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    name: str
    license_urls: Mapping[str, UrlTemplate]
    key_url: UrlTemplate | None
    auth: ProviderAuth
    needs_drm_resource_id: bool = False
    connect_timeout: float = 1.0
    total_timeout: float = 5.0
    strip_response_headers: frozenset[str] = frozenset()
    max_response_bytes: int = 1_048_576
    max_connections: int = 256


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


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings
    log: LogSettings
    catalog: CatalogSettings
    providers: Mapping[str, ProviderSettings]
    default_provider: str
    fairplay_certificate: bytes | None = field(default=None, repr=False)
    source: Path | None = None


# --- loading -------------------------------------------------------------------------------


def load_config(path: Path, *, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, validate and build the config; raise ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError([f"{path}: YAML syntax error at line {line}: {exc.problem}"]) from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_config(raw, base_dir=path.parent, source=path)


def _set_dotted(raw: Any, dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


class _Reader:
    """Walks the raw YAML tree, collecting problems with their key paths."""

    def __init__(self, base_dir: Path, env: Mapping[str, str]) -> None:
        self.problems: list[str] = []
        self.base_dir = base_dir
        self.env = env

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(path, "must be a mapping")
            return {}
        for key in sorted(set(raw) - allowed, key=str):
            self.problem(f"{path}.{key}" if path else str(key), "unknown field")
        return raw

    def value(self, raw: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in raw:
            if default is _REQUIRED:
                self.problem(full, "is missing, and has no default")
            return default
        value = raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problem(full, f"must be {_KIND_NAMES.get(kind, kind.__name__)}")
            return None if default is _REQUIRED else default
        return value

    def positive(self, raw: dict[str, Any], key: str, path: str, kind: type, default: Any) -> Any:
        value = self.value(raw, key, path, kind, default)
        if value is not None and value <= 0:
            self.problem(f"{path}.{key}", "must be greater than 0")
            return default
        return value

    def secret(self, raw: Any, path: str) -> str | None:
        ref = self.mapping(raw, path, {"env", "file"})
        if len(ref.keys() & {"env", "file"}) != 1:
            self.problem(path, "must name exactly one of 'env' or 'file'")
            return None
        if "env" in ref:
            name = str(ref["env"])
            if name not in self.env or not self.env[name]:
                self.problem(f"{path}.env", f"environment variable {name} is not set")
                return None
            return self.env[name]
        file = self.path(ref["file"], f"{path}.file")
        if file is None:
            return None
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.problem(f"{path}.file", f"cannot read {file} ({exc.strerror})")
            return None

    def path(self, raw: Any, path: str) -> Path | None:
        if not isinstance(raw, str) or not raw:
            self.problem(path, "must be a file path")
            return None
        candidate = Path(raw)
        return candidate if candidate.is_absolute() else self.base_dir / candidate


class _Required:
    pass


_REQUIRED: Any = _Required()
_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def parse_config(
    raw: Any,
    *,
    base_dir: Path,
    source: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build a Config from a parsed YAML tree, or raise ConfigError with every problem."""
    reader = _Reader(base_dir, os.environ if env is None else env)
    top = reader.mapping(raw, "", {"server", "log", "catalog", "routing", "providers", "fairplay"})
    server = _parse_server(reader, top.get("server"))
    log = _parse_log(reader, top.get("log"))
    catalog = _parse_catalog(reader, top.get("catalog"))
    providers = _parse_providers(reader, top.get("providers"))
    default = _parse_routing(reader, top.get("routing"), providers)
    certificate = _parse_fairplay(reader, top.get("fairplay"))
    if reader.problems:
        raise ConfigError(reader.problems)
    return Config(server, log, catalog, providers, default, certificate, source)


def _parse_listener(reader: _Reader, raw: Any, path: str, default: Listener) -> Listener:
    section = reader.mapping(raw, path, {"host", "port"})
    host = reader.value(section, "host", path, str, default.host)
    port = reader.value(section, "port", path, int, default.port)
    if port is not None and not 0 <= port <= 65535:
        reader.problem(f"{path}.port", "must be between 0 and 65535")
    return Listener(host or default.host, port if port is not None else default.port)


def _parse_server(reader: _Reader, raw: Any) -> ServerSettings:
    path = "server"
    section = reader.mapping(
        raw, path, {"public", "internal", "max_body_bytes", "shutdown_grace_seconds"}
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
    )


def _parse_log(reader: _Reader, raw: Any) -> LogSettings:
    section = reader.mapping(raw, "log", {"level", "format"})
    level = reader.value(section, "level", "log", str, "info")
    if level not in ("debug", "info", "warning", "error"):
        reader.problem("log.level", "must be one of debug, info, warning, error")
    fmt = reader.value(section, "format", "log", str, "auto")
    if fmt not in ("auto", "json", "console"):
        reader.problem("log.format", "must be one of auto, json, console")
    return LogSettings(level=level, format=fmt)


def _parse_catalog(reader: _Reader, raw: Any) -> CatalogSettings:
    path = "catalog"
    allowed = {"backend", "path", "ttl_seconds", "negative_ttl_seconds", "stale_seconds"}
    section = reader.mapping(raw, path, allowed | {"max_entries"})
    defaults = CatalogSettings()
    backend = reader.value(section, "backend", path, str, "sqlite")
    db_path = None
    if backend == "sqlite":
        db_path = reader.path(section.get("path"), "catalog.path")
    elif backend is not None:
        reader.problem("catalog.backend", f"unknown catalog backend '{backend}' (known: sqlite)")
    return CatalogSettings(
        backend=backend or "sqlite",
        path=db_path,
        ttl_seconds=reader.positive(section, "ttl_seconds", path, float, defaults.ttl_seconds),
        negative_ttl_seconds=reader.positive(
            section, "negative_ttl_seconds", path, float, defaults.negative_ttl_seconds
        ),
        stale_seconds=reader.value(section, "stale_seconds", path, float, defaults.stale_seconds),
        max_entries=reader.positive(section, "max_entries", path, int, defaults.max_entries),
    )


def _parse_routing(reader: _Reader, raw: Any, providers: Mapping[str, ProviderSettings]) -> str:
    section = reader.mapping(raw, "routing", {"default_provider"})
    default = reader.value(section, "default_provider", "routing", str, _REQUIRED)
    if default is not None and providers and default not in providers:
        known = ", ".join(sorted(providers))
        reader.problem("routing.default_provider", f"unknown provider '{default}' (known: {known})")
    elif default in providers and providers[default].needs_drm_resource_id:
        reader.problem(
            "routing.default_provider",
            f"'{default}' needs a drmResourceId, so assets without one would have nowhere to go",
        )
    return str(default or "")


def _parse_fairplay(reader: _Reader, raw: Any) -> bytes | None:
    section = reader.mapping(raw, "fairplay", {"certificate_file"})
    if "certificate_file" not in section:
        return None
    cert_path = reader.path(section["certificate_file"], "fairplay.certificate_file")
    if cert_path is None:
        return None
    try:
        return cert_path.read_bytes()
    except OSError as exc:
        reader.problem("fairplay.certificate_file", f"cannot read {cert_path} ({exc.strerror})")
        return None


def _parse_providers(reader: _Reader, raw: Any) -> dict[str, ProviderSettings]:
    if not isinstance(raw, dict) or not raw:
        reader.problem("providers", "must name at least one provider")
        return {}
    providers: dict[str, ProviderSettings] = {}
    for name, section in raw.items():
        if not isinstance(name, str) or not PROVIDER_NAME.match(name):
            reader.problem(f"providers.{name}", "name must match ^[a-z][a-z0-9_-]{0,31}$")
            continue
        provider = _parse_provider(reader, name, section)
        if provider is not None:
            providers[name] = provider
    return providers


_PROVIDER_FIELDS = {
    "base_url",
    "license_urls",
    "key_url",
    "auth",
    "needs_drm_resource_id",
    "timeouts",
    "strip_response_headers",
    "max_response_bytes",
    "max_connections",
}


def _parse_provider(reader: _Reader, name: str, raw: Any) -> ProviderSettings | None:
    path = f"providers.{name}"
    section = reader.mapping(raw, path, _PROVIDER_FIELDS)
    base_url = reader.value(section, "base_url", path, str, "")
    needs_id = reader.value(section, "needs_drm_resource_id", path, bool, False)
    urls = reader.mapping(section.get("license_urls"), f"{path}.license_urls", set(DRM_SYSTEMS))
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
    return ProviderSettings(
        name=name,
        license_urls=license_urls,
        key_url=key_url,
        auth=_parse_auth(reader, section.get("auth"), f"{path}.auth"),
        needs_drm_resource_id=bool(needs_id),
        connect_timeout=reader.positive(
            timeouts, "connect_seconds", f"{path}.timeouts", float, 1.0
        ),
        total_timeout=reader.positive(timeouts, "total_seconds", f"{path}.timeouts", float, 5.0),
        strip_response_headers=frozenset(str(h).lower() for h in strip),
        max_response_bytes=reader.positive(section, "max_response_bytes", path, int, 1_048_576),
        max_connections=reader.positive(section, "max_connections", path, int, 256),
    )


def _parse_url(
    reader: _Reader, base_url: str, raw: Any, path: str, needs_id: bool
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
    if (
        any(c.isspace() for c in full)
        or parts.scheme not in ("http", "https")
        or not parts.hostname
    ):
        reader.problem(path, "not a URL (needs http:// or https:// and a host, or a base_url)")
        return None
    if "drm_resource_id" in template.fields and not needs_id:
        reader.problem(path, "uses {drm_resource_id} but needs_drm_resource_id is false")
    return template


def _parse_auth(reader: _Reader, raw: Any, path: str) -> ProviderAuth:
    section = reader.mapping(raw, path, {"type", "header", "secret"})
    kind = reader.value(section, "type", path, str, "none")
    if kind == "none":
        return ProviderAuth()
    if kind != "header":
        reader.problem(f"{path}.type", f"unknown auth type '{kind}' (known: none, header)")
        return ProviderAuth()
    header = reader.value(section, "header", path, str, _REQUIRED)
    if header is not None and not HEADER_NAME.match(header):
        reader.problem(f"{path}.header", "is not a valid header name")
    if "secret" not in section:
        reader.problem(f"{path}.secret", "is missing, and has no default")
        return ProviderAuth()
    value = reader.secret(section["secret"], f"{path}.secret")
    return ProviderAuth(type="header", header=header, value=value)
