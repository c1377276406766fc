"""The key backfill: copy existing titles' keys from one provider to another, verified.

    run_backfill(job, records=, source=, target=, verifier=, checkpoint=, ...) -> BackfillReport

Every title of the input (an asset list, or the whole catalog) is streamed, a bounded queue
ahead of `concurrency` workers, so memory stays flat whatever the catalog size. A title is
transferred (`proxy.keys.transfer.transfer_title`: export, ingest, verify, record the holder)
when its key holders include the source and not the destination, and it has a drmResourceId
and key ids; any other is *skipped* with a reason (`skip_reason`). Retryable failures
(timeouts, resets, 5xx, catalog hiccups) are tried again with exponential backoff, up to
`max_attempts`; a run where many titles in a row still fail that way stops early (the
destination is probably down) rather than marking the whole catalog failed.

Checkpoint (`Checkpoint`, a small SQLite file in WAL mode): one row per title finished, written
in its own transaction after the title's last step. A rerun with the same checkpoint skips every
title it lists as done, already there or skipped, and retries those it lists as failed. A
`kill -9` at any point loses at most the titles in flight, which the rerun transfers again:
that is harmless because every step is idempotent (an ingest of keys the destination holds
reports them as already present, the catalog's holder set takes the same name twice).
Nothing of the catalog is held in memory, and the report totals are the checkpoint's, so they
cover the job across its runs.

Rate limit: a token bucket (`TokenBucket`) paces transfer attempts, retries included.
Metrics: `BackfillMetrics` on its own registry (the CLI serves it with --metrics-port).
A dry run calls no provider and writes nothing (not even the checkpoint): it only reports what
a run would do.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as MetricCounter

from proxy.catalog.base import CatalogEntry
from proxy.catalog.keys import KeyRecords, KeyRecordsError
from proxy.domain import ASSET_ID_PATTERN, KeyId
from proxy.keys.client import KeyApiClient
from proxy.keys.transfer import TransferOutcome, Verifier, transfer_title

Outcome = Literal["done", "already_there", "skipped", "failed"]
OUTCOMES: tuple[Outcome, ...] = ("done", "already_there", "skipped", "failed")
FINISHED: frozenset[str] = frozenset({"done", "already_there", "skipped"})
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_ATTEMPTS = 4
PAGE_SIZE = 500  # catalog entries per read of `--all`
SAMPLE_SIZE = 20  # titles a dry run names per outcome
_EPSILON = 1e-9


class BackfillUsageError(Exception):
    """The job cannot start as asked (a checkpoint of another job, an unreadable list)."""


def skip_reason(entry: CatalogEntry | None, source: str, target: str) -> str | None:
    """Why a title is not transferred from `source` to `target`; None: it is."""
    if entry is None:
        return "unknown_asset"
    if entry.key_holders is None:
        return "key_holders_unknown"
    if target in entry.key_holders:
        return "already_at_destination"
    if source not in entry.key_holders:
        return "not_at_source"
    if entry.drm_resource_id is None:
        return "no_drm_resource_id"
    if not entry.key_ids:
        return "no_key_ids"
    return None


# --- rate limit ----------------------------------------------------------------------------


class TokenBucket:
    """At most `burst` grants at once, refilled at `rate` per second; waiters are served in
    order. `clock` and `sleep` are injectable, so tests count grants in virtual time."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._stamp = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> bool:
        """Take one token, waiting for it if none is left; True if it had to wait."""
        async with self._lock:
            waited = False
            while True:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1 - _EPSILON:  # not 1: float error must not cost a wait
                    self._tokens = max(self._tokens - 1, 0.0)
                    return waited
                waited = True
                await self._sleep((1 - self._tokens) / self.rate)


# --- checkpoint ----------------------------------------------------------------------------

_CHECKPOINT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS job (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS titles (
        asset_id TEXT PRIMARY KEY,
        outcome TEXT NOT NULL,     -- done, already_there, skipped, failed
        reason TEXT NULL,
        attempts INTEGER NOT NULL,
        at REAL NOT NULL
    )""",
)
_MARK = (
    "INSERT OR REPLACE INTO titles (asset_id, outcome, reason, attempts, at) VALUES (?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class JobIdentity:
    """What a checkpoint belongs to: a rerun must name the same job."""

    source: str
    target: str
    input: str  # "all", or "assets:<absolute path of the list>"

    def as_rows(self) -> list[tuple[str, str]]:
        return [("source", self.source), ("target", self.target), ("input", self.input)]


class Checkpoint:
    """Which titles a job finished (see the module docstring). Each call is one short SQLite
    statement (WAL, synchronous=NORMAL: a commit costs no fsync, and survives a killed
    process; a power cut may lose the last ones, which the rerun transfers again)."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: Path, job: JobIdentity, *, dry_run: bool = False) -> Checkpoint:
        """The checkpoint at `path` (created for `job` unless `dry_run`: then a missing one
        reads as empty and nothing is written). BackfillUsageError if it belongs to another
        job or is not a checkpoint."""
        if dry_run and not path.exists():
            empty = sqlite3.connect(":memory:")
            _create_checkpoint_schema(empty)
            return cls(empty, None)
        try:
            conn = _connect_checkpoint(path, read_only=dry_run)
            stored = dict(conn.execute("SELECT name, value FROM job").fetchall())
        except sqlite3.Error as exc:
            raise BackfillUsageError(
                f"cannot use {path} as a backfill checkpoint ({exc})"
            ) from None
        if not stored and not dry_run:
            with conn:
                conn.executemany("INSERT INTO job VALUES (?, ?)", job.as_rows())
        elif stored and stored != dict(job.as_rows()):
            conn.close()
            raise BackfillUsageError(
                f"{path} is the checkpoint of another job ({_describe(stored)}), not of "
                f"{_describe(dict(job.as_rows()))}: give another --checkpoint"
            )
        return cls(conn, path)

    def outcome(self, asset_id: str) -> str | None:
        """The outcome the job recorded for this title, None if it has none yet."""
        row = self._conn.execute("SELECT outcome FROM titles WHERE asset_id = ?", (asset_id,))
        found = row.fetchone()
        return None if found is None else str(found[0])

    def mark(self, asset_id: str, outcome: Outcome, reason: str | None, attempts: int) -> None:
        """Record how the title ended (replacing an earlier failure)."""
        with self._conn:
            self._conn.execute(_MARK, (asset_id, outcome, reason, attempts, time.time()))

    def totals(self) -> dict[str, int]:
        """Titles per outcome, over every run of the job."""
        counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        query = "SELECT outcome, COUNT(*) FROM titles GROUP BY outcome"
        for outcome, count in self._conn.execute(query):
            counts[outcome] = count
        return counts

    def reasons(self, outcome: Outcome) -> dict[str, int]:
        """Titles per reason, of one outcome."""
        query = "SELECT reason, COUNT(*) FROM titles WHERE outcome = ? GROUP BY reason"
        return {str(reason): count for reason, count in self._conn.execute(query, (outcome,))}

    def titles(self, outcome: Outcome) -> Iterator[tuple[str, str | None]]:
        """(asset id, reason) of every title with that outcome, streamed in id order."""
        query = "SELECT asset_id, reason FROM titles WHERE outcome = ? ORDER BY asset_id"
        for asset_id, reason in self._conn.execute(query, (outcome,)):
            yield str(asset_id), reason

    def close(self) -> None:
        self._conn.close()


def _connect_checkpoint(path: Path, *, read_only: bool) -> sqlite3.Connection:
    if read_only:
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    conn = sqlite3.connect(path, timeout=10.0)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    _create_checkpoint_schema(conn)
    return conn


def _create_checkpoint_schema(conn: sqlite3.Connection) -> None:
    with conn:
        for statement in _CHECKPOINT_SCHEMA:
            conn.execute(statement)


def _describe(job: dict[str, str]) -> str:
    return f"{job.get('source')} -> {job.get('target')}, {job.get('input')}"


# --- metrics -------------------------------------------------------------------------------


class BackfillMetrics:
    """The backfill's Prometheus metrics, on a registry of their own (a backfill runs as its
    own process beside the gateway; its metrics never mix with a serving process's)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.titles = MetricCounter(
            "drm_gateway_backfill_titles",
            "Titles handled by the backfill, by outcome and reason ('-' for none).",
            ["outcome", "reason"],
            registry=reg,
        )
        self.keys = MetricCounter(
            "drm_gateway_backfill_keys", "Keys copied and verified.", registry=reg
        )
        self.retries = MetricCounter(
            "drm_gateway_backfill_retries",
            "Transfer attempts retried after a retryable failure, by reason.",
            ["reason"],
            registry=reg,
        )
        self.rate_limited = MetricCounter(
            "drm_gateway_backfill_rate_limit_waits",
            "Transfer attempts that waited for the rate limit.",
            registry=reg,
        )
        self.seconds = Histogram(
            "drm_gateway_backfill_transfer_seconds",
            "Duration of one title's transfer (export, ingest, verify, record).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=reg,
        )
        self.in_flight = Gauge(
            "drm_gateway_backfill_in_flight", "Titles being transferred now.", registry=reg
        )
        self.planned = Gauge(
            "drm_gateway_backfill_titles_planned",
            "Titles in the input (catalog size or list length); 0 while unknown.",
            registry=reg,
        )
        self.seen = Gauge(
            "drm_gateway_backfill_titles_seen", "Titles of the input gone through.", registry=reg
        )


# --- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackfillJob:
    """What to copy: `source` -> `target` for the titles of `assets_file` (None: the whole
    catalog), and how."""

    source: str
    target: str
    assets_file: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    retry_base_seconds: float = 0.5

    @property
    def identity(self) -> JobIdentity:
        where = "all" if self.assets_file is None else f"assets:{self.assets_file.resolve()}"
        return JobIdentity(self.source, self.target, where)

    @property
    def stop_after_failures(self) -> int:
        """Stop the run after this many titles in a row failed with retryable errors."""
        return max(25, 4 * self.concurrency)


@dataclass
class BackfillReport:
    """How a run went: this run's counts per (outcome, reason), the job's totals (from the
    checkpoint, over every run), and why the run stopped early, if it did."""

    job: BackfillJob
    this_run: Counter[tuple[str, str]] = field(default_factory=Counter)
    earlier: int = 0  # titles this run found finished by an earlier run
    totals: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)  # dry run: titles per outcome
    elapsed: float = 0.0
    stopped: str | None = None
    checkpoint: Checkpoint | None = None

    @property
    def ok(self) -> bool:
        """Nothing failed and the run went through its whole input."""
        failed = self.totals.get("failed", 0) if not self.job.dry_run else 0
        return self.stopped is None and failed == 0


Progress = Callable[[int], None]  # called with the titles gone through so far


class Backfill:
    """One run of a job (see the module docstring)."""

    def __init__(
        self,
        job: BackfillJob,
        *,
        records: KeyRecords,
        source: KeyApiClient | None,
        target: KeyApiClient | None,
        verifier: Verifier | None,
        checkpoint: Checkpoint,
        bucket: TokenBucket | None = None,
        metrics: BackfillMetrics | None = None,
        progress: Progress | None = None,
    ) -> None:
        if not job.dry_run and (source is None or target is None or verifier is None):
            raise ValueError("a backfill that is not a dry run needs both clients and a verifier")
        self.job = job
        self.records = records
        self.source = source
        self.target = target
        self.verifier = verifier
        self.checkpoint = checkpoint
        self.bucket = bucket
        self.metrics = metrics or BackfillMetrics()
        self.progress = progress
        self.report = BackfillReport(job, checkpoint=checkpoint)
        self._seen = 0
        self._failures_in_row = 0
        self._stop = asyncio.Event()
        self._error: Exception | None = None

    def stop(self, why: str) -> None:
        """Stop taking titles (those in flight finish); the run reports `why`."""
        if self.report.stopped is None:
            self.report.stopped = why
        self._stop.set()

    async def run(self) -> BackfillReport:
        """Go through the input; the report (totals from the checkpoint)."""
        started = time.monotonic()
        queue: asyncio.Queue[tuple[str, CatalogEntry | None] | None] = asyncio.Queue(
            maxsize=2 * self.job.concurrency
        )
        workers = [asyncio.create_task(self._work(queue)) for _ in range(self.job.concurrency)]
        try:
            await self._feed(queue)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        if self._error is not None:
            raise self._error
        self.report.elapsed = time.monotonic() - started
        self.report.totals = self.checkpoint.totals()
        self.report.reasons = {o: self.checkpoint.reasons(o) for o in ("skipped", "failed")}
        return self.report

    async def _feed(self, queue: asyncio.Queue[tuple[str, CatalogEntry | None] | None]) -> None:
        async for item in self._titles():
            if self._stop.is_set():
                return
            await queue.put(item)

    async def _titles(self) -> AsyncIterator[tuple[str, CatalogEntry | None]]:
        """(asset id, entry) per title of the input; the entry is looked up later for a list."""
        if self.job.assets_file is None:
            async for entry in self.records.iter_assets(PAGE_SIZE):
                yield entry.asset_id, entry
            return
        for asset_id in read_asset_list(self.job.assets_file):
            yield asset_id, None

    async def _work(self, queue: asyncio.Queue[tuple[str, CatalogEntry | None] | None]) -> None:
        """Handle titles until the end of the input; after a stop, drain the queue untouched
        (the rerun takes those titles). An unexpected error stops the run, raised at its end."""
        while (item := await queue.get()) is not None:
            if self._stop.is_set():
                continue
            try:
                await self._title(*item)
            except Exception as exc:
                self._error = self._error or exc
                self.stop(f"internal error ({type(exc).__name__})")

    async def _title(self, asset_id: str, entry: CatalogEntry | None) -> None:
        """Handle one title of the input, and count it."""
        if not ASSET_ID_PATTERN.match(asset_id):
            self._count("skipped", "invalid_asset_id", asset_id)
        elif self.checkpoint.outcome(asset_id) in FINISHED:
            self.report.earlier += 1
        else:
            await self._handle(asset_id, entry)
        self._seen += 1
        self.metrics.seen.set(self._seen)
        if self.progress is not None:
            self.progress(self._seen)

    async def _handle(self, asset_id: str, entry: CatalogEntry | None) -> None:
        if entry is None:
            try:
                entry = await self.records.get(asset_id)
            except KeyRecordsError:
                self._finish(asset_id, "failed", "catalog_unavailable", attempts=1, retryable=True)
                return
        reason = skip_reason(entry, self.job.source, self.job.target)
        if reason is not None:
            self._finish(asset_id, "skipped", reason)
        elif self.job.dry_run:
            self._count("done", "would_transfer", asset_id)
        else:
            assert entry is not None
            outcome, attempts = await self._transfer(entry)
            self._finish(
                asset_id,
                outcome.outcome,
                outcome.reason,
                attempts=attempts,
                retryable=outcome.retryable,
                keys=outcome.keys,
            )

    async def _transfer(self, entry: CatalogEntry) -> tuple[TransferOutcome, int]:
        """Transfer one title, retrying retryable failures with backoff."""
        assert self.source and self.target and self.verifier and entry.drm_resource_id
        attempt = 0
        while True:
            attempt += 1
            if self.bucket is not None and await self.bucket.acquire():
                self.metrics.rate_limited.inc()
            self.metrics.in_flight.inc()
            try:
                started = time.perf_counter()
                outcome = await transfer_title(
                    entry.asset_id,
                    entry.drm_resource_id,
                    [KeyId(kid) for kid in entry.key_ids],
                    source=self.source,
                    target=self.target,
                    verify=self.verifier,
                    records=self.records,
                    target_name=self.job.target,
                )
                self.metrics.seconds.observe(time.perf_counter() - started)
            finally:
                self.metrics.in_flight.dec()
            if not (outcome.retryable and attempt < self.job.max_attempts):
                return outcome, attempt
            self.metrics.retries.labels(outcome.reason or "-").inc()
            delay = self.job.retry_base_seconds * 2 ** (attempt - 1)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))

    def _finish(
        self,
        asset_id: str,
        outcome: Outcome,
        reason: str | None,
        *,
        attempts: int = 0,
        retryable: bool = False,
        keys: int = 0,
    ) -> None:
        """Record how a title ended (never in a dry run) and watch for a run of failures."""
        if not self.job.dry_run:
            self.checkpoint.mark(asset_id, outcome, reason, attempts)
        self._count(outcome, reason or "-", asset_id)
        self.metrics.keys.inc(keys)
        if outcome == "failed" and retryable:
            self._failures_in_row += 1
            if self._failures_in_row >= self.job.stop_after_failures:
                self.stop(
                    f"{self._failures_in_row} titles in a row failed with retryable errors "
                    f"(last: {reason}); rerun to resume once the cause is fixed"
                )
        elif outcome != "skipped":
            self._failures_in_row = 0

    def _count(self, outcome: str, reason: str, asset_id: str) -> None:
        self.report.this_run[(outcome, reason)] += 1
        self.metrics.titles.labels(outcome, reason).inc()
        if self.job.dry_run:
            sample = self.report.samples.setdefault(f"{outcome}:{reason}", [])
            if len(sample) < SAMPLE_SIZE:
                sample.append(asset_id)


def read_asset_list(path: Path) -> Iterator[str]:
    """The asset ids of a list, one a line (blank lines and `#` comments skipped), streamed.
    BackfillUsageError if it cannot be read."""
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                asset_id = line.split("#", 1)[0].strip()
                if asset_id:
                    yield asset_id
    except (OSError, UnicodeDecodeError) as exc:
        raise BackfillUsageError(f"cannot read the asset list {path} ({exc})") from None


def count_asset_list(path: Path) -> int:
    """How many asset ids the list names (one streamed pass, for the progress bar)."""
    return sum(1 for _ in read_asset_list(path))
