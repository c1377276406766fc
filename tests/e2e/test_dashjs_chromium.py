"""dash.js in headless Chromium plays DASH ClearKey licensed through the gateway, the player
token a license request header set in its protection data (web/dashjs.js); Shaka Player plays
the same way from the snippet docs/players.md quotes (web/shaka.js). A wrong token gets no
license and plays nothing."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.players import assert_played, install_web_pages, play_pages
from tests.e2e.scenario import INCOMING_ASSET, LEGACY_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools

DASHJS_LICENSER_ERROR = 114  # MEDIA_KEY_MESSAGE_LICENSER_ERROR_CODE


async def test_dashjs_and_the_shaka_snippet_play_clearkey_with_the_token_as_a_header(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    install_web_pages(scene.media)
    cases = {"dashjs": (INCOMING_ASSET, "incoming"), "shaka": (LEGACY_ASSET, "legacy")}
    pages = []
    for player, (asset_id, _) in cases.items():
        token = scene.token(entitlements=(asset_id,))
        url = await scene.web_dash_page(e2e_tools, clip, player, asset_id, token)
        pages.append((url, tmp_path / f"{player}.png"))

    played = await play_pages(e2e_tools, pages)

    for page in played:
        assert_played(page)
    assert sorted((a["asset_id"], a["provider"], a["status"]) for a in scene.license_posts()) == (
        sorted((asset_id, provider, 200) for asset_id, provider in cases.values())
    )
    for asset_id, provider in cases.values():
        answered = await scene.provider_requests(provider, "license")
        assert [(r["drm"], r["resource"], r["status"]) for r in answered] == [
            ("clearkey", provider_resource(provider, asset_id), 200)
        ]


async def test_dashjs_with_a_wrong_token_gets_no_license_and_plays_nothing(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    install_web_pages(scene.media)
    url = await scene.web_dash_page(e2e_tools, clip, "dashjs", INCOMING_ASSET, scene.wrong_token())

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "wrong-token.png")])

    assert page.error == DASHJS_LICENSER_ERROR, page.console
    assert page.current_time == 0
    assert page.decoded_frames == 0
    posts = scene.license_posts()
    assert posts, "the browser never sent the license request"
    # dash.js retries a failed license request (3 times by default): each one refused.
    assert {a["status"] for a in posts} == {401}
    assert await scene.provider_requests("incoming", "license") == []
    assert await scene.provider_requests("legacy", "license") == []
