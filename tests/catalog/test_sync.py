"""`catalog sync`: locations, the diff, the refusals, one transaction, streaming; real files."""

from __future__ import annotations

import hashlib
import sqlite3
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog.importer import CatalogImportError, Rejection, import_file
from proxy.catalog.sync import (
    CHANGE_KINDS,
    Location,
    RedisTarget,
    SyncDiff,
    SyncOptions,
    SyncReport,
    SyncUsageError,
    format_diff,
    parse_source,
    parse_target,
    sync,
)
from proxy.routing.rules import ProviderTraits

HEADER = "asset_id,drm_resource_id,key_holders,tags,key_ids\n"
OLD_HEADER = "asset_id,drm_resource_id,key_holders,tags\n"
KID_A = "00112233445566778899aabbccddeeff"
KID_B = "ffeeddccbbaa99887766554433221100"
PROVIDERS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(needs_drm_resource_id=True),
    "keyed": ProviderTraits(needs_drm_resource_id=False, needs_key_ids=True),
}
TARGET_ROWS = [
    "same,r-1,legacy,,",
    "fill,,legacy,,",
    "change,r-old,legacy,,",
    "clear,r-4,legacy,,",
    "holders,r-5,legacy,,",
    f"kids,r-6,,,{KID_A}",
    "tags,r-7,,a,",
    "gone,r-8,,,",
]
SOURCE_ROWS = [
    "same,r-1,legacy,,",
    "fill,r-2,legacy,,",
    "change,r-new,legacy,,",
    "clear,,legacy,,",
    "holders,r-5,legacy|incoming,,",
    f"kids,r-6,,,{KID_B}",
    "tags,r-7,,a|b,",
    "new,r-9,,,",
]


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def catalog(tmp_path: Path, rows: list[str] = TARGET_ROWS, name: str = "target.db") -> Path:
    db = tmp_path / name
    report = import_file(write(tmp_path / f"{name}.csv", HEADER, rows), db)
    assert not report.rejected
    return db


def contents(db: Path) -> dict[str, tuple[str | None, ...]]:
    conn = sqlite3.connect(db)
    try:
        query = "SELECT asset_id, drm_resource_id, key_holders, tags, key_ids FROM assets"
        return {row[0]: row[1:] for row in conn.execute(query)}
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_target(path: Path) -> Location:
    target = parse_target(str(path))
    assert isinstance(target, Location)
    return target


def run_sync(
    source: Path, target: Path, **options: Any
) -> tuple[list[tuple[SyncDiff, list[Rejection]]], SyncReport]:
    shown: list[tuple[SyncDiff, list[Rejection]]] = []
    report = sync(
        parse_source(str(source)),
        sqlite_target(target),
        SyncOptions(**options),
        show=lambda diff, rejected: shown.append((diff, rejected)),
    )
    return shown, report


# --- locations -------------------------------------------------------------------------------


def test_locations_are_parsed_once_and_unsupported_ones_refused(tmp_path: Path) -> None:
    export = write(tmp_path / "s.csv", HEADER, ["a,,,,"])
    db = catalog(tmp_path)
    assert parse_source(str(export)) == Location("export", export)
    assert parse_source(str(db)) == Location("sqlite", db)  # told by the header, not the name
    assert parse_source(f"file://{export}") == Location("export", export)
    assert parse_target(str(tmp_path / "new.db")) == Location("sqlite", tmp_path / "new.db")
    assert parse_target("redis://localhost:6379/0") == RedisTarget("redis://localhost:6379/0")
    with pytest.raises(SyncUsageError, match="must not hold a password"):
        parse_target("redis://:pw@localhost:6379/0")
    with pytest.raises(SyncUsageError, match=r"Redis catalog \(a target only\)"):
        parse_source("redis://localhost:6379/0")
    with pytest.raises(SyncUsageError, match="unknown scheme 'ftp'"):
        parse_source("ftp://host/x.csv")
    with pytest.raises(SyncUsageError, match="is not a file"):
        parse_source(str(tmp_path / "missing.csv"))
    with pytest.raises(SyncUsageError, match="is not a SQLite catalog file"):
        parse_target(str(export))


# --- the diff --------------------------------------------------------------------------------


def test_diff_names_every_kind_of_change_then_applies_it(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)
    shown, report = run_sync(source, target)
    ((diff, rejected),) = shown
    assert rejected == []
    assert (diff.added, diff.updated, diff.unchanged, diff.absent, diff.removed) == (1, 6, 1, 1, 0)
    assert diff.changes == dict.fromkeys(CHANGE_KINDS, 1)
    assert diff.samples["added"] == ["new"]
    assert diff.samples["drm_resource_id_filled"] == ["fill"]
    assert diff.samples["key_ids_changed"] == ["kids"]
    assert diff.samples["absent"] == ["gone"]
    text = format_diff(diff, rejected)
    assert text.splitlines()[0] == (
        "source 8 assets, target 8: 1 added, 6 updated, 1 unchanged, 0 removed, 0 rejected"
    )
    assert "  drm_resource_id_changed: 1: change" in text
    assert "  not in the source (kept; --prune removes them): 1: gone" in text

    assert report.applied and report.refusal is None
    rows = contents(target)
    assert rows["fill"][0] == "r-2" and rows["clear"][0] is None
    assert rows["holders"][1] == '["incoming","legacy"]'
    assert rows["kids"][3] == f'["{KID_B}"]' and rows["tags"][2] == '["a","b"]'
    assert "new" in rows and "gone" in rows  # kept without --prune

    shown, _ = run_sync(source, target)  # in sync now: nothing to do
    diff = shown[0][0]
    assert (diff.added, diff.updated, diff.unchanged) == (0, 0, 8)


def test_an_export_without_key_ids_leaves_them_alone(tmp_path: Path) -> None:
    target = catalog(tmp_path, [f"kids,r-1,,,{KID_A}"])
    source = write(tmp_path / "old.csv", OLD_HEADER, ["kids,r-1,,", "fresh,r-2,,"])
    shown, _ = run_sync(source, target)
    diff = shown[0][0]
    assert (diff.added, diff.updated, diff.unchanged) == (1, 0, 1)
    assert contents(target)["kids"][3] == f'["{KID_A}"]'
    assert contents(target)["fresh"][3] is None


def test_another_sqlite_catalog_is_a_source(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    source = catalog(tmp_path, [r.replace("r-old", "r-new") for r in TARGET_ROWS], "src.db")
    shown, _ = run_sync(source, target)
    assert shown[0][0].changes["drm_resource_id_changed"] == 1
    assert contents(target) == contents(source)


def test_a_new_target_file_is_created(tmp_path: Path) -> None:
    target = tmp_path / "fresh.db"
    run_sync(write(tmp_path / "s.csv", HEADER, SOURCE_ROWS), target)
    assert len(contents(target)) == len(SOURCE_ROWS)


def test_a_schema_1_target_is_migrated_and_synced(tmp_path: Path, schema_1_db: Path) -> None:
    source = write(tmp_path / "s.csv", HEADER, [f"old-1,res-1,incoming|legacy,kids,{KID_A}"])
    shown, _ = run_sync(source, schema_1_db, prune=True, force=True)
    diff = shown[0][0]
    assert diff.changes["key_ids_changed"] == 1 and diff.removed == 2
    assert contents(schema_1_db) == {
        "old-1": ("res-1", '["incoming","legacy"]', '["kids"]', f'["{KID_A}"]')
    }


# --- rejections ------------------------------------------------------------------------------


def test_a_bad_row_is_reported_by_line_and_refuses_the_sync(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    before = digest(target)
    rows = [*SOURCE_ROWS[:3], "bad id,r-x,,,", *SOURCE_ROWS[3:], "fill,r-dup,,,"]
    source = write(tmp_path / "s.csv", HEADER, rows)
    shown, report = run_sync(source, target)
    assert shown[0][1] == [
        Rejection(5, "asset_id 'bad id' is not a valid id"),
        Rejection(11, "duplicate of line 3"),
    ]
    assert not report.applied
    assert "2 source row(s) rejected" in (report.refusal or "")
    assert digest(target) == before
    assert "  line 5: asset_id 'bad id' is not a valid id" in format_diff(*shown[0])

    _, report = run_sync(source, target, allow_rejects=True)
    assert report.applied
    assert contents(target)["fill"][0] == "r-2"  # the first of the duplicates wins


def test_prune_with_rejected_rows_needs_force(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    source = write(tmp_path / "s.csv", HEADER, [*TARGET_ROWS[:-1], "bad id,,,,"])
    _, report = run_sync(source, target, prune=True, allow_rejects=True, max_prune_share=1.0)
    assert "would delete the assets those rows name" in (report.refusal or "")
    assert "gone" in contents(target)
    _, report = run_sync(source, target, prune=True, allow_rejects=True, force=True)
    assert report.applied and "gone" not in contents(target)


def test_key_holders_are_checked_against_the_providers(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    rows = [
        "typo,r-1,legcy,,",
        "needs-id,,incoming,,",
        "needs-kids,r-3,keyed,,",
        "either,,legacy|incoming,,",
        "nobody-known,,,,",
    ]
    source = write(tmp_path / "s.csv", HEADER, rows)
    shown, _ = run_sync(source, target, providers=PROVIDERS, allow_rejects=True)
    assert shown[0][1] == [
        Rejection(2, "key holder 'legcy' not configured (providers: incoming, keyed, legacy)"),
        Rejection(3, "no configured provider can serve it: incoming needs a drm_resource_id"),
        Rejection(4, "no configured provider can serve it: keyed needs key ids"),
    ]
    assert set(contents(target)) >= {"either", "nobody-known"}


# --- prune -----------------------------------------------------------------------------------


def test_prune_refuses_more_than_the_share_without_force(tmp_path: Path) -> None:
    target = catalog(tmp_path, [f"a-{i:03},r-{i},,," for i in range(100)])
    keep = [f"a-{i:03},r-{i},,," for i in range(6, 100)]  # 6 of 100 gone: over 5%
    source = write(tmp_path / "s.csv", HEADER, keep)
    before = digest(target)
    shown, report = run_sync(source, target, prune=True)
    assert shown[0][0].removed == 6
    assert shown[0][0].samples["removed"] == [f"a-{i:03}" for i in range(6)]
    assert report.refusal == (
        "--prune would remove 6 of 100 assets (6.0%), more than --max-prune-share 5%;"
        " give --force to remove them"
    )
    assert digest(target) == before

    _, report = run_sync(source, target, prune=True, max_prune_share=0.06)
    assert report.applied and len(contents(target)) == 94
    source = write(tmp_path / "s.csv", HEADER, keep[:50])
    _, report = run_sync(source, target, prune=True, force=True)
    assert report.applied and len(contents(target)) == 50


def test_max_prune_share_is_validated() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        SyncOptions(max_prune_share=5)


# --- dry run, transaction --------------------------------------------------------------------


def test_dry_run_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)
    before = digest(target), sorted(p.name for p in tmp_path.iterdir())  # no -journal either
    shown, report = run_sync(source, target, dry_run=True, prune=True, max_prune_share=0.2)
    assert shown[0][0].removed == 1 and shown[0][0].added == 1
    assert not report.applied and report.refusal is None
    assert (digest(target), sorted(p.name for p in tmp_path.iterdir())) == before

    missing = tmp_path / "not-yet.db"
    shown, _ = run_sync(source, missing, dry_run=True)
    assert shown[0][0].added == len(SOURCE_ROWS) and not missing.exists()


def test_a_failure_while_applying_writes_nothing(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    before = contents(target)
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)

    def explode(diff: SyncDiff, rejected: list[Rejection]) -> None:
        raise KeyboardInterrupt  # e.g. Ctrl-C right after the diff is shown

    with pytest.raises(KeyboardInterrupt):
        sync(parse_source(str(source)), sqlite_target(target), show=explode)
    assert contents(target) == before


def test_an_unreadable_source_catalog_fails_cleanly(tmp_path: Path) -> None:
    target = catalog(tmp_path)
    not_a_catalog = tmp_path / "other.db"
    conn = sqlite3.connect(not_a_catalog)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogImportError, match="nothing was written: no such table: assets"):
        sync(parse_source(str(not_a_catalog)), sqlite_target(target))


# --- size ------------------------------------------------------------------------------------


def big_files(tmp_path: Path, rows: int) -> tuple[Path, Path]:
    """A `rows`-asset target, and a source adding 1%, updating 2% and dropping 0.5% of it."""
    with (tmp_path / "target.csv").open("w") as out:
        out.write(HEADER)
        out.writelines(f"asset-{i:07},res-{i},legacy,news,\n" for i in range(rows))
    target = tmp_path / "target.db"
    assert not import_file(tmp_path / "target.csv", target).rejected
    with (tmp_path / "source.csv").open("w") as out:
        out.write(HEADER)
        for i in range(rows // 200, rows + rows // 100):
            holders = "legacy|incoming" if i % 50 == 0 else "legacy"
            out.write(f"asset-{i:07},res-{i},{holders},news,\n")
    return tmp_path / "source.csv", target


@pytest.mark.slow
def test_a_100000_row_sync(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = 100_000
    source, target = big_files(tmp_path, rows)
    started = time.perf_counter()
    shown, report = run_sync(source, target, dry_run=True, prune=True)
    dry = time.perf_counter() - started
    started = time.perf_counter()
    shown, report = run_sync(source, target, prune=True)
    applied = time.perf_counter() - started
    diff = shown[0][0]
    assert (diff.added, diff.updated, diff.removed) == (1_000, 2_000 - 10, 500)
    assert report.applied and len(contents(target)) == rows + 500
    with capsys.disabled():
        print(f"\n100,000-row sync: dry run {dry:.2f} s, applied {applied:.2f} s")
    assert applied < 30


@pytest.mark.slow
def test_sync_streams_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, target = big_files(tmp_path, 100_000)
    tracemalloc.start()
    try:
        run_sync(source, target, dry_run=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    with capsys.disabled():
        size = source.stat().st_size
        print(f"\nsync of a {size / 1e6:.1f} MB source: Python heap peak {peak / 1e6:.1f} MB")
    assert peak < 8_000_000  # one chunk of rows, not the 101,000 rows of the source
