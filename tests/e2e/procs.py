"""Run a program without blocking the event loop (the gateway under test shares it), bounded.

The runner lives in `proxy.dev.media` (the demo packages its media with it too): each
program gets its own process group; on timeout it is asked to stop (SIGTERM, so node can
close its browser), then killed. Only the processes started here are ever signalled.
"""

from __future__ import annotations

from proxy.dev.media import Finished, run, stop

__all__ = ["Finished", "run", "stop"]
