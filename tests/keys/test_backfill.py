"""The backfill run, in process: both emulated providers over loopback, a SQLite (or Redis)
catalog, the destination's real provider client, a real checkpoint file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog.base import CatalogSettings, RedisCatalogSettings
from proxy.catalog.keys import KeyRecords, open_key_records
from proxy.catalog.redis import import_to_redis
from proxy.dev.emulator import EmulatorSettings
from proxy.keys.backfill import (
    Backfill,
    BackfillJob,
    BackfillMetrics,
    BackfillReport,
    BackfillUsageError,
    Checkpoint,
    JobIdentity,
    TokenBucket,
    skip_reason,
)
from proxy.keys.client import key_clients
from proxy.keys.transfer import Verifier
from proxy.upstream.registry import build_provider
from tests.keys.backfill_stack import (
    Providers,
    Title,
    config_for,
    incoming_settings,
    key_id,
    make_titles,
    raw_config,
    running_providers,
    write_titles,
)
from tests.redis_server import RedisServer

CANDIDATES = make_titles(24)
OTHERS = [
    Title("x-at-both", "res-x-at-both", (key_id("x", 0),), ("legacy", "incoming")),
    Title("x-no-keys", "res-x-no-keys", ()),
    Title("x-no-res", None, (key_id("x", 1),)),
    Title("x-unknown-holders", "res-x-uh", (key_id("x", 2),), None),
    Title("x-elsewhere", "res-x-el", (key_id("x", 3),), ("other",)),
]


@dataclass
class Run:
    """Everything one backfill run needs; `run(job)` runs it to its report."""

    providers: Providers
    records: KeyRecords
    make_verifier: Callable[[], Awaitable[Verifier]]
    config: Any
    checkpoint: Path
    closing: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    async def run(
        self,
        job: BackfillJob,
        *,
        bucket: TokenBucket | None = None,
        metrics: BackfillMetrics | None = None,
    ) -> BackfillReport:
        clients = key_clients(self.config.providers)
        verifier = await self.make_verifier()
        checkpoint = Checkpoint.open(self.checkpoint, job.identity, dry_run=job.dry_run)
        try:
            backfill = Backfill(
                job,
                records=self.records,
                source=None if job.dry_run else clients["legacy"],
                target=None if job.dry_run else clients["incoming"],
                verifier=None if job.dry_run else verifier,
                checkpoint=checkpoint,
                bucket=bucket,
                metrics=metrics,
            )
            return await backfill.run()
        finally:
            for client in clients.values():
                await client.close()
            await verifier.provider.close()


MakeRun = Callable[..., Awaitable[Run]]


@pytest.fixture
async def make_run(tmp_path: Path) -> AsyncIterator[MakeRun]:
    runs: list[Run] = []
    contexts: list[Any] = []

    async def make(
        titles: list[Title] = CANDIDATES + OTHERS,
        *,
        incoming: EmulatorSettings | None = None,
        redis: RedisServer | None = None,
    ) -> Run:
        context = running_providers(None, incoming)
        providers = await context.__aenter__()
        contexts.append(context)
        db = write_titles(tmp_path / "catalog.db", titles)
        raw = raw_config(db, providers.legacy.url, providers.incoming.url)
        if redis is not None:
            settings = RedisCatalogSettings(url=redis.url)
            await import_to_redis(db.with_suffix(".jsonl"), settings)
            raw["catalog"] = {"backend": "redis", "redis": {"url": redis.url}}
        config = config_for(raw, tmp_path)
        records = open_key_records(config.catalog)

        async def verifier() -> Verifier:
            provider = build_provider(config.providers["incoming"])
            await provider.open()
            return Verifier(provider)

        run = Run(providers, records, verifier, config, tmp_path / "job.checkpoint")
        runs.append(run)
        return run

    yield make
    for run in runs:
        await run.records.close()
    for context in reversed(contexts):
        await context.__aexit__(None, None, None)


def job(**options: Any) -> BackfillJob:
    return BackfillJob(source="legacy", target="incoming", **options)


async def holders(records: KeyRecords, asset_id: str) -> frozenset[str] | None:
    entry = await records.get(asset_id)
    assert entry is not None
    return entry.key_holders


# --- a whole run -------------------------------------------------------------------------------


async def test_every_candidate_is_transferred_and_the_others_skipped(make_run: MakeRun) -> None:
    run = await make_run()
    metrics = BackfillMetrics()
    report = await run.run(job(concurrency=4), metrics=metrics)
    assert report.ok and report.stopped is None
    assert report.totals == {"done": 24, "already_there": 0, "skipped": 5, "failed": 0}
    assert report.reasons["skipped"] == {
        "already_at_destination": 1,
        "no_key_ids": 1,
        "no_drm_resource_id": 1,
        "key_holders_unknown": 1,
        "not_at_source": 1,
    }
    for title in CANDIDATES:
        assert await holders(run.records, title.asset_id) == frozenset({"legacy", "incoming"})
    counters = await run.providers.key_api(run.providers.incoming)
    assert (counters["ingested"], counters["already_present"], counters["conflicts"]) == (48, 0, 0)
    sample = metrics.registry.get_sample_value
    assert sample("drm_gateway_backfill_titles_total", {"outcome": "done", "reason": "-"}) == 24
    assert sample("drm_gateway_backfill_keys_total") == 48
    assert sample("drm_gateway_backfill_titles_seen") == 29
    assert sample("drm_gateway_backfill_in_flight") == 0


async def test_a_rerun_repeats_nothing(make_run: MakeRun) -> None:
    run = await make_run()
    await run.run(job())
    before = await run.providers.stats(run.providers.incoming)
    report = await run.run(job())
    after = await run.providers.stats(run.providers.incoming)
    assert report.earlier == 29 and sum(report.this_run.values()) == 0
    assert after["total"] == before["total"]  # not one request to the destination
    assert report.totals["done"] == 24 and report.ok


async def test_a_new_checkpoint_finds_the_titles_already_moved(make_run: MakeRun) -> None:
    run = await make_run()
    await run.run(job())
    run.checkpoint = run.checkpoint.with_name("fresh.checkpoint")
    report = await run.run(job())  # the catalog says they are at the destination now
    assert report.totals == {"done": 0, "already_there": 0, "skipped": 29, "failed": 0}
    assert report.reasons["skipped"]["already_at_destination"] == 25


async def test_an_asset_list_names_what_to_move(make_run: MakeRun, tmp_path: Path) -> None:
    run = await make_run()
    listed = tmp_path / "assets.txt"
    listed.write_text(
        "# the first three\nt-00000\n\nt-00001  # a comment\nt-00002\nno-such\nbad id\n"
    )
    report = await run.run(job(assets_file=listed))
    assert report.totals == {"done": 3, "already_there": 0, "skipped": 1, "failed": 0}
    assert report.reasons["skipped"] == {"unknown_asset": 1}
    assert report.this_run[("skipped", "invalid_asset_id")] == 1
    assert await holders(run.records, "t-00003") == frozenset({"legacy"})


async def test_a_checkpoint_of_another_job_is_refused(make_run: MakeRun, tmp_path: Path) -> None:
    run = await make_run()
    await run.run(job())
    listed = tmp_path / "assets.txt"
    listed.write_text("t-00000\n")
    with pytest.raises(BackfillUsageError, match="checkpoint of another job"):
        await run.run(job(assets_file=listed))
    (tmp_path / "garbage").write_text("not sqlite at all, not even close" * 40)
    with pytest.raises(BackfillUsageError, match="as a backfill checkpoint"):
        Checkpoint.open(tmp_path / "garbage", JobIdentity("a", "b", "all"))


async def test_a_dry_run_calls_and_writes_nothing(make_run: MakeRun) -> None:
    run = await make_run()
    db = Path(run.config.catalog.path)
    before = db.read_bytes(), db.stat().st_mtime_ns
    report = await run.run(job(dry_run=True))
    assert report.this_run[("done", "would_transfer")] == 24
    assert report.this_run[("skipped", "no_key_ids")] == 1
    assert len(report.samples["done:would_transfer"]) == 20
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert not run.checkpoint.exists()
    for emulator in (run.providers.legacy, run.providers.incoming):
        assert (await run.providers.stats(emulator))["total"] == 0


async def test_a_redis_catalog_is_backfilled_too(
    make_run: MakeRun, redis_server: RedisServer
) -> None:
    run = await make_run(redis=redis_server)
    report = await run.run(job(concurrency=3))
    assert report.totals["done"] == 24 and report.ok
    assert await holders(run.records, "t-00011") == frozenset({"legacy", "incoming"})


# --- failures ---------------------------------------------------------------------------------


async def test_failures_are_reported_with_their_reasons(make_run: MakeRun) -> None:
    title, mismatched = CANDIDATES[0], CANDIDATES[1]
    assert title.drm_resource_id and mismatched.drm_resource_id
    incoming = incoming_settings(resources={mismatched.drm_resource_id: "elsewhere"})
    run = await make_run(CANDIDATES[:4], incoming=incoming)
    await run.providers.ingest(
        run.providers.incoming, title.drm_resource_id, {title.key_ids[0]: b"\x07" * 16}
    )
    # The mismatched title's keys go in under a name its licenses do not use.
    await run.providers.ingest(
        run.providers.incoming,
        mismatched.drm_resource_id,
        {kid: b"\x08" * 16 for kid in mismatched.key_ids},
    )
    report = await run.run(job())
    assert not report.ok
    assert report.totals == {"done": 2, "already_there": 0, "skipped": 0, "failed": 2}
    assert report.reasons["failed"] == {"target_key_conflict": 2}
    assert report.checkpoint is not None
    assert list(report.checkpoint.titles("failed")) == [
        ("t-00000", "target_key_conflict"),
        ("t-00001", "target_key_conflict"),
    ]


async def test_a_destination_down_stops_the_run_and_a_rerun_resumes(make_run: MakeRun) -> None:
    titles = make_titles(60)
    run = await make_run(titles)
    await run.providers.faults(run.providers.incoming, status=503)
    report = await run.run(job(concurrency=2, max_attempts=2, retry_base_seconds=0.001))
    assert report.stopped is not None and "in a row failed with retryable errors" in report.stopped
    assert report.totals["failed"] >= 25 and report.totals["done"] == 0
    assert report.reasons["failed"] == {"target_EMULATED_STATUS": report.totals["failed"]}
    assert not report.ok
    # Back up: the rerun retries the failed titles and goes on with the rest.
    await run.providers.faults(run.providers.incoming)
    report = await run.run(job(concurrency=2))
    assert report.totals == {"done": 60, "already_there": 0, "skipped": 0, "failed": 0}
    assert report.ok
    counters = await run.providers.key_api(run.providers.incoming)
    assert counters["ingested"] == 120


async def test_retryable_failures_are_retried(make_run: MakeRun) -> None:
    run = await make_run(CANDIDATES)
    await run.providers.faults(run.providers.incoming, error_rate=0.3, seed=11)
    metrics = BackfillMetrics()
    report = await run.run(
        job(concurrency=4, max_attempts=20, retry_base_seconds=0.001), metrics=metrics
    )
    assert report.totals["done"] + report.totals["already_there"] == 24 and report.ok
    retries = sum(
        sample.value
        for metric in metrics.registry.collect()
        if metric.name == "drm_gateway_backfill_retries"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    assert retries > 0


# --- the rate limit ----------------------------------------------------------------------------


class VirtualClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class CountingBucket(TokenBucket):
    """A TokenBucket that remembers when (in its clock's time) it granted each token."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grants: list[float] = []

    async def acquire(self) -> bool:
        waited = await super().acquire()
        self.grants.append(self._clock())
        return waited


def most_in_window(grants: list[float], window: float) -> int:
    return max(sum(1 for t in grants if start <= t < start + window) for start in grants)


async def test_the_token_bucket_paces_grants() -> None:
    clock = VirtualClock()
    bucket = CountingBucket(10.0, 3, clock=clock, sleep=clock.sleep)
    waits = [await bucket.acquire() for _ in range(53)]
    assert waits.count(False) == 3  # the burst, then one wait per grant
    assert clock.now - 1000.0 == pytest.approx(5.0)  # 50 more at 10/s
    assert most_in_window(bucket.grants, 1.0) <= 10 + 3


async def test_the_backfill_honours_the_rate(make_run: MakeRun) -> None:
    run = await make_run(CANDIDATES)
    clock = VirtualClock()
    bucket = CountingBucket(5.0, 2, clock=clock, sleep=clock.sleep)
    metrics = BackfillMetrics()
    report = await run.run(job(concurrency=6), bucket=bucket, metrics=metrics)
    assert report.totals["done"] == 24
    # One grant per transfer attempt, at most rate x window + burst in any window.
    assert len(bucket.grants) == 24
    assert most_in_window(bucket.grants, 1.0) <= 5 + 2
    assert bucket.grants[-1] - bucket.grants[0] >= (24 - 2) / 5.0 - 1e-9
    assert metrics.registry.get_sample_value("drm_gateway_backfill_rate_limit_waits_total") == 22
    exports = (await run.providers.key_api(run.providers.legacy))["exported"]
    assert exports == 48  # every export went through the bucket


def test_the_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.5)


# --- the skip rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "reason"),
    [(title, reason) for title, reason in zip(
        [CANDIDATES[0], *OTHERS],
        [None, "already_at_destination", "no_key_ids", "no_drm_resource_id",
         "key_holders_unknown", "not_at_source"],
        strict=True,
    )],
)  # fmt: skip
def test_skip_reasons(title: Title, reason: str | None) -> None:
    from proxy.catalog.base import CatalogEntry

    entry = CatalogEntry(
        title.asset_id,
        title.drm_resource_id,
        None if title.holders is None else frozenset(title.holders),
        key_ids=title.key_ids,
    )
    assert skip_reason(entry, "legacy", "incoming") == reason
    assert skip_reason(None, "legacy", "incoming") == "unknown_asset"


def test_a_dry_run_opens_no_checkpoint_file(tmp_path: Path) -> None:
    identity = JobIdentity("legacy", "incoming", "all")
    checkpoint = Checkpoint.open(tmp_path / "none", identity, dry_run=True)
    assert checkpoint.totals()["done"] == 0 and checkpoint.path is None
    assert not (tmp_path / "none").exists()


def test_unused_settings_keep_their_defaults() -> None:
    assert CatalogSettings().backend == "sqlite"
