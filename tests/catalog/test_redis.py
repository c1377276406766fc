"""The Redis catalog backend against a real redis-server (tests.conftest.redis_server)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.catalog import CatalogSettings, SqliteCatalog, build_catalog
from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.importer import import_file
from proxy.catalog.redis import RedisCatalog, asset_key, import_to_redis
from proxy.cli.main import main
from proxy.config import ConfigError, parse_config
from proxy.errors import CatalogUnavailable
from proxy.routing.rules import ProviderTraits
from tests.conftest import ENV, gateway_raw_config
from tests.redis_server import RedisServer, start_redis_server

KEY_ID = "00112233445566778899aabbccddeeff"
GUID = "0A1B2C3D-4E5F-6071-8293-A4B5C6D7E8F9"
CSV = f"""asset_id,drm_resource_id,key_holders,tags,key_ids
movie-1,res-1,legacy|incoming,kids|hd,{KEY_ID}|{GUID}
movie-2,,legacy,,
movie-3,res-3,,,
movie-4,res-4,incoming,catalog,{KEY_ID}
"""
BAD_CSV = """asset_id,drm_resource_id,key_holders,tags,key_ids
good-1,res-1,,,
bad id,res-2,,,
good-2,res-2,,,
good-1,res-9,,,
good-3,,Legacy,,
"""


def settings(server: RedisServer, **kw: Any) -> RedisCatalogSettings:
    return RedisCatalogSettings(url=server.url, **kw)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url)
    yield redis
    await redis.aclose()


@pytest.fixture
async def catalog(redis_server: RedisServer) -> AsyncIterator[RedisCatalog]:
    redis_catalog = RedisCatalog(settings(redis_server))
    yield redis_catalog
    await redis_catalog.close()


def write(tmp_path: Path, text: str, name: str = "export.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def logged(buffer: io.StringIO, event: str = "catalog_unavailable") -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line["event"] == event]


async def command_calls(client: Redis, command: str) -> int:
    stats = await client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_entries_decode_equal_to_the_sqlite_import_of_the_same_file(
    tmp_path: Path, redis_server: RedisServer, catalog: RedisCatalog
) -> None:
    src = write(tmp_path, CSV)
    report = await import_to_redis(src, settings(redis_server))
    assert (report.added, report.updated, report.rejected, report.applied) == (4, 0, [], True)
    import_file(src, tmp_path / "catalog.db")
    sqlite = SqliteCatalog(tmp_path / "catalog.db")
    try:
        for asset_id in ("movie-1", "movie-2", "movie-3", "movie-4"):
            assert await catalog.get(asset_id) == await sqlite.get(asset_id), asset_id
    finally:
        await sqlite.close()
    entry = await catalog.get("movie-1")
    assert entry is not None
    assert entry.key_ids == (KEY_ID, GUID.replace("-", "").lower())
    assert entry.key_holders == frozenset({"legacy", "incoming"})
    movie_2 = await catalog.get("movie-2")
    assert movie_2 is not None and movie_2.drm_resource_id is None and movie_2.tags == frozenset()
    movie_3 = await catalog.get("movie-3")
    assert movie_3 is not None and movie_3.key_holders is None


async def test_the_stored_value_is_one_compact_hash(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    await import_to_redis(write(tmp_path, CSV), settings(redis_server))
    stored = await client.hgetall(asset_key("drm-gateway:", "movie-1"))
    assert stored == {
        b"r": b"res-1",
        b"h": b"incoming|legacy",
        b"t": b"hd|kids",
        b"k": bytes.fromhex(KEY_ID + GUID.replace("-", "")),
    }
    assert await client.hgetall(asset_key("drm-gateway:", "movie-2")) == {
        b"r": b"",
        b"h": b"legacy",
    }
    assert await client.object("encoding", asset_key("drm-gateway:", "movie-1")) == b"listpack"


async def test_unknown_asset_is_none(catalog: RedisCatalog) -> None:
    assert await catalog.get("no-such-asset") is None


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"h": "legacy"}, "field 'r' (drm_resource_id) is missing"),
        ({"r": "bad id"}, "field 'r' is not a valid id"),
        ({"r": "res-1", "h": "Legacy"}, "field 'h' holds an invalid name"),
        ({"r": "res-1", "t": "a b"}, "field 't' holds an invalid name"),
        ({"r": "res-1", "k": "00112233"}, "field 'k' is not a whole number of 16-byte"),
        ({"r": b"res-\xff"}, "a field is not UTF-8"),
    ],
)
async def test_garbled_values_are_unavailable_and_logged_once_per_cause(
    catalog: RedisCatalog, client: Redis, log_buffer: io.StringIO, fields: Any, why: str
) -> None:
    await client.hset(asset_key("drm-gateway:", "movie-1"), mapping=fields)
    for _ in range(3):
        with pytest.raises(CatalogUnavailable):
            await catalog.get("movie-1")
    (said,) = logged(log_buffer)
    assert said["error"].startswith(f"GarbledValue: {why}")
    assert "res-\\xff" not in log_buffer.getvalue()


async def test_a_key_of_the_wrong_type_is_unavailable(
    catalog: RedisCatalog, client: Redis, log_buffer: io.StringIO
) -> None:
    await client.set(asset_key("drm-gateway:", "movie-1"), "not a hash")
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")
    (said,) = logged(log_buffer)
    assert said["error"].startswith("ResponseError: WRONGTYPE")


async def test_ping_up_then_down_when_the_server_dies(
    redis_server: RedisServer, catalog: RedisCatalog, log_buffer: io.StringIO
) -> None:
    await catalog.ping()
    redis_server.stop()
    for _ in range(2):
        with pytest.raises(CatalogUnavailable):
            await catalog.ping()
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")
    assert len(logged(log_buffer)) == 1
    assert logged(log_buffer)[0]["url"] == redis_server.url


async def test_build_catalog_puts_the_cache_in_front(redis_server: RedisServer) -> None:
    cached = build_catalog(CatalogSettings(backend="redis", redis=settings(redis_server)))
    try:
        assert isinstance(cached.backend, RedisCatalog)
        await cached.ping()
        assert await cached.get("nothing") is None
    finally:
        await cached.close()


async def test_rejected_rows_are_line_numbered_and_nothing_is_written(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    providers = {"legacy": ProviderTraits(False), "incoming": ProviderTraits(True)}
    report = await import_to_redis(
        write(tmp_path, BAD_CSV), settings(redis_server), providers=providers, allow_rejects=False
    )
    assert [(r.line, r.reason) for r in report.rejected] == [
        (3, "asset_id 'bad id' is not a valid id"),
        (5, "duplicate of line 2"),
        (6, "key holder 'Legacy' is not a valid provider name"),
    ]
    assert (report.added, report.updated, report.applied) == (2, 0, False)
    assert await client.dbsize() == 0
    assert await command_calls(client, "publish") == 0


async def test_allow_rejects_writes_the_other_rows_and_counts_updates(
    tmp_path: Path, redis_server: RedisServer, catalog: RedisCatalog
) -> None:
    src = write(tmp_path, BAD_CSV)
    report = await import_to_redis(src, settings(redis_server), allow_rejects=True)
    assert (report.added, report.updated, len(report.rejected)) == (2, 0, 3)
    again = await import_to_redis(src, settings(redis_server), allow_rejects=True)
    assert (again.added, again.updated) == (0, 2)
    entry = await catalog.get("good-2")
    assert entry is not None and entry.drm_resource_id == "res-2"


async def test_an_export_without_key_ids_keeps_the_stored_ones(
    tmp_path: Path, redis_server: RedisServer, catalog: RedisCatalog
) -> None:
    await import_to_redis(write(tmp_path, CSV), settings(redis_server))
    older = "asset_id,drm_resource_id,key_holders,tags\nmovie-1,res-1b,,\n"
    await import_to_redis(write(tmp_path, older, "older.csv"), settings(redis_server))
    entry = await catalog.get("movie-1")
    assert entry is not None
    assert (entry.drm_resource_id, entry.key_holders, entry.tags) == ("res-1b", None, frozenset())
    assert entry.key_ids[0] == KEY_ID


async def test_import_is_pipelined_one_round_trip_per_thousand_rows(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    rows = "".join(f"asset-{n},res-{n},,,\n" for n in range(10_000))
    src = write(tmp_path, "asset_id,drm_resource_id,key_holders,tags,key_ids\n" + rows)
    before = await command_calls(client, "exec")
    report = await import_to_redis(src, settings(redis_server), allow_rejects=True)
    assert report.added == 10_000
    # One MULTI/EXEC (one round trip) and one change message per 1,000 rows.
    assert await command_calls(client, "exec") - before == 10
    assert await command_calls(client, "publish") == 10
    # One hash per asset, and the reverse index drmResourceId -> asset id.
    assert await client.dbsize() == 20_000
    assert await client.get("drm-gateway:resource:res-7") == b"asset-7"


async def test_each_batch_announces_its_asset_ids(
    tmp_path: Path, redis_server: RedisServer, client: Redis
) -> None:
    pubsub = client.pubsub()
    await pubsub.subscribe("drm-gateway:changes")
    await import_to_redis(write(tmp_path, CSV), settings(redis_server), batch_rows=3)
    messages: list[bytes] = []
    async with asyncio.timeout(5):
        while len(messages) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:  # (None: the subscription's confirmation)
                messages.append(message["data"])
    assert messages == [b"movie-1 movie-2 movie-3", b"movie-4"]
    await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_follow_changes_reports_ids_and_every_resubscription(
    tmp_path: Path, redis_server: RedisServer, log_buffer: io.StringIO
) -> None:
    changed: list[list[str]] = []
    subscribed = asyncio.Event()
    catalog = RedisCatalog(settings(redis_server, key_prefix="t:"))
    follower = asyncio.create_task(catalog.follow_changes(changed.append, subscribed.set))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        await import_to_redis(write(tmp_path, CSV), settings(redis_server, key_prefix="t:"))
        async with asyncio.timeout(5):
            while not changed:
                await asyncio.sleep(0.01)
        assert changed == [["movie-1", "movie-2", "movie-3", "movie-4"]]
        subscribed.clear()
        redis_server.stop()
        async with asyncio.timeout(5):
            while not logged(log_buffer, "catalog_changes_lost"):
                await asyncio.sleep(0.01)
        restarted = start_redis_server(redis_server.socket_path.parent)
        try:
            await asyncio.wait_for(subscribed.wait(), 10)  # the cache is cleared again
            assert len(logged(log_buffer, "catalog_changes_lost")) == 1
            assert len(logged(log_buffer, "catalog_changes_resumed")) == 1
        finally:
            restarted.stop()
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await catalog.close()


# --- the command -----------------------------------------------------------------------------


def test_cli_import_to_redis_exit_codes(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = write(tmp_path, CSV), write(tmp_path, BAD_CSV, "bad.csv")
    url = redis_server.url
    assert main(["catalog", "import", str(good), "--to", url]) == 0
    assert "4 added, 0 updated, 0 rejected" in capsys.readouterr().out
    assert main(["catalog", "import", str(bad), "--to", url]) == 1
    out = capsys.readouterr().out
    assert "nothing imported" in out and "line 3: asset_id 'bad id'" in out
    assert main(["catalog", "import", str(bad), "--to", url, "--allow-rejects"]) == 0
    assert "2 added, 0 updated, 3 rejected" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "redis://:hunter2@localhost/0"], "must not hold a password"),
        (["--to", "http://localhost/"], "must be a redis://, rediss:// or unix:// URL"),
        (["--to", "redis://localhost/0", "--db", "x.db"], "give either --db or --to"),
        (["--to", "redis://localhost/0", "--password-env", "NO_SUCH_VAR_X"], "is not set"),
    ],
)
def test_cli_usage_problems_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["catalog", "import", str(write(tmp_path, CSV)), *extra])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "hunter2" not in err


def test_cli_import_fails_with_exit_1_when_redis_is_down(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_server.stop()
    code = main(["catalog", "import", str(write(tmp_path, CSV)), "--to", redis_server.url])
    assert code == 1
    assert "import failed: cannot write the Redis catalog" in capsys.readouterr().err


async def test_cli_password_comes_from_the_named_variable(
    tmp_path: Path,
    redis_server: RedisServer,
    client: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await client.config_set("requirepass", "s3cret-value")
    src = str(write(tmp_path, CSV))
    run = ["catalog", "import", src, "--to", redis_server.url]
    assert await asyncio.to_thread(main, run) == 1  # no password: refused
    monkeypatch.setenv("REDIS_PW", "s3cret-value")
    assert await asyncio.to_thread(main, [*run, "--password-env", "REDIS_PW"]) == 0
    assert "s3cret-value" not in capsys.readouterr().err


# --- config ----------------------------------------------------------------------------------


def redis_config(tmp_path: Path, section: Any, env: dict[str, str] | None = None) -> Any:
    raw = gateway_raw_config(tmp_path / "unused.db", "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["catalog"] = {"backend": "redis", "redis": section}
    return parse_config(raw, base_dir=tmp_path, env={**ENV, **(env or {})})


def test_config_reads_the_redis_section_with_the_password_from_a_secret(tmp_path: Path) -> None:
    config = redis_config(
        tmp_path,
        {
            "url": "rediss://redis.internal:6380/2",
            "password": {"env": "REDIS_PASSWORD"},
            "key_prefix": "gw:",
            "timeouts": {"connect_seconds": 0.5, "command_seconds": 0.25},
        },
        env={"REDIS_PASSWORD": "pw-from-env"},
    )
    redis = config.catalog.redis
    assert redis is not None
    assert (redis.url, redis.password, redis.key_prefix) == (
        "rediss://redis.internal:6380/2",
        "pw-from-env",
        "gw:",
    )
    assert (redis.connect_timeout, redis.timeout, redis.changes_channel) == (
        0.5,
        0.25,
        "gw:changes",
    )
    assert "pw-from-env" not in repr(config.catalog)


def test_config_reports_every_redis_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        redis_config(
            tmp_path,
            {
                "url": "redis://:pw@localhost/0",
                "password": "plain-text",
                "channel": "",
                "timeouts": {"connect_seconds": 0},
                "database": 3,
            },
        )
    problems = "\n".join(caught.value.problems)
    for expected in (
        "catalog.redis.database: unknown field",
        "catalog.redis.url: must not hold a password",
        "catalog.redis.password: must name exactly one of 'env' or 'file'",
        "catalog.redis.channel: must not be empty",
        "catalog.redis.timeouts.connect_seconds: must be greater than 0",
    ):
        assert expected in problems


def test_config_needs_the_redis_section_and_only_for_redis(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"catalog\.redis: is missing, and has no default"):
        redis_config(tmp_path, None)
