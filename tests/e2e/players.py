"""The two real players: ffprobe decoding HLS, and Shaka Player in headless Chromium."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.e2e.procs import run
from tests.e2e.tools import PLAY_SCRIPT, Tools

FFPROBE_TIMEOUT = 60.0
# play.mjs bounds itself (--timeout-ms); the outer bound only catches a wedged node.
CHROMIUM_RUN_MS = 120_000
PAGE_TIMEOUT_MS = 20_000


async def count_frames(tools: Tools, url: str) -> int:
    """Video frames ffprobe decodes from `url` (0 when it decodes none).

    ffprobe exits 0 even when some keys fail and their segments are skipped, so the count,
    not the exit code, tells whether everything played.
    """
    finished = await run(
        tools.ffprobe, "-v", "error",
        # Bound every socket wait so a stuck connection cannot hang the test.
        "-rw_timeout", "10000000",
        "-count_frames", "-select_streams", "v:0",
        "-show_entries", "stream=nb_read_frames", "-of", "json",
        url,
        timeout=FFPROBE_TIMEOUT,
    )  # fmt: skip
    streams = json.loads(finished.stdout or "{}").get("streams") or [{}]
    frames = streams[0].get("nb_read_frames", "0")
    return int(frames) if str(frames).isdigit() else 0


@dataclass(frozen=True, slots=True)
class PageResult:
    """What play.mjs saw on one page of player.html."""

    url: str
    state: str
    error: int | str | None
    current_time: float
    decoded_frames: int
    license_requests: int
    timed_out: bool
    screenshot: Path
    console: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PageResult:
        return cls(
            url=data["url"],
            state=data["state"],
            error=data["error"],
            current_time=float(data["currentTime"]),
            decoded_frames=int(data["decodedFrames"]),
            license_requests=int(data["licenseRequests"]),
            timed_out=bool(data["timedOut"]),
            screenshot=Path(data["screenshot"]),
            console=list(data["console"]),
        )


async def play_pages(tools: Tools, pages: list[tuple[str, Path]]) -> list[PageResult]:
    """Open each (page URL, screenshot path) in turn in one headless Chromium."""
    argv = [tools.node, str(PLAY_SCRIPT)]
    for url, screenshot in pages:
        argv += ["--url", url, "--screenshot", str(screenshot)]
    argv += ["--page-timeout-ms", str(PAGE_TIMEOUT_MS), "--timeout-ms", str(CHROMIUM_RUN_MS)]
    finished = await run(*argv, timeout=CHROMIUM_RUN_MS / 1000 + 15)
    lines = finished.stdout.strip().splitlines()
    assert finished.returncode == 0 and lines, (
        f"play.mjs exited {finished.returncode}: {finished.stdout[-2000:]}{finished.stderr[-2000:]}"
    )
    report = json.loads(lines[-1])
    return [PageResult.from_json(page) for page in report["pages"]]


def assert_played(page: PageResult) -> None:
    """The page played past 2 s, decoding frames, after exactly one license request."""
    assert page.error is None, (page.error, page.console)
    assert page.current_time > 2, page.console
    assert page.decoded_frames > 0
    assert page.license_requests == 1
