"""The real players and packagers the end-to-end tests drive, found on this machine.

`scripts/install-e2e.sh` (run by `make e2e`) installs them all. Without them a local run
skips with the command to run; in CI (`CI=true`), or once the installer has run, a missing
tool fails the test instead, so a broken install can never pass as a skip.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.dev.media import E2E_NODE_MODULES as NODE_MODULES
from proxy.dev.media import INSTALL_COMMAND, WEB_PLAYERS, find_packager

E2E_DIR = Path(__file__).resolve().parent
PLAY_SCRIPT = E2E_DIR / "play.mjs"
# Written by scripts/install-e2e.sh after `npm ci`: proof that the installer ran here.
INSTALL_STAMP = NODE_MODULES / ".installed-lock.sha256"
INSTALL_HINT = f"run `make e2e` (or `{INSTALL_COMMAND}`) to install them"
# Video.js and its EME plugin, for web/player.html only (the demo does not offer Video.js, so
# they are not among its WEB_PLAYERS): (npm package, file inside it).
VIDEOJS_FILES = (
    ("video.js", "dist/video.min.js"),
    ("video.js", "dist/video-js.min.css"),
    ("videojs-contrib-eme", "dist/videojs-contrib-eme.min.js"),
)


@dataclass(frozen=True, slots=True)
class Tools:
    """Absolute paths of every program the end-to-end tests run."""

    ffmpeg: str
    ffprobe: str
    chromium: str
    node: str
    packager: str


def find_tools() -> tuple[Tools | None, list[str]]:
    """The tools, or None and the names of the missing ones."""
    found = {name: shutil.which(name) for name in ("ffmpeg", "ffprobe", "chromium", "node")}
    found["packager"] = find_packager()
    missing = [name for name, path in found.items() if path is None]
    needed = [(p.dist_in(NODE_MODULES) / p.file, f"npm {p.package}") for p in WEB_PLAYERS]
    needed.append((NODE_MODULES / "playwright-core" / "package.json", "npm playwright-core"))
    needed += [(NODE_MODULES / package / file, f"npm {package}") for package, file in VIDEOJS_FILES]
    for path, name in needed:
        if not path.is_file() and name not in missing:
            missing.append(name)
    if missing:
        return None, missing
    return Tools(**{name: str(path) for name, path in found.items()}), []


def require_tools() -> Tools:
    """The tools; skip (locally, installer never run) or fail (CI, or installer ran)."""
    tools, missing = find_tools()
    if tools is not None:
        return tools
    message = f"end-to-end tools missing: {', '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true" or INSTALL_STAMP.exists():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
