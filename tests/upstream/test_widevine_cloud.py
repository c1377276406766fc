"""The `widevine-cloud` kind: its config section, the signed envelope, Google's answers.

Envelopes are decoded and signatures checked here with plain stdlib + `cryptography` code,
never with the adapter's own helpers, and the round trips run against a small aiohttp
server written in this file (not the emulator).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
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
    UpstreamUnavailable,
)
from proxy.upstream import widevine_cloud
from proxy.upstream.base import ClientInfo, LicenseCall
from proxy.upstream.registry import PROVIDER_KINDS
from tests.conftest import DEMO_KEY_SECRETS

# Google's published test credentials (the `widevine_test` provider), as the brief's demo uses.
KEY_HEX = "1ae8ccd0e7985cc0b6203a55855a1034afc252980e970ca90e5202689f947ab9"
IV_HEX = "d58ce954203b7c9a9a9d467f59839249"
KEY, IV = bytes.fromhex(KEY_HEX), bytes.fromhex(IV_HEX)
PROVIDER = "widevine_test"
ENV = {"WIDEVINE_SIGNING_KEY": KEY_HEX, "WIDEVINE_SIGNING_IV": IV_HEX}
CHALLENGE = b"\x08\x01\x12\x90\x0bwidevine-challenge" + bytes(range(256))
RESOURCE = "drm-res-42"
EXAMPLE = Path(__file__).parents[2] / "deploy/examples/providers/widevine-cloud.yaml"


def _reader(env: dict[str, str] | None = None, base: Path = Path(".")) -> ConfigReader:
    return ConfigReader(base, ENV if env is None else env)


def _section(**changes: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "provider": PROVIDER,
        "signing_key": {"env": "WIDEVINE_SIGNING_KEY"},
        "signing_iv": {"env": "WIDEVINE_SIGNING_IV"},
    }
    section.update(changes)
    return {k: v for k, v in section.items() if v is not None}


def _options(**changes: Any) -> widevine_cloud.WidevineCloudOptions:
    reader = _reader()
    options = widevine_cloud.parse_options(reader, _section(**changes), "p.widevine-cloud")
    assert reader.problems == [] and options is not None
    return options


def _provider_settings(base_url: str, **changes: Any) -> ProviderSettings:
    raw = {
        "wv": {
            "kind": "widevine-cloud",
            "base_url": base_url,
            "license_urls": {"widevine": f"/cenc/getlicense/{PROVIDER}"},
            "widevine-cloud": _section(**changes),
            "timeouts": {"total_seconds": 2.0},
        }
    }
    reader = _reader()
    providers = parse_providers(reader, raw)
    assert reader.problems == []
    return providers["wv"]


def _call(resource: str | None = RESOURCE, challenge: bytes = CHALLENGE) -> LicenseCall:
    return LicenseCall(
        request_id="req-1",
        drm="widevine",
        entry=CatalogEntry(asset_id="asset-1", drm_resource_id=resource),
        client=ClientInfo(forwarded_for="203.0.113.7", user_id="user-1"),
        challenge=challenge,
        content_type="application/octet-stream",
    )


def _decrypt_signature(signature_b64: str) -> bytes:
    """The padded digest inside a signature, decrypted with plain `cryptography` AES-CBC."""
    decryptor = Cipher(algorithms.AES(KEY), modes.CBC(IV)).decryptor()
    return decryptor.update(base64.b64decode(signature_b64)) + decryptor.finalize()


# --- the config section -------------------------------------------------------------------


def test_a_complete_section_gives_options_with_googles_defaults() -> None:
    options = _options()
    assert options.provider == PROVIDER
    assert (options.signing_key, options.signing_iv) == (KEY, IV)
    assert options.signature_padding == "zero"
    assert options.allowed_track_types is None and options.policy is None
    assert dict(options.policy_overrides) == {}


def test_secrets_may_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "key.hex").write_text(KEY_HEX.upper() + "\n")
    (tmp_path / "iv.hex").write_text(IV_HEX + "\n")
    reader = _reader(env={}, base=tmp_path)
    section = _section(signing_key={"file": "key.hex"}, signing_iv={"file": "iv.hex"})
    options = widevine_cloud.parse_options(reader, section, "p.widevine-cloud")
    assert reader.problems == [] and options is not None
    assert (options.signing_key, options.signing_iv) == (KEY, IV)


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    env = {"SHORT_KEY": KEY_HEX[:62], "NOT_HEX": "zz" * 16}
    section = {
        "provider": "widevine test",
        "signing_key": {"env": "SHORT_KEY"},
        "signing_iv": {"env": "NOT_HEX"},
        "signature_padding": "pkcs5",
        "allowed_track_types": "HD_ONLY",
        "policy": "",
        "policy_overrides": {"can_play": "yes", "license_duration_seconds": -1, "bogus": 1},
        "use_policy_overrides_exclusively": "true",
        "signer": "someone",
    }
    reader = _reader(env=env)
    assert widevine_cloud.parse_options(reader, section, "p.wc") is None
    problems = "\n".join(reader.problems)
    for where in (
        "p.wc.provider:",
        "p.wc.signing_key: must be 32 bytes (64 hex digits), the secret has 31",
        "p.wc.signing_iv: must be hexadecimal",
        "p.wc.signature_padding: must be one of zero, pkcs7",
        "p.wc.allowed_track_types: must be one of SD_ONLY, SD_HD, SD_UHD1, SD_UHD2",
        "p.wc.policy: must not be empty",
        "p.wc.policy_overrides.can_play: must be true or false",
        "p.wc.policy_overrides.license_duration_seconds: must be 0 or more seconds",
        "p.wc.policy_overrides.bogus: unknown field",
        "p.wc.use_policy_overrides_exclusively: must be true or false",
        "p.wc.signer: unknown field",
    ):
        assert where in problems, where
    assert len(reader.problems) == 11
    # The (wrong) secrets are described, never shown.
    assert KEY_HEX[:62] not in problems and "zz" * 16 not in problems


def test_missing_section_secrets_and_env_vars_are_problems() -> None:
    reader = _reader(env={})
    assert widevine_cloud.parse_options(reader, None, "p.wc") is None
    assert reader.problems == ["p.wc: is missing, and has no default"]
    reader = _reader(env={})
    section = {"signing_iv": {"env": "WIDEVINE_SIGNING_IV"}}
    assert widevine_cloud.parse_options(reader, section, "p.wc") is None
    assert reader.problems == [
        "p.wc.provider: is missing, and has no default",
        "p.wc.signing_key: is missing, and has no default",
        "p.wc.signing_iv.env: environment variable WIDEVINE_SIGNING_IV is not set",
    ]


def test_an_iv_of_the_wrong_length_is_refused_with_its_length() -> None:
    reader = _reader(env={**ENV, "WIDEVINE_SIGNING_IV": KEY_HEX})
    assert widevine_cloud.parse_options(reader, _section(), "p.wc") is None
    assert reader.problems == [
        "p.wc.signing_iv: must be 16 bytes (32 hex digits), the secret has 32"
    ]


def test_no_secret_in_the_options_repr() -> None:
    text = repr(_options())
    for secret in (KEY_HEX, IV_HEX, repr(KEY), repr(IV), KEY.hex()[:16]):
        assert secret not in text
    assert PROVIDER in text


def test_the_kind_is_registered_widevine_only_and_needs_a_drm_resource_id() -> None:
    kind = PROVIDER_KINDS["widevine-cloud"]
    assert kind is widevine_cloud.KIND
    assert kind.drms == frozenset({"widevine"}) and kind.needs_drm_resource_id is True
    raw = {
        "wv": {
            "kind": "widevine-cloud",
            "base_url": "https://license.widevine.com",
            "license_urls": {"widevine": "/cenc/getlicense/x", "playready": "/x"},
            "needs_drm_resource_id": False,
            "auth": {"type": "none"},
            "widevine-cloud": _section(),
        }
    }
    reader = _reader()
    parse_providers(reader, raw)
    assert sorted(reader.problems) == [
        "providers.wv.auth: kind 'widevine-cloud' authenticates with its 'widevine-cloud' section",
        "providers.wv.license_urls.playready: kind 'widevine-cloud' does not serve playready",
        "providers.wv.needs_drm_resource_id: is true for kind 'widevine-cloud' (its protocol "
        "decides)",
    ]


def test_the_deploy_example_is_a_valid_provider() -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    reader = _reader()
    providers = parse_providers(reader, raw["providers"])
    assert reader.problems == []
    (settings,) = providers.values()
    options = settings.options
    assert isinstance(options, widevine_cloud.WidevineCloudOptions)
    assert settings.kind == "widevine-cloud" and settings.needs_drm_resource_id
    url = settings.license_urls["widevine"].render({})
    assert url == f"https://license.widevine.com/cenc/getlicense/{options.provider}"
    assert options.signature_padding == "zero" and options.signing_key == KEY


def test_the_deploy_example_passes_config_check_over_the_demo_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Path(__file__).parents[2] / "proxy/dev/demo_data/gateway.yaml"
    env = {
        **ENV,
        **DEMO_KEY_SECRETS,
        "ADMIN_TOKEN": "a" * 24,
        "PLAYER_JWT_SECRET": "p" * 32,
        "LEGACY_API_KEY": "l",
    }
    for name, value in {**env, "INCOMING_JWT_KEY": "i" * 32}.items():
        monkeypatch.setenv(name, value)
    config = load_config(base, layers=[EXAMPLE])
    assert config.providers["widevine-cloud"].kind == "widevine-cloud"


# --- the request ----------------------------------------------------------------------------


def _decode_envelope(body: bytes) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(envelope, the inner message's exact bytes, the inner message)."""
    outer = json.loads(body)
    inner_bytes = base64.b64decode(outer["request"], validate=True)
    return outer, inner_bytes, json.loads(inner_bytes)


def test_the_envelope_carries_the_challenge_provider_and_content_id() -> None:
    options = _options(
        allowed_track_types="SD_UHD1",
        policy="gold",
        policy_overrides={"can_play": True, "license_duration_seconds": 600},
        use_policy_overrides_exclusively=True,
    )
    outer, _, inner = _decode_envelope(widevine_cloud.envelope(options, CHALLENGE, RESOURCE))
    assert set(outer) == {"request", "signature", "signer"}
    assert outer["signer"] == PROVIDER
    assert inner == {
        "payload": base64.b64encode(CHALLENGE).decode(),
        "provider": PROVIDER,
        "content_id": base64.b64encode(RESOURCE.encode()).decode(),
        "allowed_track_types": "SD_UHD1",
        "policy": "gold",
        "policy_overrides": {"can_play": True, "license_duration_seconds": 600},
        "use_policy_overrides_exclusively": True,
    }


def test_optional_policy_fields_are_left_out_when_not_configured() -> None:
    _, _, inner = _decode_envelope(widevine_cloud.envelope(_options(), b"\x08\x04", "é/1"))
    assert inner == {
        "payload": "CAQ=",
        "provider": PROVIDER,
        "content_id": base64.b64encode("é/1".encode()).decode(),
    }


def test_the_signature_is_the_zero_padded_sha1_of_the_inner_bytes() -> None:
    outer, inner_bytes, _ = _decode_envelope(
        widevine_cloud.envelope(_options(), CHALLENGE, RESOURCE)
    )
    plain = _decrypt_signature(outer["signature"])
    assert plain == hashlib.sha1(inner_bytes).digest() + bytes(12)


def test_pkcs7_padding_is_the_option_and_shares_the_first_block() -> None:
    zero, _, _ = _decode_envelope(widevine_cloud.envelope(_options(), CHALLENGE, RESOURCE))
    pkcs7_options = _options(signature_padding="pkcs7")
    outer, inner_bytes, _ = _decode_envelope(
        widevine_cloud.envelope(pkcs7_options, CHALLENGE, RESOURCE)
    )
    assert _decrypt_signature(outer["signature"]) == hashlib.sha1(inner_bytes).digest() + bytes(
        [12] * 12
    )
    zero_sig, pkcs7_sig = (base64.b64decode(o["signature"]) for o in (zero, outer))
    assert len(zero_sig) == len(pkcs7_sig) == 32
    assert zero_sig[:16] == pkcs7_sig[:16] and zero_sig[16:] != pkcs7_sig[16:]


# --- the answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", widevine_cloud.STATUSES)
def test_each_documented_status_is_a_fault_with_its_own_code(status: str) -> None:
    body = json.dumps({"status": status, "status_message": "nope"}).encode()
    fault = widevine_cloud.read_fault(200, {}, body)
    assert fault is not None and fault.code == status
    error = fault.error(200) if fault.error is not None else None
    if status in ("SIGNATURE_FAILED", "SIGNING_KEY_EXPIRED"):
        assert isinstance(error, UpstreamAuthFailed)
    else:
        assert error is None  # the status table decides: a 2xx carrying an error is a 502


@pytest.mark.parametrize(
    "body",
    [
        b'{"status": "OK", "license": "CAI="}',
        b"\x08\x02license-bytes",
        b"[1, 2]",
        b'{"status": 7}',
        b"{broken",
    ],
)
def test_answers_without_an_error_status_carry_no_fault(body: bytes) -> None:
    assert widevine_cloud.read_fault(200, {}, body) is None


# --- round trips against a small Google-like server ------------------------------------------

Answer = Callable[[dict[str, Any]], Awaitable[web.Response]]


class FakeGoogle:
    """Checks each request the way the docs describe it and answers what the test says."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[dict[str, Any]] = []
        self.answer: Answer = self.license_answer

    async def handle(self, request: web.Request) -> web.Response:
        assert request.method == "POST"
        assert request.path == f"/cenc/getlicense/{PROVIDER}"
        assert request.content_type == "application/json"
        outer, inner_bytes, inner = _decode_envelope(await request.read())
        plain = _decrypt_signature(outer["signature"])
        inner["signature_ok"] = plain[:20] == hashlib.sha1(inner_bytes).digest()
        inner["signer"] = outer["signer"]
        self.seen.append(inner)
        return await self.answer(inner)

    async def license_answer(self, inner: dict[str, Any]) -> web.Response:
        license_ = b"LICENSE:" + base64.b64decode(inner["payload"])
        return web.json_response(
            {"status": "OK", "license": base64.b64encode(license_).decode(), "make": "x"},
            headers={"X-Google-Internal": "1"},
        )


@pytest.fixture
async def google(aiohttp_server: Any) -> FakeGoogle:
    fake = FakeGoogle()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    server = await aiohttp_server(app)
    fake.url = str(server.make_url(""))
    return fake


@pytest.fixture
async def client(google: FakeGoogle) -> AsyncIterator[widevine_cloud.WidevineCloudProvider]:
    provider = widevine_cloud.WidevineCloudProvider(_provider_settings(google.url))
    await provider.open()
    yield provider
    await provider.close()


def _endpoint(provider: widevine_cloud.WidevineCloudProvider) -> Any:
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None and provider.endpoint("playready") is None
    return endpoint


async def test_a_license_round_trip(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle
) -> None:
    answer = await client.license(_call(), _endpoint(client))
    assert answer.body == b"LICENSE:" + CHALLENGE
    assert answer.content_type == "application/octet-stream"
    (inner,) = google.seen
    assert inner["signature_ok"] and inner["signer"] == PROVIDER
    assert base64.b64decode(inner["content_id"]) == RESOURCE.encode()
    assert "X-Google-Internal" in dict(answer.headers)


async def test_the_service_certificate_request_goes_through_the_same_envelope(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle
) -> None:
    answer = await client.license(_call(challenge=b"\x08\x04"), _endpoint(client))
    assert answer.body == b"LICENSE:\x08\x04"
    assert google.seen[0]["payload"] == "CAQ="


def _status_answer(status: str, http: int = 200) -> Answer:
    async def answer(inner: dict[str, Any]) -> web.Response:
        return web.json_response({"status": status, "status_message": "secret detail"}, status=http)

    return answer


@pytest.mark.parametrize("status", widevine_cloud.STATUSES)
async def test_each_documented_status_reaches_the_player_as_a_gateway_error(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle, status: str
) -> None:
    google.answer = _status_answer(status)
    with pytest.raises(GatewayError) as info:
        await client.license(_call(), _endpoint(client))
    expected = UpstreamAuthFailed if status in widevine_cloud.AUTH_STATUSES else UpstreamBadResponse
    assert type(info.value) is expected and info.value.status == 502
    assert info.value.provider_error == status
    assert "secret detail" not in info.value.message


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (_status_answer("SOMETHING_NEW"), UpstreamBadResponse, "other"),
        (_status_answer("INTERNAL_ERROR", http=500), UpstreamUnavailable, "INTERNAL_ERROR"),
        (_status_answer("OK"), UpstreamBadResponse, "-"),  # OK but no license (parse_only)
    ],
)
async def test_unknown_statuses_errors_and_licenseless_answers(
    client: widevine_cloud.WidevineCloudProvider,
    google: FakeGoogle,
    answer: Answer,
    error: type,
    code: str,
) -> None:
    google.answer = answer
    with pytest.raises(GatewayError) as info:
        await client.license(_call(), _endpoint(client))
    assert type(info.value) is error and info.value.provider_error == code


@pytest.mark.parametrize(
    "body", [b'{"status": "OK", "license": "not base64!"}', b"\x08\x02raw", b"{}"]
)
async def test_a_garbled_ok_answer_is_a_bad_response(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle, body: bytes
) -> None:
    async def answer(inner: dict[str, Any]) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    google.answer = answer
    with pytest.raises(UpstreamBadResponse):
        await client.license(_call(), _endpoint(client))


async def test_an_asset_without_a_drm_resource_id_is_never_signed(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle
) -> None:
    with pytest.raises(MissingResourceId):
        await client.license(_call(resource=None), _endpoint(client))
    assert google.seen == []


async def test_pkcs7_option_round_trip(google: FakeGoogle) -> None:
    settings = _provider_settings(google.url, signature_padding="pkcs7")
    provider = widevine_cloud.WidevineCloudProvider(settings)
    await provider.open()
    try:
        answer = await provider.license(_call(), _endpoint(provider))
    finally:
        await provider.close()
    assert answer.body == b"LICENSE:" + CHALLENGE and google.seen[0]["signature_ok"]


async def test_no_secret_or_body_reaches_the_logs(
    client: widevine_cloud.WidevineCloudProvider, google: FakeGoogle, log_buffer: io.StringIO
) -> None:
    await client.license(_call(), _endpoint(client))
    google.answer = _status_answer("SIGNATURE_FAILED")
    with pytest.raises(UpstreamAuthFailed):
        await client.license(_call(), _endpoint(client))
    logs = log_buffer.getvalue()
    assert "SIGNATURE_FAILED" in logs  # the provider code is logged ...
    secrets = (KEY_HEX, IV_HEX, base64.b64encode(KEY).decode(), base64.b64encode(IV).decode())
    license_b64 = base64.b64encode(b"LICENSE:" + CHALLENGE).decode()
    bodies = (base64.b64encode(CHALLENGE).decode()[:24], license_b64[:24], "secret detail")
    for text in (*secrets, *bodies):  # ... never a secret, a signature input or a body
        assert text not in logs


def test_a_provider_without_its_options_is_refused() -> None:
    settings = _provider_settings("http://127.0.0.1:1")
    bare = ProviderSettings(
        name=settings.name,
        license_urls=settings.license_urls,
        key_url=None,
        auth=settings.auth,
        kind="widevine-cloud",
    )
    with pytest.raises(TypeError, match="without its widevine-cloud section"):
        widevine_cloud.WidevineCloudProvider(bare)


# --- reading an envelope back (`drm-gateway token verify`) ----------------------------------


def test_read_envelope_takes_apart_what_envelope_builds() -> None:
    body = widevine_cloud.envelope(_options(), CHALLENGE, RESOURCE)
    outer, inner_bytes, inner = _decode_envelope(body)
    opened = widevine_cloud.read_envelope(body)
    assert (opened.request, dict(opened.message), opened.signer) == (inner_bytes, inner, PROVIDER)
    assert opened.signature == base64.b64decode(outer["signature"])
    assert widevine_cloud.signature_matches(opened, _options())


def test_signature_matches_only_the_same_key_iv_padding_and_request() -> None:
    opened = widevine_cloud.read_envelope(widevine_cloud.envelope(_options(), CHALLENGE, RESOURCE))
    other_key = {"WIDEVINE_SIGNING_KEY": "00" * 32, "WIDEVINE_SIGNING_IV": IV_HEX}
    reader = _reader(other_key)
    wrong = widevine_cloud.parse_options(reader, _section(), "p.widevine-cloud")
    assert wrong is not None and not widevine_cloud.signature_matches(opened, wrong)
    assert not widevine_cloud.signature_matches(opened, _options(signature_padding="pkcs7"))
    changed = widevine_cloud.Envelope(
        opened.request.replace(b'"provider"', b'"provider" '),
        opened.message,
        opened.signature,
        opened.signer,
    )
    assert not widevine_cloud.signature_matches(changed, _options())


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"request": "e30=", "signature": "AA=="}',
        b'{"request": "not base64", "signature": "AA==", "signer": "p"}',
        b'{"request": "W10=", "signature": "AA==", "signer": "p"}',
        b"[" * 100_000,
    ],
)
def test_read_envelope_refuses_what_is_not_an_envelope(body: bytes) -> None:
    with pytest.raises(ValueError):
        widevine_cloud.read_envelope(body)
