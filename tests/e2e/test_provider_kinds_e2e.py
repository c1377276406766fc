"""Real players through the gateway with a provider kind (DoveRunner) as the incoming provider.

Chromium's ClearKey license comes from DoveRunner's emulated ClearKey URL (site id and content
id in the query) with keys the player decrypts with. No documented commercial kind here serves
HLS AES-128 keys, so the unserved-DRM guard hands key requests to the legacy provider: ffmpeg
still decodes every frame of a title both hold, and a title only the incoming provider holds
gets no key at all (503, never a wrong key).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import StackFactory
from tests.e2e.media import EXPECTED_FRAMES, ROTATIONS
from tests.e2e.players import assert_played, count_frames, play_pages
from tests.e2e.scenario import INCOMING_ASSET, RAMP_ASSETS, Scene, start_scene
from tests.e2e.server import start_static_server
from tests.e2e.tools import Tools

KIND = "doverunner"


@pytest.fixture
async def kind_scene(make_stack: StackFactory, tmp_path: Path) -> AsyncIterator[Scene]:
    media = tmp_path / "media"
    media.mkdir()
    static = await start_static_server(media)
    try:
        yield await start_scene(make_stack, tmp_path, static, incoming_kind=KIND)
    finally:
        await static.stop()


async def test_chromium_plays_clearkey_licensed_by_doverunner(
    kind_scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    scene = kind_scene
    assert (await scene.explain(INCOMING_ASSET, "clearkey"))["provider"] == "incoming"
    manifest = await scene.dash(e2e_tools, clip, INCOMING_ASSET)
    token = scene.token(entitlements=(INCOMING_ASSET,))
    url = scene.player_url(INCOMING_ASSET, manifest, token)

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "doverunner.png")])

    assert_played(page)
    answered = await scene.provider_requests("incoming", "license")
    assert [(r["drm"], r["resource"], r["status"], r["verified"]) for r in answered] == [
        (
            "clearkey",
            f"res-{INCOMING_ASSET}",
            200,
            {"site_id": "DEMO", "cid": f"res-{INCOMING_ASSET}"},
        )
    ]
    assert answered[0]["path"] == "/ri/clearkey/licenseManager.do"


async def test_ffmpeg_gets_hls_keys_from_the_provider_that_serves_them(
    kind_scene: Scene, e2e_tools: Tools, clip: Path
) -> None:
    scene = kind_scene
    # A title both providers hold that the ramp sends to the incoming provider: the guard
    # hands its keys to the legacy provider (the rule was matched, then guarded).
    decisions = {asset: await scene.explain(asset, "aes128") for asset in RAMP_ASSETS}
    guarded = [a for a, d in decisions.items() if d["reason"] == "guard_unserved_drm"]
    assert guarded, decisions
    both = guarded[0]
    assert decisions[both]["provider"] == "legacy"
    hls = await scene.hls(e2e_tools, clip, both)
    playlist = hls.write_playlist("play.m3u8", scene.token(entitlements=(both,)))

    assert await count_frames(e2e_tools, scene.hls_url(both, playlist)) == EXPECTED_FRAMES
    served = scene.access_lines("/v1/keys/")
    assert {(a["provider"], a["status"]) for a in served} == {("legacy", 200)}
    assert len(served) == ROTATIONS
    assert await scene.provider_requests("incoming", "keys") == []


async def test_a_title_only_doverunner_holds_gets_no_hls_key(
    kind_scene: Scene, e2e_tools: Tools, clip: Path
) -> None:
    scene = kind_scene
    hls = await scene.hls(e2e_tools, clip, INCOMING_ASSET)
    playlist = hls.write_playlist("play.m3u8", scene.token(entitlements=(INCOMING_ASSET,)))

    assert await count_frames(e2e_tools, scene.hls_url(INCOMING_ASSET, playlist)) == 0
    refused = scene.access_lines("/v1/keys/")
    assert {(a["status"], a["error"]) for a in refused} == {(503, "no_provider")}
    assert await scene.provider_requests("legacy", "keys") == []
