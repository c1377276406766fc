"""BENCH_PROFILE: py-spy profiles of one-worker gateways (generic, or a provider kind) under
wrk at 32 connections.

py-spy samples the gateway from outside (on core 0, beside wrk) while wrk drives it; only
on-CPU samples are kept (no --idle). Reported: the share of samples whose innermost Python
frame lies in each area (aiohttp client, aiohttp server, each proxy module, pyjwt, ...), the
top frames by own time, and the top gateway functions by inclusive time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")
_AREAS = (
    ("aiohttp client", re.compile(r"aiohttp/(client|connector|client_proto|client_reqrep)")),
    ("aiohttp server", re.compile(r"aiohttp/(web|http_|streams|base_protocol|helpers)")),
    ("pyjwt", re.compile(r"/jwt/")),
    ("structlog/logging", re.compile(r"/(structlog|logging)/")),
    ("prometheus_client", re.compile(r"/prometheus_client/")),
    ("multidict/yarl", re.compile(r"/(multidict|yarl)/")),
    ("asyncio/uvloop", re.compile(r"/(asyncio|uvloop)/")),
    ("aiohttp (other)", re.compile(r"/aiohttp/")),
)
# Anything else: named by its site-packages package or standard-library module.
_PACKAGE = re.compile(r"/lib/python3\.\d+/(?:site-packages/)?([A-Za-z0-9_]+)")
# Frames every sample passes through: not worth listing as "inclusive" costs.
_ENTRY = re.compile(r"/proxy/cli\.py|/proxy/workers\.py")
TOP = 15


def _area(path: str) -> str:
    if "/proxy/" in path:
        return "proxy/" + path.rsplit("/proxy/", 1)[1]
    for name, pattern in _AREAS:
        if pattern.search(path):
            return name
    package = _PACKAGE.search(path)
    return package[1] if package else "other"


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("/site-packages/", "/proxy/", "/lib/python3"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            path = ("proxy/" + path) if marker == "/proxy/" else path
            break
    return f"{match['func']} ({path}:{match['line']})"


def parse_collapsed(text: str) -> dict[str, Any]:
    """Shares (percent of samples) from py-spy's raw (collapsed stack) output."""
    own: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if _FRAME.match(f)]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[_short(leaf)] += count
        areas[_area(_FRAME.match(leaf)["file"])] += count  # type: ignore[index]
        for frame in set(frames):
            if "/proxy/" in frame and not _ENTRY.search(frame):
                inclusive[_short(frame)] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(TOP)]

    return {
        "samples": total,
        "by_area_percent": [(name, round(100 * n / total, 1)) for name, n in areas.most_common()]
        if total
        else [],
        "top_own_percent": shares(own) if total else [],
        "top_gateway_inclusive_percent": shares(inclusive) if total else [],
    }


def profile_gateway(
    server: Any, output: Path, seconds: int, drive: Callable[[], object], *, title: str
) -> dict[str, Any]:
    """Record the gateway for `seconds` while `drive()` loads it; print and return the shares."""
    pyspy = Path(sys.executable).parent / "py-spy"
    if not pyspy.exists():
        print("profile skipped: py-spy is not installed (BENCH_PROFILE=1 scripts/bench.sh)")
        return {}
    pid = next(pid for pid, comm, _, _ in server.members() if "python" in comm or "drm" in comm)
    argv = [
        "taskset", "-c", "0", str(pyspy), "record", "--pid", str(pid), "--duration",
        str(seconds), "--rate", "250", "--format", "raw", "--full-filenames",
        "--output", str(output), "--nonblocking",
    ]  # fmt: skip
    recorder = threading.Thread(
        target=subprocess.run,
        args=(argv,),
        kwargs={"capture_output": True, "timeout": seconds + 60},
    )
    recorder.start()
    drive()
    recorder.join()
    if not output.exists():
        print("profile failed: py-spy wrote nothing (is ptrace permitted?)")
        return {}
    result = parse_collapsed(output.read_text())
    print_profile(result, title)
    return result


def print_profile(result: dict[str, Any], title: str) -> None:
    print(f"\n## py-spy profile of {title} at 32 connections ({result['samples']} samples)")
    print("by area (innermost Python frame):")
    for name, share in result["by_area_percent"]:
        print(f"  {share:5.1f}%  {name}")
    print("top frames by own time:")
    for name, share in result["top_own_percent"]:
        print(f"  {share:5.1f}%  {name}")
    print("top gateway functions by inclusive time:")
    for name, share in result["top_gateway_inclusive_percent"]:
        print(f"  {share:5.1f}%  {name}")
