"""Shared by the key API, transfer and backfill tests: both emulated providers with their key
API on loopback, a gateway config naming them, and a real SQLite catalog of titles.

The legacy emulator knows every title by its asset id (keys derived from it); the incoming one
knows none until keys are ingested there (it serves stored keys only), so a title it can serve
is one the backfill moved. Expected keys are computed here independently of the emulator.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import yaml

from proxy.catalog.importer import import_file
from proxy.config import Config, parse_config
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.domain import KeyId
from tests.conftest import ENV, INCOMING_JWT_KEY, LEGACY_API_KEY, SEED, gateway_raw_config

T = TypeVar("T")
LEGACY_KEY_API_TOKEN = "test-legacy-key-api-token-91ab"
INCOMING_KEY_API_TOKEN = "test-incoming-key-api-token-3f07"
KEY_ENV = {
    **ENV,
    "LEGACY_KEY_API_TOKEN": LEGACY_KEY_API_TOKEN,
    "INCOMING_KEY_API_TOKEN": INCOMING_KEY_API_TOKEN,
}


@dataclass(frozen=True)
class Title:
    """One catalog row of the tests."""

    asset_id: str
    drm_resource_id: str | None
    key_ids: tuple[KeyId, ...] = ()
    holders: tuple[str, ...] | None = ("legacy",)


def make_titles(count: int, *, prefix: str = "t", keys: int = 2) -> list[Title]:
    """`count` titles held by legacy only, each with a drmResourceId and `keys` key ids."""
    return [
        Title(
            f"{prefix}-{number:05d}",
            f"res-{prefix}-{number:05d}",
            tuple(key_id(f"{prefix}-{number}", slot) for slot in range(keys)),
        )
        for number in range(count)
    ]


def key_id(name: str, slot: int) -> KeyId:
    """A stable key id for (name, slot)."""
    return KeyId(hashlib.sha256(f"{name}/{slot}".encode()).hexdigest()[:32])


def legacy_key(asset_id: str, kid: str, seed: bytes = SEED) -> bytes:
    """The key the legacy emulator derives for a title it knows by its asset id."""
    return hmac.new(seed, f"{asset_id}:{kid}".encode(), hashlib.sha256).digest()[:16]


def write_titles(path: Path, titles: list[Title]) -> Path:
    """A real SQLite catalog of `titles`, filled through the importer (JSON Lines)."""
    source = path.with_suffix(".jsonl")
    with source.open("w") as out:
        for title in titles:
            row = {
                "asset_id": title.asset_id,
                "drm_resource_id": title.drm_resource_id,
                "key_holders": list(title.holders) if title.holders is not None else None,
                "tags": [],
                "key_ids": list(title.key_ids) or None,
            }
            out.write(json.dumps(row) + "\n")
    report = import_file(source, path)
    assert not report.rejected, report.rejected
    return path


def legacy_settings(**overrides: Any) -> EmulatorSettings:
    """The legacy emulator: every resource (asset id) known, keys derived from SEED."""
    values: dict[str, Any] = {
        "kind": "legacy",
        "seed": SEED,
        "api_key": LEGACY_API_KEY,
        "resources": None,
        "key_api_token": LEGACY_KEY_API_TOKEN,
    }
    return EmulatorSettings(**(values | overrides))


def incoming_settings(**overrides: Any) -> EmulatorSettings:
    """The incoming emulator: no resource known until keys are stored there; JWT verified."""
    values: dict[str, Any] = {
        "kind": "incoming",
        "seed": SEED,
        "resources": {},
        "jwt_keys": {"k1": INCOMING_JWT_KEY},
        "jwt_algorithms": ("HS256",),
        "key_api_token": INCOMING_KEY_API_TOKEN,
    }
    return EmulatorSettings(**(values | overrides))


def raw_config(
    db: Path | None, legacy_url: str, incoming_url: str, **key_api: dict[str, Any]
) -> dict[str, Any]:
    """The test gateway's config with a key_api section per provider; `key_api` adds fields
    to a provider's section (e.g. `incoming={"resource_id": "asset_id"}`)."""
    raw = gateway_raw_config(db or Path("catalog.db"), legacy_url, incoming_url)
    for name, url, env in (
        ("legacy", legacy_url, "LEGACY_KEY_API_TOKEN"),
        ("incoming", incoming_url, "INCOMING_KEY_API_TOKEN"),
    ):
        section = {
            "base_url": url,
            "token": {"env": env},
            "timeouts": {"connect_seconds": 1, "total_seconds": 2},
        }
        raw["providers"][name]["key_api"] = section | key_api.get(name, {})
    return raw


def config_for(raw: dict[str, Any], base_dir: Path) -> Config:
    return parse_config(raw, base_dir=base_dir, env=KEY_ENV)


def write_config(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@dataclass
class Providers:
    """Both emulators, running; `http` talks to their loopback controls."""

    legacy: RunningEmulator
    incoming: RunningEmulator
    http: aiohttp.ClientSession
    stopped: set[str] = field(default_factory=set)

    async def stats(self, emulator: RunningEmulator) -> dict[str, Any]:
        async with self.http.get(f"{emulator.url}/_emulator/stats") as response:
            data: dict[str, Any] = await response.json()
            return data

    async def key_api(self, emulator: RunningEmulator) -> dict[str, int]:
        """The emulator's key API counters (generated, exported, ingested, ...)."""
        counters: dict[str, int] = (await self.stats(emulator))["key_api"]
        return counters

    async def faults(self, emulator: RunningEmulator, **faults: Any) -> None:
        async with self.http.post(f"{emulator.url}/_emulator/faults", json=faults) as response:
            assert response.status == 200, await response.text()

    async def ingest(
        self, emulator: RunningEmulator, resource: str, keys: dict[str, bytes]
    ) -> None:
        """Store keys at an emulator directly through its key API (test setup)."""
        token = LEGACY_KEY_API_TOKEN if emulator is self.legacy else INCOMING_KEY_API_TOKEN
        body = {"keys": [{"kid": k, "key": base64.b64encode(v).decode()} for k, v in keys.items()]}
        async with self.http.put(
            f"{emulator.url}/v2/keys/{resource}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            assert response.status == 200, await response.text()


@asynccontextmanager
async def running_providers(
    legacy: EmulatorSettings | None = None, incoming: EmulatorSettings | None = None
) -> AsyncIterator[Providers]:
    """Both emulators on ephemeral loopback ports, stopped on exit."""
    first = await start_emulator(legacy or legacy_settings())
    second = await start_emulator(incoming or incoming_settings())
    http = aiohttp.ClientSession()
    try:
        yield Providers(first, second, http)
    finally:
        await http.close()
        await second.stop()
        await first.stop()


class ProvidersThread:
    """Both emulators served by an event loop in a thread, for tests that run the command
    line (its own `asyncio.run`, or a subprocess) meanwhile."""

    def __init__(self, legacy: EmulatorSettings, incoming: EmulatorSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.providers: Providers = self.run(self._start(legacy, incoming))

    async def _start(self, legacy: EmulatorSettings, incoming: EmulatorSettings) -> Providers:
        first = await start_emulator(legacy)
        second = await start_emulator(incoming)
        return Providers(first, second, aiohttp.ClientSession())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the emulators' loop; its result."""
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=60)

    def stop(self) -> None:
        async def stop() -> None:
            await self.providers.http.close()
            await self.providers.incoming.stop()
            await self.providers.legacy.stop()

        self.run(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


@contextmanager
def providers_in_thread(
    legacy: EmulatorSettings | None = None, incoming: EmulatorSettings | None = None
) -> Iterator[ProvidersThread]:
    thread = ProvidersThread(legacy or legacy_settings(), incoming or incoming_settings())
    try:
        yield thread
    finally:
        thread.stop()
