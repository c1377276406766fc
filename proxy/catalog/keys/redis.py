"""KeyRecords on the Redis catalog.

`record` is one MULTI/EXEC (under WATCH of the asset's hash: the key ids and holders are
merged with what is stored) that also publishes the asset id on the changes channel, so every
gateway drops it from its cache, and takes the title off the fleet's missing list. Reverse
lookup: `{prefix}resource:{drm_resource_id}` holds the asset id, set by `record` and by the scan
fallback; a hit is checked against the asset's hash (an entry left by a change is ignored).
`catalog import` and `catalog sync` maintain that key too (`queue_row`: one more key per asset
with a drmResourceId), so a title they wrote is found with one GET and one HGET. A lookup
that misses still SCANs every asset hash (pipelined, a batch per round trip, Redis never
blocked), for catalogs written before the index existed; a resource id the catalog does not
hold costs that scan each time (SPEKE records a new title on its first request, so once per
title; `?asset=` skips the lookup). The queue: a sorted set `{prefix}mirror:due` (member
`"{target} {asset_id}"`, score when due) and a hash per job
`{prefix}mirror:job:{target}:{asset_id}`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

from proxy.catalog.base import CatalogEntry, RedisCatalogSettings
from proxy.catalog.keys.base import (
    DEFAULT_LEASE_SECONDS,
    KeyRecordsError,
    MirrorJob,
    T,
    bounded_error,
    check_record,
    check_resource,
    merged_key_ids,
)
from proxy.catalog.missing_redis import MissingKeys, queue_removal
from proxy.catalog.redis import (
    GarbledValue,
    asset_glob,
    asset_key,
    check_url,
    create_client,
    decode_fields,
    encode_changes,
    read_entries,
    scan_asset_ids,
)
from proxy.domain import KeyId


def _raw_kids(kids: Iterable[str]) -> bytes:
    return b"".join(bytes.fromhex(kid) for kid in kids)


def _hex_kids(raw: bytes) -> tuple[KeyId, ...]:
    return tuple(KeyId(raw[at : at + 16].hex()) for at in range(0, len(raw), 16))


class RedisKeyRecords:
    """KeyRecords on the Redis catalog (see the module docstring for the layout)."""

    def __init__(
        self,
        settings: RedisCatalogSettings,
        *,
        client: Redis | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        check_url(settings.url)
        self._url = settings.url
        self._prefix = settings.key_prefix
        self._channel = settings.changes_channel
        self._missing = MissingKeys(settings.key_prefix)
        self._client = client or create_client(settings)
        self._lease = lease_seconds
        self._due = f"{self._prefix}mirror:due"

    def __repr__(self) -> str:
        return f"RedisKeyRecords({self._url!r})"

    def _resource_key(self, drm_resource_id: str) -> str:
        return f"{self._prefix}resource:{drm_resource_id}"

    def _job_key(self, target: str, asset_id: str) -> str:
        return f"{self._prefix}mirror:job:{target}:{asset_id}"

    async def asset_for_resource(self, drm_resource_id: str) -> str | None:
        return await self._guard(self._asset_for_resource(drm_resource_id))

    async def _asset_for_resource(self, drm_resource_id: str) -> str | None:
        index = self._resource_key(drm_resource_id)
        raw = await cast(Awaitable[bytes | None], self._client.get(index))
        if raw is not None:
            asset_id = raw.decode()
            stored = await cast(
                Awaitable[bytes | None], self._client.hget(asset_key(self._prefix, asset_id), "r")
            )
            if stored is not None and stored.decode() == drm_resource_id:
                return asset_id
            await self._client.delete(index)  # left by a change: find it again
        return await self._scan_for_resource(drm_resource_id)

    async def _scan_for_resource(self, drm_resource_id: str, batch: int = 1000) -> str | None:
        """Every asset hash, a batch per round trip, indexing each (SET NX) as it passes;
        stops at the first holding `drm_resource_id`."""
        keys: list[bytes] = []
        async for key in self._client.scan_iter(match=asset_glob(self._prefix), count=batch):
            keys.append(cast(bytes, key))
            if len(keys) >= batch:
                found = await self._index_batch(keys, drm_resource_id)
                if found is not None:
                    return found
                keys = []
        return await self._index_batch(keys, drm_resource_id) if keys else None

    async def _index_batch(self, keys: list[bytes], wanted: str) -> str | None:
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "r")
        values = await pipe.execute()
        start = len(asset_key(self._prefix, ""))
        pipe = self._client.pipeline(transaction=False)
        found = None
        for key, value in zip(keys, values, strict=True):
            if not value:
                continue
            asset_id, resource = key.decode()[start:], value.decode()
            pipe.set(self._resource_key(resource), asset_id, nx=True)
            if resource == wanted and found is None:
                found = asset_id
                pipe.set(self._resource_key(resource), asset_id)
        await pipe.execute()
        return found

    async def record(
        self,
        asset_id: str,
        *,
        drm_resource_id: str,
        key_ids: Sequence[KeyId],
        add_holders: Iterable[str],
    ) -> None:
        kids, holders = check_record(asset_id, drm_resource_id, key_ids, add_holders)
        key = asset_key(self._prefix, asset_id)

        async def write(pipe: Pipeline) -> None:
            fields = await cast(Awaitable[dict[bytes, bytes]], pipe.hgetall(key))
            entry = decode_fields(asset_id, fields) if fields else None
            stored_kids: tuple[str, ...] = () if entry is None else entry.key_ids
            names = holders
            if entry is not None:
                check_resource(asset_id, entry.drm_resource_id, drm_resource_id)
                names = names | (entry.key_holders or frozenset())
            _begin(pipe)
            mapping = {
                "r": drm_resource_id,
                "h": "|".join(sorted(names)),
                "k": _raw_kids(merged_key_ids(stored_kids, kids)),
            }
            pipe.hset(key, mapping=cast(dict[Any, Any], mapping))
            pipe.set(self._resource_key(drm_resource_id), asset_id)
            queue_removal(pipe, self._missing, [asset_id])
            pipe.publish(self._channel, encode_changes([asset_id]))

        await self._guard(self._transact(key, write))

    async def get(self, asset_id: str) -> CatalogEntry | None:
        async def lookup() -> CatalogEntry | None:
            key = asset_key(self._prefix, asset_id)
            fields = await cast(Awaitable[dict[bytes, bytes]], self._client.hgetall(key))
            return decode_fields(asset_id, fields) if fields else None

        return await self._guard(lookup())

    async def iter_assets(self, batch: int = 1000) -> AsyncIterator[CatalogEntry]:
        """Every asset hash, by SCAN: one that changes during the scan may come twice (SCAN's
        own guarantee: every asset present throughout comes at least once)."""
        try:
            async for ids in scan_asset_ids(self._client, self._prefix, batch):
                for entry in await read_entries(self._client, self._prefix, ids):
                    yield entry
        except (RedisError, OSError, GarbledValue) as exc:
            raise KeyRecordsError(f"Redis catalog {self._url}: {exc}") from exc

    async def count_assets(self) -> int:
        async def count() -> int:
            total = 0
            async for ids in scan_asset_ids(self._client, self._prefix, 1000):
                total += len(ids)
            return total

        return await self._guard(count())

    async def enqueue_mirror(self, job: MirrorJob) -> None:
        kids, _ = check_record(job.asset_id, job.drm_resource_id, job.key_ids, [job.target])
        key = self._job_key(job.target, job.asset_id)

        async def write(pipe: Pipeline) -> None:
            stored = await cast(Awaitable[bytes | None], pipe.hget(key, "k"))
            merged = merged_key_ids(_hex_kids(stored or b""), kids)
            _begin(pipe)
            fields = {"r": job.drm_resource_id, "k": _raw_kids(merged), "s": job.source}
            pipe.hset(key, mapping=cast(dict[Any, Any], fields))
            if stored is None:
                pipe.hset(key, "a", job.attempts)
                if job.last_error is not None:
                    pipe.hset(key, "e", bounded_error(job.last_error))
            pipe.zadd(self._due, {_member(job): time.time()})

        await self._guard(self._transact(key, write))

    async def due_mirrors(self, limit: int) -> list[MirrorJob]:
        async def claim(pipe: Pipeline) -> list[MirrorJob]:
            now = time.time()
            members = cast(
                list[bytes],
                await pipe.zrangebyscore(self._due, "-inf", now, start=0, num=limit),
            )
            _begin(pipe)
            for member in members:
                pipe.zadd(self._due, {member: now + self._lease})
                pipe.hgetall(self._job_key(*_split_member(member)))
            results = await pipe.execute()
            return [
                self._job_of(member, fields)
                for member, fields in zip(members, results[1::2], strict=True)
                if fields
            ]

        return await self._guard(self._transact(self._due, claim))

    def _job_of(self, member: bytes, fields: dict[bytes, bytes]) -> MirrorJob:
        target, asset_id = _split_member(member)
        error = fields.get(b"e")
        return MirrorJob(
            asset_id=asset_id,
            drm_resource_id=fields[b"r"].decode(),
            key_ids=_hex_kids(fields.get(b"k", b"")),
            source=fields[b"s"].decode(),
            target=target,
            attempts=int(fields.get(b"a", b"0")),
            last_error=None if error is None else error.decode(errors="replace"),
        )

    async def finish_mirror(self, job: MirrorJob) -> None:
        key = self._job_key(job.target, job.asset_id)

        async def finish(pipe: Pipeline) -> None:
            stored = await cast(Awaitable[bytes | None], pipe.hget(key, "k"))
            if stored is not None and stored != _raw_kids(job.key_ids):
                return  # key ids merged since the claim: it stays due
            _begin(pipe)
            pipe.delete(key)
            pipe.zrem(self._due, _member(job))

        await self._guard(self._transact(key, finish))

    async def retry_mirror_later(self, job: MirrorJob, error: str, delay_seconds: float) -> None:
        key = self._job_key(job.target, job.asset_id)

        async def retry(pipe: Pipeline) -> None:
            if not await pipe.exists(key):
                return  # finished meanwhile
            _begin(pipe)
            pipe.hincrby(key, "a", 1)
            pipe.hset(key, "e", bounded_error(error))
            pipe.zadd(self._due, {_member(job): time.time() + delay_seconds})

        await self._guard(self._transact(key, retry))

    async def count_mirrors(self) -> int:
        return int(await self._guard(self._client.zcard(self._due)))

    async def close(self) -> None:
        await self._client.aclose()

    async def _transact(self, key: str, body: Callable[[Pipeline], Awaitable[T]]) -> T:
        """`body(pipe)` under WATCH of `key`: it reads, calls `_begin(pipe)` and queues its
        writes (or returns without, writing nothing); they are executed as one MULTI/EXEC
        (unless `body` did so itself), and all of it retried if `key` changed meanwhile."""
        while True:
            async with self._client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    result = await body(pipe)
                    if pipe.explicit_transaction:
                        await pipe.execute()
                    return result
                except WatchError:
                    continue

    async def _guard(self, work: Awaitable[T]) -> T:
        """`work`, a Redis failure or a garbled value turned into KeyRecordsError."""
        try:
            return await work
        except (RedisError, OSError, GarbledValue) as exc:
            raise KeyRecordsError(f"Redis catalog {self._url}: {exc}") from exc


def _begin(pipe: Pipeline) -> None:
    """Start the MULTI block of a watched pipeline."""
    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py


def _member(job: MirrorJob) -> str:
    return f"{job.target} {job.asset_id}"


def _split_member(member: bytes) -> tuple[str, str]:
    target, _, asset_id = member.decode().partition(" ")
    return target, asset_id
