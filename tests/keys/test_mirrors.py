"""The mirror retry queue's drain (proxy.keys.mirrors) over a real SQLite catalog file: bounded
rounds, a failed job retried after its backoff, a written one leaving the queue."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.catalog.keys import MirrorJob, SqliteKeyRecords
from proxy.config.speke import MirrorQueueSettings
from proxy.domain import KeyId
from proxy.keys.mirrors import DrainRound, MirrorDrainer
from proxy.observability.metrics import REGISTRY
from tests.conftest import write_catalog

KID = KeyId("00112233445566778899aabbccddeeff")
SETTINGS = MirrorQueueSettings(interval_seconds=0.05, batch=2, max_backoff_seconds=0.4)


def job(asset: str) -> MirrorJob:
    return MirrorJob(asset, f"res-{asset}", (KID,), "legacy", "incoming")


@pytest.fixture
async def records(tmp_path: Path) -> AsyncIterator[SqliteKeyRecords]:
    store = SqliteKeyRecords(write_catalog(tmp_path / "catalog.db", []))
    for asset in ("a", "b", "c"):
        await store.record(asset, drm_resource_id=f"res-{asset}", key_ids=[KID], add_holders=["x"])
        await store.enqueue_mirror(job(asset))
    yield store
    await store.close()


def test_the_backoff_doubles_up_to_its_cap() -> None:
    drainer = MirrorDrainer(None, None, SETTINGS)  # type: ignore[arg-type]
    assert [drainer.backoff(n) for n in range(5)] == [0.05, 0.1, 0.2, 0.4, 0.4]
    assert drainer.backoff(10_000) == 0.4


async def test_a_round_takes_at_most_a_batch_and_retries_failures_later(
    records: SqliteKeyRecords,
) -> None:
    seen: list[str] = []

    async def failing(item: MirrorJob) -> str | None:
        seen.append(item.asset_id)
        return "target_http_503"

    drainer = MirrorDrainer(records, failing, SETTINGS)
    assert await drainer.drain_once() == DrainRound(0, 2)
    assert await drainer.drain_once() == DrainRound(0, 1)  # the third; the two wait
    assert await drainer.drain_once() == DrainRound(0, 0)
    assert sorted(seen) == ["a", "b", "c"]
    assert REGISTRY.get_sample_value("drm_gateway_key_mirror_queue") == 3
    await asyncio.sleep(SETTINGS.interval_seconds * 1.5)
    retried = await records.due_mirrors(10)
    assert {(j.attempts, j.last_error) for j in retried} == {(1, "target_http_503")}


async def test_a_written_job_leaves_the_queue_and_is_announced(records: SqliteKeyRecords) -> None:
    written: list[str] = []

    async def transfer(item: MirrorJob) -> str | None:
        if item.asset_id == "b":
            raise RuntimeError("unexpected")  # retried like a failure
        return None

    drainer = MirrorDrainer(
        records, transfer, SETTINGS, on_written=lambda item: written.append(item.asset_id)
    )
    assert await drainer.drain_once() == DrainRound(1, 1)
    assert await drainer.drain_once() == DrainRound(1, 0)
    assert written == ["a", "c"] and await records.count_mirrors() == 1
    await asyncio.sleep(SETTINGS.interval_seconds * 1.5)
    [left] = await records.due_mirrors(10)
    assert (left.asset_id, left.attempts, left.last_error) == ("b", 1, "RuntimeError")


async def test_run_keeps_draining_until_cancelled(records: SqliteKeyRecords) -> None:
    async def transfer(item: MirrorJob) -> str | None:
        return None

    task = asyncio.get_running_loop().create_task(MirrorDrainer(records, transfer, SETTINGS).run())
    for _ in range(100):
        if await records.count_mirrors() == 0:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await records.count_mirrors() == 0
