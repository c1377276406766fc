"""A private redis-server on a unix socket, for the tests and the benchmark (no TCP port, no
persistence), stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """A redis-server this process started, on `socket_path`."""

    process: subprocess.Popen[bytes]
    socket_path: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def stop(self) -> None:
        """Stop it (by its PID) and wait for it; a no-op once stopped."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis_server(directory: Path) -> RedisServer:
    """redis-server on `directory`/redis.sock, answering PING (also to restart one there);
    RuntimeError with its log if it does not start within 10 s."""
    sock = directory / "redis.sock"
    with (directory / "redis.log").open("ab") as out:
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(directory)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = RedisServer(process, sock)
    deadline = time.monotonic() + 10
    while not _answers_ping(sock):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log = (directory / "redis.log").read_text(errors="replace")
            raise RuntimeError(f"redis-server did not start:\n{log}")
        time.sleep(0.01)
    return server


def _answers_ping(sock: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(1)
            client.connect(str(sock))
            client.sendall(b"PING\r\n")
            return client.recv(16).startswith(b"+PONG")
    except OSError:
        return False
