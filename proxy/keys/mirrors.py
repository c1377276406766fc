"""The mirror retry queue's drain: key copies a SPEKE request left to retry.

With `mirror_failure: queue` a mirror write that fails becomes a `MirrorJob` in the catalog
store (ids only, never a key). A background task of the gateway serving SPEKE drains it: every
`interval_seconds` it takes at most `batch` due jobs, one at a time, and transfers each
(export from the source, ingest at the mirror, verify, add the mirror to the title's key
holders). A job that fails again is retried after `interval * 2**attempts` seconds, capped at
`max_backoff_seconds`; the queue keeps it until it succeeds, and the
`drm_gateway_key_mirror_queue` gauge shows how many wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from proxy.catalog.keys import KeyRecords, MirrorJob
from proxy.config.speke import MirrorQueueSettings
from proxy.observability import metrics
from proxy.observability.logs import get_logger

log = get_logger("key_mirrors")

# Transfers one job: None once the mirror holds the keys (and is recorded), else why not
# (a short, bounded description: never a key).
Transfer = Callable[[MirrorJob], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class DrainRound:
    """What one round of the drain did."""

    written: int = 0
    failed: int = 0


class MirrorDrainer:
    """Drains the mirror retry queue in bounded rounds, with backoff per job."""

    def __init__(
        self,
        records: KeyRecords,
        transfer: Transfer,
        settings: MirrorQueueSettings,
        *,
        on_written: Callable[[MirrorJob], object] | None = None,
    ) -> None:
        self._records = records
        self._transfer = transfer
        self._settings = settings
        self._on_written = on_written

    async def run(self) -> None:
        """Drain a round every `interval_seconds`, until cancelled; a round that fails as a
        whole (the catalog store down) is logged and the next round tries again."""
        while True:
            try:
                await self.drain_once()
            except Exception as exc:
                log.error("key_mirror_drain_failed", error=type(exc).__name__)
            await asyncio.sleep(self._settings.interval_seconds)

    async def drain_once(self) -> DrainRound:
        """Transfer up to `batch` due jobs; update the queue gauge."""
        written = failed = 0
        for job in await self._records.due_mirrors(self._settings.batch):
            if await self._attempt(job):
                written += 1
            else:
                failed += 1
        metrics.KEY_MIRROR_QUEUE.set(await self._records.count_mirrors())
        return DrainRound(written, failed)

    async def _attempt(self, job: MirrorJob) -> bool:
        """One transfer; the job leaves the queue on success, else waits its backoff."""
        try:
            error = await self._transfer(job)
        except Exception as exc:  # a bug or an unexpected failure: retried like the others
            error = type(exc).__name__
        if error is None:
            await self._records.finish_mirror(job)
            metrics.labelled(metrics.KEY_MIRROR_WRITES, job.target, "retry_ok").inc()
            log.info("key_mirror_written", asset_id=job.asset_id, provider=job.target)
            if self._on_written is not None:
                self._on_written(job)
            return True
        delay = self.backoff(job.attempts)
        await self._records.retry_mirror_later(job, error, delay)
        metrics.labelled(metrics.KEY_MIRROR_WRITES, job.target, "retry_failed").inc()
        log.warning(
            "key_mirror_retry_failed",
            asset_id=job.asset_id,
            provider=job.target,
            attempts=job.attempts + 1,
            error=error,
            retry_in_seconds=delay,
        )
        return False

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try of a job that failed `attempts + 1` times."""
        settings = self._settings
        delay: float = settings.interval_seconds * 2.0 ** min(attempts, 30)
        return min(settings.max_backoff_seconds, delay)
