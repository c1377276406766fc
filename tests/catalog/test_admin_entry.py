"""`GET /admin/catalog/{asset_id}` shows what the catalog holds, key ids included."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.catalog import CatalogSettings, build_catalog
from proxy.catalog.importer import import_file
from proxy.server.admin import ADMIN_CATALOG, ADMIN_TOKENS, add_admin_routes

Client = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
TOKEN = "admin-token-for-tests"
KID_A = "00112233445566778899aabbccddeeff"
GUID_B = "01234567-89ab-cdef-0123-456789abcdef"


@pytest.fixture
async def client(
    aiohttp_client: Client, tmp_path: Path
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    source = tmp_path / "catalog.csv"
    source.write_text(
        "asset_id,drm_resource_id,key_holders,tags,key_ids\n"
        f"keyed,res-1,incoming,kids,{GUID_B}|{KID_A}\n"
        "unkeyed,,legacy,,\n"
    )
    db = tmp_path / "catalog.db"
    assert not import_file(source, db).rejected
    catalog = build_catalog(CatalogSettings(path=db))
    app = web.Application()
    app[ADMIN_TOKENS] = {"admin": TOKEN}
    app[ADMIN_CATALOG] = catalog
    add_admin_routes(app)
    try:
        yield await aiohttp_client(app)
    finally:
        await catalog.close()


async def get_entry(client: TestClient[web.Request, web.Application], asset: str) -> object:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.get(f"/admin/catalog/{asset}", headers=headers) as resp:
        assert resp.status == 200
        return await resp.json()


async def test_admin_catalog_entry_lists_key_ids(
    client: TestClient[web.Request, web.Application],
) -> None:
    assert await get_entry(client, "keyed") == {
        "asset_id": "keyed",
        "drm_resource_id": "res-1",
        "key_holders": ["incoming"],
        "tags": ["kids"],
        "key_ids": ["0123456789abcdef0123456789abcdef", KID_A],
    }
    unkeyed = await get_entry(client, "unkeyed")
    assert isinstance(unkeyed, dict) and unkeyed["key_ids"] == []
