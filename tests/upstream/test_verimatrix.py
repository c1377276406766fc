"""The verimatrix provider kind: its config section, the JWT it signs, the FairPlay JSON it
speaks and the MDRM error codes it reads, against a tiny upstream server written here."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDict
from structlog.testing import capture_logs

from proxy.catalog.base import CatalogEntry
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.errors import (
    GatewayError,
    MissingResourceId,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.upstream.base import ClientInfo, FairPlayCall, LicenseCall
from proxy.upstream.fairplay import SpcRequest
from proxy.upstream.verimatrix import (
    VerimatrixOptions,
    VerimatrixProvider,
    parse_options,
    read_fault,
)

SECRET = "demo-verimatrix-signing-secret-0123456789ab"
ENV = {"VERIMATRIX_SIGNING_SECRET": SECRET}
EXAMPLE = Path(__file__).parents[2] / "deploy" / "examples" / "providers" / "verimatrix.yaml"
CHALLENGE = b"\x08\x01\x12widevine-challenge\x00\xff" * 8
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 2
CKC = b"\x00\x00\x00\x01ckc" + bytes(range(255, -1, -1))
PATH = "providers.vmx.verimatrix"


def _section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "key_id": "demo-kid",
        "algorithm": "HS256",
        "signing_secret": {"env": "VERIMATRIX_SIGNING_SECRET"},
        "issuer": "drm-gateway",
    }
    section.update(overrides)
    return {k: v for k, v in section.items() if v is not None}


def _providers(
    raw: dict[str, Any], env: dict[str, str] = ENV, base_dir: Path = Path(".")
) -> tuple[dict[str, ProviderSettings], list[str]]:
    reader = ConfigReader(base_dir, env)
    providers = parse_providers(reader, raw)
    return providers, reader.problems


def _provider_raw(base_url: str, **section: Any) -> dict[str, Any]:
    return {
        "vmx": {
            "kind": "verimatrix",
            "base_url": base_url,
            "license_urls": {
                "widevine": "/widevine",
                "playready": "/playready",
                "fairplay": "/fairplay",
            },
            "verimatrix": _section(**section),
        }
    }


# --- the config section ---------------------------------------------------------------------


def test_the_example_config_parses_into_the_documented_token_settings() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())["providers"]
    providers, problems = _providers(raw)
    assert problems == []
    settings = providers["verimatrix"]
    assert settings.kind == "verimatrix" and settings.needs_drm_resource_id
    assert settings.fairplay.request == "json" and settings.fairplay.response == "json"
    assert settings.endpoint("widevine") is not None
    assert settings.endpoint("widevine").render({}) == (  # type: ignore[union-attr]
        "https://multidrm.core.verimatrixcloud.net/widevine"
    )
    assert settings.endpoint("clearkey") is None and settings.endpoint("aes128") is None
    options = settings.options
    assert isinstance(options, VerimatrixOptions)
    assert (options.key_id, options.algorithm, options.issuer) == (
        "demo-kid",
        "HS256",
        "drm-gateway",
    )
    assert (options.audience, options.version, options.lifetime_seconds) == (
        "urn:verimatrix:multidrm",
        1,
        60,
    )
    assert options.signing_key == SECRET.encode()
    assert (options.token_in, options.scheme) == ("header", "none")


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    section = _section(
        key_id="",
        issuer=None,
        algorithm="HS384",
        token_in="body",
        scheme="basic",
        lifetime_seconds=300,
        version="one",
        colour="blue",
    )
    reader = ConfigReader(Path("."), ENV)
    assert parse_options(reader, section, PATH) is None
    places = {problem.split(": ", 1)[0] for problem in reader.problems}
    assert places == {
        f"{PATH}.{name}"
        for name in (
            "key_id",
            "issuer",
            "algorithm",
            "token_in",
            "scheme",
            "lifetime_seconds",
            "version",
            "colour",
        )
    }


@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        ({}, {}, "signing_secret.env: environment variable VERIMATRIX_SIGNING_SECRET is not set"),
        ({"signing_secret": None}, ENV, "signing_secret: is missing (HS256 needs it)"),
        ({}, {"VERIMATRIX_SIGNING_SECRET": "too-short"}, "HMAC secret is 9 bytes"),
        ({"algorithm": "ES256"}, ENV, "signing_secret: is not used with ES256"),
        ({"algorithm": "ES256"}, ENV, "private_key_file: is missing (ES256 needs it)"),
        (
            {"algorithm": "ES256", "signing_secret": None, "private_key_file": "nowhere.pem"},
            ENV,
            "private_key_file: cannot read",
        ),
        ({"lifetime_seconds": 0}, ENV, "lifetime_seconds: must be between 1 and 120"),
        ({"lifetime_seconds": 121}, ENV, "lifetime_seconds: must be between 1 and 120"),
    ],
)
def test_key_material_and_lifetime_are_checked(
    overrides: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    reader = ConfigReader(Path("."), env)
    assert parse_options(reader, _section(**overrides), PATH) is None
    assert any(expected in problem for problem in reader.problems), reader.problems


def test_the_section_is_required_and_the_protocol_fixes_the_rest() -> None:
    raw = _provider_raw("https://vmx.example")
    provider = raw["vmx"]
    del provider["verimatrix"]
    provider["license_urls"]["clearkey"] = "/clearkey"
    provider["key_url"] = "/keys/{key_id}"
    provider["auth"] = {"type": "none"}
    provider["fairplay"] = {"request": "binary", "response": "binary"}
    provider["needs_drm_resource_id"] = False
    _, problems = _providers(raw)
    places = {problem.split(": ", 1)[0] for problem in problems}
    assert {
        "providers.vmx.verimatrix",
        "providers.vmx.license_urls.clearkey",
        "providers.vmx.key_url",
        "providers.vmx.auth",
        "providers.vmx.fairplay",
        "providers.vmx.needs_drm_resource_id",
    } <= places


def test_no_secret_in_the_repr_of_the_options_settings_or_client(tmp_path: Path) -> None:
    pem = _es256_pem(tmp_path)
    hs, problems = _providers(_provider_raw("https://vmx.example"))
    es, more = _providers(
        _provider_raw(
            "https://vmx.example",
            algorithm="ES256",
            signing_secret=None,
            private_key_file=str(pem),
        )
    )
    assert problems == more == []
    for settings in (hs["vmx"], es["vmx"]):
        texts = [repr(settings.options), repr(settings), repr(VerimatrixProvider(settings).signer)]
        assert "demo-kid" in texts[0]  # the repr is there, only the key material is not
        for text in texts:
            assert SECRET not in text and "PRIVATE KEY" not in text


# --- the request, against a tiny upstream -----------------------------------------------------


@dataclass
class Seen:
    """One request the upstream received."""

    path: str
    query: dict[str, list[str]]
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class Upstream:
    """A recording upstream: `answers[path]` = (status, body, content type)."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    answers: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    state = Upstream(url="")

    async def answer(request: web.Request) -> web.Response:
        state.seen.append(
            Seen(
                request.path,
                parse_qs(request.query_string),
                CIMultiDict(request.headers),
                await request.read(),
            )
        )
        status, body, content_type = state.answers.get(
            request.path, (200, b"LICENSE:" + request.path.encode(), "application/octet-stream")
        )
        return web.Response(status=status, body=body, content_type=content_type)

    app = web.Application()
    app.router.add_post("/{tail:.*}", answer)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("")).rstrip("/")
    return state


OpenProvider = Callable[..., Awaitable[VerimatrixProvider]]


@pytest.fixture
async def open_provider(upstream: Upstream) -> AsyncIterator[OpenProvider]:
    opened: list[VerimatrixProvider] = []

    async def _open(**section: Any) -> VerimatrixProvider:
        providers, problems = _providers(_provider_raw(upstream.url, **section))
        assert problems == []
        provider = VerimatrixProvider(providers["vmx"])
        await provider.open()
        opened.append(provider)
        return provider

    yield _open
    for provider in opened:
        await provider.close()


def _entry(resource: str | None = "res-42") -> CatalogEntry:
    return CatalogEntry(asset_id="asset-42", drm_resource_id=resource)


def _license(drm: str = "widevine", resource: str | None = "res-42") -> LicenseCall:
    return LicenseCall(
        request_id="req-1",
        drm=drm,
        entry=_entry(resource),
        client=ClientInfo(forwarded_for="203.0.113.7", user_id="user-9"),
        challenge=CHALLENGE,
        content_type="application/octet-stream",
    )


def _fairplay_call() -> FairPlayCall:
    return FairPlayCall(
        request_id="req-2",
        entry=_entry(),
        client=ClientInfo(forwarded_for="203.0.113.7"),
        spc=SpcRequest(spc=SPC, fmt="binary", asset_id=None),
    )


def _decode(
    token: str, key: Any, algorithm: str = "HS256"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token, its signature and audience checked by pyjwt."""
    claims = jwt.decode(
        token, key, algorithms=[algorithm], audience="urn:verimatrix:multidrm", issuer="drm-gateway"
    )
    return jwt.get_unverified_header(token), claims


async def test_a_license_request_carries_the_challenge_and_a_documented_token(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    provider = await open_provider()
    before = time.time()
    answer = await provider.license(_license(), provider.endpoint("widevine"))  # type: ignore[arg-type]
    assert answer.body == b"LICENSE:/widevine"
    (seen,) = upstream.seen
    assert seen.path == "/widevine" and seen.body == CHALLENGE
    assert seen.headers["Content-Type"] == "application/octet-stream"
    assert seen.headers["X-Request-Id"] == "req-1"
    header, claims = _decode(seen.headers["Authorization"], SECRET.encode())
    assert header == {"alg": "HS256", "kid": "demo-kid", "typ": "JWT"}
    assert set(claims) == {"aud", "ver", "sub", "iss", "iat", "exp", "jti"}
    assert claims["sub"] == "res-42" and claims["ver"] == 1
    assert before - 1 <= claims["iat"] <= time.time() + 1
    assert claims["exp"] - claims["iat"] == 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


async def test_each_request_gets_a_fresh_jti_and_playready_its_own_path(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    provider = await open_provider(lifetime_seconds=120, version=2, audience="urn:custom:{x}")
    for drm in ("widevine", "playready"):
        await provider.license(_license(drm), provider.endpoint(drm))  # type: ignore[arg-type]
    tokens = [seen.headers["Authorization"] for seen in upstream.seen]
    claims = [
        jwt.decode(t, SECRET.encode(), algorithms=["HS256"], audience="urn:custom:{x}")
        for t in tokens
    ]
    assert [seen.path for seen in upstream.seen] == ["/widevine", "/playready"]
    assert claims[0]["jti"] != claims[1]["jti"]
    assert all(c["exp"] - c["iat"] == 120 and c["ver"] == 2 for c in claims)


async def test_an_es256_token_in_the_query_with_the_bearer_scheme(
    upstream: Upstream, open_provider: OpenProvider, tmp_path: Path
) -> None:
    pem = _es256_pem(tmp_path)
    provider = await open_provider(
        algorithm="ES256",
        signing_secret=None,
        private_key_file=str(pem),
        token_in="query",
        scheme="bearer",
    )
    await provider.license(_license(), provider.endpoint("widevine"))  # type: ignore[arg-type]
    (seen,) = upstream.seen
    assert "Authorization" not in seen.headers
    (value,) = seen.query["Authorization"]
    scheme, token = value.split(" ")
    assert scheme == "Bearer"
    private = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    header, claims = _decode(token, private.public_key(), "ES256")
    assert header["kid"] == "demo-kid" and header["alg"] == "ES256"
    assert claims["sub"] == "res-42"


async def test_no_token_and_no_request_without_a_drm_resource_id(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    provider = await open_provider()
    with pytest.raises(MissingResourceId):
        await provider.license(_license(resource=None), provider.endpoint("widevine"))  # type: ignore[arg-type]
    assert upstream.seen == []


async def test_fairplay_sends_spc_json_and_unwraps_the_ckc_json(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    # The docs allow either base64 alphabet in answers: send the URL-safe one, unpadded.
    encoded = base64.urlsafe_b64encode(CKC).rstrip(b"=").decode()
    upstream.answers["/fairplay"] = (200, json.dumps({"ckc": encoded}).encode(), "application/json")
    provider = await open_provider()
    answer = await provider.fairplay(_fairplay_call(), provider.endpoint("fairplay"))  # type: ignore[arg-type]
    assert answer.body == CKC and answer.content_type == "application/octet-stream"
    (seen,) = upstream.seen
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"spc": base64.b64encode(SPC).decode()}
    _, claims = _decode(seen.headers["Authorization"], SECRET.encode())
    assert claims["sub"] == "res-42"


async def test_a_garbled_ckc_is_a_bad_response(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    upstream.answers["/fairplay"] = (200, b'{"ckc": "not base64!"}', "application/json")
    provider = await open_provider()
    labels = {"provider": "vmx", "kind": "bad_ckc"}
    before = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_bad_responses_total", labels)
    with pytest.raises(UpstreamBadResponse):
        await provider.fairplay(_fairplay_call(), provider.endpoint("fairplay"))  # type: ignore[arg-type]
    after = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_bad_responses_total", labels)
    assert (after or 0) == (before or 0) + 1


# --- the answers: MDRM codes ----------------------------------------------------------------


def _mdrm(code: str, message: str) -> bytes:
    # The layout of Verimatrix error bodies is not documented; the code is read as text.
    return json.dumps({"errorCode": code, "message": message}).encode()


@pytest.mark.parametrize(
    ("status", "body", "error", "player_status", "code"),
    [
        (
            401,
            _mdrm("MDRM-501", "Authorization token is required"),
            UpstreamAuthFailed,
            502,
            "MDRM-501",
        ),
        (401, _mdrm("MDRM-508", "JSON web token is expired"), UpstreamAuthFailed, 502, "MDRM-508"),
        (401, _mdrm("MDRM-513", "JSON web key is disabled"), UpstreamAuthFailed, 502, "MDRM-513"),
        (403, _mdrm("MDRM-503", "audience"), UpstreamAuthFailed, 502, "MDRM-503"),
        (401, _mdrm("MDRM-1002", "malformed"), UpstreamAuthFailed, 502, "MDRM-1002"),
        (404, _mdrm("MDRM-717", "no content key"), UpstreamRejected, 404, "MDRM-717"),
        (404, b"MDRM 1110 no content key", UpstreamRejected, 404, "MDRM-1110"),
        (404, _mdrm("MDRM-1011", "no content key"), UpstreamRejected, 404, "MDRM-1011"),
        (400, _mdrm("MDRM-1004", "SPC must be present"), UpstreamRejected, 400, "MDRM-1004"),
        (500, _mdrm("MDRM-1000", "unexpected"), UpstreamUnavailable, 502, "MDRM-1000"),
        (503, _mdrm("MDRM-1015", "timeout"), UpstreamUnavailable, 502, "MDRM-1015"),
        (400, _mdrm("MDRM-4242", "a code the docs do not list"), UpstreamRejected, 400, "other"),
        (
            200,
            _mdrm("MDRM-1006", "Failed to decrypt payload"),
            UpstreamBadResponse,
            502,
            "MDRM-1006",
        ),
        (401, b"", UpstreamAuthFailed, 502, "-"),
    ],
)
async def test_each_documented_refusal_maps_to_one_gateway_error_and_a_bounded_code(
    upstream: Upstream,
    open_provider: OpenProvider,
    status: int,
    body: bytes,
    error: type[GatewayError],
    player_status: int,
    code: str,
) -> None:
    upstream.answers["/widevine"] = (status, body, "application/json")
    provider = await open_provider()
    with pytest.raises(GatewayError) as info:
        await provider.license(_license(), provider.endpoint("widevine"))  # type: ignore[arg-type]
    assert type(info.value) is error
    assert info.value.status == player_status
    assert info.value.provider_error == code
    assert "MDRM" not in info.value.message and "token" not in info.value.message.lower()


@pytest.mark.parametrize(
    "body",
    [
        b"\x08\x02license bytes that mention MDRM-717 by chance",  # not JSON: a license
        json.dumps({"ckc": "MDRM-1000"}).encode(),  # a CKC answer is never scanned
        b"{not json MDRM-1000",
    ],
)
def test_a_success_is_never_read_as_a_fault(body: bytes) -> None:
    assert read_fault(200, {}, body) is None


def test_codes_are_read_from_any_refusal_body() -> None:
    fault = read_fault(404, {}, b"<html>MDRM-717</html>")
    assert fault is not None and fault.code == "MDRM-717" and fault.error is None
    auth = read_fault(401, {}, b"MDRM-502")
    assert auth is not None and auth.error is not None
    assert type(auth.error(401)) is UpstreamAuthFailed
    assert read_fault(500, {}, b"internal error") is None


async def test_neither_the_secret_nor_the_token_reaches_a_log_line(
    upstream: Upstream, open_provider: OpenProvider
) -> None:
    upstream.answers["/playready"] = (
        401,
        _mdrm("MDRM-505", "JSON web token is invalid"),
        "application/json",
    )
    provider = await open_provider()
    with capture_logs() as logs:
        await provider.license(_license(), provider.endpoint("widevine"))  # type: ignore[arg-type]
        with pytest.raises(UpstreamAuthFailed):
            await provider.license(_license("playready"), provider.endpoint("playready"))  # type: ignore[arg-type]
    tokens = [seen.headers["Authorization"] for seen in upstream.seen]
    assert len(tokens) == 2 and logs
    assert any(event.get("provider_error") == "MDRM-505" for event in logs)
    text = repr(logs)
    assert SECRET not in text
    assert all(token not in text and token.split(".")[2] not in text for token in tokens)


def _es256_pem(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "vmx-es256.pem"
    path.write_bytes(pem)
    return path
