"""A sliding time window of two counts (`total` and `hits`), for the circuit breaker (calls,
failures) and the retry budget (requests, retries).

The window is `slots` buckets of `seconds / slots` each; a count leaves the window whole
with its bucket, so the window covers between `seconds - seconds / slots` and `seconds`.
Pure: every method takes `now` (monotonic seconds) from the caller, who reads the clock
once per upstream try for all its bookkeeping. Adding costs a multiplication, a comparison
and two additions while the bucket is current: it sits on every upstream call.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
DEFAULT_SLOTS = 10


class SlidingWindow:
    """Counts `total` and `hits` over the last `seconds` (see the module docstring);
    `total` and `hits` are current as of the last call given a `now`."""

    __slots__ = (
        "_hits",
        "_index",
        "_per_second",
        "_size",
        "_slot",
        "_totals",
        "hits",
        "total",
    )

    def __init__(self, seconds: float, *, slots: int = DEFAULT_SLOTS) -> None:
        if seconds <= 0 or slots < 1:
            raise ValueError("a window needs seconds > 0 and at least one slot")
        self._per_second = slots / seconds
        self._size = slots
        self._totals = [0] * slots
        self._hits = [0] * slots
        self._slot = -slots  # before any time: the first count starts afresh
        self._index = 0
        self.total = 0
        self.hits = 0

    def add(self, now: float) -> None:
        """Count one in `total` (the hot path: a success, a request)."""
        slot = int(now * self._per_second)
        if slot != self._slot:
            self._advance(slot)
        self._totals[self._index] += 1
        self.total += 1

    def add_hit(self, now: float, *, total: bool = True) -> None:
        """Count one hit, and one in `total` too unless told not to."""
        slot = int(now * self._per_second)
        if slot != self._slot:
            self._advance(slot)
        self._hits[self._index] += 1
        self.hits += 1
        if total:
            self._totals[self._index] += 1
            self.total += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(total, hits) in the window ending at `now`."""
        slot = int(now * self._per_second)
        if slot != self._slot:
            self._advance(slot)
        return self.total, self.hits

    def clear(self) -> None:
        """Forget every count (a breaker that changes state starts afresh)."""
        self._totals = [0] * self._size
        self._hits = [0] * self._size
        self.total = self.hits = 0

    def _advance(self, slot: int) -> None:
        """Move to `slot`, dropping the buckets that left the window."""
        size = self._size
        if slot - self._slot >= size or slot < self._slot:  # all gone (or the clock stepped)
            self.clear()
        else:
            for passed in range(self._slot + 1, slot + 1):
                index = passed % size
                self.total -= self._totals[index]
                self.hits -= self._hits[index]
                self._totals[index] = self._hits[index] = 0
        self._slot = slot
        self._index = slot % size
