"""A burst of catalog lookups larger than the Redis client's connection pool waits for a
free connection instead of failing at once (found by `make rehearse`: at 300 req/s a short
stall of the event loop let more than 100 cache misses start together, and each one past
the pool's size was answered 503 `catalog_unavailable` with MaxConnectionsError)."""

from __future__ import annotations

import asyncio

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import POOL_CONNECTIONS, RedisCatalog, asset_key
from tests.redis_server import RedisServer


async def test_more_lookups_than_pooled_connections_all_answer(
    redis_server: RedisServer,
) -> None:
    catalog = RedisCatalog(RedisCatalogSettings(url=redis_server.url))
    try:
        await catalog._client.hset(asset_key("drm-gateway:", "burst-1"), mapping={"r": "res-1"})
        lookups = [catalog.get("burst-1") for _ in range(3 * POOL_CONNECTIONS)]
        entries = await asyncio.gather(*lookups)
        assert all(e is not None and e.drm_resource_id == "res-1" for e in entries)
    finally:
        await catalog.close()
