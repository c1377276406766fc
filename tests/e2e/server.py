"""The local static server for the player page, Shaka Player and test media: the demo's.

It plays the part of the CDN and the web app: a different origin (port) from the gateway, so
the browser really goes through the gateway's CORS. It serves the packaged page
`proxy/dev/static/player.html`, the one `drm-gateway demo` serves.
"""

from __future__ import annotations

from pathlib import Path

from proxy.dev.player import PlayerServer, start_player_server

StaticServer = PlayerServer


async def start_static_server(media: Path) -> StaticServer:
    """Serve /player.html, /shaka/* (Shaka Player's dist) and /media/* (`media`)."""
    return await start_player_server(media, port=0)
