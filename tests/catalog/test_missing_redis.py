"""The fleet-wide list of titles without a drmResourceId, against a real redis-server
(tests.conftest.redis_server): shared by two stores, capped, emptied of titles that gained
their id, and fed through a bounded queue that never blocks the request path."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.catalog.missing_redis import MissingKeys, RedisMissingTitles
from tests.redis_server import RedisServer

PREFIX = "gw:"
StoreFactory = Callable[..., Awaitable[RedisMissingTitles]]


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[StoreFactory]:
    stores: list[RedisMissingTitles] = []

    async def make(**kw: Any) -> RedisMissingTitles:
        store = RedisMissingTitles(Redis.from_url(redis_server.url), key_prefix=PREFIX, **kw)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


async def test_two_replicas_add_up_in_one_list_most_requested_first(
    make_store: StoreFactory,
) -> None:
    clock = Clock()
    one, two = await make_store(clock=clock), await make_store(clock=clock)
    one.record("a", "widevine")
    one.record("b", "widevine")
    clock.now += 5
    two.record("a", "fairplay")
    two.record("a", "widevine")
    await one.flush()
    await two.flush()
    for store in (one, two):
        listing = await store.listing(10)
        assert (listing.scope, listing.total, listing.evicted) == ("fleet", 2, 0)
        first, second = listing.titles
        assert (first.asset_id, first.count) == ("a", 3)
        assert first.by_drm == {"widevine": 2, "fairplay": 1}
        assert (first.first_seen, first.last_seen) == (clock.now - 5, clock.now)
        assert (second.asset_id, second.count, second.by_drm) == ("b", 1, {"widevine": 1})


async def test_nothing_is_written_until_the_flush(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = await make_store()
    store.record("a", "widevine")
    assert "a" in store
    assert (await store.listing(10)).total == 0
    await store.flush()
    assert (await store.listing(10)).total == 1


async def test_the_cap_trims_the_least_requested_and_their_details(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    evicted: list[int] = []
    sizes: list[int] = []
    store = await make_store(max_titles=2, on_eviction=evicted.append, on_size=sizes.append)
    for asset, times in (("often", 3), ("twice", 2), ("once", 1)):
        for _ in range(times):
            store.record(asset, "playready")
    await store.flush()
    listing = await store.listing(10)
    assert [t.asset_id for t in listing.titles] == ["often", "twice"]
    assert (listing.total, listing.evicted, listing.max_titles) == (2, 1, 2)
    assert (evicted, sizes) == ([1], [2])
    client = Redis.from_url(redis_server.url)
    try:
        assert not await client.exists(MissingKeys(PREFIX).title("once"))
    finally:
        await client.aclose()


async def test_a_title_that_gains_its_id_leaves_the_fleet_list(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    one, two = await make_store(), await make_store()
    one.record("a", "widevine")
    one.record("b", "widevine")
    await one.flush()
    assert "a" not in two and two.forget("a") is False  # not known here yet: no write
    await two.listing(10)  # reading the list teaches `two` what is listed
    assert two.forget("a") is True
    await two.flush()
    listing = await one.listing(10)
    assert [t.asset_id for t in listing.titles] == ["b"]
    client = Redis.from_url(redis_server.url)
    try:
        assert not await client.exists(MissingKeys(PREFIX).title("a"))
    finally:
        await client.aclose()


async def test_forget_before_the_flush_drops_the_queued_requests(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    store.record("a", "widevine")
    assert store.forget("a") is True
    await store.flush()
    assert (await store.listing(10)).total == 0


async def test_a_full_queue_drops_new_titles_and_counts_them(make_store: StoreFactory) -> None:
    drops: list[int] = []
    store = await make_store(max_pending=2, on_drop=drops.append)
    for asset in ("a", "b", "c", "d"):
        store.record(asset, "widevine")
    store.record("a", "widevine")  # an already queued title still counts
    assert (store.dropped, drops) == (2, [1, 1])
    await store.flush()
    listing = await store.listing(10)
    assert {(t.asset_id, t.count) for t in listing.titles} == {("a", 2), ("b", 1)}
    store.record("c", "widevine")  # the queue is empty again after the flush
    assert store.dropped == 2


async def test_a_flush_while_redis_is_down_loses_the_batch_not_the_store(
    make_store: StoreFactory, redis_server: RedisServer
) -> None:
    store = await make_store()
    store.record("a", "widevine")
    redis_server.stop()
    await store.flush()  # logged, not raised
    store.record("b", "widevine")
    assert "b" in store
