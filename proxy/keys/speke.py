"""The SPEKE v2 flow: a packager's CPIX request in, the keys answered and written where the
rules' `keys:` section says. No HTTP here (proxy/server/speke.py is the edge).

    1. parse the document (CpixError -> InvalidCpix, HTTP 422 with the spec's message)
    2. the asset: `?asset=` if given, else the catalog asset whose drmResourceId is the
       document's CPIX@contentId (UnknownContent, 422, when there is none); an asset that
       already has another drmResourceId is refused (ContentIdConflict, 422)
    3. the key source and mirrors for the asset (`keys:` of the active rules file)
    4. the keys: those the packager sent in ContentKey/Data are ingested at the source, the
       others the source generates (a retry gets the same keys back: the source keeps them)
    5. every mirror is written the same keys, concurrently. A failed write fails the request
       (KeyMirrorFailed, 502, or 503 when a retry may succeed), unless the rule says
       `mirror_failure: queue`: then a MirrorJob (ids only, never a key) goes on the durable
       retry queue and that mirror is not recorded as a holder until the queue writes it
    6. the catalog records the asset's drmResourceId, key ids and key holders (the source
       and every mirror written), so license routing can move the title at once
    7. the answer: the document with every key and the DRM signalling, pointing players at
       this gateway (`Signaling`):
         HLS AES-128 key URI   {public_base_url}/v1/keys/{asset_id}/{kid, 32 hex}
         FairPlay key URI      skd://{asset_id}   (the app asks /v1/license/fairplay/{asset_id})
         PlayReady LA_URL      {public_base_url}/v1/license/playready/{asset_id}

Keys live in memory for one request only; they are never logged, put in an error or a repr.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from proxy.catalog.keys import KeyRecords, KeyRecordsError, MirrorJob
from proxy.domain import AssetId, KeyId, asset_id_or_none, parse_asset_id
from proxy.errors import (
    CatalogUnavailable,
    ContentIdConflict,
    InvalidCpix,
    KeyConflict,
    KeyMirrorFailed,
    KeySourceFailed,
    NoKeyPolicy,
    UnknownContent,
)
from proxy.keys.client import KeyApiClient, KeyApiError
from proxy.keys.cpix import CpixError, CpixRequest, Signaling, parse_request, render_response
from proxy.keys.policy import KeyDecision, KeyPolicy
from proxy.observability import metrics
from proxy.observability.logs import get_logger

log = get_logger("speke")
T = TypeVar("T")

# The provider error code a key API answers when a key id already has another key.
KEY_CONFLICT_CODE = "key_conflict"


class KeyPolicySource(Protocol):
    """Where the active `keys:` section comes from (the rules watcher's active RuleSet)."""

    def __call__(self) -> KeyPolicy | None: ...


@dataclass(frozen=True, slots=True)
class SpekeAnswer:
    """What one SPEKE request did: the CPIX answer, and for the log line what was decided."""

    document: bytes = field(repr=False)
    asset_id: AssetId
    decision: KeyDecision
    key_count: int
    holders: tuple[str, ...]  # recorded as key holders now
    queued: tuple[str, ...]  # mirrors left to the retry queue


@dataclass(frozen=True, slots=True)
class _Title:
    """The asset the document is for, its drmResourceId (CPIX@contentId) and key ids."""

    asset_id: AssetId
    content_id: str
    kids: tuple[KeyId, ...]
    tags: frozenset[str]


def signaling_for(public_base_url: str, asset_id: AssetId) -> Signaling:
    """The URLs players get in the answer for `asset_id`: all point at this gateway."""
    base = public_base_url.rstrip("/")
    return Signaling(
        aes128_key_uri=lambda kid: f"{base}/v1/keys/{asset_id}/{kid}",
        fairplay_uri=lambda kid: f"skd://{asset_id}",
        playready_la_url=lambda: f"{base}/v1/license/playready/{asset_id}",
    )


class SpekeService:
    """Answers SPEKE requests: key source and mirrors from the rules, keys from the providers'
    key APIs, holders into the catalog. `on_recorded(asset_id)` is called once the catalog
    holds a title's new record (the gateway drops the title from its catalog cache)."""

    def __init__(
        self,
        *,
        policy: KeyPolicySource,
        clients: Mapping[str, KeyApiClient],
        records: KeyRecords,
        public_base_url: str,
        on_recorded: Callable[[str], object] | None = None,
    ) -> None:
        self._policy = policy
        self._clients = clients
        self._records = records
        self._base_url = public_base_url
        self._on_recorded = on_recorded

    async def answer(
        self, body: bytes, speke_version: str | None, asset: str | None
    ) -> SpekeAnswer:
        """The CPIX answer for a packager's request (a GatewayError subclass otherwise)."""
        request = _parse(body, speke_version)
        policy = self._policy()
        if policy is None:
            raise NoKeyPolicy()
        title = await self._title(request, asset)
        decision = policy.decide(title.asset_id, title.tags)
        keys = await self._source_keys(decision.source, title, request.packager_keys)
        written, queued = await self._write_mirrors(decision, title, keys)
        holders = (decision.source, *written)
        await self._record(title, holders, decision, queued)
        document = render_response(request, keys, signaling_for(self._base_url, title.asset_id))
        return SpekeAnswer(document, title.asset_id, decision, len(keys), holders, queued)

    async def _title(self, request: CpixRequest, asset: str | None) -> _Title:
        """The asset the request is for, checked against what the catalog knows of it."""
        content_id = request.content_id
        if asset_id_or_none(content_id) is None:
            raise InvalidCpix(
                "Invalid CPIX@contentId: it is the drmResourceId, 1-128 of [A-Za-z0-9._:-]"
            )
        if asset is not None:
            asset_id = parse_asset_id(asset)
        else:
            found = await _catalog(self._records.asset_for_resource(content_id))
            if found is None:
                raise UnknownContent()
            asset_id = parse_asset_id(found)
        entry = await _catalog(self._records.get(asset_id))
        tags: frozenset[str] = frozenset()
        if entry is not None:
            if entry.drm_resource_id not in (None, content_id):
                raise ContentIdConflict()
            tags = entry.tags
        return _Title(asset_id, content_id, request.kids, tags)

    async def _source_keys(
        self, source: str, title: _Title, given: Mapping[KeyId, bytes]
    ) -> dict[KeyId, bytes]:
        """The packager's keys ingested at the source, the rest generated by it."""
        client = self._clients[source]
        resource = _resource_id(client, title)
        keys = {kid: given[kid] for kid in title.kids if kid in given}
        missing = [kid for kid in title.kids if kid not in given]
        try:
            if keys:
                await client.ingest(resource, keys)
            if missing:
                generated = await client.generate(resource, missing)
                keys.update({kid: generated[kid] for kid in missing})
        except KeyApiError as exc:
            raise _provider_error(exc, KeySourceFailed) from None
        except KeyError:
            raise KeySourceFailed(source, retryable=False, provider_error="missing_key") from None
        return keys

    async def _write_mirrors(
        self, decision: KeyDecision, title: _Title, keys: Mapping[KeyId, bytes]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(mirrors written, mirrors queued); raises when a write fails and may not queue."""
        mirrors = decision.mirrors
        results = await asyncio.gather(*(self._write_mirror(name, title, keys) for name in mirrors))
        failures = [(name, error) for name, error in zip(mirrors, results, strict=True) if error]
        written = tuple(name for name, error in zip(mirrors, results, strict=True) if not error)
        for name in written:
            metrics.labelled(metrics.KEY_MIRROR_WRITES, name, "ok").inc()
        if failures and decision.mirror_failure == "fail":
            for name, _ in failures:
                metrics.labelled(metrics.KEY_MIRROR_WRITES, name, "failed").inc()
            name, error = failures[0]
            assert error is not None
            raise _provider_error(error, KeyMirrorFailed)
        return written, tuple(name for name, _ in failures)

    async def _write_mirror(
        self, name: str, title: _Title, keys: Mapping[KeyId, bytes]
    ) -> KeyApiError | None:
        """None once `name` holds the keys, else why not."""
        client = self._clients[name]
        try:
            await client.ingest(_resource_id(client, title), keys)
        except KeyApiError as exc:
            log.warning(
                "key_mirror_write_failed", provider=name, code=exc.code, retryable=exc.retryable
            )
            return exc
        return None

    async def _record(
        self,
        title: _Title,
        holders: Sequence[str],
        decision: KeyDecision,
        queued: Sequence[str],
    ) -> None:
        """Record the title's holders, then queue the mirrors still to write (the drain adds
        each as a holder once written, so the record must exist first)."""
        records = self._records
        await _catalog(
            records.record(
                title.asset_id,
                drm_resource_id=title.content_id,
                key_ids=title.kids,
                add_holders=holders,
            )
        )
        for name in queued:
            job = MirrorJob(title.asset_id, title.content_id, title.kids, decision.source, name)
            await _catalog(records.enqueue_mirror(job))
            metrics.labelled(metrics.KEY_MIRROR_WRITES, name, "queued").inc()
        if queued:
            metrics.KEY_MIRROR_QUEUE.set(await _catalog(records.count_mirrors()))
        if self._on_recorded is not None:
            self._on_recorded(title.asset_id)


async def _catalog(work: Awaitable[T]) -> T:
    """`work` on the key records; a store that fails is CatalogUnavailable (503: retry)."""
    try:
        return await work
    except KeyRecordsError as exc:
        log.error("key_records_failed", error=str(exc))
        raise CatalogUnavailable() from None


def _resource_id(client: KeyApiClient, title: _Title) -> str:
    """The id the provider's key API knows the title by (its licenses' id for it)."""
    return client.resource_id(title.asset_id, title.content_id) or title.content_id


def _parse(body: bytes, speke_version: str | None) -> CpixRequest:
    try:
        return parse_request(body, speke_version)
    except CpixError as exc:
        raise InvalidCpix(exc.message) from None


def _provider_error(
    error: KeyApiError, kind: type[KeySourceFailed] | type[KeyMirrorFailed]
) -> Exception:
    """The gateway error for a key API failure: a key conflict is the packager's to fix."""
    if error.code == KEY_CONFLICT_CODE:
        return KeyConflict()
    return kind(error.provider, retryable=error.retryable, provider_error=error.code)
