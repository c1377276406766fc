"""The catalog contract: asset id -> CatalogEntry, behind a small Protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """What the gateway knows of one asset.

    `drm_resource_id` is None while it has not been propagated; `key_holders` is None when
    the catalog does not know which providers hold the keys (then any provider may serve).
    `key_ids` are the asset's content key ids (32 lowercase hex characters each), empty when
    the catalog does not know them (a provider that needs key ids cannot serve it then).
    """

    asset_id: str
    drm_resource_id: str | None
    key_holders: frozenset[str] | None = None
    tags: frozenset[str] = frozenset()
    key_ids: tuple[str, ...] = ()


class Catalog(Protocol):
    """A catalog backend. `get` returns None for an unknown asset and raises on failure."""

    async def get(self, asset_id: str) -> CatalogEntry | None: ...

    async def ping(self) -> None:
        """Raise if the backend cannot answer."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpCatalogSettings:
    """The `http` backend: a metadata service answering `GET {base_url}/assets/{asset_id}`.

    `auth_header` and `token` come together or not at all; the token is sent as the header's
    whole value (so a bearer token's secret holds `Bearer ...`). `ca_file` adds a private CA
    to the system's for an https `base_url`; certificates are always verified.
    """

    base_url: str
    auth_header: str | None = None
    token: str | None = field(default=None, repr=False)
    connect_timeout: float = 1.0
    total_timeout: float = 2.0
    max_response_bytes: int = 65_536
    max_connections: int = 64
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class RedisCatalogSettings:
    """The `redis` backend: one hash per asset at `{key_prefix}asset:{asset_id}`, and changed
    asset ids announced on `channel` (None: `{key_prefix}changes`).

    `url` is `redis://`, `rediss://` (TLS, certificates and host name verified) or
    `unix://`; the password comes from a secret, never from the URL.
    """

    url: str
    password: str | None = field(default=None, repr=False)
    key_prefix: str = "drm-gateway:"
    channel: str | None = None
    connect_timeout: float = 1.0
    timeout: float = 1.0

    @property
    def changes_channel(self) -> str:
        """The channel changed asset ids are published on."""
        return self.channel if self.channel is not None else f"{self.key_prefix}changes"


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    backend: str = "sqlite"
    path: Path | None = None
    ttl_seconds: float = 300.0
    negative_ttl_seconds: float = 30.0
    stale_seconds: float = 600.0
    max_entries: int = 1_000_000
    # Assets known missing are capped apart; None: a tenth of max_entries.
    max_negative_entries: int | None = None
    http: HttpCatalogSettings | None = None  # for backend `http`
    redis: RedisCatalogSettings | None = None  # for backend `redis`
