"""The `drmtoday` kind: its config section, the requests it builds (decoded here with the
stdlib, independently of the adapter), the answers it interprets, and a round trip through a
small DRMtoday stand-in on loopback."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from proxy.catalog.base import CatalogEntry
from proxy.config import load_config
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.errors import (
    MissingResourceId,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.observability.metrics import REGISTRY
from proxy.upstream import drmtoday
from proxy.upstream.base import ClientInfo, FairPlayCall, LicenseCall
from proxy.upstream.drmtoday import (
    DrmTodayAuth,
    DrmTodayOptions,
    DrmTodayProvider,
    UpfrontTokenSettings,
    fairplay_form,
    parse_options,
    read_fault,
    unwrap_widevine,
)
from proxy.upstream.fairplay import SpcRequest
from tests.conftest import DEMO_KEY_SECRETS

ROOT = Path(__file__).resolve().parents[2]
SECRET = "demo-drmtoday-upfront-token-secret-0123456789abcdef0123456789ab"
MERCHANT = "demo-merchant"
ENV = {"DRMTODAY_TOKEN_SECRET": SECRET}
HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 3
ENTRY = CatalogEntry(asset_id="asset-1", drm_resource_id="res-1")


# -- independent decoding ------------------------------------------------------------------


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_token(token: str, secret: bytes = SECRET.encode()) -> tuple[dict[str, Any], Any]:
    """(header, claims) of a token whose HMAC checks out; crt/optData parsed from their
    JSON strings."""
    head, payload, signature = token.split(".")
    header = json.loads(unb64url(head))
    expected = hmac.new(secret, f"{head}.{payload}".encode(), HASHES[header["alg"]]).digest()
    assert hmac.compare_digest(unb64url(signature), expected)
    claims = json.loads(unb64url(payload))
    assert isinstance(claims["crt"], str) and isinstance(claims["optData"], str)
    claims["crt"] = json.loads(claims["crt"])
    claims["optData"] = json.loads(claims["optData"])
    return header, claims


def options(**overrides: Any) -> DrmTodayOptions:
    token = UpfrontTokenSettings(secret=SECRET.encode())
    return DrmTodayOptions(**{"merchant": MERCHANT, "token": token, **overrides})


# -- options -------------------------------------------------------------------------------


def read(raw: Any, env: dict[str, str] | None = None) -> tuple[DrmTodayOptions | None, list[str]]:
    reader = ConfigReader(Path("."), ENV if env is None else env)
    parsed = parse_options(reader, raw, "providers.dt.drmtoday")
    return parsed, list(reader.problems)


def test_options_full_section() -> None:
    parsed, problems = read(
        {
            "merchant": MERCHANT,
            "auth": "both",
            "token": {
                "secret": {"env": "DRMTODAY_TOKEN_SECRET"},
                "algorithm": "HS256",
                "kid": "k-1",
                "lifetime_seconds": 30,
            },
            "default_user_id": "guest",
            "crt": {"profile": {"rental": {"relativeExpiration": "PT24H"}}, "storeLicense": True},
            "variant_id": "hd",
        }
    )
    assert problems == []
    assert parsed == DrmTodayOptions(
        merchant=MERCHANT,
        auth="both",
        token=UpfrontTokenSettings(SECRET.encode(), "HS256", "k-1", 30),
        default_user_id="guest",
        crt={"profile": {"rental": {"relativeExpiration": "PT24H"}}, "storeLicense": True},
        variant_id="hd",
    )


def test_options_defaults_send_an_hs512_token_for_a_purchase() -> None:
    parsed, problems = read(
        {"merchant": MERCHANT, "token": {"secret": {"env": "S"}}}, {"S": SECRET}
    )
    assert problems == [] and parsed is not None
    assert (parsed.auth, parsed.default_user_id, parsed.variant_id) == ("token", "anonymous", None)
    assert parsed.token == UpfrontTokenSettings(SECRET.encode(), "HS512", None, 60)
    assert parsed.crt == {"profile": {"purchase": {}}, "storeLicense": False}


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("hex:" + "0f" * 32, bytes([15]) * 32),
        ("base64:" + base64.b64encode(b"s" * 40).decode(), b"s" * 40),
        ("t" * 32, b"t" * 32),
    ],
)
def test_options_secret_encodings(value: str, secret: bytes) -> None:
    parsed, problems = read({"merchant": "m", "token": {"secret": {"env": "S"}}}, {"S": value})
    assert problems == [] and parsed is not None and parsed.token is not None
    assert parsed.token.secret == secret


def test_options_report_every_problem_at_once() -> None:
    parsed, problems = read(
        {
            "merchant": " ",
            "auth": "cookie",
            "default_user_id": "",
            "crt": {"assetId": "mine", "when": object()},
            "colour": "red",
        }
    )
    assert parsed is None
    assert problems == [
        "providers.dt.drmtoday.colour: unknown field",
        "providers.dt.drmtoday.merchant: must not be empty",
        "providers.dt.drmtoday.auth: must be one of token, custom_data, both",
        "providers.dt.drmtoday.default_user_id: must not be empty",
        "providers.dt.drmtoday.crt.assetId: is set by the gateway (the asset's drmResourceId)",
        "providers.dt.drmtoday.crt: must hold only JSON values (strings, numbers, booleans, lists)",
    ]


def test_options_report_every_token_problem_at_once() -> None:
    token = {"secret": {"env": "SHORT"}, "algorithm": "RS256", "lifetime_seconds": 0, "x": 1}
    _, problems = read({"merchant": "m", "token": token}, {"SHORT": "s" * 31})
    assert problems == [
        "providers.dt.drmtoday.token.x: unknown field",
        "providers.dt.drmtoday.token.algorithm: must be one of HS256, HS384, HS512",
        "providers.dt.drmtoday.token.lifetime_seconds: must be greater than 0",
        "providers.dt.drmtoday.token.secret: is 31 bytes; at least 32 are needed",
    ]
    _, problems = read({"merchant": "m", "token": {"secret": {"env": "UNSET"}}}, {})
    assert problems == [
        "providers.dt.drmtoday.token.secret.env: environment variable UNSET is not set"
    ]
    _, problems = read({"merchant": "m", "token": {"secret": {"env": "S"}}}, {"S": "hex:zz"})
    assert problems == [
        "providers.dt.drmtoday.token.secret: "
        "is not valid hex after 'hex:' or base64 after 'base64:'"
    ]


def test_options_token_section_follows_the_auth_mode() -> None:
    assert read({"merchant": "m"})[1] == [
        "providers.dt.drmtoday.token: is missing, and has no default (auth sends an upfront token)"
    ]
    secret = {"secret": {"env": "DRMTODAY_TOKEN_SECRET"}}
    parsed, problems = read({"merchant": "m", "auth": "custom_data", "token": secret})
    assert (parsed, problems) == (
        None,
        ["providers.dt.drmtoday.token: is used only with auth 'token' or 'both'"],
    )
    parsed, problems = read({"merchant": "m", "auth": "custom_data"})
    assert problems == [] and parsed is not None and parsed.token is None
    assert read(None)[1] == [
        "providers.dt.drmtoday: is missing (kind 'drmtoday' needs at least its merchant)"
    ]


def provider_settings(base_url: str, section: dict[str, Any], **extra: Any) -> ProviderSettings:
    raw = {
        "dt": {
            "kind": "drmtoday",
            "base_url": base_url,
            "license_urls": {
                "widevine": "/license-proxy-widevine/cenc/",
                "playready": "/license-proxy-headerauth/drmtoday/RightsManager.asmx",
                "fairplay": "/license-server-fairplay/",
            },
            "drmtoday": section,
            **extra,
        }
    }
    reader = ConfigReader(Path("."), ENV)
    providers = parse_providers(reader, raw)
    assert reader.problems == []
    return providers["dt"]


def test_the_kind_fixes_what_the_protocol_decides() -> None:
    raw = {
        "dt": {
            "kind": "drmtoday",
            "base_url": "https://lic.drmtoday.com",
            "license_urls": {"clearkey": "/ck"},
            "key_url": "/keys/{key_id}",
            "needs_drm_resource_id": False,
            "auth": {"type": "none"},
            "fairplay": {"request": "binary"},
            "drmtoday": {"merchant": "m", "token": {"secret": {"env": "DRMTODAY_TOKEN_SECRET"}}},
        }
    }
    reader = ConfigReader(Path("."), ENV)
    parse_providers(reader, raw)
    assert sorted(reader.problems) == [
        "providers.dt.auth: kind 'drmtoday' authenticates with its 'drmtoday' section",
        "providers.dt.fairplay: kind 'drmtoday' fixes its FairPlay formats (form in, base64 out)",
        "providers.dt.key_url: kind 'drmtoday' does not serve HLS AES-128 keys",
        "providers.dt.license_urls.clearkey: kind 'drmtoday' does not serve clearkey",
        "providers.dt.needs_drm_resource_id: is true for kind 'drmtoday' (its protocol decides)",
    ]
    settings = provider_settings(
        "https://lic.drmtoday.com", {"merchant": "m", "auth": "custom_data"}
    )
    served = frozenset({"widevine", "playready", "fairplay"})
    assert settings.needs_drm_resource_id and settings.traits.serves == served


def test_the_example_config_passes_the_config_check(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "ADMIN_TOKEN": "an-admin-token-of-some-length",
        "PLAYER_JWT_SECRET": "p" * 32,
        "LEGACY_API_KEY": "legacy-key",
        "INCOMING_JWT_KEY": "i" * 32,
        **ENV,
        **DEMO_KEY_SECRETS,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    example = ROOT / "deploy/examples/providers/drmtoday.yaml"
    config = load_config(ROOT / "proxy/dev/demo_data/gateway.yaml", layers=[example])
    provider = config.providers["drmtoday"]
    assert provider.kind == "drmtoday" and isinstance(provider.options, DrmTodayOptions)
    assert provider.options.merchant == MERCHANT
    widevine = provider.license_urls["widevine"].template
    assert widevine == "https://lic.drmtoday.com/license-proxy-widevine/cenc/?specConform=true"
    assert yaml.safe_load(example.read_text())["providers"]["drmtoday"]["drmtoday"]["token"][
        "secret"
    ] == {"env": "DRMTODAY_TOKEN_SECRET"}


# -- request building ----------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_upfront_token_claims_and_signature(algorithm: str) -> None:
    token = UpfrontTokenSettings(SECRET.encode(), algorithm, "kid-7", 45)
    auth = DrmTodayAuth(options(token=token), clock=lambda: 1_700_000_000.9)
    headers = auth.headers("res-1", "user-1", "req-1")
    assert set(headers) == {"x-dt-auth-token"}
    header, claims = decode_token(headers["x-dt-auth-token"])
    assert header == {"alg": algorithm, "typ": "JWT", "kid": "kid-7"}
    assert claims["crt"] == [
        {"assetId": "res-1", "profile": {"purchase": {}}, "storeLicense": False}
    ]
    assert claims["optData"] == {"merchant": MERCHANT, "userId": "user-1", "sessionId": "req-1"}
    assert (claims["iat"], claims["exp"]) == (1_700_000_000, 1_700_000_045)
    assert UUID4.match(claims["jti"])
    assert set(claims) == {"crt", "optData", "iat", "exp", "jti"}


def test_a_secret_longer_than_the_hash_block_signs_like_stdlib_hmac() -> None:
    long_secret = bytes(range(256)) * 2  # hashed first (RFC 2104): longer than any block
    for algorithm in HASHES:
        token = UpfrontTokenSettings(long_secret, algorithm)
        signed = DrmTodayAuth(options(token=token)).token("res-1", "u", "s")
        assert decode_token(signed, secret=long_secret)[0]["alg"] == algorithm


def test_each_token_has_its_own_jti_and_a_wrong_secret_fails() -> None:
    auth = DrmTodayAuth(options())
    tokens = [auth.headers("res-1", "u", "r")["x-dt-auth-token"] for _ in range(50)]
    assert len({decode_token(t)[1]["jti"] for t in tokens}) == 50
    with pytest.raises(AssertionError):
        decode_token(tokens[0], secret=b"another-secret-of-thirty-two-bytes!!")


def test_the_user_defaults_and_the_crt_carries_config_fields() -> None:
    crt = {"profile": {"rental": {"playDuration": "PT3H"}}, "outputProtection": {"digital": True}}
    auth = DrmTodayAuth(options(default_user_id="guest", crt=crt, variant_id="hd"))
    _, claims = decode_token(auth.headers("res-9", None, "req-2")["x-dt-auth-token"])
    assert claims["optData"]["userId"] == "guest"
    assert claims["crt"] == [{"assetId": "res-9", **crt, "variantId": "hd"}]
    empty = DrmTodayAuth(options(crt={}))
    assert decode_token(empty.token("res-9", "u", "s"))[1]["crt"] == [{"assetId": "res-9"}]


@given(asset=st.text(min_size=1), user=st.text(min_size=1), session=st.text())
def test_ids_are_escaped_into_the_nested_json(asset: str, user: str, session: str) -> None:
    auth = DrmTodayAuth(options(auth="both", merchant='m"\\é'))
    headers = auth.headers(asset, user, session)
    _, claims = decode_token(headers["x-dt-auth-token"])
    assert claims["crt"][0]["assetId"] == asset
    assert claims["optData"] == {"merchant": 'm"\\é', "userId": user, "sessionId": session}
    custom = json.loads(base64.b64decode(headers["x-dt-custom-data"], validate=True))
    assert custom == {"userId": user, "sessionId": session, "merchant": 'm"\\é'}


def test_custom_data_and_both_modes() -> None:
    only = DrmTodayAuth(options(auth="custom_data", token=None)).headers("res-1", "u-1", "req-1")
    assert set(only) == {"x-dt-custom-data"}
    raw = base64.b64decode(only["x-dt-custom-data"], validate=True)
    assert json.loads(raw) == {"userId": "u-1", "sessionId": "req-1", "merchant": MERCHANT}
    assert list(json.loads(raw)) == ["userId", "sessionId", "merchant"]
    both = DrmTodayAuth(options(auth="both")).headers("res-1", "u-1", "req-1")
    assert set(both) == {"x-dt-auth-token", "x-dt-custom-data"}
    with pytest.raises(ValueError):
        DrmTodayAuth(options(auth="custom_data", token=None)).token("res-1", "u", "s")


def test_fairplay_form_body() -> None:
    body, content_type = fairplay_form(SPC, "res 1/ü", "hd+")
    assert content_type == "application/x-www-form-urlencoded"
    assert body.startswith(b"spc=") and b"+" not in body.split(b"&")[0]
    fields = parse_qs(body.decode("ascii"), strict_parsing=True)
    assert base64.b64decode(fields["spc"][0], validate=True) == SPC
    assert fields["assetId"] == ["res 1/ü"] and fields["variantId"] == ["hd+"]
    assert b"variantId" not in fairplay_form(SPC, "res-1", None)[0]


# -- answers -------------------------------------------------------------------------------


def test_unwrap_widevine_either_way() -> None:
    license_ = b"\x08\x02\x12\x10license-bytes"
    envelope = json.dumps({"status": "OK", "license": base64.b64encode(license_).decode()})
    assert unwrap_widevine(envelope.encode()) == license_
    assert unwrap_widevine(license_) == license_  # specConform: raw
    for garbled in (b"{", b'{"status":"OK"}', b'{"license":"%%%"}', b'{"license":""}', b"{}"):
        assert unwrap_widevine(garbled) is None


def test_read_fault_codes() -> None:
    auth = read_fault(403, {"x-dt-resp-code": "03000"}, b"")
    assert auth is not None and auth.code == "3000" and auth.error is not None
    assert isinstance(auth.error(403), UpstreamAuthFailed)
    revoked = read_fault(403, {"x-dt-resp-code": "40001"}, b"")
    assert revoked is not None and (revoked.code, revoked.error) == ("40001", None)
    assert read_fault(200, {"x-dt-resp-code": "00000"}, b"\x08\x02") is None
    assert read_fault(200, {"x-dt-resp-code": "0"}, b'{"status":"OK","license":"AA=="}') is None
    bad = read_fault(200, {}, b'{"status":"SIGNATURE_FAILED"}')
    assert bad is not None and bad.code == "widevine_status"
    assert read_fault(500, {}, b"oops") is None


# -- round trip ----------------------------------------------------------------------------


@dataclass
class FakeDrmToday:
    """A DRMtoday stand-in: checks the auth headers like the service would, records what it
    got and answers with the queued reply."""

    secret: bytes = SECRET.encode()
    seen: list[dict[str, Any]] = field(default_factory=list)
    reply: Callable[[web.Request], web.Response] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        token = request.headers.get("x-dt-auth-token")
        claims = decode_token(token, self.secret)[1] if token else None
        self.seen.append(
            {"path": request.path_qs, "body": body, "claims": claims, "headers": request.headers}
        )
        assert self.reply is not None
        return self.reply(request)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeDrmToday, str]]:
    server = FakeDrmToday()
    app = web.Application()
    app.router.add_post("/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def provider(fake: tuple[FakeDrmToday, str]) -> AsyncIterator[DrmTodayProvider]:
    section = {"merchant": MERCHANT, "token": {"secret": {"env": "DRMTODAY_TOKEN_SECRET"}}}
    client = DrmTodayProvider(provider_settings(fake[1], section))
    await client.open()
    yield client
    await client.close()


def license_call(drm: str, challenge: bytes = b"\x08\x04challenge", **kw: Any) -> LicenseCall:
    client = ClientInfo(forwarded_for="203.0.113.9", user_id=kw.pop("user", "user-1"))
    entry = kw.pop("entry", ENTRY)
    return LicenseCall("req-1", drm, entry, client, challenge, "application/octet-stream")


def fairplay_call() -> FairPlayCall:
    client = ClientInfo(forwarded_for="203.0.113.9", user_id=None)
    return FairPlayCall("req-2", ENTRY, client, SpcRequest(SPC, "binary", None))


def answer(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[web.Request], web.Response]:
    return lambda _: web.Response(status=status, body=body, headers=headers)


async def test_widevine_envelope_and_spec_conform_round_trip(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider
) -> None:
    server, _ = fake
    license_ = b"\x08\x02\x12\x20raw-widevine-license"
    envelope = {"status": "OK", "license": base64.b64encode(license_).decode(), "make": "x"}
    server.reply = answer(
        json.dumps(envelope).encode(),
        headers={"x-dt-resp-code": "00000", "x-dt-client-info": "e30="},
    )
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    got = await provider.license(license_call("widevine"), endpoint)
    assert (got.body, got.content_type) == (license_, "application/octet-stream")
    assert not [name for name, _ in got.headers if name.lower().startswith("x-dt-")]
    seen = server.seen[-1]
    assert seen["path"] == "/license-proxy-widevine/cenc/"
    assert seen["body"] == b"\x08\x04challenge"
    assert seen["claims"]["crt"][0]["assetId"] == "res-1"
    assert seen["claims"]["optData"] == {
        "merchant": MERCHANT,
        "userId": "user-1",
        "sessionId": "req-1",
    }
    assert seen["headers"]["X-Request-Id"] == "req-1"
    assert "x-dt-custom-data" not in seen["headers"]
    server.reply = lambda _: web.Response(body=license_, content_type="application/octet-stream")
    assert (await provider.license(license_call("widevine"), endpoint)).body == license_


async def test_playready_passes_through(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider
) -> None:
    server, _ = fake
    soap = b'<?xml version="1.0"?><soap:Envelope>license</soap:Envelope>'
    server.reply = lambda _: web.Response(body=soap, content_type="text/xml")
    endpoint = provider.endpoint("playready")
    assert endpoint is not None
    got = await provider.license(license_call("playready", b"<challenge/>"), endpoint)
    assert (got.body, got.content_type) == (soap, "text/xml")
    assert server.seen[-1]["body"] == b"<challenge/>"
    assert server.seen[-1]["path"] == "/license-proxy-headerauth/drmtoday/RightsManager.asmx"


async def test_fairplay_form_in_base64_ckc_out(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider
) -> None:
    server, _ = fake
    ckc = b"\x00\x00\x00\x01" + bytes(range(200))
    server.reply = lambda _: web.Response(text=base64.b64encode(ckc).decode())
    endpoint = provider.endpoint("fairplay")
    assert endpoint is not None
    got = await provider.fairplay(fairplay_call(), endpoint)
    assert (got.body, got.content_type) == (ckc, "application/octet-stream")
    seen = server.seen[-1]
    assert seen["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    fields = parse_qs(seen["body"].decode("ascii"), strict_parsing=True)
    assert base64.b64decode(fields["spc"][0], validate=True) == SPC
    assert fields["assetId"] == ["res-1"]
    assert seen["claims"]["optData"]["userId"] == "anonymous"
    server.reply = lambda _: web.Response(text="<ckc>not base64</ckc>")
    with pytest.raises(UpstreamBadResponse):
        await provider.fairplay(fairplay_call(), endpoint)


def provider_errors(code: str) -> float:
    value = REGISTRY.get_sample_value(
        "drm_gateway_upstream_responses_total",
        {"provider": "dt", "status_class": "4xx", "provider_error": code},
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("status", "code", "error", "label"),
    [
        (403, "3000", UpstreamAuthFailed, "3000"),
        (403, "40001", UpstreamRejected, "40001"),
        (400, "10001", UpstreamRejected, "10001"),
        (403, "20101", UpstreamRejected, "other"),
    ],
)
async def test_documented_errors_map_to_gateway_errors(
    fake: tuple[FakeDrmToday, str],
    provider: DrmTodayProvider,
    status: int,
    code: str,
    error: type[Exception],
    label: str,
) -> None:
    server, _ = fake
    server.reply = answer(b"HTTP Status 403 - Forbidden", status, {"x-dt-resp-code": code})
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    before = provider_errors(label)
    with pytest.raises(error) as raised:
        await provider.license(license_call("widevine"), endpoint)
    assert type(raised.value) is error
    assert getattr(raised.value, "provider_error", None) == label
    assert provider_errors(label) == before + 1


async def test_server_errors_and_garbled_answers(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider
) -> None:
    server, _ = fake
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    server.reply = answer(b"busy", 503)
    with pytest.raises(UpstreamUnavailable):
        await provider.license(license_call("widevine"), endpoint)
    for body in (b'{"status":"OK","license":"***"}', b'{"status":"INTERNAL_ERROR"}'):
        server.reply = answer(body)
        with pytest.raises(UpstreamBadResponse):
            await provider.license(license_call("widevine"), endpoint)


async def test_an_asset_without_drm_resource_id_is_never_sent(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider
) -> None:
    server, _ = fake
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    entry = CatalogEntry(asset_id="asset-2", drm_resource_id=None)
    with pytest.raises(MissingResourceId):
        await provider.license(license_call("widevine", entry=entry), endpoint)
    assert server.seen == []


async def test_no_secret_in_reprs_or_logs(
    fake: tuple[FakeDrmToday, str], provider: DrmTodayProvider, log_buffer: io.StringIO
) -> None:
    server, _ = fake
    server.reply = answer(b"no", 403, {"x-dt-resp-code": "3000"})
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    with pytest.raises(UpstreamAuthFailed):
        await provider.license(license_call("widevine"), endpoint)
    token = server.seen[-1]["headers"]["x-dt-auth-token"]
    hex_secret = binascii.hexlify(SECRET.encode()).decode()
    texts = [
        log_buffer.getvalue(),
        repr(provider.settings),
        repr(provider.options),
        repr(provider.auth),
        repr(provider.options.token),
    ]
    assert "3000" in texts[0]  # the log line is there, with the provider's code
    for text in texts:
        assert SECRET not in text and hex_secret not in text and token not in text


# -- reading credentials back (`drm-gateway token verify`) ---------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_verify_token_returns_the_claims_of_a_token_it_signed(algorithm: str) -> None:
    token_settings = UpfrontTokenSettings(secret=SECRET.encode(), algorithm=algorithm, kid="k7")
    token = DrmTodayAuth(options(token=token_settings)).token("res-1", "user-1", "sess-1")
    claims = drmtoday.verify_token(token, token_settings)
    assert isinstance(claims["crt"], str) and isinstance(claims["optData"], str)
    unpacked = drmtoday.unpack_claims(claims)
    assert unpacked == decode_token(token)[1]
    assert unpacked["crt"][0]["assetId"] == "res-1"
    assert unpacked["optData"] == {"merchant": MERCHANT, "userId": "user-1", "sessionId": "sess-1"}


def test_verify_token_refuses_another_secret_algorithm_or_kid_and_garble() -> None:
    signed_with = UpfrontTokenSettings(secret=SECRET.encode(), kid="k1")
    token = DrmTodayAuth(options(token=signed_with)).token("res-1", "u", "s")
    others = {
        "signature": UpfrontTokenSettings(secret=b"another-secret-of-32-bytes-or-more", kid="k1"),
        "alg": UpfrontTokenSettings(secret=SECRET.encode(), algorithm="HS256", kid="k1"),
        "kid": UpfrontTokenSettings(secret=SECRET.encode(), kid="k2"),
    }
    for reason, settings in others.items():
        with pytest.raises(ValueError, match=reason):
            drmtoday.verify_token(token, settings)
    for garbled in ("", "a.b", "not.a.jwt"):
        with pytest.raises(ValueError):
            drmtoday.verify_token(garbled, signed_with)


def test_unpack_claims_needs_json_strings() -> None:
    for claims in ({"crt": [], "optData": "{}"}, {"crt": "[", "optData": "{}"}, {"crt": "[]"}):
        with pytest.raises(ValueError):
            drmtoday.unpack_claims(claims)


def test_decode_custom_data_reads_what_the_auth_sends() -> None:
    value = DrmTodayAuth(options(auth="custom_data", token=None)).custom_data("u-1", "s-1")
    assert drmtoday.decode_custom_data(value) == {
        "userId": "u-1",
        "sessionId": "s-1",
        "merchant": MERCHANT,
    }
    for garbled in ("not base64!", base64.b64encode(b"[1]").decode()):
        with pytest.raises(ValueError):
            drmtoday.decode_custom_data(garbled)
