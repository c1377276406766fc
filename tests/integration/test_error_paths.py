"""Every error path of the core flow, against real emulators and a real SQLite catalog."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.server.app import CATALOG
from tests.conftest import Stack, StackFactory, write_catalog

WIDEVINE = "/v1/license/widevine/both-1"


async def error_of(
    stack: Stack, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with stack.http.request(method, stack.url(path), **kwargs) as resp:
        body = await resp.json()
        assert resp.headers["X-Request-Id"] == body["request_id"]
        assert set(body) == {"error", "message", "request_id"}
        return resp.status, body


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/license/widevine/bad%20id", 400, "invalid_id"),
        ("/v1/license/widevine/" + "a" * 129, 400, "invalid_id"),
        ("/v1/license/widevine/..%2F..%2Fadmin", 400, "invalid_id"),
        ("/v1/license/widevine/asset%0d%0aX-Injected:1", 400, "invalid_id"),
        ("/v1/license/widevine/caf%C3%A9", 400, "invalid_id"),
        ("/v1/license/widevine/unknown-asset", 404, "unknown_asset"),
        ("/v1/license/primetime/both-1", 404, "not_found"),
    ],
)
async def test_bad_ids_and_unknown_assets(
    make_stack: StackFactory, path: str, status: int, code: str
) -> None:
    stack = await make_stack()
    got_status, body = await error_of(stack, "POST", path, data=b"\x08\x04")
    assert (got_status, body["error"]) == (status, code)
    assert (await stack.stats(stack.legacy))["total"] == 0


@pytest.mark.parametrize(
    "key_path",
    [
        "/v1/keys/both-1/0011",
        "/v1/keys/both-1/zz112233445566778899aabbccddeeff",
        "/v1/keys/both-1/00112233445566778899aabbccddeeff00",
        "/v1/keys/b%3Fth-1/00112233445566778899aabbccddeeff",
    ],
)
async def test_bad_key_ids(make_stack: StackFactory, key_path: str) -> None:
    stack = await make_stack()
    status, body = await error_of(stack, "GET", key_path)
    assert (status, body["error"]) == (400, "invalid_id")


async def test_oversized_body_is_refused_with_content_length(make_stack: StackFactory) -> None:
    stack = await make_stack()  # max_body_bytes: 4096
    status, body = await error_of(stack, "POST", WIDEVINE, data=b"x" * 4097)
    assert (status, body["error"]) == (413, "body_too_large")
    status, _ = await error_of(stack, "POST", "/v1/license/widevine/unknown", data=b"x" * 4096)
    assert status == 404  # exactly at the limit is accepted


async def test_oversized_chunked_body_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack()

    async def chunks() -> Any:
        for _ in range(100):
            yield b"y" * 1000

    status, body = await error_of(stack, "POST", WIDEVINE, data=chunks())
    assert (status, body["error"]) == (413, "body_too_large")
    assert (await stack.stats(stack.legacy))["total"] == 0


async def test_empty_body_and_wrong_content_type(make_stack: StackFactory) -> None:
    stack = await make_stack()
    status, body = await error_of(stack, "POST", WIDEVINE, data=b"")
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await error_of(
        stack, "POST", WIDEVINE, data=b"x", headers={"Content-Type": "multipart/form-data"}
    )
    assert (status, body["error"]) == (415, "unsupported_media_type")


async def test_upstream_timeout_is_504(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.faults(stack.legacy, latency_ms=2500)  # provider total timeout is 2 s
    status, body = await error_of(stack, "POST", WIDEVINE, data=b"\x08\x04")
    assert (status, body["error"]) == (504, "upstream_timeout")


@pytest.mark.parametrize(
    ("faults", "status", "code"),
    [
        ({"reset_rate": 1.0}, 502, "upstream_unavailable"),
        ({"error_rate": 1.0}, 502, "upstream_unavailable"),
        ({"error_json_rate": 1.0}, 502, "upstream_bad_response"),
        ({"status": 403}, 403, "upstream_rejected"),
        ({"status": 429}, 503, "upstream_overloaded"),  # with Retry-After: see test_resilience
        ({"status": 503}, 502, "upstream_unavailable"),
    ],
)
async def test_upstream_failures_map_to_gateway_errors(
    make_stack: StackFactory, faults: dict[str, Any], status: int, code: str
) -> None:
    stack = await make_stack()
    await stack.faults(stack.legacy, **faults)
    got_status, body = await error_of(
        stack, "POST", WIDEVINE, data=b"\x08\x04", headers={"X-Request-Id": "upstream-fail-1"}
    )
    assert (got_status, body["error"]) == (status, code)
    # Never the provider's own body or URL.
    assert "EMULATED" not in body["message"] and "127.0.0.1" not in body["message"]
    # Every line logged while serving the request names it: the provider's error lines too.
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    upstream = [ln for ln in lines if ln["component"] == "providers"]
    assert upstream and {ln["event"] for ln in upstream} <= {
        "upstream_error",
        "upstream_unreachable",
    }
    assert {ln.get("request_id") for ln in upstream} == {"upstream-fail-1"}
    access = [ln for ln in lines if ln["component"] == "access"]
    assert [(ln["request_id"], ln["error"], ln["detail"]) for ln in access] == [
        ("upstream-fail-1", code, "-")
    ]


async def test_upstream_connection_refused_is_502(make_stack: StackFactory) -> None:
    stack = await make_stack()
    await stack.legacy.stop()
    status, body = await error_of(stack, "POST", WIDEVINE, data=b"\x08\x04")
    assert (status, body["error"]) == (502, "upstream_unavailable")


async def test_upstream_unknown_resource_is_passed_as_404(make_stack: StackFactory) -> None:
    # The catalog says incoming holds the keys, but its key store has not got them yet.
    stack = await make_stack()
    status, body = await error_of(
        stack, "POST", "/v1/license/widevine/incoming-missing", data=b"\x08\x04"
    )
    assert (status, body["error"]) == (404, "upstream_rejected")
    assert "unknown_resource" not in body["message"]


async def break_catalog_backend(stack: Stack) -> None:
    """Close the SQLite backend under the cache: every backend call now fails."""
    await stack.gateway.public_app[CATALOG].backend.close()


async def test_catalog_failure_serves_stale_entry(make_stack: StackFactory, tmp_path: Path) -> None:
    db = write_catalog(tmp_path / "stale.db")
    stack = await make_stack(
        db=db,
        catalog={"backend": "sqlite", "path": str(db), "ttl_seconds": 0.05, "stale_seconds": 600},
    )
    async with stack.http.post(stack.url(WIDEVINE), data=b"\x08\x04") as resp:
        assert resp.status == 200
    await break_catalog_backend(stack)
    await asyncio.sleep(0.1)  # past the TTL: the next lookup goes to the (broken) backend
    async with stack.http.post(stack.url(WIDEVINE), data=b"\x08\x04") as resp:
        assert resp.status == 200, await resp.text()
    status, body = await error_of(stack, "POST", "/v1/license/widevine/both-2", data=b"\x08\x04")
    assert (status, body["error"]) == (503, "catalog_unavailable")
    async with stack.http.get(stack.internal("/readyz")) as resp:
        assert resp.status == 503


async def test_catalog_invalidated_entry_fails_without_stale(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    db = write_catalog(tmp_path / "nostale.db")
    stack = await make_stack(db=db)
    async with stack.http.post(stack.url(WIDEVINE), data=b"\x08\x04") as resp:
        assert resp.status == 200
    catalog = stack.gateway.public_app[CATALOG]
    catalog.invalidate()
    await break_catalog_backend(stack)
    status, body = await error_of(stack, "POST", WIDEVINE, data=b"\x08\x04")
    assert (status, body["error"]) == (503, "catalog_unavailable")
