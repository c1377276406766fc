"""The catalog's write side for keys, on a real SQLite file and a real redis-server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from proxy.catalog.base import CatalogSettings, HttpCatalogSettings, RedisCatalogSettings
from proxy.catalog.keys import (
    KeyRecords,
    KeyRecordsError,
    MirrorJob,
    RedisKeyRecords,
    SqliteKeyRecords,
    open_key_records,
)
from proxy.catalog.redis import RedisCatalog, import_to_redis
from proxy.catalog.sqlite import SqliteCatalog
from proxy.domain import KeyId
from tests.keys.backfill_stack import Title, key_id, make_titles, write_titles
from tests.redis_server import RedisServer

K1, K2, K3 = (key_id("records", slot) for slot in range(3))
Open = Callable[[list[Title]], Awaitable[KeyRecords]]


@pytest.fixture(params=["sqlite", "redis"])
async def open_records(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Open]:
    """open_records(titles) -> KeyRecords over a catalog holding `titles`, for each backend."""
    opened: list[KeyRecords] = []

    async def open_(titles: list[Title]) -> KeyRecords:
        if request.param == "sqlite":
            db = write_titles(tmp_path / "catalog.db", titles) if titles else tmp_path / "c.db"
            records: KeyRecords = open_key_records(CatalogSettings(backend="sqlite", path=db))
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            settings = RedisCatalogSettings(url=server.url)
            if titles:
                source = write_titles(tmp_path / "titles.db", titles).with_suffix(".jsonl")
                await import_to_redis(source, settings)
            records = open_key_records(CatalogSettings(backend="redis", redis=settings))
        opened.append(records)
        return records

    yield open_
    for records in opened:
        await records.close()


# --- record, get, reverse lookup ---------------------------------------------------------------


async def test_record_creates_an_absent_asset(open_records: Open) -> None:
    records = await open_records([])
    assert await records.get("new-1") is None
    await records.record(
        "new-1", drm_resource_id="res-new-1", key_ids=[K1, K2], add_holders=["legacy"]
    )
    entry = await records.get("new-1")
    assert entry is not None
    assert (entry.drm_resource_id, entry.key_holders, entry.key_ids, entry.tags) == (
        "res-new-1",
        frozenset({"legacy"}),
        (K1, K2),
        frozenset(),
    )
    assert await records.asset_for_resource("res-new-1") == "new-1"
    assert await records.asset_for_resource("res-nobody") is None


async def test_record_merges_key_ids_in_order_and_holders(open_records: Open) -> None:
    titles = [Title("t-1", "res-1", (K2, K1), ("legacy",))]
    records = await open_records(titles)
    await records.record("t-1", drm_resource_id="res-1", key_ids=[K3, K1], add_holders=["incoming"])
    await records.record("t-1", drm_resource_id="res-1", key_ids=[K3], add_holders=["incoming"])
    entry = await records.get("t-1")
    assert entry is not None
    assert entry.key_ids == (K2, K1, K3)
    assert entry.key_holders == frozenset({"legacy", "incoming"})


async def test_record_fills_a_missing_resource_id_and_unknown_holders(open_records: Open) -> None:
    records = await open_records([Title("t-1", None, (), None)])
    await records.record("t-1", drm_resource_id="res-1", key_ids=[K1], add_holders=["incoming"])
    entry = await records.get("t-1")
    assert entry is not None
    assert (entry.drm_resource_id, entry.key_holders) == ("res-1", frozenset({"incoming"}))
    assert await records.asset_for_resource("res-1") == "t-1"


async def test_record_refuses_another_resource_id(open_records: Open) -> None:
    records = await open_records([Title("t-1", "res-1", (K1,))])
    with pytest.raises(KeyRecordsError, match="has drmResourceId 'res-1'"):
        await records.record("t-1", drm_resource_id="res-2", key_ids=[K1], add_holders=["x"])
    entry = await records.get("t-1")
    assert entry is not None and entry.key_holders == frozenset({"legacy"})


@pytest.mark.parametrize(
    ("asset_id", "resource", "kids", "holders", "message"),
    [
        ("bad id", "res", [K1], ["p"], "asset id"),
        ("a", "bad res", [K1], ["p"], "drm_resource_id"),
        ("a", "res", [KeyId("xyz")], ["p"], "key id"),
        ("a", "res", [K1], ["Not-A-Provider"], "key holder"),
    ],
)
async def test_record_checks_its_values(
    open_records: Open, asset_id: str, resource: str, kids: list[KeyId], holders: list[str],
    message: str,
) -> None:  # fmt: skip
    records = await open_records([])
    with pytest.raises(ValueError, match=message):
        await records.record(asset_id, drm_resource_id=resource, key_ids=kids, add_holders=holders)


async def test_concurrent_records_all_land(open_records: Open) -> None:
    records = await open_records(make_titles(50))
    await asyncio.gather(
        *(
            records.record(
                f"t-{n:05d}", drm_resource_id=f"res-t-{n:05d}", key_ids=[K1], add_holders=[h]
            )
            for n in range(50)
            for h in ("incoming", "other")
        )
    )
    for n in range(50):
        entry = await records.get(f"t-{n:05d}")
        assert entry is not None and entry.key_holders == frozenset({"legacy", "incoming", "other"})
        assert entry.key_ids[-1] == K1


async def test_iter_assets_streams_every_entry_once(open_records: Open) -> None:
    titles = make_titles(2_345, keys=1)
    records = await open_records(titles)
    seen = [entry async for entry in records.iter_assets(500)]
    assert sorted(entry.asset_id for entry in seen) == [t.asset_id for t in titles]
    assert {entry.key_ids for entry in seen if entry.asset_id == "t-00007"} == {titles[7].key_ids}
    assert await records.count_assets() == 2_345


# --- the mirror queue --------------------------------------------------------------------------


def job(
    asset_id: str = "t-1", kids: tuple[KeyId, ...] = (K1,), target: str = "incoming"
) -> MirrorJob:
    return MirrorJob(asset_id, f"res-{asset_id}", kids, "legacy", target)


async def test_mirror_jobs_are_claimed_finished_and_counted(open_records: Open) -> None:
    records = await open_records([])
    assert (await records.count_mirrors(), await records.due_mirrors(10)) == (0, [])
    await records.enqueue_mirror(job("a-1"))
    await records.enqueue_mirror(job("a-2", target="other"))
    assert await records.count_mirrors() == 2
    due = await records.due_mirrors(10)
    assert sorted(due, key=lambda j: j.asset_id) == [job("a-1"), job("a-2", target="other")]
    assert await records.due_mirrors(10) == []  # claimed for the lease
    for claimed in due:
        await records.finish_mirror(claimed)
    assert await records.count_mirrors() == 0


async def test_a_failed_mirror_job_comes_back_after_its_delay(open_records: Open) -> None:
    records = await open_records([])
    await records.enqueue_mirror(job())
    (claimed,) = await records.due_mirrors(5)
    await records.retry_mirror_later(claimed, "target_timeout", 0.0)
    (again,) = await records.due_mirrors(5)
    assert (again.attempts, again.last_error) == (1, "target_timeout")
    await records.retry_mirror_later(again, "target_http_503", 3600)
    assert await records.due_mirrors(5) == []
    assert await records.count_mirrors() == 1


async def test_enqueue_merges_key_ids_and_finish_keeps_a_job_that_grew(
    open_records: Open,
) -> None:
    records = await open_records([])
    await records.enqueue_mirror(job(kids=(K1,)))
    (claimed,) = await records.due_mirrors(5)
    await records.enqueue_mirror(job(kids=(K2, K1)))  # a new key period meanwhile
    await records.finish_mirror(claimed)  # the claim knew K1 only: the job stays
    (grown,) = await records.due_mirrors(5)
    assert grown.key_ids == (K1, K2)
    await records.finish_mirror(grown)
    assert await records.count_mirrors() == 0


async def test_a_lapsed_lease_makes_a_job_due_again(tmp_path: Path) -> None:
    records = SqliteKeyRecords(tmp_path / "c.db", lease_seconds=0.0)
    try:
        await records.enqueue_mirror(job())
        assert len(await records.due_mirrors(5)) == 1
        assert len(await records.due_mirrors(5)) == 1  # the drainer died: due again
    finally:
        await records.close()


# --- SQLite ------------------------------------------------------------------------------------


async def test_the_gateway_reader_sees_what_is_recorded(tmp_path: Path) -> None:
    db = write_titles(tmp_path / "catalog.db", [Title("t-1", "res-1", (K1,))])
    reader = SqliteCatalog(db)
    records = SqliteKeyRecords(db)
    try:
        before = await reader.get("t-1")
        assert before is not None and before.key_holders == frozenset({"legacy"})
        await records.record("t-1", drm_resource_id="res-1", key_ids=[K1], add_holders=["incoming"])
        after = await reader.get("t-1")  # no cache here: the next read sees it
        assert after is not None and after.key_holders == frozenset({"legacy", "incoming"})
    finally:
        await records.close()
        await reader.close()
    conn = sqlite3.connect(db)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        index = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'assets_drm_resource_id'"
        ).fetchone()
    finally:
        conn.close()
    assert mode == "delete" and index is not None  # still fit for a read-only mount


async def test_reads_never_write_the_file(tmp_path: Path) -> None:
    db = write_titles(tmp_path / "catalog.db", make_titles(3))
    before = db.read_bytes()
    records = SqliteKeyRecords(db)
    try:
        assert await records.get("t-00001") is not None
        assert await records.asset_for_resource("res-t-00002") == "t-00002"
        assert len([entry async for entry in records.iter_assets(2)]) == 3
        assert await records.count_mirrors() == 0
    finally:
        await records.close()
    assert db.read_bytes() == before
    missing = SqliteKeyRecords(tmp_path / "absent.db")
    try:  # a catalog not written yet reads as empty, and is not created by reading
        assert await missing.get("t") is None
        assert await missing.asset_for_resource("r") is None
        assert (await missing.count_assets(), await missing.count_mirrors()) == (0, 0)
        assert [entry async for entry in missing.iter_assets()] == []
    finally:
        await missing.close()
    assert not (tmp_path / "absent.db").exists()


async def test_a_schema_1_file_is_migrated_by_the_first_write(schema_1_db: Path) -> None:
    records = SqliteKeyRecords(schema_1_db)
    try:
        assert [e.asset_id async for e in records.iter_assets()] == ["old-1", "old-2", "old-3"]
        await records.record("old-3", drm_resource_id="res-3", key_ids=[K1], add_holders=["x"])
        entry = await records.get("old-3")
    finally:
        await records.close()
    assert entry is not None and entry.key_ids == (K1,) and entry.key_holders == frozenset({"x"})


async def test_one_failing_write_does_not_undo_the_others(tmp_path: Path) -> None:
    db = write_titles(tmp_path / "catalog.db", [Title("t-1", "res-1", (K1,))])
    records = SqliteKeyRecords(db)
    try:
        results = await asyncio.gather(
            records.record("t-2", drm_resource_id="res-2", key_ids=[K1], add_holders=["a"]),
            records.record("t-1", drm_resource_id="res-9", key_ids=[K1], add_holders=["a"]),
            records.record("t-3", drm_resource_id="res-3", key_ids=[K1], add_holders=["a"]),
            return_exceptions=True,
        )
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], KeyRecordsError)
        assert await records.get("t-2") is not None and await records.get("t-3") is not None
    finally:
        await records.close()


def test_the_http_backend_is_read_only() -> None:
    settings = CatalogSettings(backend="http", http=HttpCatalogSettings("https://meta.example"))
    with pytest.raises(KeyRecordsError, match="'http' is read-only"):
        open_key_records(settings)


# --- Redis -------------------------------------------------------------------------------------


async def test_redis_record_is_announced_and_seen_by_the_gateway_reader(
    redis_server: RedisServer,
) -> None:
    settings = RedisCatalogSettings(url=redis_server.url)
    records = RedisKeyRecords(settings)
    reader = RedisCatalog(settings)
    listener = Redis.from_url(redis_server.url)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe(settings.changes_channel)
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        await records.record("t-1", drm_resource_id="res-1", key_ids=[K1], add_holders=["legacy"])
        message = await pubsub.get_message(timeout=2.0)
        assert message is not None and message["data"] == b"t-1"
        entry = await reader.get("t-1")
        assert entry is not None and entry.key_ids == (K1,)
        assert entry.key_holders == frozenset({"legacy"})
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
        await reader.close()
        await records.close()


async def test_redis_reverse_lookup_scans_once_and_ignores_stale_entries(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = RedisCatalogSettings(url=redis_server.url)
    source = write_titles(tmp_path / "t.db", make_titles(30)).with_suffix(".jsonl")
    await import_to_redis(source, settings)
    records = RedisKeyRecords(settings)
    client = Redis.from_url(redis_server.url)
    try:
        assert await client.get("drm-gateway:resource:res-t-00017") == b"t-00017"  # indexed
        # A catalog written before the index existed: found by the scan, then indexed.
        await client.delete(*[key async for key in client.scan_iter("drm-gateway:resource:*")])
        assert await records.asset_for_resource("res-t-00017") == "t-00017"
        # The scan indexed the assets it went through.
        assert await client.exists("drm-gateway:resource:res-t-00017") == 1
        # An entry left behind by a change is checked, dropped and found again.
        await client.set("drm-gateway:resource:res-t-00003", "t-00004")
        assert await records.asset_for_resource("res-t-00003") == "t-00003"
        assert await records.asset_for_resource("res-unknown") is None
    finally:
        await client.aclose()
        await records.close()


async def test_redis_failures_are_key_records_errors(redis_server: RedisServer) -> None:
    records = RedisKeyRecords(RedisCatalogSettings(url=redis_server.url, timeout=0.5))
    redis_server.stop()
    try:
        with pytest.raises(KeyRecordsError, match="Redis catalog unix://"):
            await records.record("t-1", drm_resource_id="r-1", key_ids=[K1], add_holders=["p"])
    finally:
        await records.close()


async def test_redis_mirror_jobs_hold_no_keys(redis_server: RedisServer) -> None:
    records = RedisKeyRecords(RedisCatalogSettings(url=redis_server.url))
    client = Redis.from_url(redis_server.url)
    try:
        await records.enqueue_mirror(job(kids=(K1, K2)))
        fields = cast(dict[bytes, Any], await client.hgetall("drm-gateway:mirror:job:incoming:t-1"))
        assert set(fields) == {b"r", b"k", b"s", b"a"}
        assert fields[b"k"] == bytes.fromhex(K1 + K2)  # key ids, 16 bytes each; no key field
    finally:
        await client.aclose()
        await records.close()
