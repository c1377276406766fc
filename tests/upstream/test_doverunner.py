"""The `doverunner` kind: its config section, the license token (golden vectors from DoveRunner's
tutorial, every field decoded here with independent code), and a round trip through a tiny
DoveRunner-like server on loopback (not the emulator)."""

from __future__ import annotations

import base64
import calendar
import hashlib
import io
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.catalog.base import CatalogEntry
from proxy.config import load_config
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.errors import (
    GatewayError,
    MissingResourceId,
    UpstreamAuthFailed,
    UpstreamBadResponse,
)
from proxy.observability import metrics
from proxy.upstream import doverunner
from proxy.upstream.base import ClientInfo, FairPlayCall, LicenseCall
from proxy.upstream.doverunner import (
    DoveRunnerOptions,
    DoveRunnerProvider,
    LicenseTokenBuilder,
    decode_token,
    encrypt_policy,
    read_fault,
)
from proxy.upstream.fairplay import SpcRequest
from tests.conftest import DEMO_KEY_SECRETS

ROOT = Path(__file__).resolve().parents[2]
SITE_KEY = "demo0123456789abcdefghijklmnopqr"
ACCESS_KEY = "demoAccessKey0123456789abcdefghi"
CENC_KEY = "00112233445566778899aabbccddeeff"
ENV = {"DOVERUNNER_SITE_KEY": SITE_KEY, "DOVERUNNER_ACCESS_KEY": ACCESS_KEY, "CENC_KEY": CENC_KEY}
POLICY = {
    "playback_policy": {"persistent": False, "license_duration": 3600},
    "security_policy": [{"track_type": "ALL", "widevine": {"security_level": 1}}],
}
SPC = b"\x00\x00\x00\x01" + bytes(range(200))
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

# DoveRunner's "License Token Tutorial" (pallycon-docs-v3 content/multidrm/license/
# license-token-tutorial.en.md, also on doverunner.com): sample inputs and their outputs.
TUTORIAL_SITE_KEY = b"lU5D8s3PWoLls3PWFWkClULlFWk5D8oC"
TUTORIAL_ACCESS_KEY = "LT2FVJDp2Xr018zf4Di6lzvNOv3DKP20"
TUTORIAL_RULE = '{"playback_policy":{"limit":true,"persistent":false,"duration":3600}}'
TUTORIAL_ENCRYPTED_RULE = (
    "bO9DzyQgtgfbSDWmqGgZXWZdWm7M4oZ4X0hC1hS6QNraiwLI0LwmNY+OfOh1L0KmtuH7NF1blUxep9YLWrNfSy4H"
    "/6swQW7pbjZnRqRguDQ="
)
TUTORIAL_HASH = "0Zef3WHBbzQAR0oGf5KXn25G1TmvB2Bkvzv+7OqIWvQ="


def section(**overrides: Any) -> dict[str, Any]:
    """A `doverunner` config section; an override of None removes that field."""
    raw: dict[str, Any] = {
        "site_id": "DEMO",
        "site_key": {"env": "DOVERUNNER_SITE_KEY"},
        "access_key": {"env": "DOVERUNNER_ACCESS_KEY"},
        "policy": POLICY,
    }
    raw.update(overrides)
    return {key: value for key, value in raw.items() if value is not None}


def provider_settings(
    base_url: str = "https://drm-license.doverunner.com",
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> ProviderSettings:
    path = "/ri/licenseManager.do"
    raw = {
        "dr": {
            "kind": "doverunner",
            "base_url": base_url,
            "license_urls": {
                **dict.fromkeys(("widevine", "playready", "fairplay"), path),
                "clearkey": "/ri/clearkey/licenseManager.do",
            },
            "doverunner": section(**overrides),
        }
    }
    reader = ConfigReader(Path("."), ENV if env is None else env)
    providers = parse_providers(reader, raw)
    assert reader.problems == []
    return providers["dr"]


def options(**overrides: Any) -> DoveRunnerOptions:
    found = provider_settings(**overrides).options
    assert isinstance(found, DoveRunnerOptions)
    return found


def problems_of(raw: Any, env: dict[str, str] | None = None) -> list[str]:
    reader = ConfigReader(Path("."), ENV if env is None else env)
    assert doverunner.parse_options(reader, raw, "p.doverunner") is None
    return reader.problems


# --- independent decoding (stdlib + cryptography) ---------------------------------------------


def decrypt_policy(policy: str, site_key: bytes) -> Any:
    decryptor = Cipher(algorithms.AES(site_key), modes.CBC(b"0123456789abcdef")).decryptor()
    padded = decryptor.update(base64.b64decode(policy)) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return json.loads(unpadder.update(padded) + unpadder.finalize())


def expected_hash(token: dict[str, Any], access_key: str) -> str:
    fields = ("drm_type", "site_id", "user_id", "cid", "policy", "timestamp")
    message = access_key + "".join(token[name] for name in fields)
    return base64.b64encode(hashlib.sha256(message.encode()).digest()).decode()


def check_token(value: str, *, drm_type: str, user_id: str, cid: str) -> dict[str, Any]:
    token = json.loads(base64.b64decode(value, validate=True))
    assert list(token) == [
        "drm_type",
        "site_id",
        "user_id",
        "cid",
        "policy",
        "timestamp",
        "hash",
        "response_format",
        "key_rotation",
    ]
    assert (token["drm_type"], token["site_id"]) == (drm_type, "DEMO")
    assert (token["user_id"], token["cid"]) == (user_id, cid)
    assert decrypt_policy(token["policy"], SITE_KEY.encode()) == {"policy_version": 2, **POLICY}
    assert TIMESTAMP.match(token["timestamp"])
    sent = calendar.timegm(time.strptime(token["timestamp"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(sent - time.time()) < 5
    assert token["hash"] == expected_hash(token, ACCESS_KEY)
    assert (token["response_format"], token["key_rotation"]) == ("original", False)
    return dict(token)


# --- golden vectors ---------------------------------------------------------------------------


def test_the_policy_encryption_reproduces_the_tutorial() -> None:
    assert encrypt_policy(TUTORIAL_RULE, TUTORIAL_SITE_KEY) == TUTORIAL_ENCRYPTED_RULE


def test_the_token_hash_reproduces_the_tutorial() -> None:
    tutorial = DoveRunnerOptions(
        site_id="TUTO",
        site_key=TUTORIAL_SITE_KEY,
        access_key=TUTORIAL_ACCESS_KEY,
        policy_json=TUTORIAL_RULE,
    )
    value = LicenseTokenBuilder(tutorial).build(
        "widevine", user_id="test-user", cid="bigbuckbunny", timestamp="2019-07-17T08:57:04Z"
    )
    token = decode_token(value)
    assert token["policy"] == TUTORIAL_ENCRYPTED_RULE
    assert token["hash"] == TUTORIAL_HASH
    assert token["timestamp"] == "2019-07-17T08:57:04Z"


# --- the token, decoded independently ---------------------------------------------------------


@pytest.mark.parametrize(
    ("drm", "drm_type"),
    [("widevine", "Widevine"), ("playready", "PlayReady"), ("fairplay", "FairPlay")],
)
def test_every_token_field_checks_out(drm: str, drm_type: str) -> None:
    value = LicenseTokenBuilder(options()).build(drm, user_id="user-7", cid='res-\u00e9 "1"')
    check_token(value, drm_type=drm_type, user_id="user-7", cid='res-\u00e9 "1"')


def test_key_rotation_and_external_keys_reach_the_token() -> None:
    external = {
        "mpeg_cenc": [{"track_type": "ALL", "key_id": "ab" * 16, "key": {"env": "CENC_KEY"}}]
    }
    found = options(key_rotation=True, policy={"external_key": external})
    token = decode_token(LicenseTokenBuilder(found).build("widevine", user_id="u", cid="c"))
    assert token["key_rotation"] is True
    policy = decrypt_policy(token["policy"], SITE_KEY.encode())
    assert policy["external_key"]["mpeg_cenc"][0]["key"] == CENC_KEY


# --- the config section -----------------------------------------------------------------------


def test_the_section_parses_with_its_defaults() -> None:
    found = options(policy=None)
    assert found.site_id == "DEMO" and found.site_key == SITE_KEY.encode()
    assert found.header == "pallycon-customdata-v2" and found.key_rotation is False
    assert json.loads(found.policy_json) == {"policy_version": 2}
    assert options(header="DoveRunner-CustomData-V2").header == "doverunner-customdata-v2"


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    raw = section(
        site_id="TOOLONG",
        site_key={"env": "SHORT"},
        access_key=None,
        header="x-custom",
        key_rotation="yes",
        bogus=1,
        policy={
            "policy_version": 1,
            "playback_policy": "long",
            "security_policy": ["ALL"],
            "external_key": {"hls_aes": [{"key": "00" * 16, "iv": "11" * 16}]},
            "extra": True,
        },
    )
    found = problems_of(raw, {**ENV, "SHORT": "too-short"})
    for path in (
        "p.doverunner.bogus: unknown field",
        "p.doverunner.site_id: must be the 4-character",
        "p.doverunner.site_key: must be 32 characters",
        "p.doverunner.access_key: is missing",
        "p.doverunner.header: must be one of",
        "p.doverunner.key_rotation: must be true or false",
        "p.doverunner.policy.extra: unknown field",
        "p.doverunner.policy.policy_version: must be 2",
        "p.doverunner.policy.playback_policy: must be a mapping",
        "p.doverunner.policy.security_policy: must be a mapping or a list",
        "p.doverunner.policy.external_key.hls_aes[0].key: must name exactly one",
    ):
        assert any(problem.startswith(path) for problem in found), (path, found)
    assert len(found) == 12  # the plain key: "must be a mapping" and "must name ..."


def test_missing_section_secrets_and_bad_key_material_are_reported() -> None:
    assert problems_of(None) == [
        "p.doverunner: is missing, and has no default (site_id, site_key, access_key)"
    ]
    external = {"ncg": {"cek": {"env": "CENC_KEY"}}}  # a CEK is 32 bytes: 64 hex characters
    found = problems_of(section(policy={"external_key": external}), {"CENC_KEY": CENC_KEY})
    assert found == [
        "p.doverunner.site_key.env: environment variable DOVERUNNER_SITE_KEY is not set",
        "p.doverunner.access_key.env: environment variable DOVERUNNER_ACCESS_KEY is not set",
        "p.doverunner.policy.external_key.ncg.cek: must be 64 hexadecimal characters",
    ]


def test_the_kind_serves_no_keys_and_takes_no_auth_section() -> None:
    raw = {
        "dr": {
            "kind": "doverunner",
            "base_url": "https://drm-license.doverunner.com",
            "license_urls": {"clearkey": "/ri/lm.do", "widevine": "/ri/lm.do"},
            "key_url": "/keys/{key_id}",
            "auth": {"type": "none"},
            "fairplay": {"request": "binary"},
            "needs_drm_resource_id": False,
            "doverunner": section(),
        }
    }
    reader = ConfigReader(Path("."), ENV)
    parse_providers(reader, raw)
    assert not any("clearkey" in problem for problem in reader.problems)
    for text in ("HLS AES-128", "authenticates with its", "fixes its"):
        assert any(text in problem for problem in reader.problems), (text, reader.problems)
    assert any("needs_drm_resource_id: is true" in p for p in reader.problems)


def test_the_deploy_example_passes_the_config_check(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        **ENV,
        **DEMO_KEY_SECRETS,
        "ADMIN_TOKEN": "a" * 24,
        "PLAYER_JWT_SECRET": "p" * 32,
        "LEGACY_API_KEY": "legacy-key",
        "INCOMING_JWT_KEY": "i" * 32,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config(
        ROOT / "proxy/dev/demo_data/gateway.yaml",
        layers=[ROOT / "deploy/examples/providers/doverunner.yaml"],
    )
    provider = config.providers["doverunner"]
    assert provider.kind == "doverunner" and provider.needs_drm_resource_id
    assert isinstance(provider.options, DoveRunnerOptions)
    assert set(provider.license_urls) == {"widevine", "playready", "fairplay", "clearkey"}


def test_no_secret_shows_in_a_repr() -> None:
    external = {
        "mpeg_cenc": [{"track_type": "ALL", "key_id": "ab" * 16, "key": {"env": "CENC_KEY"}}]
    }
    settings = provider_settings(policy={"external_key": external})
    shown = repr(settings) + repr(settings.options) + str(settings.options)
    for secret in (SITE_KEY, ACCESS_KEY, CENC_KEY, "policy_json"):
        assert secret not in shown


# --- answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"\x08\x02\x12license", b"<soap:Envelope/>", b"QUJD", b'{"license": "x"}', b"{bad"]
)
def test_licenses_carry_no_fault(body: bytes) -> None:
    assert read_fault(200, {}, body) is None


# --- a round trip through a DoveRunner-like server ---------------------------------------------


@dataclass
class FakeDoveRunner:
    """What the test server saw, and what it answers next."""

    url: str = ""
    seen: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # header, type,
    # token, body
    answer: tuple[int, bytes] | None = None


def _token_header(request: web.Request) -> tuple[str, str]:
    names = [h for h in request.headers if h.lower().endswith("-customdata-v2")]
    assert len(names) == 1, names
    return names[0].lower(), request.headers[names[0]]


@pytest.fixture
async def fake(aiohttp_server: Callable[..., Awaitable[Any]]) -> AsyncIterator[FakeDoveRunner]:
    state = FakeDoveRunner()

    async def license_manager(request: web.Request) -> web.Response:
        header, value = _token_header(request)
        token = json.loads(base64.b64decode(value))
        body = await request.read()
        state.seen.append((header, request.content_type, value, body))
        if state.answer is not None:
            status, answer = state.answer
            return web.Response(status=status, body=answer, content_type="application/json")
        if token["hash"] != expected_hash(token, ACCESS_KEY):
            return web.json_response({"errorCode": "7019", "message": "hash mismatch"})
        if token["drm_type"] == "FairPlay":
            spc = base64.b64decode(parse_qs(body.decode(), strict_parsing=True)["spc"][0])
            return web.Response(text=base64.b64encode(b"CKC:" + spc).decode())
        return web.Response(body=b"LICENSE:" + body, content_type="application/octet-stream")

    async def clearkey(request: web.Request) -> web.Response:
        # The token-less ClearKey URL: site and content ids in the query, W3C JSON both ways.
        assert not [h for h in request.headers if h.lower().endswith("-customdata-v2")]
        state.seen.append(
            ("query", request.content_type, request.query_string, await request.read())
        )
        return web.json_response({"keys": [], "type": "temporary"})

    app = web.Application()
    app.router.add_post("/ri/licenseManager.do", license_manager)
    app.router.add_post("/ri/clearkey/licenseManager.do", clearkey)
    server = await aiohttp_server(app, host="127.0.0.1", port=0)
    state.url = str(server.make_url("/"))
    yield state


@pytest.fixture
async def open_client(
    fake: FakeDoveRunner,
) -> AsyncIterator[Callable[..., Awaitable[DoveRunnerProvider]]]:
    clients: list[DoveRunnerProvider] = []

    async def make(**overrides: Any) -> DoveRunnerProvider:
        settings = provider_settings(fake.url, **overrides)
        client = DoveRunnerProvider(settings)
        await client.open()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def license_call(
    drm: str = "widevine", *, user: str | None = "user-1", res: str | None = "r-1"
) -> LicenseCall:
    return LicenseCall(
        request_id="req-1",
        drm=drm,
        entry=CatalogEntry("asset-1", res),
        client=ClientInfo(forwarded_for="203.0.113.7", user_id=user),
        challenge=b"\x08\x01challenge-bytes",
        content_type="application/octet-stream",
    )


def fairplay_call(user: str | None = None) -> FairPlayCall:
    return FairPlayCall(
        request_id="req-2",
        entry=CatalogEntry("asset-1", "r-1"),
        client=ClientInfo(forwarded_for="203.0.113.7", user_id=user),
        spc=SpcRequest(spc=SPC, fmt="binary", asset_id="asset-1"),
    )


@pytest.mark.parametrize(
    ("drm", "drm_type"), [("widevine", "Widevine"), ("playready", "PlayReady")]
)
async def test_a_challenge_goes_as_is_with_the_token_header(
    fake: FakeDoveRunner, open_client: Any, drm: str, drm_type: str
) -> None:
    client = await open_client()
    call = license_call(drm)
    answer = await client.license(call, client.endpoint(drm))
    assert answer.body == b"LICENSE:" + call.challenge
    header, content_type, token, body = fake.seen[-1]
    assert header == "pallycon-customdata-v2" and content_type == "application/octet-stream"
    assert body == call.challenge
    check_token(token, drm_type=drm_type, user_id="user-1", cid="r-1")


async def test_clearkey_goes_without_a_token_to_its_own_url_named_by_site_and_content(
    fake: FakeDoveRunner, open_client: Any
) -> None:
    client = await open_client()
    call = replace(
        license_call("clearkey", res="r 1/&x"), challenge=b'{"kids":["ABEiM0RVZneImaq7zN3u_w"]}'
    )
    answer = await client.license(call, client.endpoint("clearkey"))
    assert json.loads(answer.body) == {"keys": [], "type": "temporary"}
    kind, content_type, query, body = fake.seen[-1]
    assert (kind, content_type, body) == ("query", "application/json", call.challenge)
    assert parse_qs(query, strict_parsing=True) == {"siteId": ["DEMO"], "cid": ["r 1/&x"]}
    with pytest.raises(MissingResourceId):
        await client.license(license_call("clearkey", res=None), client.endpoint("clearkey"))


async def test_fairplay_goes_as_a_form_and_the_base64_ckc_comes_back_raw(
    fake: FakeDoveRunner, open_client: Any
) -> None:
    client = await open_client(header="doverunner-customdata-v2")
    answer = await client.fairplay(fairplay_call(), client.endpoint("fairplay"))
    assert answer.body == b"CKC:" + SPC
    assert answer.content_type == "application/octet-stream"
    header, content_type, token, body = fake.seen[-1]
    assert header == "doverunner-customdata-v2"
    assert content_type == "application/x-www-form-urlencoded"
    assert body.startswith(b"spc=") and b"assetId" not in body
    check_token(token, drm_type="FairPlay", user_id="LICENSETOKEN", cid="r-1")


def _bad_ckc_count(provider: str) -> float:
    labels = {"provider": provider, "kind": "bad_ckc"}
    value = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_bad_responses_total", labels)
    return value or 0.0


async def test_a_garbled_ckc_is_a_bad_response(fake: FakeDoveRunner, open_client: Any) -> None:
    client = await open_client()
    fake.answer = (200, b"not base64 at all!")
    before = _bad_ckc_count(client.name)
    with pytest.raises(UpstreamBadResponse):
        await client.fairplay(fairplay_call(), client.endpoint("fairplay"))
    assert _bad_ckc_count(client.name) == before + 1


@pytest.mark.parametrize(
    ("code", "error", "label"),
    [
        ("7019", UpstreamAuthFailed, "7019"),
        (7011, UpstreamAuthFailed, "7011"),
        ("7016", UpstreamAuthFailed, "7016"),
        ("1003", UpstreamAuthFailed, "1003"),
        ("7012", UpstreamBadResponse, "7012"),
        (7107, UpstreamBadResponse, "7107"),
        ("4242", UpstreamBadResponse, "other"),
    ],
)
async def test_each_error_code_maps_to_a_gateway_error(
    fake: FakeDoveRunner, open_client: Any, code: Any, error: type, label: str
) -> None:
    client = await open_client()
    fake.answer = (200, json.dumps({"errorCode": code, "message": "secret-ish detail"}).encode())
    with pytest.raises(GatewayError) as info:
        await client.license(license_call(), client.endpoint("widevine"))
    assert type(info.value) is error and info.value.status == 502
    assert info.value.provider_error == label
    assert "detail" not in info.value.message


async def test_a_wrong_access_key_is_our_credentials(
    fake: FakeDoveRunner, open_client: Any
) -> None:
    # The fake recomputes the hash with the real access key: a wrong one gets 7019.
    client = await open_client(env={**ENV, "DOVERUNNER_ACCESS_KEY": "wrong-access-key"})
    with pytest.raises(UpstreamAuthFailed) as info:
        await client.license(license_call(), client.endpoint("widevine"))
    assert info.value.provider_error == "7019"


async def test_an_asset_without_a_resource_id_never_leaves(
    fake: FakeDoveRunner, open_client: Any
) -> None:
    client = await open_client()
    with pytest.raises(MissingResourceId):
        await client.license(license_call(res=None), client.endpoint("widevine"))
    assert fake.seen == []


async def test_nothing_secret_reaches_the_log(
    fake: FakeDoveRunner, open_client: Any, log_buffer: io.StringIO
) -> None:
    client = await open_client()
    await client.license(license_call(), client.endpoint("widevine"))
    fake.answer = (200, b'{"errorCode": "7019", "message": "hash mismatch"}')
    with pytest.raises(UpstreamAuthFailed):
        await client.license(license_call(), client.endpoint("widevine"))
    token = fake.seen[0][2]
    parts = decode_token(token)
    logged = log_buffer.getvalue()
    assert "provider_error" in logged  # the error line was written ...
    for secret in (SITE_KEY, ACCESS_KEY, token[:40], parts["policy"][:40], parts["hash"]):
        assert secret not in logged  # ... without a secret, the token or its parts


# --- reading a token back (`drm-gateway token verify`) ----------------------------------------


def test_decrypt_policy_undoes_the_encryption_and_refuses_another_site_key() -> None:
    policy = {"policy_version": 2, "playback_policy": {"persistent": True}}
    encrypted = encrypt_policy(json.dumps(policy), SITE_KEY.encode())
    assert doverunner.decrypt_policy(encrypted, SITE_KEY.encode()) == policy
    with pytest.raises(ValueError, match="does not decrypt"):
        doverunner.decrypt_policy(encrypted, b"x" * 32)
    with pytest.raises(ValueError, match="does not decrypt"):
        doverunner.decrypt_policy("not base64!", SITE_KEY.encode())


def test_token_hash_is_the_hash_a_built_token_carries() -> None:
    token = decode_token(LicenseTokenBuilder(options()).build("fairplay", user_id="u", cid="c"))
    assert doverunner.token_hash(ACCESS_KEY, token) == token["hash"]
    assert doverunner.token_hash(ACCESS_KEY, token) == expected_hash(token, ACCESS_KEY)
    assert doverunner.token_hash(ACCESS_KEY + "x", token) != token["hash"]


def test_the_tutorial_token_is_read_back_to_its_published_inputs() -> None:
    fields = {
        "drm_type": "Widevine",
        "site_id": "TUTO",
        "user_id": "test-user",
        "cid": "bigbuckbunny",
        "policy": TUTORIAL_ENCRYPTED_RULE,
        "timestamp": "2019-07-17T08:57:04Z",
    }
    assert doverunner.token_hash(TUTORIAL_ACCESS_KEY, fields) == TUTORIAL_HASH
    policy = doverunner.decrypt_policy(TUTORIAL_ENCRYPTED_RULE, TUTORIAL_SITE_KEY)
    assert policy == json.loads(TUTORIAL_RULE)


def test_external_key_material_is_masked_for_display() -> None:
    policy: dict[str, Any] = {
        "playback_policy": {"persistent": False},
        "external_key": {"mpeg_cenc": [{"key_id": "ab" * 16, "key": CENC_KEY, "cek": "0" * 64}]},
    }
    masked = doverunner.mask_key_material(policy)
    assert CENC_KEY not in json.dumps(masked) and "0" * 64 not in json.dumps(masked)
    assert masked["external_key"]["mpeg_cenc"][0]["key_id"] == "ab" * 16
    assert masked["playback_policy"] == policy["playback_policy"]
    assert policy["external_key"]["mpeg_cenc"][0]["key"] == CENC_KEY  # a copy


def test_parse_timestamp_reads_what_the_builder_writes() -> None:
    assert doverunner.parse_timestamp(doverunner.utc_timestamp(1_700_000_000)) == 1_700_000_000
    with pytest.raises(ValueError):
        doverunner.parse_timestamp("2024-01-01 00:00:00")
