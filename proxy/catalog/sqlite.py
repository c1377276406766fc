"""The embedded SQLite catalog backend, filled by `drm-gateway catalog import`.

Lookups run on a private single-thread executor that owns the one read-only connection, so
the event loop never waits on disk and the connection never crosses threads.

Schema 2 added the `key_ids` column. A schema-1 file keeps working: it is read as "key ids
unknown" until `catalog import` migrates it (an ALTER TABLE, no rewrite), which the reader
notices on its next lookup.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import TypeAlias, TypeVar

from proxy.catalog.base import CatalogEntry
from proxy.errors import CatalogUnavailable
from proxy.observability.logs import FailureLog, get_logger

SCHEMA_VERSION = 2
# How often a lookup compares the file against the one it opened (a rename over it).
REPLACED_CHECK_SECONDS = 1.0
log = get_logger("catalog")

# Run one statement at a time (not executescript, which commits first), so the importer can
# create or migrate the schema inside its write transaction: two imports never race an ALTER.
# key_ids comes last, where ALTER TABLE ADD COLUMN puts it in a migrated schema-1 file.
_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY,
    drm_resource_id TEXT NULL,
    key_holders TEXT NULL,            -- JSON list of provider names; NULL = unknown
    tags TEXT NOT NULL DEFAULT '[]',  -- JSON list
    updated_at REAL,
    key_ids TEXT NULL                 -- JSON list of key ids (schema 2); NULL = unknown
)
"""
_ADD_KEY_IDS = "ALTER TABLE assets ADD COLUMN key_ids TEXT NULL"
# Partial index: `catalog audit` lists assets lacking a drmResourceId without a full scan.
# None for missing key ids: it cost ~10% of import time while most rows lack them (every
# old-format import), and the audit's table scan instead takes ~0.4 ms per 1,000 rows.
_CREATE_INDEX = """
CREATE INDEX IF NOT EXISTS assets_missing_resource_id
    ON assets (asset_id) WHERE drm_resource_id IS NULL
"""
_HAS_KEY_IDS = "SELECT 1 FROM pragma_table_info('assets') WHERE name = 'key_ids'"

_LOOKUP = "SELECT drm_resource_id, key_holders, tags, key_ids FROM assets WHERE asset_id = ?"
_LOOKUP_SCHEMA_1 = "SELECT drm_resource_id, key_holders, tags FROM assets WHERE asset_id = ?"
# Touches the assets table, so a corrupt file or a missing schema fails the ping;
# a bare `SELECT 1` would succeed without reading the file.
_PING = "SELECT 1 FROM assets LIMIT 1"

_Job: TypeAlias = Callable[[sqlite3.Connection, str], "CatalogEntry | None"]
_T = TypeVar("_T")

# Whole-catalog reads (`rules diff`): pages in rowid order (sequential in the file), ids by
# the primary key's index, entries by id. {columns} is the lookup's, schema 1 or 2.
_PAGE = "SELECT rowid, asset_id, {columns} FROM assets WHERE rowid > ? ORDER BY rowid LIMIT ?"
_IDS_PAGE = "SELECT asset_id FROM assets WHERE asset_id > ? ORDER BY asset_id LIMIT ?"
_BY_IDS = "SELECT asset_id, {columns} FROM assets WHERE asset_id IN ({marks})"
_COLUMNS = "drm_resource_id, key_holders, tags, key_ids"
_COLUMNS_SCHEMA_1 = "drm_resource_id, key_holders, tags"
_COUNT = "SELECT count(*) FROM assets"
_IN_LIMIT = 500  # ids per IN (...) query, well under SQLite's parameter limit


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the catalog tables, or migrate a schema-1 file, on an open read-write connection
    (idempotent; runs inside the caller's transaction if one is open)."""
    conn.execute(_CREATE_TABLE)
    if not has_key_ids_column(conn):
        conn.execute(_ADD_KEY_IDS)
    conn.execute(_CREATE_INDEX)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def has_key_ids_column(conn: sqlite3.Connection) -> bool:
    """Whether the `assets` table has the `key_ids` column (schema 2), i.e. is not schema 1."""
    return conn.execute(_HAS_KEY_IDS).fetchone() is not None


def ensure_schema(path: Path) -> None:
    """Create the database file and its schema if they do not exist yet."""
    conn = sqlite3.connect(path)
    try:
        create_schema(conn)
        conn.commit()
    finally:
        conn.close()


def read_only_uri(path: Path) -> str:
    """The `file:` URI that opens `path` read-only (percent-encoded, absolute).

    Where its folder cannot be written (a read-only mount), also `immutable=1`: SQLite then
    needs no lock, journal, -wal or -shm file, none of which it could create there. Nothing
    rewrites a file in place on such a mount; a new catalog arrives as a new file (a rename
    or a remount), which `SqliteCatalog` notices and reopens."""
    immutable = "" if os.access(path.resolve().parent, os.W_OK) else "&immutable=1"
    return f"{path.resolve().as_uri()}?mode=ro{immutable}"


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when the file is replaced or rewritten: device, inode, size, mtime."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


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


def decode_key_ids(text: str) -> tuple[str, ...]:
    """Decode the `key_ids` JSON list (written validated by the importer) into a tuple.

    Not cached like the name sets: key ids differ from one asset to the next.
    """
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("expected a JSON list of strings")
    return tuple(value)


def decode_row(asset_id: str, row: Sequence[str | None]) -> CatalogEntry:
    """Turn one `assets` row (drm_resource_id, key_holders, tags[, key_ids]) into a CatalogEntry;
    a row without key_ids (a schema-1 file) has them unknown."""
    drm_resource_id, key_holders, tags, *rest = row
    key_ids = rest[0] if rest else None
    return CatalogEntry(
        asset_id=asset_id,
        drm_resource_id=drm_resource_id,
        key_holders=None if key_holders is None else decode_name_set(key_holders),
        tags=decode_name_set(tags) if tags else frozenset(),
        key_ids=decode_key_ids(key_ids) if key_ids else (),
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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog-sqlite")
        # Touched only by the executor thread: the connection, whether its file has the
        # key_ids column (rechecked per lookup while it has not: an import may migrate it),
        # the identity of the file it opened and when that was last compared, and the last
        # failure logged (each distinct one is logged once).
        self._conn: sqlite3.Connection | None = None
        self._has_key_ids = False
        self._identity: tuple[int, int, int, int] | None = None
        self._checked = 0.0
        self._failures = FailureLog(log, "catalog_unavailable", path=str(path))
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

    # --- whole-catalog reads: for tools such as `rules diff`, never on the request path ---

    async def count(self) -> int:
        """How many assets the catalog holds; CatalogUnavailable on a database error."""
        return await self._read(lambda conn: int(conn.execute(_COUNT).fetchone()[0]))

    async def iter_entries(self, batch: int = 1_000) -> AsyncIterator[list[CatalogEntry]]:
        """Every entry, `batch` at a time, in file order; each page is its own short read
        (keyset paging on rowid), so only one page is held at a time."""
        after = 0
        while True:
            last, page = await self._read(partial(_entries_page, after=after, size=batch))
            if page:
                yield page
            if len(page) < batch:
                return
            after = last

    async def iter_ids(self, batch: int = 1_000) -> AsyncIterator[list[str]]:
        """Every asset id, `batch` at a time, in id order (read from the primary key's index:
        no row is decoded), e.g. to draw a uniform sample before reading the entries."""
        after = ""
        while True:
            page = await self._read(partial(_ids_page, after=after, size=batch))
            if page:
                yield page
            if len(page) < batch:
                return
            after = page[-1]

    async def get_many(self, asset_ids: Sequence[str]) -> list[CatalogEntry]:
        """The entries of those of `asset_ids` the catalog holds (unknown ids are left out)."""
        return await self._read(lambda conn: _entries_by_id(conn, asset_ids))

    async def _read(self, job: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `job` on the executor thread, failures mapped as for `get`."""
        result: list[_T] = []

        def run(conn: sqlite3.Connection, _: str) -> None:
            result.append(job(conn))

        await self._run(run, "")
        return result[0]

    def _guarded(self, func: _Job, arg: str) -> CatalogEntry | None:
        """Run `func` on the executor thread, mapping database errors to CatalogUnavailable."""
        try:
            self._reopen_if_replaced()
            if self._conn is None:
                self._conn = self._connect()
            result = func(self._conn, arg)
        except (sqlite3.Error, ValueError, OSError) as exc:
            # Reopen next time: the file may have been repaired or replaced meanwhile.
            self._disconnect()
            self._failures.failed(exc)
            raise CatalogUnavailable() from exc
        self._failures.recovered()
        return result

    def _connect(self) -> sqlite3.Connection:
        identity = file_identity(self._path)
        conn = sqlite3.connect(read_only_uri(self._path), uri=True, timeout=2.0)
        self._identity, self._checked = identity, time.monotonic()
        return conn

    def _reopen_if_replaced(self) -> None:
        """Drop the connection when the file was replaced (a new catalog renamed over it) or
        rewritten: an open connection would keep reading the old inode. Checked at most every
        REPLACED_CHECK_SECONDS, so a cache miss costs one stat() now and then."""
        now = time.monotonic()
        if self._conn is None or now - self._checked < REPLACED_CHECK_SECONDS:
            return
        self._checked = now
        try:
            replaced = file_identity(self._path) != self._identity
        except OSError:
            return  # gone: the readiness ping says so; the open file still answers
        if replaced:
            log.info("catalog_reopened", path=str(self._path))
            self._disconnect()

    def _lookup(self, conn: sqlite3.Connection, asset_id: str) -> CatalogEntry | None:
        if not self._has_key_ids:
            self._has_key_ids = has_key_ids_column(conn)
        query = _LOOKUP if self._has_key_ids else _LOOKUP_SCHEMA_1
        row = conn.execute(query, (asset_id,)).fetchone()
        return None if row is None else decode_row(asset_id, row)

    def _ping(self, conn: sqlite3.Connection, _: str) -> None:
        if not self._path.is_file():
            # An open connection keeps reading a deleted file; readiness should still fail.
            raise FileNotFoundError(f"catalog database {self._path} is gone")
        conn.execute(_PING).fetchall()

    def _disconnect(self) -> None:
        self._has_key_ids = False  # the file may be replaced before the next connection
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _columns(conn: sqlite3.Connection) -> str:
    return _COLUMNS if has_key_ids_column(conn) else _COLUMNS_SCHEMA_1


def _entries_page(
    conn: sqlite3.Connection, after: int, size: int
) -> tuple[int, list[CatalogEntry]]:
    """The next `size` entries after rowid `after`, and the last rowid read."""
    rows = conn.execute(_PAGE.format(columns=_columns(conn)), (after, size)).fetchall()
    return (rows[-1][0] if rows else after), [decode_row(row[1], row[2:]) for row in rows]


def _ids_page(conn: sqlite3.Connection, after: str, size: int) -> list[str]:
    return [row[0] for row in conn.execute(_IDS_PAGE, (after, size))]


def _entries_by_id(conn: sqlite3.Connection, asset_ids: Sequence[str]) -> list[CatalogEntry]:
    columns = _columns(conn)
    entries: list[CatalogEntry] = []
    for start in range(0, len(asset_ids), _IN_LIMIT):
        chunk = asset_ids[start : start + _IN_LIMIT]
        query = _BY_IDS.format(columns=columns, marks=",".join("?" * len(chunk)))
        entries.extend(decode_row(row[0], row[1:]) for row in conn.execute(query, chunk))
    return entries
