"""The Axinom emulator on loopback: License Service Messages built by hand (pyjwt, the
base64-decoded communication key) as Axinom's documentation describes them."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.dev.emulator import EmulatorSettings, RunningEmulator
from proxy.dev.emulator.cli import register, settings_from_args
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import emulate_help

COM_KEY_ID = "a9c1f3e2-5b7d-4e8f-9a0b-1c2d3e4f5a6b"  # the demo values of the brief
COM_KEY_B64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
COM_KEY = bytes(range(32))  # what COM_KEY_B64 decodes to
KID = "3f2a1b4c-5d6e-4f70-8192-a3b4c5d6e7f8"
KID2 = "00112233-4455-6677-8899-aabbccddeeff"
CHALLENGES = {
    "widevine": b"\x08\x01\x12\x10" + bytes(range(64)),
    "playready": b'<?xml version="1.0"?><soap:Envelope>challenge</soap:Envelope>',
    "fairplay": b"\x00\x00\x00\x01" + bytes(range(256)) * 3,
}
TYPES = {
    "widevine": "application/octet-stream",
    "playready": "text/xml",
    "fairplay": "application/octet-stream",
}
ROOT = Path(__file__).resolve().parents[3]
# The Key Service (SPEKE v2) demo tenant.
TENANT_ID = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
MANAGEMENT_KEY = "0c9b8a79-6857-4463-b2a1-90f8e7d6c5b4"
KEY_SEED_B64 = "ZW11bGF0ZWQtYXhpbm9tLWtleS1zZWVkLWRvLW5vdC11c2U="
CPIX = "urn:dashif:org:cpix"
PSKC = "urn:ietf:params:xml:ns:keyprov:pskc"
NS = {"cpix": CPIX, "pskc": PSKC}

Start = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start Axinom emulators from EmulatorSettings keywords; stopped after the test."""

    async def _start(**kwargs: Any) -> RunningEmulator:
        kwargs.setdefault("secrets", {"com_key_id": COM_KEY_ID, "com_key": COM_KEY_B64})
        return await launch(EmulatorSettings(kind="axinom", **kwargs))

    return _start


def iso(delta_seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_seconds)).isoformat()


def entitlement(*kids: str, **extra: Any) -> dict[str, Any]:
    """A minimal Entitlement Message v2 granting `kids` (the documented minimal form)."""
    message: dict[str, Any] = {
        "type": "entitlement_message",
        "version": 2,
        "content_keys_source": {"inline": [{"id": kid} for kid in kids or (KID,)]},
    }
    message.update(extra)
    return message


def token(
    message: dict[str, Any] | None = None,
    *,
    key: bytes = COM_KEY,
    algorithm: str = "HS256",
    **envelope: Any,
) -> str:
    """A signed License Service Message; an envelope override of None drops that field."""
    claims: dict[str, Any] = {
        "version": 1,
        "com_key_id": COM_KEY_ID,
        "message": message if message is not None else entitlement(),
        "expiration_date": iso(3600),
    }
    claims.update(envelope)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, key, algorithm=algorithm)


def unsigned(claims: dict[str, Any]) -> str:
    """A JWT with alg "none" and no signature."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def synthetic(drm: str, challenge: bytes, provider: str = "axinom") -> bytes:
    """The synthetic license the emulator contract defines, rebuilt from its definition."""
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\n{provider}\n{drm}\n{digest}".encode()


async def acquire(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    drm: str,
    message: str | None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """POST a license request; (status, headers, body)."""
    headers = {"X-AxDRM-Message": message} if message is not None else {}
    data = CHALLENGES[drm] if body is None else body
    async with http.post(f"{emulator.url}/{drm}/AcquireLicense", data=data, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


async def stats(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        data: dict[str, Any] = await response.json()
    return data


async def refused(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    message: str | None,
    drm: str = "widevine",
) -> tuple[int, str]:
    status, headers, body = await acquire(http, emulator, drm, message)
    assert body == b"" and "X-AxDRM-Message" not in headers
    return status, headers["X-AxDRM-ErrorMessage"]


# --- successes --------------------------------------------------------------------------------


@pytest.mark.parametrize("drm", ["widevine", "playready", "fairplay"])
async def test_each_drm_answers_a_license_for_a_valid_message(
    start: Start, http: aiohttp.ClientSession, drm: str
) -> None:
    emulator = await start()
    status, headers, body = await acquire(http, emulator, drm, token(entitlement(KID, KID2)))
    assert status == 200 and body == synthetic(drm, CHALLENGES[drm])
    assert headers["Content-Type"].startswith(TYPES[drm])
    assert "X-AxDRM-Message" not in headers and "X-AxDRM-ErrorMessage" not in headers
    seen = (await stats(http, emulator))["recent"][-1]
    hexes = [uuid.UUID(KID).hex, uuid.UUID(KID2).hex]
    assert (seen["route"], seen["drm"], seen["resource"]) == ("license", drm, ",".join(hexes))
    assert seen["challenge_sha256"] == hashlib.sha256(CHALLENGES[drm]).hexdigest()
    assert seen["verified"] == {"com_key_id": COM_KEY_ID, "key_ids": hexes, "message_id": None}


async def test_the_widevine_certificate_request_is_a_challenge_like_any_other(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, _, body = await acquire(http, emulator, "widevine", token(), body=b"\x08\x04")
    assert (status, body) == (200, synthetic("widevine", b"\x08\x04"))


@pytest.mark.parametrize("drm", ["widevine", "fairplay"])
async def test_license_request_info_comes_back_in_a_signed_message_header(
    start: Start, http: aiohttp.ClientSession, drm: str
) -> None:
    emulator = await start()
    message = entitlement(license_server={"return_license_request_info": True})
    status, headers, _ = await acquire(http, emulator, drm, token(message))
    assert status == 200
    claims = jwt.decode(headers["X-AxDRM-Message"], COM_KEY, algorithms=["HS256"])
    assert (claims["version"], claims["com_key_id"]) == (1, COM_KEY_ID)
    assert claims["message"]["type"] == f"{drm}_license_request_info"
    assert uuid.UUID(claims["message"]["device_info"]["device_id"])


async def test_the_key_store_knows_key_ids_in_hex_or_guid_form(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(resources={uuid.UUID(KID).hex: "a", KID2: "b"})
    status, _, _ = await acquire(http, emulator, "widevine", token(entitlement(KID, KID2)))
    assert status == 200
    other = "99999999-0000-4000-8000-000000000000"
    status, error = await refused(http, emulator, token(entitlement(KID, other)))
    assert status == 403 and other in error and "key store" in error


async def test_begin_date_and_optional_fields_are_honoured(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    valid = token(
        entitlement(license={"allow_persistence": True}),
        id=str(uuid.uuid4()),
        begin_date=iso(-60),
        expiration_date=None,  # no expiration: valid until revoked
    )
    status, _, _ = await acquire(http, emulator, "playready", valid)
    assert status == 200


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "status", "says"),
    [
        (None, 400, "missing"),
        ("not-a-jwt", 400, "not a valid JWT"),
        # The classic mistake: signing with the base64 text instead of the decoded key.
        (token(key=COM_KEY_B64.encode()), 400, "signature"),
        (token(key=bytes(32)), 400, "signature"),
        (token(key=COM_KEY * 2, algorithm="HS512"), 400, "HS256"),
        (
            unsigned({"version": 1, "com_key_id": COM_KEY_ID, "message": entitlement()}),
            400,
            "HS256",
        ),
        (token(com_key_id=str(uuid.uuid4())), 400, "communication key"),
        (token(com_key_id=None), 400, "communication key"),
        (token(version=2), 400, "version must be 1"),
        (token(entitlement(version=1)), 400, "version 2"),
        (token(entitlement(type="license_request")), 400, "entitlement_message"),
        (token({"type": "entitlement_message", "version": 2}), 400, "inline"),
        (token(entitlement("not-a-guid")), 400, "GUID"),
        (token(entitlement(license="forever")), 400, "license section"),
        (token(expiration_date=iso(-60)), 403, "expired"),
        (token(begin_date=iso(600)), 403, "not valid yet"),
        (token(expiration_date="tomorrow"), 400, "ISO-8601"),
    ],
)
async def test_each_documented_failure_is_a_status_and_an_error_header(
    start: Start, http: aiohttp.ClientSession, message: str | None, status: int, says: str
) -> None:
    emulator = await start()
    got, error = await refused(http, emulator, message)
    assert got == status and says in error, error
    seen = (await stats(http, emulator))["recent"][-1]
    assert (seen["drm"], seen["status"], seen["verified"]) == ("widevine", status, {})


@pytest.mark.parametrize(
    ("drm", "body", "says"),
    [
        ("widevine", b"", "empty"),
        ("fairplay", base64.b64encode(CHALLENGES["fairplay"]), "binary SPC"),
        ("fairplay", b"spc=" + base64.b64encode(CHALLENGES["fairplay"]), "binary SPC"),
    ],
)
async def test_a_malformed_challenge_is_refused(
    start: Start, http: aiohttp.ClientSession, drm: str, body: bytes, says: str
) -> None:
    emulator = await start()
    status, headers, answer = await acquire(http, emulator, drm, token(), body=body)
    assert (status, answer) == (400, b"")
    assert says in headers["X-AxDRM-ErrorMessage"]


async def test_playready_refuses_with_500_and_a_soap_fault(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    for message, says in (
        (token(key=bytes(32)), "signature"),  # a 400 elsewhere
        (token(expiration_date=iso(-60)), "expired"),  # a 403 elsewhere
    ):
        status, headers, body = await acquire(http, emulator, "playready", message)
        assert status == 500 and says in headers["X-AxDRM-ErrorMessage"]
        assert headers["Content-Type"].startswith("text/xml")
        assert body.startswith(b"<?xml") and b"<soap:Fault>" in body
        assert says.encode() in body.split(b"<faultstring>")[1]


async def test_a_single_use_message_is_refused_the_second_time(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(resources={uuid.UUID(KID).hex: "a"})
    reuse = {"access_control": {"prevent_drm_message_reuse": True}}
    message_id = str(uuid.uuid4())
    unknown = token(entitlement(KID2, license_server=reuse), id=message_id)
    assert (await refused(http, emulator, unknown))[0] == 403  # a refusal does not use it up
    once = token(entitlement(KID, license_server=reuse), id=message_id)
    assert (await acquire(http, emulator, "widevine", once))[0] == 200
    status, error = await refused(http, emulator, once)
    assert status == 403 and "already used" in error
    seen = (await stats(http, emulator))["recent"]
    assert seen[-2]["verified"]["message_id"] == message_id
    # Without an id the service cannot enforce it: the message is refused as invalid.
    status, error = await refused(http, emulator, token(entitlement(license_server=reuse)))
    assert status == 400 and "id" in error
    # Reuse stays allowed when not asked for.
    plain = token(id=str(uuid.uuid4()))
    for _ in range(2):
        assert (await acquire(http, emulator, "widevine", plain))[0] == 200


async def test_other_secrets_and_other_drms(start: Start, http: aiohttp.ClientSession) -> None:
    other_key = bytes(range(100, 132))
    other_id = str(uuid.uuid4())
    emulator = await start(
        secrets={"com_key_id": other_id, "com_key": base64.b64encode(other_key).decode()}
    )
    assert (await refused(http, emulator, token()))[0] == 400  # the demo key is not this one
    status, _, _ = await acquire(
        http, emulator, "widevine", token(key=other_key, com_key_id=other_id)
    )
    assert status == 200
    async with http.post(f"{emulator.url}/clearkey/AcquireLicense", data=b"{}") as response:
        assert response.status == 404  # Axinom serves no ClearKey
    with pytest.raises(ValueError, match="base64"):
        await start(secrets={"com_key_id": other_id, "com_key": "not base64!"})


async def test_nothing_secret_is_recorded_or_echoed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    message = entitlement(license_server={"return_license_request_info": True})
    await acquire(http, emulator, "fairplay", token(message))
    await refused(http, emulator, token(key=bytes(32)))
    recorded = json.dumps(await stats(http, emulator))
    for secret in (COM_KEY_B64, COM_KEY.hex(), base64.b64encode(bytes(32)).decode()):
        assert secret not in recorded
    assert "X-AxDRM-Message" in recorded  # header names are recorded, their values are not
    assert token(message)[:30] not in recorded


def test_cli_help_and_secret_overrides() -> None:
    assert "--secret" in emulate_help("axinom")
    parser = argparse.ArgumentParser(prog="drm-gateway")
    register(parser.add_subparsers(dest="command"))
    defaults = settings_from_args(parser.parse_args(["emulate", "axinom"]))
    assert dict(defaults.secrets) == {
        "com_key_id": COM_KEY_ID,
        "com_key": COM_KEY_B64,
        "tenant_id": TENANT_ID,
        "management_key": MANAGEMENT_KEY,
        "key_seed": KEY_SEED_B64,
    }
    other = str(uuid.uuid4())
    args = parser.parse_args(["emulate", "axinom", "--secret", f"com_key_id={other}"])
    assert dict(settings_from_args(args).secrets)["com_key_id"] == other


# --- the Key Service: SPEKE v2 ----------------------------------------------------------------


def derived_key(kid: str, seed_b64: str = KEY_SEED_B64) -> bytes:
    """The emulator's documented derivation: HMAC-SHA256(seed, label + kid bytes)[:16]."""
    seed = base64.b64decode(seed_b64)
    label = b"axinom-emulator-speke" + uuid.UUID(kid).bytes
    return hmac.new(seed, label, hashlib.sha256).digest()[:16]


def speke_document(content_id: str = "abc123", *kids: str, scheme: str | None = "cbcs") -> bytes:
    """A SPEKE v2 request in the shape of Axinom's sample: ContentKeys and DRMSystems."""
    scheme_attr = f' commonEncryptionScheme="{scheme}"' if scheme is not None else ""
    keys = "".join(f'<cpix:ContentKey kid="{kid}"{scheme_attr}/>' for kid in kids or (KID, KID2))
    systems = "".join(
        f'<cpix:DRMSystem kid="{kid}" systemId="edef8ba9-79d6-4ace-a3c8-27dcd51d21ed">'
        "<cpix:PSSH/><cpix:ContentProtectionData/></cpix:DRMSystem>"
        for kid in kids or (KID, KID2)
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><cpix:CPIX contentId="{content_id}" '
        f'version="2.3" xmlns:cpix="{CPIX}" xmlns:pskc="{PSKC}">'
        f"<cpix:ContentKeyList>{keys}</cpix:ContentKeyList>"
        f"<cpix:DRMSystemList>{systems}</cpix:DRMSystemList></cpix:CPIX>"
    ).encode()


def speke_headers(
    tenant: str = TENANT_ID, key: str = MANAGEMENT_KEY, version: str | None = "2.0"
) -> dict[str, str]:
    pair = base64.b64encode(f"{tenant}:{key}".encode()).decode()
    headers = {"Authorization": f"Basic {pair}", "Content-Type": "application/xml"}
    if version is not None:
        headers["X-Speke-Version"] = version
    return headers


async def speke(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    body: bytes,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(
        f"{emulator.url}/api/SpekeV2",
        data=body,
        headers=speke_headers() if headers is None else headers,
    ) as response:
        return response.status, dict(response.headers), await response.read()


def answered(document: bytes) -> dict[str, bytes]:
    """kid (GUID) -> key of every ContentKey of a CPIX answer."""
    root = ET.fromstring(document)
    keys = {}
    for element in root.iterfind("cpix:ContentKeyList/cpix:ContentKey", NS):
        value = element.find("cpix:Data/pskc:Secret/pskc:PlainValue", NS)
        assert value is not None and value.text
        keys[element.get("kid", "")] = base64.b64decode(value.text)
    return keys


async def test_speke_v2_answers_keys_derived_from_the_key_seed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, headers, body = await speke(http, emulator, speke_document())
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/xml")
    assert headers["X-Speke-Version"] == "2.0"
    assert answered(body) == {KID: derived_key(KID), KID2: derived_key(KID2)}
    root = ET.fromstring(body)
    assert root.get("contentId") == "abc123" and root.get("version") == "2.3"
    assert len(root.findall("cpix:DRMSystemList/cpix:DRMSystem", NS)) == 2  # kept as sent
    # The same key for the same kid: again, under another contentId, after a restart.
    _, _, again = await speke(http, emulator, speke_document("other-title"))
    await emulator.stop()
    restarted = await start()
    _, _, after = await speke(http, restarted, speke_document("abc123", KID))
    assert answered(again) == answered(body) and answered(after) == {KID: derived_key(KID)}
    recorded = (await stats(http, restarted))["recent"][-1]
    assert recorded["route"] == "keys" and recorded["status"] == 200
    assert recorded["verified"] == {
        "tenant_id": TENANT_ID,
        "content_id": "abc123",
        "key_ids": [uuid.UUID(KID).hex],
    }


async def test_speke_keys_follow_the_configured_tenant_and_seed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    seed = base64.b64encode(b"another tenant's key seed").decode()
    emulator = await start(secrets={"tenant_id": "t-2", "management_key": "mk-2", "key_seed": seed})
    status, _, body = await speke(http, emulator, speke_document(), speke_headers("t-2", "mk-2"))
    assert status == 200, body
    assert answered(body) == {KID: derived_key(KID, seed), KID2: derived_key(KID2, seed)}
    assert derived_key(KID, seed) != derived_key(KID)
    status, _, _ = await speke(http, emulator, speke_document())  # the demo tenant: not this one
    assert status == 401
    with pytest.raises(ValueError, match="key_seed"):
        await start(secrets={"key_seed": "not base64!"})


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/xml", "X-Speke-Version": "2.0"},
        speke_headers(key="wrong-management-key"),
        speke_headers(tenant="00000000-0000-0000-0000-000000000000"),
        {**speke_headers(), "Authorization": f"Bearer {MANAGEMENT_KEY}"},
        {**speke_headers(), "Authorization": "Basic not-base64!"},
    ],
    ids=["missing", "wrong-key", "wrong-tenant", "bearer", "garbled"],
)
async def test_speke_needs_basic_auth_with_tenant_and_management_key(
    start: Start, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    emulator = await start()
    status, answer, body = await speke(http, emulator, speke_document(), headers)
    assert status == 401 and answer["WWW-Authenticate"].startswith("Basic")
    assert b"PlainValue" not in body


@pytest.mark.parametrize(
    ("body", "version", "message"),
    [
        (speke_document(), None, b"X-Speke-Version"),
        (speke_document(), "1.0", b"X-Speke-Version"),
        (speke_document().replace(b' contentId="abc123"', b""), "2.0", b"Missing CPIX@contentId"),
        (speke_document().replace(b'version="2.3"', b'version="2.2"'), "2.0", b"CPIX@version"),
        (speke_document(scheme=None), "2.0", b"commonEncryptionScheme for KID"),
        (speke_document(KID, "not-a-guid"), "2.0", b"GUID"),
        (b"<cpix:CPIX", "2.0", b"well-formed"),
        (
            b'<?xml version="1.0"?><!DOCTYPE c [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&b;" version="2.3"/>',
            "2.0",
            b"well-formed",
        ),
        (b"<other/>", "2.0", b"not a CPIX document"),
    ],
    ids=["no-version", "speke-1", "content-id", "cpix-version", "scheme", "kid", "xml", "dtd",
         "root"],
)  # fmt: skip
async def test_speke_refuses_what_it_does_not_understand(
    start: Start, http: aiohttp.ClientSession, body: bytes, version: str | None, message: bytes
) -> None:
    emulator = await start()
    status, _, answer = await speke(http, emulator, body, speke_headers(version=version))
    assert status == 400 and message in answer, answer


async def test_speke_records_nothing_secret(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start()
    status, _, body = await speke(http, emulator, speke_document())
    assert status == 200
    await speke(http, emulator, speke_document(), speke_headers(key="wrong-management-key"))
    recorded = json.dumps(await stats(http, emulator))
    pair = base64.b64encode(f"{TENANT_ID}:{MANAGEMENT_KEY}".encode()).decode()
    for secret in (MANAGEMENT_KEY, pair, KEY_SEED_B64, *map(_b64, answered(body).values())):
        assert secret not in recorded


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()
