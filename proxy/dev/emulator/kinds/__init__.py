"""Emulators of real DRM license services, one module per provider kind.

Each is written from that provider's public documentation and shares no code with the
gateway's adapter for the kind (nothing under ``proxy.upstream``), so a misreading of the
protocol cannot hide in both. A module exposes:

- ``DEMO_SECRETS``: the settings and secrets the demo (and tests) use for this kind, by name
  (site id, site key, communication key, signing key ...); ``--secret NAME=VALUE`` overrides;
- ``add_routes(app, settings)``: the provider's own URL paths. A license route is named
  ``license:<something>`` and a key route ``keys:<something>``, so the common middleware
  records it and applies fault modes. A handler stores the challenge as understood in
  ``request[CHALLENGE]``, the DRM system and resource in ``request[SEEN]``, plus what it
  verified (non-secret facts: content id, key ids, user) in ``request[VERIFIED]``; failures
  are answered the provider's own way (status, envelope, error header), never raised as the
  legacy/incoming JSON error.

Shared with the legacy/incoming emulators: key derivation and ClearKey licenses (``keys``),
synthetic licenses (``fairplay.synthetic_license``), stats and fault modes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiohttp import web

    from proxy.dev.emulator.settings import EmulatorSettings

# Kind name -> module under proxy.dev.emulator.kinds (imported when that kind runs).
KIND_MODULES: Mapping[str, str] = {
    "doverunner": "doverunner",
    "axinom": "axinom",
    "drmtoday": "drmtoday",
    "ezdrm": "ezdrm",
    "verimatrix": "verimatrix",
    "widevine-cloud": "widevine_cloud",
}


def kind_module(kind: str) -> ModuleType:
    """The module emulating `kind` (KeyError if there is none)."""
    return importlib.import_module(f"proxy.dev.emulator.kinds.{KIND_MODULES[kind]}")


def add_kind_routes(kind: str) -> Callable[[web.Application, EmulatorSettings], None]:
    add: Callable[[web.Application, EmulatorSettings], None] = kind_module(kind).add_routes
    return add


def demo_secrets(kind: str) -> Mapping[str, str]:
    secrets: Mapping[str, str] = kind_module(kind).DEMO_SECRETS
    return secrets
