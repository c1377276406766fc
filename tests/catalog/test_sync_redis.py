"""`catalog sync SOURCE --to redis://...` against a real redis-server (tests.conftest.redis_server):
the same diff as for a SQLite target, applied in announced batches, the prune guard, dry runs,
and titles that gain their id leaving the fleet's missing list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.catalog import SqliteCatalog
from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.missing_redis import RedisMissingTitles
from proxy.catalog.redis import RedisCatalog, asset_key, import_to_redis
from proxy.catalog.sync import SyncDiff, SyncOptions, SyncReport, parse_source, sync_to_redis
from proxy.cli.main import main
from tests.catalog.test_sync import HEADER, SOURCE_ROWS, TARGET_ROWS, catalog, run_sync, write
from tests.redis_server import RedisServer

PREFIX = "drm-gateway:"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


async def seed(tmp_path: Path, server: RedisServer, rows: list[str]) -> None:
    report = await import_to_redis(write(tmp_path / "seed.csv", HEADER, rows), settings(server))
    assert not report.rejected


def settings(server: RedisServer, **kw: Any) -> RedisCatalogSettings:
    return RedisCatalogSettings(url=server.url, **kw)


async def run(
    source: Path, server: RedisServer, batch_rows: int = 1_000, **options: Any
) -> tuple[list[SyncDiff], SyncReport]:
    shown: list[SyncDiff] = []
    report = await sync_to_redis(
        parse_source(str(source)),
        settings(server),
        SyncOptions(**options),
        show=lambda diff, _: shown.append(diff),
        batch_rows=batch_rows,
    )
    return shown, report


async def snapshot(client: Redis) -> dict[bytes, Any]:
    """Every key's value (hashes as dicts): what a dry run must leave alone."""
    return {
        key: await (client.hgetall(key) if await client.type(key) == b"hash" else client.get(key))
        async for key in client.scan_iter()
    }


async def test_the_diff_and_the_result_match_a_sqlite_target(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)
    (redis_diff,), report = await run(source, redis_server, batch_rows=3)
    db = catalog(tmp_path)
    (sqlite_shown,), _ = run_sync(source, db)
    assert redis_diff == sqlite_shown[0]
    assert report.applied and redis_diff.added == 1 and redis_diff.absent == 1
    redis_catalog, sqlite_catalog = RedisCatalog(settings(redis_server)), SqliteCatalog(db)
    try:
        for asset_id in {row.split(",")[0] for row in TARGET_ROWS + SOURCE_ROWS}:
            assert await redis_catalog.get(asset_id) == await sqlite_catalog.get(asset_id)
    finally:
        await redis_catalog.close()
        await sqlite_catalog.close()
    (again,), _ = await run(source, redis_server)  # nothing left to change
    assert (again.added, again.updated, again.unchanged) == (0, 0, len(SOURCE_ROWS))


async def test_changed_ids_are_announced_and_unchanged_ones_are_not(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{PREFIX}changes")
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)
    _, report = await run(source, redis_server, batch_rows=4, prune=True, max_prune_share=0.2)
    assert report.applied
    announced: list[str] = []
    while (message := await pubsub.get_message(timeout=1.0)) is not None:
        if message["type"] == "message":
            announced += message["data"].decode().split()
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
    changed = {"fill", "change", "clear", "holders", "kids", "tags", "new"}
    assert sorted(announced) == sorted(changed | {"gone"})
    assert not await client.exists(asset_key(PREFIX, "gone"))


async def test_prune_keeps_the_share_guard_and_force_overrides_it(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await seed(tmp_path, redis_server, [f"a-{n:03},r-{n},,," for n in range(100)])
    source = write(tmp_path / "s.csv", HEADER, [f"a-{n:03},r-{n},,," for n in range(94)])
    (diff,), report = await run(source, redis_server, prune=True)
    assert (diff.target_total, diff.removed, report.applied) == (100, 6, False)
    assert report.refusal is not None and "6 of 100 assets (6.0%)" in report.refusal
    assert await client.exists(asset_key(PREFIX, "a-099"))
    _, report = await run(source, redis_server, prune=True, force=True, batch_rows=4)
    assert report.applied
    assert not await client.exists(*(asset_key(PREFIX, f"a-{n:03}") for n in range(94, 100)))
    assert await client.exists(asset_key(PREFIX, "a-093"))


async def test_without_prune_absent_assets_stay(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    (diff,), report = await run(write(tmp_path / "s.csv", HEADER, SOURCE_ROWS), redis_server)
    assert report.applied and (diff.absent, diff.removed) == (1, 0)
    assert await client.exists(asset_key(PREFIX, "gone"))


async def test_a_dry_run_writes_and_announces_nothing(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    before = await snapshot(client)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"{PREFIX}changes")
    source = write(tmp_path / "s.csv", HEADER, SOURCE_ROWS)
    (diff,), report = await run(source, redis_server, dry_run=True, prune=True, force=True)
    assert (diff.added, diff.updated, diff.removed, report.applied) == (1, 6, 1, False)
    assert await snapshot(client) == before
    messages = []
    while (message := await pubsub.get_message(timeout=0.3)) is not None:
        messages.append(message["type"])
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
    assert messages == ["subscribe"]


async def test_rejected_rows_refuse_the_sync_unless_allowed(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    source = write(tmp_path / "s.csv", HEADER, [*SOURCE_ROWS, "bad id,,,,"])
    _, report = await run(source, redis_server)
    assert not report.applied and len(report.rejected) == 1
    assert not await client.exists(asset_key(PREFIX, "new"))
    _, report = await run(source, redis_server, allow_rejects=True)
    assert report.applied and await client.exists(asset_key(PREFIX, "new"))


async def test_a_title_given_its_id_leaves_the_fleet_missing_list(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    store = RedisMissingTitles(Redis.from_url(redis_server.url), key_prefix=PREFIX)
    try:
        store.record("fill", "widevine")
        store.record("clear", "widevine")  # still without an id after the sync: stays
        await store.flush()
        _, report = await run(write(tmp_path / "s.csv", HEADER, SOURCE_ROWS), redis_server)
        assert report.applied
        assert [t.asset_id for t in (await store.listing(10)).titles] == ["clear"]
    finally:
        await store.close()


async def test_an_import_that_gives_a_title_its_id_takes_it_off_the_missing_list(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    store = RedisMissingTitles(Redis.from_url(redis_server.url), key_prefix=PREFIX)
    try:
        for title in ("fill", "clear", "other"):
            store.record(title, "widevine")
        await store.flush()
        rows = ["fill,r-2,legacy,,", "clear,,legacy,,"]  # `clear` still has no id: stays
        report = await import_to_redis(
            write(tmp_path / "i.csv", HEADER, rows), settings(redis_server)
        )
        assert report.applied and not report.rejected
        listed = [t.asset_id for t in (await store.listing(10)).titles]
        assert sorted(listed) == ["clear", "other"]
    finally:
        await store.close()


async def test_cli_syncs_to_redis_with_the_password_from_the_environment(
    tmp_path: Path,
    redis_server: RedisServer,
    client: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await seed(tmp_path, redis_server, TARGET_ROWS)
    await client.config_set("requirepass", "s3cret-value")
    source = str(write(tmp_path / "s.csv", HEADER, SOURCE_ROWS))
    run_cli = ["catalog", "sync", source, "--to", redis_server.url]
    assert await asyncio.to_thread(main, [*run_cli, "--password-env", "UNSET_PW"]) == 2
    assert await asyncio.to_thread(main, run_cli) == 1  # no password: refused by Redis
    monkeypatch.setenv("REDIS_PW", "s3cret-value")
    with_pw = [*run_cli, "--password-env", "REDIS_PW"]
    assert await asyncio.to_thread(main, [*with_pw, "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "1 added, 6 updated" in out.out and "dry run: nothing written" in out.out
    assert await asyncio.to_thread(main, with_pw) == 0
    out = capsys.readouterr()
    assert f"applied to {redis_server.url}" in out.out
    assert "s3cret-value" not in out.out + out.err
    await client.auth("s3cret-value")
    assert await client.exists(asset_key(PREFIX, "new"))
