"""Factory fixtures: a real SQLite catalog, both emulated providers and the gateway on loopback."""

from __future__ import annotations

import base64
import csv
import io
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.access.player_tokens import issue_token
from proxy.catalog.importer import import_file
from proxy.config import Config, parse_config
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.observability.logs import configure_logging
from proxy.server.app import RunningGateway, start_gateway
from tests.redis_server import REDIS_SERVER, RedisServer, start_redis_server

SEED = b"test-seed"
LEGACY_API_KEY = "test-legacy-api-key-7c1e"
INCOMING_JWT_KEY = bytes.fromhex("5f1c" * 16)  # 32 bytes, HS256
INCOMING_JWT_KEY_B64 = base64.b64encode(INCOMING_JWT_KEY).decode()
PLAYER_SECRET = "test-player-secret-0123456789abcdef"  # HS256 player tokens
ADMIN_TOKEN = "test-admin-token-5e8d1c"
ENV = {
    "LEGACY_API_KEY": LEGACY_API_KEY,
    "INCOMING_JWT_KEY": f"base64:{INCOMING_JWT_KEY_B64}",
    "PLAYER_JWT_SECRET": PLAYER_SECRET,
    "ADMIN_TOKEN": ADMIN_TOKEN,
}
# The key-side secrets the shipped demo config reads besides ENV's (key APIs, packagers).
DEMO_KEY_SECRETS = {
    "LEGACY_KEY_API_TOKEN": "l" * 20,
    "INCOMING_KEY_API_TOKEN": "i" * 20,
    "SPEKE_PACKAGER_TOKEN": "s" * 20,
}


def player_token(
    entitlements: list[str] | None = None, *, user: str = "user-1", ttl: float = 3600, **kw: Any
) -> str:
    """A player JWT the test gateway accepts (entitled to everything by default)."""
    return issue_token(
        secret_or_private_key=PLAYER_SECRET.encode(),
        algorithm="HS256",
        kid=None,
        user_id=user,
        entitlements=entitlements if entitlements is not None else ["*"],
        ttl_seconds=ttl,
        issuer="test-idp",
        audience="drm-gateway",
        **kw,
    )


# asset_id, drm_resource_id, key_holders, tags
ASSETS: list[tuple[str, str | None, tuple[str, ...] | None, tuple[str, ...]]] = [
    ("both-1", "res-both-1", None, ("catalog",)),
    ("both-2", "res-both-2", ("legacy", "incoming"), ("catalog",)),
    ("legacy-only", None, ("legacy",), ("catalog",)),
    ("no-res-unknown-holders", None, None, ()),
    ("incoming-only", "res-inc-1", ("incoming",), ("new-release",)),
    ("orphan", "res-orphan", ("nobody",), ()),
    ("incoming-missing", "res-not-yet", ("incoming",), ()),
]
# What each emulator knows: legacy by asset id (deriving from the resource id), incoming by
# resource id.
LEGACY_RESOURCES = {
    "both-1": "res-both-1",
    "both-2": "res-both-2",
    "legacy-only": "res-legacy-only",
    "no-res-unknown-holders": "res-nru",
}
INCOMING_RESOURCES = {
    "res-both-1": "res-both-1",
    "res-both-2": "res-both-2",
    "res-inc-1": "res-inc-1",
}


def write_catalog(path: Path, assets: list[Any] = ASSETS) -> Path:
    """A real SQLite catalog filled through the importer."""
    source = path.with_suffix(".csv")
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags"])
        for asset_id, res, holders, tags in assets:
            writer.writerow([asset_id, res or "", "|".join(holders or ()), "|".join(tags)])
    report = import_file(source, path)
    assert not report.rejected
    return path


def gateway_raw_config(
    db: Path, legacy_url: str, incoming_url: str, **sections: Any
) -> dict[str, Any]:
    """The raw YAML tree of a gateway config for tests; `sections` replace top-level keys."""

    def provider(base: str, id_field: str, needs: bool) -> dict[str, Any]:
        return {
            "base_url": base,
            "needs_drm_resource_id": needs,
            "license_urls": {
                drm: f"/license/{drm}/{{{id_field}}}"
                for drm in ("widevine", "playready", "fairplay", "clearkey")
            },
            "key_url": f"/keys/{{{id_field}}}/{{key_id}}",
            "timeouts": {"connect_seconds": 1.0, "total_seconds": 2.0},
        }

    legacy = provider(legacy_url, "asset_id", False)
    legacy["auth"] = {"type": "header", "header": "X-Api-Key", "secret": {"env": "LEGACY_API_KEY"}}
    legacy["fairplay"] = {"request": "form", "response": "ckc_tag"}
    incoming = provider(incoming_url, "drm_resource_id", True)
    incoming["auth"] = {
        "type": "jwt",
        "header": "X-Drm-Token",
        "algorithm": "HS256",
        "keys": [{"kid": "k1", "secret": {"env": "INCOMING_JWT_KEY"}}],
        "active_kid": "k1",
        "lifetime_seconds": 60,
        "claims": {"drmResourceId": "{drm_resource_id}", "drm": "{drm}", "user": "{user_id}"},
    }
    incoming["fairplay"] = {"request": "binary", "response": "binary"}
    raw: dict[str, Any] = {
        "server": {"public": {"port": 0}, "internal": {"port": 0}, "max_body_bytes": 4096},
        "log": {"level": "info", "format": "json"},
        "catalog": {"backend": "sqlite", "path": str(db), "ttl_seconds": 60},
        "routing": {"default_provider": "legacy"},
        "admin": {"token": {"env": "ADMIN_TOKEN"}},
        "player_auth": {
            "mode": "jwt",
            "algorithms": ["HS256"],
            "hmac_secret": {"env": "PLAYER_JWT_SECRET"},
            "issuer": "test-idp",
            "audience": "drm-gateway",
            "leeway_seconds": 5,
        },
        "providers": {
            "legacy": legacy,
            "incoming": incoming,
        },
    }
    raw.update(sections)
    return raw


@dataclass
class Stack:
    """The gateway in front of both emulated providers, plus HTTP clients: `http` sends a
    valid player token on every request, `anon` sends none."""

    gateway: RunningGateway
    legacy: RunningEmulator
    incoming: RunningEmulator
    http: aiohttp.ClientSession
    anon: aiohttp.ClientSession
    config: Config
    logs: io.StringIO = field(default_factory=io.StringIO)

    def url(self, path: str) -> str:
        return self.gateway.public_url + path

    def internal(self, path: str) -> str:
        return self.gateway.internal_url + path

    async def stats(self, emulator: RunningEmulator) -> dict[str, Any]:
        async with self.http.get(f"{emulator.url}/_emulator/stats") as resp:
            data: dict[str, Any] = await resp.json()
            return data

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def faults(self, emulator: RunningEmulator, **faults: Any) -> None:
        async with self.http.post(f"{emulator.url}/_emulator/faults", json=faults) as resp:
            assert resp.status == 200, await resp.text()


StackFactory = Callable[..., Awaitable[Stack]]


@pytest.fixture
def log_buffer() -> Iterator[io.StringIO]:
    """Every log line of the test, as JSON lines."""
    buffer = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=buffer)
    yield buffer
    configure_logging(level="info", fmt="json")


@pytest.fixture
async def make_stack(tmp_path: Path, log_buffer: io.StringIO) -> AsyncIterator[StackFactory]:
    """make_stack(**config sections) -> a running Stack; everything stops after the test."""
    started: list[Callable[[], Awaitable[None]]] = []
    http = aiohttp.ClientSession(headers={"Authorization": f"Bearer {player_token()}"})
    anon = aiohttp.ClientSession()

    async def make(
        *,
        legacy: dict[str, Any] | None = None,
        incoming: dict[str, Any] | None = None,
        db: Path | None = None,
        configure: Callable[[dict[str, Any]], None] | None = None,
        env: Mapping[str, str] | None = None,
        **sections: Any,
    ) -> Stack:
        """`legacy`/`incoming` override EmulatorSettings fields; `sections` replace config
        sections; `configure(raw)` may edit the raw config last; `env` adds secrets."""
        legacy_emulator = await start_emulator(
            EmulatorSettings(
                **{
                    "kind": "legacy",
                    "seed": SEED,
                    "api_key": LEGACY_API_KEY,
                    "resources": LEGACY_RESOURCES,
                    **(legacy or {}),
                }
            )
        )
        started.append(legacy_emulator.stop)
        incoming_emulator = await start_emulator(
            EmulatorSettings(
                **{
                    "kind": "incoming",
                    "seed": SEED,
                    "resources": INCOMING_RESOURCES,
                    "jwt_keys": {"k1": INCOMING_JWT_KEY},
                    "jwt_algorithms": ("HS256",),
                    **(incoming or {}),
                }
            )
        )
        started.append(incoming_emulator.stop)
        db = db or write_catalog(tmp_path / "catalog.db")
        raw = gateway_raw_config(db, legacy_emulator.url, incoming_emulator.url, **sections)
        if configure is not None:
            configure(raw)
        config = parse_config(raw, base_dir=tmp_path, env={**ENV, **(env or {})})
        gateway = await start_gateway(config)
        started.append(gateway.stop)
        return Stack(gateway, legacy_emulator, incoming_emulator, http, anon, config, log_buffer)

    yield make
    for stop in reversed(started):
        await stop()
    await http.close()
    await anon.close()


def write_serve_config(
    tmp_path: Path, legacy_url: str, incoming_url: str, rules: str, *, poll_seconds: float
) -> tuple[Path, dict[str, str]]:
    """A config file (with its catalog and rules) for a gateway run as a subprocess, and the
    environment it needs (the test secrets; never a parent's multiprocess directory)."""
    rules_file = tmp_path / "routing.yaml"
    rules_file.write_text(rules)
    raw = gateway_raw_config(write_catalog(tmp_path / "catalog.db"), legacy_url, incoming_url)
    raw["routing"] = {"rules_file": str(rules_file), "poll_seconds": poll_seconds}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | ENV
    return config, env


def free_ports(count: int) -> list[int]:
    """Loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server (no persistence, no TCP port) started for the test, stopped after."""
    if not Path(REDIS_SERVER).is_file():
        pytest.fail(
            "redis-server is not installed: the Redis catalog tests need Debian's "
            "`redis-server` package (scripts/install-tools.sh installs it)"
        )
    directory = tmp_path / "redis"
    directory.mkdir()
    try:
        server = start_redis_server(directory)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()
