"""Two gateways sharing one Redis catalog: a change imported with `catalog import --to`
reaches both at once, though their cache TTL is an hour."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import import_to_redis
from proxy.cli.main import main
from tests.conftest import Stack, StackFactory, write_catalog
from tests.integration.test_license_flow import synthetic_license
from tests.redis_server import RedisServer

CHALLENGE = b"\x08\x01challenge"
BOUND_SECONDS = 5.0  # generous: the point is "announced", not a wall-clock race


def redis_catalog(server: RedisServer) -> Any:
    def configure(raw: dict[str, Any]) -> None:
        raw["catalog"] = {"backend": "redis", "ttl_seconds": 3600, "redis": {"url": server.url}}

    return configure


async def license_status(stack: Stack, asset: str) -> tuple[int, bytes]:
    async with stack.http.post(stack.url(f"/v1/license/widevine/{asset}"), data=CHALLENGE) as resp:
        return resp.status, await resp.read()


async def test_a_changed_resource_id_reaches_both_gateways(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    export = write_catalog(tmp_path / "seed.db").with_suffix(".csv")
    report = await import_to_redis(export, RedisCatalogSettings(url=redis_server.url))
    assert not report.rejected
    stacks = [await make_stack(configure=redis_catalog(redis_server)) for _ in range(2)]
    assert all(stack.config.catalog.ttl_seconds == 3600 for stack in stacks)
    # Held by `incoming` only, under an id its key store lacks: refused, and cached so.
    for stack in stacks:
        status, _ = await license_status(stack, "incoming-missing")
        assert status != 200
    change = tmp_path / "change.csv"
    change.write_text(
        "asset_id,drm_resource_id,key_holders,tags\nincoming-missing,res-inc-1,incoming,\n"
    )
    run = ["catalog", "import", str(change), "--to", redis_server.url]
    assert await asyncio.to_thread(main, run) == 0
    imported = time.monotonic()
    expected = synthetic_license("incoming", "widevine", CHALLENGE)
    served_after: list[float] = []
    for stack in stacks:
        while (status_body := await license_status(stack, "incoming-missing")) != (200, expected):
            assert time.monotonic() - imported < BOUND_SECONDS, status_body
            await asyncio.sleep(0.005)
        served_after.append(time.monotonic() - imported)
    print(f"propagation: served by the new drmResourceId after {max(served_after) * 1000:.1f} ms")
