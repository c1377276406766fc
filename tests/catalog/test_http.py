"""The HTTP catalog backend against a small real metadata service on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.catalog import KNOWN_BACKENDS, CatalogEntry, CatalogSettings, build_catalog
from proxy.catalog.base import HttpCatalogSettings
from proxy.catalog.http import HttpCatalog
from proxy.config import ConfigError, parse_config
from proxy.errors import CatalogUnavailable
from tests.certs import make_ca_and_leaf
from tests.conftest import ENV, gateway_raw_config

TOKEN = "Bearer catalog-token-9f3a61d2"
SECRET_BODY = "internal-stack-trace-4c1b"  # in every error answer; must never reach a log

MOVIE = {
    "asset_id": "movie-1",
    "drm_resource_id": "res-1",
    "key_holders": ["legacy", "incoming"],
    "tags": ["kids", "4k"],
    "key_ids": ["00112233-4455-6677-8899-AABBCCDDEEFF", "0123456789abcdef0123456789abcdef"],
    "title": "ignored: the service may send more fields",
}


@dataclass
class MetadataService:
    """A metadata service: `assets` answer 200 with their JSON (or raw bytes), others 404;
    `status` and `delay` make every answer fail or wait; `seen` records each request."""

    assets: dict[str, Any] = field(default_factory=dict)
    status: int | None = None
    delay: float = 0.0
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, dict(request.headers)))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status is not None:
            return web.Response(status=self.status, text=SECRET_BODY)
        if request.method == "HEAD":
            return web.Response(status=405)  # a base URL with no page of its own
        prefix = "/v1/assets/"
        asset_id = request.path.removeprefix(prefix)
        if not request.path.startswith(prefix) or asset_id not in self.assets:
            return web.Response(status=404, text=SECRET_BODY)
        answer = self.assets[asset_id]
        body = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        return web.Response(body=body, content_type="application/json")

    async def start(self, ssl_context: Any = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def service() -> AsyncIterator[MetadataService]:
    running = MetadataService(assets={"movie-1": MOVIE})
    await running.start()
    yield running
    await running.stop()


def settings_for(service: MetadataService, **kw: Any) -> HttpCatalogSettings:
    return HttpCatalogSettings(
        base_url=service.url,
        auth_header="Authorization",
        token=TOKEN,
        **{"connect_timeout": 1.0, "total_timeout": 1.0, **kw},
    )


@pytest.fixture
async def catalog(service: MetadataService) -> AsyncIterator[HttpCatalog]:
    backend = HttpCatalog(settings_for(service))
    yield backend
    await backend.close()


def logged(buffer: io.StringIO, event: str = "catalog_unavailable") -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line.get("event") == event]


# --- lookups ---------------------------------------------------------------------------------


async def test_found_asset_is_decoded_and_normalised(
    service: MetadataService, catalog: HttpCatalog
) -> None:
    entry = await catalog.get("movie-1")
    assert entry == CatalogEntry(
        asset_id="movie-1",
        drm_resource_id="res-1",
        key_holders=frozenset({"legacy", "incoming"}),
        tags=frozenset({"kids", "4k"}),
        key_ids=("00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef"),
    )


async def test_request_sends_auth_header_and_encodes_the_id_as_one_segment(
    service: MetadataService, catalog: HttpCatalog
) -> None:
    assert await catalog.get("ep:1.s/../x") is None
    method, raw_path, headers = service.seen[-1]
    assert method == "GET"
    assert raw_path == "/v1/assets/ep%3A1.s%2F..%2Fx"
    assert headers["Authorization"] == TOKEN
    assert headers["Accept"] == "application/json"


async def test_minimal_answer_defaults_the_optional_fields(
    service: MetadataService, catalog: HttpCatalog
) -> None:
    service.assets["new-1"] = {"asset_id": "new-1", "drm_resource_id": None, "key_ids": None}
    entry = await catalog.get("new-1")
    assert entry == CatalogEntry("new-1", None, None, frozenset(), ())


async def test_unknown_asset_is_none_and_negative_cached(service: MetadataService) -> None:
    outcomes: list[str] = []
    settings = CatalogSettings(backend="http", http=settings_for(service), negative_ttl_seconds=60)
    catalog = build_catalog(settings, observe=outcomes.append)
    try:
        assert await catalog.get("nope") is None
        assert await catalog.get("nope") is None
    finally:
        await catalog.close()
    assert outcomes == ["miss", "negative_hit"]
    assert [path for _, path, _ in service.seen] == ["/v1/assets/nope"]


async def test_server_error_is_unavailable_and_logged_once_per_distinct_failure(
    service: MetadataService, catalog: HttpCatalog, log_buffer: io.StringIO
) -> None:
    service.status = 503
    for _ in range(3):
        with pytest.raises(CatalogUnavailable):
            await catalog.get("movie-1")
    service.status = 500
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")
    said = logged(log_buffer)
    assert [line["error"] for line in said] == ["BadAnswer: status 503", "BadAnswer: status 500"]
    assert said[0]["url"] == service.url
    assert SECRET_BODY not in log_buffer.getvalue()


async def test_failure_is_logged_again_after_a_recovery(
    service: MetadataService, catalog: HttpCatalog, log_buffer: io.StringIO
) -> None:
    service.status = 502
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")
    service.status = None
    assert await catalog.get("movie-1") is not None
    service.status = 502
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")
    assert len(logged(log_buffer)) == 2


@pytest.mark.parametrize("status", [301, 400, 401, 403, 429])
async def test_other_statuses_are_unavailable(
    service: MetadataService, catalog: HttpCatalog, status: int
) -> None:
    service.status = status
    with pytest.raises(CatalogUnavailable):
        await catalog.get("movie-1")


async def test_slow_service_times_out(service: MetadataService) -> None:
    service.delay = 2.0
    catalog = HttpCatalog(settings_for(service, total_timeout=0.2))
    started = time.monotonic()
    try:
        with pytest.raises(CatalogUnavailable) as info:
            await catalog.get("movie-1")
    finally:
        await catalog.close()
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value.__cause__, TimeoutError)


async def test_refused_connection_is_unavailable(service: MetadataService) -> None:
    url = service.url
    await service.stop()
    catalog = HttpCatalog(replace(settings_for(service), base_url=url))
    try:
        with pytest.raises(CatalogUnavailable):
            await catalog.get("movie-1")
    finally:
        await catalog.close()


async def test_oversized_answer_is_unavailable(service: MetadataService) -> None:
    service.assets["big-1"] = {**MOVIE, "asset_id": "big-1", "title": "x" * 5000}
    catalog = HttpCatalog(settings_for(service, max_response_bytes=4096))
    try:
        assert await catalog.get("movie-1") is not None  # under the cap
        with pytest.raises(CatalogUnavailable) as info:
            await catalog.get("big-1")
    finally:
        await catalog.close()
    assert type(info.value.__cause__).__name__ == "ResponseTooLarge"


BAD_ANSWERS: dict[str, Any] = {
    "not json": b"<html>502 bad gateway</html>",
    "truncated json": b'{"asset_id": "bad-1", "drm_res',
    "empty body": b"",
    "a list": [MOVIE],
    "another asset": {**MOVIE, "asset_id": "movie-2"},
    "no asset_id": {"drm_resource_id": "res-1"},
    "no drm_resource_id": {"asset_id": "bad-1", "drmResourceId": "res-1"},
    "drm_resource_id number": {"asset_id": "bad-1", "drm_resource_id": 7},
    "drm_resource_id invalid": {"asset_id": "bad-1", "drm_resource_id": "res 1\n"},
    "key_holders string": {"asset_id": "bad-1", "drm_resource_id": None, "key_holders": "legacy"},
    "key_holders bad name": {"asset_id": "bad-1", "drm_resource_id": None, "key_holders": ["L!"]},
    "tags null": {"asset_id": "bad-1", "drm_resource_id": None, "tags": None},
    "tags numbers": {"asset_id": "bad-1", "drm_resource_id": None, "tags": [1, 2]},
    "tags object": {"asset_id": "bad-1", "drm_resource_id": None, "tags": {"kids": True}},
    "key id short": {"asset_id": "bad-1", "drm_resource_id": None, "key_ids": ["0011"]},
    "key id not hex": {"asset_id": "bad-1", "drm_resource_id": None, "key_ids": ["z" * 32]},
    "key ids string": {"asset_id": "bad-1", "drm_resource_id": None, "key_ids": "0" * 32},
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
async def test_garbled_answers_are_unavailable_never_a_crash(
    service: MetadataService, catalog: HttpCatalog, log_buffer: io.StringIO, answer: Any
) -> None:
    service.assets["bad-1"] = answer
    with pytest.raises(CatalogUnavailable) as info:
        await catalog.get("bad-1")
    assert type(info.value.__cause__).__name__ == "BadAnswer"
    (said,) = logged(log_buffer)
    assert said["error"].startswith("BadAnswer: ")
    # What broke is named, never a value from the answer.
    for value in ("res 1", "L!", "0011", "zzzz", "502 bad gateway", "movie-2"):
        assert value not in said["error"]


# --- the cache in front ----------------------------------------------------------------------


async def test_stale_if_error_through_build_catalog(service: MetadataService) -> None:
    outcomes: list[str] = []
    settings = CatalogSettings(
        backend="http", http=settings_for(service), ttl_seconds=0.05, stale_seconds=60
    )
    catalog = build_catalog(settings, observe=outcomes.append)
    try:
        fresh = await catalog.get("movie-1")
        await asyncio.sleep(0.1)  # past the TTL
        service.status = 503
        assert await catalog.get("movie-1") == fresh
        with pytest.raises(CatalogUnavailable):
            await catalog.get("never-seen")
    finally:
        await catalog.close()
    assert outcomes == ["miss", "miss", "stale", "miss", "error"]


async def test_concurrent_misses_make_one_request(service: MetadataService) -> None:
    service.delay = 0.05
    catalog = build_catalog(CatalogSettings(backend="http", http=settings_for(service)))
    try:
        entries = await asyncio.gather(*(catalog.get("movie-1") for _ in range(20)))
    finally:
        await catalog.close()
    assert len({id(entry) for entry in entries}) == 1
    assert len(service.seen) == 1


# --- readiness -------------------------------------------------------------------------------


async def test_ping_is_a_head_of_the_base_url(
    service: MetadataService, catalog: HttpCatalog
) -> None:
    await catalog.ping()  # 405: the base has no page, but the service answers
    method, raw_path, headers = service.seen[-1]
    assert (method, raw_path, headers["Authorization"]) == ("HEAD", "/v1", TOKEN)


@pytest.mark.parametrize("status", [500, 503, 401, 403])
async def test_ping_fails_on_server_errors_and_refused_credentials(
    service: MetadataService, catalog: HttpCatalog, status: int
) -> None:
    service.status = status
    with pytest.raises(CatalogUnavailable):
        await catalog.ping()


async def test_ping_fails_when_the_service_is_down(service: MetadataService) -> None:
    catalog = build_catalog(CatalogSettings(backend="http", http=settings_for(service)))
    try:
        await catalog.ping()
        await service.stop()
        with pytest.raises(CatalogUnavailable):
            await catalog.ping()
    finally:
        await catalog.close()


# --- TLS -------------------------------------------------------------------------------------


async def test_https_is_verified_and_a_private_ca_can_be_trusted(tmp_path: Path) -> None:
    ca, server_context = make_ca_and_leaf(tmp_path)
    service = MetadataService(assets={"movie-1": MOVIE})
    await service.start(ssl_context=server_context)
    untrusting = HttpCatalog(settings_for(service))
    trusting = HttpCatalog(settings_for(service, ca_file=ca))
    try:
        with pytest.raises(CatalogUnavailable) as info:
            await untrusting.get("movie-1")
        assert type(info.value.__cause__).__name__ == "ConnectError"
        assert (await trusting.get("movie-1")) is not None
    finally:
        await untrusting.close()
        await trusting.close()
        await service.stop()


# --- config ----------------------------------------------------------------------------------


def parse_with_catalog(
    tmp_path: Path, catalog: dict[str, Any], env: dict[str, str] | None = None
) -> Any:
    raw = gateway_raw_config(tmp_path / "c.db", "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["catalog"] = catalog
    return parse_config(raw, base_dir=tmp_path, env={**ENV, **(env or {})})


def test_config_reads_the_http_section(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    ca = make_ca_and_leaf(tmp_path)[0]
    config = parse_with_catalog(
        tmp_path,
        {
            "backend": "http",
            "ttl_seconds": 30,
            "http": {
                "base_url": "https://meta.internal:8443/v1/",
                "auth_header": "Authorization",
                "token": {"file": "token"},
                "timeouts": {"connect_seconds": 0.5, "total_seconds": 1.5},
                "max_response_bytes": 32768,
                "max_connections": 16,
                "ca_file": ca.name,
            },
        },
    )
    assert config.catalog == CatalogSettings(
        backend="http",
        ttl_seconds=30.0,
        http=HttpCatalogSettings(
            base_url="https://meta.internal:8443/v1/",
            auth_header="Authorization",
            token=TOKEN,
            connect_timeout=0.5,
            total_timeout=1.5,
            max_response_bytes=32768,
            max_connections=16,
            ca_file=ca,
        ),
    )
    assert "catalog-token" not in repr(config.catalog)
    assert "catalog-token" not in repr(HttpCatalog(config.catalog.http))


def test_config_reports_every_http_problem_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_with_catalog(
            tmp_path,
            {
                "backend": "http",
                "path": "catalog.db",
                "http": {
                    "base_url": "ftp://meta.internal/v1",
                    "auth_header": "Bad Header:",
                    "token": {"env": "CATALOG_TOKEN_UNSET"},
                    "timeouts": {"connect_seconds": 0, "total_seconds": "soon", "retry": 1},
                    "max_response_bytes": -1,
                    "max_connections": 0,
                    "ca_file": "missing-ca.pem",
                    "retries": 3,
                },
            },
        )
    assert sorted(info.value.problems) == sorted(
        [
            "catalog.path: is only for backend 'sqlite'",
            "catalog.http.retries: unknown field",
            "catalog.http.base_url: must be an absolute http:// or https:// URL",
            "catalog.http.auth_header: must be an HTTP header name",
            "catalog.http.token.env: environment variable CATALOG_TOKEN_UNSET is not set",
            "catalog.http.timeouts.retry: unknown field",
            "catalog.http.ca_file: " + str(tmp_path / "missing-ca.pem") + " does not exist",
            "catalog.http.timeouts.connect_seconds: must be greater than 0",
            "catalog.http.timeouts.total_seconds: must be a number",
            "catalog.http.max_response_bytes: must be greater than 0",
            "catalog.http.max_connections: must be greater than 0",
        ]
    )


@pytest.mark.parametrize(
    ("catalog", "problem"),
    [
        ({"backend": "http"}, "catalog.http: is missing, and has no default"),
        ({"backend": "http", "http": {}}, "catalog.http.base_url: is missing, and has no default"),
        (
            {"backend": "http", "http": {"base_url": "http://m/v1", "auth_header": "X-Token"}},
            "catalog.http: 'auth_header' and 'token' go together: set both or neither",
        ),
        (
            {"backend": "http", "http": {"base_url": "http://user:pw@m/v1"}},
            "catalog.http.base_url: the URL authority is not a plain host[:port]",
        ),
        (
            {"backend": "http", "http": {"base_url": "http://m/v1?x=1"}},
            "catalog.http.base_url: must have no query or fragment",
        ),
        (
            {"backend": "http", "http": {"base_url": "http://m", "ca_file": __file__}},
            f"catalog.http.ca_file: {__file__} holds no PEM CA certificate",
        ),
        (
            {"backend": "sqlite", "path": "c.db", "http": {"base_url": "http://m"}},
            "catalog.http: is only for backend 'http'",
        ),
        (
            {"backend": "mongo"},
            "catalog.backend: unknown catalog backend 'mongo'"
            f" (known: {', '.join(KNOWN_BACKENDS)})",
        ),
    ],
)
def test_config_refuses_each_http_mistake(
    tmp_path: Path, catalog: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_with_catalog(tmp_path, catalog)
    assert problem in info.value.problems


def test_known_backends_include_http() -> None:
    assert "http" in KNOWN_BACKENDS and "sqlite" in KNOWN_BACKENDS


async def test_token_never_reaches_logs_or_reprs(
    service: MetadataService, log_buffer: io.StringIO
) -> None:
    settings = CatalogSettings(backend="http", http=settings_for(service))
    catalog = build_catalog(settings)
    try:
        await catalog.get("movie-1")
        service.status = 401
        with pytest.raises(CatalogUnavailable) as info:
            await catalog.get("other")
        with pytest.raises(CatalogUnavailable):
            await catalog.ping()
    finally:
        await catalog.close()
    secret = TOKEN.split()[1]
    assert logged(log_buffer)  # something was said
    for text in (log_buffer.getvalue(), repr(settings), repr(catalog.backend), str(info.value)):
        assert secret not in text
