"""Video.js with videojs-contrib-eme in headless Chromium plays DASH ClearKey licensed through
the gateway, the player token a license request header (`licenseHeaders`) of the key system,
from the snippet docs/players.md quotes (web/videojs.js). A wrong token gets no license and
plays nothing."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.players import assert_played, install_web_pages, play_pages
from tests.e2e.scenario import INCOMING_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools

MEDIA_ERR_ENCRYPTED = 5  # how contrib-eme reports a failed license request


async def test_videojs_plays_clearkey_with_the_token_as_a_license_header(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    install_web_pages(scene.media)
    token = scene.token(entitlements=(INCOMING_ASSET,))
    url = await scene.web_dash_page(e2e_tools, clip, "videojs", INCOMING_ASSET, token)

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "videojs.png")])

    assert_played(page)
    assert [(a["asset_id"], a["provider"], a["status"]) for a in scene.license_posts()] == [
        (INCOMING_ASSET, "incoming", 200)
    ]
    answered = await scene.provider_requests("incoming", "license")
    assert [(r["drm"], r["resource"], r["status"]) for r in answered] == [
        ("clearkey", provider_resource("incoming", INCOMING_ASSET), 200)
    ]


async def test_videojs_with_a_wrong_token_gets_no_license_and_plays_nothing(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    install_web_pages(scene.media)
    url = await scene.web_dash_page(e2e_tools, clip, "videojs", INCOMING_ASSET, scene.wrong_token())

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "wrong-token.png")])

    assert page.error == MEDIA_ERR_ENCRYPTED, page.console
    assert page.current_time == 0
    assert page.decoded_frames == 0
    # contrib-eme does not retry a refused license request.
    assert [(a["asset_id"], a["status"]) for a in scene.license_posts()] == [(INCOMING_ASSET, 401)]
    assert await scene.provider_requests("incoming", "license") == []
