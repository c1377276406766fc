"""Fixtures for the emulator tests: emulators on ephemeral loopback ports, and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator

Launch = Callable[[EmulatorSettings], Awaitable[RunningEmulator]]


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """launch(settings) -> an emulator serving on 127.0.0.1; all stop after the test."""
    running: list[RunningEmulator] = []

    async def _launch(settings: EmulatorSettings) -> RunningEmulator:
        emulator = await start_emulator(settings)
        running.append(emulator)
        return emulator

    yield _launch
    for emulator in running:
        await emulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
