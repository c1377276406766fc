"""The DRMtoday emulator on loopback, talked to with requests built by hand the way castLabs'
documentation and samples build them (tokens signed here with stdlib HMAC)."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from proxy.dev.emulator import EmulatorSettings, RunningEmulator
from proxy.dev.emulator.app import create_emulator_app
from proxy.dev.emulator.cli import register, settings_from_args
from proxy.dev.emulator.kinds.drmtoday import Refused, UpfrontTokenVerifier
from tests.dev.conftest import Launch

MERCHANT = "demo-merchant"
SECRET = "demo-drmtoday-upfront-token-secret-0123456789abcdef0123456789ab"
WIDEVINE = "/license-proxy-widevine/cenc/"
PLAYREADY = "/license-proxy-headerauth/drmtoday/RightsManager.asmx"
FAIRPLAY = "/license-server-fairplay/"
ASSET = "asset-42"
RESOURCES = {ASSET: ASSET, "asset-43": "asset-43"}
CHALLENGE = b"\x08\x01\x12\x10" + bytes(range(100))
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 3
ROOT = Path(__file__).resolve().parents[3]
_HASHES = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}

Start = Callable[..., Awaitable[RunningEmulator]]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET) -> str:
    """A JWT signed with stdlib HMAC (alg from the header)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    digest = _HASHES[header["alg"]]
    mac = hmac.new(secret.encode(), f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64url(mac)}"


def token(
    *,
    assets: list[str] | None = None,
    alg: str = "HS512",
    secret: str = SECRET,
    merchant: str = MERCHANT,
    **overrides: Any,
) -> str:
    """An upfront token as castLabs describes it: optData and crt are JSON-encoded strings;
    an override of None removes a claim."""
    rights = [{"assetId": a, "profile": {"purchase": {}}} for a in (assets or [ASSET])]
    claims: dict[str, Any] = {
        "optData": json.dumps({"merchant": merchant, "userId": "user-7", "sessionId": "s-1"}),
        "crt": json.dumps(rights),
        "iat": int(time.time()),
        "jti": str(uuid.uuid4()),
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return sign({"alg": alg, "typ": "JWT", "kid": "k-1"}, claims, secret)


def custom_data(**fields: str) -> str:
    data = {"userId": "user-9", "sessionId": "session-1", "merchant": MERCHANT}
    data.update(fields)
    return base64.b64encode(json.dumps(data).encode()).decode()


def synthetic(drm: str, challenge: bytes, provider: str = "drmtoday") -> bytes:
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\n{provider}\n{drm}\n{digest}".encode()


def fairplay_form(spc: bytes = SPC, **fields: str) -> bytes:
    body = "spc=" + quote(base64.b64encode(spc).decode(), safe="")
    for name, value in fields.items():
        body += f"&{name}={quote(value, safe='')}"
    return body.encode()


@pytest.fixture
def start(launch: Launch) -> Start:
    async def _start(**kwargs: Any) -> RunningEmulator:
        kwargs.setdefault("resources", RESOURCES)
        return await launch(EmulatorSettings(kind="drmtoday", **kwargs))

    return _start


@pytest.fixture
async def emulator(start: Start) -> RunningEmulator:
    return await start()


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def last_request(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        stats = await response.json()
    last: dict[str, Any] = stats["recent"][-1]
    return last


# --- successes --------------------------------------------------------------------------------


async def test_widevine_answers_a_json_envelope_and_records_what_it_verified(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    upfront = token()
    status, headers, body = await post(
        http, emulator.url + WIDEVINE, CHALLENGE, **{"x-dt-auth-token": upfront}
    )
    assert status == 200 and headers["x-dt-resp-code"] == "00000"
    assert base64.b64decode(json.loads(body)["license"]) == synthetic("widevine", CHALLENGE)
    record = await last_request(http, emulator)
    assert record["verified"] == {
        "merchant": MERCHANT,
        "userId": "user-7",
        "assetId": ASSET,
        "auth": "token",
    }
    assert (record["drm"], record["resource"]) == ("widevine", ASSET)
    assert record["challenge_sha256"] == hashlib.sha256(CHALLENGE).hexdigest()
    text = json.dumps(record)
    assert upfront not in text and SECRET not in text


async def test_widevine_spec_conform_answers_the_raw_license(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    url = emulator.url + WIDEVINE + "?specConform=true"
    status, headers, body = await post(http, url, CHALLENGE, **{"x-dt-auth-token": token()})
    assert status == 200 and body == synthetic("widevine", CHALLENGE)
    assert headers["Content-Type"].startswith("application/octet-stream")


async def test_playready_answers_raw(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    challenge = b"<soap:Envelope><Challenge>abc</Challenge></soap:Envelope>"
    status, _, body = await post(
        http, emulator.url + PLAYREADY, challenge, **{"x-dt-auth-token": token()}
    )
    assert status == 200 and body == synthetic("playready", challenge)


async def test_fairplay_takes_the_form_and_answers_the_ckc_in_base64(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    headers = {"x-dt-auth-token": token(), "Content-Type": "application/x-www-form-urlencoded"}
    form = fairplay_form(assetId=ASSET, variantId="hd", keyId="00112233445566778899aabbccddeeff")
    status, answer_headers, body = await post(http, emulator.url + FAIRPLAY, form, **headers)
    assert status == 200 and answer_headers["x-dt-resp-code"] == "00000"
    assert base64.b64decode(body, validate=True) == synthetic("fairplay", SPC)
    record = await last_request(http, emulator)
    assert record["challenge_sha256"] == hashlib.sha256(SPC).hexdigest()
    assert record["verified"]["assetId"] == ASSET


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_every_documented_algorithm_and_a_single_right_object_are_accepted(
    emulator: RunningEmulator, http: aiohttp.ClientSession, alg: str
) -> None:
    crt = json.dumps({"assetId": ASSET, "profile": {"rental": {"playDuration": 3600000}}})
    upfront = token(alg=alg, crt=crt, exp=int(time.time()) + 60)
    status, _, _ = await post(
        http, emulator.url + WIDEVINE, CHALLENGE, **{"x-dt-auth-token": upfront}
    )
    assert status == 200


async def test_custom_data_alone_is_the_callback_path_for_the_asset_named(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    url = emulator.url + WIDEVINE + f"?assetId={ASSET}"
    status, _, _ = await post(http, url, CHALLENGE, **{"x-dt-custom-data": custom_data()})
    assert status == 200
    record = await last_request(http, emulator)
    assert record["verified"] == {
        "merchant": MERCHANT,
        "userId": "user-9",
        "assetId": ASSET,
        "auth": "custom_data",
    }
    headers = {"dt-custom-data": custom_data(), "Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = await post(
        http, emulator.url + FAIRPLAY, fairplay_form(assetId="asset-43"), **headers
    )
    assert status == 200


async def test_a_token_naming_several_assets_serves_the_one_asked_for(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    upfront = token(assets=[ASSET, "asset-43"])
    url = emulator.url + PLAYREADY + "?assetId=asset-43"
    status, _, _ = await post(http, url, CHALLENGE, **{"x-dt-auth-token": upfront})
    assert status == 200
    assert (await last_request(http, emulator))["resource"] == "asset-43"


async def test_secrets_can_be_overridden(start: Start, http: aiohttp.ClientSession) -> None:
    other = "another-shared-secret-of-a-reasonable-length-0123456789abcdefgh"
    emulator = await start(secrets={"merchant": "m2", "token_secret": other})
    good = token(merchant="m2", secret=other)
    status, _, _ = await post(http, emulator.url + WIDEVINE, CHALLENGE, **{"x-dt-auth-token": good})
    assert status == 200
    status, _, _ = await post(
        http, emulator.url + WIDEVINE, CHALLENGE, **{"x-dt-auth-token": token()}
    )
    assert status == 403


# --- failures, the DRMtoday way ---------------------------------------------------------------


Headers = Callable[[], dict[str, str]]


def _alg_none() -> dict[str, str]:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = {"iat": int(time.time()), "jti": "x", "optData": "{}", "crt": "[]"}
    return {"x-dt-auth-token": f"{header}.{b64url(json.dumps(claims).encode())}."}


def _auth(**overrides: Any) -> Headers:
    """Headers with a token built when the test runs (its iat is then fresh)."""
    return lambda: {"x-dt-auth-token": token(**overrides)}


def _ago(seconds: int) -> Callable[[], int]:
    return lambda: int(time.time()) - seconds


# case -> (headers, x-dt-error-message); iat/exp given as callables are computed per run.
REFUSALS: dict[str, tuple[Headers, str]] = {
    "wrong secret": (_auth(secret="x" * 64), "invalid_signature"),
    "alg none": (_alg_none, "unsupported_algorithm"),
    "garbage": (lambda: {"x-dt-auth-token": "not.a.jwt"}, "malformed_token"),
    "stale iat": (lambda: {"x-dt-auth-token": token(iat=_ago(601)())}, "token_too_old"),
    "future iat": (lambda: {"x-dt-auth-token": token(iat=_ago(-60)())}, "token_from_the_future"),
    "expired": (lambda: {"x-dt-auth-token": token(exp=_ago(30)())}, "token_expired"),
    "no jti": (_auth(jti=None), "invalid_token"),
    "no crt": (_auth(crt=None), "invalid_token"),
    "other merchant": (_auth(merchant="someone-else"), "unknown_merchant"),
    "optData object": (_auth(optData={"merchant": MERCHANT}), "optData_not_a_json_string"),
    "crt not json": (_auth(crt="[{"), "crt_not_json"),
    "crt without asset": (_auth(crt=json.dumps([{"profile": {}}])), "crt_without_asset"),
    "custom data merchant": (
        lambda: {"x-dt-auth-token": token(), "x-dt-custom-data": custom_data(merchant="m9")},
        "custom_data_merchant_differs",
    ),
    "nothing": (dict, "no_token_and_no_custom_data"),
    "custom merchant": (
        lambda: {"x-dt-custom-data": custom_data(merchant="m9")},
        "unknown_merchant",
    ),
    "custom no session": (
        lambda: {"x-dt-custom-data": custom_data(sessionId="")},
        "custom_data_without_user_or_session",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_each_bad_authorization_is_refused_403_with_the_auth_code(
    emulator: RunningEmulator, http: aiohttp.ClientSession, case: str
) -> None:
    headers, reason = REFUSALS[case]
    url = emulator.url + WIDEVINE + f"?assetId={ASSET}"
    status, answer, body = await post(http, url, CHALLENGE, **headers())
    assert (status, answer["x-dt-resp-code"], answer["x-dt-error-message"]) == (
        403,
        "03000",
        reason,
    )
    assert body == b""


async def test_a_replayed_token_is_refused(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    upfront = token()
    first, _, _ = await post(
        http, emulator.url + WIDEVINE, CHALLENGE, **{"x-dt-auth-token": upfront}
    )
    again, headers, _ = await post(
        http, emulator.url + PLAYREADY, CHALLENGE, **{"x-dt-auth-token": upfront}
    )
    assert first == 200
    assert (again, headers["x-dt-error-message"]) == (403, "replayed_token")


async def test_an_asset_the_token_does_not_grant_is_refused(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    url = emulator.url + WIDEVINE + "?assetId=asset-43"
    status, headers, _ = await post(http, url, CHALLENGE, **{"x-dt-auth-token": token()})
    assert (status, headers["x-dt-resp-code"], headers["x-dt-error-message"]) == (
        403,
        "03000",
        "asset_not_granted",
    )


@pytest.mark.parametrize(
    ("path", "code"), [(WIDEVINE, "40000"), (PLAYREADY, "42000"), (FAIRPLAY, "43000")]
)
async def test_an_asset_outside_the_key_store_is_refused_with_the_drms_code(
    emulator: RunningEmulator, http: aiohttp.ClientSession, path: str, code: str
) -> None:
    headers = {"x-dt-auth-token": token(assets=["not-packaged"])}
    body = CHALLENGE
    if path == FAIRPLAY:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        body = fairplay_form()
    status, answer, _ = await post(http, emulator.url + path, body, **headers)
    assert (status, answer["x-dt-resp-code"], answer["x-dt-error-message"]) == (
        403,
        code,
        "unknown_asset",
    )


@pytest.mark.parametrize(
    ("case", "content_type", "body", "reason"),
    [
        ("json body", "application/json", b'{"spc": "AAAA"}', "not_a_form"),
        ("no spc", "application/x-www-form-urlencoded", b"assetId=asset-42", "form_needs_one_spc"),
        (
            "unencoded plus",
            "application/x-www-form-urlencoded",
            b"spc=" + base64.b64encode(b"\x00\x00\x00\x01\xfb\xef\xbe" * 8),
            "spc_not_base64",
        ),
        (
            "not an spc",
            "application/x-www-form-urlencoded",
            fairplay_form(b"plain text, not an SPC"),
            "not_an_spc",
        ),
        (
            "bad key id",
            "application/x-www-form-urlencoded",
            fairplay_form(keyId="xyz"),
            "malformed_key_id",
        ),
        (
            "unknown field",
            "application/x-www-form-urlencoded",
            fairplay_form(contentId="c"),
            "unknown_form_field",
        ),
    ],
)
async def test_malformed_fairplay_forms_are_400_request_errors(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    case: str,
    content_type: str,
    body: bytes,
    reason: str,
) -> None:
    headers = {"x-dt-auth-token": token(), "Content-Type": content_type}
    status, answer, _ = await post(http, emulator.url + FAIRPLAY, body, **headers)
    assert (status, answer["x-dt-resp-code"], answer["x-dt-error-message"]) == (
        400,
        "02000",
        reason,
    ), case


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (lambda: {"x-dt-custom-data": custom_data()}, CHALLENGE, "no_asset_id"),
        (lambda: {"x-dt-custom-data": "%%%not b64"}, CHALLENGE, "custom_data_not_base64_json"),
        (_auth(assets=[ASSET, "asset-43"]), CHALLENGE, "ambiguous_asset"),
        (_auth(), b"", "empty_challenge"),
    ],
    ids=["no asset", "custom data not base64", "ambiguous", "empty challenge"],
)
async def test_malformed_license_requests_are_400_request_errors(
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    headers: Headers,
    body: bytes,
    reason: str,
) -> None:
    status, answer, _ = await post(http, emulator.url + WIDEVINE, body, **headers())
    assert (status, answer["x-dt-resp-code"], answer["x-dt-error-message"]) == (
        400,
        "02000",
        reason,
    )


def test_the_replay_cache_stays_bounded() -> None:
    verifier = UpfrontTokenVerifier(max_entries=3)
    secret = SECRET.encode()
    for _ in range(10):
        verifier.verify(token(), secret, MERCHANT, time.time())
    assert len(verifier.replay_cache) == 3
    reused = token()
    verifier.verify(reused, secret, MERCHANT, time.time())
    with pytest.raises(Refused, match="replayed_token"):
        verifier.verify(reused, secret, MERCHANT, time.time())


def test_an_empty_secret_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="token_secret"):
        create_emulator_app(EmulatorSettings(kind="drmtoday", secrets={"token_secret": ""}))


# --- the command line -------------------------------------------------------------------------


def test_emulate_drmtoday_help_works() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "emulate", "drmtoday", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0 and "--secret" in helped.stdout


def test_secret_overrides_apply_to_the_demo_values() -> None:
    parser = argparse.ArgumentParser(prog="drm-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["emulate", "drmtoday", "--secret", "merchant=shop-2"])
    settings = settings_from_args(args)
    assert settings.secrets == {"merchant": "shop-2", "token_secret": SECRET}
    with pytest.raises(ValueError, match="token_secret"):
        settings_from_args(parser.parse_args(["emulate", "drmtoday", "--secret", "nope=1"]))
