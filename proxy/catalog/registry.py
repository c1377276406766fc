"""Build the configured catalog: a backend from the registry, wrapped in the cache."""

from __future__ import annotations

from collections.abc import Callable

from proxy.catalog.base import Catalog, CatalogSettings
from proxy.catalog.cache import CachedCatalog, Observer
from proxy.catalog.http import HttpCatalog
from proxy.catalog.redis import RedisCatalog
from proxy.catalog.sqlite import SqliteCatalog

BackendFactory = Callable[[CatalogSettings], Catalog]


def _build_sqlite(settings: CatalogSettings) -> Catalog:
    if settings.path is None:
        raise ValueError("catalog backend 'sqlite' needs a path")
    return SqliteCatalog(settings.path)


def _build_http(settings: CatalogSettings) -> Catalog:
    if settings.http is None:
        raise ValueError("catalog backend 'http' needs its 'http' settings")
    return HttpCatalog(settings.http)


def _build_redis(settings: CatalogSettings) -> Catalog:
    if settings.redis is None:
        raise ValueError("catalog backend 'redis' needs its 'redis' settings")
    return RedisCatalog(settings.redis)


_BACKENDS: dict[str, BackendFactory] = {
    "sqlite": _build_sqlite,
    "http": _build_http,
    "redis": _build_redis,
}

KNOWN_BACKENDS: tuple[str, ...] = tuple(sorted(_BACKENDS))
"""The names accepted as `catalog.backend` in the config."""


def build_catalog(settings: CatalogSettings, *, observe: Observer | None = None) -> CachedCatalog:
    """Open the configured backend and put the cache in front of it.

    Raises ValueError for an unknown backend or missing setting, and CatalogUnavailable when
    the backend cannot be opened (e.g. the SQLite file does not exist).
    """
    factory = _BACKENDS.get(settings.backend)
    if factory is None:
        known = ", ".join(KNOWN_BACKENDS)
        raise ValueError(f"unknown catalog backend '{settings.backend}' (known: {known})")
    return CachedCatalog(
        factory(settings),
        ttl=settings.ttl_seconds,
        negative_ttl=settings.negative_ttl_seconds,
        stale_seconds=settings.stale_seconds,
        max_entries=settings.max_entries,
        max_negative_entries=settings.max_negative_entries,
        observe=observe,
    )
