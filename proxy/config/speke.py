"""The `speke:` section: the SPEKE v2 endpoint packagers ask for content keys.

    speke:
      listener: internal              # internal (the ops port) | own (a third listener)
      host: 127.0.0.1                 # with `own` only
      port: 8443                      # with `own` only
      credential:                     # exactly one of:
        bearer: {env: SPEKE_TOKEN}    #   Authorization: Bearer <token>
        # basic: {username: packager, password: {env: SPEKE_PASSWORD}}
      public_base_url: https://drm.example.com   # players' URL of the public port
      max_body_bytes: 2097152
      mirror_queue: {interval_seconds: 5, batch: 20, max_backoff_seconds: 600}

`public_base_url` is what the answers point players at: HLS AES-128 key URIs
(`{public_base_url}/v1/keys/{asset_id}/{kid}`) and the PlayReady LA_URL
(`{public_base_url}/v1/license/playready/{asset_id}`). Without a `speke:` section the
endpoint is not served. Secrets come from env or files, never from the YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from proxy.config.reader import REQUIRED, ConfigReader

SpekeListener = Literal["internal", "own"]
LISTENERS: Final[tuple[SpekeListener, ...]] = ("internal", "own")
DEFAULT_MAX_BODY_BYTES: Final = 2 * 1024 * 1024
MIN_SECRET_CHARS: Final = 16
_FIELDS: Final = {
    "listener",
    "host",
    "port",
    "credential",
    "public_base_url",
    "max_body_bytes",
    "mirror_queue",
}
_QUEUE_FIELDS: Final = {"interval_seconds", "batch", "max_backoff_seconds"}


@dataclass(frozen=True, slots=True)
class PackagerCredential:
    """What a packager must send: a bearer token, or HTTP Basic `username` and password."""

    scheme: Literal["bearer", "basic"]
    secret: str = field(repr=False)
    username: str | None = None


@dataclass(frozen=True, slots=True)
class MirrorQueueSettings:
    """How the durable mirror retry queue is drained: every `interval_seconds`, at most
    `batch` jobs a round, a failed job retried after a doubling delay up to the maximum."""

    interval_seconds: float = 5.0
    batch: int = 20
    max_backoff_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class SpekeSettings:
    """The SPEKE endpoint's listener, packager credential and the URLs its answers carry."""

    credential: PackagerCredential
    public_base_url: str  # no trailing slash
    listener: SpekeListener = "internal"
    host: str = "127.0.0.1"  # with listener `own`
    port: int = 8443
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    mirror_queue: MirrorQueueSettings = field(default_factory=MirrorQueueSettings)


def parse_speke(reader: ConfigReader, raw: Any) -> SpekeSettings | None:
    """The `speke:` section, None when absent (the endpoint is off) or invalid."""
    if raw is None:
        return None
    path = "speke"
    section = reader.mapping(raw, path, _FIELDS)
    defaults = SpekeSettings(PackagerCredential("bearer", ""), "")
    listener = reader.choice(section, "listener", path, LISTENERS, defaults.listener)
    host, port = _own_listener(reader, section, listener, defaults)
    credential = _parse_credential(reader, section.get("credential"))
    base_url = _parse_base_url(reader, section)
    max_body = reader.positive(section, "max_body_bytes", path, int, defaults.max_body_bytes)
    queue = _parse_queue(reader, section.get("mirror_queue"))
    if credential is None or base_url is None:
        return None
    return SpekeSettings(credential, base_url, listener, host, port, max_body, queue)


def _own_listener(
    reader: ConfigReader, section: dict[str, Any], listener: str, defaults: SpekeSettings
) -> tuple[str, int]:
    """`host` and `port`, which only a listener of its own takes."""
    if listener != "own":
        for key in ("host", "port"):
            if key in section:
                reader.problem(f"speke.{key}", "is only for listener 'own'")
        return defaults.host, defaults.port
    host = reader.value(section, "host", "speke", str, defaults.host)
    port = reader.value(section, "port", "speke", int, defaults.port)
    if not 0 <= port <= 65535:
        reader.problem("speke.port", "must be between 0 and 65535")
    return host, port


def _parse_credential(reader: ConfigReader, raw: Any) -> PackagerCredential | None:
    path = "speke.credential"
    if raw is None:
        reader.problem(path, "is missing, and has no default (bearer or basic)")
        return None
    section = reader.mapping(raw, path, {"bearer", "basic"})
    if len(section.keys() & {"bearer", "basic"}) != 1:
        reader.problem(path, "must name exactly one of 'bearer' or 'basic'")
        return None
    if "bearer" in section:
        token = _secret(reader, section["bearer"], f"{path}.bearer")
        return None if token is None else PackagerCredential("bearer", token)
    basic = reader.mapping(section["basic"], f"{path}.basic", {"username", "password"})
    username = reader.value(basic, "username", f"{path}.basic", str, REQUIRED)
    if username is not None and (not username or ":" in username or not username.isprintable()):
        reader.problem(f"{path}.basic.username", "must be non-empty, printable, without ':'")
        username = None
    if "password" not in basic:
        reader.problem(f"{path}.basic.password", "is missing, and has no default")
        return None
    password = _secret(reader, basic["password"], f"{path}.basic.password")
    if username is None or password is None:
        return None
    return PackagerCredential("basic", password, username)


def _secret(reader: ConfigReader, raw: Any, path: str) -> str | None:
    value = reader.secret(raw, path)
    if value is not None and len(value) < MIN_SECRET_CHARS:
        reader.problem(path, f"must be at least {MIN_SECRET_CHARS} characters")
        return None
    if value is not None and any(char in value for char in "\r\n\x00"):
        reader.problem(path, "must not contain a line break or NUL")
        return None
    return value


def _parse_base_url(reader: ConfigReader, section: dict[str, Any]) -> str | None:
    """`public_base_url`: http(s), a host, no query or fragment; kept without a trailing /."""
    url = reader.value(section, "public_base_url", "speke", str, REQUIRED)
    if url is None:
        return None
    parts = urlsplit(url)
    ok = parts.scheme in ("http", "https") and bool(parts.netloc)
    if not ok or parts.query or parts.fragment or any(c in url for c in '"\r\n '):
        reader.problem(
            "speke.public_base_url",
            "must be an http(s) URL such as https://drm.example.com (no query or fragment)",
        )
        return None
    return url.rstrip("/")


def _parse_queue(reader: ConfigReader, raw: Any) -> MirrorQueueSettings:
    path = "speke.mirror_queue"
    section = reader.mapping(raw, path, _QUEUE_FIELDS)
    d = MirrorQueueSettings()
    return MirrorQueueSettings(
        interval_seconds=reader.positive(
            section, "interval_seconds", path, float, d.interval_seconds
        ),
        batch=reader.positive(section, "batch", path, int, d.batch),
        max_backoff_seconds=reader.positive(
            section, "max_backoff_seconds", path, float, d.max_backoff_seconds
        ),
    )
