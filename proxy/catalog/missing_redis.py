"""The fleet-wide `MissingStore`: titles requested without a drmResourceId, counted by every
gateway sharing one Redis (used when the catalog backend is redis).

Layout (under the catalog's `key_prefix`):

- `{key_prefix}missing:titles`: a sorted set, member the asset id, score its request count
  across the fleet. ZINCRBY makes concurrent replicas' counts add up without a lock, and the
  set orders the list and finds the least requested titles to trim.
- `{key_prefix}missing:title:{asset_id}`: a hash per title: `f` first seen, `l` last seen
  (Unix time), `d:{drm}` the requests per DRM system. One hash per title rather than one hash
  for all: removing or trimming a title is one DEL, and reading a page is one HGETALL each.
- `{key_prefix}missing:evicted`: how many titles the cap has trimmed.

Nothing is written on the request path: `record` and `forget` coalesce into an in-memory
queue (bounded by distinct titles; a new title arriving when it is full is dropped and
counted), which `run` flushes about once a second in one pipeline (one round trip). The cap
(`max_titles`) is applied at the end of that pipeline by a small Lua script, so trimming the
set and deleting the trimmed titles' hashes is atomic (EVAL rather than EVALSHA: a few
hundred bytes a second, and no script cache to check or reload after a restart). The keys
are not in one hash slot: this needs a single Redis (or primary), as the catalog does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.catalog.missing import DEFAULT_MAX_TITLES, MissingListing, MissingTitle
from proxy.errors import CatalogUnavailable
from proxy.observability.logs import FailureLog, get_logger

log = get_logger("catalog")

DEFAULT_MAX_PENDING = 10_000
FLUSH_SECONDS = 1.0
_REFRESH_FLUSHES = 10  # re-read the fleet's list (for `forget`) every this many flushes

# KEYS: the sorted set, the evicted counter; ARGV: the cap, the per-title hash key prefix.
_TRIM = """
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over <= 0 then return 0 end
local gone = redis.call('ZRANGE', KEYS[1], 0, over - 1)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1)
for _, id in ipairs(gone) do redis.call('DEL', ARGV[2] .. id) end
redis.call('INCRBY', KEYS[2], over)
return over
"""


class MissingKeys:
    """The Redis keys of the fleet-wide missing list under one key prefix."""

    def __init__(self, key_prefix: str) -> None:
        self.titles = f"{key_prefix}missing:titles"
        self.evicted = f"{key_prefix}missing:evicted"
        self.title_prefix = f"{key_prefix}missing:title:"

    def title(self, asset_id: str) -> str:
        """The hash of one title's details."""
        return self.title_prefix + asset_id


def queue_removal(pipe: Any, keys: MissingKeys, asset_ids: Iterable[str]) -> None:
    """Add to `pipe` the commands that take `asset_ids` off the list (a sync that fills
    their drmResourceId uses it too)."""
    ids = list(asset_ids)
    if ids:
        pipe.zrem(keys.titles, *ids)
        pipe.delete(*(keys.title(asset_id) for asset_id in ids))


class _Pending:
    """Requests for one title not yet written: count per DRM system, first and last seen."""

    __slots__ = ("by_drm", "first_seen", "last_seen")

    def __init__(self, now: float) -> None:
        self.by_drm: dict[str, int] = {}
        self.first_seen = now
        self.last_seen = now


def _ignore_count(_: int) -> None:
    """The default observer."""


class RedisMissingTitles:
    """The fleet-wide store (see the module): queue in memory, flush in the background.

    `forget` queues a removal only for a title this replica knows to be listed (recorded
    here, or seen in the fleet's list, re-read every few flushes and on each `listing`): a set
    lookup for every other request. `on_size` is told the fleet's number of titles after each
    flush, `on_eviction` the number trimmed, `on_drop` the number dropped from a full queue.
    """

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        max_titles: int = DEFAULT_MAX_TITLES,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Callable[[], float] = time.time,
        on_size: Callable[[int], None] = _ignore_count,
        on_eviction: Callable[[int], None] = _ignore_count,
        on_drop: Callable[[int], None] = _ignore_count,
    ) -> None:
        if max_titles < 1 or max_pending < 1:
            raise ValueError("max_titles and max_pending must be at least 1")
        self.max_titles = max_titles
        self.max_pending = max_pending
        self.dropped = 0
        self._client = client
        self._keys = MissingKeys(key_prefix)
        self._clock = clock
        self._on_size = on_size
        self._on_eviction = on_eviction
        self._on_drop = on_drop
        self._pending: dict[str, _Pending] = {}
        self._removals: set[str] = set()
        self._listed: set[str] = set()
        self._flushes = 0
        # The type alone: a Redis error's message may quote a key.
        self._failures = FailureLog(
            log, "missing_titles_unavailable", describe=lambda exc: type(exc).__name__
        )

    def __contains__(self, asset_id: object) -> bool:
        return asset_id in self._pending or asset_id in self._listed

    def record(self, asset_id: str, drm: str) -> None:
        now = self._clock()
        pending = self._pending.get(asset_id)
        if pending is None:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                self._on_drop(1)
                return
            pending = self._pending[asset_id] = _Pending(now)
        pending.by_drm[drm] = pending.by_drm.get(drm, 0) + 1
        pending.last_seen = now
        self._removals.discard(asset_id)

    def forget(self, asset_id: str) -> bool:
        queued = self._pending.pop(asset_id, None) is not None
        if asset_id not in self._listed:
            return queued
        self._listed.discard(asset_id)
        self._removals.add(asset_id)
        return True

    async def run(self, interval: float = FLUSH_SECONDS) -> None:
        """Until cancelled: flush every `interval` seconds (a failed flush is logged, once
        per distinct cause, and its requests are lost: the queue stays bounded)."""
        while True:
            await asyncio.sleep(interval)
            await self.flush()

    async def flush(self) -> None:
        """Write what was queued in one pipeline, then trim to `max_titles`."""
        pending, self._pending = self._pending, {}
        removals, self._removals = self._removals, set()
        self._flushes += 1
        refresh = self._flushes % _REFRESH_FLUSHES == 0
        if not pending and not removals and not refresh:
            return
        try:
            await self._write(pending, removals, refresh=refresh)
        except (RedisError, OSError) as exc:
            self._failures.failed(exc)
            return
        self._failures.recovered()

    async def _write(
        self, pending: dict[str, _Pending], removals: set[str], *, refresh: bool
    ) -> None:
        keys = self._keys
        pipe = self._client.pipeline(transaction=False)
        queue_removal(pipe, keys, removals)
        for asset_id, seen in pending.items():
            title = keys.title(asset_id)
            pipe.zincrby(keys.titles, sum(seen.by_drm.values()), asset_id)
            pipe.hsetnx(title, "f", repr(seen.first_seen))
            pipe.hset(title, "l", repr(seen.last_seen))
            for drm, count in seen.by_drm.items():
                pipe.hincrby(title, f"d:{drm}", count)
        pipe.eval(_TRIM, 2, keys.titles, keys.evicted, self.max_titles, keys.title_prefix)
        pipe.zcard(keys.titles)
        if refresh:
            pipe.zrange(keys.titles, 0, -1)
        results = await pipe.execute()
        at = -2 if refresh else -1
        trimmed, size = int(results[at - 1]), int(results[at])
        self._listed.update(pending)
        if refresh:
            self._listed = {member.decode() for member in results[-1]}
        if trimmed:
            self._on_eviction(trimmed)
        self._on_size(size)

    async def listing(self, limit: int) -> MissingListing:
        """The fleet's top `limit` titles (ties in count: most recently seen first)."""
        keys = self._keys
        try:
            pipe = self._client.pipeline(transaction=False)
            pipe.zrevrange(keys.titles, 0, limit - 1, withscores=True)
            pipe.zcard(keys.titles)
            pipe.get(keys.evicted)
            top, total, evicted = await pipe.execute()
            pipe = self._client.pipeline(transaction=False)
            for member, _ in top:
                pipe.hgetall(keys.title(member.decode()))
            details = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failures.failed(exc)
            raise CatalogUnavailable() from exc
        titles = [
            _title(member.decode(), int(score), fields)
            for (member, score), fields in zip(top, details, strict=True)
        ]
        self._listed.update(title.asset_id for title in titles)
        titles.sort(key=lambda t: (t.count, t.last_seen), reverse=True)
        return MissingListing(titles, int(total), int(evicted or 0), self.max_titles, "fleet")

    async def close(self) -> None:
        """Flush what is queued, then close the client."""
        try:
            await self.flush()
        finally:
            await cast(Awaitable[None], self._client.aclose())


def _title(asset_id: str, count: int, fields: dict[bytes, bytes]) -> MissingTitle:
    text = {name.decode(): value.decode() for name, value in fields.items()}
    by_drm = {name[2:]: int(value) for name, value in text.items() if name.startswith("d:")}
    first = float(text.get("f", 0.0))
    return MissingTitle(asset_id, count, by_drm, first, float(text.get("l", first)))
