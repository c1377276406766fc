"""Fixtures of the end-to-end tests: the tools, a test clip, and the running scene."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import StackFactory
from tests.e2e.media import make_clip
from tests.e2e.scenario import Scene, start_scene
from tests.e2e.server import start_static_server
from tests.e2e.tools import Tools, require_tools


@pytest.fixture(scope="session")
def e2e_tools() -> Tools:
    """ffmpeg, ffprobe, chromium, node (+ npm packages) and Shaka Packager, or skip/fail."""
    return require_tools()


@pytest.fixture(scope="session")
def clip(e2e_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clear test clip (H.264 + AAC), encoded once per session."""
    return make_clip(e2e_tools, tmp_path_factory.mktemp("e2e-clip") / "clip.mp4")


@pytest.fixture
async def scene(make_stack: StackFactory, tmp_path: Path) -> AsyncIterator[Scene]:
    """The static media server, then both emulators and the gateway allowing its origin."""
    media = tmp_path / "media"
    media.mkdir()
    static = await start_static_server(media)
    try:
        yield await start_scene(make_stack, tmp_path, static)
    finally:
        await static.stop()
