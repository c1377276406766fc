"""Test media made on the fly: a clip, HLS AES-128 with rotating keys, DASH ClearKey (CENC).

The clip and DASH packaging are the demo's (`proxy.dev.media`); HLS with key rotation is
only needed here. The clip has a keyframe at every segment boundary, so both packagers cut
it exactly and the frame count of a full decode is known in advance.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.dev import media as demo_media
from proxy.dev.media import FPS, PACKAGE_TIMEOUT, SEGMENT_SECONDS, signal_dashif_clearkey
from tests.e2e.procs import run
from tests.e2e.tools import Tools

CLIP_SECONDS = 12
SEGMENTS_PER_KEY = 2
EXPECTED_FRAMES = CLIP_SECONDS * FPS
SEGMENTS = CLIP_SECONDS // SEGMENT_SECONDS
ROTATIONS = SEGMENTS // SEGMENTS_PER_KEY
TOKEN_PLACEHOLDER = "__PLAYER_TOKEN__"
_KEY_LINE = re.compile(r'^#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)"', re.MULTILINE)


def make_clip(tools: Tools, path: Path) -> Path:
    """Encode the CLIP_SECONDS test clip (runs before any server starts, so blocking is fine)."""
    return demo_media.make_clip(path, ffmpeg=tools.ffmpeg, seconds=CLIP_SECONDS)


@dataclass(frozen=True, slots=True)
class HlsMedia:
    """An HLS AES-128 rendition: its folder, the playlist's key URIs in order, the key ids."""

    folder: Path
    key_uris: list[str]  # one per segment, as the playlist lists them
    key_ids: list[str]  # one per rotation, in order

    def write_playlist(self, name: str, token: str | None) -> str:
        """A copy of the playlist whose key URIs carry `token` (None: no token at all)."""
        text = (self.folder / "index.m3u8").read_text()
        if token is None:
            text = text.replace(f"?token={TOKEN_PLACEHOLDER}", "")
        else:
            text = text.replace(TOKEN_PLACEHOLDER, token)
        (self.folder / name).write_text(text)
        return name


async def package_hls(
    tools: Tools,
    clip: Path,
    folder: Path,
    *,
    key_uri: Callable[[str], str],
    key_for: Callable[[str], bytes],
    key_ids: list[str] | None = None,
) -> HlsMedia:
    """Segment `clip` as HLS AES-128, rotating the key every SEGMENTS_PER_KEY segments.

    With `-hls_flags periodic_rekey` ffmpeg re-reads its key info file at every segment; the
    file is a FIFO fed one key info per read, so each rotation gets a new key id and key.
    `key_uri(key_id)` must keep TOKEN_PLACEHOLDER where the player token goes. `key_ids`, one
    per rotation (ROTATIONS of them), are made up when not given.
    """
    folder.mkdir(parents=True)
    if key_ids is None:
        key_ids = [secrets.token_hex(16) for _ in range(ROTATIONS)]
    assert len(key_ids) == ROTATIONS
    for key_id in key_ids:
        (folder / f"{key_id}.key").write_bytes(key_for(key_id))
    fifo = folder / "keyinfo.fifo"
    os.mkfifo(fifo)
    # Key info file format: the key URI written into the playlist, then the key file's path.
    rotation_of_segment = [key_ids[i // SEGMENTS_PER_KEY] for i in range(SEGMENTS)]
    infos = [f"{key_uri(kid)}\n{folder / (kid + '.key')}\n" for kid in rotation_of_segment]
    ffmpeg = asyncio.ensure_future(
        run(
            tools.ffmpeg, "-v", "error", "-y", "-i", str(clip), "-c", "copy",
            "-f", "hls", "-hls_time", str(SEGMENT_SECONDS), "-hls_playlist_type", "vod",
            "-hls_key_info_file", str(fifo), "-hls_flags", "periodic_rekey",
            "-hls_segment_filename", str(folder / "seg%03d.ts"),
            str(folder / "index.m3u8"),
            timeout=PACKAGE_TIMEOUT,
        )
    )  # fmt: skip
    try:
        writes = await _feed_fifo(fifo, infos, until=ffmpeg)
        finished = await ffmpeg
    finally:
        ffmpeg.cancel()
    assert finished.returncode == 0, finished.stderr
    assert writes == SEGMENTS, f"ffmpeg read its key info {writes} times for {SEGMENTS} segments"
    key_uris = _KEY_LINE.findall((folder / "index.m3u8").read_text())
    return HlsMedia(folder, key_uris, key_ids)


async def _feed_fifo(fifo: Path, infos: list[str], *, until: asyncio.Future[Any]) -> int:
    """Write infos[n] to the n-th reader of `fifo` until `until` is done; return the count.

    Opening non-blocking fails with ENXIO while nobody reads, so this never blocks the loop.
    After each write a short pause lets ffmpeg read to EOF and close, so two writes can
    never merge into one read.
    """
    written = 0
    while not until.done():
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            await asyncio.sleep(0.01)
            continue
        try:
            # Past the last segment ffmpeg should not read again; give it the last key anyway.
            os.write(fd, infos[min(written, len(infos) - 1)].encode())
        finally:
            os.close(fd)
        written += 1
        await asyncio.sleep(0.05)
    return written


async def package_dash(tools: Tools, clip: Path, folder: Path, *, key_id: str, key: bytes) -> Path:
    """Package `clip` as static DASH, CENC-encrypted with one ClearKey key; return the MPD."""
    return await demo_media.package_dash(
        clip, folder, packager=tools.packager, key_id=key_id, key=key
    )


def with_dashif_clearkey(manifest: Path, name: str) -> Path:
    """A copy of `manifest` named `name` that signals ClearKey the DASH-IF way (system id
    e2719d58..., key ids from `cenc:default_KID`) instead of the W3C common PSSH (1077efec...).
    dash.js 5.2.1 asks Chromium's ClearKey CDM for a session with init data type `keyids`
    whatever the init data is, so a PSSH fails (KEY_SESSION_CREATED error 113). The rewrite
    is the demo's own (proxy/dev/media.signal_dashif_clearkey)."""
    copy = manifest.with_name(name)
    copy.write_text(signal_dashif_clearkey(manifest.read_text()))
    return copy
