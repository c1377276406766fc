"""hls.js in headless Chromium plays HLS AES-128, its key rotating every SEGMENTS_PER_KEY
segments, every key fetched through the gateway: the player token as a Bearer header set in
hls.js's `xhrSetup` (web/hlsjs.js, quoted in docs/players.md), or as `?token=` in the
playlist's key URIs. A wrong token gets no key and plays nothing."""

from __future__ import annotations

from pathlib import Path

from proxy.dev.media import FPS, SEGMENT_SECONDS
from tests.e2e.media import ROTATIONS, SEGMENTS, SEGMENTS_PER_KEY
from tests.e2e.players import PageResult, install_web_pages, play_pages, web_player_url
from tests.e2e.scenario import INCOMING_ASSET, LEGACY_ASSET, Scene, provider_resource
from tests.e2e.tools import Tools

# Played this far, the page has decrypted segments of every rotation's key.
PAST_LAST_ROTATION = (ROTATIONS - 1) * SEGMENTS_PER_KEY * SEGMENT_SECONDS + 0.5
PLAYBACK_RATE = "4"  # the clip is short; a faster rate keeps the test short too
HLSJS_KEY_LOAD_ERROR = "keyLoadError"


def key_gets(scene: Scene) -> list[dict[str, object]]:
    """The access log lines of the key requests (not their CORS preflights)."""
    return [a for a in scene.access_lines("/v1/keys/") if a["method"] == "GET"]


async def test_hlsjs_plays_every_rotated_key_with_the_token_as_header_or_in_the_key_uri(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    web = install_web_pages(scene.media)
    cases = {LEGACY_ASSET: ("legacy", "header"), INCOMING_ASSET: ("incoming", "query")}
    key_ids, pages = {}, []
    for asset_id, (_, mode) in cases.items():
        hls = await scene.hls(e2e_tools, clip, asset_id)
        key_ids[asset_id] = hls.key_ids
        assert len(hls.key_uris) == SEGMENTS and len(set(hls.key_ids)) == ROTATIONS
        token = scene.token(entitlements=(asset_id,))
        # Header mode: the playlist's key URIs carry no token at all.
        playlist = hls.write_playlist("play.m3u8", token if mode == "query" else None)
        url = web_player_url(
            scene.static.url,
            "hlsjs",
            scene.hls_url(asset_id, playlist),
            gateway=scene.stack.url(""),
            token=token if mode == "header" else None,
            rate=PLAYBACK_RATE,
        )
        pages.append((url, tmp_path / f"hlsjs-{mode}.png"))
    assert web == "/media/web"

    played = await play_pages(e2e_tools, pages, play_seconds=PAST_LAST_ROTATION)

    for page in played:
        assert_played_past_every_rotation(page)
    gets = key_gets(scene)
    for asset_id, (provider, mode) in cases.items():
        served = [a for a in gets if a["asset_id"] == asset_id]
        # hls.js asks once per distinct key URI, i.e. once per rotation; all served.
        assert [(a["provider"], a["status"]) for a in served] == [(provider, 200)] * ROTATIONS, mode
        fetched = await scene.provider_requests(provider, "keys")
        resource = provider_resource(provider, asset_id)
        assert [(r["path"], r["status"]) for r in fetched] == [
            (f"/keys/{resource}/{kid}", 200) for kid in key_ids[asset_id]
        ], mode
    print(f"\nhls.js reached t={[round(p.current_time, 1) for p in played]} s")


def assert_played_past_every_rotation(page: PageResult) -> None:
    assert page.error is None, (page.error, page.console)
    assert not page.timed_out, page.console
    assert page.current_time > PAST_LAST_ROTATION, page.console
    # Frames of every key period were decoded (a few may be dropped at the faster rate).
    assert page.decoded_frames >= (ROTATIONS - 1) * SEGMENTS_PER_KEY * SEGMENT_SECONDS * FPS
    assert page.license_requests == ROTATIONS


async def test_hlsjs_with_a_wrong_token_in_the_header_gets_no_key_and_plays_nothing(
    scene: Scene, e2e_tools: Tools, clip: Path, tmp_path: Path
) -> None:
    # (A wrong `?token=` is the same key request to the gateway: test_hls_ffmpeg.py has it.)
    install_web_pages(scene.media)
    hls = await scene.hls(e2e_tools, clip, INCOMING_ASSET)
    playlist = hls.write_playlist("play.m3u8", None)
    url = web_player_url(
        scene.static.url,
        "hlsjs",
        scene.hls_url(INCOMING_ASSET, playlist),
        gateway=scene.stack.url(""),
        token=scene.wrong_token(),
    )

    [page] = await play_pages(e2e_tools, [(url, tmp_path / "wrong.png")])

    assert page.error == HLSJS_KEY_LOAD_ERROR, page.console
    assert page.current_time == 0
    assert page.decoded_frames == 0
    refused = key_gets(scene)
    assert refused, "the browser never asked for a key"
    # hls.js asks again and again (about once a second) before giving up: all refused.
    assert {a["status"] for a in refused} == {401}
    assert page.license_requests == len(refused)
    assert await scene.provider_requests("incoming", "keys") == []
    assert await scene.provider_requests("legacy", "keys") == []
