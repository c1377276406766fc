"""Load shedding: at most `max_requests` player requests in flight per worker, a bounded
queue in front, and an immediate 503 with Retry-After beyond it.

A request over the cap waits for a slot for at most `queue_seconds`, with at most
`max_queued` others; a request that cannot even queue, or whose wait runs out, is refused with
`Overloaded` (503, `Retry-After: 1`) before any catalog or provider work, so an overload
answers fast instead of piling up timeouts. Per provider the connection pool and its bounded
slot wait (`resilience.pool_wait_seconds`) do the same one level down.
"""

from __future__ import annotations

import asyncio

from proxy.errors import Overloaded

# Why a request was refused as overloaded (the `detail` of drm_gateway_refused_requests_total).
OVERLOAD_DETAILS = ("queue_full", "queue_timeout")


class Admission:
    """Admits player requests: `async with admission.slot(): ...` around the handler."""

    def __init__(self, max_requests: int, max_queued: int, queue_seconds: float) -> None:
        self._slots = asyncio.Semaphore(max_requests)
        self._max_queued = max_queued
        self._queue_seconds = queue_seconds
        self.queued = 0
        self.in_flight = 0  # holding a slot (the fleet view shows it)

    async def acquire(self) -> None:
        """Take a slot, queueing within the bounds; raise Overloaded beyond them."""
        if not self._slots.locked():
            await self._slots.acquire()  # a free slot: taken without waiting
            self.in_flight += 1
            return
        if self.queued >= self._max_queued:
            raise Overloaded(detail=OVERLOAD_DETAILS[0])
        self.queued += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self._queue_seconds)
        except TimeoutError:
            raise Overloaded(detail=OVERLOAD_DETAILS[1]) from None
        finally:
            self.queued -= 1
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._slots.release()
