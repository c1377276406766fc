"""The SPEKE flow (proxy.keys.speke) without HTTP in front: real emulated providers' key APIs on
loopback, a real SQLite catalog file, the rules' `keys:` section deciding."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.catalog.keys import KeyRecords, MirrorJob, SqliteKeyRecords
from proxy.config.providers import KeyApiSettings
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.domain import KeyId
from proxy.errors import (
    CatalogUnavailable,
    ContentIdConflict,
    GatewayError,
    InvalidCpix,
    InvalidId,
    KeyConflict,
    KeyMirrorFailed,
    KeySourceFailed,
    NoKeyPolicy,
    UnknownContent,
)
from proxy.keys.client import KeyApiClient
from proxy.keys.policy import KeyPolicy, KeyRule, KeyTarget, KeyWhen
from proxy.keys.speke import SpekeService, signaling_for
from proxy.observability import metrics
from tests.conftest import LEGACY_API_KEY, SEED, write_catalog
from tests.keys.cpix_docs import (
    AUDIO,
    AUDIO_KID,
    NS,
    VIDEO,
    VIDEO_KID,
    content_key,
    cpix,
    drm_system,
    two_key_request,
    usage_rule,
)

TOKENS = {"legacy": "flow-legacy-key-api-token", "incoming": "flow-incoming-key-api-token"}
BASE = "https://gw.example"
LEGACY_TO_INCOMING = KeyPolicy(KeyTarget("legacy", ("incoming",)))
QUEUE = KeyPolicy(KeyTarget("legacy", ("incoming",), "queue"))
# asset_id, drm_resource_id, key_holders, tags
CATALOG = [
    ("known-1", "res-known-1", None, ("catalog",)),
    ("fresh-1", None, None, ("new-release",)),
    ("other-1", "res-other-1", ("legacy",), ()),
]


def request_for(content_id: str, *, given: dict[str, bytes] | None = None) -> bytes:
    """The two-key, four-system document for `content_id`, with the packager's own keys."""
    document = two_key_request().replace(
        b'contentId="movie-1"', f'contentId="{content_id}"'.encode()
    )
    for kid, key in (given or {}).items():
        data = (
            f"<cpix:Data><pskc:Secret><pskc:PlainValue>{base64.b64encode(key).decode()}"
            "</pskc:PlainValue></pskc:Secret></cpix:Data>"
        )
        marker = f'<cpix:ContentKey kid="{kid}"'.encode()
        start = document.index(marker)
        end = document.index(b"/>", start)
        document = (
            document[:end] + b">" + data.encode() + b"</cpix:ContentKey>" + document[end + 2 :]
        )
    return document


def answered(document: bytes) -> dict[KeyId, bytes]:
    root = ET.fromstring(document)
    keys = {}
    for element in root.iterfind("cpix:ContentKeyList/cpix:ContentKey", NS):
        value = element.find("cpix:Data/pskc:Secret/pskc:PlainValue", NS)
        assert value is not None and value.text
        keys[KeyId(element.get("kid", "").replace("-", ""))] = base64.b64decode(value.text)
    return keys


@dataclass
class Flow:
    """The service over both emulators and a catalog file; `policy` may be changed."""

    legacy: RunningEmulator
    incoming: RunningEmulator
    records: KeyRecords
    clients: dict[str, KeyApiClient]
    http: aiohttp.ClientSession
    policy: KeyPolicy | None = LEGACY_TO_INCOMING
    recorded: list[str] = field(default_factory=list)

    def service(self) -> SpekeService:
        return SpekeService(
            policy=lambda: self.policy,
            clients=self.clients,
            records=self.records,
            public_base_url=BASE,
            on_recorded=self.recorded.append,
        )

    async def answer(self, body: bytes, asset: str | None = None, version: str = "2.0") -> Any:
        return await self.service().answer(body, version, asset)

    async def exported(self, role: str, resource: str, kids: list[KeyId]) -> dict[KeyId, bytes]:
        return await self.clients[role].export(resource, kids)

    async def faults(self, role: str, **faults: Any) -> None:
        emulator = self.legacy if role == "legacy" else self.incoming
        async with self.http.post(f"{emulator.url}/_emulator/faults", json=faults) as resp:
            assert resp.status == 200


@pytest.fixture
async def flow(tmp_path: Path) -> AsyncIterator[Flow]:
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy", seed=SEED, api_key=LEGACY_API_KEY, key_api_token=TOKENS["legacy"]
        )
    )
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", seed=SEED, key_api_token=TOKENS["incoming"])
    )
    db = write_catalog(tmp_path / "catalog.db", CATALOG)
    records = SqliteKeyRecords(db)
    clients = {
        "legacy": KeyApiClient(
            "legacy", KeyApiSettings(legacy.url, TOKENS["legacy"], resource_id_field="asset_id")
        ),
        "incoming": KeyApiClient("incoming", KeyApiSettings(incoming.url, TOKENS["incoming"])),
    }
    http = aiohttp.ClientSession()
    yield Flow(legacy, incoming, records, clients, http)
    await http.close()
    for client in clients.values():
        await client.close()
    await records.close()
    await incoming.stop()
    await legacy.stop()


def count(provider: str, result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "drm_gateway_key_mirror_writes_total", {"provider": provider, "result": result}
    )
    return value or 0.0


# --- the flow --------------------------------------------------------------------------------


async def test_keys_are_made_at_the_source_copied_to_mirrors_and_recorded(flow: Flow) -> None:
    written = count("incoming", "ok")
    answer = await flow.answer(request_for("res-new-7"), asset="new-7")
    keys = answered(answer.document)
    assert set(keys) == {VIDEO, AUDIO} and len(set(keys.values())) == 2
    # Each provider knows the title by the id its licenses use: legacy by asset id.
    assert await flow.exported("legacy", "new-7", [VIDEO, AUDIO]) == keys
    assert await flow.exported("incoming", "res-new-7", [VIDEO, AUDIO]) == keys
    entry = await flow.records.get("new-7")
    assert entry is not None
    assert entry.drm_resource_id == "res-new-7"
    assert entry.key_ids == (VIDEO, AUDIO)
    assert entry.key_holders == frozenset({"legacy", "incoming"})
    assert (answer.holders, answer.queued, answer.key_count) == (("legacy", "incoming"), (), 2)
    assert answer.decision.rule == "default"
    assert flow.recorded == ["new-7"]  # the gateway drops it from its catalog cache
    assert count("incoming", "ok") == written + 1
    assert "document" not in repr(answer) and str(keys[VIDEO]) not in repr(answer)


async def test_a_retry_gets_the_same_keys(flow: Flow) -> None:
    first = answered((await flow.answer(request_for("res-r"), asset="r")).document)
    second = answered((await flow.answer(request_for("res-r"), asset="r")).document)
    assert first == second


async def test_the_packagers_own_keys_are_ingested_at_the_source(flow: Flow) -> None:
    given = {VIDEO_KID: bytes(range(16)), AUDIO_KID: bytes(range(50, 66))}
    answer = await flow.answer(request_for("res-own", given=given), asset="own")
    expected = {VIDEO: given[VIDEO_KID], AUDIO: given[AUDIO_KID]}
    assert answered(answer.document) == expected
    assert await flow.exported("legacy", "own", [VIDEO, AUDIO]) == expected
    assert await flow.exported("incoming", "res-own", [VIDEO, AUDIO]) == expected


async def test_keys_the_packager_did_not_send_are_generated(flow: Flow) -> None:
    given = {VIDEO_KID: bytes(range(16))}
    keys = answered(
        (await flow.answer(request_for("res-half", given=given), asset="half")).document
    )
    assert keys[VIDEO] == given[VIDEO_KID] and len(keys[AUDIO]) == 16
    assert await flow.exported("incoming", "res-half", [VIDEO, AUDIO]) == keys


async def test_a_different_key_for_a_known_kid_is_the_packagers_to_fix(flow: Flow) -> None:
    await flow.answer(request_for("res-c"), asset="c")
    with pytest.raises(KeyConflict) as refused:
        await flow.answer(request_for("res-c", given={VIDEO_KID: bytes(16)}), asset="c")
    assert refused.value.status == 422


async def test_the_asset_is_found_from_the_content_id(flow: Flow) -> None:
    answer = await flow.answer(request_for("res-known-1"))
    assert answer.asset_id == "known-1"
    entry = await flow.records.get("known-1")
    assert entry is not None and entry.tags == {"catalog"} and entry.key_ids == (VIDEO, AUDIO)


@pytest.mark.parametrize(
    ("content_id", "asset", "error"),
    [
        ("res-nowhere", None, UnknownContent),
        ("res-not-other", "other-1", ContentIdConflict),
        ("has space", "x-1", InvalidCpix),
        ("res-x", "bad/asset", InvalidId),
    ],
)
async def test_titles_the_catalog_contradicts_are_refused(
    flow: Flow, content_id: str, asset: str | None, error: type[GatewayError]
) -> None:
    before = await flow.records.get("other-1")
    with pytest.raises(error):
        await flow.answer(request_for(content_id), asset=asset)
    assert await flow.records.get("x-1") is None  # nothing recorded
    assert await flow.records.get("other-1") == before


async def test_an_asset_without_a_resource_id_gets_the_content_id(flow: Flow) -> None:
    await flow.answer(request_for("res-fresh-1"), asset="fresh-1")
    entry = await flow.records.get("fresh-1")
    assert entry is not None and entry.drm_resource_id == "res-fresh-1"


async def test_key_rules_choose_the_source_by_tag(flow: Flow) -> None:
    new = KeyRule("new", True, KeyWhen(tags_any=frozenset({"new-release"})), KeyTarget("incoming"))
    flow.policy = KeyPolicy(KeyTarget("legacy", ("incoming",)), (new,))
    answer = await flow.answer(request_for("res-fresh-1"), asset="fresh-1")
    assert (answer.decision.source, answer.decision.rule, answer.holders) == (
        "incoming",
        "new",
        ("incoming",),
    )
    entry = await flow.records.get("fresh-1")
    assert entry is not None and entry.key_holders == frozenset({"incoming"})


async def test_the_answer_points_players_at_the_gateway() -> None:
    signaling = signaling_for(BASE + "/", "movie-9")  # type: ignore[arg-type]
    assert signaling.aes128_key_uri(VIDEO) == f"{BASE}/v1/keys/movie-9/{VIDEO}"
    assert signaling.fairplay_uri(VIDEO) == "skd://movie-9"
    assert signaling.playready_la_url() == f"{BASE}/v1/license/playready/movie-9"


async def test_cpix_errors_keep_the_specs_message(flow: Flow) -> None:
    with pytest.raises(InvalidCpix) as refused:
        await flow.answer(request_for("res-x"), asset="x", version="3.0")
    assert refused.value.message == "Unsupported SPEKE version"
    body = cpix(
        [content_key(VIDEO_KID, None)],
        [drm_system(VIDEO_KID, "x")],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    with pytest.raises(InvalidCpix) as refused:
        await flow.answer(body, asset="x")
    assert refused.value.message == f"Missing ContentKey@commonEncryptionScheme for KID {VIDEO_KID}"


async def test_without_a_keys_section_nothing_is_asked(flow: Flow) -> None:
    flow.policy = None
    with pytest.raises(NoKeyPolicy):
        await flow.answer(request_for("res-x"), asset="x")


# --- failures --------------------------------------------------------------------------------


async def test_a_source_that_fails_fails_the_request_and_records_nothing(flow: Flow) -> None:
    await flow.faults("legacy", status=503)
    with pytest.raises(KeySourceFailed) as failed:
        await flow.answer(request_for("res-s"), asset="s")
    assert (failed.value.status, failed.value.detail, failed.value.provider_error) == (
        503,
        "legacy",
        "EMULATED_STATUS",
    )
    assert await flow.records.get("s") is None
    await flow.faults("legacy", status=400)
    with pytest.raises(KeySourceFailed) as failed:
        await flow.answer(request_for("res-s"), asset="s")
    assert failed.value.status == 502  # a retry will not help


async def test_a_failed_mirror_fails_the_request_unless_it_may_queue(flow: Flow) -> None:
    failed_before = count("incoming", "failed")
    await flow.faults("incoming", status=503)
    with pytest.raises(KeyMirrorFailed) as failed:
        await flow.answer(request_for("res-m"), asset="m")
    assert failed.value.status == 503 and count("incoming", "failed") == failed_before + 1
    assert await flow.records.get("m") is None  # the packager retries: nothing half-recorded
    await flow.faults("incoming")
    keys = answered((await flow.answer(request_for("res-m"), asset="m")).document)
    assert await flow.exported("incoming", "res-m", [VIDEO, AUDIO]) == keys


async def test_a_queued_mirror_is_no_holder_until_written(flow: Flow) -> None:
    flow.policy = QUEUE
    queued = count("incoming", "queued")
    await flow.faults("incoming", status=503)
    answer = await flow.answer(request_for("res-q"), asset="q")
    assert (answer.holders, answer.queued) == (("legacy",), ("incoming",))
    entry = await flow.records.get("q")
    assert entry is not None and entry.key_holders == frozenset({"legacy"})
    assert count("incoming", "queued") == queued + 1
    assert await flow.records.count_mirrors() == 1
    [job] = await flow.records.due_mirrors(10)
    assert job == MirrorJob("q", "res-q", (VIDEO, AUDIO), "legacy", "incoming", 0, None)


async def test_the_catalog_store_failing_is_a_503(flow: Flow, tmp_path: Path) -> None:
    flow.records = SqliteKeyRecords(tmp_path)  # a directory: the store cannot open it
    with pytest.raises(CatalogUnavailable):
        await flow.answer(request_for("res-known-1"))
    await flow.records.close()
