"""`POST /v2/speke` at the HTTP edge: the packager credential (bearer, Basic), content type,
body limit, the SPEKE headers on every answer, the JSON error shape, metrics and log lines."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import __version__
from proxy.config.speke import PackagerCredential
from proxy.errors import PackagerUnauthorized
from proxy.observability.metrics import REGISTRY
from proxy.server.speke import check_credential
from tests.conftest import StackFactory
from tests.keys.cpix_docs import two_key_request
from tests.keys.speke_stack import (
    BASIC,
    PACKAGER_PASSWORD,
    PACKAGER_TOKEN,
    PACKAGER_USER,
    SpekeStack,
    basic_headers,
    bearer_headers,
    speke_stack,
)

BODY = two_key_request()
BEARER_CHALLENGE = 'Bearer realm="drm-gateway SPEKE"'
BASIC_CHALLENGE = 'Basic realm="drm-gateway SPEKE", charset="UTF-8"'


def speke_count(result: str) -> float:
    return REGISTRY.get_sample_value("drm_gateway_speke_requests_total", {"result": result}) or 0.0


def refused_count(detail: str) -> float:
    labels = {"reason": "unauthorized", "detail": detail}
    return REGISTRY.get_sample_value("drm_gateway_refused_requests_total", labels) or 0.0


@pytest.fixture
async def bearer(make_stack: StackFactory, tmp_path: Path) -> SpekeStack:
    return await speke_stack(make_stack, tmp_path, speke={"max_body_bytes": 16_384})


@pytest.fixture
async def basic(make_stack: StackFactory, tmp_path: Path) -> SpekeStack:
    return await speke_stack(make_stack, tmp_path, credential=BASIC)


def assert_error(status: int, headers: Any, body: bytes, expected: int, code: str) -> None:
    """Our JSON error shape, with the SPEKE and request id headers."""
    assert status == expected, body
    error = json.loads(body)
    assert set(error) == {"error", "message", "request_id"} and error["error"] == code
    assert headers["X-Request-Id"] == error["request_id"]
    assert headers["X-Speke-User-Agent"] == f"drm-gateway/{__version__}"


# --- credential ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "detail"),
    [
        (None, "missing_credential"),
        ("", "missing_credential"),
        ("Bearer", "missing_credential"),
        ("Bearer ", "missing_credential"),
        (f"Basic {PACKAGER_TOKEN}", "missing_credential"),
        (f"Bearer {PACKAGER_TOKEN}x", "invalid_credential"),
        (f"Bearer {PACKAGER_TOKEN[:-1]}", "invalid_credential"),
        ("Bearer wrong-token-of-some-length", "invalid_credential"),
    ],
)
async def test_a_packager_without_the_bearer_token_gets_401_with_a_challenge(
    bearer: SpekeStack, authorization: str | None, detail: str
) -> None:
    headers = bearer_headers()
    del headers["Authorization"]
    if authorization is not None:
        headers["Authorization"] = authorization
    refused, counted = refused_count(detail), speke_count("unauthorized")
    status, answer_headers, body = await bearer.post(BODY, headers=headers, asset="a-1")
    assert_error(status, answer_headers, body, 401, "unauthorized")
    assert answer_headers["WWW-Authenticate"] == BEARER_CHALLENGE
    assert json.loads(body)["message"] == "A valid packager credential is required."
    assert refused_count(detail) == refused + 1 and speke_count("unauthorized") == counted + 1


async def test_the_bearer_scheme_is_case_insensitive(bearer: SpekeStack) -> None:
    headers = bearer_headers() | {"Authorization": f"bearer {PACKAGER_TOKEN}"}
    assert (await bearer.post(BODY, headers=headers, asset="a-1"))[0] == 200


def basic_value(text: str) -> str:
    return "Basic " + base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {PACKAGER_PASSWORD}",
        basic_value(f"{PACKAGER_USER}:{PACKAGER_PASSWORD}x"),
        basic_value(f"other:{PACKAGER_PASSWORD}"),
        basic_value(f"{PACKAGER_USER}{PACKAGER_PASSWORD}"),  # no colon
        basic_value(f"{PACKAGER_USER}:"),
        "Basic not*base64",
        "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
    ],
)
async def test_a_packager_without_the_basic_credential_gets_401_with_a_challenge(
    basic: SpekeStack, authorization: str | None
) -> None:
    headers = basic_headers()
    del headers["Authorization"]
    if authorization is not None:
        headers["Authorization"] = authorization
    status, answer_headers, body = await basic.post(BODY, headers=headers, asset="a-1")
    assert_error(status, answer_headers, body, 401, "unauthorized")
    assert answer_headers["WWW-Authenticate"] == BASIC_CHALLENGE


async def test_the_basic_credential_is_accepted(basic: SpekeStack) -> None:
    status, headers, body = await basic.post(BODY, headers=basic_headers(), asset="a-1")
    assert status == 200, body
    assert headers["X-Speke-Version"] == "2.0"


def test_credentials_are_compared_whole() -> None:
    bearer = PackagerCredential("bearer", "s" * 20)
    check_credential("Bearer " + "s" * 20, bearer)
    check_credential("  BEARER   " + "s" * 20 + "  ", bearer)
    for header in (None, "Bearer " + "s" * 19, "Bearer " + "s" * 21, "Token " + "s" * 20):
        with pytest.raises(PackagerUnauthorized):
            check_credential(header, bearer)
    basic = PackagerCredential("basic", "p" * 20, "user")
    check_credential(basic_value("user:" + "p" * 20), basic)
    with pytest.raises(PackagerUnauthorized) as refused:
        check_credential(basic_value("user:" + "p" * 19), basic)
    assert refused.value.challenges == (BASIC_CHALLENGE,) and refused.value.detail == (
        "invalid_credential"
    )
    assert "p" * 19 not in str(refused.value)


# --- content type, size ----------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "multipart/x"])
async def test_a_document_that_is_not_xml_gets_415(
    bearer: SpekeStack, content_type: str | None
) -> None:
    headers = bearer_headers()
    if content_type is None:
        del headers["Content-Type"]
    else:
        headers["Content-Type"] = content_type
    counted = speke_count("unsupported_media_type")
    status, answer_headers, body = await bearer.post(BODY, headers=headers, asset="a-1")
    assert_error(status, answer_headers, body, 415, "unsupported_media_type")
    assert speke_count("unsupported_media_type") == counted + 1


async def test_text_xml_with_a_charset_is_accepted(bearer: SpekeStack) -> None:
    headers = bearer_headers() | {"Content-Type": "text/xml; charset=utf-8"}
    assert (await bearer.post(BODY, headers=headers, asset="a-1"))[0] == 200


async def test_a_body_over_the_limit_gets_413_declared_or_streamed(bearer: SpekeStack) -> None:
    large = b"<x>" + b" " * 20_000 + b"</x>"
    status, headers, body = await bearer.post(large, asset="a-1")
    assert_error(status, headers, body, 413, "body_too_large")

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 1024

    async with bearer.stack.anon.post(
        bearer.speke_url, data=chunks(), headers=bearer_headers(), params={"asset": "a-1"}
    ) as resp:
        assert_error(resp.status, resp.headers, await resp.read(), 413, "body_too_large")


async def test_the_credential_is_checked_before_anything_is_read(bearer: SpekeStack) -> None:
    headers = {"Content-Type": "text/plain"}
    status, answer_headers, body = await bearer.post(b"x" * 20_000, headers=headers)
    assert_error(status, answer_headers, body, 401, "unauthorized")


# --- headers and shape -----------------------------------------------------------------------


@pytest.mark.parametrize(("version", "echoed"), [("2.0", "2.0"), (" 2.1 ", "2.1"), ("9.9", None)])
async def test_the_speke_version_is_echoed_only_when_supported(
    bearer: SpekeStack, version: str, echoed: str | None
) -> None:
    headers = bearer_headers() | {"X-Speke-Version": version}
    status, answer_headers, _ = await bearer.post(BODY, headers=headers, asset="a-1")
    assert status == (200 if echoed == "2.0" else 422)
    assert answer_headers.get("X-Speke-Version") == echoed
    assert answer_headers["X-Speke-User-Agent"] == f"drm-gateway/{__version__}"


async def test_other_methods_and_paths_get_our_json_errors(bearer: SpekeStack) -> None:
    async with bearer.stack.anon.get(bearer.speke_url, headers=bearer_headers()) as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert (await resp.json())["error"] == "method_not_allowed"
        assert resp.headers["X-Speke-User-Agent"].startswith("drm-gateway/")
    async with bearer.stack.anon.get(bearer.stack.internal("/healthz")) as resp:
        assert "X-Speke-User-Agent" not in resp.headers  # only SPEKE answers carry it


async def test_an_invalid_asset_parameter_is_a_400(bearer: SpekeStack) -> None:
    status, headers, body = await bearer.post(BODY, asset="not/valid")
    assert_error(status, headers, body, 400, "invalid_id")


async def test_each_request_logs_one_line_without_keys(bearer: SpekeStack) -> None:
    assert (await bearer.post(BODY, asset="log-1"))[0] == 200
    assert (await bearer.post(BODY, headers=bearer_headers("2.1"), asset="log-1"))[0] == 422
    lines = [json.loads(line) for line in bearer.stack.logs.getvalue().splitlines()]
    speke = [line for line in lines if line.get("event") == "speke_request"]
    ok, refused = speke[-2], speke[-1]
    assert ok["result"] == "ok" and ok["asset_id"] == "log-1" and ok["key_count"] == 2
    assert (ok["source"], ok["holders"], ok["queued"]) == ("legacy", ["legacy", "incoming"], [])
    assert ok["request_id"] and ok["key_rule"] == "default"
    assert (refused["result"], refused["status"]) == ("invalid_cpix", 422)
    assert "PlainValue" not in bearer.stack.logs.getvalue()


async def test_the_speke_series_exist_from_the_start(bearer: SpekeStack) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(bearer.stack.internal("/metrics")) as resp:
            text = await resp.text()
    for line in (
        'drm_gateway_speke_requests_total{result="key_mirror_failed"}',
        'drm_gateway_key_mirror_writes_total{provider="incoming",result="queued"}',
        "drm_gateway_key_mirror_queue ",
    ):
        assert line in text
