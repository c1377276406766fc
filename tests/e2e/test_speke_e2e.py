"""The seed's key flow with real tools: a packager takes its keys from the gateway's SPEKE
endpoint, ffmpeg (HLS AES-128, key rotated every SEGMENTS_PER_KEY segments) and Shaka Packager
(DASH ClearKey) encrypt with them, ffprobe and Shaka Player in headless Chromium play through
the gateway; then `drm-gateway backfill` copies the titles' keys from legacy to incoming, the
rules move the titles to incoming, and both play again, from incoming.

Both emulators derive no key here (`resources: {}`): each serves only the keys it stores, so
legacy can serve only what it generated for the SPEKE request, and incoming only what the
backfill copied to it. The emulators' stats and key API counters say who served what.

Rotation: one SPEKE request for all ROTATIONS key periods of the HLS title (a
ContentKeyPeriodList, one ContentKey per period tied to it by a KeyPeriodFilter), as a VOD
packager asks; the key URI of period i is the one the answer's HLSSignalingData gives.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ENV, StackFactory, free_ports, write_catalog
from tests.e2e.media import (
    EXPECTED_FRAMES,
    ROTATIONS,
    SEGMENTS_PER_KEY,
    TOKEN_PLACEHOLDER,
    HlsMedia,
    package_dash,
    package_hls,
)
from tests.e2e.players import assert_played, count_frames, play_pages
from tests.e2e.procs import run
from tests.e2e.scenario import Scene, player_auth_section
from tests.e2e.server import start_static_server
from tests.e2e.speke_client import (
    SpekeKey,
    dash_request,
    hls_rotation_request,
    request_keys,
)
from tests.e2e.tools import Tools

HLS_ASSET = "speke-e2e-hls"
DASH_ASSET = "speke-e2e-dash"
TITLES = (HLS_ASSET, DASH_ASSET)
MOVE_RULE = "speke-e2e-moved"
PACKAGER_TOKEN = "e2e-packager-bearer-token-5b2f9c"
LEGACY_KEY_API_TOKEN = "e2e-legacy-key-api-token-81d3"
INCOMING_KEY_API_TOKEN = "e2e-incoming-key-api-token-c06a"
SECRET_ENV = {
    **ENV,
    "SPEKE_TOKEN": PACKAGER_TOKEN,
    "LEGACY_KEY_API_TOKEN": LEGACY_KEY_API_TOKEN,
    "INCOMING_KEY_API_TOKEN": INCOMING_KEY_API_TOKEN,
}
BACKFILL_TIMEOUT = 30.0


def rules_text(*, moved: bool) -> str:
    """Licenses and keys to legacy; keys made at legacy, mirrored nowhere. `moved`: the
    titles route to incoming (the step after the backfill)."""
    rules = [{"name": MOVE_RULE, "when": {"asset_ids": list(TITLES)}, "route": "incoming"}]
    doc = {
        "version": "speke-e2e-2" if moved else "speke-e2e-1",
        "default": "legacy",
        "rules": rules if moved else [],
        "keys": {"default": {"source": "legacy"}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass
class SpekeScene:
    """The e2e Scene, plus the SPEKE endpoint, the rules file and the config as a file."""

    scene: Scene
    speke_url: str
    public_base: str
    rules: Path
    config_file: Path
    tmp_path: Path

    async def speke(self, asset: str, body: bytes) -> dict[str, SpekeKey]:
        return await request_keys(
            self.scene.stack.anon, self.speke_url, token=PACKAGER_TOKEN, asset=asset, body=body
        )

    async def admin(self, method: str, path: str) -> Any:
        stack = self.scene.stack
        headers = {"Authorization": f"Bearer {self.scene.admin_token}"}
        async with stack.anon.request(method, stack.internal(path), headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def holders(self, asset: str) -> list[str]:
        entry = await self.admin("GET", f"/admin/catalog/{asset}")
        return list(entry["key_holders"])

    async def recent(self, provider: str) -> list[dict[str, Any]]:
        stats = await self.scene.stack.stats(self.scene.emulator(provider))
        return list(stats["recent"])

    async def key_api(self, provider: str) -> dict[str, int]:
        stats = await self.scene.stack.stats(self.scene.emulator(provider))
        return dict(stats["key_api"])


def file_secrets(raw: Any, folder: Path) -> Any:
    """`raw` with every {env: NAME} secret turned into a {file: ...} holding its value, so a
    subprocess reads the same config without the secrets in its environment or argv."""
    if isinstance(raw, dict):
        if set(raw) == {"env"} and raw["env"] in SECRET_ENV:
            path = folder / f"secret-{raw['env'].lower()}"
            path.write_text(SECRET_ENV[raw["env"]])
            path.chmod(0o600)
            return {"file": str(path)}
        return {key: file_secrets(value, folder) for key, value in raw.items()}
    if isinstance(raw, list):
        return [file_secrets(value, folder) for value in raw]
    return raw


@pytest.fixture
async def speke_scene(make_stack: StackFactory, tmp_path: Path) -> AsyncIterator[SpekeScene]:
    """Both emulators with key APIs (no derived keys), the gateway with SPEKE on its internal
    listener, player JWTs, CORS for the media server, and the rules file hot-reloaded."""
    media = tmp_path / "media"
    media.mkdir()
    static = await start_static_server(media)
    try:
        player_secret = secrets.token_bytes(32)
        admin_token = secrets.token_urlsafe(24)
        secret_file = tmp_path / "player-jwt-secret"
        secret_file.write_text("base64:" + base64.b64encode(player_secret).decode())
        admin_file = tmp_path / "admin-token"
        admin_file.write_text(admin_token)
        rules = tmp_path / "routing.yaml"
        rules.write_text(rules_text(moved=False))
        [public_port] = free_ports(1)
        public_base = f"http://127.0.0.1:{public_port}"
        captured: list[dict[str, Any]] = []

        def configure(raw: dict[str, Any]) -> None:
            raw["server"]["public"]["port"] = public_port
            raw["routing"] = {
                "default_provider": "legacy",
                "rules_file": str(rules),
                "poll_seconds": 0.2,
            }
            raw["admin"] = {"token": {"file": str(admin_file)}}
            raw["player_auth"] = player_auth_section(secret_file)
            raw["cors"] = {"allowed_origins": [static.url], "allow_credentials": False}
            for name in ("legacy", "incoming"):
                provider = raw["providers"][name]
                provider["key_api"] = {
                    "base_url": provider["base_url"],
                    "token": {"env": f"{name.upper()}_KEY_API_TOKEN"},
                    "timeouts": {"connect_seconds": 1.0, "total_seconds": 5.0},
                }
            raw["speke"] = {
                "listener": "internal",
                "credential": {"bearer": {"env": "SPEKE_TOKEN"}},
                "public_base_url": public_base,
            }
            captured.append(copy.deepcopy(raw))

        stack = await make_stack(
            legacy={"resources": {}, "key_api_token": LEGACY_KEY_API_TOKEN},
            incoming={"resources": {}, "key_api_token": INCOMING_KEY_API_TOKEN},
            db=write_catalog(tmp_path / "speke-e2e-catalog.db"),
            configure=configure,
            env=SECRET_ENV,
        )
        assert stack.gateway.public_url == public_base
        secret_dir = tmp_path / "secrets"
        secret_dir.mkdir(mode=0o700)
        config_file = tmp_path / "gateway.yaml"
        config_file.write_text(yaml.safe_dump(file_secrets(captured[0], secret_dir)))
        scene = Scene(stack, static, media, player_secret, admin_token)
        yield SpekeScene(
            scene,
            stack.internal("/v2/speke"),
            public_base,
            rules,
            config_file,
            tmp_path,
        )
    finally:
        await static.stop()


async def package_hls_with(
    tools: Tools, clip: Path, folder: Path, kids: list[str], keys: dict[str, SpekeKey]
) -> HlsMedia:
    """ffmpeg segments `clip` as HLS AES-128, period i (SEGMENTS_PER_KEY segments) encrypted
    with kids[i]'s key and pointing at the key URI the SPEKE answer gave for it (plus the
    player token placeholder), by tests/e2e/media.py's packager."""

    def key_uri(kid: str) -> str:
        uri = keys[kid].hls_uri
        assert uri is not None
        return f"{uri}?token={TOKEN_PLACEHOLDER}"

    media = await package_hls(
        tools, clip, folder, key_uri=key_uri, key_for=lambda kid: keys[kid].key, key_ids=kids
    )
    for kid in kids:  # the packager's copy of the keys goes once the media is written
        (folder / f"{kid}.key").unlink()
    return media


@dataclass
class Round:
    """What one playback round did at the emulators (requests after `since`)."""

    keys: list[tuple[str, int]]  # (path, status) of key requests
    licenses: list[tuple[str | None, str | None, int]]  # (drm, resource, status)


async def play_round(
    ss: SpekeScene, tools: Tools, hls: HlsMedia, manifest: str, label: str
) -> None:
    """ffprobe decodes every frame with a player token and none without; Chromium plays the
    DASH title."""
    scene = ss.scene
    played = hls.write_playlist(f"{label}.m3u8", scene.token(entitlements=(HLS_ASSET,)))
    unauthorized = hls.write_playlist(f"{label}-no-token.m3u8", None)
    url = scene.player_url(DASH_ASSET, manifest, scene.token(entitlements=(DASH_ASSET,)))
    frames, refused, pages = await asyncio.gather(
        count_frames(tools, scene.hls_url(HLS_ASSET, played)),
        count_frames(tools, scene.hls_url(HLS_ASSET, unauthorized)),
        play_pages(tools, [(url, ss.tmp_path / f"{label}.png")]),
    )
    assert frames == EXPECTED_FRAMES
    assert refused == 0
    assert_played(pages[0])


def emulator_round(recent: list[dict[str, Any]], since: int) -> Round:
    new = recent[since:]
    return Round(
        keys=[(r["path"], r["status"]) for r in new if r["route"] == "keys"],
        licenses=[(r["drm"], r["resource"], r["status"]) for r in new if r["route"] == "license"],
    )


async def test_packager_keys_from_speke_play_before_and_after_the_backfill_moves_them(
    speke_scene: SpekeScene, e2e_tools: Tools, clip: Path
) -> None:
    ss, scene = speke_scene, speke_scene.scene
    started = time.monotonic()

    # 1. The packager asks the gateway for the keys: HLS (one key per period) and DASH.
    hls_kids = [secrets.token_hex(16) for _ in range(ROTATIONS)]
    hls_keys = await ss.speke(HLS_ASSET, hls_rotation_request(f"res-{HLS_ASSET}", hls_kids))
    assert sorted(hls_keys) == sorted(hls_kids)  # the packager's key ids are kept
    assert len({k.key for k in hls_keys.values()}) == ROTATIONS  # a new key every period
    for kid in hls_kids:  # the key URIs point at this gateway, never at a public store
        assert hls_keys[kid].hls_uri == f"{ss.public_base}/v1/keys/{HLS_ASSET}/{kid}"
    dash_kid = secrets.token_hex(16)
    dash_keys = await ss.speke(DASH_ASSET, dash_request(f"res-{DASH_ASSET}", dash_kid))
    assert list(dash_keys) == [dash_kid]
    for asset in TITLES:
        assert await ss.holders(asset) == ["legacy"]
    assert (await ss.key_api("legacy"))["generated"] == ROTATIONS + 1
    assert (await ss.key_api("incoming"))["ingested"] == 0

    # 2. ffmpeg and Shaka Packager encrypt with them.
    hls = await package_hls_with(
        e2e_tools, clip, scene.media / HLS_ASSET / "hls", hls_kids, hls_keys
    )
    assert [uri.split("?")[0].rsplit("/", 1)[1] for uri in hls.key_uris] == [
        kid for kid in hls_kids for _ in range(SEGMENTS_PER_KEY)
    ]
    await package_dash(
        e2e_tools,
        clip,
        scene.media / DASH_ASSET / "dash",
        key_id=dash_kid,
        key=dash_keys[dash_kid].key,
    )
    manifest = f"/media/{DASH_ASSET}/dash/manifest.mpd"

    # 3. Played through the gateway: routed to legacy, which generated the keys.
    assert (await scene.explain(HLS_ASSET, "aes128"))["provider"] == "legacy"
    assert (await scene.explain(DASH_ASSET, "clearkey"))["provider"] == "legacy"
    before = {p: len(await ss.recent(p)) for p in ("legacy", "incoming")}
    await play_round(ss, e2e_tools, hls, manifest, "first")
    first = emulator_round(await ss.recent("legacy"), before["legacy"])
    assert first.keys == [(f"/keys/{HLS_ASSET}/{kid}", 200) for kid in hls_kids]
    assert first.licenses == [("clearkey", DASH_ASSET, 200)]
    assert emulator_round(await ss.recent("incoming"), before["incoming"]) == Round([], [])

    # 4. drm-gateway backfill copies both titles' keys to incoming, verified.
    assets = ss.tmp_path / "titles.txt"
    assets.write_text("\n".join(TITLES) + "\n")
    report_file = ss.tmp_path / "backfill.json"
    finished = await run(
        sys.executable, "-m", "proxy.cli.main", "backfill",
        "--config", str(ss.config_file), "--from", "legacy", "--to", "incoming",
        "--assets", str(assets), "--rate", "unlimited",
        "--checkpoint", str(ss.tmp_path / "backfill.checkpoint"),
        "--report-json", str(report_file),
        timeout=BACKFILL_TIMEOUT,
    )  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    report = json.loads(report_file.read_text())
    assert report["failed"] == [] and report["skipped"] == [], report
    assert report["this_run"]["titles"] == len(TITLES), report
    for key in (*hls_kids, dash_kid):
        assert key not in finished.stdout + finished.stderr + report_file.read_text()
    assert (await ss.key_api("legacy"))["exported"] == ROTATIONS + 1
    assert (await ss.key_api("incoming"))["ingested"] == ROTATIONS + 1

    # 5. The rules move the titles to incoming (hot reload); the catalog now lists it.
    ss.rules.write_text(rules_text(moved=True))
    deadline = time.monotonic() + 10
    while True:
        for asset in TITLES:
            await ss.admin("POST", f"/admin/cache/invalidate?asset={asset}")
        hls_route = await scene.explain(HLS_ASSET, "aes128")
        dash_route = await scene.explain(DASH_ASSET, "clearkey")
        if (hls_route["provider"], dash_route["provider"]) == ("incoming", "incoming"):
            break
        assert time.monotonic() < deadline, (hls_route, dash_route)
        await asyncio.sleep(0.1)
    for asset in TITLES:
        assert await ss.holders(asset) == ["incoming", "legacy"]

    # 6. Played again: every key and the license now come from incoming, none from legacy.
    before = {p: len(await ss.recent(p)) for p in ("legacy", "incoming")}
    await play_round(ss, e2e_tools, hls, manifest, "second")
    second = emulator_round(await ss.recent("incoming"), before["incoming"])
    assert second.keys == [(f"/keys/res-{HLS_ASSET}/{kid}", 200) for kid in hls_kids]
    assert second.licenses == [("clearkey", f"res-{DASH_ASSET}", 200)]
    assert emulator_round(await ss.recent("legacy"), before["legacy"]) == Round([], [])
    lines = [a for a in scene.access_lines("/v1/") if a.get("method") != "OPTIONS"]
    # Without a token ffmpeg asked once per rotated key, each round, and was refused.
    refused = [a for a in lines if a["status"] == 401]
    assert [a["route"] for a in refused] == ["/v1/keys/{asset_id}/{key_id}"] * (2 * ROTATIONS)
    served = [a for a in lines if a["status"] == 200]
    moved = [(a["asset_id"], a["provider"], a["rule"]) for a in served][-(ROTATIONS + 1) :]
    assert sorted(moved) == sorted(
        [(HLS_ASSET, "incoming", MOVE_RULE)] * ROTATIONS + [(DASH_ASSET, "incoming", MOVE_RULE)]
    )
    print(f"\nSPEKE -> package -> play -> backfill -> play: {time.monotonic() - started:.1f} s")
