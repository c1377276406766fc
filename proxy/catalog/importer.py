"""Load a catalog file (CSV or JSON Lines) into the SQLite catalog, and audit the result.

CSV has the header `asset_id,drm_resource_id,key_holders,tags,key_ids` (or the same without
`key_ids`, the format before key ids); the list cells hold `|`-separated values; an empty
`drm_resource_id` means "not propagated yet", an empty `key_holders` or `key_ids` "unknown".
JSON Lines has one object per line with the same fields (`drm_resource_id`, `key_holders` and
`key_ids` may be null). A key id is 32 hex digits or a GUID (8-4-4-4-12), stored as lowercase
hex without dashes, duplicates dropped, order kept. A file without the `key_ids` column, or a
JSON line without the field, leaves the asset's stored key ids as they are: re-importing an
older export does not erase key ids recorded since. Bad rows are skipped and reported with
their line number; everything else goes in one transaction, so an I/O failure imports nothing
(and, with `allow_rejects=False`, so does a single rejected row).

Given the configured providers (`providers`, read secret-free from the gateway config), a row
is also rejected when it names a key holder no provider has (a typo such as `legcy` would
later mean 503 `no_provider`), or when no provider that may hold its keys could serve it (held
only by providers needing a drmResourceId while it has none, or key ids while it has none).
Rejected rather than imported with a warning: such a row would replace what the catalog knows
with a title every request for which fails, and a line-numbered refusal (exit 1 in the CLI)
finds the broken export before players do; `--allow-rejects` still loads the other rows.
`catalog sync` reads its source through the same readers and checks (`read_records`,
`ProviderCheck`).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TextIO, TypeVar

from proxy.catalog.sqlite import (
    create_schema,
    decode_name_set,
    has_key_ids_column,
    read_only_uri,
)
from proxy.routing.rules import ProviderTraits

CSV_HEADER = ("asset_id", "drm_resource_id", "key_holders", "tags", "key_ids")
CSV_HEADER_WITHOUT_KEY_IDS = CSV_HEADER[:4]
"""The header before key ids existed; still accepted (the stored key ids are left alone)."""
_JSON_FIELDS = frozenset(CSV_HEADER)
_CSV_SUFFIXES = frozenset({".csv"})
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_TAG = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KEY_ID = re.compile(r"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

_CHUNK_ROWS = 5_000  # rows per executemany and per progress report
_UPSERT = """
INSERT INTO assets (asset_id, drm_resource_id, key_holders, tags, key_ids, updated_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (asset_id) DO UPDATE SET
    drm_resource_id = excluded.drm_resource_id,
    key_holders = excluded.key_holders,
    tags = excluded.tags,
    key_ids = excluded.key_ids,
    updated_at = excluded.updated_at
"""
# For rows whose input has no key_ids: a new asset gets NULL (unknown), an existing one keeps
# the key ids it has.
_UPSERT_KEEPING_KEY_IDS = """
INSERT INTO assets (asset_id, drm_resource_id, key_holders, tags, updated_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (asset_id) DO UPDATE SET
    drm_resource_id = excluded.drm_resource_id,
    key_holders = excluded.key_holders,
    tags = excluded.tags,
    updated_at = excluded.updated_at
"""
_COUNT = "SELECT count(*) FROM assets"
_COUNT_MISSING = "SELECT count(*) FROM assets WHERE drm_resource_id IS NULL"
_LIST_MISSING = (
    "SELECT asset_id FROM assets WHERE drm_resource_id IS NULL ORDER BY asset_id LIMIT ?"
)


class _Keep(Enum):
    """The input says nothing of a row's key ids: the import leaves the stored ones alone."""

    KEY_IDS = "keep"


KEEP_KEY_IDS = _Keep.KEY_IDS

Row = tuple[str, str | None, str | None, str, str | _Keep | None]
"""A validated row as stored: asset_id, drm_resource_id, key_holders JSON, tags JSON, key_ids
JSON (None: unknown; KEEP_KEY_IDS: not in the input)."""
Record = tuple[int, Row | str]
"""What a reader yields per record: its line number and the row, or why it was rejected."""
RowCheck = Callable[[Row], "str | None"]
"""A check on a parsed row: None when it may be stored, else the reason to reject it."""
_T = TypeVar("_T")

Progress = Callable[[int, int, int], None]
"""progress(lines_read, bytes_read, bytes_total), called every few thousand rows and at the end."""


class CatalogImportError(ValueError):
    """The input or the database cannot be used at all (for import: nothing was imported)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One skipped input row."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What an import did: rows added, rows that replaced an existing asset, rows skipped."""

    added: int
    updated: int
    rejected: list[Rejection]
    # False when rows were rejected and the import was asked to apply all or nothing: then
    # `added` and `updated` say what the import would have done, and nothing was written.
    applied: bool = True
    # The file stayed in WAL mode (a reader held it open): a read-only mount cannot open it
    # until the next import, or a gateway that opens it immutable (see SqliteCatalog).
    left_in_wal: bool = False


@dataclass(frozen=True, slots=True)
class AuditReport:
    """How many assets the catalog holds, and which lack a drm_resource_id (sorted).

    With the providers that need key ids (`key_id_providers`; None: not checked), also the
    assets without key ids that one of them could otherwise serve (sorted): those whose key
    holders are unknown or include such a provider.
    """

    total: int
    missing_count: int
    missing: list[str]
    key_id_providers: tuple[str, ...] | None = None
    missing_key_ids_count: int = 0
    missing_key_ids: list[str] = field(default_factory=list)
    unservable: UnservableReport | None = None


@dataclass(frozen=True, slots=True)
class UnservableReport:
    """Assets no configured provider can serve: how many, how many per cause (an asset may
    have several), and the first few (sorted) with the reason for each."""

    providers: tuple[str, ...]
    count: int
    by_cause: dict[str, int]
    sample: list[tuple[str, str]]


UNSERVABLE_CAUSES = ("unknown_holder", "no_drm_resource_id", "no_key_ids", "no_key_holder")
"""Why a provider that may hold an asset's keys cannot serve it (codes for counts and JSON)."""
Blocker = tuple[str, str]
"""One reason an asset is unservable: a cause from UNSERVABLE_CAUSES and a sentence."""


def unservable_reasons(
    key_holders: frozenset[str] | None,
    *,
    has_drm_resource_id: bool,
    has_key_ids: bool | None,
    providers: Mapping[str, ProviderTraits],
) -> list[Blocker]:
    """Why no provider that may hold the keys can serve the asset; empty when one can.

    The candidates are the key holders, or every configured provider when they are unknown
    (None), as the routing guards have it. `has_key_ids` None: not known (an input without the
    key_ids column keeps the stored ones), so key ids are not held against it.
    """
    candidates = sorted(providers if key_holders is None else key_holders)
    if not candidates:
        return [("no_key_holder", "its key_holders list is empty")]
    blockers: list[Blocker] = []
    for name in candidates:
        traits = providers.get(name)
        if traits is None:
            blockers.append(("unknown_holder", f"key holder {name!r} is not a configured provider"))
        elif traits.needs_drm_resource_id and not has_drm_resource_id:
            blockers.append(("no_drm_resource_id", f"{name} needs a drm_resource_id"))
        elif traits.needs_key_ids and has_key_ids is False:
            blockers.append(("no_key_ids", f"{name} needs key ids"))
        else:
            return []
    return blockers


def describe_blockers(blockers: list[Blocker]) -> str:
    """The reason given for an unservable asset, one clause per provider that cannot serve."""
    return "no configured provider can serve it: " + "; ".join(text for _, text in blockers)


class ProviderCheck:
    """A RowCheck against the configured providers: a key holder must be one of them, and a
    provider that may hold the keys must be able to serve the asset (see the module doc)."""

    _MAX_VERDICTS = 4096  # distinct (holders, has id, has key ids) seen; few in practice

    def __init__(self, providers: Mapping[str, ProviderTraits]) -> None:
        self._providers = providers
        self._configured = ", ".join(sorted(providers))
        self._verdicts: dict[tuple[str | None, bool, bool | None], str | None] = {}

    def __call__(self, row: Row) -> str | None:
        _, drm_resource_id, key_holders, _, key_ids = row
        has_key_ids = None if key_ids is KEEP_KEY_IDS else key_ids is not None
        key = (key_holders, drm_resource_id is not None, has_key_ids)
        if key not in self._verdicts:
            if len(self._verdicts) >= self._MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = self._verdict(*key)
        return self._verdicts[key]

    def _verdict(
        self, key_holders: str | None, has_id: bool, has_key_ids: bool | None
    ) -> str | None:
        holders = None if key_holders is None else decode_name_set(key_holders)
        unknown = sorted(holders - self._providers.keys()) if holders else []
        if unknown:
            names = ", ".join(repr(name) for name in unknown)
            noun = "key holder" if len(unknown) == 1 else "key holders"
            return f"{noun} {names} not configured (providers: {self._configured})"
        blockers = unservable_reasons(
            holders, has_drm_resource_id=has_id, has_key_ids=has_key_ids, providers=self._providers
        )
        return describe_blockers(blockers) if blockers else None


class _RowError(Exception):
    """A row is invalid; the message is the reason reported for it."""


def import_file(
    src: Path,
    db: Path,
    *,
    progress: Progress | None = None,
    providers: Mapping[str, ProviderTraits] | None = None,
    allow_rejects: bool = True,
) -> ImportReport:
    """Upsert every valid row of `src` into the catalog at `db` (created if missing).

    The format comes from the extension (.csv, .jsonl, .ndjson), else from the first
    non-blank character (`{` means JSON Lines). With `providers`, rows are also checked
    against them (ProviderCheck). With `allow_rejects=False`, one rejected row means nothing
    is written (`applied` False). Raises CatalogImportError when the input cannot be read, is
    empty or has a wrong CSV header, or when the database cannot be written.
    """
    check = None if providers is None else ProviderCheck(providers)
    try:
        with read_records(src, progress) as (records, report):
            return _load(records, db, report, check=check, allow_rejects=allow_rejects)
    except sqlite3.Error as exc:
        raise CatalogImportError(f"cannot write the catalog database {db}: {exc}") from exc


@contextmanager
def read_records(
    src: Path, progress: Progress | None = None
) -> Iterator[tuple[Iterator[Record], Callable[[int], None]]]:
    """Open a CSV or JSON Lines export: its records, read lazily (one row in memory at a
    time), and a `report(lines_read)` that calls `progress` with the bytes read so far.

    Header and empty-file errors are raised on entry, before the caller writes anything; read
    errors (then or later) become CatalogImportError.
    """
    is_jsonl = _is_jsonl(src)
    try:
        total = src.stat().st_size
        with src.open("rb") as raw:
            # Undecodable bytes become U+FFFD, which no id pattern accepts: a row rejection.
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
            records = _primed(_jsonl_records(text, src) if is_jsonl else _csv_records(text, src))

            def report(lines: int) -> None:
                if progress is not None:
                    progress(lines, min(raw.tell(), total), total)

            yield records, report
    except OSError as exc:
        raise CatalogImportError(f"cannot read {src}: {exc.strerror or exc}") from exc


def stored_records(conn: sqlite3.Connection) -> Iterator[Record]:
    """The rows of another catalog database (open on `conn`), in asset id order, validated
    like an export's; the number given as each one's line is its position in that order. A
    schema-1 file (no key_ids column) leaves the target's key ids alone, like an old export."""
    key_ids = "key_ids" if has_key_ids_column(conn) else "NULL"
    query = f"SELECT asset_id, drm_resource_id, key_holders, tags, {key_ids} FROM assets"
    cursor = conn.execute(query + " ORDER BY asset_id")
    old_format = key_ids == "NULL"
    for number, values in enumerate(cursor, start=1):
        yield number, _parse_or_reason(_stored_row, (*values, old_format))


def _stored_row(values: tuple[str, str | None, str | None, str | None, str | None, bool]) -> Row:
    asset_id, drm_resource_id, key_holders, tags, key_ids, old_format = values
    try:
        holders = None if key_holders is None else json.loads(key_holders)
        tag_list = json.loads(tags) if tags else []
        ids = None if key_ids is None else json.loads(key_ids)
    except json.JSONDecodeError as exc:
        raise _RowError(f"asset {_show(str(asset_id))}: a list column is not JSON") from exc
    for name, value in (("key_holders", holders), ("tags", tag_list), ("key_ids", ids)):
        if value is not None and not _is_str_list(value):
            raise _RowError(f"asset {_show(str(asset_id))}: {name} is not a list of strings")
    if not isinstance(asset_id, str):
        raise _RowError("asset_id is not text")
    return _build_row(
        asset_id, drm_resource_id, holders, tag_list, KEEP_KEY_IDS if old_format else ids or None
    )


def audit(
    db: Path,
    *,
    limit: int | None = None,
    key_id_providers: Collection[str] | None = None,
    providers: Mapping[str, ProviderTraits] | None = None,
) -> AuditReport:
    """Count the catalog's assets and list those lacking a drm_resource_id (up to `limit`).

    `key_id_providers` names the configured providers that need key ids (None: not checked);
    the assets such a provider could serve but for their missing key ids are counted and
    listed too. With `providers` (the configured ones), the assets none of them can serve are
    counted per cause and listed with the reason. A schema-1 file (no key_ids column) is read
    as it is: no key ids anywhere.
    """
    if limit is not None and limit < 0:
        raise ValueError("limit must not be negative")
    if not db.is_file():
        raise CatalogImportError(f"catalog database {db} does not exist")
    needing = None if key_id_providers is None else tuple(sorted(key_id_providers))
    cap = -1 if limit is None else limit
    try:
        conn = sqlite3.connect(read_only_uri(db), uri=True)
        try:
            total = conn.execute(_COUNT).fetchone()[0]
            missing_count = conn.execute(_COUNT_MISSING).fetchone()[0]
            rows = conn.execute(_LIST_MISSING, (cap,)).fetchall()
            no_key_ids = _missing_key_ids(conn, needing, cap) if needing else (0, [])
            unservable = None if providers is None else _unservable(conn, providers, cap)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CatalogImportError(f"cannot read the catalog database {db}: {exc}") from exc
    return AuditReport(
        total=total,
        missing_count=missing_count,
        missing=[r[0] for r in rows],
        key_id_providers=needing,
        missing_key_ids_count=no_key_ids[0],
        missing_key_ids=no_key_ids[1],
        unservable=unservable,
    )


def _unservable(
    conn: sqlite3.Connection, providers: Mapping[str, ProviderTraits], cap: int
) -> UnservableReport:
    """Group the assets by what servability depends on (few distinct key-holder sets, so few
    groups: one table scan), judge each group, then list the first `cap` unservable ones."""
    key_ids = "key_ids IS NOT NULL" if has_key_ids_column(conn) else "0"
    groups = conn.execute(
        f"SELECT key_holders, drm_resource_id IS NOT NULL, {key_ids}, count(*) FROM assets"
        " GROUP BY 1, 2, 3"
    ).fetchall()
    count = 0
    by_cause = dict.fromkeys(UNSERVABLE_CAUSES, 0)
    sample: list[tuple[str, str]] = []
    for holders, has_id, has_key_ids, size in groups:
        names = None if holders is None else decode_name_set(holders)
        blockers = unservable_reasons(
            names,
            has_drm_resource_id=bool(has_id),
            has_key_ids=bool(has_key_ids),
            providers=providers,
        )
        if not blockers:
            continue
        count += size
        for cause in {cause for cause, _ in blockers}:
            by_cause[cause] += size
        ids = conn.execute(
            f"SELECT asset_id FROM assets WHERE key_holders IS ?"
            f" AND (drm_resource_id IS NOT NULL) = ? AND ({key_ids}) = ?"
            " ORDER BY asset_id LIMIT ?",
            (holders, has_id, has_key_ids, cap),
        ).fetchall()
        sample.extend((asset_id, describe_blockers(blockers)) for (asset_id,) in ids)
    sample.sort()
    return UnservableReport(
        tuple(sorted(providers)), count, by_cause, sample if cap < 0 else sample[:cap]
    )


def _missing_key_ids(
    conn: sqlite3.Connection, providers: tuple[str, ...], cap: int
) -> tuple[int, list[str]]:
    """How many assets lack key ids while `providers` may hold their keys, and the first `cap`."""
    marks = ",".join("?" * len(providers))
    where = (
        f"(key_holders IS NULL OR EXISTS"
        f" (SELECT 1 FROM json_each(assets.key_holders) WHERE value IN ({marks})))"
    )
    if has_key_ids_column(conn):  # else a schema-1 file: no asset has key ids
        where = f"key_ids IS NULL AND {where}"
    count = conn.execute(f"SELECT count(*) FROM assets WHERE {where}", providers).fetchone()[0]
    listed = conn.execute(
        f"SELECT asset_id FROM assets WHERE {where} ORDER BY asset_id LIMIT ?", (*providers, cap)
    ).fetchall()
    return count, [r[0] for r in listed]


def format_import_report(report: ImportReport, *, max_rejections: int = 50) -> str:
    """The import summary the CLI prints, with the first rejected rows and their reasons."""
    counts = f"{report.added} added, {report.updated} updated, {len(report.rejected)} rejected"
    lines = [
        counts if report.applied else f"nothing imported: {counts} (would be)",
        *format_rejections(report.rejected, max_rejections=max_rejections),
    ]
    if not report.applied:
        lines.append("fix the rejected rows, or give --allow-rejects to import the others")
    if report.left_in_wal:
        lines.append(
            "note: the file stays in WAL mode (a reader had it open); copy or mount it "
            "read-only only after an import that ends without readers"
        )
    return "\n".join(lines)


def format_rejections(rejected: list[Rejection], *, max_rejections: int = 50) -> list[str]:
    """The first `max_rejections` rejected rows, one line each with its line number."""
    lines = [f"  line {r.line}: {r.reason}" for r in rejected[:max_rejections]]
    if len(rejected) > max_rejections:
        lines.append(f"  ... and {len(rejected) - max_rejections} more")
    return lines


def format_audit_report(report: AuditReport) -> str:
    """The audit summary the CLI prints: totals, then the listed asset ids; then, if key ids
    were checked, the assets lacking them and the listed ids."""
    lines = [
        f"{report.total} assets, {report.missing_count} without a drm_resource_id"
        f"{_share(report.missing_count, report.total)}",
        *_listed(report.missing, report.missing_count),
    ]
    providers = report.key_id_providers
    if providers is not None and not providers:
        lines.append("no configured provider needs key ids")
    elif providers:
        names = ", ".join(providers)
        count = report.missing_key_ids_count
        lines.append(
            f"{count} without key ids, which {names} need{'s' if len(providers) == 1 else ''}"
            f"{_share(count, report.total)}"
        )
        lines.extend(_listed(report.missing_key_ids, count))
    if report.unservable is not None:
        lines.extend(_unservable_lines(report.unservable, report.total))
    return "\n".join(lines)


def _unservable_lines(report: UnservableReport, total: int) -> list[str]:
    lines = [
        f"{report.count} that no configured provider ({', '.join(report.providers)}) can serve"
        f"{_share(report.count, total)}"
    ]
    causes = [f"{cause} {n}" for cause, n in report.by_cause.items() if n]
    if causes:
        lines.append(f"  by cause: {', '.join(causes)}")
    lines.extend(f"  {asset_id}: {reason}" for asset_id, reason in report.sample)
    if report.count > len(report.sample):
        lines.append(f"  ... and {report.count - len(report.sample)} more")
    return lines


def audit_report_json(report: AuditReport) -> dict[str, object]:
    """The audit as the CLI's `--format json` prints it (counts, then bounded samples)."""
    out: dict[str, object] = {
        "total": report.total,
        "missing_drm_resource_id": {"count": report.missing_count, "sample": report.missing},
    }
    if report.key_id_providers is not None:
        out["missing_key_ids"] = {
            "providers": list(report.key_id_providers),
            "count": report.missing_key_ids_count,
            "sample": report.missing_key_ids,
        }
    if report.unservable is not None:
        unservable = report.unservable
        out["unservable"] = {
            "providers": list(unservable.providers),
            "count": unservable.count,
            "by_cause": unservable.by_cause,
            "sample": [{"asset_id": a, "reason": r} for a, r in unservable.sample],
        }
    return out


def _share(count: int, total: int) -> str:
    return f" ({100 * count / total:.1f}%)" if total else ""


def _listed(asset_ids: list[str], count: int) -> list[str]:
    lines = [f"  {asset_id}" for asset_id in asset_ids]
    if count > len(asset_ids):
        lines.append(f"  ... and {count - len(asset_ids)} more")
    return lines


# --- reading ---------------------------------------------------------------------------------


def _is_jsonl(src: Path) -> bool:
    suffix = src.suffix.lower()
    if suffix in _CSV_SUFFIXES or suffix in _JSONL_SUFFIXES:
        return suffix in _JSONL_SUFFIXES
    try:
        with src.open(encoding="utf-8-sig", errors="replace") as text:
            while chunk := text.read(4096):
                if stripped := chunk.lstrip():
                    return stripped[0] == "{"
    except OSError as exc:
        raise CatalogImportError(f"cannot read {src}: {exc.strerror or exc}") from exc
    return False  # empty: the CSV reader reports it


def _primed(records: Iterator[Record]) -> Iterator[Record]:
    """Read up to the first record now, so header and empty-file errors precede any write."""
    first = next(records, None)
    return records if first is None else itertools.chain((first,), records)


def _csv_records(text: TextIO, src: Path) -> Iterator[Record]:
    reader = csv.reader(text)
    header = next((cells for cells in reader if _has_content(cells)), None)
    if header is None:
        raise CatalogImportError(f"{src} is empty")
    names = tuple(cell.strip() for cell in header)
    if names not in (CSV_HEADER, CSV_HEADER_WITHOUT_KEY_IDS):
        raise CatalogImportError(
            f"{src}: line {reader.line_num} must be the header {','.join(CSV_HEADER)!r}"
            f" or {','.join(CSV_HEADER_WITHOUT_KEY_IDS)!r}, got {_show(','.join(header))}"
        )
    parse = _parse_csv_cells if names == CSV_HEADER else _parse_csv_cells_without_key_ids
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, f"malformed CSV: {exc}"
            continue
        if _has_content(cells):
            yield reader.line_num, _parse_or_reason(parse, cells)


def _jsonl_records(text: Iterable[str], src: Path) -> Iterator[Record]:
    seen_content = False
    for line_no, line in enumerate(text, start=1):
        if line.strip():
            seen_content = True
            yield line_no, _parse_or_reason(_parse_json_line, line)
    if not seen_content:
        raise CatalogImportError(f"{src} is empty")


def _has_content(cells: list[str]) -> bool:
    return any(cell.strip() for cell in cells)


def _parse_or_reason(parse: Callable[[_T], Row], value: _T) -> Row | str:
    try:
        return parse(value)
    except _RowError as exc:
        return str(exc)


def _parse_csv_cells(cells: list[str]) -> Row:
    if len(cells) != len(CSV_HEADER):
        raise _RowError(f"expected {len(CSV_HEADER)} columns, got {len(cells)}")
    asset_id, drm_resource_id, key_holders, tags, key_ids = (cell.strip() for cell in cells)
    return _build_row(
        asset_id,
        drm_resource_id or None,
        _split_names(key_holders) if key_holders else None,
        _split_names(tags) if tags else [],
        _split_names(key_ids) if key_ids else None,
    )


def _parse_csv_cells_without_key_ids(cells: list[str]) -> Row:
    if len(cells) != len(CSV_HEADER_WITHOUT_KEY_IDS):
        raise _RowError(f"expected {len(CSV_HEADER_WITHOUT_KEY_IDS)} columns, got {len(cells)}")
    asset_id, drm_resource_id, key_holders, tags = (cell.strip() for cell in cells)
    return _build_row(
        asset_id,
        drm_resource_id or None,
        _split_names(key_holders) if key_holders else None,
        _split_names(tags) if tags else [],
        KEEP_KEY_IDS,
    )


def _split_names(cell: str) -> list[str]:
    return [name.strip() for name in cell.split("|")]


def _parse_json_line(line: str) -> Row:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _RowError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise _RowError(f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _JSON_FIELDS)
    if unknown:
        raise _RowError(f"unknown field {', '.join(_show(name) for name in unknown)}")
    if "asset_id" not in obj:
        raise _RowError("missing field 'asset_id'")
    asset_id = obj["asset_id"]
    drm_resource_id = obj.get("drm_resource_id")
    key_holders = obj.get("key_holders")
    tags = obj.get("tags", [])
    key_ids = obj.get("key_ids", KEEP_KEY_IDS)
    if not isinstance(asset_id, str):
        raise _RowError("field 'asset_id' must be a string")
    if drm_resource_id is not None and not isinstance(drm_resource_id, str):
        raise _RowError("field 'drm_resource_id' must be a string or null")
    if key_holders is not None and not _is_str_list(key_holders):
        raise _RowError("field 'key_holders' must be a list of strings or null")
    if not _is_str_list(tags):
        raise _RowError("field 'tags' must be a list of strings")
    if key_ids is not None and key_ids is not KEEP_KEY_IDS and not _is_str_list(key_ids):
        raise _RowError("field 'key_ids' must be a list of strings or null")
    return _build_row(asset_id, drm_resource_id, key_holders, tags, key_ids or None)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _build_row(
    asset_id: str,
    drm_resource_id: str | None,
    key_holders: list[str] | None,
    tags: list[str],
    key_ids: list[str] | _Keep | None,
) -> Row:
    if not _ID.fullmatch(asset_id):
        raise _RowError(f"asset_id {_show(asset_id)} is not a valid id")
    if drm_resource_id is not None and not _ID.fullmatch(drm_resource_id):
        raise _RowError(f"drm_resource_id {_show(drm_resource_id)} is not a valid id")
    for name in key_holders or ():
        if not _PROVIDER.fullmatch(name):
            raise _RowError(f"key holder {_show(name)} is not a valid provider name")
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise _RowError(f"tag {_show(tag)} is not a valid tag")
    holders_json = None if key_holders is None else _names_json(key_holders)
    if key_ids is None or key_ids is KEEP_KEY_IDS:
        return asset_id, drm_resource_id, holders_json, _names_json(tags), key_ids
    return asset_id, drm_resource_id, holders_json, _names_json(tags), _key_ids_json(key_ids)


def _key_ids_json(key_ids: list[str]) -> str:
    """Validate and normalise the key ids (lowercase hex, first occurrence kept) as JSON."""
    normalised = [_normalise_key_id(text, position) for position, text in enumerate(key_ids, 1)]
    # Like the name lists: nothing in 32 hex digits needs escaping. Stored as a JSON list, not
    # `|`-joined, so one decoding rule serves every list column and SQLite's json_each can
    # query key ids (which asset has key id X) without a second format.
    return "[" + ",".join(f'"{key_id}"' for key_id in dict.fromkeys(normalised)) + "]"


def _normalise_key_id(text: str, position: int) -> str:
    if _KEY_ID.fullmatch(text):
        # A GUID's text names the same 16 bytes in the same order (as in a DASH manifest's
        # cenc:default_KID): dropping the dashes is the whole conversion.
        return text.replace("-", "").lower()
    if not text:
        raise _RowError(f"key id {position} in key_ids is empty")
    shown = f"key id {_show(text)}"
    if not set(text.replace("-", "")) <= _HEX_DIGITS:
        raise _RowError(f"{shown} is not hexadecimal")
    if "-" in text:
        raise _RowError(f"{shown} is not a GUID (8-4-4-4-12 hex digits)")
    raise _RowError(f"{shown} has {len(text)} hex digits, expected 32")


def _names_json(names: list[str]) -> str:
    # The names passed the patterns above, which admit nothing JSON must escape; sorted so
    # equal sets encode alike (the serving side caches decoded sets by their text).
    return "[" + ",".join(f'"{name}"' for name in sorted(set(names))) + "]"


def _show(value: str) -> str:
    """Quote a user-supplied value for a message, cut short if long."""
    return repr(value if len(value) <= 64 else value[:64] + "...")


# --- writing ---------------------------------------------------------------------------------


def _load(
    records: Iterator[Record],
    db: Path,
    report: Callable[[int], None],
    *,
    check: RowCheck | None,
    allow_rejects: bool,
) -> ImportReport:
    conn = sqlite3.connect(db, isolation_level=None)  # transactions managed explicitly below
    try:
        # WAL lets the gateway keep reading the catalog while an import runs.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Under the write lock, so concurrent imports never both migrate a schema-1 file.
            create_schema(conn)
            before = conn.execute(_COUNT).fetchone()[0]
            accepted, rejected = _store(conn, records, report, check)
            added = conn.execute(_COUNT).fetchone()[0] - before
            applied = allow_rejects or not rejected
            conn.execute("COMMIT" if applied else "ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        left_in_wal = not leave_wal(conn)
    finally:
        conn.close()
    # Duplicates within the file were rejected, so every accepted row was an add or an update.
    return ImportReport(
        added=added,
        updated=accepted - added,
        rejected=rejected,
        applied=applied,
        left_in_wal=left_in_wal,
    )


def leave_wal(conn: sqlite3.Connection) -> bool:  # also used by `catalog sync`
    """Back to a rollback journal once written: a WAL file needs its -shm and -wal beside it,
    which a read-only mount (the usual way to ship a catalog to gateways) cannot create.
    False when a reader holds the file, which keeps it in WAL until the next import."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
    except sqlite3.OperationalError:  # locked by a reader
        return False
    return str(mode).lower() == "delete"


def _store(
    conn: sqlite3.Connection,
    records: Iterator[Record],
    report: Callable[[int], None],
    check: RowCheck | None,
) -> tuple[int, list[Rejection]]:
    """Upsert the valid records in chunks; return how many were accepted, and the rejections."""
    seen = SeenIds()
    try:
        return _store_rows(conn, records, report, check, seen)
    finally:
        seen.close()


def _store_rows(
    conn: sqlite3.Connection,
    records: Iterator[Record],
    report: Callable[[int], None],
    check: RowCheck | None,
    seen: SeenIds,
) -> tuple[int, list[Rejection]]:
    rejected: list[Rejection] = []
    # Rows with key ids, and rows whose input has none (their stored key ids are kept).
    # Duplicate asset ids were rejected, so the order across the two batches does not matter.
    with_ids: list[tuple[str, str | None, str | None, str, str | None, float]] = []
    keeping: list[tuple[str, str | None, str | None, str, float]] = []
    accepted = 0
    line_no = 0
    now = time.time()
    accept = RowFilter(rejected, check, seen).accept
    for line_no, record in records:
        if (row := accept(line_no, record)) is None:
            continue
        asset_id, drm_resource_id, key_holders, tags, key_ids = row
        if key_ids is KEEP_KEY_IDS:
            keeping.append((asset_id, drm_resource_id, key_holders, tags, now))
        else:
            with_ids.append((asset_id, drm_resource_id, key_holders, tags, key_ids, now))
        if len(with_ids) + len(keeping) >= _CHUNK_ROWS:
            accepted += _flush(conn, with_ids, keeping)
            report(line_no)
    accepted += _flush(conn, with_ids, keeping)
    report(line_no)
    return accepted, rejected


class SeenIds:
    """The asset ids read so far, with their first line, in a private temporary SQLite file
    (SQLite's page cache bounds the memory): a file of any size is checked for repeats
    without holding every id in memory, which grew an import's peak RSS with the file.
    Used by both imports (to SQLite and to Redis)."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect("")  # "": a temporary on-disk database, gone on close
        self._conn.execute("CREATE TABLE seen (asset_id TEXT PRIMARY KEY, line INTEGER)")

    def first_line(self, asset_id: str, line: int) -> int:
        """`line` for an id not seen before (now remembered), else the line it was first on."""
        if self._conn.execute(_REMEMBER, (asset_id, line)).rowcount:
            return line
        first: int = self._conn.execute(_FIRST_LINE, (asset_id,)).fetchone()[0]
        return first

    def close(self) -> None:
        self._conn.close()


class RowFilter:
    """Accepts or rejects each record as every import and sync does: a row that did not
    parse, then one a `check` refuses, then (with `seen`) an asset id already read; each
    rejection goes to `rejected` with its line."""

    def __init__(
        self, rejected: list[Rejection], check: RowCheck | None, seen: SeenIds | None = None
    ) -> None:
        self._rejected = rejected
        self._check = check
        self._seen = seen

    def accept(self, line_no: int, row: Row | str) -> Row | None:
        """The row if accepted, else None (its rejection recorded)."""
        if isinstance(row, str):
            self._rejected.append(Rejection(line_no, row))
            return None
        reason = self._refusal(line_no, row)
        if reason is None:
            return row
        self._rejected.append(Rejection(line_no, reason))
        return None

    def _refusal(self, line_no: int, row: Row) -> str | None:
        if self._check is not None and (reason := self._check(row)) is not None:
            return reason
        if self._seen is not None:
            first = self._seen.first_line(row[0], line_no)
            if first != line_no:
                return f"duplicate of line {first}"
        return None


_REMEMBER = "INSERT OR IGNORE INTO seen (asset_id, line) VALUES (?, ?)"
_FIRST_LINE = "SELECT line FROM seen WHERE asset_id = ?"


def _flush(
    conn: sqlite3.Connection,
    with_ids: list[tuple[str, str | None, str | None, str, str | None, float]],
    keeping: list[tuple[str, str | None, str | None, str, float]],
) -> int:
    """Upsert both batches, empty them, and return how many rows they held."""
    count = len(with_ids) + len(keeping)
    if with_ids:
        conn.executemany(_UPSERT, with_ids)
    if keeping:
        conn.executemany(_UPSERT_KEEPING_KEY_IDS, keeping)
    with_ids.clear()
    keeping.clear()
    return count
