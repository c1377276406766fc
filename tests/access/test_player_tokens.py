"""Tests for proxy.access.player_tokens: every refusal, HMAC and JWKS happy paths, JWKS
rotation without a restart, the verified-token cache and entitlement matching.
Real keys, a real JWKS file."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from structlog.testing import capture_logs

from proxy.access import player_tokens as auth
from proxy.access.player_tokens import (
    ANONYMOUS,
    Player,
    PlayerAuthenticator,
    PlayerAuthSettings,
    bearer_token,
    issue_token,
    validate_player_auth,
)
from proxy.errors import NotEntitled, Unauthorized

T0 = 1_700_000_000.0
SECRET = b"player-hs256-secret-6f2d9a1c4b7e0f3a5d8c"
ISSUER = "https://login.example.test"
AUDIENCE = "drm-gateway"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class FakeClock:
    """A settable epoch clock shared by token issuing and verification."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class Keys:
    rsa_a: rsa.RSAPrivateKey
    rsa_b: rsa.RSAPrivateKey
    ec_a: ec.EllipticCurvePrivateKey
    ec_b: ec.EllipticCurvePrivateKey


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        rsa_a=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_b=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec_a=ec.generate_private_key(ec.SECP256R1()),
        ec_b=ec.generate_private_key(ec.SECP256R1()),
    )


def public_jwk(key: PrivateKey, kid: str, alg: str | None = None) -> dict[str, Any]:
    family: Any = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    jwk = dict(family.to_jwk(key.public_key(), as_dict=True), kid=kid)
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def write_jwks(path: Path, *jwks: dict[str, Any] | str) -> None:
    """Replace the file atomically, as a deployment would (a str is written verbatim)."""
    text = jwks[0] if len(jwks) == 1 and isinstance(jwks[0], str) else json.dumps({"keys": jwks})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(text))
    os.replace(tmp, path)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def craft(header: dict[str, Any], payload: str, sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, for what pyjwt refuses to produce."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload.encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode('ascii')))}"


def claims(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "sub": "user-1",
        "entitlements": ["movie-1"],
        "iat": int(T0),
        "exp": int(T0 + 600),
        "iss": ISSUER,
        "aud": AUDIENCE,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def hs_settings(**changes: Any) -> PlayerAuthSettings:
    base = PlayerAuthSettings(
        algorithms=("HS256",), hmac_secret=SECRET, issuer=ISSUER, audience=AUDIENCE
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def hs_auth(clock: FakeClock) -> PlayerAuthenticator:
    return PlayerAuthenticator(hs_settings(), clock=clock)


@pytest.fixture
def jwks_path(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "jwks.json"
    write_jwks(path, public_jwk(keys.rsa_a, "rsa-1"), public_jwk(keys.ec_a, "ec-1"))
    return path


@pytest.fixture
def jwks_auth(jwks_path: Path, clock: FakeClock) -> PlayerAuthenticator:
    settings = PlayerAuthSettings(jwks_file=jwks_path, issuer=ISSUER, audience=AUDIENCE)
    return PlayerAuthenticator(settings, clock=clock)


def signed(key: PrivateKey, alg: str, kid: str, **extra: Any) -> str:
    return jwt.encode(claims(**extra), key, algorithm=alg, headers={"kid": kid})


def refused(authenticator: PlayerAuthenticator, token: str | None) -> str:
    """The refusal's message; its detail is always the bounded one that message maps to."""
    with pytest.raises(Unauthorized) as info:
        authenticator.authenticate(token)
    assert info.value.detail == auth.TOKEN_REFUSALS[info.value.message]
    return info.value.message


# --- settings validation ---------------------------------------------------------------


def test_valid_settings_have_no_problems(jwks_path: Path) -> None:
    assert validate_player_auth(hs_settings()) == []
    assert validate_player_auth(PlayerAuthSettings(jwks_file=jwks_path)) == []
    assert validate_player_auth(PlayerAuthSettings(mode="none")) == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"algorithms": ("none",)}, "'none' can never be allowed"),
        ({"algorithms": ("HS256", "None")}, "'none' can never be allowed"),
        ({"algorithms": ("PS999",)}, "unknown algorithm 'PS999'"),
        ({"algorithms": ()}, "at least one algorithm"),
        ({"hmac_secret": None}, "hmac_secret: required for HS256"),
        ({"hmac_secret": b"short"}, "5 bytes; at least 32"),
        ({"algorithms": ("HS512",)}, "at least 64"),
        ({"hmac_secret": b"-----BEGIN PUBLIC KEY-----" + b"x" * 40}, "looks like a PEM key"),
        ({"jwks_file": Path("jwks.json")}, "no RS*/ES* algorithm is allowed"),
        ({"leeway_seconds": 3600.0}, "leeway_seconds"),
        ({"user_claim": ""}, "user_claim: must not be empty"),
        ({"audience": ""}, "audience: must not be empty"),
        ({"cache_size": -1}, "cache_size"),
        ({"max_lifetime_seconds": 0.0}, "max_lifetime_seconds: must be > 0"),
        ({"mode": "off"}, "mode: must be 'jwt' or 'none'"),
    ],
)
def test_validation_reports_each_problem(changes: dict[str, Any], expected: str) -> None:
    problems = validate_player_auth(hs_settings(**changes))
    assert any(expected in p for p in problems), problems


def test_validation_reports_every_problem_at_once() -> None:
    problems = validate_player_auth(PlayerAuthSettings(algorithms=("none", "RS256"), cache_size=-1))
    assert len(problems) == 3  # none, missing jwks_file, cache_size


def test_public_key_algorithms_need_a_jwks_file() -> None:
    assert validate_player_auth(PlayerAuthSettings()) == ["jwks_file: required for RS256, ES256"]


def test_mixing_hmac_and_public_key_algorithms_is_refused(jwks_path: Path) -> None:
    mixed = PlayerAuthSettings(
        algorithms=("RS256", "HS256"), hmac_secret=SECRET, jwks_file=jwks_path
    )
    assert any("algorithm confusion" in p for p in validate_player_auth(mixed))
    with pytest.raises(ValueError, match="algorithm confusion"):
        PlayerAuthenticator(mixed)


def test_secret_is_not_in_repr() -> None:
    assert SECRET.decode() not in repr(hs_settings())


# --- happy paths --------------------------------------------------------------------------


def test_hmac_token_is_accepted(hs_auth: PlayerAuthenticator) -> None:
    player = hs_auth.authenticate(hs_token(entitlements=["movie-1", "series-*"]))
    assert player == Player("user-1", ("movie-1", "series-*"), T0 + 600)


def test_issue_token_round_trips(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(), clock=clock)
    token = issue_token(
        secret_or_private_key=SECRET,
        algorithm="HS256",
        kid=None,
        user_id="demo",
        entitlements=["*"],
        ttl_seconds=86_400,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
    )
    assert authenticator.authenticate(token) == Player("demo", ("*",), T0 + 86_400)
    clock.now += 86_400 + 30  # the default leeway has passed too
    assert refused(authenticator, token) == auth.EXPIRED


def test_issue_token_refuses_alg_none() -> None:
    with pytest.raises(ValueError, match="unsupported 'none'"):
        issue_token(
            secret_or_private_key=b"",
            algorithm="none",
            kid=None,
            user_id="u",
            entitlements=[],
            ttl_seconds=60,
        )


@pytest.mark.parametrize(
    ("attr", "alg", "kid"), [("rsa_a", "RS256", "rsa-1"), ("ec_a", "ES256", "ec-1")]
)
def test_jwks_token_is_accepted(
    jwks_auth: PlayerAuthenticator, keys: Keys, attr: str, alg: str, kid: str
) -> None:
    token = issue_token(
        secret_or_private_key=getattr(keys, attr),
        algorithm=alg,
        kid=kid,
        user_id="user-7",
        entitlements=["a-*"],
        ttl_seconds=300,
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=lambda: T0,
    )
    assert jwks_auth.authenticate(token) == Player("user-7", ("a-*",), T0 + 300)
    assert jwks_auth.jwks_kids == {"rsa-1", "ec-1"}


def test_user_claim_and_entitlements_claim_are_configurable(clock: FakeClock) -> None:
    settings = hs_settings(user_claim="uid", entitlements_claim="assets")
    authenticator = PlayerAuthenticator(settings, clock=clock)
    player = authenticator.authenticate(hs_token(uid=42, assets="movie-9"))
    assert player.user_id == "42" and player.entitlements == ("movie-9",)


def test_mode_none_lets_anyone_in_for_everything() -> None:
    authenticator = PlayerAuthenticator(PlayerAuthSettings(mode="none"))
    player = authenticator.authenticate(None)
    assert player is ANONYMOUS and player.user_id == "anonymous"
    authenticator.check_entitled(player, "any-asset")


# --- one test per refusal -----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token_is_refused(hs_auth: PlayerAuthenticator, token: str | None) -> None:
    assert refused(hs_auth, token) == auth.MISSING


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b.c", "a.b", "e30.e30.", "ünïcode.x.y", "x" * (auth.MAX_TOKEN_CHARS + 1)],
)
def test_malformed_token_is_refused(hs_auth: PlayerAuthenticator, token: str) -> None:
    assert refused(hs_auth, token) == auth.MALFORMED


def test_expired_token_is_refused_after_leeway(
    hs_auth: PlayerAuthenticator, clock: FakeClock
) -> None:
    token = hs_token(exp=int(T0 + 60))
    clock.now = T0 + 89  # inside the 30 s leeway
    assert hs_auth.authenticate(token).user_id == "user-1"
    clock.now = T0 + 90
    assert refused(hs_auth, token) == auth.EXPIRED


def test_token_not_yet_valid_is_refused(hs_auth: PlayerAuthenticator, clock: FakeClock) -> None:
    token = hs_token(nbf=int(T0 + 120))
    assert refused(hs_auth, token) == auth.NOT_YET_VALID
    assert refused(hs_auth, hs_token(iat=int(T0 + 120))) == auth.NOT_YET_VALID
    clock.now = T0 + 91
    assert hs_auth.authenticate(token).user_id == "user-1"


@pytest.mark.parametrize("aud", ["someone-else", None, ["a", "b"]])
def test_wrong_audience_is_refused(hs_auth: PlayerAuthenticator, aud: Any) -> None:
    assert refused(hs_auth, hs_token(aud=aud)) == auth.WRONG_AUDIENCE


def test_audience_when_none_is_expected_is_refused(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(audience=None), clock=clock)
    assert refused(authenticator, hs_token()) == auth.WRONG_AUDIENCE
    assert authenticator.authenticate(hs_token(aud=None)).user_id == "user-1"


@pytest.mark.parametrize("iss", ["https://evil.example", None])
def test_wrong_issuer_is_refused(hs_auth: PlayerAuthenticator, iss: str | None) -> None:
    assert refused(hs_auth, hs_token(iss=iss)) == auth.WRONG_ISSUER


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(
    hs_auth: PlayerAuthenticator, jwks_auth: PlayerAuthenticator, alg: str
) -> None:
    token = craft({"alg": alg, "typ": "JWT"}, json.dumps(claims()), lambda _: b"")
    assert token.endswith(".")
    assert refused(hs_auth, token) == auth.ALG_NOT_ALLOWED
    assert refused(jwks_auth, token) == auth.ALG_NOT_ALLOWED


def test_hs256_token_signed_with_the_public_key_pem_is_refused(
    jwks_auth: PlayerAuthenticator, keys: Keys
) -> None:
    pem = keys.rsa_a.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = craft(
        {"alg": "HS256", "kid": "rsa-1"},
        json.dumps(claims()),
        lambda data: hmac.new(pem, data, hashlib.sha256).digest(),
    )
    assert refused(jwks_auth, token) == auth.ALG_NOT_ALLOWED


def test_public_key_pem_as_hmac_secret_is_refused_by_validation(keys: Keys) -> None:
    pem = keys.rsa_a.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="looks like a PEM key"):
        PlayerAuthenticator(hs_settings(hmac_secret=pem))


def test_algorithm_must_match_the_kids_key_type(jwks_auth: PlayerAuthenticator, keys: Keys) -> None:
    # Both algorithms are allowed, but the kid names a key of the other type.
    assert refused(jwks_auth, signed(keys.ec_a, "ES256", "rsa-1")) == auth.KEY_MISMATCH
    assert refused(jwks_auth, signed(keys.rsa_a, "RS256", "ec-1")) == auth.KEY_MISMATCH


def test_algorithm_outside_the_allow_list_is_refused(
    jwks_auth: PlayerAuthenticator, keys: Keys
) -> None:
    assert refused(jwks_auth, signed(keys.rsa_a, "RS512", "rsa-1")) == auth.ALG_NOT_ALLOWED
    assert refused(jwks_auth, hs_token()) == auth.ALG_NOT_ALLOWED


def test_unknown_kid_is_refused(jwks_auth: PlayerAuthenticator, keys: Keys) -> None:
    assert refused(jwks_auth, signed(keys.rsa_a, "RS256", "rsa-9")) == auth.UNKNOWN_KID


def test_missing_kid_is_refused(jwks_auth: PlayerAuthenticator, keys: Keys) -> None:
    token = jwt.encode(claims(), keys.rsa_a, algorithm="RS256")
    assert refused(jwks_auth, token) == auth.NO_KID


def test_bad_signature_is_refused(
    jwks_auth: PlayerAuthenticator, hs_auth: PlayerAuthenticator, keys: Keys
) -> None:
    # Right kid, wrong private key.
    assert refused(jwks_auth, signed(keys.rsa_b, "RS256", "rsa-1")) == auth.BAD_SIGNATURE
    assert refused(jwks_auth, signed(keys.ec_b, "ES256", "ec-1")) == auth.BAD_SIGNATURE
    other = jwt.encode(claims(), b"another-secret-of-enough-length-1234", algorithm="HS256")
    assert refused(hs_auth, other) == auth.BAD_SIGNATURE
    head, _, sig = hs_token().split(".")
    tampered = b64url(json.dumps(claims(sub="admin")).encode())
    assert refused(hs_auth, f"{head}.{tampered}.{sig}") == auth.BAD_SIGNATURE


def test_missing_exp_is_refused(hs_auth: PlayerAuthenticator) -> None:
    assert refused(hs_auth, hs_token(exp=None)) == auth.MISSING_EXP


@pytest.mark.parametrize("exp", ["Infinity", '"soon"', "true"])
def test_non_numeric_or_infinite_exp_is_refused(hs_auth: PlayerAuthenticator, exp: str) -> None:
    body = json.dumps(claims(exp=0)).replace('"exp": 0', f'"exp": {exp}')
    token = craft(
        {"alg": "HS256"}, body, lambda data: hmac.new(SECRET, data, hashlib.sha256).digest()
    )
    assert refused(hs_auth, token) == auth.BAD_TIME


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        (None, auth.MISSING_USER),
        ("", auth.MISSING_USER),
        ("x" * 300, auth.MISSING_USER),
        (["u"], auth.INVALID),  # pyjwt itself refuses a non-string `sub`
    ],
)
def test_missing_or_unusable_user_claim_is_refused(
    hs_auth: PlayerAuthenticator, sub: Any, expected: str
) -> None:
    assert refused(hs_auth, hs_token(sub=sub)) == expected


@pytest.mark.parametrize("entitlements", [{"movie-1": True}, ["movie-1", 7], 5])
def test_malformed_entitlements_claim_is_refused(
    hs_auth: PlayerAuthenticator, entitlements: Any
) -> None:
    assert refused(hs_auth, hs_token(entitlements=entitlements)) == auth.BAD_ENTITLEMENTS


YEAR_9999 = 253_402_300_799


def test_token_living_longer_than_the_maximum_is_refused(hs_auth: PlayerAuthenticator) -> None:
    assert refused(hs_auth, hs_token(exp=YEAR_9999)) == auth.LIFETIME_TOO_LONG
    # The default maximum is a day, measured from iat (not from now).
    assert hs_auth.authenticate(hs_token(exp=int(T0 + 86_400))).expires_at == T0 + 86_400
    assert refused(hs_auth, hs_token(exp=int(T0 + 86_401))) == auth.LIFETIME_TOO_LONG
    assert refused(hs_auth, hs_token(iat=int(T0 - 86_000), exp=int(T0 + 600))) == (
        auth.LIFETIME_TOO_LONG
    )


def test_maximum_lifetime_is_configurable_and_needs_iat(clock: FakeClock) -> None:
    hour = PlayerAuthenticator(hs_settings(max_lifetime_seconds=3600.0), clock=clock)
    assert hour.authenticate(hs_token(exp=int(T0 + 3600))).user_id == "user-1"
    assert refused(hour, hs_token(exp=int(T0 + 3601))) == auth.LIFETIME_TOO_LONG
    assert refused(hour, hs_token(iat=None)) == auth.MISSING_IAT


def test_maximum_lifetime_can_be_turned_off_explicitly(clock: FakeClock) -> None:
    unbounded = PlayerAuthenticator(hs_settings(max_lifetime_seconds=None), clock=clock)
    assert unbounded.authenticate(hs_token(exp=YEAR_9999)).expires_at == YEAR_9999
    assert unbounded.authenticate(hs_token(iat=None)).user_id == "user-1"


def test_every_refusal_has_a_distinct_bounded_detail() -> None:
    details = list(auth.TOKEN_REFUSALS.values())
    assert len(details) == len(set(details))
    assert all(d.replace("_", "").isalpha() and d.islower() for d in details)


def test_refusal_messages_never_hold_the_token(hs_auth: PlayerAuthenticator) -> None:
    for token in (hs_token(exp=int(T0 - 3600)), hs_token(aud="x"), hs_token()[:-4] + "AAAA"):
        assert token not in refused(hs_auth, token)


# --- entitlement --------------------------------------------------------------------------


def player(*entitlements: str) -> Player:
    return Player("u", entitlements, T0 + 60)


@pytest.mark.parametrize(
    ("entitlements", "asset"),
    [
        (("movie-1",), "movie-1"),
        (("series-*",), "series-42"),
        (("series-*",), "series-"),
        (("other", "*"), "anything"),
        (("a", "movie-*", "b"), "movie-2"),
    ],
)
def test_entitled(hs_auth: PlayerAuthenticator, entitlements: tuple[str, ...], asset: str) -> None:
    hs_auth.check_entitled(player(*entitlements), asset)


@pytest.mark.parametrize(
    ("entitlements", "asset"),
    [
        ((), "movie-1"),
        (("movie-1",), "movie-10"),
        (("movie-1",), "movie-"),
        (("series-*",), "series"),
        (("series-*",), "xseries-1"),
        (("movie*1",), "movie-1"),
    ],
)
def test_not_entitled(
    hs_auth: PlayerAuthenticator, entitlements: tuple[str, ...], asset: str
) -> None:
    with pytest.raises(NotEntitled):
        hs_auth.check_entitled(player(*entitlements), asset)


def test_token_without_entitlements_claim_is_entitled_to_nothing(
    hs_auth: PlayerAuthenticator,
) -> None:
    p = hs_auth.authenticate(hs_token(entitlements=None))
    with pytest.raises(NotEntitled):
        hs_auth.check_entitled(p, "movie-1")


# --- JWKS loading and rotation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not valid JSON"),
        ('{"keys": {}}', "no 'keys' list"),
        ('{"keys": []}', "no signing key usable"),
        ('{"keys": [{"kty": "RSA"}]}', "has no 'kid'"),
        ('{"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}', "not supported"),
        ('{"keys": [{"kty": "RSA", "kid": "r", "n": "!!", "e": "AQAB"}]}', "not a valid RSA"),
    ],
)
def test_broken_jwks_file_is_refused_at_start(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, content)
    with pytest.raises(ValueError, match=expected):
        PlayerAuthenticator(PlayerAuthSettings(jwks_file=path))


def test_missing_jwks_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        PlayerAuthenticator(PlayerAuthSettings(jwks_file=tmp_path / "absent.json"))


def test_unsafe_jwks_keys_are_refused_without_quoting_them(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    private = dict(jwt.algorithms.RSAAlgorithm.to_jwk(keys.rsa_a, as_dict=True), kid="p")
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases = [
        ([private], "private key"),
        ([public_jwk(short, "short")], "1024 bits"),
        ([public_jwk(keys.rsa_a, "k"), public_jwk(keys.ec_a, "k")], "duplicate kid"),
        ([public_jwk(keys.ec_a, "e", alg="RS256")], "does not fit key type"),
        ([public_jwk(p384, "e", alg="ES256")], "curve secp384r1 does not fit ES256"),
    ]
    for jwks, expected in cases:
        write_jwks(path, *jwks)
        with pytest.raises(ValueError, match=expected) as info:
            PlayerAuthenticator(PlayerAuthSettings(jwks_file=path))
        assert private["n"][:40] not in str(info.value)


def test_keys_for_other_uses_or_algorithms_are_skipped(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(
        path,
        dict(public_jwk(keys.rsa_b, "enc"), use="enc"),
        public_jwk(keys.rsa_b, "ps", alg="PS256"),
        public_jwk(keys.rsa_a, "sig"),
    )
    authenticator = PlayerAuthenticator(PlayerAuthSettings(jwks_file=path), clock=FakeClock())
    assert authenticator.jwks_kids == {"sig"}


def test_jwks_rotation_without_restart(
    jwks_auth: PlayerAuthenticator, jwks_path: Path, keys: Keys, clock: FakeClock
) -> None:
    old = signed(keys.rsa_a, "RS256", "rsa-1")
    new = signed(keys.ec_b, "ES256", "ec-2")
    assert jwks_auth.authenticate(old).user_id == "user-1"
    assert refused(jwks_auth, new) == auth.UNKNOWN_KID

    write_jwks(jwks_path, public_jwk(keys.ec_a, "ec-1"), public_jwk(keys.ec_b, "ec-2"))
    clock.now += 1.0  # before the next poll: the old keys (and cached tokens) still hold
    assert jwks_auth.authenticate(old).user_id == "user-1"
    clock.now += 1.5  # past jwks_check_seconds: the next request picks the new file up
    assert refused(jwks_auth, old) == auth.UNKNOWN_KID
    assert jwks_auth.authenticate(new).user_id == "user-1"
    assert jwks_auth.jwks_kids == {"ec-1", "ec-2"}
    assert jwks_auth.reload_if_changed() is False  # unchanged file


def test_broken_new_jwks_file_keeps_the_old_keys(
    jwks_auth: PlayerAuthenticator, jwks_path: Path, keys: Keys
) -> None:
    token = signed(keys.ec_a, "ES256", "ec-1")
    for broken in ('{"keys": [', json.dumps({"keys": [{"kty": "RSA", "kid": "x", "d": "AA"}]})):
        write_jwks(jwks_path, broken)
        with capture_logs() as logs:
            assert jwks_auth.reload_if_changed() is False
        assert [e["event"] for e in logs] == ["jwks_reload_refused"]
        assert logs[0]["log_level"] == "warning"
        with capture_logs() as logs:  # the same broken file is neither re-parsed nor re-logged
            assert jwks_auth.reload_if_changed() is False
        assert logs == []
        assert jwks_auth.jwks_kids == {"rsa-1", "ec-1"}
        assert jwks_auth.authenticate(token).user_id == "user-1"
    jwks_path.unlink()
    with capture_logs() as logs:
        assert jwks_auth.reload_if_changed() is False
    assert logs[0]["event"] == "jwks_unreadable"
    assert jwks_auth.authenticate(token).user_id == "user-1"


def test_reload_log_never_holds_key_material(
    jwks_auth: PlayerAuthenticator, jwks_path: Path, keys: Keys
) -> None:
    jwk = public_jwk(keys.rsa_b, "rsa-2")
    write_jwks(jwks_path, jwk)
    with capture_logs() as logs:
        assert jwks_auth.reload_if_changed() is True
    assert logs[0]["event"] == "jwks_reloaded" and logs[0]["kids"] == ["rsa-2"]
    assert jwk["n"][:40] not in repr(logs)


# --- verified-token cache -----------------------------------------------------------------


def test_cached_token_is_still_refused_once_expired(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(leeway_seconds=0.0), clock=clock)
    token = hs_token(exp=int(T0 + 60))
    assert authenticator.authenticate(token).user_id == "user-1"
    assert authenticator.cached_tokens == 1
    clock.now = T0 + 59.9
    assert authenticator.authenticate(token).user_id == "user-1"
    clock.now = T0 + 60
    assert refused(authenticator, token) == auth.EXPIRED


def test_cache_ttl_bounds_how_long_a_verification_is_reused(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(cache_ttl_seconds=10.0), clock=clock)
    token = hs_token()
    authenticator.authenticate(token)
    clock.now = T0 + 11  # the entry is stale: verified again, and still good
    assert authenticator.authenticate(token).expires_at == T0 + 600
    assert authenticator.cached_tokens == 1


def test_cache_is_cleared_when_keys_change(
    jwks_auth: PlayerAuthenticator, jwks_path: Path, keys: Keys
) -> None:
    token = signed(keys.rsa_a, "RS256", "rsa-1")
    jwks_auth.authenticate(token)
    assert jwks_auth.cached_tokens == 1
    write_jwks(jwks_path, public_jwk(keys.ec_a, "ec-1"))
    assert jwks_auth.reload_if_changed() is True
    assert jwks_auth.cached_tokens == 0
    assert refused(jwks_auth, token) == auth.UNKNOWN_KID


def test_cache_is_bounded(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(cache_size=3), clock=clock)
    for i in range(5):
        authenticator.authenticate(hs_token(sub=f"user-{i}"))
    assert authenticator.cached_tokens == 3


def test_cache_can_be_turned_off(clock: FakeClock) -> None:
    authenticator = PlayerAuthenticator(hs_settings(cache_size=0), clock=clock)
    assert authenticator.authenticate(hs_token()).user_id == "user-1"
    assert authenticator.cached_tokens == 0


# --- bearer header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer   abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected
