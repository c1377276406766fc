"""Per-client rate limits: a token bucket per key (user id, client IP), pure and in memory.

Limits are per replica: each gateway process keeps its own buckets, so with N replicas
behind a load balancer a client can get up to N times the configured rate. That is the
intended trade-off (no shared store on the hot path); size the limits for one replica.

Memory is bounded: at most `max_keys` buckets, the least recently used dropped first. A bucket
untouched for `burst / rate` seconds is full again anyway, so dropping it loses nothing; only
a flood of distinct keys can evict a busy client's bucket early, which resets it to full.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class _Bucket:
    """Tokens left and when they were counted (mutable; one per key)."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    """A token bucket per key: `burst` requests at once, refilled at `rate_per_second`."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_per_second > 0:
            raise ValueError(f"rate_per_second: must be > 0, got {rate_per_second!r}")
        if burst < 1:
            raise ValueError(f"burst: must be >= 1, got {burst!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys: must be >= 1, got {max_keys!r}")
        self._rate = float(rate_per_second)
        self._burst = float(burst)
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many keys have a bucket."""
        return len(self._buckets)

    def check(self, key: str) -> float | None:
        """Take one token for `key`: None if allowed, else seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            self._buckets[key] = _Bucket(self._burst - 1.0, now)
            return None
        self._buckets.move_to_end(key)
        tokens = min(self._burst, bucket.tokens + (now - bucket.stamp) * self._rate)
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return None
        bucket.tokens = tokens
        return (1.0 - tokens) / self._rate
