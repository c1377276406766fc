"""The DoveRunner emulator on loopback: license tokens built by hand as DoveRunner documents
them (stdlib + `cryptography`), nothing taken from the emulator or the gateway."""

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
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proxy.dev.emulator import EmulatorSettings, RunningEmulator
from proxy.dev.emulator.cli import register, settings_from_args
from proxy.dev.emulator.kinds.doverunner import add_routes
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import emulate_help

# The demo site of the brief.
SITE_ID = "DEMO"
SITE_KEY = "demo0123456789abcdefghijklmnopqr"
ACCESS_KEY = "demoAccessKey0123456789abcdefghi"
# The CPIX API's KMS token and key seed (the emulator's demo values, restated here).
KMS_TOKEN = "demo-kms-token-0123456789abcdefghijklmn"
CPIX_SEED_B64 = "ZW11bGF0ZWQtZG92ZXJ1bm5lci1jcGl4LXNlZWQtZG8tbm90LXVzZQ=="
SECRETS = {
    "site_id": SITE_ID,
    "site_key": SITE_KEY,
    "access_key": ACCESS_KEY,
    "kms_token": KMS_TOKEN,
    "cpix_key_seed": CPIX_SEED_B64,
}
PATH = "/ri/licenseManager.do"
IV = b"0123456789abcdef"
CID = "res-42"
POLICY = {"policy_version": 2, "playback_policy": {"persistent": False, "license_duration": 0}}
CHALLENGE = b"\x08\x01\x12\x10" + bytes(range(200))
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 3
ROOT = Path(__file__).resolve().parents[3]

# ClearKey: DoveRunner's own URL for it, and the key derivation the emulators share.
CLEARKEY_PATH = "/ri/clearkey/licenseManager.do"
CLEARKEY_QUERY = f"?siteId={SITE_ID}&cid={CID}"
DEMO_SEED = b"drm-gateway-demo-seed"
KID_A = bytes.fromhex("9eb4050de44b4802932e27d75083e266")
KID_B = bytes(range(16))

# The License Token Tutorial's published inputs and outputs (its rule uses the v1 fields).
TUTO = {"site_id": "TUTO", "site_key": "lU5D8s3PWoLls3PWFWkClULlFWk5D8oC"}
TUTO["access_key"] = "LT2FVJDp2Xr018zf4Di6lzvNOv3DKP20"
TUTO_RULE = {"playback_policy": {"limit": True, "persistent": False, "duration": 3600}}
TUTO_ENCRYPTED_RULE = (
    "bO9DzyQgtgfbSDWmqGgZXWZdWm7M4oZ4X0hC1hS6QNraiwLI0LwmNY+OfOh1L0KmtuH7NF1blUxep9YLWrNfSy4H"
    "/6swQW7pbjZnRqRguDQ="
)
TUTO_TIMESTAMP = "2019-07-17T08:57:04Z"
TUTO_HASH = "0Zef3WHBbzQAR0oGf5KXn25G1TmvB2Bkvzv+7OqIWvQ="

Start = Callable[..., Awaitable[RunningEmulator]]


# --- tokens, by hand ----------------------------------------------------------------------


def encrypt_policy(policy: Any, site_key: str = SITE_KEY, *, raw: bytes | None = None) -> str:
    """base64(AES-256-CBC(policy JSON, key = the site key's bytes, IV, PKCS#7))."""
    text = raw if raw is not None else json.dumps(policy, separators=(",", ":")).encode()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(text) + padder.finalize()
    encryptor = Cipher(algorithms.AES(site_key.encode()), modes.CBC(IV)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def hash_of(fields: dict[str, Any], access_key: str = ACCESS_KEY) -> str:
    names = ("drm_type", "site_id", "user_id", "cid", "policy", "timestamp")
    message = access_key + "".join(fields.get(name) or "" for name in names)
    return base64.b64encode(hashlib.sha256(message.encode()).digest()).decode()


def stamp(offset_seconds: float = 0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def token(
    drm_type: str | None = "Widevine",
    *,
    access_key: str = ACCESS_KEY,
    hash_value: str | None = None,
    **changes: Any,
) -> str:
    """A license token (base64 of its JSON); `changes` replace fields (None removes one)."""
    fields: dict[str, Any] = {
        "drm_type": drm_type,
        "site_id": SITE_ID,
        "user_id": "user-1",
        "cid": CID,
        "policy": encrypt_policy(POLICY),
        "timestamp": stamp(),
        "response_format": "original",
        "key_rotation": False,
    }
    fields.update(changes)
    hashed = {**fields, "drm_type": drm_type or "PlayReady"}
    fields["hash"] = hash_value if hash_value is not None else hash_of(hashed, access_key)
    payload = {name: value for name, value in fields.items() if value is not None}
    return base64.b64encode(json.dumps(payload).encode()).decode()


def synthetic(drm: str, challenge: bytes, provider: str = "doverunner") -> bytes:
    """The synthetic license the emulator contract defines, rebuilt from its definition."""
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\n{provider}\n{drm}\n{digest}".encode()


def spc_form(spc: bytes) -> bytes:
    return b"spc=" + quote(base64.b64encode(spc).decode(), safe="").encode()


def b64url(data: bytes) -> str:
    """Base64url without padding, as W3C ClearKey messages write key ids and keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def clearkey_request(*kids: bytes, session_type: str = "temporary") -> bytes:
    """A W3C ClearKey license request, as a browser's ClearKey CDM writes it."""
    return json.dumps({"kids": [b64url(kid) for kid in kids], "type": session_type}).encode()


def expected_key(seed: bytes, derivation_id: str, kid: bytes) -> bytes:
    """The demo content key: HMAC-SHA256(seed, "<derivation id>:<kid hex>"), first 16 bytes."""
    message = f"{derivation_id}:{kid.hex()}".encode()
    return hmac.new(seed, message, hashlib.sha256).digest()[:16]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start DoveRunner emulators from EmulatorSettings keywords; stopped after the test."""

    async def _start(**kwargs: Any) -> RunningEmulator:
        kwargs.setdefault("secrets", SECRETS)
        return await launch(EmulatorSettings(kind="doverunner", **kwargs))

    return _start


async def post(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    body: bytes,
    headers: dict[str, str] | None = None,
    query: str = "",
) -> tuple[int, str, bytes]:
    url = f"{emulator.url}{PATH}{query}"
    async with http.post(url, data=body, headers=headers or {}) as response:
        return response.status, response.content_type, await response.read()


async def refused(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    token_text: str | None,
    body: bytes = CHALLENGE,
) -> str:
    """The errorCode of a refused request, after checking it came the DoveRunner way."""
    headers = {"pallycon-customdata-v2": token_text} if token_text is not None else {}
    status, content_type, answer = await post(http, emulator, body, headers)
    assert (status, content_type) == (200, "application/json")
    error = json.loads(answer)
    assert set(error) == {"errorCode", "message"} and error["message"]
    code: str = error["errorCode"]
    return code


async def post_clearkey(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: bytes, query: str
) -> tuple[int, str, bytes]:
    url = f"{emulator.url}{CLEARKEY_PATH}{query}"
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
        return answer.status, answer.content_type, await answer.read()


async def clearkey_refused(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: bytes, query: str
) -> str:
    """The errorCode of a refused ClearKey request, after checking it came the DoveRunner way."""
    status, content_type, answer = await post_clearkey(http, emulator, body, query)
    assert (status, content_type) == (200, "application/json")
    error = json.loads(answer)
    assert set(error) == {"errorCode", "message"} and error["message"]
    code: str = error["errorCode"]
    return code


async def last_request(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        data: dict[str, Any] = await response.json()
    recent: dict[str, Any] = data["recent"][-1]
    return recent


# --- the published samples ----------------------------------------------------------------


def test_the_hand_built_token_reproduces_the_tutorial_outputs() -> None:
    assert encrypt_policy(TUTO_RULE, TUTO["site_key"]) == TUTO_ENCRYPTED_RULE
    fields = {
        "drm_type": "Widevine",
        "site_id": "TUTO",
        "user_id": "test-user",
        "cid": "bigbuckbunny",
        "policy": TUTO_ENCRYPTED_RULE,
        "timestamp": TUTO_TIMESTAMP,
    }
    assert hash_of(fields, TUTO["access_key"]) == TUTO_HASH


@pytest.mark.parametrize(
    ("hash_value", "code"), [(TUTO_HASH, "7011"), ("A" + TUTO_HASH[1:], "7019")]
)
async def test_the_tutorial_token_passes_every_check_but_its_age(
    start: Start, http: aiohttp.ClientSession, hash_value: str, code: str
) -> None:
    """The hash is checked before the timestamp: 7011 means the published hash matched."""
    emulator = await start(secrets=TUTO)
    fields = {
        "drm_type": "Widevine",
        "site_id": "TUTO",
        "user_id": "test-user",
        "cid": "bigbuckbunny",
        "policy": TUTO_ENCRYPTED_RULE,
        "timestamp": TUTO_TIMESTAMP,
        "hash": hash_value,
    }
    text = base64.b64encode(json.dumps(fields).encode()).decode()
    assert await refused(http, emulator, text) == code


# --- licenses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drm_type", "drm"), [("Widevine", "widevine"), ("PlayReady", "playready")]
)
async def test_widevine_and_playready_get_the_raw_license(
    start: Start, http: aiohttp.ClientSession, drm_type: str, drm: str
) -> None:
    emulator = await start()
    headers = {"pallycon-customdata-v2": token(drm_type)}
    status, content_type, body = await post(http, emulator, CHALLENGE, headers)
    assert (status, content_type, body) == (
        200,
        "application/octet-stream",
        synthetic(drm, CHALLENGE),
    )
    seen = await last_request(http, emulator)
    assert (seen["route"], seen["drm"], seen["resource"]) == ("license", drm, CID)
    assert seen["challenge_sha256"] == hashlib.sha256(CHALLENGE).hexdigest()
    assert seen["verified"] == {
        "drm_type": drm_type,
        "site_id": SITE_ID,
        "user_id": "user-1",
        "cid": CID,
        "policy_keys": ["playback_policy", "policy_version"],
        "token_in": "header:pallycon-customdata-v2",
    }
    assert SITE_KEY not in json.dumps(seen) and ACCESS_KEY not in json.dumps(seen)


async def test_fairplay_takes_an_spc_form_and_answers_the_ckc_as_base64(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    headers = {
        "pallycon-customdata-v2": token("FairPlay"),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    status, content_type, body = await post(http, emulator, spc_form(SPC), headers)
    assert (status, content_type) == (200, "text/plain")
    assert base64.b64decode(body, validate=True) == synthetic("fairplay", SPC)
    seen = await last_request(http, emulator)
    assert (seen["drm"], seen["resource"]) == ("fairplay", CID)
    assert seen["challenge_sha256"] == hashlib.sha256(SPC).hexdigest()


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("header", "doverunner-customdata-v2"),
        ("query", "pallycon-customdata-v2"),
        ("query", "doverunner-customdata-v2"),
    ],
)
async def test_the_token_may_come_in_the_newer_header_or_the_url(
    start: Start, http: aiohttp.ClientSession, where: str, name: str
) -> None:
    emulator = await start()
    text = token()
    headers = {name: text} if where == "header" else {}
    query = f"?{name}={quote(text, safe='')}" if where == "query" else ""
    status, _, body = await post(http, emulator, CHALLENGE, headers, query)
    assert (status, body) == (200, synthetic("widevine", CHALLENGE))
    assert (await last_request(http, emulator))["verified"]["token_in"] == f"{where}:{name}"


async def test_an_absent_drm_type_is_playready_and_formats_ignore_case(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    headers = {"pallycon-customdata-v2": token(None, response_format="ORIGINAL")}
    status, _, body = await post(http, emulator, CHALLENGE, headers)
    assert (status, body) == (200, synthetic("playready", CHALLENGE))


async def test_a_token_a_little_short_of_its_lifetime_is_accepted(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    for offset in (-590, 590):
        headers = {"pallycon-customdata-v2": token(timestamp=stamp(offset))}
        status, _, body = await post(http, emulator, CHALLENGE, headers)
        assert (status, body) == (200, synthetic("widevine", CHALLENGE))


# --- refusals, each with its documented code ----------------------------------------------

NOT_JSON_POLICY = encrypt_policy(None, raw=b"not json at all")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: None, "7010"),
        (lambda: "not base64 at all!", "7009"),
        (lambda: base64.b64encode(b"[1, 2]").decode(), "7009"),
        (lambda: token(hash_value=None, cid=None), "7016"),
        (lambda: token(key_rotation="yes"), "7016"),
        (lambda: token(timestamp="2024-01-01 10:00:00"), "7016"),
        (lambda: token(site_id="ABCD"), "1003"),
        (lambda: token("widevine"), "7018"),
        (lambda: token("NCG"), "7018"),
        (lambda: token(access_key="x" * 32), "7019"),
        (lambda: token(hash_value="AAAA"), "7019"),
        (lambda: token(timestamp=stamp(-610)), "7011"),
        (lambda: token(timestamp=stamp(610)), "7011"),
        (lambda: token(policy=encrypt_policy(POLICY, "y" * 32)), "7013"),
        (lambda: token(policy=NOT_JSON_POLICY), "7013"),
        (lambda: token(policy=encrypt_policy([1, 2])), "7013"),
        (lambda: token(policy="bm90IGEgYmxvY2s="), "7013"),
        (lambda: token(response_format="custom"), "9999"),
    ],
)
async def test_each_bad_token_is_refused_with_its_code(
    start: Start, http: aiohttp.ClientSession, make: Callable[[], str | None], code: str
) -> None:
    """Tokens are made when the test runs, so that their timestamps are fresh."""
    emulator = await start()
    assert await refused(http, emulator, make()) == code


async def test_a_tampered_field_breaks_the_hash(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start(resources={CID: CID, "other": "other"})
    fields = json.loads(base64.b64decode(token()))
    fields["cid"] = "other"  # a token for res-42 reused for another title
    text = base64.b64encode(json.dumps(fields).encode()).decode()
    assert await refused(http, emulator, text) == "7019"


async def test_content_outside_the_key_store_is_refused(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(resources={"known-1": "known-1"})
    assert await refused(http, emulator, token()) == "7001"
    seen = await last_request(http, emulator)
    assert seen["verified"]["cid"] == CID and seen["status"] == 200


@pytest.mark.parametrize(
    ("drm_type", "body", "code"),
    [
        ("Widevine", b"", "7107"),
        ("PlayReady", b"", "7205"),
        ("FairPlay", b"", "7305"),
        ("FairPlay", SPC, "7305"),  # a raw SPC is not the documented form
        ("FairPlay", b"assetId=x", "7305"),
        ("FairPlay", b"spc=%%%", "7317"),
        ("FairPlay", b"spc=not-base64!", "7317"),
        ("FairPlay", spc_form(b"plainly not an SPC"), "7317"),
    ],
)
async def test_bad_bodies_are_refused_with_the_drm_systems_code(
    start: Start, http: aiohttp.ClientSession, drm_type: str, body: bytes, code: str
) -> None:
    emulator = await start()
    assert await refused(http, emulator, token(drm_type), body) == code


async def test_secrets_override_the_demo_site(start: Start, http: aiohttp.ClientSession) -> None:
    other = {"site_id": "ZZZZ", "site_key": "k" * 32, "access_key": "a" * 32}
    emulator = await start(secrets=other)
    assert await refused(http, emulator, token()) == "1003"
    mine = token(site_id="ZZZZ", access_key="a" * 32, policy=encrypt_policy(POLICY, "k" * 32))
    status, _, body = await post(http, emulator, CHALLENGE, {"pallycon-customdata-v2": mine})
    assert (status, body) == (200, synthetic("widevine", CHALLENGE))


async def test_a_site_key_that_is_not_32_bytes_is_refused_at_start(start: Start) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        await start(secrets={**SECRETS, "site_key": "short"})


# --- ClearKey -------------------------------------------------------------------------------


async def test_clearkey_answers_the_demo_keys_of_the_key_ids_asked_for(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """No token: the site id and cid in the URL are all the request carries."""
    emulator = await start()
    body = clearkey_request(KID_A, KID_B)
    status, content_type, answer = await post_clearkey(http, emulator, body, CLEARKEY_QUERY)
    assert (status, content_type) == (200, "application/json")
    assert json.loads(answer) == {
        "keys": [
            {"kty": "oct", "kid": b64url(kid), "k": b64url(expected_key(DEMO_SEED, CID, kid))}
            for kid in (KID_A, KID_B)
        ],
        "type": "temporary",
    }
    seen = await last_request(http, emulator)
    assert (seen["route"], seen["drm"], seen["resource"]) == ("license", "clearkey", CID)
    assert seen["challenge_sha256"] == hashlib.sha256(body).hexdigest()
    assert seen["verified"] == {"site_id": SITE_ID, "cid": CID}


async def test_clearkey_keys_follow_the_seed_and_the_key_stores_derivation_id(
    start: Start, http: aiohttp.ClientSession
) -> None:
    seed = b"another-seed-for-this-test"
    emulator = await start(seed=seed, resources={CID: "packaged-as-7"})
    body = clearkey_request(KID_A, session_type="persistent-license")
    status, _, answer = await post_clearkey(http, emulator, body, CLEARKEY_QUERY)
    license_ = json.loads(answer)
    assert status == 200 and license_["type"] == "persistent-license"
    [key] = license_["keys"]
    assert key["k"] == b64url(expected_key(seed, "packaged-as-7", KID_A))
    assert key["k"] != b64url(expected_key(seed, CID, KID_A))


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?siteId=ABCD&cid=res-42", "1003"),
        ("?cid=res-42", "9001"),
        ("?siteid=DEMO&cid=res-42", "9001"),  # the parameter's name is case-sensitive
        ("?siteId=&cid=res-42", "9001"),
        ("?siteId=DEMO", "9001"),
        ("?siteId=DEMO&CID=res-42", "9001"),
        ("?siteId=DEMO&cid=res-42&cid=other", "9001"),
        ("", "9001"),
    ],
)
async def test_clearkey_url_parameters_are_checked(
    start: Start, http: aiohttp.ClientSession, query: str, code: str
) -> None:
    emulator = await start()
    assert await clearkey_refused(http, emulator, clearkey_request(KID_A), query) == code


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"type": "temporary"}',
        b'{"kids": "nrQFDeRLSAKTLifXUIPiZg"}',
        b'{"kids": []}',
        b'{"kids": ["not base64url!"]}',
        b'{"kids": [42]}',
        clearkey_request(KID_A[:8]),
        clearkey_request(KID_A, session_type="forever"),
    ],
)
async def test_clearkey_bodies_that_are_not_license_requests_are_refused(
    start: Start, http: aiohttp.ClientSession, body: bytes
) -> None:
    emulator = await start()
    assert await clearkey_refused(http, emulator, body, CLEARKEY_QUERY) == "9001"


async def test_clearkey_content_outside_the_key_store_is_refused(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(resources={"known-1": "known-1"})
    assert await clearkey_refused(http, emulator, clearkey_request(KID_A), CLEARKEY_QUERY) == "7001"
    seen = await last_request(http, emulator)
    assert (seen["drm"], seen["resource"], seen["verified"]) == ("clearkey", CID, {})
    status, _, answer = await post_clearkey(
        http, emulator, clearkey_request(KID_A), f"?siteId={SITE_ID}&cid=known-1"
    )
    assert status == 200 and json.loads(answer)["keys"][0]["kid"] == b64url(KID_A)


async def test_clearkey_site_id_follows_the_secret_overrides(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(secrets={**SECRETS, "site_id": "ZZZZ"})
    body = clearkey_request(KID_B)
    assert await clearkey_refused(http, emulator, body, CLEARKEY_QUERY) == "1003"
    status, _, answer = await post_clearkey(http, emulator, body, f"?siteId=ZZZZ&cid={CID}")
    expected = b64url(expected_key(DEMO_SEED, CID, KID_B))
    assert status == 200 and json.loads(answer)["keys"][0]["k"] == expected


async def test_clearkey_needs_the_request_body_so_get_is_not_served(
    start: Start, http: aiohttp.ClientSession
) -> None:
    """DoveRunner's proxy samples GET this URL; the emulator needs the key ids (see module)."""
    emulator = await start()
    async with http.get(f"{emulator.url}{CLEARKEY_PATH}{CLEARKEY_QUERY}") as answer:
        assert answer.status == 405


def test_cli_help_and_secret_overrides() -> None:
    assert "--secret" in emulate_help("doverunner")
    parser = argparse.ArgumentParser(prog="drm-gateway")
    register(parser.add_subparsers(dest="command"))
    defaults = settings_from_args(parser.parse_args(["emulate", "doverunner"]))
    assert dict(defaults.secrets) == SECRETS
    args = parser.parse_args(["emulate", "doverunner", "--secret", "site_id=ZZZZ"])
    assert dict(settings_from_args(args).secrets) == {**SECRETS, "site_id": "ZZZZ"}


# --- the CPIX API (KMS URL V2) ---------------------------------------------------------------

CPIX_PATH = "/v2/cpix/doverunner/getKey"
CPIX_NSS = 'xmlns:cpix="urn:dashif:org:cpix" xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc"'
KID_1 = uuid.UUID("9eb4050d-e44b-4802-932e-27d75083e266")
KID_2 = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
WIDEVINE = "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"


def cpix_request(content_id: str | None, *kids: uuid.UUID) -> bytes:
    """A CPIX 2.x request as a packager writes it: root id, ContentKeys, DRMSystems."""
    root_id = f' id="{content_id}"' if content_id is not None else ""
    keys = "".join(f'<cpix:ContentKey kid="{kid}"/>' for kid in kids)
    drms = "".join(f'<cpix:DRMSystem kid="{kid}" systemId="{WIDEVINE}"/>' for kid in kids)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><cpix:CPIX{root_id} {CPIX_NSS}>'
        f"<cpix:ContentKeyList>{keys}</cpix:ContentKeyList>"
        f"<cpix:DRMSystemList>{drms}</cpix:DRMSystemList></cpix:CPIX>"
    ).encode()


def cpix_expected_key(seed_b64: str, content_id: str, kid: uuid.UUID) -> bytes:
    """The emulator's documented rule: HMAC-SHA256(seed, label + len(cid) (4 bytes, big
    endian) + cid + kid bytes), first 16 bytes."""
    cid = content_id.encode()
    message = b"doverunner-emulator-cpix" + len(cid).to_bytes(4, "big") + cid + kid.bytes
    return hmac.new(base64.b64decode(seed_b64), message, hashlib.sha256).digest()[:16]


def answered(document: bytes) -> dict[uuid.UUID, bytes]:
    ns = {"cpix": "urn:dashif:org:cpix", "pskc": "urn:ietf:params:xml:ns:keyprov:pskc"}
    root = ET.fromstring(document)
    return {
        uuid.UUID(element.get("kid", "")): base64.b64decode(
            element.findtext("cpix:Data/pskc:Secret/pskc:PlainValue", "", ns)
        )
        for element in root.iterfind("cpix:ContentKeyList/cpix:ContentKey", ns)
    }


async def post_cpix(
    http: aiohttp.ClientSession, emulator: RunningEmulator, body: bytes, token: str = KMS_TOKEN
) -> tuple[int, str, bytes]:
    url = f"{emulator.url}{CPIX_PATH}/{quote(token, safe='')}"
    headers = {"Content-Type": "application/xml"}
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read()


async def test_cpix_keys_derive_from_the_seed_the_content_id_and_the_kid(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, content_type, answer = await post_cpix(
        http, emulator, cpix_request("movie-1", KID_1, KID_2)
    )
    assert (status, content_type) == (200, "application/xml"), answer
    keys = answered(answer)
    assert keys == {kid: cpix_expected_key(CPIX_SEED_B64, "movie-1", kid) for kid in (KID_1, KID_2)}
    # The same request again: the same keys; another content id: other keys.
    assert answered((await post_cpix(http, emulator, cpix_request("movie-1", KID_1)))[2]) == {
        KID_1: keys[KID_1]
    }
    other = answered((await post_cpix(http, emulator, cpix_request("movie-2", KID_1)))[2])
    assert other[KID_1] != keys[KID_1]
    # The answer is the request's document: its root id and DRMSystemList are kept.
    root = ET.fromstring(answer)
    assert root.get("id") == "movie-1"
    drm_systems = "{urn:dashif:org:cpix}DRMSystemList/{urn:dashif:org:cpix}DRMSystem"
    assert len(root.findall(drm_systems)) == 2
    seen = await last_request(http, emulator)
    assert seen["route"] == "keys" and seen["resource"] == "movie-2"
    assert seen["verified"] == {"content_id": "movie-2", "key_ids": [KID_1.hex]}


async def test_cpix_keys_follow_the_seed_override(
    start: Start, http: aiohttp.ClientSession
) -> None:
    seed = base64.b64encode(b"another-seed-of-16+bytes").decode()
    emulator = await start(secrets={**SECRETS, "cpix_key_seed": seed, "kms_token": "t/k n"})
    status, _, answer = await post_cpix(http, emulator, cpix_request("c", KID_2), "t/k n")
    assert status == 200 and answered(answer) == {KID_2: cpix_expected_key(seed, "c", KID_2)}


async def test_cpix_wrong_token_is_401_and_names_no_secret(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    for token_text in ("not-the-token", KMS_TOKEN + "x", KMS_TOKEN[:-1]):
        status, content_type, answer = await post_cpix(
            http, emulator, cpix_request("c", KID_1), token_text
        )
        assert (status, content_type) == (401, "text/plain")
        assert KMS_TOKEN.encode() not in answer and token_text.encode() not in answer
    async with http.post(f"{emulator.url}{CPIX_PATH}/", data=cpix_request("c", KID_1)) as resp:
        assert resp.status in (401, 404)  # no token at all: never keys


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>',
        b'<CPIX id="c"><ContentKeyList><ContentKey kid="%s"/></ContentKeyList></CPIX>'
        % str(KID_1).encode(),  # no CPIX namespace
        cpix_request(None, KID_1),
        cpix_request("", KID_1),
        cpix_request("c"),
        cpix_request("c", KID_1, KID_1),
        cpix_request("c", KID_1).replace(str(KID_1).encode(), b"not-a-uuid", 1),
    ],
)
async def test_a_malformed_cpix_request_is_400(
    start: Start, http: aiohttp.ClientSession, body: bytes
) -> None:
    emulator = await start()
    status, content_type, answer = await post_cpix(http, emulator, body)
    assert (status, content_type) == (400, "text/plain") and answer
    assert b"PlainValue" not in answer


async def test_cpix_wrong_token_is_checked_before_the_body(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, _, _ = await post_cpix(http, emulator, b"not xml", "wrong")
    assert status == 401


def test_a_bad_cpix_key_seed_fails_at_start() -> None:
    for seed in ("not base64!", base64.b64encode(b"short").decode()):
        settings = EmulatorSettings(kind="doverunner", secrets={**SECRETS, "cpix_key_seed": seed})
        with pytest.raises(ValueError, match="cpix_key_seed"):
            add_routes(web.Application(), settings)


async def test_the_stats_never_show_the_kms_token(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    for token_text in (KMS_TOKEN, "a-wrong-token"):
        await post_cpix(http, emulator, cpix_request("c", KID_1), token_text)
    async with http.get(f"{emulator.url}/_emulator/stats") as resp:
        stats = await resp.text()
    assert KMS_TOKEN not in stats and "a-wrong-token" not in stats
    assert "{kms_token}" in stats
