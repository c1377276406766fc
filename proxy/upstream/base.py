"""The provider seam: what the gateway asks of a provider, and the calls it hands over.

A `ProviderClient` turns a call plus the asset's catalog entry into the provider's own request
(URL, auth, body format) and its answer into license bytes or a gateway error. One
implementation per provider kind, registered in `proxy.upstream.registry`; the gateway sees
only this Protocol, so tests can swap in their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from proxy.catalog.base import CatalogEntry
from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import ConfigReader
from proxy.domain import ALL_DRMS, KEY_DRM, KeyId
from proxy.upstream.fairplay import FairPlayFormats, SpcRequest
from proxy.upstream.signer import TokenContext


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Facts about the player taken from its request (never its token)."""

    forwarded_for: str
    traceparent: str | None = None
    platform: str | None = None
    app_version: str | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class LicenseCall:
    """A Widevine, PlayReady or ClearKey challenge, forwarded byte-exact."""

    request_id: str
    drm: str
    entry: CatalogEntry
    client: ClientInfo
    challenge: bytes
    content_type: str | None


@dataclass(frozen=True, slots=True)
class FairPlayCall:
    """A FairPlay request: the decoded SPC, re-encoded in the provider's format."""

    request_id: str
    entry: CatalogEntry
    client: ClientInfo
    spc: SpcRequest
    drm: str = "fairplay"


@dataclass(frozen=True, slots=True)
class KeyCall:
    """An HLS AES-128 key request."""

    request_id: str
    entry: CatalogEntry
    client: ClientInfo
    key_id: KeyId
    drm: str = "aes128"


Call = LicenseCall | FairPlayCall | KeyCall


def token_context(call: Call) -> TokenContext:
    """What a provider token may be built from, for one call."""
    entry = call.entry
    return TokenContext(
        drm_resource_id=entry.drm_resource_id,
        asset_id=entry.asset_id,
        drm=call.drm,
        user_id=call.client.user_id,
        request_id=call.request_id,
    )


def url_values(call: Call) -> dict[str, str]:
    """The URL template placeholders' values for one call (rendered percent-encoded)."""
    entry = call.entry
    return {
        "asset_id": entry.asset_id,
        "drm_resource_id": entry.drm_resource_id or "",
        "key_id": call.key_id if isinstance(call, KeyCall) else "",
        "drm": call.drm,
    }


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """A provider's successful answer, headers already filtered for the player.

    For FairPlay the body is the raw CKC; the gateway encodes it for the player."""

    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...]


class ProviderClient(Protocol):
    """One configured provider, opened with the app and closed with it."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> ProviderSettings: ...

    def endpoint(self, drm: str) -> UrlTemplate | None:
        """Where this provider serves `drm` (aes128: keys), None if it does not."""
        ...

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """A license for a Widevine, PlayReady or ClearKey challenge."""
        ...

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """A FairPlay CKC (raw bytes in the answer's body)."""
        ...

    async def key(self, call: KeyCall, endpoint: UrlTemplate) -> bytes:
        """The 16 bytes of an AES-128 key."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ProviderKind:
    """One kind of provider: what the config and the rules must know of it, and its client.

    `drms` are the DRM systems (`aes128`: HLS keys) the kind can serve at all; a provider
    serves those its config gives an endpoint for. `needs_drm_resource_id` None leaves it to
    the provider's config (generic); `fairplay` None takes the formats from the config.
    `options` parses the kind's own config section (named after the kind), secrets included,
    reporting every problem to the reader; None: the kind has no such section."""

    client: Callable[[ProviderSettings], ProviderClient]
    drms: frozenset[str] = frozenset(ALL_DRMS)
    needs_drm_resource_id: bool | None = None
    needs_key_ids: bool = False
    fairplay: FairPlayFormats | None = None
    options: Callable[[ConfigReader, Any, str], object | None] | None = None

    @property
    def serves_keys(self) -> bool:
        return KEY_DRM in self.drms
