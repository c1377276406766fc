"""A local static web server on 127.0.0.1 for the player page, Shaka Player and test media.

It plays the part of the CDN and the web app: a different origin (port) from the gateway, so
the browser really goes through the gateway's CORS.
"""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tests.e2e.tools import PLAYER_PAGE, SHAKA_DIST

# Streaming types Python's table lacks, so players see what a CDN would send.
for _type, _ext in (
    ("application/dash+xml", ".mpd"),
    ("application/vnd.apple.mpegurl", ".m3u8"),
    ("video/iso.segment", ".m4s"),
    ("video/mp2t", ".ts"),
):
    mimetypes.add_type(_type, _ext)


@dataclass
class StaticServer:
    """A running static server; `url` has no trailing slash."""

    url: str
    runner: web.AppRunner

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.runner.cleanup()


async def _player_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PLAYER_PAGE, headers={"Cache-Control": "no-store"})


async def start_static_server(media: Path) -> StaticServer:
    """Serve /player.html, /shaka/* (Shaka Player's dist) and /media/* (`media`)."""
    app = web.Application()
    app.router.add_get("/player.html", _player_page)
    app.router.add_static("/shaka/", SHAKA_DIST)
    app.router.add_static("/media/", media)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    return StaticServer(f"http://127.0.0.1:{port}", runner)
