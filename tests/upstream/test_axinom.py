"""The `axinom` provider kind: its config section, the X-AxDRM-Message it signs (checked against
Axinom's published examples and with independent stdlib code), how Axinom's errors map, and a
round trip through a small Axinom-like server written here (not the emulator)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from proxy.catalog.base import CatalogEntry
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.errors import (
    GatewayError,
    InternalError,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.observability import metrics
from proxy.upstream import axinom
from proxy.upstream.axinom import (
    AxinomOptions,
    AxinomProvider,
    EntitlementSigner,
    key_id_guid,
    parse_options,
    read_fault,
)
from proxy.upstream.base import ClientInfo, FairPlayCall, LicenseCall
from proxy.upstream.fairplay import SpcRequest
from proxy.upstream.transport import status_rule

COM_KEY_ID = "a9c1f3e2-5b7d-4e8f-9a0b-1c2d3e4f5a6b"
COM_KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
COM_KEY = bytes(range(32))
ENV = {"AXINOM_COMMUNICATION_KEY": COM_KEY_B64}
KEY_IDS = ("00112233445566778899aabbccddeeff", "0123456789abcdef0123456789abcdef")
SPC = b"\x00\x00\x00\x01" + bytes(range(200))
CKC = b"\x00\x00\x00\x01" + b"ckc" * 30

# Axinom's public test vectors: the X-AxDRM-Message of the "Cmaf H264 MultiKey" vector
# (github.com/Axinom/public-test-vectors, X-AxDRM-Message-headers/...-MultiKey-X-AxDRM-Message.xml),
# header and payload segments. The communication key is not published, so the signature is not.
AXINOM_HEADER_SEGMENT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
AXINOM_PAYLOAD_SEGMENT = (
    "eyJ2ZXJzaW9uIjogMSwiY29tX2tleV9pZCI6ICJmYzEwMzM4Ni05NmNkLTRmY2YtOTIzZC1hZDhkMDA3NWM1YjQiLCJt"
    "ZXNzYWdlIjogeyAgInR5cGUiOiAiZW50aXRsZW1lbnRfbWVzc2FnZSIsICAidmVyc2lvbiI6IDIsICAiY29udGVudF9r"
    "ZXlzX3NvdXJjZSI6IHsgICAgImlubGluZSI6IFsgICAgICB7ICAgICAgICAiaWQiOiAiYjU0ZWM5MTQtMTkyZC00ZWEx"
    "LWFjMTktZjQyOWViNDk4MjY4IiAgICAgIH0sICAgICAgeyAgICAgICAgImlkIjogImM4M2M0ZWE4LTBmMmEtNDUyMy04"
    "NTFjLWZiZWNjZGMwZjIwMiIgICAgICB9LCAgICAgIHsgICAgICAgICJpZCI6ICJjODY4YzcwMi1jNzFiLTQwNjQtYWUy"
    "Yi1jMjRmN2NjMTA3OTIiICAgICAgfSAgICBdICB9fX0"
)
AXINOM_KEY_IDS = (
    "b54ec914192d4ea1ac19f429eb498268",
    "c83c4ea80f2a4523851cfbeccdc0f202",
    "c868c702c71b4064ae2bc24f7cc10792",
)


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_message(token: str, key: bytes = COM_KEY) -> dict[str, Any]:
    """Verify an HS256 JWT with stdlib HMAC only and return its payload."""
    header, payload, signature = token.split(".")
    expected = hmac.new(key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(unb64url(signature), expected), "signature does not verify"
    assert json.loads(unb64url(header)) == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = json.loads(unb64url(payload))
    return claims


def options(**overrides: Any) -> AxinomOptions:
    values: dict[str, Any] = {"com_key_id": COM_KEY_ID, "com_key": COM_KEY}
    values.update(overrides)
    return AxinomOptions(**values)


def read(raw: Any, env: dict[str, str] | None = None) -> tuple[AxinomOptions | None, list[str]]:
    reader = ConfigReader(Path("."), ENV if env is None else env)
    parsed = parse_options(reader, raw, "providers.ax.axinom")
    return parsed, list(reader.problems)


# --- the config section -----------------------------------------------------------------------


def test_a_valid_section_decodes_the_communication_key() -> None:
    parsed, problems = read(
        {
            "com_key_id": COM_KEY_ID.upper(),
            "com_key": {"env": "AXINOM_COMMUNICATION_KEY"},
            "message_lifetime_seconds": 30,
            "license": {"duration": 3600, "widevine": {"allow_renewal": False}},
        }
    )
    assert problems == []
    assert parsed is not None
    assert parsed.com_key == COM_KEY  # the HMAC key is the decoded bytes, not the text
    assert parsed.com_key_id == COM_KEY_ID
    assert parsed.message_lifetime_seconds == 30
    assert parsed.license == {"duration": 3600, "widevine": {"allow_renewal": False}}


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    parsed, problems = read(
        {
            "com_key_id": "not-a-guid",
            "com_key": {"env": "AXINOM_COMMUNICATION_KEY"},
            "message_lifetime_seconds": 7200,
            "license": {"duraton": 3600, "duration": float("nan")},
            "kid": "x",
        },
        env={"AXINOM_COMMUNICATION_KEY": "not base64!"},
    )
    assert parsed is None
    paths = sorted(problem.split(":")[0] for problem in problems)
    assert paths == [
        "providers.ax.axinom.com_key",
        "providers.ax.axinom.com_key_id",
        "providers.ax.axinom.kid",
        "providers.ax.axinom.license.duration",
        "providers.ax.axinom.license.duraton",
        "providers.ax.axinom.message_lifetime_seconds",
    ]


@pytest.mark.parametrize(
    ("raw", "env", "expected"),
    [
        (None, ENV, ["com_key_id: is missing", "com_key: is missing"]),
        (
            {"com_key_id": COM_KEY_ID, "com_key": {"env": "AXINOM_COMMUNICATION_KEY"}},
            {"AXINOM_COMMUNICATION_KEY": base64.b64encode(b"k" * 16).decode()},
            ["com_key: decodes to 16 bytes"],
        ),
        (
            {"com_key_id": COM_KEY_ID, "com_key": {"env": "NOT_SET"}},
            {},
            ["com_key.env: environment variable NOT_SET is not set"],
        ),
        (
            {"com_key_id": COM_KEY_ID, "com_key": COM_KEY_B64},
            ENV,
            ["com_key: must be a mapping"],
        ),
        (
            {
                "com_key_id": COM_KEY_ID,
                "com_key": {"env": "AXINOM_COMMUNICATION_KEY"},
                "message_lifetime_seconds": 0,
            },
            ENV,
            ["message_lifetime_seconds: must be greater than 0"],
        ),
    ],
)
def test_each_bad_section_says_why(raw: Any, env: dict[str, str], expected: list[str]) -> None:
    parsed, problems = read(raw, env)
    assert parsed is None
    for wanted in expected:
        assert any(wanted in problem for problem in problems), (wanted, problems)


def _provider_section(**overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "kind": "axinom",
        "license_urls": {
            "widevine": "https://drm-widevine-licensing.axprod.net/AcquireLicense",
            "fairplay": "https://drm-fairplay-licensing.axprod.net/AcquireLicense",
        },
        "axinom": {"com_key_id": COM_KEY_ID, "com_key": {"env": "AXINOM_COMMUNICATION_KEY"}},
    }
    section.update(overrides)
    return section


def test_the_provider_declares_key_ids_and_fixed_fairplay_formats() -> None:
    reader = ConfigReader(Path("."), ENV)
    providers = parse_providers(reader, {"ax": _provider_section()})
    assert reader.problems == []
    settings = providers["ax"]
    assert settings.needs_key_ids is True and settings.needs_drm_resource_id is False
    assert (settings.fairplay.request, settings.fairplay.response) == ("binary", "binary")
    assert isinstance(settings.options, AxinomOptions)


def test_the_provider_section_refuses_what_the_kind_decides() -> None:
    reader = ConfigReader(Path("."), ENV)
    section = _provider_section(
        auth={"type": "none"},
        fairplay={"request": "form"},
        needs_drm_resource_id=True,
        key_url="https://example.com/keys/{key_id}",
        license_urls={"clearkey": "https://example.com/ck"},
    )
    parse_providers(reader, {"ax": section})
    paths = sorted(problem.split(":")[0] for problem in reader.problems)
    assert paths == [
        "providers.ax.auth",
        "providers.ax.fairplay",
        "providers.ax.key_url",
        "providers.ax.license_urls.clearkey",
        "providers.ax.needs_drm_resource_id",
    ]


# --- the message ------------------------------------------------------------------------------


def test_the_header_segment_is_the_one_axinom_publishes() -> None:
    token = EntitlementSigner(options()).sign(KEY_IDS)
    assert token.split(".")[0] == AXINOM_HEADER_SEGMENT


def test_axinoms_published_example_message_is_reproduced() -> None:
    published = json.loads(unb64url(AXINOM_PAYLOAD_SEGMENT))
    signer = EntitlementSigner(options(com_key_id=published["com_key_id"]))
    claims = decode_message(signer.sign(AXINOM_KEY_IDS))
    assert claims.pop("expiration_date")  # ours is short-lived; the published one has none
    assert claims == published


def test_the_documented_signing_example_values_give_the_documented_message() -> None:
    """Axinom's "How to sign a License Service Message" page: its example communication key id,
    key (base64) and key id, and the message built from them."""
    doc_key = base64.b64decode("RPSdG/fViTkTjcuG3fcRXL2JDchGThWQ/tfSNHAoG+A=")
    doc_options = options(com_key_id="aa0151d7-081c-4699-a049-fc584556c9d2", com_key=doc_key)
    token = EntitlementSigner(doc_options).sign(("7459975db2f848eda32556e4f34d19c7",))
    claims = decode_message(token, doc_key)
    del claims["expiration_date"]
    assert claims == {
        "version": 1,
        "com_key_id": "aa0151d7-081c-4699-a049-fc584556c9d2",
        "message": {
            "type": "entitlement_message",
            "version": 2,
            "content_keys_source": {"inline": [{"id": "7459975d-b2f8-48ed-a325-56e4f34d19c7"}]},
        },
    }


def test_the_signature_uses_the_decoded_key_not_its_base64_text() -> None:
    token = EntitlementSigner(options()).sign(KEY_IDS)
    decode_message(token, COM_KEY)
    with pytest.raises(AssertionError, match="signature"):
        decode_message(token, COM_KEY_B64.encode())


def test_the_expiration_is_short_iso_8601_with_an_offset() -> None:
    now = 1_700_000_000.0
    signer = EntitlementSigner(options(message_lifetime_seconds=45), clock=lambda: now)
    claims = decode_message(signer.sign(KEY_IDS))
    expires = datetime.fromisoformat(claims["expiration_date"])
    assert expires.utcoffset() == timedelta(0)
    assert expires.timestamp() == now + 45
    assert claims["expiration_date"].endswith("+00:00")


def test_the_expiration_follows_the_clock() -> None:
    clock = [1_700_000_000.0]
    signer = EntitlementSigner(options(), clock=lambda: clock[0])
    first = decode_message(signer.sign(KEY_IDS))["expiration_date"]
    clock[0] += 1
    second = decode_message(signer.sign(KEY_IDS))["expiration_date"]
    assert datetime.fromisoformat(second) - datetime.fromisoformat(first) == timedelta(seconds=1)


def test_every_key_id_is_entitled_in_guid_form_and_the_license_section_is_sent() -> None:
    license_ = {
        "duration": 3600,
        "allow_persistence": False,
        "playready": {"playback_duration": 60},
    }
    claims = decode_message(EntitlementSigner(options(license=license_)).sign(KEY_IDS))
    message = claims["message"]
    assert message["license"] == license_
    ids = [entry["id"] for entry in message["content_keys_source"]["inline"]]
    assert [i.replace("-", "") for i in ids] == list(KEY_IDS)
    assert all(len(i.split("-")) == 5 for i in ids)
    assert claims["com_key_id"] == COM_KEY_ID and claims["version"] == 1


def test_key_id_guid_groups_8_4_4_4_12() -> None:
    assert key_id_guid("00112233445566778899AABBCCDDEEFF") == "00112233-4455-6677-8899-aabbccddeeff"


def test_no_secret_in_reprs() -> None:
    opts = options()
    signer = EntitlementSigner(opts)
    text = repr(opts) + repr(signer)
    assert COM_KEY_B64 not in text and repr(COM_KEY) not in text and COM_KEY.hex() not in text


# --- Axinom's errors --------------------------------------------------------------------------

REVOKED = (
    "Invalid license request. DRM client models with revoked certificates are not allowed "
    "to receive licenses"
)
LEVEL = (
    "License denied. Your device security level (Level3) is too low for any of the keys "
    "in the Entitlement Message"
)
BAD_WIDEVINE = "The request data does not represent a valid Widevine request"
SIGNATURE = "Invalid license request. The License Service Message signature is not valid."


@pytest.mark.parametrize(
    ("status", "message", "code", "error", "player_status"),
    [
        (400, REVOKED, "revoked_device", UpstreamRejected, 400),
        (403, LEVEL, "security_level", UpstreamRejected, 403),
        (400, BAD_WIDEVINE, "bad_challenge", UpstreamRejected, 400),
        (400, SIGNATURE, "bad_signature", UpstreamAuthFailed, 502),
        (400, "Unknown communication key 1234", "unknown_com_key", UpstreamAuthFailed, 502),
        (
            403,
            "License denied. The message has expired.",
            "message_expired",
            UpstreamAuthFailed,
            502,
        ),
        (400, "Invalid license request. Something new.", "invalid_request", UpstreamRejected, 400),
        (403, "License denied. Something new.", "license_denied", UpstreamRejected, 403),
        # PlayReady answers every error 500; the message says whose fault it was.
        (500, LEVEL, "security_level", UpstreamRejected, 403),
        (500, REVOKED, "revoked_device", UpstreamRejected, 400),
        (500, "Internal error. Contact Axinom.", "internal_error", UpstreamUnavailable, 502),
    ],
)
def test_each_documented_message_maps_to_a_bounded_code(
    status: int, message: str, code: str, error: type, player_status: int
) -> None:
    fault = read_fault(status, {"X-AxDRM-ErrorMessage": message}, b"")
    assert fault is not None and fault.code == code
    # No error of its own: the transport's status table decides, as it does end to end.
    rule = status_rule(status, b"")
    make_error = fault.error or (rule.error if rule is not None else None)
    assert make_error is not None
    raised = make_error(status)
    assert type(raised) is error and raised.status == player_status


def test_a_soap_fault_without_the_header_is_still_read() -> None:
    body = (
        b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/'
        b'envelope/"><soap:Body><soap:Fault><faultcode>soap:Server</faultcode><faultstring>'
        + LEVEL.encode()
        + b"</faultstring></soap:Fault></soap:Body></soap:Envelope>"
    )
    fault = read_fault(500, {}, body)
    assert fault is not None and fault.code == "security_level"


def test_statuses_without_a_message_fall_back_to_their_category() -> None:
    codes = {s: read_fault(s, {}, b"") for s in (200, 400, 403, 404, 500, 503)}
    assert codes[200] is None and codes[404] is None
    assert {s: f.code for s, f in codes.items() if f is not None} == {
        400: "invalid_request",
        403: "license_denied",
        500: "internal_error",
        503: "internal_error",
    }


# --- a round trip through a small Axinom-like server ------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.Response]]


class FakeAxinom:
    """One host per DRM in reality; here a path per DRM. Verifies the message on its own."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: Callable[[str, bytes], web.Response] | None = None

    async def handle(self, request: web.Request) -> web.Response:
        drm = request.match_info["drm"]
        body = await request.read()
        token = request.headers.get("X-AxDRM-Message", "")
        try:
            claims = decode_message(token)
        except (AssertionError, ValueError):
            return self._error(400, "Invalid license request. Message signature is not valid.")
        ids = [e["id"] for e in claims["message"]["content_keys_source"]["inline"]]
        self.seen.append(
            {"drm": drm, "ids": ids, "body": body, "type": request.content_type, "claims": claims}
        )
        if self.answer is not None:
            return self.answer(drm, body)
        license_ = CKC if drm == "fairplay" else b"LICENSE:" + hashlib.sha256(body).digest()
        headers = {"X-AxDRM-Message": "eyJ.response.info", "X-AxDRM-Identity": "wv-1"}
        return web.Response(body=license_, headers=headers)

    @staticmethod
    def _error(status: int, message: str) -> web.Response:
        return web.Response(status=status, headers={"X-AxDRM-ErrorMessage": message})


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAxinom, str]]:
    server = FakeAxinom()
    app = web.Application()
    app.router.add_post("/{drm}/AcquireLicense", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def provider(fake: tuple[FakeAxinom, str]) -> AsyncIterator[AxinomProvider]:
    _, base = fake
    section = _provider_section(
        license_urls={
            d: f"{base}/{d}/AcquireLicense" for d in ("widevine", "playready", "fairplay")
        }
    )
    reader = ConfigReader(Path("."), ENV)
    settings: ProviderSettings = parse_providers(reader, {"axinom-test": section})["axinom-test"]
    assert reader.problems == []
    client = AxinomProvider(settings)
    await client.open()
    yield client
    await client.close()


ENTRY = CatalogEntry("asset-1", None, key_ids=KEY_IDS)
CLIENT = ClientInfo(forwarded_for="192.0.2.7", user_id="user-1")


def license_call(drm: str, challenge: bytes, entry: CatalogEntry = ENTRY) -> LicenseCall:
    content_type = "text/xml; charset=utf-8" if drm == "playready" else "application/octet-stream"
    return LicenseCall("req-1", drm, entry, CLIENT, challenge, content_type)


def fairplay_call(entry: CatalogEntry = ENTRY) -> FairPlayCall:
    return FairPlayCall("req-2", entry, CLIENT, SpcRequest(SPC, "form", "asset-1"))


@pytest.mark.parametrize("drm", ["widevine", "playready"])
async def test_a_license_round_trip_sends_the_challenge_raw_with_the_message(
    fake: tuple[FakeAxinom, str], provider: AxinomProvider, drm: str
) -> None:
    server, _ = fake
    challenge = b"\x08\x04" if drm == "widevine" else b"<soap:Envelope>challenge</soap:Envelope>"
    call = license_call(drm, challenge)
    endpoint = provider.endpoint(drm)
    assert endpoint is not None
    answer = await provider.license(call, endpoint)
    assert answer.body == b"LICENSE:" + hashlib.sha256(challenge).digest()
    (seen,) = server.seen
    assert seen["drm"] == drm and seen["body"] == challenge
    assert [i.replace("-", "") for i in seen["ids"]] == list(KEY_IDS)
    names = {name.lower() for name, _ in answer.headers}
    assert "x-axdrm-message" not in names  # Axinom's own message never reaches the player
    assert "x-axdrm-identity" in names


async def test_a_fairplay_round_trip_sends_the_raw_spc_and_returns_the_raw_ckc(
    fake: tuple[FakeAxinom, str], provider: AxinomProvider
) -> None:
    server, _ = fake
    endpoint = provider.endpoint("fairplay")
    assert endpoint is not None
    answer = await provider.fairplay(fairplay_call(), endpoint)
    assert answer.body == CKC and answer.content_type == "application/octet-stream"
    (seen,) = server.seen
    assert seen["body"] == SPC and seen["type"] == "application/octet-stream"


async def test_a_garbled_fairplay_answer_is_a_bad_response(
    fake: tuple[FakeAxinom, str], provider: AxinomProvider
) -> None:
    server, _ = fake
    server.answer = lambda _drm, _body: web.Response(body=b"   ")
    endpoint = provider.endpoint("fairplay")
    assert endpoint is not None
    with pytest.raises(UpstreamBadResponse):
        await provider.fairplay(fairplay_call(), endpoint)


def _responses(code: str, status_class: str) -> float:
    labels = {"provider": "axinom-test", "status_class": status_class, "provider_error": code}
    value = metrics.REGISTRY.get_sample_value("drm_gateway_upstream_responses_total", labels)
    return value or 0.0


@pytest.mark.parametrize(
    ("drm", "status", "message", "code", "error", "player_status"),
    [
        ("widevine", 400, REVOKED, "revoked_device", UpstreamRejected, 400),
        ("widevine", 403, LEVEL, "security_level", UpstreamRejected, 403),
        ("widevine", 400, SIGNATURE, "bad_signature", UpstreamAuthFailed, 502),
        ("playready", 500, LEVEL, "security_level", UpstreamRejected, 403),
        ("playready", 500, "Internal error.", "internal_error", UpstreamUnavailable, 502),
        ("widevine", 403, "License denied. A new kind.", "license_denied", UpstreamRejected, 403),
    ],
)
async def test_axinom_errors_reach_the_player_mapped_with_a_bounded_code(
    fake: tuple[FakeAxinom, str],
    provider: AxinomProvider,
    log_buffer: io.StringIO,
    drm: str,
    status: int,
    message: str,
    code: str,
    error: type,
    player_status: int,
) -> None:
    server, _ = fake
    server.answer = lambda _drm, _body: FakeAxinom._error(status, message)
    before = _responses(code, f"{status // 100}xx")
    endpoint = provider.endpoint(drm)
    assert endpoint is not None
    with pytest.raises(GatewayError) as info:
        await provider.license(license_call(drm, b"challenge"), endpoint)
    assert type(info.value) is error and info.value.status == player_status
    assert info.value.provider_error == code
    assert _responses(code, f"{status // 100}xx") == before + 1
    token = server.seen[0]["claims"]
    logs = log_buffer.getvalue()
    assert code in [json.loads(line).get("provider_error") for line in logs.splitlines()]
    for secret in (message, COM_KEY_B64, json.dumps(token)):
        assert secret not in logs and secret not in info.value.message


async def test_an_asset_without_key_ids_sends_nothing(
    fake: tuple[FakeAxinom, str], provider: AxinomProvider
) -> None:
    server, _ = fake
    endpoint = provider.endpoint("widevine")
    assert endpoint is not None
    with pytest.raises(InternalError):
        await provider.license(license_call("widevine", b"x", CatalogEntry("a", None)), endpoint)
    assert server.seen == []


def test_the_client_needs_its_section() -> None:
    reader = ConfigReader(Path("."), {})
    settings = parse_providers(reader, {"ax": _provider_section()}, auth=False)["ax"]
    with pytest.raises(TypeError, match="axinom section"):
        AxinomProvider(settings)


def test_the_deploy_example_is_a_valid_provider_section() -> None:
    root = Path(__file__).resolve().parents[2]
    raw = yaml.safe_load((root / "deploy/examples/providers/axinom.yaml").read_text())
    reader = ConfigReader(root, ENV)
    providers = parse_providers(reader, raw["providers"])
    assert reader.problems == []
    (settings,) = providers.values()
    assert settings.kind == "axinom" and set(settings.license_urls) == {
        "widevine",
        "playready",
        "fairplay",
    }
    assert isinstance(settings.options, AxinomOptions) and settings.options.com_key == COM_KEY


# --- reading a message back (`drm-gateway token verify`) ----------------------------------------


def test_verify_message_returns_the_claims_of_a_signed_message() -> None:
    token = EntitlementSigner(options()).sign(KEY_IDS)
    claims = axinom.verify_message(token, COM_KEY)
    assert claims == decode_message(token)
    assert axinom.entitled_key_ids(claims) == KEY_IDS


def test_verify_message_refuses_another_key_a_changed_payload_and_garble() -> None:
    token = EntitlementSigner(options()).sign(KEY_IDS)
    with pytest.raises(ValueError, match="signature"):
        axinom.verify_message(token, bytes(32))
    header, payload, signature = token.split(".")
    claims = decode_message(token)
    claims["com_key_id"] = "00000000-0000-0000-0000-000000000000"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(ValueError, match="signature"):
        axinom.verify_message(f"{header}.{forged}.{signature}", COM_KEY)
    for garbled in ("", "a.b", "not.a.jwt", f"{payload}.{payload}.{signature}"):
        with pytest.raises(ValueError):
            axinom.verify_message(garbled, COM_KEY)


def test_a_message_signed_with_another_alg_is_refused() -> None:
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    _, payload, signature = EntitlementSigner(options()).sign(KEY_IDS).split(".")
    with pytest.raises(ValueError, match="HS256"):
        axinom.verify_message(f"{none_header}.{payload}.{signature}", COM_KEY)


def test_entitled_key_ids_reads_axinoms_published_example() -> None:
    claims = json.loads(unb64url(AXINOM_PAYLOAD_SEGMENT))
    assert axinom.entitled_key_ids(claims) == AXINOM_KEY_IDS


@pytest.mark.parametrize("inline", [None, [], [{"id": "nope"}], ["0" * 32]])
def test_entitled_key_ids_refuses_a_message_without_guid_key_ids(inline: Any) -> None:
    with pytest.raises(ValueError):
        axinom.entitled_key_ids({"message": {"content_keys_source": {"inline": inline}}})
