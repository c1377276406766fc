"""SqliteCatalog and build_catalog against real SQLite files."""

from __future__ import annotations

import json
import os
import sqlite3
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
    with pytest.raises(ValueError, match=r"^unknown catalog backend 'redis' \(known: sqlite\)$"):
        build_catalog(CatalogSettings(backend="redis"))
    assert KNOWN_BACKENDS == ("sqlite",)


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
