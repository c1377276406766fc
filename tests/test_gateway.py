"""The request flow without HTTP: a real SQLite catalog, real rules, and a fake ProviderClient
per provider recording what it was asked (the seam lets a test swap the provider side)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog import SqliteCatalog
from proxy.config import Config, ProviderSettings, UrlTemplate, parse_config
from proxy.domain import AssetId, KeyId
from proxy.errors import (
    AssetMismatch,
    BadSpc,
    GatewayError,
    NoProvider,
    UnknownAsset,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.gateway import Gateway
from proxy.observability.access import RequestInfo
from proxy.routing.watcher import RulesWatcher
from proxy.upstream.base import (
    Call,
    ClientInfo,
    FairPlayCall,
    KeyCall,
    LicenseCall,
    ProviderAnswer,
)
from tests.conftest import ENV, gateway_raw_config, write_catalog

CLIENT = ClientInfo(forwarded_for="192.0.2.7", platform="web", user_id="user-1")
SPC = b"\x00\x00\x00\x01" + bytes(range(64))


@dataclass
class FakeProvider:
    """A ProviderClient that answers from a script and records every call."""

    settings: ProviderSettings
    fail_with: GatewayError | None = None
    calls: list[tuple[Call, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def endpoint(self, drm: str) -> UrlTemplate | None:
        return self.settings.endpoint(drm)

    async def _answer(self, call: Call, endpoint: UrlTemplate) -> ProviderAnswer:
        self.calls.append((call, endpoint.template))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return ProviderAnswer(f"{self.name}:{call.drm}".encode(), "application/octet-stream", ())

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._answer(call, endpoint)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._answer(call, endpoint)

    async def key(self, call: KeyCall, endpoint: UrlTemplate) -> bytes:
        return (await self._answer(call, endpoint)).body.ljust(16, b".")[:16]

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


RULES = """
version: "t1"
default: legacy
rules:
  - name: incoming-with-fallback
    when: {asset_ids: [both-1]}
    route: incoming
    fallback: legacy
  - name: shadowed
    when: {asset_ids: [both-2], drm: [playready]}
    route: legacy
    shadow: {to: incoming, percent: 100}
  - name: incoming-no-fallback
    when: {asset_ids: [both-2]}
    route: incoming
"""


@dataclass
class Flow:
    gateway: Gateway
    legacy: FakeProvider
    incoming: FakeProvider
    config: Config


@pytest.fixture
async def flow(tmp_path: Path) -> Any:
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES)
    db = write_catalog(tmp_path / "catalog.db")
    raw = gateway_raw_config(db, "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["routing"] = {"rules_file": str(rules)}
    config = parse_config(raw, base_dir=tmp_path, env=ENV)
    legacy = FakeProvider(config.providers["legacy"])
    incoming = FakeProvider(config.providers["incoming"])
    catalog = SqliteCatalog(db)
    gateway = Gateway(
        config, catalog, {"legacy": legacy, "incoming": incoming}, RulesWatcher.from_config(config)
    )
    yield Flow(gateway, legacy, incoming, config)
    await gateway.close()
    await catalog.close()


def info() -> RequestInfo:
    return RequestInfo("req-0001")


async def test_license_goes_to_the_decided_provider_at_its_endpoint(flow: Flow) -> None:
    record = info()
    answer = await flow.gateway.license(
        record,
        drm="widevine",
        asset_id=AssetId("both-2"),
        body=b"\x08\x04",
        content_type=None,
        client=CLIENT,
    )
    assert answer.body == b"incoming:widevine"
    ((call, endpoint),) = flow.incoming.calls
    assert isinstance(call, LicenseCall) and call.challenge == b"\x08\x04"
    assert call.entry.drm_resource_id == "res-both-2" and call.request_id == "req-0001"
    assert endpoint.endswith("/license/widevine/{drm_resource_id}")
    assert (record.provider, record.rule, record.rules_version) == (
        "incoming",
        "incoming-no-fallback",
        "t1",
    )
    assert record.upstream_ms is not None and not flow.legacy.calls


async def test_fallback_on_an_upstream_failure(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamUnavailable()
    record = info()
    key = await flow.gateway.key(
        record, asset_id=AssetId("both-1"), key_id=KeyId("0" * 32), client=CLIENT
    )
    assert key == b"legacy:aes128..."
    assert (record.fallback_from, record.provider) == ("incoming", "legacy")
    assert len(flow.incoming.calls) == len(flow.legacy.calls) == 1


async def test_a_provider_rejection_is_not_retried_elsewhere(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamRejected(403)
    with pytest.raises(UpstreamRejected):
        await flow.gateway.key(
            info(), asset_id=AssetId("both-1"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.legacy.calls


async def test_no_fallback_configured_means_the_error_reaches_the_player(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamUnavailable()
    with pytest.raises(UpstreamUnavailable):
        await flow.gateway.key(
            info(), asset_id=AssetId("both-2"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.legacy.calls


async def test_shadow_copy_does_not_delay_or_change_the_answer(flow: Flow) -> None:
    flow.incoming.gate = asyncio.Event()  # the shadow hangs until released
    flow.incoming.fail_with = UpstreamUnavailable()
    answer = await flow.gateway.license(
        info(),
        drm="playready",
        asset_id=AssetId("both-2"),
        body=b"<challenge/>",
        content_type="text/xml",
        client=CLIENT,
    )
    assert answer.body == b"legacy:playready"
    await asyncio.sleep(0)
    assert len(flow.incoming.calls) == 1  # sent, still waiting
    flow.incoming.gate.set()


async def test_fairplay_call_carries_the_decoded_spc_and_the_ckc_is_encoded_for_the_player(
    flow: Flow,
) -> None:
    body = b"spc=" + base64.b64encode(SPC) + b"&assetId=res-both-2"
    answer = await flow.gateway.fairplay(
        info(),
        asset_id=AssetId("both-2"),
        body=body,
        content_type="application/x-www-form-urlencoded",
        client=CLIENT,
    )
    ((call, _),) = flow.incoming.calls
    assert isinstance(call, FairPlayCall) and call.spc.spc == SPC
    # form clients get <ckc>base64</ckc> by default
    assert answer.body.strip() == b"<ckc>" + base64.b64encode(b"incoming:fairplay") + b"</ckc>"


async def test_fairplay_body_naming_another_asset_is_refused_before_any_call(flow: Flow) -> None:
    body = b"spc=" + base64.b64encode(SPC) + b"&assetId=both-1"
    with pytest.raises(AssetMismatch):
        await flow.gateway.fairplay(
            info(),
            asset_id=AssetId("both-2"),
            body=body,
            content_type="application/x-www-form-urlencoded",
            client=CLIENT,
        )
    assert not flow.incoming.calls and not flow.legacy.calls


async def test_malformed_spc_is_refused_before_the_catalog_is_read(flow: Flow) -> None:
    record = info()
    with pytest.raises(BadSpc):
        await flow.gateway.fairplay(
            record,
            asset_id=AssetId("not-in-catalog"),
            body=b"spc=%%%",
            content_type="application/x-www-form-urlencoded",
            client=CLIENT,
        )
    assert record.asset_id is None  # never reached resolve()


async def test_unknown_asset(flow: Flow) -> None:
    with pytest.raises(UnknownAsset):
        await flow.gateway.key(
            info(), asset_id=AssetId("nope"), key_id=KeyId("0" * 32), client=CLIENT
        )


async def test_guard_keeps_assets_away_from_providers_that_cannot_serve_them(flow: Flow) -> None:
    """orphan's keys are held by nobody we know: no provider may be chosen."""
    with pytest.raises(NoProvider):
        await flow.gateway.key(
            info(), asset_id=AssetId("orphan"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.incoming.calls and not flow.legacy.calls
