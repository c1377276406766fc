"""`GET /openapi.json` on the internal port: the OpenAPI 3.1 description of the gateway.

The description is kept in the repository as YAML (proxy/server/openapi.yaml, reviewable in
a diff) and shipped as package data; it is read and serialised to JSON once per process, on
the first request (about 80 ms of YAML parsing no start-up needs to pay). That the shipped
file is a valid OpenAPI 3.1 document is checked by tests/server/test_openapi.py.
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
    return web.Response(body=document_json(), content_type="application/json")


def add_openapi_route(app: web.Application) -> None:
    """Serve `GET /openapi.json` on `app` (the internal app), without a token."""
    app.router.add_get(OPENAPI_PATH, openapi_handler)
