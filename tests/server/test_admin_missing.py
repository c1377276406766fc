"""`GET /admin/missing` and `drm-gateway catalog missing`, through the real gateway in front of
both emulated providers: titles requested without a drmResourceId, most requested first."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import import_to_redis
from proxy.server.routes import GATEWAY
from tests.conftest import ADMIN_TOKEN, ASSETS, Stack, StackFactory, write_catalog
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN_ENV = "TEST_MISSING_ADMIN_TOKEN"


async def license_request(stack: Stack, drm: str, asset: str) -> int:
    async with stack.http.post(stack.url(f"/v1/license/{drm}/{asset}"), data=b"\x08\x04") as resp:
        await resp.read()
        return resp.status


async def request_titles(stack: Stack) -> None:
    """no-res-unknown-holders 3 times (2 widevine, 1 playready), legacy-only once, and
    titles that have an id."""
    for drm, asset in (
        ("widevine", "no-res-unknown-holders"),
        ("widevine", "legacy-only"),
        ("widevine", "no-res-unknown-holders"),
        ("playready", "no-res-unknown-holders"),
        ("widevine", "both-1"),
        ("widevine", "incoming-only"),
    ):
        await license_request(stack, drm, asset)


async def get_missing(stack: Stack, query: str = "", **kw: Any) -> tuple[int, Any, str]:
    """(status, parsed body, content type) of GET /admin/missing."""
    headers = kw.pop("headers", stack.admin_headers())
    async with stack.anon.get(stack.internal(f"/admin/missing{query}"), headers=headers) as resp:
        text = await resp.text()
        if resp.content_type == "application/json":
            return resp.status, await resp.json(), resp.content_type
        return resp.status, text, resp.content_type


async def scrape(stack: Stack) -> dict[str, float]:
    async with stack.anon.get(stack.internal("/metrics")) as resp:
        text = await resp.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("drm_gateway_titles_without_resource_id")
    }


async def test_json_lists_titles_most_requested_first_with_counts_per_drm(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    await request_titles(stack)
    status, body, content_type = await get_missing(stack)
    assert status == 200 and content_type == "application/json"
    assert (body["scope"], body["total"], body["evicted"]) == ("replica", 2, 0)
    assert body["max_titles"] == 10_000
    first, second = body["titles"]
    assert first["asset_id"] == "no-res-unknown-holders" and first["count"] == 3
    assert first["by_drm"] == {"widevine": 2, "playready": 1}
    assert first["first_seen"] <= first["last_seen"]
    assert first["first_seen"].endswith("Z") and len(first["first_seen"]) == 20
    assert (second["asset_id"], second["count"], second["by_drm"]) == (
        "legacy-only",
        1,
        {"widevine": 1},
    )
    status, body, _ = await get_missing(stack, "?limit=1")
    assert [t["asset_id"] for t in body["titles"]] == ["no-res-unknown-holders"]
    assert body["total"] == 2
    # The request counter is kept beside the list; the gauge counts titles, not requests.
    metrics = await scrape(stack)
    assert metrics["drm_gateway_titles_without_resource_id"] == 2


async def test_csv_has_a_header_and_a_count_column_per_drm(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await request_titles(stack)
    status, text, content_type = await get_missing(stack, "?format=csv")
    assert status == 200 and content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(text)))
    header = text.splitlines()[0]
    assert header == (
        "asset_id,count,widevine,playready,fairplay,clearkey,aes128,first_seen,last_seen"
    )
    assert [(r["asset_id"], r["count"], r["widevine"], r["playready"]) for r in rows] == [
        ("no-res-unknown-holders", "3", "2", "1"),
        ("legacy-only", "1", "1", "0"),
    ]
    status, text, _ = await get_missing(stack, "?format=csv&limit=1")
    assert len(text.splitlines()) == 2


async def test_an_empty_list_is_an_empty_answer(make_stack: StackFactory) -> None:
    stack = await make_stack()
    status, body, _ = await get_missing(stack)
    assert status == 200 and body["titles"] == [] and body["total"] == 0
    status, text, _ = await get_missing(stack, "?format=csv")
    assert status == 200 and text.splitlines() == [text.splitlines()[0]]


@pytest.mark.parametrize(
    "query",
    ["?limit=0", "?limit=-1", "?limit=abc", "?limit=1.5", "?limit=", "?limit=100001",
     "?limit=%EF%BC%91", "?format=xml", "?format="],
)  # fmt: skip
async def test_bad_limit_or_format_is_a_400_in_our_error_shape(
    make_stack: StackFactory, query: str
) -> None:
    stack = await make_stack()
    status, body, _ = await get_missing(stack, query)
    assert status == 400
    assert body["error"] == "bad_request" and body["request_id"]
    assert ("limit" in body["message"]) or ("format" in body["message"])


async def test_the_admin_token_is_required(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await request_titles(stack)
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        status, body, _ = await get_missing(stack, headers=headers)
        assert status == 401 and body["error"] == "unauthorized"
        assert "no-res-unknown-holders" not in str(body)
    async with stack.anon.get(
        stack.url("/admin/missing"), headers=stack.admin_headers()
    ) as resp:  # not on the public port
        assert resp.status == 404


async def test_a_title_that_gains_its_id_leaves_the_list(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack()
    await request_titles(stack)
    # The ids are propagated to the catalog; the gateway's cache still holds the old entries.
    db = tmp_path / "catalog.db"
    fixed = [
        (asset, f"res-{asset}", holders, tags)
        for asset, res, holders, tags in ASSETS
        if asset in ("legacy-only", "no-res-unknown-holders")
    ]
    write_catalog(db, fixed)  # upserted into the file the gateway serves from
    await license_request(stack, "widevine", "legacy-only")
    _, body, _ = await get_missing(stack)
    assert body["total"] == 2  # cached without an id: still listed

    # Invalidating one asset looks it up afresh: it has its id now, so it leaves the list.
    async with stack.anon.post(
        stack.internal("/admin/cache/invalidate?asset=legacy-only"), headers=stack.admin_headers()
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"dropped": 1, "missing_resolved": True, "scope": "replica"}
    _, body, _ = await get_missing(stack)
    assert [t["asset_id"] for t in body["titles"]] == ["no-res-unknown-holders"]

    # After a full invalidation, the next lookup returns the entry with its id: it leaves too.
    async with stack.anon.post(
        stack.internal("/admin/cache/invalidate"), headers=stack.admin_headers()
    ) as resp:
        assert "missing_resolved" not in await resp.json()
    await license_request(stack, "widevine", "no-res-unknown-holders")
    _, body, _ = await get_missing(stack)
    assert body["titles"] == [] and body["total"] == 0
    assert (await scrape(stack))["drm_gateway_titles_without_resource_id"] == 0


async def test_invalidating_a_title_still_without_its_id_keeps_it_listed(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    await request_titles(stack)
    async with stack.anon.post(
        stack.internal("/admin/cache/invalidate?asset=no-res-unknown-holders"),
        headers=stack.admin_headers(),
    ) as resp:
        assert await resp.json() == {"dropped": 1, "missing_resolved": False, "scope": "replica"}
    _, body, _ = await get_missing(stack)
    assert body["titles"][0]["count"] == 3  # its history is kept


async def test_the_cap_evicts_the_least_recently_seen_and_counts_it(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(missing={"max_titles": 1})
    before = (await scrape(stack)).get("drm_gateway_titles_without_resource_id_evicted_total", 0)
    await request_titles(stack)  # no-res, legacy-only (evicts no-res), no-res (evicts legacy-only)
    _, body, _ = await get_missing(stack)
    assert (body["total"], body["evicted"], body["max_titles"]) == (1, 2, 1)
    assert body["titles"][0]["asset_id"] == "no-res-unknown-holders"
    assert body["titles"][0]["count"] == 2  # counted afresh after its eviction
    metrics = await scrape(stack)
    assert metrics["drm_gateway_titles_without_resource_id_evicted_total"] - before == 2
    assert metrics["drm_gateway_titles_without_resource_id"] == 1


# --- drm-gateway catalog missing ------------------------------------------------------------


async def run_cli(*args: str, token: str | None = ADMIN_TOKEN) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.cli", "catalog", "missing", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_prints_the_list_of_a_running_gateway(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await request_titles(stack)
    url = stack.gateway.internal_url
    code, out, err = await run_cli("--url", url, "--token-env", TOKEN_ENV)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["asset_id", "count", "by_drm", "first_seen", "last_seen"]
    assert lines[1].split()[:4] == ["no-res-unknown-holders", "3", "playready:1", "widevine:2"]
    assert lines[2].split()[:3] == ["legacy-only", "1", "widevine:1"]
    assert "2 of 2 titles listed (replica)" in err
    assert ADMIN_TOKEN not in out + err

    code, out, err = await run_cli("--url", url, "--token-env", TOKEN_ENV, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["asset_id"], r["count"]) for r in rows] == [
        ("no-res-unknown-holders", "3"),
        ("legacy-only", "1"),
    ]
    code, out, err = await run_cli(
        "--url", url, "--token-env", TOKEN_ENV, "--format", "csv", "--limit", "1"
    )
    assert code == 0 and len(out.splitlines()) == 2


async def test_cli_exit_codes(make_stack: StackFactory) -> None:
    stack = await make_stack()
    url = stack.gateway.internal_url
    # 1: the gateway refused the token, or did not answer.
    code, _, err = await run_cli("--url", url, "--token-env", TOKEN_ENV, token="wrong" * 4)
    assert code == 1 and "HTTP 401" in err and "wrong" * 4 not in err
    code, _, err = await run_cli("--url", "http://127.0.0.1:9", "--token-env", TOKEN_ENV)
    assert code == 1 and "cannot fetch" in err
    # 2: usage: no token in the environment, a bad URL or limit.
    code, _, err = await run_cli("--url", url, "--token-env", TOKEN_ENV, token=None)
    assert code == 2 and TOKEN_ENV in err
    code, _, err = await run_cli("--url", "127.0.0.1:9090", "--token-env", TOKEN_ENV)
    assert code == 2 and "--url" in err
    code, _, err = await run_cli("--url", url, "--token-env", TOKEN_ENV, "--limit", "0")
    assert code == 2
    code, _, err = await run_cli("--url", url, "--token-env", TOKEN_ENV, "--limit", "100001")
    assert code == 2 and "limit must be" in err  # the gateway's 400, said as usage


# --- fleet-wide, with the Redis catalog --------------------------------------------------------


def _redis_catalog(url: str) -> Any:
    def configure(raw: dict[str, Any]) -> None:
        raw["catalog"] = {"backend": "redis", "ttl_seconds": 3600, "redis": {"url": url}}

    return configure


async def _listed_everywhere(stacks: list[Stack], expected: list[tuple[str, int]]) -> Any:
    """Wait (the stores flush about once a second) until every gateway lists `expected`."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        bodies = [(await get_missing(stack))[1] for stack in stacks]
        if all([(t["asset_id"], t["count"]) for t in b["titles"]] == expected for b in bodies):
            return bodies
        assert asyncio.get_running_loop().time() < deadline, bodies
        await asyncio.sleep(0.05)


async def test_gateways_sharing_a_redis_catalog_share_one_list(
    tmp_path: Path, make_stack: StackFactory, redis_server: RedisServer
) -> None:
    export = write_catalog(tmp_path / "seed.db").with_suffix(".csv")
    assert not (await import_to_redis(export, RedisCatalogSettings(url=redis_server.url))).rejected
    one, two = [await make_stack(configure=_redis_catalog(redis_server.url)) for _ in range(2)]
    await license_request(one, "widevine", "no-res-unknown-holders")
    await license_request(two, "playready", "no-res-unknown-holders")
    await license_request(two, "widevine", "legacy-only")
    bodies = await _listed_everywhere(
        [one, two], [("no-res-unknown-holders", 2), ("legacy-only", 1)]
    )
    assert {body["scope"] for body in bodies} == {"fleet"}
    assert bodies[0]["titles"][0]["by_drm"] == {"widevine": 1, "playready": 1}
    # legacy-only gains its id; the next lookup of it (on either gateway) takes it off.
    change = tmp_path / "change.csv"
    change.write_text("asset_id,drm_resource_id,key_holders,tags\nlegacy-only,res-lo,legacy,\n")
    await import_to_redis(change, RedisCatalogSettings(url=redis_server.url))
    deadline = asyncio.get_running_loop().time() + 5
    while "legacy-only" in one.gateway.public_app[GATEWAY].missing:
        # Once the announcement has dropped it from the cache, the lookup finds its id.
        assert asyncio.get_running_loop().time() < deadline
        await license_request(one, "widevine", "legacy-only")
        await asyncio.sleep(0.01)
    await _listed_everywhere([one, two], [("no-res-unknown-holders", 2)])
