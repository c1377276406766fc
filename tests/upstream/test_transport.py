"""The provider status table: which answers reach the player and which error each one maps to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp import web

from proxy.config.providers import ProviderAuth, ProviderSettings
from proxy.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.upstream.transport import ProviderFault, ProviderTransport, status_rule


@pytest.mark.parametrize(
    ("status", "body", "why", "error", "player_status"),
    [
        (200, b"", "empty_body", UpstreamBadResponse, 502),
        (200, b'{"errorCode": 7011}', "error_json_in_2xx", UpstreamBadResponse, 502),
        (204, b"", "empty_body", UpstreamBadResponse, 502),
        (302, b"moved", "redirect_not_followed", UpstreamBadResponse, 502),
        (401, b"", "auth_refused", UpstreamAuthFailed, 502),
        (403, b"no", "rejected", UpstreamRejected, 403),
        (404, b"", "rejected", UpstreamRejected, 404),
        (429, b"", "throttled", UpstreamOverloaded, 503),  # never a player's 429 (issue 17)
        (500, b"", "server_error", UpstreamUnavailable, 502),
        (503, b"", "server_error", UpstreamUnavailable, 502),
        (101, b"", "server_error", UpstreamUnavailable, 502),
        (600, b"", "server_error", UpstreamUnavailable, 502),
    ],
)
def test_refused_answers_map_to_one_error_each(
    status: int, body: bytes, why: str, error: type, player_status: int
) -> None:
    rule = status_rule(status, body)
    assert rule is not None and rule.why == why
    raised = rule.error(status)
    assert type(raised) is error and raised.status == player_status


@pytest.mark.parametrize(
    "body", [b"\x08\x04license", b'{"ckc": "AAAA"}', b"<ckc>AAAA</ckc>", b"{not json"]
)
def test_a_2xx_with_a_body_that_is_not_an_error_passes(body: bytes) -> None:
    assert status_rule(200, body) is None


# --- a provider kind's own error codes ------------------------------------------------------

_ANSWERS = {
    "/auth": (200, b'{"errorCode": "7019", "message": "hash mismatch"}'),
    "/unknown": (200, b'{"errorCode": "9999", "message": "new code"}'),
    "/down": (500, b'{"errorCode": "7011"}'),
    "/fine": (200, b"\x08\x04license"),
}


def _read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """A DoveRunner-like reader: an errorCode in any JSON answer; 7019 means our hash."""
    if not body.startswith(b"{"):
        return None
    code = str(json.loads(body)["errorCode"])
    return ProviderFault(code, (lambda _: UpstreamAuthFailed()) if code == "7019" else None)


@pytest.fixture
async def fault_transport(aiohttp_server: Any) -> AsyncIterator[ProviderTransport]:
    async def answer(request: web.Request) -> web.Response:
        status, body = _ANSWERS[request.path]
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    settings = ProviderSettings(
        name="kinded", license_urls={}, key_url=None, auth=ProviderAuth(), total_timeout=2.0
    )
    transport = ProviderTransport(settings, read_fault=_read_fault, known_errors={"7019", "7011"})
    await transport.open()
    transport.base = str(server.make_url("/"))  # type: ignore[attr-defined]
    yield transport
    await transport.close()


def _responses(code: str, status_class: str) -> float:
    labels = {"provider": "kinded", "status_class": status_class, "provider_error": code}
    value = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_responses_total", labels)
    return value or 0.0


@pytest.mark.parametrize(
    ("path", "error", "code", "status_class"),
    [
        ("/auth", UpstreamAuthFailed, "7019", "2xx"),
        ("/unknown", UpstreamBadResponse, "other", "2xx"),
        ("/down", UpstreamUnavailable, "7011", "5xx"),
    ],
)
async def test_a_provider_error_code_is_bounded_and_carried_by_the_error(
    fault_transport: ProviderTransport, path: str, error: type, code: str, status_class: str
) -> None:
    before = _responses(code, status_class)
    url = fault_transport.base + path.lstrip("/")  # type: ignore[attr-defined]
    with pytest.raises(GatewayError) as info:
        await fault_transport.send("POST", url, drm="widevine", body=b"x", headers={})
    assert type(info.value) is error
    assert info.value.provider_error == code
    assert _responses(code, status_class) == before + 1
    # The message shown to players says nothing of the provider's own text.
    assert "hash" not in info.value.message and "9999" not in info.value.message


async def test_an_answer_without_a_provider_error_passes(
    fault_transport: ProviderTransport,
) -> None:
    url = fault_transport.base + "fine"  # type: ignore[attr-defined]
    answer = await fault_transport.send("POST", url, drm="widevine", body=b"x", headers={})
    assert answer.body == b"\x08\x04license"


def test_a_kind_whose_answers_are_json_judges_them_itself() -> None:
    envelope = b'{"status": "OK", "error": null, "license": "AAAA"}'
    assert status_rule(200, envelope) is not None  # generic sniffing: looks like an error
    assert status_rule(200, envelope, json_errors=False) is None
    assert status_rule(200, b"", json_errors=False) is not None  # empty is still refused


async def test_a_generic_provider_counts_its_json_error_codes(aiohttp_server: Any) -> None:
    from proxy.upstream.generic import GenericProvider, read_json_fault

    assert read_json_fault(500, {}, b'{"errorCode": "EMULATED_FAULT"}') == ProviderFault(
        "EMULATED_FAULT"
    )
    assert read_json_fault(200, {}, b'{"license": "x"}') is None
    assert read_json_fault(200, {}, b"\x08\x04") is None
    settings = ProviderSettings(
        name="generic-codes",
        license_urls={},
        key_url=None,
        auth=ProviderAuth(),
        provider_errors=frozenset({"known_code"}),
    )
    provider = GenericProvider(settings)
    await provider.open()

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"errorCode": request.path.strip("/")}, status=503)

    app = web.Application()
    app.router.add_post("/{code}", answer)
    server = await aiohttp_server(app)
    try:
        for code, label in (("known_code", "known_code"), ("new_code", "other")):
            with pytest.raises(UpstreamUnavailable) as info:
                await provider.transport.send(
                    "POST", str(server.make_url(f"/{code}")), drm="widevine", headers={}
                )
            assert info.value.provider_error == label
    finally:
        await provider.close()


async def test_headers_that_reveal_or_impersonate_are_never_passed_back(
    aiohttp_server: Any,
) -> None:
    """A provider cannot set our X-Drm-Gateway-Provider (nor reveal itself by Server or
    X-Powered-By); an ordinary header of its own passes."""

    async def answer(request: web.Request) -> web.Response:
        headers = {
            "X-Drm-Gateway-Provider": "forged",
            "X-Powered-By": "provider-stack",
            "X-License-Info": "kept",
        }
        return web.Response(body=b"\x08\x04license", headers=headers)

    app = web.Application()
    app.router.add_post("/", answer)
    server = await aiohttp_server(app)
    settings = ProviderSettings(
        name="plain", license_urls={}, key_url=None, auth=ProviderAuth(), total_timeout=2.0
    )
    transport = ProviderTransport(settings)
    await transport.open()
    try:
        sent = await transport.send(
            "POST", str(server.make_url("/")), drm="widevine", body=b"x", headers={}
        )
    finally:
        await transport.close()
    names = {name.lower() for name, _ in sent.headers}
    assert "x-license-info" in names
    assert not names & {"x-drm-gateway-provider", "x-powered-by", "server"}
