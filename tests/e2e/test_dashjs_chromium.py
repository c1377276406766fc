"""dash.js in headless Chromium plays DASH ClearKey licensed through the gateway, the player
token a license request header set in its protection data (web/dashjs.js); Shaka Player plays
the same way from the snippet docs/players.md quotes (web/shaka.js). A wrong token gets no
license and plays nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.media import with_dashif_clearkey
from tests.e2e.players import assert_played, install_web_pages, play_pages, web_player_url
from tests.e2e.scenario import INCOMING_ASSET, LEGACY_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools

DASHJS_LICENSER_ERROR = 114  # MEDIA_KEY_MESSAGE_LICENSER_ERROR_CODE


def license_posts(scene: Scene) -> list[dict[str, Any]]:
    """The access log lines of the license requests (not their CORS preflights)."""
    return [a for a in scene.access_lines("/v1/license/") if a["method"] == "POST"]


async def page_url(
    scene: Scene, tools: Tools, clip: Path, player: str, asset_id: str, token: str
) -> str:
    manifest = await scene.dash(tools, clip, asset_id)
    if player == "dashjs":
        path = scene.media.parent / manifest.lstrip("/")
        manifest = manifest.replace(path.name, with_dashif_clearkey(path, "dashif.mpd").name)
    return web_player_url(
        scene.static.url,
        player,
        f"{scene.static.url}{manifest}",
        gateway=scene.stack.url(""),
        asset=asset_id,
        token=token,
    )


async def test_dashjs_and_the_shaka_snippet_play_clearkey_with_the_token_as_a_header(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    install_web_pages(scene.media)
    cases = {"dashjs": (INCOMING_ASSET, "incoming"), "shaka": (LEGACY_ASSET, "legacy")}
    pages = []
    for player, (asset_id, _) in cases.items():
        token = scene.token(entitlements=(asset_id,))
        url = await page_url(scene, e2e_tools, clip, player, asset_id, token)
        pages.append((url, tmp_path / f"{player}.png"))

    played = await play_pages(e2e_tools, pages)

    for page in played:
        assert_played(page)
    assert sorted((a["asset_id"], a["provider"], a["status"]) for a in license_posts(scene)) == (
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
    url = await page_url(scene, e2e_tools, clip, "dashjs", INCOMING_ASSET, scene.wrong_token())

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "wrong-token.png")])

    assert page.error == DASHJS_LICENSER_ERROR, page.console
    assert page.current_time == 0
    assert page.decoded_frames == 0
    posts = license_posts(scene)
    assert posts, "the browser never sent the license request"
    # dash.js retries a failed license request (3 times by default): each one refused.
    assert {a["status"] for a in posts} == {401}
    assert await scene.provider_requests("incoming", "license") == []
    assert await scene.provider_requests("legacy", "license") == []
