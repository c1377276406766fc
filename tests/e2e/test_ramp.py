"""The migration ramp with real players: at 50% by asset, each asset plays from the provider
that /admin/explain names, in ffmpeg (HLS AES-128) and in Chromium (DASH ClearKey) alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.e2e.media import EXPECTED_FRAMES, ROTATIONS
from tests.e2e.players import assert_played, count_frames, play_pages
from tests.e2e.scenario import RAMP_ASSETS, Scene, provider_resource
from tests.e2e.tools import Tools

PROVIDERS = ("legacy", "incoming")


async def test_each_asset_plays_from_the_provider_explain_names(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    explained: dict[str, tuple[str, str]] = {}
    for asset_id in RAMP_ASSETS:
        aes, clearkey = [await scene.explain(asset_id, drm) for drm in ("aes128", "clearkey")]
        # Stickiness by asset: both DRM systems of a title go to the same provider.
        assert (aes["provider"], aes["rule"]) == (clearkey["provider"], clearkey["rule"])
        explained[asset_id] = (aes["provider"], aes["rule"])
    # The asset names are such that the 50% split sends some to each provider.
    assert {provider for provider, _ in explained.values()} == set(PROVIDERS), explained

    frames = {}
    pages = []
    for asset_id in RAMP_ASSETS:
        hls = await scene.hls(e2e_tools, clip, asset_id)
        playlist = hls.write_playlist("play.m3u8", scene.token(entitlements=(asset_id,)))
        frames[asset_id] = await count_frames(e2e_tools, scene.hls_url(asset_id, playlist))
        manifest = await scene.dash(e2e_tools, clip, asset_id)
        token = scene.token(entitlements=(asset_id,))
        pages.append((scene.player_url(asset_id, manifest, token), tmp_path / f"{asset_id}.png"))
    played = await play_pages(e2e_tools, pages)

    assert frames == dict.fromkeys(RAMP_ASSETS, EXPECTED_FRAMES)
    for page in played:
        assert_played(page)
    for provider in PROVIDERS:
        mine = [a for a in RAMP_ASSETS if explained[a][0] == provider]
        keys = await scene.provider_requests(provider, "keys")
        assert Counter((r["resource"], r["status"]) for r in keys) == {
            (provider_resource(provider, a), 200): ROTATIONS for a in mine
        }
        licenses = await scene.provider_requests(provider, "license")
        assert [(r["drm"], r["resource"], r["status"]) for r in licenses] == [
            ("clearkey", provider_resource(provider, a), 200) for a in mine
        ]
    served = Counter(
        (a["asset_id"], a["drm"], a["provider"], a["rule"], a["status"])
        for a in scene.access_lines("/v1/")
        if a["method"] != "OPTIONS"
    )
    assert served == {
        **{(a, "aes128", *explained[a], 200): ROTATIONS for a in RAMP_ASSETS},
        **{(a, "clearkey", *explained[a], 200): 1 for a in RAMP_ASSETS},
    }
