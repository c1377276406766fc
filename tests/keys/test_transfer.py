"""One title's transfer: export, ingest, verify through the gateway's provider client, record.

Real parts only: both emulated providers over loopback, a SQLite catalog file, the gateway's
own `generic` provider client for the destination (JWT signing included)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog.keys import SqliteKeyRecords
from proxy.dev.emulator import EmulatorSettings
from proxy.domain import KeyId
from proxy.keys.client import KeyApiClient, key_clients
from proxy.keys.transfer import (
    TransferFailed,
    TransferOutcome,
    Verifier,
    clearkey_request,
    compare_keys,
    read_clearkey_license,
    transfer_title,
)
from proxy.upstream.base import ProviderClient
from proxy.upstream.registry import build_provider
from tests.keys.backfill_stack import (
    Providers,
    Title,
    config_for,
    incoming_settings,
    legacy_key,
    legacy_settings,
    make_titles,
    raw_config,
    running_providers,
    write_titles,
)

TITLES = make_titles(3)


@dataclass
class Rig:
    """The providers, the catalog, the key API clients and the destination's verifier."""

    providers: Providers
    records: SqliteKeyRecords
    clients: dict[str, KeyApiClient]
    verifier: Verifier
    db: Path

    async def transfer(self, title: Title) -> TransferOutcome:
        assert title.drm_resource_id is not None
        return await transfer_title(
            title.asset_id,
            title.drm_resource_id,
            title.key_ids,
            source=self.clients["legacy"],
            target=self.clients["incoming"],
            verify=self.verifier,
            records=self.records,
            target_name="incoming",
        )

    async def holders(self, title: Title) -> frozenset[str] | None:
        entry = await self.records.get(title.asset_id)
        assert entry is not None
        return entry.key_holders


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    """make_rig(legacy=, incoming=, configure=) -> a Rig; everything closed after the test."""
    closing: list[Callable[[], Awaitable[Any]]] = []

    async def make(
        *,
        legacy: EmulatorSettings | None = None,
        incoming: EmulatorSettings | None = None,
        configure: Callable[[dict[str, Any]], None] | None = None,
    ) -> Rig:
        context = running_providers(legacy, incoming)
        providers = await context.__aenter__()
        closing.append(lambda: context.__aexit__(None, None, None))
        db = write_titles(tmp_path / "catalog.db", TITLES)
        raw = raw_config(db, providers.legacy.url, providers.incoming.url)
        if configure is not None:
            configure(raw)
        config = config_for(raw, tmp_path)
        clients = key_clients(config.providers)
        provider: ProviderClient = build_provider(config.providers["incoming"])
        await provider.open()
        records = SqliteKeyRecords(db)
        closing.extend([records.close, provider.close, *(c.close for c in clients.values())])
        return Rig(providers, records, clients, Verifier(provider), db)

    yield make
    for close in reversed(closing):
        await close()


async def test_a_title_is_copied_verified_and_recorded(
    make_rig: MakeRig, log_buffer: io.StringIO
) -> None:
    rig = await make_rig()
    title = TITLES[0]
    outcome = await rig.transfer(title)
    assert outcome == TransferOutcome("done", keys=2)
    assert await rig.holders(title) == frozenset({"legacy", "incoming"})
    counters = await rig.providers.key_api(rig.providers.incoming)
    assert (counters["ingested"], counters["already_present"]) == (2, 0)
    # The destination now serves the legacy keys in a real ClearKey license, through the
    # gateway's own client (JWT and all), asked by the verifier.
    licenses = [
        r for r in (await rig.providers.stats(rig.providers.incoming))["recent"]
        if r["route"] == "license"
    ]  # fmt: skip
    assert [(r["drm"], r["resource"], r["status"]) for r in licenses] == [
        ("clearkey", title.drm_resource_id, 200)
    ]
    # No key in any log line.
    logs = log_buffer.getvalue()
    for kid in title.key_ids:
        key = legacy_key(title.asset_id, kid)
        assert base64.b64encode(key).decode() not in logs
        assert base64.urlsafe_b64encode(key).rstrip(b"=").decode() not in logs


async def test_a_second_transfer_finds_the_keys_already_there(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert (await rig.transfer(TITLES[1])).outcome == "done"
    assert await rig.transfer(TITLES[1]) == TransferOutcome("already_there", keys=2)
    counters = await rig.providers.key_api(rig.providers.incoming)
    assert (counters["ingested"], counters["already_present"]) == (2, 2)


async def test_a_title_the_source_does_not_know_fails_and_records_nothing(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(legacy=legacy_settings(resources={}))
    outcome = await rig.transfer(TITLES[0])
    assert outcome == TransferOutcome("failed", "source_unknown_resource", retryable=False)
    assert await rig.holders(TITLES[0]) == frozenset({"legacy"})
    assert (await rig.providers.key_api(rig.providers.incoming))["ingested"] == 0


async def test_a_conflicting_key_at_the_destination_fails(make_rig: MakeRig) -> None:
    rig = await make_rig()
    title = TITLES[0]
    assert title.drm_resource_id is not None
    await rig.providers.ingest(rig.providers.incoming, title.drm_resource_id, {
        title.key_ids[0]: b"\x00" * 16
    })  # fmt: skip
    outcome = await rig.transfer(title)
    assert outcome == TransferOutcome("failed", "target_key_conflict", retryable=False)
    assert await rig.holders(title) == frozenset({"legacy"})


async def test_a_destination_serving_another_key_fails_verification(make_rig: MakeRig) -> None:
    # Misconfigured: the keys are ingested under the asset id while the destination's
    # licenses name the title by its drmResourceId, for which it derives other keys.
    title = TITLES[2]
    assert title.drm_resource_id is not None
    incoming = incoming_settings(resources={title.drm_resource_id: "elsewhere"})

    def ingest_by_asset_id(raw: dict[str, Any]) -> None:
        raw["providers"]["incoming"]["key_api"]["resource_id"] = "asset_id"

    rig = await make_rig(incoming=incoming, configure=ingest_by_asset_id)
    outcome = await rig.transfer(title)
    assert outcome == TransferOutcome("failed", "verify_mismatch", retryable=False)
    assert await rig.holders(title) == frozenset({"legacy"})


@pytest.mark.parametrize(
    ("faults", "reason"),
    [
        ({"error_rate": 1.0}, "target_EMULATED_FAULT"),
        ({"status": 503}, "target_EMULATED_STATUS"),
        ({"reset_rate": 1.0}, "target_connect"),
    ],
)
async def test_an_erroring_destination_is_a_retryable_failure(
    make_rig: MakeRig, faults: dict[str, Any], reason: str
) -> None:
    rig = await make_rig()
    await rig.providers.faults(rig.providers.incoming, **faults)
    outcome = await rig.transfer(TITLES[0])
    assert outcome == TransferOutcome("failed", reason, retryable=True)
    assert await rig.holders(TITLES[0]) == frozenset({"legacy"})


async def test_a_destination_down_is_a_retryable_failure(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.providers.incoming.stop()
    outcome = await rig.transfer(TITLES[0])
    assert outcome == TransferOutcome("failed", "target_connect", retryable=True)


async def test_a_verification_failing_upstream_is_retryable(make_rig: MakeRig) -> None:
    rig = await make_rig()
    # Every 2nd answer fails: the ingest (1st) passes, the license (2nd) gets a 500.
    await rig.providers.faults(rig.providers.incoming, error_rate=0.5, seed=3)
    outcomes = [await rig.transfer(title) for title in TITLES]
    reasons = {o.reason for o in outcomes if o.outcome == "failed"}
    assert reasons <= {"target_EMULATED_FAULT", "verify_upstream_unavailable"}
    assert all(o.retryable for o in outcomes if o.outcome == "failed")


async def test_aes128_keys_verify_a_provider_without_clearkey(make_rig: MakeRig) -> None:
    def keys_only(raw: dict[str, Any]) -> None:
        del raw["providers"]["incoming"]["license_urls"]["clearkey"]

    rig = await make_rig(configure=keys_only)
    assert (await rig.transfer(TITLES[0])).outcome == "done"
    recent = (await rig.providers.stats(rig.providers.incoming))["recent"]
    assert [r["route"] for r in recent].count("keys") == 2


async def test_the_catalog_failing_is_a_retryable_failure(make_rig: MakeRig) -> None:
    rig = await make_rig()
    await rig.records.close()
    outcome = await rig.transfer(TITLES[0])
    assert outcome == TransferOutcome("failed", "catalog_unavailable", retryable=True)


# --- pure parts ------------------------------------------------------------------------------


def test_clearkey_documents() -> None:
    kid = KeyId("00112233445566778899aabbccddeeff")
    assert clearkey_request([kid]) == b'{"kids": ["ABEiM0RVZneImaq7zN3u_w"], "type": "temporary"}'
    license_ = (
        b'{"keys":[{"kty":"oct","kid":"ABEiM0RVZneImaq7zN3u_w","k":"a2tra2tra2tra2tra2traw"}]}'
    )
    assert read_clearkey_license(license_) == {kid: b"k" * 16}
    for garbled in (b"[]", b'{"keys": [{"kid": 1}]}', b'{"keys": [{"kid": "AA", "k": ""}]}'):
        with pytest.raises(TransferFailed) as caught:
            read_clearkey_license(garbled)
        assert caught.value.reason == "verify_bad_license"


def test_every_key_is_compared() -> None:
    a, b = KeyId("a" * 32), KeyId("b" * 32)
    expected = {a: b"1" * 16, b: b"2" * 16}
    compare_keys(expected, dict(expected))
    with pytest.raises(TransferFailed, match="verify_missing_key"):
        compare_keys(expected, {a: b"1" * 16})
    with pytest.raises(TransferFailed, match="verify_mismatch"):
        compare_keys(expected, {a: b"1" * 16, b: b"3" * 16})
