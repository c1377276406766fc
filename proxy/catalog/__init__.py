"""The asset catalog: asset id -> CatalogEntry, behind a cache and pluggable backends."""

from __future__ import annotations

from proxy.catalog.base import Catalog, CatalogEntry, CatalogSettings
from proxy.catalog.cache import CachedCatalog
from proxy.catalog.registry import KNOWN_BACKENDS, build_catalog
from proxy.catalog.sqlite import SqliteCatalog

__all__ = [
    "KNOWN_BACKENDS",
    "CachedCatalog",
    "Catalog",
    "CatalogEntry",
    "CatalogSettings",
    "SqliteCatalog",
    "build_catalog",
]
