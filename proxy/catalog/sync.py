"""`drm-gateway catalog sync`: make a catalog match an export, showing the difference first.

How the two sides are compared: the source (a CSV / JSON Lines export, or another SQLite
catalog) is streamed through the importer's readers and checks (`read_records`,
`stored_records`, `ProviderCheck`: same parsing, same line-numbered rejections) into a
temporary SQLite table, a few thousand rows per statement; duplicates are then found with SQL
(not a Python set of every id), and the diff is a handful of SQL joins of that table against
the target's `assets`. Python holds one chunk of rows at a time whatever the source size; the
temporary table lives in SQLite's temp store (a file, not the heap, beyond its page cache).

Where things go: a location is parsed once into a `Location` (`parse_source`,
`parse_target`), or, for a redis://, rediss:// or unix:// TARGET, a `RedisTarget`.

A SQLite target is applied in the one write transaction that computed the diff: the target is
never half synced, and no other writer slips in between what was shown and what is written.

A Redis target (`sync_to_redis`) is compared the same way: the source goes into the same
temporary table (of an in-memory database with a file temp store), and `temp.target` is filled
from Redis: one pipelined HGETALL per source asset (a few thousand per round trip), plus a
SCAN of the asset keys for the ones the source lacks (counted, and deleted by --prune).
Stored values are turned back into the importer's canonical text, so the same SQL joins give
the same diff. Applying writes through the Redis backend's own `queue_row`, in MULTI/EXEC
batches that each publish their asset ids on the changes channel (and take the ids that now
have a drmResourceId off the fleet's missing list). Redis has no transaction spanning the
whole sync: a failure leaves the batches already written (each one whole), and a writer
running at the same time is not locked out.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.importer import (
    KEEP_KEY_IDS,
    CatalogImportError,
    Progress,
    ProviderCheck,
    Record,
    Rejection,
    Row,
    RowCheck,
    RowFilter,
    _key_ids_json,
    _names_json,
    format_rejections,
    leave_wal,
    read_records,
    stored_records,
)
from proxy.catalog.missing_redis import MissingKeys, queue_removal
from proxy.catalog.redis import (
    BATCH_ROWS,
    URL_SCHEMES,
    GarbledValue,
    asset_key,
    check_url,
    create_client,
    decode_fields,
    encode_changes,
    queue_row,
)
from proxy.catalog.sqlite import create_schema, has_key_ids_column, read_only_uri
from proxy.routing.rules import ProviderTraits

DEFAULT_MAX_PRUNE_SHARE = 0.05
SQLITE_MAGIC = b"SQLite format 3\x00"
_CHUNK_ROWS = 5_000  # rows per executemany and per progress report
# Schemes a location may name; the ones mapped to None are known and not supported yet.
_UNSUPPORTED_SCHEMES = {
    "redis": "a Redis catalog (a target only)",
    "rediss": "a Redis catalog (a target only)",
    "unix": "a Redis catalog (a target only)",
    "http": "an HTTP metadata service (read-only)",
    "https": "an HTTP metadata service (read-only)",
}

CHANGE_KINDS = (
    "drm_resource_id_filled",
    "drm_resource_id_changed",
    "drm_resource_id_cleared",
    "key_holders_changed",
    "key_ids_changed",
    "tags_changed",
)
"""What an update changes; one updated asset may count under several."""

# Per change kind, when a source row `s` changes its target row `t` that way.
_CHANGE_SQL = {
    "drm_resource_id_filled": "t.drm_resource_id IS NULL AND s.drm_resource_id IS NOT NULL",
    "drm_resource_id_changed": "t.drm_resource_id IS NOT NULL AND s.drm_resource_id IS NOT NULL"
    " AND t.drm_resource_id <> s.drm_resource_id",
    "drm_resource_id_cleared": "t.drm_resource_id IS NOT NULL AND s.drm_resource_id IS NULL",
    "key_holders_changed": "s.key_holders IS NOT t.key_holders",
    # A source without key ids (an old export) leaves the target's alone: no change.
    "key_ids_changed": "NOT s.keep_key_ids AND s.key_ids IS NOT t.key_ids",
    "tags_changed": "s.tags IS NOT t.tags",
}
_CHANGED = " OR ".join(f"({cond})" for cond in _CHANGE_SQL.values())
_FROM = "FROM temp.source AS s LEFT JOIN temp.target AS t ON t.asset_id = s.asset_id"
_ADDED = "t.asset_id IS NULL"
_UPDATED = f"t.asset_id IS NOT NULL AND ({_CHANGED})"
_ABSENT = "FROM temp.target WHERE asset_id NOT IN (SELECT asset_id FROM temp.source)"

_CREATE_SOURCE = """
CREATE TEMP TABLE source (
    line INTEGER NOT NULL,
    asset_id TEXT NOT NULL,
    drm_resource_id TEXT NULL,
    key_holders TEXT NULL,
    tags TEXT NOT NULL,
    key_ids TEXT NULL,
    keep_key_ids INTEGER NOT NULL
)
"""
_INSERT_SOURCE = "INSERT INTO temp.source VALUES (?, ?, ?, ?, ?, ?, ?)"
_DUPLICATES = """
SELECT d.line, f.first FROM temp.source AS d
JOIN (SELECT asset_id, min(line) AS first FROM temp.source GROUP BY asset_id
      HAVING count(*) > 1) AS f ON f.asset_id = d.asset_id
WHERE d.line > f.first ORDER BY d.line
"""
_UPSERT = f"""
INSERT INTO main.assets (asset_id, drm_resource_id, key_holders, tags, key_ids, updated_at)
SELECT s.asset_id, s.drm_resource_id, s.key_holders, s.tags, s.key_ids, :now {_FROM}
WHERE s.keep_key_ids = :keep AND ({_ADDED} OR {_UPDATED})
ON CONFLICT (asset_id) DO UPDATE SET
    drm_resource_id = excluded.drm_resource_id,
    key_holders = excluded.key_holders,
    tags = excluded.tags,
    key_ids = CASE WHEN :keep THEN assets.key_ids ELSE excluded.key_ids END,
    updated_at = excluded.updated_at
"""
_PRUNE = "DELETE FROM main.assets WHERE asset_id NOT IN (SELECT asset_id FROM temp.source)"


class SyncUsageError(ValueError):
    """A SOURCE or TARGET that names nothing sync can use (the CLI's exit status 2)."""


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed SOURCE or TARGET: an export file (CSV / JSON Lines) or a SQLite catalog file."""

    kind: Literal["export", "sqlite"]
    path: Path


def parse_source(text: str) -> Location:
    """SOURCE: a SQLite catalog file (told by its header) or a CSV / JSON Lines export."""
    path = _path_of(text, "source")
    if not path.is_file():
        raise SyncUsageError(f"source {text!r} is not a file")
    return Location("sqlite" if _is_sqlite(path) else "export", path)


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A TARGET naming a Redis catalog: its redis://, rediss:// or unix:// URL (checked)."""

    url: str


def parse_target(text: str) -> Location | RedisTarget:
    """TARGET: a Redis catalog's URL, or a SQLite catalog file (created if missing)."""
    if text.partition("://")[0].lower() in URL_SCHEMES:
        try:
            check_url(text)
        except ValueError as exc:
            raise SyncUsageError(f"target {exc}") from None
        return RedisTarget(text)
    path = _path_of(text, "target")
    if path.exists() and not (path.is_file() and (_is_sqlite(path) or path.stat().st_size == 0)):
        raise SyncUsageError(f"target {text!r} is not a SQLite catalog file")
    return Location("sqlite", path)


def _path_of(text: str, role: str) -> Path:
    scheme, sep, rest = text.partition("://")
    if not sep:
        return Path(text)
    if scheme == "file":
        return Path(rest)
    what = _UNSUPPORTED_SCHEMES.get(scheme.lower())
    if what is not None:
        raise SyncUsageError(f"{role} {scheme}://... is {what}: not supported by sync")
    raise SyncUsageError(f"{role} {text!r}: unknown scheme {scheme!r} (give a file path)")


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError as exc:
        raise SyncUsageError(f"cannot read {path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True, slots=True)
class SyncOptions:
    """What `catalog sync` may do: prune, only show (dry run), and the prune safety limit."""

    prune: bool = False
    dry_run: bool = False
    force: bool = False
    allow_rejects: bool = False
    max_prune_share: float = DEFAULT_MAX_PRUNE_SHARE
    providers: Mapping[str, ProviderTraits] | None = None
    sample: int = 10

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_prune_share <= 1.0:
            raise ValueError("max_prune_share must be between 0 and 1")
        if self.sample < 0:
            raise ValueError("sample must not be negative")


@dataclass(frozen=True, slots=True)
class SyncDiff:
    """What the source would change in the target.

    `absent` counts the target's assets the source lacks; `removed` is the same number with
    --prune, else 0 (they stay). `changes` counts updated assets per CHANGE_KINDS entry.
    `samples` holds the first few asset ids (sorted) per "added", "removed"/"absent" and
    change kind.
    """

    target_total: int
    source_rows: int
    added: int
    updated: int
    unchanged: int
    absent: int
    removed: int
    changes: dict[str, int]
    samples: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SyncReport:
    """The outcome: the diff, the rejected source rows, whether the diff was written, and if
    not (dry run aside) why not."""

    diff: SyncDiff
    rejected: list[Rejection]
    applied: bool
    refusal: str | None = None


ShowDiff = Callable[[SyncDiff, list[Rejection]], None]
Note = Callable[[str], None]


def sync(
    source: Location,
    target: Location,
    options: SyncOptions = SyncOptions(),
    *,
    show: ShowDiff | None = None,
    progress: Progress | None = None,
    note: Note | None = None,
) -> SyncReport:
    """Make `target` hold what `source` holds; `show(diff, rejected)` is called before
    anything is written. Raises CatalogImportError when either side cannot be read or the
    target written (nothing was written then)."""
    say = note or (lambda _: None)
    check = None if options.providers is None else ProviderCheck(options.providers)
    created = not target.path.exists()
    report = None
    try:
        with _open_target(target.path, dry_run=options.dry_run) as conn:
            conn.execute(_CREATE_SOURCE)
            rejected = _load_source(conn, source, check, progress)
            say("comparing")
            rejected = sorted(rejected + _drop_duplicates(conn), key=lambda r: r.line)
            report = _compare_and_apply(conn, options, rejected, show, say)
            if report.applied:
                leave_wal(conn)
            return report
    except sqlite3.Error as exc:
        raise CatalogImportError(f"sync failed, nothing was written: {exc}") from exc
    finally:
        if created and (report is None or not report.applied):
            target.path.unlink(missing_ok=True)  # no empty file left behind a refusal


@contextmanager
def _open_target(path: Path, *, dry_run: bool) -> Iterator[sqlite3.Connection]:
    """A connection whose main database is the target. A dry run opens it read-only (or, if
    missing, an empty in-memory catalog): the file is not touched, byte for byte."""
    if dry_run and path.exists():
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    elif dry_run:
        conn = sqlite3.connect(":memory:", isolation_level=None)
        create_schema(conn)
    else:
        # The rollback journal, not the importer's WAL switch (which rewrites the header even
        # when nothing else is written): a refused sync leaves the file byte-identical, and
        # readers keep reading until the commit. A file left in WAL mode is converted back
        # once the sync is written.
        conn = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: no early spill, no early lock
    try:
        conn.execute("PRAGMA temp_store = FILE")  # the source table may be large
        yield conn
    finally:
        conn.close()


def _load_source(
    conn: sqlite3.Connection, source: Location, check: RowCheck | None, progress: Progress | None
) -> list[Rejection]:
    """Stream the source's valid rows into temp.source (one transaction, on the temp store
    only); return the rejected ones."""
    if source.kind == "export":
        with read_records(source.path, progress) as (records, report):
            return _insert_source(conn, records, report, check)
    try:
        other = sqlite3.connect(read_only_uri(source.path), uri=True)
    except sqlite3.Error as exc:
        raise CatalogImportError(f"cannot open the source catalog {source.path}: {exc}") from exc
    try:
        total: int = other.execute("SELECT count(*) FROM assets").fetchone()[0]

        def report(rows: int) -> None:  # a database source counts rows, not bytes
            if progress is not None:
                progress(rows, rows, max(total, rows))

        return _insert_source(conn, stored_records(other), report, check)
    finally:
        other.close()


def _insert_source(
    conn: sqlite3.Connection,
    records: Iterator[Record],
    report: Callable[[int], None],
    check: RowCheck | None,
) -> list[Rejection]:
    rejected: list[Rejection] = []
    chunk: list[tuple[int, str, str | None, str | None, str, str | None, int]] = []
    line_no = 0
    conn.execute("BEGIN")
    accept = RowFilter(rejected, check).accept
    for line_no, record in records:
        if (row := accept(line_no, record)) is None:
            continue
        asset_id, drm_resource_id, key_holders, tags, key_ids = row
        ids = None if key_ids is KEEP_KEY_IDS else key_ids
        keep = key_ids is KEEP_KEY_IDS
        chunk.append((line_no, asset_id, drm_resource_id, key_holders, tags, ids, int(keep)))
        if len(chunk) >= _CHUNK_ROWS:
            conn.executemany(_INSERT_SOURCE, chunk)
            chunk.clear()
            report(line_no)
    conn.executemany(_INSERT_SOURCE, chunk)
    conn.execute("CREATE INDEX temp.source_asset ON source (asset_id, line)")
    conn.execute("COMMIT")
    report(line_no)
    return rejected


def _drop_duplicates(conn: sqlite3.Connection) -> list[Rejection]:
    """Reject every later row of an asset id that the source repeats, as the importer does."""
    duplicates = conn.execute(_DUPLICATES).fetchall()
    if duplicates:
        conn.execute(
            "DELETE FROM temp.source WHERE rowid NOT IN"
            " (SELECT min(rowid) FROM temp.source GROUP BY asset_id)"
        )
    return [Rejection(line, f"duplicate of line {first}") for line, first in duplicates]


def _compare_and_apply(
    conn: sqlite3.Connection,
    options: SyncOptions,
    rejected: list[Rejection],
    show: ShowDiff | None,
    say: Note,
) -> SyncReport:
    # The write lock first: what is shown is what gets written.
    conn.execute("BEGIN" if options.dry_run else "BEGIN IMMEDIATE")
    try:
        if not options.dry_run:
            create_schema(conn)  # a new file, or a schema-1 one migrated: inside the lock
        key_ids = "key_ids" if has_key_ids_column(conn) else "NULL AS key_ids"
        conn.execute(
            "CREATE TEMP VIEW target AS SELECT asset_id, drm_resource_id, key_holders, tags,"
            f" {key_ids} FROM main.assets"
        )
        diff = _diff(conn, options)
        if show is not None:
            show(diff, rejected)
        refusal = _refusal(diff, rejected, options)
        applied = refusal is None and not options.dry_run
        if applied:
            say("applying")
            _apply(conn, prune=options.prune)
        conn.execute("COMMIT" if applied else "ROLLBACK")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return SyncReport(diff, rejected, applied, refusal)


def _diff(conn: sqlite3.Connection, options: SyncOptions) -> SyncDiff:
    sums = ", ".join(
        f"sum(CASE WHEN t.asset_id IS NOT NULL AND ({cond}) THEN 1 ELSE 0 END)"
        for cond in _CHANGE_SQL.values()
    )
    row = conn.execute(
        f"SELECT count(*), sum(CASE WHEN {_ADDED} THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN {_UPDATED} THEN 1 ELSE 0 END), {sums} {_FROM}"
    ).fetchone()
    source_rows, added, updated, *changed = (value or 0 for value in row)
    target_total = conn.execute("SELECT count(*) FROM temp.target").fetchone()[0]
    absent = conn.execute(f"SELECT count(*) {_ABSENT}").fetchone()[0]
    limit = options.sample
    samples = {"added": _sample(conn, f"SELECT s.asset_id {_FROM} WHERE {_ADDED}", limit)}
    for kind, cond in _CHANGE_SQL.items():
        where = f"t.asset_id IS NOT NULL AND ({cond})"
        samples[kind] = _sample(conn, f"SELECT s.asset_id {_FROM} WHERE {where}", limit)
    gone = "removed" if options.prune else "absent"
    samples[gone] = _sample(conn, f"SELECT asset_id {_ABSENT}", limit)
    return SyncDiff(
        target_total=target_total,
        source_rows=source_rows,
        added=added,
        updated=updated,
        unchanged=source_rows - added - updated,
        absent=absent,
        removed=absent if options.prune else 0,
        changes=dict(zip(CHANGE_KINDS, changed, strict=True)),
        samples=samples,
    )


def _sample(conn: sqlite3.Connection, query: str, limit: int) -> list[str]:
    rows = conn.execute(f"{query} ORDER BY 1 LIMIT ?", (limit,)).fetchall()
    return [asset_id for (asset_id,) in rows]


def _refusal(diff: SyncDiff, rejected: list[Rejection], options: SyncOptions) -> str | None:
    """Why the diff must not be written, or None."""
    if rejected and not options.allow_rejects:
        return (
            f"{len(rejected)} source row(s) rejected; fix them, or give --allow-rejects "
            "to sync the others"
        )
    if not options.prune or options.force or not diff.removed:
        return None
    if rejected:
        # A rejected row's asset is missing from the source table: it would look removed.
        return (
            f"--prune with {len(rejected)} rejected row(s) would delete the assets those "
            "rows name; fix them, or give --force"
        )
    allowed = math.floor(options.max_prune_share * diff.target_total)
    if diff.removed > allowed:
        share = 100 * diff.removed / diff.target_total
        return (
            f"--prune would remove {diff.removed} of {diff.target_total} assets ({share:.1f}%),"
            f" more than --max-prune-share {100 * options.max_prune_share:g}%;"
            " give --force to remove them"
        )
    return None


def _apply(conn: sqlite3.Connection, *, prune: bool) -> None:
    now = time.time()
    for keep in (0, 1):
        conn.execute(_UPSERT, {"now": now, "keep": keep})
    if prune:
        conn.execute(_PRUNE)


# --- a Redis target --------------------------------------------------------------------------

_CREATE_REDIS_TARGET = """
CREATE TEMP TABLE target (
    asset_id TEXT PRIMARY KEY,
    drm_resource_id TEXT NULL,
    key_holders TEXT NULL,
    tags TEXT NOT NULL,
    key_ids TEXT NULL
)
"""
_INSERT_TARGET = "INSERT OR IGNORE INTO temp.target VALUES (?, ?, ?, ?, ?)"
_WRITES = f"""
SELECT s.asset_id, s.drm_resource_id, s.key_holders, s.tags, s.key_ids, s.keep_key_ids {_FROM}
WHERE {_ADDED} OR {_UPDATED} ORDER BY s.asset_id
"""
_TargetRow = tuple[str, str | None, str | None, str, str | None]


async def sync_to_redis(
    source: Location,
    settings: RedisCatalogSettings,
    options: SyncOptions = SyncOptions(),
    *,
    show: ShowDiff | None = None,
    progress: Progress | None = None,
    note: Note | None = None,
    batch_rows: int = BATCH_ROWS,
) -> SyncReport:
    """Make the Redis catalog of `settings` hold what `source` holds (see the module);
    `show(diff, rejected)` is called before anything is written. Raises CatalogImportError
    when the source cannot be read or Redis cannot be read or written."""
    say = note or (lambda _: None)
    check = None if options.providers is None else ProviderCheck(options.providers)
    client = create_client(settings)
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA temp_store = FILE")  # the source table may be large
        conn.execute(_CREATE_SOURCE)
        rejected = _load_source(conn, source, check, progress)
        say("comparing")
        rejected = sorted(rejected + _drop_duplicates(conn), key=lambda r: r.line)
        await _load_redis_target(conn, client, settings.key_prefix, batch_rows)
        diff = _diff(conn, options)
        if show is not None:
            show(diff, rejected)
        refusal = _refusal(diff, rejected, options)
        applied = refusal is None and not options.dry_run
        if applied:
            say("applying")
            await _apply_to_redis(conn, client, settings, prune=options.prune, size=batch_rows)
        return SyncReport(diff, rejected, applied, refusal)
    except sqlite3.Error as exc:
        raise CatalogImportError(f"sync failed, nothing was written: {exc}") from exc
    except (RedisError, OSError) as exc:
        raise CatalogImportError(f"cannot sync the Redis catalog {settings.url}: {exc}") from exc
    finally:
        conn.close()
        await client.aclose()


async def _load_redis_target(
    conn: sqlite3.Connection, client: Redis, key_prefix: str, size: int
) -> None:
    """Fill temp.target: the stored rows of the source's assets, then (ids only, counted as
    absent) every other asset key found by SCAN."""
    conn.execute(_CREATE_REDIS_TARGET)
    cursor = conn.execute("SELECT asset_id FROM temp.source")
    while ids := [asset_id for (asset_id,) in cursor.fetchmany(size)]:
        pipe = client.pipeline(transaction=False)
        for asset_id in ids:
            pipe.hgetall(asset_key(key_prefix, asset_id))
        stored = await pipe.execute()
        rows = [
            _target_row(asset_id, fields)
            for asset_id, fields in zip(ids, stored, strict=True)
            if fields
        ]
        conn.executemany(_INSERT_TARGET, rows)
    prefix = asset_key(key_prefix, "")
    chunk: list[_TargetRow] = []
    async for key in client.scan_iter(match=_glob_escaped(prefix) + "*", count=size):
        chunk.append((cast(bytes, key).decode()[len(prefix) :], None, None, "[]", None))
        if len(chunk) >= size:
            conn.executemany(_INSERT_TARGET, chunk)  # OR IGNORE: the source's are in
            chunk.clear()
    conn.executemany(_INSERT_TARGET, chunk)


def _target_row(asset_id: str, fields: dict[bytes, bytes]) -> _TargetRow:
    """A stored hash as the importer's canonical text, comparable with the source's rows."""
    try:
        entry = decode_fields(asset_id, fields)
    except GarbledValue as exc:
        raise CatalogImportError(f"the target's asset {asset_id!r} is garbled: {exc}") from None
    holders = None if entry.key_holders is None else _names_json(list(entry.key_holders))
    key_ids = None if b"k" not in fields else _key_ids_json(list(entry.key_ids))
    return asset_id, entry.drm_resource_id, holders, _names_json(list(entry.tags)), key_ids


def _glob_escaped(text: str) -> str:
    return "".join(f"\\{char}" if char in "*?[]\\" else char for char in text)


async def _apply_to_redis(
    conn: sqlite3.Connection,
    client: Redis,
    settings: RedisCatalogSettings,
    *,
    prune: bool,
    size: int,
) -> None:
    """Write the added and updated rows, then (with `prune`) delete the absent assets: one
    MULTI/EXEC per batch, each publishing its asset ids."""
    missing = MissingKeys(settings.key_prefix)
    cursor = conn.execute(_WRITES)
    while batch := cursor.fetchmany(size):
        pipe = client.pipeline(transaction=True)
        for asset_id, drm_resource_id, holders, tags, key_ids, keep in batch:
            row: Row = (asset_id, drm_resource_id, holders, tags, KEEP_KEY_IDS if keep else key_ids)
            queue_row(pipe, settings.key_prefix, row)
        queue_removal(pipe, missing, (row[0] for row in batch if row[1] is not None))
        pipe.publish(settings.changes_channel, encode_changes([row[0] for row in batch]))
        await cast(Awaitable[object], pipe.execute())
    if not prune:
        return
    cursor = conn.execute(f"SELECT asset_id {_ABSENT}")
    while ids := [asset_id for (asset_id,) in cursor.fetchmany(size)]:
        pipe = client.pipeline(transaction=True)
        pipe.delete(*(asset_key(settings.key_prefix, asset_id) for asset_id in ids))
        queue_removal(pipe, missing, ids)
        pipe.publish(settings.changes_channel, encode_changes(ids))
        await cast(Awaitable[object], pipe.execute())


def format_diff(diff: SyncDiff, rejected: list[Rejection], *, max_rejections: int = 50) -> str:
    """The diff as the CLI prints it before applying: counts, kinds, samples, rejections."""
    lines = [
        f"source {diff.source_rows} assets, target {diff.target_total}: "
        f"{diff.added} added, {diff.updated} updated, {diff.unchanged} unchanged, "
        f"{diff.removed} removed, {len(rejected)} rejected"
    ]
    lines += _sampled("added", diff.added, diff.samples.get("added", []))
    for kind in CHANGE_KINDS:
        if diff.changes.get(kind):
            lines += _sampled(kind, diff.changes[kind], diff.samples.get(kind, []))
    if diff.removed:
        lines += _sampled("removed", diff.removed, diff.samples.get("removed", []))
    elif diff.absent:
        lines += _sampled(
            "not in the source (kept; --prune removes them)",
            diff.absent,
            diff.samples.get("absent", []),
        )
    if rejected:
        lines.append("rejected:")
        lines += format_rejections(rejected, max_rejections=max_rejections)
    return "\n".join(lines)


def _sampled(label: str, count: int, sample: list[str]) -> list[str]:
    if not count:
        return []
    more = f" ... and {count - len(sample)} more" if count > len(sample) else ""
    return [f"  {label}: {count}: {', '.join(sample)}{more}"]
