"""Run a program without blocking the event loop (the gateway under test shares it), bounded.

Each program gets its own process group; on timeout it is asked to stop (SIGTERM, so node can
close its browser), then killed. Only the processes started here are ever signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass


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
