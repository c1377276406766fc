"""Shaka Player in headless Chromium plays DASH ClearKey licensed through the gateway."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.players import assert_played, play_pages
from tests.e2e.scenario import INCOMING_ASSET, LEGACY_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAKA_LICENSE_REQUEST_FAILED = 6007


async def test_chromium_plays_clearkey_licensed_by_the_routed_provider(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    routes = {LEGACY_ASSET: ("legacy", "default"), INCOMING_ASSET: ("incoming", "e2e-new-releases")}
    pages = []
    for asset_id, (provider, _) in routes.items():
        assert (await scene.explain(asset_id, "clearkey"))["provider"] == provider
        manifest = await scene.dash(e2e_tools, clip, asset_id)
        token = scene.token(entitlements=(asset_id,))
        pages.append((scene.player_url(asset_id, manifest, token), tmp_path / f"{asset_id}.png"))

    played = await play_pages(e2e_tools, pages)

    for page in played:
        assert_played(page)
        assert page.screenshot.read_bytes().startswith(PNG_MAGIC)
    # One license request per asset (the CORS preflights are OPTIONS lines).
    licenses = scene.license_posts()
    assert [(a["asset_id"], a["provider"], a["rule"], a["status"]) for a in licenses] == [
        (asset_id, provider, rule, 200) for asset_id, (provider, rule) in routes.items()
    ]
    for asset_id, (provider, _) in routes.items():
        answered = await scene.provider_requests(provider, "license")
        assert [(r["drm"], r["resource"], r["status"]) for r in answered] == [
            ("clearkey", provider_resource(provider, asset_id), 200)
        ]
    print(f"\nscreenshot of the playing page: {played[-1].screenshot}")


async def test_chromium_with_a_wrong_token_gets_shaka_error_6007_and_stays_at_zero(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    manifest = await scene.dash(e2e_tools, clip, INCOMING_ASSET)
    url = scene.player_url(INCOMING_ASSET, manifest, scene.wrong_token())

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "wrong-token.png")])

    assert page.error == SHAKA_LICENSE_REQUEST_FAILED, page.console
    assert page.current_time == 0
    assert page.decoded_frames == 0
    posts = scene.license_posts()
    assert posts, "the browser never sent the license request"
    assert {a["status"] for a in posts} == {401}
    assert await scene.provider_requests("incoming", "license") == []
    assert await scene.provider_requests("legacy", "license") == []
