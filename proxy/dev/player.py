"""The player page: a static server for it, the web players and the media, and the demo's titles.

The server plays the part of the CDN and the web app: another origin (port) than the gateway,
so the browser really goes through the gateway's CORS. The demo and the end-to-end tests both
serve `proxy/dev/static/player.html` with it: Shaka Player, hls.js and dash.js each at
/<player key>/ (`proxy.dev.media.WEB_PLAYERS`), the media at /media/. The demo packages one
title as DASH ClearKey (Shaka Player, dash.js) and as HLS AES-128 (hls.js), and lists them in
/media/titles.json for the page's picker.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlencode

from aiohttp import web

from proxy.dev.emulator import derive_key
from proxy.dev.emulator.app import start_site
from proxy.dev.media import (
    E2E_NODE_MODULES,
    SHAKA,
    WEB_PLAYER_BY_KEY,
    WEB_PLAYERS,
    MediaTools,
    find_media_tools,
    make_clip,
    package_dash,
    package_hls,
    signal_dashif_clearkey,
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


def checkout_dists() -> dict[str, Path]:
    """Each web player's dist folder in a source checkout's tests/e2e/node_modules."""
    return {player.key: player.dist_in(E2E_NODE_MODULES) for player in WEB_PLAYERS}


async def start_player_server(
    media: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    dists: Mapping[str, Path] | None = None,
) -> PlayerServer:
    """Serve /player.html, each web player's dist folder at /<key>/ (default: a checkout's;
    one not installed is left out) and /media/* (`media`)."""
    app = web.Application()
    app.on_response_prepare.append(_streaming_type)
    app.router.add_get("/player.html", _player_page)
    for key, dist in (checkout_dists() if dists is None else dists).items():
        if dist.is_dir():
            app.router.add_static(f"/{key}/", dist)
    app.router.add_static("/media/", media)
    runner, bound = await start_site(app, host, port)
    return PlayerServer(f"http://{host}:{bound}", runner)


def player_url(
    server: str,
    *,
    gateway: str,
    asset_id: str,
    token: str,
    manifest: str,
    player: str = SHAKA.key,
) -> str:
    """The player page on `server`, `player` playing `manifest` licensed by `gateway` with
    `token` (the default player, Shaka Player, is left out of the link)."""
    query = {"gateway": gateway, "asset": asset_id, "manifest": manifest, "token": token}
    if player != SHAKA.key:
        query = {"player": player, **query}
    # ':' and '/' are legal in a query: keep the printed link readable.
    return f"{server}/player.html?{urlencode(query, safe=':/')}"


@dataclass(frozen=True, slots=True)
class PlayerTools:
    """What the player page needs: the media programs and each web player's dist folder."""

    media: MediaTools
    dists: Mapping[str, Path]

    @property
    def shaka_dist(self) -> Path:
        """Shaka Player's dist folder."""
        return self.dists[SHAKA.key]


def dist_candidates(node_prefix: Path, key: str = SHAKA.key) -> tuple[Path, ...]:
    """Where a web player's dist folder is looked for, first found wins: `node_prefix`'s
    node_modules (`npm install --prefix <node_prefix> ...`), then a source checkout's
    tests/e2e/node_modules (`make e2e`)."""
    player = WEB_PLAYER_BY_KEY[key]
    return (player.dist_in(node_prefix / "node_modules"), player.dist_in(E2E_NODE_MODULES))


def find_player_tools(
    node_prefix: Path, search_path: str | None = None
) -> tuple[PlayerTools | None, list[str]]:
    """Everything the player page needs, else None and what is missing."""
    media, missing = find_media_tools(search_path)
    dists: dict[str, Path] = {}
    for player in WEB_PLAYERS:
        found = [d for d in dist_candidates(node_prefix, player.key) if (d / player.file).is_file()]
        if found:
            dists[player.key] = found[0]
        else:
            missing.append(player.label)
    if media is None or len(dists) < len(WEB_PLAYERS):
        return None, missing
    return PlayerTools(media, dists), []


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
        return "v2 " + " ".join(map(str, parts)) + "\n"

    def manifest_path(self) -> str:
        """The DASH manifest's path on the player server."""
        return f"/media/{self.asset_id}/manifest.mpd"

    def playlist_path(self) -> str:
        """The HLS playlist's path on the player server."""
        return f"/media/{self.asset_id}{HLS_SUFFIX}/index.m3u8"

    def key_uri(self, gateway: str) -> str:
        """The HLS key URI: the gateway's key route for this title's key."""
        return f"{gateway}/v1/keys/{self.asset_id}/{self.key_id}"


DASH, HLS = "dash", "hls"
HLS_SUFFIX = "-hls"  # the HLS folder of a title, beside its DASH folder
TITLES_FILE = "titles.json"  # under /media/: what the page's picker offers


@dataclass(frozen=True, slots=True)
class DemoTitle:
    """One entry of the page's picker: a title in one format, and the players that play it."""

    asset: str
    format: str  # DASH (ClearKey) or HLS (AES-128)
    drm: str  # the gateway's DRM system for its license or key requests
    manifest: str  # path on the player server
    label: str
    players: tuple[str, ...]  # WebPlayer keys

    @classmethod
    def of(cls, stream: DemoStream, fmt: str) -> DemoTitle:
        if fmt == HLS:
            label = f"{stream.asset_id} · HLS AES-128"
            return cls(stream.asset_id, HLS, "aes128", stream.playlist_path(), label, ("hlsjs",))
        label = f"{stream.asset_id} · DASH ClearKey"
        manifest = stream.manifest_path()
        return cls(stream.asset_id, DASH, "clearkey", manifest, label, ("shaka", "dashjs"))


FIRST_RUN = "packaging demo media (first run only)..."


@dataclass(frozen=True, slots=True)
class _Packaging:
    """One folder of media: what it depends on, and how it is made from the clip."""

    folder: Path
    fingerprint: str
    package: Callable[[Path, Path], Awaitable[None]]  # (clip, folder)
    what: str

    def done(self) -> bool:
        stamp = self.folder / _STAMP
        return stamp.is_file() and stamp.read_text() == self.fingerprint


async def prepare_demo_media(
    workdir: Path,
    stream: DemoStream,
    tools: MediaTools,
    say: Callable[[str], None],
    *,
    formats: Collection[str] = (DASH,),
    gateway: str | None = None,
) -> Path:
    """Make the stream's media under `workdir/media` in each of `formats` unless it is already
    there, and list it in titles.json; the folder. HLS needs the `gateway` its key URIs name.

    The clip and each packaged folder are written under a temporary name and renamed when
    complete, so an interrupted first run leaves nothing that looks finished.
    """
    media = workdir / "media"
    key = derive_key(stream.seed, stream.derivation_id, stream.key_id)
    jobs: list[_Packaging] = []
    titles: list[DemoTitle] = []
    if DASH in formats:

        async def dash(clip: Path, folder: Path) -> None:
            mpd = await package_dash(
                clip, folder, packager=tools.packager, key_id=stream.key_id, key=key
            )
            mpd.write_text(signal_dashif_clearkey(mpd.read_text()))  # for dash.js

        what = f"for {stream.asset_id} with Shaka Packager (DASH, ClearKey)"
        jobs.append(_Packaging(media / stream.asset_id, stream.fingerprint(), dash, what))
        titles.append(DemoTitle.of(stream, DASH))
    if HLS in formats:
        if gateway is None:
            raise ValueError("HLS media needs the gateway URL its key URIs name")
        key_uri = stream.key_uri(gateway)

        async def hls(clip: Path, folder: Path) -> None:
            await package_hls(clip, folder, ffmpeg=tools.ffmpeg, key_uri=key_uri, key=key)

        folder = media / f"{stream.asset_id}{HLS_SUFFIX}"
        what = f"for {stream.asset_id} with ffmpeg (HLS, AES-128)"
        jobs.append(_Packaging(folder, f"{stream.fingerprint()}hls {key_uri}\n", hls, what))
        titles.append(DemoTitle.of(stream, HLS))
    pending = [job for job in jobs if not job.done()]
    if pending:
        say(FIRST_RUN)
        clip = await _clip(workdir, tools.ffmpeg, say)
        for job in pending:
            await _package(job, clip, say)
    media.mkdir(parents=True, exist_ok=True)
    (media / TITLES_FILE).write_text(json.dumps([asdict(t) for t in titles], indent=1) + "\n")
    return media


async def _clip(workdir: Path, ffmpeg: str, say: Callable[[str], None]) -> Path:
    """The clear demo clip, encoded on first use."""
    clip = workdir / f"demo-clip-{DEMO_CLIP_SECONDS}s.mp4"
    if not clip.is_file():
        say(f"  encoding a {DEMO_CLIP_SECONDS} s test clip with ffmpeg: {clip}")
        partial_clip = clip.with_suffix(".partial.mp4")
        await asyncio.to_thread(make_clip, partial_clip, ffmpeg=ffmpeg, seconds=DEMO_CLIP_SECONDS)
        partial_clip.replace(clip)
    return clip


async def _package(job: _Packaging, clip: Path, say: Callable[[str], None]) -> None:
    say(f"  encrypting it {job.what}: {job.folder}")
    partial = job.folder.with_name(f".{job.folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    await job.package(clip, partial)
    (partial / _STAMP).write_text(job.fingerprint)
    shutil.rmtree(job.folder, ignore_errors=True)
    partial.rename(job.folder)
