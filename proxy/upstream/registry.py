"""Provider kinds by name: adding a kind is a new module and one line here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from proxy.config.providers import ProviderSettings
from proxy.upstream.base import ProviderClient
from proxy.upstream.generic import GenericProvider

PROVIDER_KINDS: Mapping[str, Callable[[ProviderSettings], ProviderClient]] = {
    "generic": GenericProvider,
}


def build_provider(settings: ProviderSettings) -> ProviderClient:
    """The client for one configured provider (its kind was checked when the config loaded)."""
    return PROVIDER_KINDS[settings.kind](settings)


async def open_providers(settings: Mapping[str, ProviderSettings]) -> dict[str, ProviderClient]:
    """Open one client per configured provider."""
    clients = {name: build_provider(s) for name, s in settings.items()}
    for client in clients.values():
        await client.open()
    return clients


async def close_providers(clients: Mapping[str, ProviderClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients.values()))
