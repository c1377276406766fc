"""The Verimatrix Multi-DRM emulator, driven with requests and JWTs built here by hand."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.cli.main import main
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.cli import settings_from_args
from proxy.dev.emulator.kinds import verimatrix
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import parse

# The contract's demo values, written out here rather than read from the module under test.
KID = "demo-kid"
SECRET = "demo-verimatrix-signing-secret-0123456789ab"
ISSUER = "drm-gateway"
AUDIENCE = "urn:verimatrix:multidrm"
SECRETS = {"key_id": KID, "signing_secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE}
RESOURCES = {"content-1": "content-1", "content-2": "derived-2"}
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 2
Start = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start Verimatrix emulators (demo secrets unless given); all stop after the test."""

    async def _start(**secrets: str) -> RunningEmulator:
        settings = EmulatorSettings(
            kind="verimatrix", name="vmx-test", resources=RESOURCES, secrets=SECRETS | secrets
        )
        return await launch(settings)

    return _start


def token(
    *, key: Any = SECRET, algorithm: str = "HS256", kid: str | None = KID, **overrides: Any
) -> str:
    """A license token as the documents describe it; an override of None drops that claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        "iss": ISSUER,
        "ver": 1,
        "aud": AUDIENCE,
        "sub": "content-1",
    }
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    headers = {"kid": kid} if kid is not None else {}
    with warnings.catch_warnings():  # the demo secret is shorter than HS384/HS512 advise
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def hs256_by_hand(secret: bytes, claims: dict[str, Any]) -> str:
    """An HS256 JWT with any bytes as the secret (pyjwt refuses a PEM key as HMAC secret)."""
    header = {"alg": "HS256", "typ": "JWT", "kid": KID}
    parts = [b64url(json.dumps(part).encode()) for part in (header, claims)]
    signing_input = ".".join(parts).encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return ".".join([*parts, b64url(signature)])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def synthetic(drm: str, challenge: bytes) -> bytes:
    """The synthetic license rebuilt from its definition."""
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\nvmx-test\n{drm}\n{digest}".encode()


def spc_json(spc: bytes = SPC) -> bytes:
    return json.dumps({"spc": base64.b64encode(spc).decode()}).encode()


async def post(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    drm: str,
    body: bytes,
    auth: str | None,
    content_type: str = "application/octet-stream",
) -> tuple[int, str, bytes]:
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    async with http.post(f"{emulator.url}/{drm}", data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read()


def mdrm(body: bytes) -> str:
    """The MDRM code of an error answer, which holds nothing but the code and a message."""
    data = json.loads(body)
    assert set(data) == {"errorCode", "message"}
    return str(data["errorCode"])


async def last_record(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        stats: dict[str, Any] = await response.json()
    record: dict[str, Any] = stats["recent"][-1]
    return record


# -- successes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("drm", ["widevine", "playready"])
@pytest.mark.parametrize("prefix", ["", "Bearer "])
async def test_license_for_a_valid_token(
    start: Start, http: aiohttp.ClientSession, drm: str, prefix: str
) -> None:
    emulator = await start()
    challenge = b"\x08\x01" + bytes(range(200))
    status, content_type, body = await post(http, emulator, drm, challenge, prefix + token())
    assert (status, content_type) == (200, "application/octet-stream")
    assert body == synthetic(drm, challenge)
    record = await last_record(http, emulator)
    assert (record["route"], record["drm"], record["resource"]) == ("license", drm, "content-1")
    assert record["challenge_sha256"] == hashlib.sha256(challenge).hexdigest()
    expected = {"kid": KID, "iss": ISSUER, "sub": "content-1", "jti_present": True}
    assert record["verified"] == expected


async def test_stats_hold_no_secret_or_token(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start()
    sent = token()
    assert (await post(http, emulator, "widevine", b"\x08\x04", sent))[0] == 200
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        text = await response.text()
    assert SECRET not in text and sent not in text and sent.split(".")[2] not in text


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
async def test_each_hmac_algorithm_verifies(
    start: Start, http: aiohttp.ClientSession, algorithm: str
) -> None:
    emulator = await start()
    status, _, _ = await post(http, emulator, "widevine", b"c", token(algorithm=algorithm))
    assert status == 200


@pytest.mark.parametrize("alphabet", ["standard", "urlsafe-unpadded"])
async def test_fairplay_json_in_json_out(
    start: Start, http: aiohttp.ClientSession, alphabet: str
) -> None:
    emulator = await start()
    encoded = base64.b64encode(SPC).decode()
    if alphabet != "standard":
        encoded = base64.urlsafe_b64encode(SPC).decode().rstrip("=")
    body = json.dumps({"spc": encoded}).encode()
    status, content_type, answer = await post(
        http, emulator, "fairplay", body, token(), "application/json"
    )
    assert (status, content_type) == (200, "application/json")
    document = json.loads(answer)
    assert set(document) == {"ckc"}
    assert base64.b64decode(document["ckc"], validate=True) == synthetic("fairplay", SPC)
    record = await last_record(http, emulator)
    assert record["challenge_sha256"] == hashlib.sha256(SPC).hexdigest()


async def test_subject_deriving_from_another_id_is_known(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, _, _ = await post(http, emulator, "playready", b"<x/>", token(sub="content-2"))
    assert status == 200
    assert (await last_record(http, emulator))["resource"] == "content-2"


async def test_clock_skew_of_five_seconds_is_allowed(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    now = int(time.time())
    ahead = token(iat=now + 3, exp=now + 60)
    behind = token(iat=now - 60, exp=now - 3)
    for sent in (ahead, behind):
        assert (await post(http, emulator, "widevine", b"c", sent))[0] == 200


async def test_audience_may_be_a_list(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start()
    sent = token(aud=["urn:example:other", AUDIENCE])
    assert (await post(http, emulator, "widevine", b"c", sent))[0] == 200


async def test_es256_with_a_pem_public_key(start: Start, http: aiohttp.ClientSession) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    emulator = await start(signing_secret=pem)
    good = token(key=private, algorithm="ES256")
    assert (await post(http, emulator, "widevine", b"c", good))[0] == 200
    # The public key used as an HMAC secret: the classic algorithm confusion, refused.
    claims = jwt.decode(good, options={"verify_signature": False})
    confused = hs256_by_hand(pem.encode(), claims | {"jti": uuid.uuid4().hex})
    status, _, body = await post(http, emulator, "widevine", b"c", confused)
    assert (status, mdrm(body)) == (401, "MDRM-505")


# -- the token refused -------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


REFUSED_TOKENS: list[tuple[str, Callable[[], str | None], int, str]] = [
    ("missing", lambda: None, 401, "MDRM-501"),
    ("not a JWT", lambda: "not-a-jwt", 401, "MDRM-502"),
    ("unknown kid", lambda: token(kid="other-kid"), 401, "MDRM-504"),
    ("no kid", lambda: token(kid=None), 401, "MDRM-504"),
    ("wrong secret", lambda: token(key="x" * 43), 401, "MDRM-505"),
    ("alg none", lambda: token(key=None, algorithm="none"), 401, "MDRM-505"),
    ("no iat", lambda: token(iat=None), 401, "MDRM-509"),
    ("iat ahead", lambda: token(iat=_now() + 30, exp=_now() + 60), 401, "MDRM-510"),
    ("nbf ahead", lambda: token(nbf=_now() + 30), 401, "MDRM-511"),
    ("expired", lambda: token(iat=_now() - 100, exp=_now() - 10), 401, "MDRM-508"),
    ("older than 120 s", lambda: token(iat=_now() - 130, exp=None), 401, "MDRM-508"),
    ("lives over 120 s", lambda: token(exp=_now() + 121), 401, "MDRM-505"),
    ("wrong audience", lambda: token(aud="urn:verimatrix:cpix"), 403, "MDRM-503"),
    ("no audience", lambda: token(aud=None), 403, "MDRM-503"),
    ("wrong issuer", lambda: token(iss="someone-else"), 401, "MDRM-505"),
    ("no ver", lambda: token(ver=None), 401, "MDRM-505"),
    ("ver as text", lambda: token(ver="1"), 401, "MDRM-505"),
    ("unknown ver", lambda: token(ver=2), 401, "MDRM-505"),
    ("no sub", lambda: token(sub=None), 401, "MDRM-505"),
    ("no jti", lambda: token(jti=None), 401, "MDRM-505"),
]


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [case[1:] for case in REFUSED_TOKENS],
    ids=[case[0] for case in REFUSED_TOKENS],
)
async def test_refused_token(
    start: Start,
    http: aiohttp.ClientSession,
    make: Callable[[], str | None],
    status: int,
    code: str,
) -> None:
    emulator = await start()
    sent = make()
    got, content_type, body = await post(http, emulator, "widevine", b"\x08\x01", sent)
    assert (got, content_type, mdrm(body)) == (status, "application/json", code)
    record = await last_record(http, emulator)
    assert record["verified"] == {} and record["challenge_sha256"] is None
    if sent is not None:
        assert sent not in body.decode() and SECRET not in body.decode()


@pytest.mark.parametrize(
    ("sent", "code"), [(None, "MDRM-1001"), ("not-a-jwt", "MDRM-1002")], ids=["missing", "junk"]
)
async def test_fairplay_has_its_own_token_codes(
    start: Start, http: aiohttp.ClientSession, sent: str | None, code: str
) -> None:
    emulator = await start()
    status, _, body = await post(http, emulator, "fairplay", spc_json(), sent, "application/json")
    assert (status, mdrm(body)) == (401, code)


async def test_replayed_jti_is_refused(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start()
    sent = token()
    assert (await post(http, emulator, "widevine", b"c", sent))[0] == 200
    status, _, body = await post(http, emulator, "playready", b"c", sent)
    assert (status, mdrm(body)) == (401, "MDRM-505")
    assert "jti" in json.loads(body)["message"]
    assert len(emulator.app[verimatrix.REPLAY]) == 1


async def test_replay_cache_is_bounded(
    start: Start, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verimatrix, "MAX_REPLAY_ENTRIES", 2)
    emulator = await start()
    for _ in range(4):
        assert (await post(http, emulator, "widevine", b"c", token()))[0] == 200
    assert len(emulator.app[verimatrix.REPLAY]) == 2


# -- content and bodies refused ------------------------------------------------------------


@pytest.mark.parametrize(
    ("drm", "code"),
    [("widevine", "MDRM-717"), ("playready", "MDRM-1110"), ("fairplay", "MDRM-1011")],
)
async def test_unknown_subject_is_the_services_404(
    start: Start, http: aiohttp.ClientSession, drm: str, code: str
) -> None:
    emulator = await start()
    sent = token(sub="not-in-the-key-store")
    status, _, body = await post(http, emulator, drm, spc_json(), sent, "application/json")
    assert (status, mdrm(body)) == (404, code)
    record = await last_record(http, emulator)
    assert record["resource"] == "not-in-the-key-store"
    assert record["verified"]["sub"] == "not-in-the-key-store"


@pytest.mark.parametrize(("drm", "code"), [("widevine", "MDRM-700"), ("playready", "MDRM-1100")])
async def test_empty_challenge(
    start: Start, http: aiohttp.ClientSession, drm: str, code: str
) -> None:
    emulator = await start()
    status, _, body = await post(http, emulator, drm, b"", token())
    assert (status, mdrm(body)) == (400, code)


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (spc_json(), "application/octet-stream", "MDRM-1007"),
        (SPC, "application/json", "MDRM-1007"),
        (b"[1, 2]", "application/json", "MDRM-1007"),
        (b'{"other": "x"}', "application/json", "MDRM-1004"),
        (b'{"spc": ""}', "application/json", "MDRM-1004"),
        (b'{"spc": "***"}', "application/json", "MDRM-1007"),
        (b'{"spc": 12}', "application/json", "MDRM-1007"),
        (json.dumps({"spc": base64.b64encode(b"x" * 40).decode()}).encode(), None, "MDRM-1007"),
        (b"spc=" + base64.b64encode(SPC), "application/x-www-form-urlencoded", "MDRM-1007"),
    ],
    ids=[
        "octet-stream",
        "raw SPC",
        "not an object",
        "no spc",
        "empty spc",
        "not base64",
        "spc not text",
        "not an SPC",
        "form",
    ],
)
async def test_fairplay_body_refused(
    start: Start, http: aiohttp.ClientSession, body: bytes, content_type: str | None, code: str
) -> None:
    emulator = await start()
    kind = content_type or "application/json"
    status, _, answer = await post(http, emulator, "fairplay", body, token(), kind)
    assert (status, mdrm(answer)) == (400, code)


# -- demo secrets and the command line -----------------------------------------------------


def test_demo_secrets_are_the_contracts() -> None:
    assert verimatrix.DEMO_SECRETS == SECRETS


async def test_settings_without_secrets_take_the_demo_ones(http: aiohttp.ClientSession) -> None:
    emulator = await start_emulator(EmulatorSettings(kind="verimatrix"))
    try:
        assert (await post(http, emulator, "widevine", b"c", token()))[0] == 200
    finally:
        await emulator.stop()


def test_emulate_verimatrix_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["emulate", "verimatrix", "--help"])
    assert exited.value.code == 0
    assert "--secret" in capsys.readouterr().out


def test_secret_overrides_on_the_command_line() -> None:
    args = parse("emulate", "verimatrix", "--secret", "issuer=other-issuer")
    assert settings_from_args(args).secrets == SECRETS | {"issuer": "other-issuer"}
    with pytest.raises(ValueError, match="signing_secret"):
        settings_from_args(parse("emulate", "verimatrix", "--secret", "nope=1"))
