"""The catalog contract: asset id -> CatalogEntry, behind a small Protocol."""

from __future__ import annotations

from dataclasses import dataclass
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
class CatalogSettings:
    backend: str = "sqlite"
    path: Path | None = None
    ttl_seconds: float = 300.0
    negative_ttl_seconds: float = 30.0
    stale_seconds: float = 600.0
    max_entries: int = 1_000_000
