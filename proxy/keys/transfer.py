"""Copy one title's keys from one provider to another, verified, and record the new holder.

    transfer_title(asset_id, drm_resource_id, key_ids, source=, target=, verify=, records=,
                   target_name=) -> TransferOutcome

1. export the title's keys from the source's key API;
2. ingest them at the target's key API (idempotent: keys it already has count as present);
3. verify: ask the target for the title's keys *through the gateway's own provider adapter*
   (`Verifier`, the code path players' requests take: URL template, auth, token signing,
   answer checks) — a ClearKey license of all the key ids, or, where the provider serves HLS
   AES-128 keys but no ClearKey, each key — and compare every key with the source's in
   constant time;
4. add the target to the title's key holders in the catalog, so routing can send players
   there.

Outcomes: `done` (the target stored keys it lacked), `already_there` (it had every key), or
`failed` with a bounded reason: `source_<code>` / `target_<code>` (the key API's error code,
e.g. `source_unknown_resource`, `target_key_conflict`, `target_timeout`), `verify_mismatch`,
`verify_missing_key`, `verify_bad_license`, `verify_unsupported`, `verify_<gateway error>`
(e.g. `verify_upstream_unavailable`), `catalog_unavailable`; `retryable` says whether the same
transfer may succeed later. Nothing is recorded unless every step succeeded.

The keys are held in one dict for the length of one title's transfer and cleared when it ends
(Python cannot wipe the bytes themselves; no reference outlives the call). No outcome, error or
log line holds a key.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.catalog.base import CatalogEntry
from proxy.catalog.keys import KeyRecords, KeyRecordsError
from proxy.config.providers import UrlTemplate
from proxy.domain import KEY_DRM, KeyId
from proxy.errors import GatewayError, UpstreamTimeout, UpstreamUnavailable
from proxy.keys.client import KeyApiClient, KeyApiError
from proxy.upstream.base import ClientInfo, KeyCall, LicenseCall, ProviderClient

Outcome = Literal["done", "already_there", "failed"]
# Who the verification requests say they are (no player is behind them).
VERIFY_CLIENT = ClientInfo(forwarded_for="127.0.0.1", user_id="drm-gateway-verify")
_RETRYABLE_GATEWAY_ERRORS = (UpstreamUnavailable, UpstreamTimeout)


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """How one title's transfer ended (never holds a key). `reason` is set when it failed."""

    outcome: Outcome
    reason: str | None = None
    retryable: bool = False
    keys: int = 0  # keys copied and verified (0 when it failed)


class TransferFailed(Exception):
    """One step of a transfer failed: `reason` is the bounded code of the outcome."""

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class Verifier:
    """Checks that a provider serves a title's keys, through the gateway's own client for it
    (`proxy.upstream`, built from the config as the gateway builds it, opened by the caller)."""

    def __init__(self, provider: ProviderClient) -> None:
        self.provider = provider

    async def check(self, entry: CatalogEntry, expected: Mapping[KeyId, bytes]) -> None:
        """Raise TransferFailed unless the provider answers every key of `expected` for the
        title `entry`, each equal to the expected one."""
        clearkey = self.provider.endpoint("clearkey")
        if clearkey is not None:
            served = await self._clearkey(entry, list(expected), clearkey)
        elif self.provider.endpoint(KEY_DRM) is not None:
            served = await self._aes128(entry, list(expected))
        else:
            raise TransferFailed("verify_unsupported")  # it serves neither: nothing to compare
        compare_keys(expected, served)

    async def _clearkey(
        self, entry: CatalogEntry, kids: Sequence[KeyId], endpoint: UrlTemplate
    ) -> dict[KeyId, bytes]:
        body = clearkey_request(kids)
        call = LicenseCall(
            _request_id(), "clearkey", entry, VERIFY_CLIENT, body, "application/json"
        )
        try:
            answer = await self.provider.license(call, endpoint)
        except GatewayError as exc:
            raise _verify_failure(exc) from None
        return read_clearkey_license(answer.body)

    async def _aes128(self, entry: CatalogEntry, kids: Sequence[KeyId]) -> dict[KeyId, bytes]:
        endpoint = self.provider.endpoint(KEY_DRM)
        assert endpoint is not None
        served: dict[KeyId, bytes] = {}
        for kid in kids:
            call = KeyCall(_request_id(), entry, VERIFY_CLIENT, kid)
            try:
                served[kid] = await self.provider.key(call, endpoint)
            except GatewayError as exc:
                raise _verify_failure(exc) from None
        return served


async def transfer_title(
    asset_id: str,
    drm_resource_id: str,
    key_ids: Sequence[KeyId],
    *,
    source: KeyApiClient,
    target: KeyApiClient,
    verify: Verifier,
    records: KeyRecords,
    target_name: str,
) -> TransferOutcome:
    """Copy the keys of one title from `source` to `target`, verify them at the target and
    record `target_name` as a holder (see the module docstring)."""
    keys: dict[KeyId, bytes] = {}
    try:
        keys = await _export(source, asset_id, drm_resource_id, key_ids)
        stored = await _ingest(target, asset_id, drm_resource_id, keys)
        entry = CatalogEntry(
            asset_id, drm_resource_id, frozenset({target_name}), key_ids=tuple(key_ids)
        )
        await verify.check(entry, keys)
        await _record(records, entry, target_name)
    except TransferFailed as failure:
        return TransferOutcome("failed", failure.reason, retryable=failure.retryable)
    finally:
        keys.clear()  # the only reference to the key bytes
    return TransferOutcome("done" if stored else "already_there", keys=len(key_ids))


async def _export(
    source: KeyApiClient, asset_id: str, drm_resource_id: str, key_ids: Sequence[KeyId]
) -> dict[KeyId, bytes]:
    resource = source.resource_id(asset_id, drm_resource_id)
    assert resource is not None  # a drm_resource_id is given: every field has a value
    try:
        return await source.export(resource, key_ids)
    except KeyApiError as exc:
        raise TransferFailed(f"source_{exc.code}", retryable=exc.retryable) from None


async def _ingest(
    target: KeyApiClient, asset_id: str, drm_resource_id: str, keys: Mapping[KeyId, bytes]
) -> int:
    """Store the keys at the target; how many it did not have yet."""
    resource = target.resource_id(asset_id, drm_resource_id)
    assert resource is not None
    try:
        result = await target.ingest(resource, keys)
    except KeyApiError as exc:
        raise TransferFailed(f"target_{exc.code}", retryable=exc.retryable) from None
    return result.stored


async def _record(records: KeyRecords, entry: CatalogEntry, target_name: str) -> None:
    assert entry.drm_resource_id is not None
    try:
        await records.record(
            entry.asset_id,
            drm_resource_id=entry.drm_resource_id,
            key_ids=[KeyId(kid) for kid in entry.key_ids],
            add_holders=[target_name],
        )
    except KeyRecordsError:
        raise TransferFailed("catalog_unavailable", retryable=True) from None


# --- ClearKey documents and the comparison (pure) ------------------------------------------


def clearkey_request(kids: Sequence[KeyId]) -> bytes:
    """A W3C ClearKey license request for `kids` (base64url without padding)."""
    encoded = [_b64url(bytes.fromhex(kid)) for kid in kids]
    return json.dumps({"kids": encoded, "type": "temporary"}).encode()


def read_clearkey_license(body: bytes) -> dict[KeyId, bytes]:
    """kid -> key of a ClearKey license (`{"keys": [{"kty": "oct", "kid", "k"}]}`);
    TransferFailed `verify_bad_license` on anything else (the message shows no value)."""
    try:
        document = json.loads(body)
        entries = document["keys"]
        return {_kid(entry["kid"]): _key(entry["k"]) for entry in entries}
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TransferFailed("verify_bad_license") from None


def compare_keys(expected: Mapping[KeyId, bytes], served: Mapping[KeyId, bytes]) -> None:
    """TransferFailed unless `served` has every expected key, each equal (constant time)."""
    for kid, key in expected.items():
        answer = served.get(kid)
        if answer is None:
            raise TransferFailed("verify_missing_key")
        if not hmac.compare_digest(answer, key):
            raise TransferFailed("verify_mismatch")


def _verify_failure(exc: GatewayError) -> TransferFailed:
    return TransferFailed(
        f"verify_{exc.code}", retryable=isinstance(exc, _RETRYABLE_GATEWAY_ERRORS)
    )


def _request_id() -> str:
    return f"verify-{uuid.uuid4().hex[:16]}"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: object) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _kid(text: object) -> KeyId:
    raw = _unb64url(text)
    if len(raw) != 16:
        raise ValueError("not a 16-byte key id")
    return KeyId(raw.hex())


def _key(text: object) -> bytes:
    return _unb64url(text)
