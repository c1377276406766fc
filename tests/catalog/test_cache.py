"""CachedCatalog in front of a real SQLite catalog, with a hand-driven clock."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from proxy.catalog import CachedCatalog, CatalogEntry, SqliteCatalog
from proxy.catalog.sqlite import create_schema
from proxy.errors import CatalogUnavailable

TTL = 60.0
NEGATIVE_TTL = 10.0
STALE = 300.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingCatalog:
    """A real backend: SqliteCatalog plus a call counter, an optional gate and a fault switch.

    With `gate` set, each call waits on it, so concurrent calls truly overlap. With `broken`
    set, calls fail the way a dead database does (an sqlite3 error).
    """

    def __init__(self, inner: SqliteCatalog) -> None:
        self.inner = inner
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.broken = False
        self.closed = False

    async def get(self, asset_id: str) -> CatalogEntry | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        return await self.inner.get(asset_id)

    async def ping(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("disk I/O error")
        await self.inner.ping()

    async def close(self) -> None:
        self.closed = True
        await self.inner.close()


async def settle(condition: Callable[[], bool]) -> None:
    """Let other tasks run until `condition` holds; fail (not hang) if it never does."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


class Db:
    """Writes rows into the catalog file behind the backend."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path)
        create_schema(conn)
        conn.close()

    def put(self, asset_id: str, drm_resource_id: str | None) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO assets (asset_id, drm_resource_id, key_holders, tags)"
                " VALUES (?, ?, ?, '[]')",
                (asset_id, drm_resource_id, json.dumps(["legacy"])),
            )
        conn.close()


class Setup:
    def __init__(self, tmp_path: Path, max_entries: int = 100) -> None:
        self.db = Db(tmp_path / "catalog.db")
        for i in range(5):
            self.db.put(f"a{i}", f"r{i}")
        self.backend = CountingCatalog(SqliteCatalog(self.db.path))
        self.clock = FakeClock()
        self.outcomes: list[str] = []
        self.cache = CachedCatalog(
            self.backend,
            ttl=TTL,
            negative_ttl=NEGATIVE_TTL,
            stale_seconds=STALE,
            max_entries=max_entries,
            clock=self.clock,
            observe=self.outcomes.append,
        )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Setup]:
    setup = Setup(tmp_path)
    yield setup
    await setup.cache.close()


async def test_second_get_is_a_hit(env: Setup) -> None:
    first = await env.cache.get("a1")
    second = await env.cache.get("a1")
    assert first is second
    assert first is not None and first.drm_resource_id == "r1"
    assert env.backend.calls == 1
    assert env.outcomes == ["miss", "hit"]


async def test_entry_expires_after_ttl(env: Setup) -> None:
    await env.cache.get("a1")
    env.db.put("a1", "r1-new")
    env.clock.advance(TTL - 0.001)
    entry = await env.cache.get("a1")
    assert entry is not None and entry.drm_resource_id == "r1"
    env.clock.advance(0.002)
    entry = await env.cache.get("a1")
    assert entry is not None and entry.drm_resource_id == "r1-new"
    assert env.backend.calls == 2
    assert env.outcomes == ["miss", "hit", "miss"]


async def test_unknown_asset_is_negatively_cached_for_the_shorter_ttl(env: Setup) -> None:
    assert await env.cache.get("new") is None
    env.db.put("new", "r-new")
    env.clock.advance(NEGATIVE_TTL - 0.001)
    assert await env.cache.get("new") is None
    env.clock.advance(0.002)  # well within TTL, past NEGATIVE_TTL
    entry = await env.cache.get("new")
    assert entry is not None and entry.drm_resource_id == "r-new"
    assert env.outcomes == ["miss", "negative_hit", "miss"]


async def test_concurrent_misses_make_one_backend_call(env: Setup) -> None:
    env.backend.gate = asyncio.Event()
    tasks = [asyncio.create_task(env.cache.get("a2")) for _ in range(50)]
    await settle(lambda: env.backend.calls == 1 and env.outcomes.count("coalesced") == 49)
    env.backend.gate.set()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*tasks)
    assert env.backend.calls == 1
    assert all(r is results[0] for r in results)
    assert results[0] is not None and results[0].drm_resource_id == "r2"
    assert Counter(env.outcomes) == {"miss": 1, "coalesced": 49}
    assert await env.cache.get("a2") is results[0]


async def test_a_failed_shared_call_fails_every_waiter(env: Setup) -> None:
    env.backend.gate = asyncio.Event()
    env.backend.broken = True
    tasks = [asyncio.create_task(env.cache.get("a3")) for _ in range(50)]
    await settle(lambda: env.backend.calls == 1 and env.outcomes.count("coalesced") == 49)
    env.backend.gate.set()
    async with asyncio.timeout(10):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, CatalogUnavailable) for r in results)
    assert env.backend.calls == 1
    assert Counter(env.outcomes) == {"miss": 1, "coalesced": 49, "error": 50}


async def test_a_cancelled_waiter_does_not_disturb_the_shared_call(env: Setup) -> None:
    env.backend.gate = asyncio.Event()
    leader, quitter, waiter = (asyncio.create_task(env.cache.get("a4")) for _ in range(3))
    await settle(lambda: env.outcomes.count("coalesced") == 2)
    quitter.cancel()
    await settle(quitter.done)
    env.backend.gate.set()
    async with asyncio.timeout(10):  # a bug here would hang, not fail
        results = await asyncio.gather(leader, waiter)
    assert results[0] is results[1] is not None
    assert quitter.cancelled()
    assert env.backend.calls == 1


async def test_waiters_take_over_when_the_calling_request_is_cancelled(env: Setup) -> None:
    env.backend.gate = asyncio.Event()
    leader, *waiters = (asyncio.create_task(env.cache.get("a4")) for _ in range(3))
    await settle(lambda: env.outcomes.count("coalesced") == 2)
    leader.cancel()
    await settle(lambda: env.backend.calls == 2)  # one waiter made the call anew
    env.backend.gate.set()
    async with asyncio.timeout(10):
        first, second = await asyncio.gather(*waiters)
    assert first is second is not None
    assert leader.cancelled()
    assert env.outcomes.count("miss") == 2
    assert await env.cache.get("a4") is first


async def test_failure_serves_a_stale_entry(env: Setup) -> None:
    fresh = await env.cache.get("a1")
    env.clock.advance(TTL + STALE - 1)
    env.backend.broken = True
    assert await env.cache.get("a1") is fresh
    assert env.outcomes == ["miss", "miss", "stale"]
    assert env.backend.calls == 2


async def test_failure_without_an_entry_is_catalog_unavailable(env: Setup) -> None:
    env.backend.broken = True
    with pytest.raises(CatalogUnavailable) as info:
        await env.cache.get("a1")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert info.value.message == CatalogUnavailable.message
    assert env.outcomes == ["miss", "error"]


async def test_stale_window_expires(env: Setup) -> None:
    await env.cache.get("a1")
    env.clock.advance(TTL + STALE + 0.001)
    env.backend.broken = True
    with pytest.raises(CatalogUnavailable):
        await env.cache.get("a1")
    assert env.outcomes == ["miss", "miss", "error"]


async def test_known_missing_is_not_served_stale(env: Setup) -> None:
    assert await env.cache.get("ghost") is None
    env.clock.advance(NEGATIVE_TTL + 1)
    env.backend.broken = True
    with pytest.raises(CatalogUnavailable):
        await env.cache.get("ghost")


async def test_recovery_after_failure_refreshes_the_entry(env: Setup) -> None:
    await env.cache.get("a1")
    env.clock.advance(TTL + 1)
    env.backend.broken = True
    await env.cache.get("a1")  # stale
    env.backend.broken = False
    env.db.put("a1", "r1-new")
    entry = await env.cache.get("a1")
    assert entry is not None and entry.drm_resource_id == "r1-new"
    assert env.outcomes == ["miss", "miss", "stale", "miss"]


async def test_invalidate_one_and_all(env: Setup) -> None:
    for asset_id in ("a0", "a1", "a2", "ghost"):
        await env.cache.get(asset_id)
    assert len(env.cache) == 4
    assert env.cache.invalidate("a1") == 1
    assert env.cache.invalidate("a1") == 0
    assert env.cache.invalidate("never-seen") == 0
    env.db.put("a1", "r1-new")
    entry = await env.cache.get("a1")
    assert entry is not None and entry.drm_resource_id == "r1-new"
    assert env.cache.invalidate() == 4
    assert len(env.cache) == 0
    await env.cache.get("a0")
    assert env.backend.calls == 6


async def test_an_answer_started_before_invalidate_is_not_cached(env: Setup) -> None:
    env.backend.gate = asyncio.Event()
    pending = asyncio.create_task(env.cache.get("a1"))
    await settle(lambda: env.backend.calls == 1)
    assert env.cache.invalidate() == 0
    env.backend.gate.set()
    assert await pending is not None
    assert len(env.cache) == 0


async def test_max_entries_bounds_the_cache_oldest_fetched_first(tmp_path: Path) -> None:
    setup = Setup(tmp_path, max_entries=3)
    try:
        for asset_id in ("a0", "a1", "a2"):
            await setup.cache.get(asset_id)
        await setup.cache.get("a0")  # a hit moves nothing: eviction is by fetch time
        await setup.cache.get("a3")  # evicts a0, the oldest fetched
        assert len(setup.cache) == 3
        calls = setup.backend.calls
        for asset_id in ("a1", "a2", "a3"):
            await setup.cache.get(asset_id)
        assert setup.backend.calls == calls
        await setup.cache.get("a0")  # fetched again, now the newest; a1 goes
        assert setup.backend.calls == calls + 1
        await setup.cache.get("a1")
        assert setup.backend.calls == calls + 2
    finally:
        await setup.cache.close()


async def test_over_the_cap_the_oldest_generation_goes_whole(tmp_path: Path) -> None:
    db = Db(tmp_path / "catalog.db")
    for i in range(9):
        db.put(f"a{i}", f"r{i}")
    backend = CountingCatalog(SqliteCatalog(db.path))
    cache = CachedCatalog(
        backend, ttl=TTL, negative_ttl=NEGATIVE_TTL, stale_seconds=STALE, max_entries=8
    )
    try:
        for i in range(8):  # four generations of two (a quarter of the cap each)
            await cache.get(f"a{i}")
        assert len(cache) == 8
        await cache.get("a8")  # over the cap: a0 and a1 go together, 7 stay
        assert len(cache) == 7
        calls = backend.calls
        for i in range(2, 9):
            await cache.get(f"a{i}")
        assert backend.calls == calls
        await cache.get("a1")
        assert backend.calls == calls + 1
    finally:
        await cache.close()


async def test_entries_fetched_within_a_quarter_ttl_expire_together(env: Setup) -> None:
    await env.cache.get("a1")  # opens a generation at t0
    env.clock.advance(TTL / 4 - 1)
    await env.cache.get("a2")  # same generation: counted as fetched at t0 (early, never late)
    env.clock.advance(TTL / 4 + 1)
    await env.cache.get("a3")  # a new generation
    env.clock.advance(TTL / 2)  # now t0 + TTL: a1 and a2 expire together, a3 is fresh
    calls = env.backend.calls
    for asset_id in ("a1", "a2", "a3"):
        await env.cache.get(asset_id)
    assert env.backend.calls == calls + 2
    assert env.outcomes[-3:] == ["miss", "miss", "hit"]


async def test_ping_maps_backend_failure_to_catalog_unavailable(env: Setup) -> None:
    await env.cache.ping()
    env.backend.broken = True
    with pytest.raises(CatalogUnavailable):
        await env.cache.ping()


async def test_close_closes_the_backend(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    await setup.cache.close()
    assert setup.backend.closed
    with pytest.raises(CatalogUnavailable):
        await setup.backend.inner.get("a1")


async def test_a_real_database_failure_serves_stale(tmp_path: Path) -> None:
    db = Db(tmp_path / "catalog.db")
    db.put("a1", "r1")
    clock = FakeClock()
    outcomes: list[str] = []
    cache = CachedCatalog(
        SqliteCatalog(db.path),
        ttl=TTL,
        negative_ttl=NEGATIVE_TTL,
        stale_seconds=STALE,
        max_entries=10,
        clock=clock,
        observe=outcomes.append,
    )
    try:
        fresh = await cache.get("a1")
        db.path.write_bytes(b"garbage" * 2000)  # corrupted in place under the open connection
        clock.advance(TTL + 1)
        assert await cache.get("a1") is fresh
        with pytest.raises(CatalogUnavailable):
            await cache.get("a2")
        assert outcomes == ["miss", "miss", "stale", "miss", "error"]
    finally:
        await cache.close()


async def test_unknown_ids_are_capped_apart_and_never_push_real_entries_out(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path, max_entries=5)  # known-missing entries: a tenth, so at most 1
    try:
        for i in range(5):
            assert await setup.cache.get(f"a{i}") is not None
        calls = setup.backend.calls
        for i in range(50):  # a flood of unknown ids
            assert await setup.cache.get(f"nope-{i}") is None
        assert setup.cache.negative_count == 1
        for i in range(5):  # every real entry is still cached: no backend call
            assert await setup.cache.get(f"a{i}") is not None
        assert setup.backend.calls == calls + 50
        assert await setup.cache.get("nope-49") is None  # the latest unknown id: still cached
        assert setup.backend.calls == calls + 50
    finally:
        await setup.cache.close()


async def test_the_known_missing_cap_is_settable(tmp_path: Path) -> None:
    db = Db(tmp_path / "catalog.db")
    cache = CachedCatalog(
        SqliteCatalog(db.path),
        ttl=TTL,
        negative_ttl=NEGATIVE_TTL,
        stale_seconds=STALE,
        max_entries=1000,
        max_negative_entries=4,
    )
    try:
        for i in range(4):
            assert await cache.get(f"nope-{i}") is None
        assert cache.negative_count == 4
        await cache.get("nope-4")  # over the cap: the oldest generation (of one) goes
        assert cache.negative_count == 4
    finally:
        await cache.close()


async def test_a_short_ttl_with_a_long_stale_window_keeps_few_generations(
    tmp_path: Path,
) -> None:
    db = Db(tmp_path / "catalog.db")
    for i in range(200):
        db.put(f"a{i}", f"r{i}")
    clock = FakeClock()
    backend = CountingCatalog(SqliteCatalog(db.path))
    cache = CachedCatalog(
        backend, ttl=1.0, negative_ttl=1.0, stale_seconds=600.0, max_entries=1000, clock=clock
    )
    try:
        for i in range(200):  # one store every half second: a new generation each time
            await cache.get(f"a{i}")
            clock.advance(0.5)
        assert len(cache._found.generations) <= 17
        assert len(cache) == 200  # merged, not lost: each still serves stale
        backend.broken = True
        assert await cache.get("a0") is not None
        assert await cache.get("a150") is not None
    finally:
        await cache.close()
