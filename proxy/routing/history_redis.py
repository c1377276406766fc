"""The fleet's change log of the routing rules, in the Redis of the catalog.

Every replica pushes its own entries (accepted or refused, who, the diff, its replica id) to
one list, `{key_prefix}rules:history`, newest at the head and capped by LTRIM in the same
transaction, so `GET /admin/rules/history?scope=fleet` lists every replica's changes newest
first. A change is recorded in the replica's own ring first; the push runs in a background
task, so a reload never waits on Redis. While Redis is down the entries wait in a bounded
queue and go out, in order, when it answers again.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import create_client
from proxy.errors import CatalogUnavailable
from proxy.observability.logs import FailureLog, get_logger
from proxy.routing.history import RulesChange, RulesHistory

log = get_logger("rules")

FLEET_MAX_ENTRIES = 1000
RETRY_SECONDS = 1.0


class RedisRulesHistory:
    """The fleet-wide change log (see the module); `add` queues, `run` pushes."""

    def __init__(
        self,
        client: Redis,
        *,
        key_prefix: str,
        replica: str,
        max_entries: int = FLEET_MAX_ENTRIES,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.key = f"{key_prefix}rules:history"
        self.replica = replica
        self.max_entries = max_entries
        self._client = client
        self._retry_seconds = retry_seconds
        self._pending: deque[str] = deque(maxlen=max_entries)  # oldest first
        self._wake = asyncio.Event()
        # The type alone: a Redis error's message may quote a key.
        self._failures = FailureLog(
            log, "rules_history_unavailable", describe=lambda exc: type(exc).__name__
        )

    def add(self, change: RulesChange) -> None:
        """Queue `change` for the fleet's list (a RulesHistory listener)."""
        self._pending.append(json.dumps({**change.to_dict(), "replica": self.replica}))
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: push what is queued as soon as there is something; after a
        failure, wait `retry_seconds` and try again (logged once per distinct cause)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self._retry_seconds)
                self._wake.set()

    async def flush(self) -> bool:
        """Push every queued entry in one transaction; False (entries kept) if Redis fails."""
        batch, self._pending = self._pending, deque(maxlen=self.max_entries)
        if not batch:
            return True
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.lpush(self.key, *batch)  # each onto the head: the newest ends first
            pipe.ltrim(self.key, 0, self.max_entries - 1)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failures.failed(exc)
            batch.extend(self._pending)  # those added meanwhile go after; the oldest drop
            self._pending = batch
            return False
        self._failures.recovered()
        return True

    async def entries(self, limit: int) -> list[dict[str, Any]]:
        """The fleet's newest `limit` entries; CatalogUnavailable if Redis cannot be read."""
        try:
            raw = await cast(Awaitable[list[bytes]], self._client.lrange(self.key, 0, limit - 1))
        except (RedisError, OSError) as exc:
            self._failures.failed(exc)
            raise CatalogUnavailable("The fleet's rules history (Redis) cannot be read.") from exc
        return [entry for entry in map(_entry, raw) if entry is not None]

    async def close(self) -> None:
        """Push what is still queued (once), then close the client."""
        try:
            await self.flush()
        finally:
            await cast(Awaitable[None], self._client.aclose())


def _entry(raw: bytes) -> dict[str, Any] | None:
    """One stored entry; None for anything that is not a JSON object (skipped)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


@asynccontextmanager
async def fleet_history(history: RulesHistory, store: RedisRulesHistory) -> AsyncIterator[None]:
    """Feed `history` (its entries so far, then each new one) to `store` and make it the
    fleet's log while the context is open; then push what is left and close it."""
    history.subscribe(store.add)
    history.fleet = store
    pusher = asyncio.get_running_loop().create_task(store.run())
    try:
        yield
    finally:
        history.unsubscribe(store.add)
        history.fleet = None
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        await store.close()


@asynccontextmanager
async def open_fleet_history(
    settings: RedisCatalogSettings | None, history: RulesHistory, *, replica: str
) -> AsyncIterator[None]:
    """With the Redis catalog's `settings`, share `history` with the fleet (see
    `fleet_history`); without, nothing: the history stays this replica's."""
    if settings is None:
        yield
        return
    store = RedisRulesHistory(
        create_client(settings), key_prefix=settings.key_prefix, replica=replica
    )
    async with fleet_history(history, store):
        yield
