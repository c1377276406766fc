"""KeyRecords on the embedded SQLite catalog file.

One read-write connection on a private thread. Writes
queued meanwhile share one short transaction (a group commit: one journal sync for many
titles), each in its own savepoint so one failing does not undo the others; the gateway's
read-only reader sees them on its next read. The reverse lookup uses an index on
`drm_resource_id`, and the queue a `mirror_jobs` table, both created by the first write (the
journal mode is left as `catalog import` leaves it, a rollback journal, so the file can still
be shipped to read-only mounts). Reads never write: a dry run leaves the file as it was.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, cast

from proxy.catalog.base import CatalogEntry
from proxy.catalog.keys.base import (
    DEFAULT_LEASE_SECONDS,
    KeyRecordsError,
    MirrorJob,
    T,
    bounded_error,
    check_record,
    check_resource,
    merged_key_ids,
)
from proxy.catalog.sqlite import create_schema, decode_row, has_key_ids_column
from proxy.domain import KeyId

_CREATE_RESOURCE_INDEX = """
CREATE INDEX IF NOT EXISTS assets_drm_resource_id
    ON assets (drm_resource_id) WHERE drm_resource_id IS NOT NULL
"""
_CREATE_MIRRORS = """
CREATE TABLE IF NOT EXISTS mirror_jobs (
    asset_id TEXT NOT NULL,
    target TEXT NOT NULL,
    drm_resource_id TEXT NOT NULL,
    key_ids TEXT NOT NULL,           -- JSON list of key ids: never a key
    source TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NULL,
    due_at REAL NOT NULL,            -- Unix time
    PRIMARY KEY (asset_id, target)
)
"""
_CREATE_MIRRORS_DUE = "CREATE INDEX IF NOT EXISTS mirror_jobs_due ON mirror_jobs (due_at)"
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
_SELECT_ENTRY = "SELECT drm_resource_id, key_holders, tags, key_ids FROM assets WHERE asset_id = ?"
_SELECT_ENTRY_1 = "SELECT drm_resource_id, key_holders, tags FROM assets WHERE asset_id = ?"
_PAGE = (
    "SELECT asset_id, drm_resource_id, key_holders, tags, key_ids FROM assets"
    " WHERE asset_id > ? ORDER BY asset_id LIMIT ?"
)
_PAGE_1 = (
    "SELECT asset_id, drm_resource_id, key_holders, tags FROM assets"
    " WHERE asset_id > ? ORDER BY asset_id LIMIT ?"
)
_BY_RESOURCE = "SELECT asset_id FROM assets WHERE drm_resource_id = ? ORDER BY asset_id LIMIT 1"
_INSERT_ASSET = (
    "INSERT INTO assets (asset_id, drm_resource_id, key_holders, tags, updated_at, key_ids)"
    " VALUES (?, ?, ?, '[]', ?, ?)"
)
_UPDATE_ASSET = (
    "UPDATE assets SET drm_resource_id = ?, key_holders = ?, key_ids = ?, updated_at = ?"
    " WHERE asset_id = ?"
)
_JOB_COLUMNS = "asset_id, target, drm_resource_id, key_ids, source, attempts, last_error"
_SELECT_JOB = "SELECT key_ids FROM mirror_jobs WHERE asset_id = ? AND target = ?"
_INSERT_JOB = (
    "INSERT INTO mirror_jobs (asset_id, target, drm_resource_id, key_ids, source, attempts,"
    " last_error, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_MERGE_JOB = (
    "UPDATE mirror_jobs SET drm_resource_id = ?, key_ids = ?, source = ?, due_at = ?"
    " WHERE asset_id = ? AND target = ?"
)
_DUE_JOBS = f"SELECT {_JOB_COLUMNS} FROM mirror_jobs WHERE due_at <= ? ORDER BY due_at LIMIT ?"
_CLAIM_JOB = "UPDATE mirror_jobs SET due_at = ? WHERE asset_id = ? AND target = ?"
_FINISH_JOB = "DELETE FROM mirror_jobs WHERE asset_id = ? AND target = ? AND key_ids = ?"
_RETRY_JOB = (
    "UPDATE mirror_jobs SET attempts = attempts + 1, last_error = ?, due_at = ?"
    " WHERE asset_id = ? AND target = ?"
)
_COUNT_JOBS = "SELECT COUNT(*) FROM mirror_jobs"
_COUNT_ASSETS = "SELECT COUNT(*) FROM assets"

_Job = Callable[[sqlite3.Connection], Any]


def _names_json(names: Iterable[str]) -> str:
    # Sorted, as the importer writes them (the reader caches decoded sets by their text).
    return json.dumps(sorted(set(names)), separators=(",", ":"))


def _kids_json(kids: Iterable[str]) -> str:
    return json.dumps(list(kids), separators=(",", ":"))


class SqliteKeyRecords:
    """KeyRecords on the embedded SQLite catalog file (see the module docstring)."""

    def __init__(self, path: Path, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self._path = path
        self._lease = lease_seconds
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-records")
        # Touched only by the executor thread.
        self._conn: sqlite3.Connection | None = None
        self._writable = False
        # Write jobs waiting for the next group commit, and the task committing them.
        self._pending: list[tuple[_Job, asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteKeyRecords({str(self._path)!r})"

    async def asset_for_resource(self, drm_resource_id: str) -> str | None:
        def lookup(conn: sqlite3.Connection) -> str | None:
            if not _has_table(conn, "assets"):
                return None
            row = conn.execute(_BY_RESOURCE, (drm_resource_id,)).fetchone()
            return None if row is None else str(row[0])

        return await self._read(lookup)

    async def record(
        self,
        asset_id: str,
        *,
        drm_resource_id: str,
        key_ids: Sequence[KeyId],
        add_holders: Iterable[str],
    ) -> None:
        kids, holders = check_record(asset_id, drm_resource_id, key_ids, add_holders)

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute(_SELECT_ENTRY, (asset_id,)).fetchone()
            now = time.time()
            if row is None:
                values = (asset_id, drm_resource_id, _names_json(holders), now, _kids_json(kids))
                conn.execute(_INSERT_ASSET, values)
                return
            entry = decode_row(asset_id, row)
            check_resource(asset_id, entry.drm_resource_id, drm_resource_id)
            names = _names_json((entry.key_holders or frozenset()) | holders)
            merged = _kids_json(merged_key_ids(entry.key_ids, kids))
            conn.execute(_UPDATE_ASSET, (drm_resource_id, names, merged, now, asset_id))

        await self._write(write)

    async def get(self, asset_id: str) -> CatalogEntry | None:
        def lookup(conn: sqlite3.Connection) -> CatalogEntry | None:
            if not _has_table(conn, "assets"):
                return None
            query = _SELECT_ENTRY if has_key_ids_column(conn) else _SELECT_ENTRY_1
            row = conn.execute(query, (asset_id,)).fetchone()
            return None if row is None else decode_row(asset_id, row)

        return await self._read(lookup)

    async def iter_assets(self, batch: int = 1000) -> AsyncIterator[CatalogEntry]:
        after = ""
        while True:
            page = await self._read(_page_after(after, batch))
            for entry in page:
                yield entry
            if len(page) < batch:
                return
            after = page[-1].asset_id

    async def count_assets(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            if not _has_table(conn, "assets"):
                return 0
            return int(conn.execute(_COUNT_ASSETS).fetchone()[0])

        return await self._read(count)

    async def enqueue_mirror(self, job: MirrorJob) -> None:
        kids, _ = check_record(job.asset_id, job.drm_resource_id, job.key_ids, [job.target])

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            row = conn.execute(_SELECT_JOB, (job.asset_id, job.target)).fetchone()
            if row is None:
                values = (job.asset_id, job.target, job.drm_resource_id, _kids_json(kids))
                error = None if job.last_error is None else bounded_error(job.last_error)
                conn.execute(_INSERT_JOB, (*values, job.source, job.attempts, error, now))
                return
            merged = _kids_json(merged_key_ids(json.loads(row[0]), kids))
            key = (job.asset_id, job.target)
            conn.execute(_MERGE_JOB, (job.drm_resource_id, merged, job.source, now, *key))

        await self._write(write)

    async def due_mirrors(self, limit: int) -> list[MirrorJob]:
        def claim(conn: sqlite3.Connection) -> list[MirrorJob]:
            now = time.time()
            rows = conn.execute(_DUE_JOBS, (now, limit)).fetchall()
            for row in rows:
                conn.execute(_CLAIM_JOB, (now + self._lease, row[0], row[1]))
            return [_job_of_row(row) for row in rows]

        return cast(list[MirrorJob], await self._write(claim))

    async def finish_mirror(self, job: MirrorJob) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            conn.execute(_FINISH_JOB, (job.asset_id, job.target, _kids_json(job.key_ids)))

        await self._write(finish)

    async def retry_mirror_later(self, job: MirrorJob, error: str, delay_seconds: float) -> None:
        def retry(conn: sqlite3.Connection) -> None:
            due = time.time() + delay_seconds
            conn.execute(_RETRY_JOB, (bounded_error(error), due, job.asset_id, job.target))

        await self._write(retry)

    async def count_mirrors(self) -> int:
        def count(conn: sqlite3.Connection) -> int:
            if not _has_table(conn, "mirror_jobs"):
                return 0
            return int(conn.execute(_COUNT_JOBS).fetchone()[0])

        return await self._read(count)

    async def close(self) -> None:
        """Commit what is queued, close the connection and stop the thread (idempotent)."""
        if self._closed:
            return
        if self._committer is not None:
            await asyncio.shield(self._committer)
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    # --- running on the thread ---------------------------------------------------------------

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise KeyRecordsError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, job)

    def _guarded(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read job; a file that does not exist yet reads as an empty catalog (and is
        not created: only a write creates it)."""
        try:
            if self._conn is None and not self._path.exists():
                with closing(sqlite3.connect(":memory:")) as empty:
                    return job(empty)
            return job(self._connection(create=False))
        except sqlite3.Error as exc:
            raise KeyRecordsError(f"catalog database {self._path}: {exc}") from exc

    async def _write(self, job: _Job) -> Any:
        """Run `job` in the next group commit; its result, or its exception."""
        if self._closed:
            raise KeyRecordsError(f"{self!r} is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending())
        return await future

    async def _commit_pending(self) -> None:
        """Commit the queued write jobs, a transaction per round, until none is left."""
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await loop.run_in_executor(
                    self._executor, self._commit, [job for job, _ in batch]
                )
            except BaseException as exc:  # the whole transaction failed
                error = exc if isinstance(exc, Exception) else KeyRecordsError("cancelled")
                outcomes = [(False, error)] * len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    def _commit(self, jobs: list[_Job]) -> list[tuple[bool, Any]]:
        """One write transaction; each job in its own savepoint (a failure undoes only it)."""
        try:
            conn = self._connection(create=True)
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._ensure_writable(conn)
                outcomes = [_in_savepoint(conn, job) for job in jobs]
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self._disconnect()
            raise KeyRecordsError(f"catalog database {self._path}: {exc}") from exc
        return outcomes

    def _connection(self, *, create: bool) -> sqlite3.Connection:
        """The read-write connection; only a write creates a missing file (a read raises)."""
        if self._conn is None:
            mode = "rwc" if create else "rw"
            uri = f"{self._path.resolve().as_uri()}?mode={mode}"
            self._conn = sqlite3.connect(uri, uri=True, timeout=10.0, isolation_level=None)
        return self._conn

    def _ensure_writable(self, conn: sqlite3.Connection) -> None:
        """The schema (migrated if schema 1), the resource id index and the queue table:
        created by the first write, inside its transaction."""
        if self._writable:
            return
        create_schema(conn)
        conn.execute(_CREATE_RESOURCE_INDEX)
        conn.execute(_CREATE_MIRRORS)
        conn.execute(_CREATE_MIRRORS_DUE)
        self._writable = True

    def _disconnect(self) -> None:
        self._writable = False
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute(_HAS_TABLE, (name,)).fetchone() is not None


def _in_savepoint(conn: sqlite3.Connection, job: _Job) -> tuple[bool, Any]:
    conn.execute("SAVEPOINT job")
    try:
        result = job(conn)
    except (KeyRecordsError, ValueError, sqlite3.IntegrityError) as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return False, exc
    conn.execute("RELEASE job")
    return True, result


def _page_after(after: str, size: int) -> Callable[[sqlite3.Connection], list[CatalogEntry]]:
    """A read job: the next `size` entries by asset id after `after` (keyset paging: each page
    is its own short read, so a writer is never held off for the whole scan)."""

    def page(conn: sqlite3.Connection) -> list[CatalogEntry]:
        if not _has_table(conn, "assets"):
            return []
        query = _PAGE if has_key_ids_column(conn) else _PAGE_1
        return [decode_row(row[0], row[1:]) for row in conn.execute(query, (after, size))]

    return page


def _job_of_row(row: Sequence[Any]) -> MirrorJob:
    asset_id, target, drm_resource_id, key_ids, source, attempts, last_error = row
    kids = tuple(KeyId(kid) for kid in json.loads(key_ids))
    return MirrorJob(asset_id, drm_resource_id, kids, source, target, attempts, last_error)
