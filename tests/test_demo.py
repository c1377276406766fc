"""`drm-gateway demo` as a user runs it: every curl line it prints works as printed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed")
def test_demo_serves_every_example_it_prints(tmp_path: Path) -> None:
    public, internal, legacy, incoming = free_ports(4)
    output = tmp_path / "demo.out"
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_KEY", "_TOKEN", "_SECRET"))}
    with output.open("w") as out:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "demo",
                "--dir",
                str(tmp_path / "demo"),
                "--public-port",
                str(public),
                "--internal-port",
                str(internal),
                "--legacy-port",
                str(legacy),
                "--incoming-port",
                str(incoming),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "Try it" not in output.read_text() or "admin/rules" not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the demo did not start within 60 s"
            time.sleep(0.2)
        commands = printed_commands(output.read_text())
        assert len(commands) >= 9
        for command in commands:
            result = subprocess.run(
                ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=30
            )
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout, command
            assert b'"error": "' not in result.stdout, (command, result.stdout[:300])
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0
    assert "demo stopped" in output.read_text()
