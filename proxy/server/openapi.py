"""`GET /openapi.json` on the internal port: the OpenAPI 3.1 description of the gateway.

The description is kept in the repository as YAML (proxy/server/openapi.yaml, reviewable in
a diff) and shipped as package data; it is read and serialised to JSON once, when the
internal app is built, so a broken file stops the start instead of a later request.
No token is needed: the document holds no secret, and the port is never exposed publicly.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, Final

import yaml
from aiohttp import web

OPENAPI_PATH: Final = "/openapi.json"
_DOCUMENT = web.AppKey("openapi_document", bytes)


def load_document() -> dict[str, Any]:
    """The OpenAPI document as a mapping, parsed from the packaged YAML."""
    text = resources.files("proxy.server").joinpath("openapi.yaml").read_text(encoding="utf-8")
    document = yaml.safe_load(text)
    if not isinstance(document, dict) or "openapi" not in document:
        raise ValueError("proxy/server/openapi.yaml is not an OpenAPI document")
    return document


@cache
def document_json() -> bytes:
    """The document as compact JSON bytes (read once per process)."""
    return json.dumps(load_document(), separators=(",", ":")).encode()


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_DOCUMENT], content_type="application/json")


def add_openapi_route(app: web.Application) -> None:
    """Serve `GET /openapi.json` on `app` (the internal app), without a token."""
    app[_DOCUMENT] = document_json()
    app.router.add_get(OPENAPI_PATH, openapi_handler)
