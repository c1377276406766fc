"""The widevine-cloud emulator: Google's signed license proxy API, requests built by hand here
(stdlib and cryptography only), against an emulator started in-process on loopback."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.cli import settings_from_args
from proxy.dev.emulator.kinds import widevine_cloud
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import parse, stats, synthetic

PROVIDER = "widevine_test"
KEY = bytes.fromhex("1ae8ccd0e7985cc0b6203a55855a1034afc252980e970ca90e5202689f947ab9")
IV = bytes.fromhex("d58ce954203b7c9a9a9d467f59839249")
OTHER_KEY = bytes(range(32))
CHALLENGE = b"\x08\x01\x12\x10widevine-license-request" + bytes(range(200))
RESOURCES = {"res-1": "res-1", "asset-7": "res-7"}
KIND = "widevine-cloud"


def sign(message: bytes, key: bytes = KEY, iv: bytes = IV, padding: str = "zero") -> str:
    """base64(AES-256-CBC(SHA-1(message))), the 20-byte digest padded to 32 as asked."""
    digest = hashlib.sha1(message).digest()
    pad = bytes(12) if padding == "zero" else bytes([12]) * 12
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(digest + pad) + encryptor.finalize()).decode()


def inner(
    challenge: bytes = CHALLENGE,
    content_id: str | None = "res-1",
    raw: dict[str, Any] | None = None,
    **extra: Any,
) -> bytes:
    """The inner request as Google's reference proxy writes it (json.dumps defaults).

    ``extra`` adds or replaces fields (None removes one); ``raw`` sets fields as given."""
    message: dict[str, Any] = {"payload": base64.b64encode(challenge).decode()}
    if content_id is not None:
        message["content_id"] = base64.b64encode(content_id.encode()).decode()
    message["provider"] = PROVIDER
    message.update(extra)
    message = {k: v for k, v in message.items() if v is not None}
    message.update(raw or {})
    return json.dumps(message).encode()


def envelope(message: bytes, signature: str | None = None, signer: str = PROVIDER) -> bytes:
    """The outer request: the message in base64, its signature and the signer."""
    return json.dumps(
        {
            "request": base64.b64encode(message).decode(),
            "signature": signature if signature is not None else sign(message),
            "signer": signer,
        }
    ).encode()


Start = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start widevine-cloud emulators; ``secrets`` override the demo's."""

    async def _start(**secrets: str) -> RunningEmulator:
        merged = {**widevine_cloud.DEMO_SECRETS, **secrets}
        settings = EmulatorSettings(kind=KIND, resources=RESOURCES, secrets=merged)
        return await launch(settings)

    return _start


@pytest.fixture
async def emulator(start: Start) -> RunningEmulator:
    return await start()


async def getlicense(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: bytes, provider: str = PROVIDER
) -> dict[str, Any]:
    """POST to the service; every answer is a 200 with a JSON body."""
    url = f"{emulator.url}/cenc/getlicense/{provider}"
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_a_signed_request_gets_an_ok_license_for_its_challenge(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    answer = await getlicense(http, emulator, envelope(inner()))
    assert answer["status"] == "OK"
    assert base64.b64decode(answer["license"]) == synthetic(KIND, "widevine", CHALLENGE)
    metadata = answer["license_metadata"]
    assert base64.b64decode(metadata["content_id"]) == b"res-1"
    (record,) = (await stats(http, emulator))["recent"]
    assert record["route"] == "license" and record["drm"] == "widevine"
    assert record["resource"] == "res-1"
    assert record["verified"] == {"signer": PROVIDER, "content_id": "res-1"}
    assert record["challenge_sha256"] == hashlib.sha256(CHALLENGE).hexdigest()


async def test_extra_documented_fields_and_a_compact_encoding_are_accepted(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    fields = {
        "payload": base64.b64encode(CHALLENGE).decode(),
        "content_id": base64.b64encode(b"asset-7").decode(),
        "provider": PROVIDER,
        "allowed_track_types": "SD_HD",
        "policy_overrides": {"can_play": True, "license_duration_seconds": 600},
    }
    message = json.dumps(fields, separators=(",", ":")).encode()
    answer = await getlicense(http, emulator, envelope(message))
    assert answer["status"] == "OK"
    (record,) = (await stats(http, emulator))["recent"]
    assert record["verified"]["content_id"] == "asset-7"


async def test_the_signature_covers_the_exact_bytes_of_the_inner_request(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    message = inner()
    tampered = message.replace(b'"provider": ', b'"provider":  ')  # same JSON, other bytes
    answer = await getlicense(http, emulator, envelope(tampered, signature=sign(message)))
    assert answer == {"status": "SIGNATURE_FAILED"}
    (record,) = (await stats(http, emulator))["recent"]
    assert record["verified"] == {} and record["challenge_sha256"] is None


@pytest.mark.parametrize(
    ("signature", "signer"),
    [
        (sign(inner(), key=OTHER_KEY), PROVIDER),
        (sign(inner(), iv=bytes(16)), PROVIDER),
        (sign(inner(), padding="pkcs7"), PROVIDER),  # Google's proxy pads with zeros
        (sign(inner()), "another_provider"),
        (base64.b64encode(b"\x00" * 16).decode(), PROVIDER),
    ],
    ids=["wrong-key", "wrong-iv", "pkcs7-padding", "unknown-signer", "short-signature"],
)
async def test_a_signature_that_does_not_verify_is_signature_failed(
    http: aiohttp.ClientSession, emulator: RunningEmulator, signature: str, signer: str
) -> None:
    answer = await getlicense(http, emulator, envelope(inner(), signature, signer))
    assert answer == {"status": "SIGNATURE_FAILED"}


@pytest.mark.parametrize(
    ("setting", "zero", "pkcs7"),
    [
        ("zero", "OK", "SIGNATURE_FAILED"),
        ("pkcs7", "SIGNATURE_FAILED", "OK"),
        ("either", "OK", "OK"),
    ],
)
async def test_the_padding_setting_decides_which_signatures_verify(
    http: aiohttp.ClientSession, start: Start, setting: str, zero: str, pkcs7: str
) -> None:
    emulator = await start(signature_padding=setting)
    message = inner()
    for padding, expected in (("zero", zero), ("pkcs7", pkcs7)):
        answer = await getlicense(http, emulator, envelope(message, sign(message, padding=padding)))
        assert answer["status"] == expected


async def test_a_signing_key_given_as_a_secret_replaces_the_demo_one(
    http: aiohttp.ClientSession, start: Start
) -> None:
    emulator = await start(provider="acme", signing_key=OTHER_KEY.hex())
    message = inner(provider="acme")
    good = envelope(message, sign(message, key=OTHER_KEY), signer="acme")
    assert (await getlicense(http, emulator, good, provider="acme"))["status"] == "OK"
    demo = envelope(message, sign(message), signer="acme")
    assert (await getlicense(http, emulator, demo, provider="acme"))["status"] == "SIGNATURE_FAILED"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        json.dumps({"signature": sign(inner()), "signer": PROVIDER}).encode(),
        json.dumps({"request": "%%%", "signature": sign(inner()), "signer": PROVIDER}).encode(),
        json.dumps({"request": base64.b64encode(inner()).decode(), "signer": PROVIDER}).encode(),
        envelope(inner(), signature="not base64!"),
        json.dumps(
            {"request": base64.b64encode(inner()).decode(), "signature": sign(inner())}
        ).encode(),
        envelope(b"not json either"),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "no-request",
        "request-not-base64",
        "no-signature",
        "signature-not-base64",
        "no-signer",
        "inner-not-json",
    ],
)
async def test_a_malformed_request_is_malformed_request(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: bytes
) -> None:
    assert await getlicense(http, emulator, body) == {"status": "MALFORMED_REQUEST"}


@pytest.mark.parametrize(
    ("message", "url_provider", "status"),
    [
        (inner(provider=None), PROVIDER, "PROVIDER_MISSING"),
        (inner(provider="someone_else"), PROVIDER, "ACCESS_DENIED"),
        (inner(), "someone_else", "ACCESS_DENIED"),
        (inner(challenge=b""), PROVIDER, "INVALID_LICENSE_CHALLENGE"),
        (inner(payload="%%%"), PROVIDER, "INVALID_LICENSE_CHALLENGE"),
        (inner(payload=None), PROVIDER, "INVALID_LICENSE_CHALLENGE"),
        (inner(content_id=None), PROVIDER, "INVALID_CONTENT_INFO"),
        (inner(content_id="res-unknown"), PROVIDER, "INVALID_CONTENT_INFO"),
        (inner(content_id=""), PROVIDER, "INVALID_CONTENT_INFO"),
        (inner(raw={"content_id": "%%%"}), PROVIDER, "INVALID_CONTENT_INFO"),
        (inner(raw={"content_id": 7}), PROVIDER, "INVALID_CONTENT_INFO"),
    ],
    ids=[
        "no-provider",
        "other-provider",
        "other-url-provider",
        "empty-payload",
        "payload-not-base64",
        "no-payload",
        "no-content-id",
        "unknown-content",
        "empty-content-id",
        "content-id-not-base64",
        "content-id-not-text",
    ],
)
async def test_each_refusal_after_the_signature_has_its_documented_status(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    message: bytes,
    url_provider: str,
    status: str,
) -> None:
    answer = await getlicense(http, emulator, envelope(message), provider=url_provider)
    assert answer == {"status": status}
    assert status in widevine_cloud.ERROR_STATUSES


async def test_the_service_certificate_request_needs_a_provider_but_no_content_id(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    # Google's reference proxy sends the 2-byte certificate request with a payload only.
    message = json.dumps({"payload": base64.b64encode(b"\x08\x04").decode()}).encode()
    answer = await getlicense(http, emulator, envelope(message))
    assert answer["status"] == "PROVIDER_MISSING"  # this service wants the provider named
    with_provider = inner(challenge=b"\x08\x04", content_id=None)
    answer = await getlicense(http, emulator, envelope(with_provider))
    assert answer["status"] == "OK"
    assert base64.b64decode(answer["license"]) == synthetic(KIND, "widevine", b"\x08\x04")


async def test_nothing_secret_reaches_the_stats(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    await getlicense(http, emulator, envelope(inner()))
    await getlicense(http, emulator, envelope(inner(), sign(inner(), key=OTHER_KEY)))
    text = json.dumps(await stats(http, emulator))
    for secret in (KEY.hex(), IV.hex(), KEY.hex().upper(), base64.b64encode(KEY).decode()):
        assert secret not in text
    assert sign(inner()) not in text


async def test_the_route_takes_fault_modes(
    http: aiohttp.ClientSession, emulator: RunningEmulator
) -> None:
    async with http.post(f"{emulator.url}/_emulator/faults", json={"status": 503}) as resp:
        assert resp.status == 200
    url = f"{emulator.url}/cenc/getlicense/{PROVIDER}"
    async with http.post(url, data=envelope(inner())) as resp:
        assert resp.status == 503


@pytest.mark.parametrize(
    ("secrets", "expected"),
    [
        ({"signing_key": "00" * 16}, "signing_key must be 32 bytes in hex"),
        ({"signing_iv": "zz" * 16}, "signing_iv must be 16 bytes in hex"),
        ({"signature_padding": "ones"}, "signature_padding must be one of zero, pkcs7, either"),
        ({"provider": ""}, "provider must not be empty"),
    ],
)
async def test_bad_settings_are_refused_at_start(secrets: dict[str, str], expected: str) -> None:
    settings = EmulatorSettings(kind=KIND, secrets={**widevine_cloud.DEMO_SECRETS, **secrets})
    with pytest.raises(ValueError, match=expected):
        await start_emulator(settings)


def test_the_command_line_knows_the_kind_and_its_settings() -> None:
    args = parse("emulate", KIND, "--secret", "signature_padding=either")
    settings = settings_from_args(args)
    assert settings.kind == KIND
    assert settings.secrets == {**widevine_cloud.DEMO_SECRETS, "signature_padding": "either"}
    with pytest.raises(ValueError, match="NAME one of"):
        settings_from_args(parse("emulate", KIND, "--secret", "signing_salt=1"))
    shown = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "emulate", KIND, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0 and "--secret" in shown.stdout
