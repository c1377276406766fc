"""The gateway with its SPEKE endpoint in front of both emulators' key APIs, for the tests."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from multidict import CIMultiDict

from proxy.dev.emulator import RunningEmulator
from proxy.domain import KeyId
from tests.conftest import Stack, StackFactory

LEGACY_KEY_API_TOKEN = "test-legacy-key-api-token-41"
INCOMING_KEY_API_TOKEN = "test-incoming-key-api-token-42"
PACKAGER_TOKEN = "test-packager-bearer-token-0123"
PACKAGER_USER = "packager-1"
PACKAGER_PASSWORD = "test-packager-password-4567"
SECRETS = (LEGACY_KEY_API_TOKEN, INCOMING_KEY_API_TOKEN, PACKAGER_TOKEN, PACKAGER_PASSWORD)
KEY_ENV = {
    "LEGACY_KEY_API_TOKEN": LEGACY_KEY_API_TOKEN,
    "INCOMING_KEY_API_TOKEN": INCOMING_KEY_API_TOKEN,
    "SPEKE_TOKEN": PACKAGER_TOKEN,
    "SPEKE_PASSWORD": PACKAGER_PASSWORD,
}
PUBLIC_BASE = "https://drm.example.test"
# Step 1 of a migration: keys made at legacy, written to incoming too.
LEGACY_TO_INCOMING: dict[str, Any] = {"default": {"source": "legacy", "mirrors": ["incoming"]}}
BEARER = {"bearer": {"env": "SPEKE_TOKEN"}}
BASIC = {"basic": {"username": PACKAGER_USER, "password": {"env": "SPEKE_PASSWORD"}}}


def rules_text(keys: dict[str, Any] | None, version: str = "k1") -> str:
    """A rules file: everything to legacy by default, and the `keys` section."""
    doc: dict[str, Any] = {"version": version, "default": "legacy", "rules": []}
    if keys is not None:
        doc["keys"] = keys
    return yaml.safe_dump(doc, sort_keys=False)


def bearer_headers(version: str = "2.0", token: str = PACKAGER_TOKEN) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/xml",
        "X-Speke-Version": version,
    }


def basic_headers(user: str = PACKAGER_USER, password: str = PACKAGER_PASSWORD) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {
        "Authorization": f"Basic {pair}",
        "Content-Type": "application/xml",
        "X-Speke-Version": "2.0",
    }


@dataclass
class SpekeStack:
    """A Stack whose gateway serves SPEKE; `rules` is its hot-reloaded rules file."""

    stack: Stack
    rules: Path
    speke_url: str

    async def post(
        self,
        body: bytes,
        *,
        headers: dict[str, str] | None = None,
        asset: str | None = None,
    ) -> tuple[int, CIMultiDict[str], bytes]:
        """Status, headers and body of a SPEKE request (bearer credential by default)."""
        params = {"asset": asset} if asset is not None else None
        async with self.stack.anon.post(
            self.speke_url,
            data=body,
            headers=bearer_headers() if headers is None else headers,
            params=params,
        ) as resp:
            return resp.status, resp.headers.copy(), await resp.read()

    async def exported(
        self, emulator: RunningEmulator, resource: str, kids: list[KeyId]
    ) -> dict[KeyId, bytes]:
        """The keys the emulator's key export answers for `kids` of `resource`."""
        token = LEGACY_KEY_API_TOKEN if emulator is self.stack.legacy else INCOMING_KEY_API_TOKEN
        url = f"{emulator.url}/v2/keys/{resource}"
        async with self.stack.anon.get(
            url,
            params=[("kid", kid) for kid in kids],
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            data = await resp.json()
        held = {KeyId(k["kid"]): base64.b64decode(k["key"]) for k in data["keys"]}
        return {kid: held[kid] for kid in kids}  # it lists the resource's other keys too

    async def catalog_entry(self, asset: str) -> dict[str, Any]:
        """The admin view of an asset (no cache: the gateway drops it when recording)."""
        async with self.stack.anon.get(
            self.stack.internal(f"/admin/catalog/{asset}"), headers=self.stack.admin_headers()
        ) as resp:
            assert resp.status == 200, await resp.text()
            data: dict[str, Any] = await resp.json()
            return data


async def speke_stack(
    make_stack: StackFactory,
    tmp_path: Path,
    *,
    keys: dict[str, Any] | None = LEGACY_TO_INCOMING,
    credential: dict[str, Any] | None = None,
    listener: str = "internal",
    speke: dict[str, Any] | None = None,
    configure_more: Callable[[dict[str, Any]], None] | None = None,
    **sections: Any,
) -> SpekeStack:
    """The gateway with `keys` in its rules file, both emulators' key APIs configured, and a
    SPEKE endpoint on `listener` behind `credential` (the bearer token by default)."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(rules_text(keys))
    section: dict[str, Any] = {
        "listener": listener,
        "credential": credential or BEARER,
        "public_base_url": PUBLIC_BASE,
        "max_body_bytes": 2 * 1024 * 1024,
        "mirror_queue": {"interval_seconds": 0.1, "batch": 10, "max_backoff_seconds": 0.2},
    }
    if listener == "own":
        section |= {"host": "127.0.0.1", "port": 0}
    section |= speke or {}

    def configure(raw: dict[str, Any]) -> None:
        for name in ("legacy", "incoming"):
            provider = raw["providers"][name]
            provider["key_api"] = {
                "base_url": provider["base_url"],
                "token": {"env": f"{name.upper()}_KEY_API_TOKEN"},
                "timeouts": {"connect_seconds": 1.0, "total_seconds": 2.0},
            }
        if configure_more is not None:
            configure_more(raw)

    stack = await make_stack(
        legacy={"key_api_token": LEGACY_KEY_API_TOKEN},
        incoming={"key_api_token": INCOMING_KEY_API_TOKEN},
        configure=configure,
        env=KEY_ENV,
        routing={"rules_file": str(rules), "poll_seconds": 0.1},
        speke=section,
        **sections,
    )
    url = stack.gateway.speke_url if listener == "own" else stack.gateway.internal_url
    assert url is not None
    return SpekeStack(stack, rules, url + "/v2/speke")


async def read_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    data: dict[str, Any] = await resp.json()
    return data
