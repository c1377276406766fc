"""ffmpeg plays HLS AES-128 with rotating keys, every key fetched through the gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.media import (
    EXPECTED_FRAMES,
    ROTATIONS,
    SEGMENTS,
    SEGMENTS_PER_KEY,
)
from tests.e2e.players import count_frames
from tests.e2e.scenario import INCOMING_ASSET, LEGACY_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools


@pytest.mark.parametrize(
    ("asset_id", "provider", "rule"),
    [(LEGACY_ASSET, "legacy", "default"), (INCOMING_ASSET, "incoming", "e2e-new-releases")],
)
async def test_every_frame_decodes_with_every_rotated_key_from_the_routed_provider(
    scene: Scene, e2e_tools: Tools, clip: Path, asset_id: str, provider: str, rule: str
) -> None:
    assert (await scene.explain(asset_id, "aes128"))["provider"] == provider
    hls = await scene.hls(e2e_tools, clip, asset_id)
    # The playlist rotates: each key id covers SEGMENTS_PER_KEY consecutive segments.
    assert len(hls.key_uris) == SEGMENTS
    assert [uri.split("?")[0].rsplit("/", 1)[1] for uri in hls.key_uris] == [
        kid for kid in hls.key_ids for _ in range(SEGMENTS_PER_KEY)
    ]
    playlist = hls.write_playlist("play.m3u8", scene.token(entitlements=(asset_id,)))

    frames = await count_frames(e2e_tools, scene.hls_url(asset_id, playlist))

    assert frames == EXPECTED_FRAMES
    fetched = await scene.provider_requests(provider, "keys")
    resource = provider_resource(provider, asset_id)
    assert [(r["path"], r["status"]) for r in fetched] == [
        (f"/keys/{resource}/{kid}", 200) for kid in hls.key_ids
    ]
    other = "incoming" if provider == "legacy" else "legacy"
    assert await scene.provider_requests(other, "keys") == []
    served = scene.access_lines("/v1/keys/")
    assert [(a["asset_id"], a["provider"], a["rule"], a["status"]) for a in served] == [
        (asset_id, provider, rule, 200)
    ] * ROTATIONS


@pytest.mark.parametrize("token", ["missing", "wrong"])
async def test_without_a_valid_token_no_key_is_served_and_no_frame_decodes(
    scene: Scene, e2e_tools: Tools, clip: Path, token: str
) -> None:
    hls = await scene.hls(e2e_tools, clip, INCOMING_ASSET)
    playlist = hls.write_playlist("play.m3u8", None if token == "missing" else scene.wrong_token())

    frames = await count_frames(e2e_tools, scene.hls_url(INCOMING_ASSET, playlist))

    assert frames == 0
    # ffmpeg asks once for each rotated key and is refused each time.
    refused = scene.access_lines("/v1/keys/")
    assert len(refused) == ROTATIONS
    # Refused before the asset is looked up, so the line names the route, not the asset.
    assert {(a["route"], a["status"]) for a in refused} == {("/v1/keys/{asset_id}/{key_id}", 401)}
    assert await scene.provider_requests("incoming", "keys") == []
    assert await scene.provider_requests("legacy", "keys") == []
