"""The gateway with `catalog.backend: http`: licenses served end to end from a live
metadata service on loopback, routed by the drmResourceId it answers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.catalog.test_http import TOKEN, MetadataService
from tests.conftest import ASSETS, StackFactory
from tests.integration.test_license_flow import synthetic_license


def asset_answers() -> dict[str, Any]:
    """The shared test catalog (tests.conftest.ASSETS) as the service's JSON answers."""
    return {
        asset_id: {
            "asset_id": asset_id,
            "drm_resource_id": res,
            "key_holders": None if holders is None else list(holders),
            "tags": list(tags),
        }
        for asset_id, res, holders, tags in ASSETS
    }


@pytest.fixture
async def metadata() -> AsyncIterator[MetadataService]:
    service = MetadataService(assets=asset_answers())
    await service.start()
    yield service
    await service.stop()


def http_catalog(metadata: MetadataService) -> Any:
    def configure(raw: dict[str, Any]) -> None:
        raw["catalog"] = {
            "backend": "http",
            "ttl_seconds": 60,
            "http": {
                "base_url": metadata.url,
                "auth_header": "Authorization",
                "token": {"env": "CATALOG_TOKEN"},
                "timeouts": {"connect_seconds": 0.5, "total_seconds": 1.0},
            },
        }

    return configure


@pytest.mark.parametrize(
    ("asset", "provider"), [("both-1", "legacy"), ("incoming-only", "incoming")]
)
async def test_license_is_served_from_the_http_catalog(
    make_stack: StackFactory, metadata: MetadataService, asset: str, provider: str
) -> None:
    stack = await make_stack(configure=http_catalog(metadata), env={"CATALOG_TOKEN": TOKEN})
    assert stack.config.catalog.backend == "http"
    challenge = b"\x08\x01challenge"
    for _ in range(2):  # the second from the cache
        async with stack.http.post(
            stack.url(f"/v1/license/widevine/{asset}"), data=challenge
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.read() == synthetic_license(provider, "widevine", challenge)
    lookups = [(m, p) for m, p, _ in metadata.seen if m == "GET"]
    assert lookups == [("GET", f"/v1/assets/{asset}")]
    assert all(headers["Authorization"] == TOKEN for _, _, headers in metadata.seen)
    assert TOKEN.split()[1] not in stack.logs.getvalue()


async def test_unknown_asset_readiness_and_outage(
    make_stack: StackFactory, metadata: MetadataService
) -> None:
    stack = await make_stack(configure=http_catalog(metadata), env={"CATALOG_TOKEN": TOKEN})
    async with stack.anon.get(stack.internal("/readyz")) as resp:
        assert resp.status == 200, await resp.text()
    async with stack.http.post(stack.url("/v1/license/widevine/not-there"), data=b"x") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "unknown_asset"
    metadata.status = 503
    async with stack.http.post(stack.url("/v1/license/widevine/both-2"), data=b"x") as resp:
        assert resp.status == 503
        assert (await resp.json())["error"] == "catalog_unavailable"
    async with stack.anon.get(stack.internal("/readyz")) as resp:
        assert resp.status == 503
        assert "catalog backend does not answer" in (await resp.json())["problems"]
