"""`drm-gateway demo` as a user runs it: every curl line and the player link work as printed."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.dev.demo import DEMO_ADMIN_TOKEN, DEMO_KEY_ID, demo_stream
from proxy.dev.media import INSTALL_COMMAND, find_media_tools
from proxy.dev.player import find_player_tools, prepare_demo_media
from tests.e2e.tools import PLAY_SCRIPT, find_tools

ROOT = Path(__file__).resolve().parent.parent
PLAYER_LINK = re.compile(r"http://127\.0\.0\.1:\d+/player\.html\?\S+")
FIRST_RUN_LINE = "packaging demo media (first run only)..."
needs_curl = pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def printed_commands(banner: str) -> list[str]:
    """The curl commands of the banner, continuation lines joined."""
    joined = banner.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


@dataclass(frozen=True)
class Demo:
    """A running demo: its banner, and the file its output keeps going to."""

    banner: str
    output: Path

    def log(self) -> str:
        """Everything the demo printed so far."""
        return self.output.read_text()


def run_demo(workdir: Path, *, path: str | None = None) -> Iterator[Demo]:
    """Start the demo as `make demo` does, yield it once the banner is out, then stop it."""
    public, internal, legacy, incoming, player = free_ports(5)
    output = workdir.parent / f"{workdir.name}.out"
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_KEY", "_TOKEN", "_SECRET"))}
    if path is not None:
        env["PATH"] = path
    ports = {"public": public, "internal": internal, "legacy": legacy, "incoming": incoming}
    argv = [sys.executable, "-m", "proxy.cli", "demo", "--dir", str(workdir)]
    for name, port in {**ports, "player": player}.items():
        argv += [f"--{name}-port", str(port)]
    with output.open("w") as out:
        demo = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "Try it" not in output.read_text() or "admin/rules" not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the demo did not start within 60 s"
            time.sleep(0.2)
        yield Demo(output.read_text(), output)
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0
    assert "demo stopped" in output.read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the module, started on a fresh work directory (so media is made anew)."""
    yield from run_demo(tmp_path_factory.mktemp("demo") / "demo")


def fetch(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@needs_curl
def test_demo_serves_every_example_it_prints(demo: Demo) -> None:
    commands = printed_commands(demo.banner)
    assert len(commands) >= 9
    for command in commands:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=30
        )
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout, command
        assert b'"error": "' not in result.stdout, (command, result.stdout[:300])


def test_demo_serves_the_player_page_it_links_or_says_how_to_get_it(demo: Demo) -> None:
    banner = demo.banner
    tools, missing = find_player_tools()
    if tools is None:
        assert PLAYER_LINK.search(banner) is None
        assert f"missing here: {', '.join(missing)}" in banner
        assert f"\n  {INSTALL_COMMAND}\n" in banner
        return
    assert FIRST_RUN_LINE in banner
    link = PLAYER_LINK.search(banner)
    assert link is not None, banner
    parts = urlsplit(link.group())
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert set(query) == {"gateway", "asset", "manifest", "token"}
    assert query["asset"] == demo_stream().asset_id
    server = f"{parts.scheme}://{parts.netloc}"

    status, kind, page = fetch(link.group())
    assert (status, kind.split(";")[0]) == (200, "text/html")
    assert b'src="/shaka/shaka-player.compiled.js"' in page
    status, kind, mpd = fetch(server + query["manifest"])
    assert (status, kind) == (200, "application/dash+xml")
    kid = DEMO_KEY_ID
    assert f'default_KID="{kid[:8]}-{kid[8:12]}-{kid[12:16]}-{kid[16:20]}-{kid[20:]}"' in (
        mpd.decode()
    )
    status, kind, script = fetch(f"{server}/shaka/shaka-player.compiled.js")
    assert status == 200 and kind.split(";")[0] in {"text/javascript", "application/javascript"}
    assert b"Shaka Player" in script[:500]


def test_the_demo_player_page_plays_through_the_gateway(demo: Demo, tmp_path: Path) -> None:
    e2e_tools, missing = find_tools()
    if e2e_tools is None or find_player_tools()[0] is None:
        pytest.skip(f"no headless player here ({', '.join(missing)}); {INSTALL_COMMAND}")
    link = PLAYER_LINK.search(demo.banner)
    assert link is not None
    screenshot = ["--screenshot", str(tmp_path / "demo.png")]
    bounded = ["--timeout-ms", "60000"]
    played = subprocess.run(
        [e2e_tools.node, str(PLAY_SCRIPT), "--url", link.group(), *screenshot, *bounded],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert played.returncode == 0, played.stdout[-2000:] + played.stderr[-2000:]
    [page] = json.loads(played.stdout.strip().splitlines()[-1])["pages"]
    assert (page["state"], page["error"], page["licenseRequests"]) == ("playing", None, 1), page
    assert page["currentTime"] > 2 and page["decodedFrames"] > 0
    # The gateway answered that license from the provider /admin/explain names.
    asset = demo_stream().asset_id
    decision = explain(demo.banner, asset)
    licenses = [
        line
        for line in map(json.loads, re.findall(r'^\{"component": "access".*$', demo.log(), re.M))
        if line["method"] == "POST"
        and line["route"] == "/v1/license/{drm}/{asset_id}"
        and (line["drm"], line["asset_id"]) == ("clearkey", asset)
    ]
    assert [(a["provider"], a["rule"], a["status"]) for a in licenses] == [
        (decision["provider"], decision["rule"], 200)
    ]


def explain(banner: str, asset: str) -> dict[str, Any]:
    """The gateway's routing decision for the asset's ClearKey licenses."""
    internal = re.search(r"gateway, internal\s+(\S+)", banner)
    assert internal is not None
    request = urllib.request.Request(
        f"{internal.group(1)}/admin/explain?asset={asset}&drm=clearkey",
        headers={"Authorization": f"Bearer {DEMO_ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        decision: dict[str, Any] = json.loads(resp.read())["decision"]
    return decision


def test_the_demo_without_ffmpeg_says_how_to_get_the_player(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    for demo in run_demo(tmp_path / "demo", path=str(empty)):
        text = demo.banner
        assert PLAYER_LINK.search(text) is None
        assert FIRST_RUN_LINE not in text
        missing = find_player_tools(str(empty))[1]
        assert missing[0] == "ffmpeg"
        assert f"missing here: {', '.join(missing)}. Install them" in text
        assert f"\n  {INSTALL_COMMAND}\n" in text
        assert "Try it (each line works as printed)" in text


async def test_demo_media_is_made_once_then_reused(tmp_path: Path) -> None:
    tools, missing = find_media_tools()
    if tools is None:
        pytest.skip(f"no media tools here ({', '.join(missing)}); {INSTALL_COMMAND}")
    said: list[str] = []
    media = await prepare_demo_media(tmp_path, demo_stream(), tools, said.append)
    folder = media / demo_stream().asset_id
    assert said[0] == FIRST_RUN_LINE
    assert (folder / "manifest.mpd").is_file()
    made = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"video_init.mp4", "audio_init.mp4", "video_1.m4s"} <= set(made)

    said.clear()
    assert await prepare_demo_media(tmp_path, demo_stream(), tools, said.append) == media
    assert said == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == made
    assert [p.name for p in media.iterdir()] == [folder.name]  # no partial folder left


def test_the_demo_incoming_provider_verifies_tokens(demo: Demo) -> None:
    # The gateway's signed tokens work (the printed ClearKey example for an incoming-only
    # title succeeds above); a forged one is refused by the emulated incoming provider.
    incoming = re.search(r"incoming emulator\s+(http://\S+)", demo.banner)
    assert incoming is not None, demo.banner
    request = urllib.request.Request(
        f"{incoming.group(1)}/license/widevine/res-00009",
        data=b"\x08\x04",
        headers={"X-Drm-Token": "forged.token.value"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401
