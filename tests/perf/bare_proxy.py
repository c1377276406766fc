"""The bare aiohttp reverse proxy the gateway is compared with: the same client tuning as the
gateway's upstream client (keep-alive pool, no cookie jar, no decompression), nothing else.

    python -m tests.perf.bare_proxy PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def proxy(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(
        request.app[UPSTREAM] + request.path,
        data=body,
        headers={"Content-Type": request.headers.get("Content-Type", "application/octet-stream")},
    ) as upstream:
        answer = await upstream.read()
        return web.Response(body=answer, status=upstream.status, content_type=upstream.content_type)


async def session_ctx(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
    )
    yield
    await app[SESSION].close()


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    app = web.Application()
    app[UPSTREAM] = upstream
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", proxy)
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop  # the gateway runs on uvloop too: compare like with like
    except ImportError:
        pass
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
