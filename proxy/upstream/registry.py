"""Provider kinds by name: adding a kind is a new module and one line here.

A `ProviderKind` says what the config and the routing rules must know of a kind (the DRM
systems it can serve, what it needs of an asset, fixed FairPlay formats, its own config
section) and builds its client. The config loader checks each provider against its kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from proxy.config.providers import ProviderSettings
from proxy.upstream import (
    axinom,
    doverunner,
    drmtoday,
    ezdrm,
    generic,
    verimatrix,
    widevine_cloud,
)
from proxy.upstream.base import ProviderClient, ProviderKind

PROVIDER_KINDS: Mapping[str, ProviderKind] = {
    "axinom": axinom.KIND,
    "doverunner": doverunner.KIND,
    "drmtoday": drmtoday.KIND,
    "ezdrm": ezdrm.KIND,
    "generic": generic.KIND,
    "verimatrix": verimatrix.KIND,
    "widevine-cloud": widevine_cloud.KIND,
}


def build_provider(settings: ProviderSettings) -> ProviderClient:
    """The client for one configured provider (its kind was checked when the config loaded)."""
    return PROVIDER_KINDS[settings.kind].client(settings)


async def open_providers(settings: Mapping[str, ProviderSettings]) -> dict[str, ProviderClient]:
    """Open one client per configured provider."""
    clients = {name: build_provider(s) for name, s in settings.items()}
    for client in clients.values():
        await client.open()
    return clients


async def close_providers(clients: Mapping[str, ProviderClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients.values()))
