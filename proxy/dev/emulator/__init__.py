"""Emulated DRM license/key providers (``drm-gateway emulate legacy|incoming|<kind>``;
``kinds/`` has one per commercial provider kind, written from its documentation).

Shares no code with the gateway's codecs, token signer or auth, so a gateway bug cannot be
mirrored here and still pass the tests.
"""

from __future__ import annotations

from proxy.dev.emulator.app import RunningEmulator, create_emulator_app, start_emulator
from proxy.dev.emulator.keys import derive_key
from proxy.dev.emulator.settings import EmulatorSettings, Faults, load_resource_ids

__all__ = [
    "EmulatorSettings",
    "Faults",
    "RunningEmulator",
    "create_emulator_app",
    "derive_key",
    "load_resource_ids",
    "start_emulator",
]
