"""The OpenAPI description (proxy/server/openapi.yaml): a valid OpenAPI 3.1 document, served
at `GET /openapi.json` on the internal port without a token, that describes every route the
gateway's apps register (public, internal, SPEKE on the internal port or on its own
listener) and nothing else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from proxy.server.app import create_internal_app, create_own_speke_app
from proxy.server.openapi import load_document
from tests.conftest import StackFactory
from tests.keys.speke_stack import speke_stack

SOURCE = Path(__file__).parents[2] / "proxy" / "server" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
Route = tuple[str, str]  # (METHOD, path template)
# The two 4xx/5xx answers with a report beside the error shape's fields: /readyz unready
# (its problems), and a refused rules reload (the file's problems, as an accepted reload's
# answer has them).
WITH_REPORT: frozenset[tuple[str, str, str]] = frozenset(
    {("GET", "/readyz", "503"), ("POST", "/admin/rules/reload", "422")}
)


def described(document: dict[str, Any], tag: str | None = None) -> set[Route]:
    """Every (method, path) the document describes, those with `tag` only if given."""
    routes = set()
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is not None and (tag is None or tag in operation.get("tags", ())):
                routes.add((method.upper(), path))
    return routes


def registered(app: web.Application) -> set[Route]:
    """Every (method, path template) routed by `app`. aiohttp's add_get also routes HEAD."""
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        routes.add((route.method, resource.canonical))
    return routes


def answered(routes: set[Route], *, public: bool) -> set[Route]:
    """What a listener answers: its routes, and on the public port a CORS preflight
    (OPTIONS, answered by the middleware) on each of them."""
    if not public:
        return set(routes)
    return routes | {("OPTIONS", path) for _, path in routes}


def only_described_heads(routes: set[Route], document: dict[str, Any]) -> set[Route]:
    """`routes` without the HEAD routes aiohttp adds beside each GET, except those the
    document describes (a HEAD it describes must still be routed: see the tests)."""
    heads = {route for route in described(document) if route[0] == "HEAD"}
    return {r for r in routes if r[0] != "HEAD" or r in heads}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = yaml.safe_load(SOURCE.read_text())
    assert document["openapi"].startswith("3.1.")
    errors = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in OpenAPIV31SpecValidator(document).iter_errors()
    ]
    assert errors == []
    assert load_document() == document  # the packaged copy is the repository's


def test_every_error_answer_is_the_json_error_shape() -> None:
    """Each 4xx/5xx answer the document describes with a body uses the Error schema (those
    of WITH_REPORT: its fields, then the report); the schema is exactly
    proxy/server/middleware.py's body."""
    document = load_document()
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "message", "request_id"}
    assert error["additionalProperties"] is False
    responses = document["components"]["responses"]
    checked = 0
    for path, item in document["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for status, response in operation["responses"].items():
                if status[0] not in "45" and status != "default":
                    continue
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                content = response.get("content")
                if (method.upper(), path, status) in WITH_REPORT:
                    parts = content["application/json"]["schema"]["allOf"]
                    assert parts[0] == {"$ref": "#/components/schemas/ErrorFields"}
                    checked += 1
                    continue
                if content is None:
                    assert method == "head", (path, method, status)
                    continue
                assert list(content) == ["application/json"], (path, method, status)
                ref = content["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error", (path, method, status)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("listener", ["internal", "own"])
async def test_every_route_is_described_and_nothing_else(
    make_stack: StackFactory, tmp_path: Path, listener: str
) -> None:
    speke = await speke_stack(make_stack, tmp_path, listener=listener)
    gateway = speke.stack.gateway
    document = load_document()
    public = gateway.public_app
    internal = create_internal_app(public)
    player = only_described_heads(registered(public), document)
    assert described(document, "player") == answered(player, public=True)
    ops = only_described_heads(registered(internal), document)
    speke_routes = {("POST", "/v2/speke")}
    assert described(document, "speke") == speke_routes
    if listener == "own":
        assert only_described_heads(registered(create_own_speke_app(public)), document) == (
            speke_routes
        )
        assert not ops & speke_routes
        ops |= speke_routes
    internal_tags = described(document, "ops") | described(document, "admin")
    assert internal_tags | speke_routes == ops
    # A described HEAD is routed (beside its GET), on the public port only.
    heads = {route for route in described(document) if route[0] == "HEAD"}
    assert heads <= registered(public)
    # Internal paths name the internal listener; public ones the top-level (public) server.
    for path, item in document["paths"].items():
        servers = [server["url"] for server in item.get("servers", ())]
        on_public = any(route[1] == path for route in player)
        assert (servers == []) == on_public, path


async def test_openapi_json_is_served_on_the_internal_port_without_a_token(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack()
    async with stack.anon.get(stack.internal("/openapi.json")) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-Id"]
        served = json.loads(await resp.read())
    assert served == load_document()
    async with stack.anon.get(stack.url("/openapi.json")) as resp:
        assert resp.status == 404  # not on the public port
        body = await resp.json()
        assert set(body) == {"error", "message", "request_id"}
        assert body["error"] == "not_found"
