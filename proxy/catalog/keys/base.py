"""What every KeyRecords backend shares: the Protocol, the mirror job, checks and merges."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from proxy.catalog.base import CatalogEntry
from proxy.catalog.importer import _ID, _PROVIDER
from proxy.domain import KeyId, parse_key_id
from proxy.errors import InvalidId

T = TypeVar("T")
DEFAULT_LEASE_SECONDS = 60.0
MAX_ERROR_CHARS = 200


class KeyRecordsError(Exception):
    """The catalog cannot record keys: a read-only backend, a store that failed, or a record
    that contradicts the catalog. The message says which, never holding a secret."""


@dataclass(frozen=True, slots=True)
class MirrorJob:
    """Copy `key_ids` of a title from provider `source` to `target` (no keys: a retry exports
    them again). `attempts` and `last_error` (a bounded code) say how it went so far."""

    asset_id: str
    drm_resource_id: str
    key_ids: tuple[KeyId, ...]
    source: str
    target: str
    attempts: int = 0
    last_error: str | None = None


class KeyRecords(Protocol):
    """The catalog's write side for keys (see the module docstring)."""

    async def asset_for_resource(self, drm_resource_id: str) -> str | None:
        """The asset whose drmResourceId this is; None if the catalog has none."""
        ...

    async def record(
        self,
        asset_id: str,
        *,
        drm_resource_id: str,
        key_ids: Sequence[KeyId],
        add_holders: Iterable[str],
    ) -> None:
        """Record that `add_holders` hold `key_ids` of the title (created if absent)."""
        ...

    async def get(self, asset_id: str) -> CatalogEntry | None:
        """The asset's entry as stored now (no cache); None if unknown."""
        ...

    def iter_assets(self, batch: int = 1000) -> AsyncIterator[CatalogEntry]:
        """Every entry, `batch` at a time (never the whole catalog in memory)."""
        ...

    async def count_assets(self) -> int:
        """How many assets the catalog holds (for a progress bar)."""
        ...

    async def enqueue_mirror(self, job: MirrorJob) -> None:
        """Queue a mirror write to retry (merged with the title's job for that target)."""
        ...

    async def due_mirrors(self, limit: int) -> list[MirrorJob]:
        """Up to `limit` jobs due now, claimed for the lease."""
        ...

    async def finish_mirror(self, job: MirrorJob) -> None:
        """The job succeeded: remove it (unless key ids were merged into it meanwhile)."""
        ...

    async def retry_mirror_later(self, job: MirrorJob, error: str, delay_seconds: float) -> None:
        """The job failed again with `error` (a code, no key): due again after the delay."""
        ...

    async def count_mirrors(self) -> int:
        """How many jobs are queued."""
        ...

    async def close(self) -> None: ...


def check_record(
    asset_id: str, drm_resource_id: str, key_ids: Sequence[KeyId], holders: Iterable[str]
) -> tuple[tuple[KeyId, ...], frozenset[str]]:
    """The key ids (validated, repeats dropped) and holders of a record; ValueError naming
    the first invalid value."""
    if not _ID.fullmatch(asset_id):
        raise ValueError(f"asset id {asset_id[:64]!r} is not a valid id")
    if not _ID.fullmatch(drm_resource_id):
        raise ValueError(f"drm_resource_id {drm_resource_id[:64]!r} is not a valid id")
    try:
        kids = tuple(dict.fromkeys(parse_key_id(kid) for kid in key_ids))
    except InvalidId:
        raise ValueError("a key id is not 32 hexadecimal characters") from None
    names = frozenset(holders)
    for name in names:
        if not _PROVIDER.fullmatch(name):
            raise ValueError(f"key holder {name[:40]!r} is not a provider name")
    return kids, names


def merged_key_ids(stored: Sequence[str], added: Sequence[KeyId]) -> tuple[str, ...]:
    """`stored` then the `added` ones it lacks, in order."""
    return tuple(dict.fromkeys([*stored, *added]))


def check_resource(asset_id: str, stored: str | None, given: str) -> None:
    if stored is not None and stored != given:
        raise KeyRecordsError(
            f"asset {asset_id!r} has drmResourceId {stored!r} in the catalog, not {given!r}"
        )


def bounded_error(error: str) -> str:
    return error[:MAX_ERROR_CHARS]
