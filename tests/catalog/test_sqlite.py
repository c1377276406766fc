"""SqliteCatalog and build_catalog against real SQLite files."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.catalog import (
    KNOWN_BACKENDS,
    CachedCatalog,
    CatalogEntry,
    CatalogSettings,
    SqliteCatalog,
    build_catalog,
)
from proxy.catalog import sqlite as sqlite_backend
from proxy.catalog.importer import import_file
from proxy.catalog.sqlite import create_schema, decode_row, ensure_schema, read_only_uri
from proxy.errors import CatalogUnavailable

Row = tuple[str, str | None, list[str] | None, list[str]]

ROWS: list[Row] = [
    ("movie-1", "res-1", ["incoming", "legacy"], ["kids", "4k"]),
    ("movie-2", None, ["legacy"], []),
    ("movie-3", "res-3", None, ["hd"]),
]


def write_db(path: Path, rows: list[Row]) -> Path:
    """Create a catalog file holding `rows`, the way the importer stores them."""
    conn = sqlite3.connect(path)
    create_schema(conn)
    conn.executemany(
        "INSERT INTO assets (asset_id, drm_resource_id, key_holders, tags) VALUES (?, ?, ?, ?)",
        [
            (aid, rid, None if holders is None else json.dumps(holders), json.dumps(tags))
            for aid, rid, holders, tags in rows
        ],
    )
    conn.commit()
    conn.close()
    return path


@pytest.fixture
async def catalog(tmp_path: Path) -> AsyncIterator[SqliteCatalog]:
    cat = SqliteCatalog(write_db(tmp_path / "catalog.db", ROWS))
    yield cat
    await cat.close()


async def test_get_returns_the_entry(catalog: SqliteCatalog) -> None:
    assert await catalog.get("movie-1") == CatalogEntry(
        asset_id="movie-1",
        drm_resource_id="res-1",
        key_holders=frozenset({"incoming", "legacy"}),
        tags=frozenset({"kids", "4k"}),
    )


async def test_null_columns_mean_missing_resource_id_and_unknown_holders(
    catalog: SqliteCatalog,
) -> None:
    second = await catalog.get("movie-2")
    third = await catalog.get("movie-3")
    assert second is not None and third is not None
    assert second.drm_resource_id is None
    assert second.tags == frozenset()
    assert third.key_holders is None


async def test_unknown_asset_is_none(catalog: SqliteCatalog) -> None:
    assert await catalog.get("nope") is None


async def test_ping_succeeds_on_a_good_file(catalog: SqliteCatalog) -> None:
    await catalog.ping()


def test_missing_file_is_unavailable_without_the_path_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "secret-dir" / "missing.db"
    with pytest.raises(CatalogUnavailable) as info:
        SqliteCatalog(path)
    assert str(path) not in str(info.value)
    assert info.value.message == CatalogUnavailable.message
    assert str(path) in str(info.value.__cause__)


async def test_corrupt_file_fails_ping_and_get(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 200)
    catalog = SqliteCatalog(path)
    try:
        with pytest.raises(CatalogUnavailable) as info:
            await catalog.ping()
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        with pytest.raises(CatalogUnavailable):
            await catalog.get("movie-1")
    finally:
        await catalog.close()


async def test_database_without_schema_fails_ping(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")  # a zero-byte file is a valid SQLite database without tables
    catalog = SqliteCatalog(path)
    try:
        with pytest.raises(CatalogUnavailable):
            await catalog.ping()
    finally:
        await catalog.close()


async def test_ping_fails_when_the_file_is_deleted_after_open(tmp_path: Path) -> None:
    path = write_db(tmp_path / "catalog.db", ROWS)
    catalog = SqliteCatalog(path)
    try:
        await catalog.ping()
        path.unlink()
        with pytest.raises(CatalogUnavailable):
            await catalog.ping()
    finally:
        await catalog.close()


async def test_recovers_once_a_corrupt_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    path.write_bytes(b"garbage" * 1000)
    catalog = SqliteCatalog(path)
    try:
        with pytest.raises(CatalogUnavailable):
            await catalog.get("movie-1")
        os.replace(write_db(tmp_path / "fixed.db", ROWS), path)
        entry = await catalog.get("movie-1")
        assert entry is not None and entry.drm_resource_id == "res-1"
    finally:
        await catalog.close()


def test_serving_uri_opens_the_file_read_only(tmp_path: Path) -> None:
    path = write_db(tmp_path / "with space%.db", ROWS)
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM assets").fetchone() == (3,)
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("DELETE FROM assets")
    finally:
        conn.close()


async def test_close_is_idempotent_and_later_gets_fail(tmp_path: Path) -> None:
    catalog = SqliteCatalog(write_db(tmp_path / "catalog.db", ROWS))
    await catalog.close()
    await catalog.close()
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")


def test_ensure_schema_creates_a_usable_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    ensure_schema(path)
    ensure_schema(path)  # idempotent
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM assets").fetchone() == (0,)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    conn.close()


async def test_build_catalog_wraps_sqlite_in_the_cache(tmp_path: Path) -> None:
    path = write_db(tmp_path / "catalog.db", ROWS)
    outcomes: list[str] = []
    catalog = build_catalog(CatalogSettings(path=path), observe=outcomes.append)
    try:
        assert isinstance(catalog, CachedCatalog)
        assert isinstance(catalog.backend, SqliteCatalog)
        assert (await catalog.get("movie-1")) == (await catalog.get("movie-1"))
        assert outcomes == ["miss", "hit"]
    finally:
        await catalog.close()


def test_build_catalog_rejects_an_unknown_backend() -> None:
    known = ", ".join(KNOWN_BACKENDS)
    with pytest.raises(ValueError, match=rf"^unknown catalog backend 'mongo' \(known: {known}\)$"):
        build_catalog(CatalogSettings(backend="mongo"))
    assert KNOWN_BACKENDS == ("http", "redis", "sqlite")


def test_build_catalog_sqlite_needs_a_path() -> None:
    with pytest.raises(ValueError, match="needs a path"):
        build_catalog(CatalogSettings(backend="sqlite", path=None))


def test_build_catalog_with_missing_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CatalogUnavailable):
        build_catalog(CatalogSettings(path=tmp_path / "nope.db"))


# --- key ids ---------------------------------------------------------------------------------

KID_A = "00112233445566778899aabbccddeeff"
KID_B = "0123456789abcdef0123456789abcdef"


def put_key_ids(path: Path, asset_id: str, key_ids: str | None) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute("UPDATE assets SET key_ids = ? WHERE asset_id = ?", (key_ids, asset_id))
        conn.commit()
    finally:
        conn.close()


async def test_key_ids_are_read_in_stored_order(tmp_path: Path) -> None:
    path = write_db(tmp_path / "catalog.db", ROWS)
    put_key_ids(path, "movie-1", json.dumps([KID_B, KID_A]))
    put_key_ids(path, "movie-2", "[]")
    catalog = SqliteCatalog(path)
    try:
        first = await catalog.get("movie-1")
        assert first is not None and first.key_ids == (KID_B, KID_A)
        second, third = await catalog.get("movie-2"), await catalog.get("movie-3")
        assert second is not None and second.key_ids == ()  # an empty list: unknown as well
        assert third is not None and third.key_ids == ()  # NULL: unknown
    finally:
        await catalog.close()


@pytest.mark.parametrize("stored", ["not json", '"0011"', "[1, 2]", '{"a": 1}'])
async def test_garbled_key_ids_make_the_catalog_unavailable(tmp_path: Path, stored: str) -> None:
    path = write_db(tmp_path / "catalog.db", ROWS)
    put_key_ids(path, "movie-1", stored)
    catalog = SqliteCatalog(path)
    try:
        with pytest.raises(CatalogUnavailable) as info:
            await catalog.get("movie-1")
        assert isinstance(info.value.__cause__, ValueError)
        assert await catalog.get("movie-3") is not None  # other rows still served
    finally:
        await catalog.close()


def test_decode_row_takes_rows_with_and_without_key_ids() -> None:
    old = decode_row("a", ("r", '["legacy"]', "[]"))
    new = decode_row("a", ("r", '["legacy"]', "[]", f'["{KID_A}"]'))
    assert old == CatalogEntry("a", "r", frozenset({"legacy"}), frozenset(), ())
    assert new == CatalogEntry("a", "r", frozenset({"legacy"}), frozenset(), (KID_A,))
    assert decode_row("a", ("r", None, "[]", None)).key_ids == ()


async def test_a_schema_1_file_is_served_with_key_ids_unknown(schema_1_db: Path) -> None:
    before = schema_1_db.read_bytes()
    catalog = SqliteCatalog(schema_1_db)
    try:
        await catalog.ping()
        assert await catalog.get("old-1") == CatalogEntry(
            "old-1", "res-1", frozenset({"incoming", "legacy"}), frozenset({"kids"}), ()
        )
        assert await catalog.get("old-2") == CatalogEntry(
            "old-2", None, frozenset({"legacy"}), frozenset(), ()
        )
        assert await catalog.get("nope") is None
    finally:
        await catalog.close()
    assert schema_1_db.read_bytes() == before  # read-only: serving never migrates


def test_create_schema_migrates_a_schema_1_file_once(schema_1_db: Path) -> None:
    ensure_schema(schema_1_db)
    ensure_schema(schema_1_db)  # idempotent: the column is added once
    conn = sqlite3.connect(schema_1_db)
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(assets)")]
        assert columns == [
            "asset_id",
            "drm_resource_id",
            "key_holders",
            "tags",
            "updated_at",
            "key_ids",
        ]
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM assets WHERE key_ids IS NULL").fetchone() == (3,)
    finally:
        conn.close()


def test_new_and_migrated_files_have_the_same_columns(tmp_path: Path, schema_1_db: Path) -> None:
    ensure_schema(schema_1_db)
    ensure_schema(tmp_path / "new.db")

    def columns(path: Path) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("PRAGMA table_info(assets)").fetchall()
        finally:
            conn.close()

    assert columns(schema_1_db) == columns(tmp_path / "new.db")


# --- shipping a catalog: read-only mounts, files renamed over, failures said once ----------

ROOT = Path(__file__).resolve().parents[2]
# Opens the catalog the way the gateway does, from a mount where nothing can be written.
_READ_ON_MOUNT = """
import asyncio, sys
from pathlib import Path
from proxy.catalog import SqliteCatalog
async def main():
    catalog = SqliteCatalog(Path(sys.argv[1]))
    try:
        await catalog.ping()
        entry = await catalog.get("movie-1")
        print(entry.drm_resource_id)
    finally:
        await catalog.close()
asyncio.run(main())
"""


def _on_read_only_mount(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """Run `command` where `folder` is bind-mounted read-only at `<folder>-ro` (in a private
    mount namespace: nothing leaks to the machine); pytest.skip where that is not allowed."""
    mount_point = folder.with_name(folder.name + "-ro")
    mount_point.mkdir(exist_ok=True)
    script = (
        f"mount --bind {folder} {mount_point} && mount -o remount,bind,ro {mount_point} "
        f'&& exec "$@"'
    )
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", "true"], capture_output=True, text=True
    )
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no read-only bind mount here ({probe.stderr.strip() or 'no unshare'})")
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_an_import_leaves_a_file_any_read_only_mount_can_open(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    folder.mkdir()
    source = folder / "export.csv"
    source.write_text("asset_id,drm_resource_id,key_holders,tags\nmovie-1,res-1,,\n")
    report = import_file(source, folder / "catalog.db")
    assert not report.left_in_wal
    conn = sqlite3.connect(folder / "catalog.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    assert sorted(p.name for p in folder.iterdir()) == ["catalog.db", "export.csv"]
    done = _on_read_only_mount(
        folder,
        sys.executable,
        "-c",
        _READ_ON_MOUNT,
        str(folder.with_name("catalog-ro") / "catalog.db"),
    )
    assert (done.returncode, done.stdout.strip()) == (0, "res-1"), done.stderr


def test_a_file_left_in_wal_mode_is_read_immutable_from_a_read_only_mount(tmp_path: Path) -> None:
    folder = tmp_path / "wal"
    folder.mkdir()
    db = write_db(folder / "catalog.db", ROWS)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")  # as an import with a reader attached leaves it
    conn.close()
    mounted = str(folder.with_name("wal-ro") / "catalog.db")
    done = _on_read_only_mount(folder, sys.executable, "-c", _READ_ON_MOUNT, mounted)
    assert (done.returncode, done.stdout.strip()) == (0, "res-1"), done.stderr
    audit = _on_read_only_mount(
        folder, sys.executable, "-m", "proxy.cli", "catalog", "audit", "--db", mounted
    )
    assert audit.returncode == 0 and "3 assets, 1 without a drm_resource_id" in audit.stdout, (
        audit.stderr
    )
    assert read_only_uri(db).endswith("?mode=ro")  # where the folder is writable: no immutable


async def test_a_catalog_renamed_over_the_open_one_is_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "REPLACED_CHECK_SECONDS", 0.05)
    db = write_db(tmp_path / "catalog.db", ROWS)
    catalog = SqliteCatalog(db)
    try:
        first = await catalog.get("movie-1")
        assert first is not None and first.drm_resource_id == "res-1"
        fresh = write_db(tmp_path / "new.db", [("movie-1", "res-1-v2", None, [])])
        os.replace(fresh, db)  # how a new export is published
        await asyncio.sleep(0.1)
        second = await catalog.get("movie-1")
        assert second is not None and second.drm_resource_id == "res-1-v2"
        assert await catalog.get("movie-2") is None  # the old file's rows are gone
    finally:
        await catalog.close()


async def test_a_catalog_that_cannot_be_read_says_why_once(
    tmp_path: Path, log_buffer: io.StringIO
) -> None:
    db = tmp_path / "catalog.db"
    db.write_bytes(b"this is not a database, " * 100)
    catalog = SqliteCatalog(db)
    try:
        for _ in range(3):
            with pytest.raises(CatalogUnavailable):
                await catalog.get("movie-1")
    finally:
        await catalog.close()
    lines = [json.loads(line) for line in log_buffer.getvalue().splitlines()]
    said = [line for line in lines if line.get("event") == "catalog_unavailable"]
    assert len(said) == 1
    assert said[0]["path"] == str(db) and "not a database" in said[0]["error"]
