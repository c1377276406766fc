"""The real players: ffprobe decoding HLS, and in headless Chromium Shaka Player (the demo's
player.html) and the web/ pages running hls.js, dash.js, Shaka Player and Video.js from the
snippets docs/players.md quotes, or Shaka Player's FairPlay helpers (web/fairplay.html)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from proxy.dev.media import E2E_NODE_MODULES
from tests.e2e.procs import run
from tests.e2e.tools import E2E_DIR, INSTALL_HINT, PLAY_SCRIPT, VIDEOJS_FILES, Tools

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


async def play_pages(
    tools: Tools, pages: list[tuple[str, Path]], *, play_seconds: float = 2
) -> list[PageResult]:
    """Open each (page URL, screenshot path) in turn in one headless Chromium; a page is done
    once it has played past `play_seconds` (or failed)."""
    argv = [tools.node, str(PLAY_SCRIPT)]
    for url, screenshot in pages:
        argv += ["--url", url, "--screenshot", str(screenshot)]
    argv += ["--play-seconds", str(play_seconds)]
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


# The web players' test pages and snippets (docs/players.md quotes the snippets), and the
# players' builds the pages load beside them.
WEB_DIR = E2E_DIR / "web"
WEB_LIBRARIES = (
    E2E_NODE_MODULES / "hls.js" / "dist" / "hls.min.js",
    E2E_NODE_MODULES / "dashjs" / "dist" / "modern" / "umd" / "dash.all.min.js",
    *(E2E_NODE_MODULES / package / file for package, file in VIDEOJS_FILES),
)
PAGE_RESULT_SCRIPT = E2E_DIR / "page_result.mjs"
PAGE_RESULT_MS = 30_000


def install_web_pages(media: Path) -> str:
    """Copy the test pages, snippets and player builds under `media`/web; their path there."""
    missing = [str(library) for library in WEB_LIBRARIES if not library.is_file()]
    assert not missing, f"npm packages missing ({', '.join(missing)}); {INSTALL_HINT}"
    folder = media / "web"
    shutil.copytree(WEB_DIR, folder)
    for library in WEB_LIBRARIES:
        shutil.copy(library, folder / library.name)
    return "/media/web"


def web_player_url(static_url: str, player: str, src: str, **query: str | None) -> str:
    """web/player.html on the media server, running `player`'s snippet on `src`; `query`
    holds the snippet's options (gateway, asset, token) and the page's (rate); None: left out."""
    fields = {"player": player, "src": src, **{k: v for k, v in query.items() if v is not None}}
    return f"{static_url}/media/web/player.html?{urlencode(fields)}"


async def page_result(tools: Tools, url: str) -> Any:
    """What the page at `url` sets as window.e2eResult, in headless Chromium (page_result.mjs)."""
    argv = [tools.node, str(PAGE_RESULT_SCRIPT), "--url", url, "--timeout-ms", str(PAGE_RESULT_MS)]
    finished = await run(*argv, timeout=PAGE_RESULT_MS / 1000 + 15)
    lines = finished.stdout.strip().splitlines()
    assert finished.returncode == 0 and lines, (
        f"page_result.mjs exited {finished.returncode}: "
        f"{finished.stdout[-2000:]}{finished.stderr[-2000:]}"
    )
    report = json.loads(lines[-1])
    assert "error" not in report["result"], report
    return report["result"]
