"""The catalog's write side for keys: which providers hold a title's keys, and the mirror queue.

The SPEKE endpoint and `drm-gateway backfill` record here what they wrote where, so license
routing can move a title at once; the gateway itself only reads the catalog.

    open_key_records(settings) -> KeyRecords   (sqlite file or redis; http: KeyRecordsError)
      asset_for_resource(drm_resource_id) -> asset id | None
      record(asset_id, drm_resource_id=, key_ids=, add_holders=)
      get(asset_id) -> CatalogEntry | None,  iter_assets(batch) -> every entry, count_assets()
      enqueue_mirror(job), due_mirrors(limit), finish_mirror(job),
      retry_mirror_later(job, error, delay_seconds), count_mirrors()
      close()

`record` creates the asset if absent, adds key ids (in order, no repeats) and holders (a set;
unknown holders become exactly the ones added: whoever records knows where the keys are), and
sets the drmResourceId if the asset had none (a different one is a KeyRecordsError). Tags are
never touched.

The mirror queue holds jobs "copy these key ids of this title from `source` to `target`" that
failed and are retried later. It holds NO keys: a retry exports them again from the source,
so the store never has key material at rest. One job per (asset, target): enqueueing again
merges the key ids (a live channel's new period) and makes it due now. `due_mirrors` claims
the jobs it returns for `lease_seconds` (another drainer skips them meanwhile; a drainer that
dies leaves them due again after the lease). `finish_mirror` removes a job only if no key id
was merged into it since it was claimed (else it stays due).

Backends: `sqlite.py` (the embedded catalog file) and `redis.py`; the http backend is
read-only.
"""

from __future__ import annotations

from proxy.catalog.base import CatalogSettings
from proxy.catalog.keys.base import (
    DEFAULT_LEASE_SECONDS,
    KeyRecords,
    KeyRecordsError,
    MirrorJob,
)
from proxy.catalog.keys.redis import RedisKeyRecords
from proxy.catalog.keys.sqlite import SqliteKeyRecords

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "KeyRecords",
    "KeyRecordsError",
    "MirrorJob",
    "RedisKeyRecords",
    "SqliteKeyRecords",
    "open_key_records",
]


def open_key_records(
    settings: CatalogSettings, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
) -> KeyRecords:
    """The configured catalog's write side; KeyRecordsError for a backend that cannot be
    written (http: the metadata service is read-only) or a missing setting."""
    if settings.backend == "sqlite":
        if settings.path is None:
            raise KeyRecordsError("catalog backend 'sqlite' needs a path")
        return SqliteKeyRecords(settings.path, lease_seconds=lease_seconds)
    if settings.backend == "redis":
        if settings.redis is None:
            raise KeyRecordsError("catalog backend 'redis' needs its 'redis' settings")
        return RedisKeyRecords(settings.redis, lease_seconds=lease_seconds)
    if settings.backend == "http":
        raise KeyRecordsError(
            "catalog backend 'http' is read-only: key ids and key holders cannot be recorded "
            "there (use a sqlite or redis catalog, or record them in the metadata service)"
        )
    raise KeyRecordsError(f"unknown catalog backend '{settings.backend}'")
