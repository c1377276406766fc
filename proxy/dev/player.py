"""The player page: a static server for it, Shaka Player and DASH media, and the demo's stream.

The server plays the part of the CDN and the web app: another origin (port) than the gateway,
so the browser really goes through the gateway's CORS. The demo and the end-to-end tests both
serve `proxy/dev/static/player.html` with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

from aiohttp import web

from proxy.dev.emulator import derive_key
from proxy.dev.emulator.app import start_site
from proxy.dev.media import (
    SHAKA_DIST,
    SHAKA_PLAYER,
    SHAKA_PLAYER_FILE,
    MediaTools,
    find_media_tools,
    make_clip,
    package_dash,
)

PLAYER_PAGE = Path(__file__).resolve().parent / "static" / "player.html"
DEMO_CLIP_SECONDS = 10
_STAMP = ".packaged"  # written last, so a folder holding it is complete

# Streaming types aiohttp's table lacks, so players see what a CDN would send.
STREAMING_TYPES = {
    ".mpd": "application/dash+xml",
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".ts": "video/mp2t",
}


@dataclass
class PlayerServer:
    """A running static server; `url` has no trailing slash."""

    url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.runner.cleanup()


async def _streaming_type(request: web.Request, response: web.StreamResponse) -> None:
    """Label manifests and segments by extension (runs before the headers go out)."""
    content_type = STREAMING_TYPES.get(PurePosixPath(request.path).suffix)
    if content_type is not None and response.status == 200:
        response.content_type = content_type


async def _player_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PLAYER_PAGE, headers={"Cache-Control": "no-store"})


async def start_player_server(
    media: Path, *, host: str = "127.0.0.1", port: int = 0, shaka_dist: Path = SHAKA_DIST
) -> PlayerServer:
    """Serve /player.html, /shaka/* (Shaka Player's dist) and /media/* (`media`)."""
    app = web.Application()
    app.on_response_prepare.append(_streaming_type)
    app.router.add_get("/player.html", _player_page)
    app.router.add_static("/shaka/", shaka_dist)
    app.router.add_static("/media/", media)
    runner, bound = await start_site(app, host, port)
    return PlayerServer(f"http://{host}:{bound}", runner)


def player_url(server: str, *, gateway: str, asset_id: str, token: str, manifest: str) -> str:
    """The player page on `server`, playing `manifest` licensed by `gateway` with `token`."""
    query = {"gateway": gateway, "asset": asset_id, "manifest": manifest, "token": token}
    # ':' and '/' are legal in a query: keep the printed link readable.
    return f"{server}/player.html?{urlencode(query, safe=':/')}"


@dataclass(frozen=True, slots=True)
class PlayerTools:
    """What the player page needs: the media programs and Shaka Player's dist folder."""

    media: MediaTools
    shaka_dist: Path


def shaka_dist_candidates(node_prefix: Path) -> tuple[Path, ...]:
    """Where Shaka Player's dist folder is looked for, first found wins: `node_prefix`'s
    node_modules (`npm install --prefix <node_prefix> shaka-player`), then a source
    checkout's tests/e2e/node_modules (`make e2e`)."""
    return (node_prefix / "node_modules" / "shaka-player" / "dist", SHAKA_DIST)


def find_player_tools(
    node_prefix: Path, search_path: str | None = None
) -> tuple[PlayerTools | None, list[str]]:
    """Everything the player page needs, else None and what is missing."""
    media, missing = find_media_tools(search_path)
    dists = [d for d in shaka_dist_candidates(node_prefix) if (d / SHAKA_PLAYER_FILE).is_file()]
    if not dists:
        missing.append(SHAKA_PLAYER)
    if media is None or not dists:
        return None, missing
    return PlayerTools(media, dists[0]), []


@dataclass(frozen=True, slots=True)
class DemoStream:
    """The title the demo packages: its keys derive from `derivation_id` under `seed`."""

    asset_id: str
    derivation_id: str
    key_id: str
    seed: bytes

    def fingerprint(self) -> str:
        """What the packaged media depends on; a change re-packages it."""
        seed = hashlib.sha256(self.seed).hexdigest()[:16]
        parts = (DEMO_CLIP_SECONDS, self.asset_id, self.derivation_id, self.key_id, seed)
        return "v1 " + " ".join(map(str, parts)) + "\n"

    def manifest_path(self) -> str:
        """The manifest's path on the player server."""
        return f"/media/{self.asset_id}/manifest.mpd"


async def prepare_demo_media(
    workdir: Path, stream: DemoStream, tools: MediaTools, say: Callable[[str], None]
) -> Path:
    """Make the stream's DASH media under `workdir/media` unless it is already there; the folder.

    The clip and the packaged folder are each written under a temporary name and renamed
    when complete, so an interrupted first run leaves nothing that looks finished.
    """
    media = workdir / "media"
    folder = media / stream.asset_id
    stamp = folder / _STAMP
    if stamp.is_file() and stamp.read_text() == stream.fingerprint():
        return media
    say("packaging demo media (first run only)...")
    clip = workdir / f"demo-clip-{DEMO_CLIP_SECONDS}s.mp4"
    if not clip.is_file():
        say(f"  encoding a {DEMO_CLIP_SECONDS} s test clip with ffmpeg: {clip}")
        partial_clip = clip.with_suffix(".partial.mp4")
        await asyncio.to_thread(
            make_clip, partial_clip, ffmpeg=tools.ffmpeg, seconds=DEMO_CLIP_SECONDS
        )
        partial_clip.replace(clip)
    say(f"  encrypting it for {stream.asset_id} with Shaka Packager (DASH, ClearKey): {folder}")
    partial = media / f".{stream.asset_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    key = derive_key(stream.seed, stream.derivation_id, stream.key_id)
    await package_dash(clip, partial, packager=tools.packager, key_id=stream.key_id, key=key)
    (partial / _STAMP).write_text(stream.fingerprint())
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return media
