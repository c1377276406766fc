"""The embedded SQLite catalog backend, filled by `drm-gateway catalog import`.

Lookups run on a private single-thread executor that owns the one read-only connection, so
the event loop never waits on disk and the connection never crosses threads.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import TypeAlias

from proxy.catalog.base import CatalogEntry
from proxy.errors import CatalogUnavailable

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    drm_resource_id TEXT NULL,
    key_holders TEXT NULL,            -- JSON list of provider names; NULL = unknown
    tags TEXT NOT NULL DEFAULT '[]',  -- JSON list
    updated_at REAL
);
-- Partial index: `catalog audit` lists assets lacking a drmResourceId without a full scan.
CREATE INDEX IF NOT EXISTS assets_missing_resource_id
    ON assets (asset_id) WHERE drm_resource_id IS NULL;
"""

_LOOKUP = "SELECT drm_resource_id, key_holders, tags FROM assets WHERE asset_id = ?"
# Touches the assets table, so a corrupt file or a missing schema fails the ping;
# a bare `SELECT 1` would succeed without reading the file.
_PING = "SELECT 1 FROM assets LIMIT 1"

_Job: TypeAlias = Callable[[sqlite3.Connection, str], "CatalogEntry | None"]


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the catalog tables on an open read-write connection (idempotent)."""
    conn.executescript(_SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def ensure_schema(path: Path) -> None:
    """Create the database file and its schema if they do not exist yet."""
    conn = sqlite3.connect(path)
    try:
        create_schema(conn)
        conn.commit()
    finally:
        conn.close()


def read_only_uri(path: Path) -> str:
    """The `file:` URI that opens `path` read-only (percent-encoded, absolute)."""
    return f"{path.resolve().as_uri()}?mode=ro"


@lru_cache(maxsize=4096)
def decode_name_set(text: str) -> frozenset[str]:
    """Decode a JSON list column into a frozenset.

    Cached because few distinct key-holder and tag sets exist: a million cached entries then
    share a handful of frozensets instead of holding a million copies.
    """
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a JSON list of strings")
    return frozenset(value)


def decode_row(asset_id: str, row: tuple[str | None, str | None, str | None]) -> CatalogEntry:
    """Turn one `assets` row into a CatalogEntry."""
    drm_resource_id, key_holders, tags = row
    return CatalogEntry(
        asset_id=asset_id,
        drm_resource_id=drm_resource_id,
        key_holders=None if key_holders is None else decode_name_set(key_holders),
        tags=decode_name_set(tags) if tags else frozenset(),
    )


class SqliteCatalog:
    """A Catalog reading one SQLite file, read-only, off the event loop."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            # The player-facing message stays generic; the path goes in the cause.
            raise CatalogUnavailable() from FileNotFoundError(
                f"catalog database {path} does not exist"
            )
        self._path = path
        self._uri = read_only_uri(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only by the executor thread
        self._closed = False

    @property
    def path(self) -> Path:
        """The database file this catalog reads."""
        return self._path

    async def get(self, asset_id: str) -> CatalogEntry | None:
        """Look up one asset; None when unknown, CatalogUnavailable on any database error."""
        return await self._run(self._lookup, asset_id)

    async def ping(self) -> None:
        """Raise CatalogUnavailable unless the file exists and holds a readable catalog."""
        await self._run(self._ping, "")

    async def close(self) -> None:
        """Close the connection and stop the executor thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    async def _run(self, func: _Job, arg: str) -> CatalogEntry | None:
        if self._closed:
            raise CatalogUnavailable()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, func, arg)

    def _guarded(self, func: _Job, arg: str) -> CatalogEntry | None:
        """Run `func` on the executor thread, mapping database errors to CatalogUnavailable."""
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self._uri, uri=True, timeout=2.0)
            return func(self._conn, arg)
        except (sqlite3.Error, ValueError, OSError) as exc:
            # Reopen next time: the file may have been repaired or replaced meanwhile.
            self._disconnect()
            raise CatalogUnavailable() from exc

    def _lookup(self, conn: sqlite3.Connection, asset_id: str) -> CatalogEntry | None:
        row = conn.execute(_LOOKUP, (asset_id,)).fetchone()
        return None if row is None else decode_row(asset_id, row)

    def _ping(self, conn: sqlite3.Connection, _: str) -> None:
        if not self._path.is_file():
            # An open connection keeps reading a deleted file; readiness should still fail.
            raise FileNotFoundError(f"catalog database {self._path} is gone")
        conn.execute(_PING).fetchall()

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
