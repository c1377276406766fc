"""The `ezdrm` provider kind: its config section, the requests it builds, how answers are read,
and that the account id (pX) never reaches a log line or a metric.

Upstream is a tiny aiohttp server written here (not the EZDRM emulator); what it received is
decoded with the standard library only.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from aiohttp import web
from prometheus_client import generate_latest

from proxy.catalog.base import CatalogEntry
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.errors import (
    GatewayError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.upstream.base import ClientInfo, FairPlayCall, LicenseCall, ProviderClient
from proxy.upstream.ezdrm import EzdrmOptions, build_query, read_fault
from proxy.upstream.fairplay import SpcRequest
from proxy.upstream.registry import build_provider
from tests.conftest import StackFactory, free_ports

ACCOUNT = "Q7ZX9K"  # letters and digits like a pX, and found nowhere else in a log
ENV = {"EZDRM_ACCOUNT_ID": ACCOUNT}
EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "providers" / "ezdrm.yaml"
WIDEVINE_PATH = "/widevine-php/widevine-foreignkey.php"
PLAYREADY_PATH = "/cency/preauth.aspx"
SPC = b"\x00\x00\x00\x01" + bytes(range(64)) * 4
CKC = b"\x00\x00\x00\x01ckc-bytes"
PLAYREADY_LICENSE = (
    b'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap'
    b'.org/soap/envelope/"><soap:Body><AcquireLicenseResponse><AcquireLicenseResult><Response>'
    b"<LicenseResponse><Licenses><License>WE1S</License></Licenses></LicenseResponse>"
    b"</Response></AcquireLicenseResult></AcquireLicenseResponse></soap:Body></soap:Envelope>"
)


def soap_fault(status_code: str | None) -> bytes:
    """A PlayReady server exception, shaped like Microsoft's documented sample."""
    detail = (
        f"<detail><Exception><StatusCode>{status_code}</StatusCode></Exception></detail>"
        if status_code is not None
        else ""
    )
    return (
        '<?xml version="1.0" encoding="utf-8" ?><soap:Envelope xmlns:soap="http://schemas.'
        'xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode>'
        "<faultstring>System.Web.Services.Protocols.SoapException: Device Certificate Revoked."
        f"</faultstring>{detail}</soap:Fault></soap:Body></soap:Envelope>"
    ).encode()


# -- the config section ------------------------------------------------------------------------


def provider_section(base_url: str = "https://ezdrm.example", **ezdrm: Any) -> dict[str, Any]:
    """A provider of kind ezdrm; `ezdrm` replaces keys of its own section (None drops one)."""
    own: dict[str, Any] = {"account_id": {"env": "EZDRM_ACCOUNT_ID"}, "custom_data_from_user": True}
    for name, value in ezdrm.items():
        if value is None:
            own.pop(name, None)
        else:
            own[name] = value
    return {
        "kind": "ezdrm",
        "base_url": base_url,
        "license_urls": {
            "widevine": WIDEVINE_PATH,
            "playready": PLAYREADY_PATH,
            "fairplay": "/api/licenses/{asset_id}",
        },
        "ezdrm": own,
        "timeouts": {"connect_seconds": 1.0, "total_seconds": 2.0},
    }


def read_providers(
    section: dict[str, Any], env: dict[str, str] = ENV
) -> tuple[dict[str, ProviderSettings], list[str]]:
    reader = ConfigReader(Path("."), env)
    providers = parse_providers(reader, {"ezdrm-test": section})
    return providers, reader.problems


def test_a_valid_section() -> None:
    providers, problems = read_providers(provider_section())
    assert problems == []
    settings = providers["ezdrm-test"]
    assert settings.options == EzdrmOptions(ACCOUNT, None, custom_data_from_user=True)
    assert (settings.fairplay.request, settings.fairplay.response) == ("binary", "binary")
    assert not settings.needs_drm_resource_id and not settings.needs_key_ids


def test_every_problem_of_the_section_at_once() -> None:
    section = provider_section(
        account_id=ACCOUNT, custom_data="", custom_data_from_user="yes", extra=1
    )
    _, problems = read_providers(section)
    where = "providers.ezdrm-test.ezdrm"
    assert f"{where}.extra: unknown field" in problems
    assert any(p.startswith(f"{where}.account_id: is a credential") for p in problems)
    assert f"{where}.custom_data: must be 1-1024 characters" in problems
    assert f"{where}.custom_data_from_user: must be true or false" in problems
    assert all(ACCOUNT not in p for p in problems)


@pytest.mark.parametrize(
    ("ezdrm", "env", "expected"),
    [
        ({"account_id": None}, ENV, "account_id: is missing"),
        ({}, {}, "environment variable EZDRM_ACCOUNT_ID is not set"),
        ({}, {"EZDRM_ACCOUNT_ID": "AB12&pX=9"}, "account_id: must be 1-64 letters and digits"),
        ({"custom_data": "static"}, ENV, "give custom_data or custom_data_from_user, not both"),
        ({"custom_data": "x" * 1025}, ENV, "custom_data: must be 1-1024 characters"),
        ({"custom_data": 7, "custom_data_from_user": None}, ENV, "custom_data: must be a string"),
    ],
)
def test_section_problem(ezdrm: dict[str, Any], env: dict[str, str], expected: str) -> None:
    _, problems = read_providers(provider_section(**ezdrm), env)
    assert any(expected in p for p in problems), problems
    assert all("AB12&pX=9" not in p for p in problems)


def test_a_missing_section() -> None:
    section = provider_section()
    del section["ezdrm"]
    _, problems = read_providers(section)
    assert problems == [
        "providers.ezdrm-test.ezdrm: is missing: an ezdrm provider needs its account_id (pX)"
    ]


def test_what_the_kind_does_not_serve_or_take() -> None:
    section = provider_section()
    section["license_urls"]["clearkey"] = "/clearkey"
    section["key_url"] = "/keys/{asset_id}/{key_id}"
    section["fairplay"] = {"request": "form", "response": "ckc_tag"}
    section["auth"] = {"type": "none"}
    _, problems = read_providers(section)
    text = "\n".join(problems)
    assert "kind 'ezdrm' does not serve clearkey" in text
    assert "kind 'ezdrm' does not serve HLS AES-128 keys" in text
    assert "kind 'ezdrm' fixes its FairPlay formats (binary in, binary out)" in text
    assert "kind 'ezdrm' authenticates with its 'ezdrm' section" in text


def test_a_static_custom_data_may_come_from_a_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "custom-data"
    secret_file.write_text("shared-secret\n")
    section = provider_section(custom_data={"file": str(secret_file)}, custom_data_from_user=None)
    providers, problems = read_providers(section)
    assert problems == []
    assert providers["ezdrm-test"].options == EzdrmOptions(ACCOUNT, "shared-secret")


def test_no_secret_in_repr() -> None:
    options = EzdrmOptions(ACCOUNT, "shared-secret")
    providers, _ = read_providers(provider_section())
    for text in (repr(options), repr(providers["ezdrm-test"])):
        assert ACCOUNT not in text and "shared-secret" not in text


def test_the_example_config_reads_cleanly() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    reader = ConfigReader(EXAMPLE.parent, ENV)
    providers = parse_providers(reader, raw["providers"])
    assert reader.problems == []
    settings = providers["ezdrm"]
    assert settings.kind == "ezdrm" and set(settings.license_urls) == {
        "widevine",
        "playready",
        "fairplay",
    }
    assert settings.license_urls["widevine"].render({}) == (
        "https://widevine-dash.ezdrm.com" + WIDEVINE_PATH
    )


# -- the query ---------------------------------------------------------------------------------


def test_query_matches_ezdrms_published_license_urls() -> None:
    # EZDRM's demo player URLs (ezdrm.com/html/drm-demos.asp, quoted by public player code).
    widevine = "https://widevine-dash.ezdrm.com" + WIDEVINE_PATH
    assert f"{widevine}?{build_query(EzdrmOptions('B03B45'), 'ignored')}" == (
        "https://widevine-dash.ezdrm.com/widevine-php/widevine-foreignkey.php?pX=B03B45"
    )
    playready = "https://playready.ezdrm.com" + PLAYREADY_PATH
    assert f"{playready}?{build_query(EzdrmOptions('334B2C'), None)}" == (
        "https://playready.ezdrm.com/cency/preauth.aspx?pX=334B2C"
    )


@pytest.mark.parametrize("value", ["user-1", "ünïcode+/=&?#", "a" * 300])
def test_custom_data_is_base64_of_the_value(value: str) -> None:
    for options, user in (
        (EzdrmOptions(ACCOUNT, custom_data_from_user=True), value),
        (EzdrmOptions(ACCOUNT, custom_data=value), "someone-else"),
    ):
        fields = parse_qs(build_query(options, user), strict_parsing=True)
        assert fields["pX"] == [ACCOUNT]
        assert base64.b64decode(fields["CustomData"][0], validate=True) == value.encode()


def test_no_custom_data_without_a_user() -> None:
    assert build_query(EzdrmOptions(ACCOUNT, custom_data_from_user=True), None) == f"pX={ACCOUNT}"
    assert build_query(EzdrmOptions(ACCOUNT), "user-1") == f"pX={ACCOUNT}"


# -- round trips through a real server ---------------------------------------------------------


@dataclass
class Upstream:
    """A stand-in EZDRM on loopback: records each request, answers from `answers` by path."""

    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "path": request.raw_path.partition("?")[0],
                "query": request.query_string,
                "headers": request.headers.copy(),  # case-insensitive
                "body": body,
            }
        )
        default = (200, CKC, "application/octet-stream")
        if request.path == WIDEVINE_PATH:
            default = (200, b"\x08\x02widevine-license", "application/octet-stream")
        elif request.path == PLAYREADY_PATH:
            default = (200, PLAYREADY_LICENSE, "text/xml")
        status, answer, content_type = self.answers.get(request.path, default)
        return web.Response(status=status, body=answer, content_type=content_type)


MakeClient = Callable[..., Awaitable[ProviderClient]]


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    stand_in = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", stand_in.handle)
    # No access log: this stand-in's own lines (with pX) are not the gateway's to judge.
    server = await aiohttp_server(app, access_log=None)
    stand_in.url = str(server.make_url("")).rstrip("/")
    return stand_in


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    opened: list[ProviderClient] = []

    async def make(base_url: str, **ezdrm: Any) -> ProviderClient:
        providers, problems = read_providers(provider_section(base_url, **ezdrm))
        assert problems == []
        client = build_provider(providers["ezdrm-test"])
        await client.open()
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.close()


def license_call(drm: str, user: str | None = "user-7") -> LicenseCall:
    return LicenseCall(
        request_id="req-1",
        drm=drm,
        entry=CatalogEntry("asset-1", None),
        client=ClientInfo(forwarded_for="203.0.113.9", user_id=user),
        challenge=b"\x08\x01challenge\xff" if drm == "widevine" else b"<soap:Envelope/>",
        content_type="application/weird",
    )


def fairplay_call(asset_id: str = "asset-1") -> FairPlayCall:
    return FairPlayCall(
        request_id="req-2",
        entry=CatalogEntry(asset_id, None),
        client=ClientInfo(forwarded_for="203.0.113.9", user_id="user-7"),
        spc=SpcRequest(spc=SPC, fmt="form", asset_id=None),
    )


async def send(client: ProviderClient, call: LicenseCall | FairPlayCall) -> bytes:
    endpoint = client.endpoint(call.drm)
    assert endpoint is not None
    if isinstance(call, FairPlayCall):
        return (await client.fairplay(call, endpoint)).body
    return (await client.license(call, endpoint)).body


def custom_data(query: str) -> bytes:
    return base64.b64decode(parse_qs(query)["CustomData"][0], validate=True)


async def test_widevine_round_trip(upstream: Upstream, make_client: MakeClient) -> None:
    client = await make_client(upstream.url)
    call = license_call("widevine")
    assert await send(client, call) == b"\x08\x02widevine-license"
    [seen] = upstream.seen
    assert seen["path"] == WIDEVINE_PATH and seen["body"] == call.challenge
    assert parse_qs(seen["query"])["pX"] == [ACCOUNT]
    assert custom_data(seen["query"]) == b"user-7"
    headers = seen["headers"]
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["X-Request-Id"] == "req-1" and headers["X-Forwarded-For"] == "203.0.113.9"
    assert "Authorization" not in headers and "SOAPAction" not in headers


async def test_playready_round_trip(upstream: Upstream, make_client: MakeClient) -> None:
    client = await make_client(upstream.url)
    call = license_call("playready", user=None)
    assert await send(client, call) == PLAYREADY_LICENSE
    [seen] = upstream.seen
    assert seen["path"] == PLAYREADY_PATH and seen["body"] == call.challenge
    assert seen["query"] == f"pX={ACCOUNT}"  # no user, no CustomData
    assert seen["headers"]["Content-Type"] == "text/xml; charset=utf-8"
    expected = "http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"
    assert seen["headers"]["SOAPAction"] == expected


async def test_fairplay_round_trip(upstream: Upstream, make_client: MakeClient) -> None:
    client = await make_client(upstream.url, custom_data="static value", custom_data_from_user=None)
    before = metrics.REGISTRY.get_sample_value(
        "drm_gateway_fairplay_transcodes_total",
        {"client_format": "form", "provider_format": "binary"},
    )
    assert await send(client, fairplay_call("title:7")) == CKC
    [seen] = upstream.seen
    assert seen["path"] == "/api/licenses/title%3A7"
    assert seen["body"] == SPC and seen["headers"]["Content-Type"] == "application/octet-stream"
    assert custom_data(seen["query"]) == b"static value"
    after = metrics.REGISTRY.get_sample_value(
        "drm_gateway_fairplay_transcodes_total",
        {"client_format": "form", "provider_format": "binary"},
    )
    assert after == (before or 0.0) + 1


# -- answers -----------------------------------------------------------------------------------


HTML = b"<!DOCTYPE html>\n<html><body>Server Error</body></html>"


@pytest.mark.parametrize(
    ("drm", "status", "body", "error", "code", "player_status"),
    [
        ("playready", 500, soap_fault("0x8004c065"), UpstreamRejected, "0x8004c065", 403),
        ("playready", 500, soap_fault("0x8004C600"), UpstreamUnavailable, "0x8004c600", 502),
        ("playready", 200, soap_fault("0x8004c602"), UpstreamRejected, "0x8004c602", 403),
        ("playready", 500, soap_fault("0x8004c6ff"), UpstreamUnavailable, "other", 502),
        ("playready", 500, soap_fault(None), UpstreamUnavailable, "soap_fault", 502),
        ("playready", 200, soap_fault("0x8004c601"), UpstreamBadResponse, "0x8004c601", 502),
        ("widevine", 200, HTML, UpstreamBadResponse, "html_page", 502),
        ("widevine", 403, HTML, UpstreamRejected, "html_page", 403),
        ("widevine", 403, b"", UpstreamRejected, "-", 403),
        ("widevine", 401, b"denied", UpstreamAuthFailed, "-", 502),
        ("widevine", 200, b'{"error": "bad pX"}', UpstreamBadResponse, "-", 502),
        ("fairplay", 200, b"", UpstreamBadResponse, "-", 502),
        ("fairplay", 200, b'{"message": "no key"}', UpstreamBadResponse, "-", 502),
        ("fairplay", 500, HTML, UpstreamUnavailable, "html_page", 502),
    ],
)
async def test_answer_mapping(
    upstream: Upstream,
    make_client: MakeClient,
    drm: str,
    status: int,
    body: bytes,
    error: type[GatewayError],
    code: str,
    player_status: int,
) -> None:
    path = {"widevine": WIDEVINE_PATH, "playready": PLAYREADY_PATH}.get(
        drm, "/api/licenses/asset-1"
    )
    upstream.answers[path] = (status, body, "text/html" if body == HTML else "text/xml")
    client = await make_client(upstream.url)
    labels = {
        "provider": "ezdrm-test",
        "status_class": f"{status // 100}xx",
        "provider_error": code,
    }
    before = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_responses_total", labels)
    call = fairplay_call() if drm == "fairplay" else license_call(drm)
    with pytest.raises(GatewayError) as raised:
        await send(client, call)
    assert type(raised.value) is error
    assert (raised.value.status, raised.value.provider_error) == (player_status, code)
    after = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_responses_total", labels)
    assert after == (before or 0.0) + 1
    assert "Revoked" not in raised.value.message and "pX" not in raised.value.message


def test_a_license_is_not_a_fault() -> None:
    assert read_fault(200, {}, PLAYREADY_LICENSE) is None
    assert read_fault(200, {}, b"\x08\x02<html>" + bytes(range(256))) is None
    assert read_fault(200, {}, CKC) is None


# -- the account id never logged ---------------------------------------------------------------


def _leaks(text: str) -> list[str]:
    user_b64 = base64.b64encode(b"user-7").decode()
    return [s for s in (ACCOUNT, "pX=", "CustomData", user_b64, "static value") if s in text]


async def test_no_account_id_in_logs_or_metrics(
    upstream: Upstream, make_client: MakeClient, log_buffer: io.StringIO
) -> None:
    client = await make_client(upstream.url)
    upstream.answers[PLAYREADY_PATH] = (500, soap_fault("0x8004c600"), "text/xml")
    upstream.answers[WIDEVINE_PATH] = (200, HTML, "text/html")
    for call in (license_call("playready"), license_call("widevine")):
        with pytest.raises(GatewayError):
            await send(client, call)
    assert await send(client, fairplay_call()) == CKC
    (closed_port,) = free_ports(1)
    unreachable = await make_client(
        f"http://127.0.0.1:{closed_port}", custom_data="static value", custom_data_from_user=None
    )
    with pytest.raises(UpstreamUnavailable):
        await send(unreachable, license_call("widevine"))
    logged = log_buffer.getvalue()
    assert "upstream_error" in logged and "upstream_unreachable" in logged
    assert _leaks(logged) == []
    assert _leaks(generate_latest(metrics.REGISTRY).decode()) == []


async def test_no_account_id_on_the_access_line(
    upstream: Upstream, make_stack: StackFactory, tmp_path: Path
) -> None:
    account_file = tmp_path / "ezdrm-account"
    account_file.write_text(ACCOUNT + "\n")

    def use_ezdrm(raw: dict[str, Any]) -> None:
        section = provider_section(upstream.url, account_id={"file": str(account_file)})
        section["needs_drm_resource_id"] = False
        raw["providers"]["incoming"] = section
        raw["routing"] = {"default_provider": "incoming"}

    stack = await make_stack(configure=use_ezdrm)
    upstream.answers[PLAYREADY_PATH] = (500, soap_fault("0x8004c065"), "text/xml")
    url = stack.url("/v1/license/{}/both-1")
    async with stack.http.post(url.format("widevine"), data=b"\x08\x01abc") as resp:
        assert resp.status == 200 and await resp.read() == b"\x08\x02widevine-license"
    async with stack.http.post(url.format("playready"), data=b"<soap/>") as resp:
        assert resp.status == 403
    async with stack.http.post(
        url.format("fairplay"), data=SPC, headers={"Content-Type": "application/octet-stream"}
    ) as resp:
        assert resp.status == 200 and await resp.read() == CKC
    assert [s["path"] for s in upstream.seen] == [
        WIDEVINE_PATH,
        PLAYREADY_PATH,
        "/api/licenses/both-1",
    ]
    assert custom_data(upstream.seen[0]["query"]) == b"user-1"
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    access = {line["drm"]: line for line in lines if line.get("component") == "access"}
    assert access["playready"]["provider_error"] == "0x8004c065"
    assert access["playready"]["provider"] == "incoming" and access["widevine"]["status"] == 200
    assert _leaks(stack.logs.getvalue()) == []
    async with stack.http.get(stack.internal("/metrics")) as resp:
        assert _leaks(await resp.text()) == []
