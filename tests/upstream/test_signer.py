"""Tests for proxy.upstream.signer: signing for every algorithm (verified with pyjwt), templates,
rotation, validation, and the explanations behind `drm-gateway token verify`."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Callable
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.cli.token_check import explain_token, public_verification_keys
from proxy.errors import InternalError, MissingResourceId
from proxy.upstream.signer import (
    ALGORITHMS,
    Algorithm,
    SigningKey,
    TokenContext,
    TokenSettings,
    TokenSigner,
    decode_hmac_secret,
    render_claims,
    validate_settings,
)

NOW = 1_700_000_000.0
CTX = TokenContext(drm_resource_id="res-123", asset_id="asset-9", drm="widevine")
HS256_SECRET = b"hs256-9f1c2e7ab04d4b8c93e15f6a2d7c"
HS512_SECRET = b"hs512-4e8a1b7c9d2f6e3a5b0c8d7e1f4a9b2c6d3e5f7a8b1c0d9e2f4a6b3c5d7e8"


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture(scope="session")
def materials() -> dict[str, tuple[bytes, bytes]]:
    """Two keys per algorithm (for rotation tests), generated once per session."""
    rsa_keys = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in "ab"]
    ec_keys = [ec.generate_private_key(ec.SECP256R1()) for _ in "ab"]
    return {
        "HS256": (HS256_SECRET, b"hs256-second-0c1d2e3f4a5b6c7d8e9f"),
        "HS512": (HS512_SECRET, HS512_SECRET[::-1]),
        "RS256": (_pem(rsa_keys[0]), _pem(rsa_keys[1])),
        "ES256": (_pem(ec_keys[0]), _pem(ec_keys[1])),
    }


SettingsFactory = Callable[..., TokenSettings]


@pytest.fixture
def make_settings(materials: dict[str, tuple[bytes, bytes]]) -> SettingsFactory:
    """Settings with keys 'k1' and 'k2' for `algorithm`; keyword overrides replace fields."""

    def make(algorithm: Algorithm = "HS256", **overrides: Any) -> TokenSettings:
        first, second = materials[algorithm]
        base = TokenSettings(
            algorithm=algorithm,
            keys=(SigningKey("k1", first), SigningKey("k2", second)),
            active_kid="k1",
        )
        return dataclasses.replace(base, **overrides)

    return make


def _verify(token: str, s: TokenSettings, kid: str, **options: Any) -> dict[str, Any]:
    key = public_verification_keys(s)[kid]
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=[s.algorithm], **options)
    return claims


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signed_token_verifies_with_pyjwt(
    algorithm: Algorithm, make_settings: SettingsFactory
) -> None:
    s = make_settings(algorithm)
    token = TokenSigner(s).sign(CTX)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
    claims = _verify(token, s, "k1")
    assert claims["drmResourceId"] == "res-123"
    assert claims["drm"] == "widevine"
    assert claims["exp"] - claims["iat"] == 60
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_token_does_not_verify_with_the_other_key(
    algorithm: Algorithm, make_settings: SettingsFactory
) -> None:
    s = make_settings(algorithm)
    token = TokenSigner(s).sign(CTX)
    with pytest.raises(jwt.InvalidSignatureError):
        _verify(token, s, "k2")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_rotation_switches_kid_and_a_verifier_with_both_keys_accepts_both(
    algorithm: Algorithm, make_settings: SettingsFactory
) -> None:
    old = make_settings(algorithm)
    new = make_settings(algorithm, active_kid="k2")
    tokens = [TokenSigner(old).sign(CTX), TokenSigner(new).sign(CTX)]
    verifier_keys = public_verification_keys(old)
    assert verifier_keys == public_verification_keys(new)
    kids = []
    for token in tokens:
        kid = jwt.get_unverified_header(token)["kid"]
        kids.append(kid)
        jwt.decode(token, verifier_keys[kid], algorithms=[algorithm])
    assert kids == ["k1", "k2"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tokens[1], verifier_keys["k1"], algorithms=[algorithm])


def test_iat_exp_follow_the_clock_and_lifetime(make_settings: SettingsFactory) -> None:
    s = make_settings(lifetime_seconds=30)
    token = TokenSigner(s, clock=lambda: NOW + 0.9).sign(CTX)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["iat"], claims["exp"]) == (int(NOW), int(NOW) + 30)
    assert "nbf" not in claims


def test_nbf_skew(make_settings: SettingsFactory) -> None:
    token = TokenSigner(make_settings(nbf_skew_seconds=5), clock=lambda: NOW).sign(CTX)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["nbf"] == int(NOW) - 5


def test_jti_unique_over_1000_tokens(make_settings: SettingsFactory) -> None:
    signer = TokenSigner(make_settings())
    jtis = {
        jwt.decode(signer.sign(CTX), options={"verify_signature": False})["jti"]
        for _ in range(1000)
    }
    assert len(jtis) == 1000


def test_issuer_is_added(make_settings: SettingsFactory) -> None:
    s = make_settings(issuer="drm-gateway")
    claims = _verify(TokenSigner(s).sign(CTX), s, "k1", issuer="drm-gateway")
    assert claims["iss"] == "drm-gateway"


def test_vendor_style_nested_template(make_settings: SettingsFactory) -> None:
    template = {
        "version": 1,
        "com_key_id": "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e",
        "message": {
            "type": "entitlement_message",
            "keys": [{"id": "{drm_resource_id}"}, {"id": "fixed"}],
            "policy": {"persistent": False, "license_duration": 3600.5, "note": None},
            "tags": ["{drm}", "asset:{asset_id}", 7],
        },
    }
    s = make_settings("ES256", claims=template)
    claims = _verify(TokenSigner(s).sign(CTX), s, "k1")
    assert claims["message"] == {
        "type": "entitlement_message",
        "keys": [{"id": "res-123"}, {"id": "fixed"}],
        "policy": {"persistent": False, "license_duration": 3600.5, "note": None},
        "tags": ["widevine", "asset:asset-9", 7],
    }
    assert (claims["version"], claims["com_key_id"]) == (1, template["com_key_id"])


def test_render_claims_placeholders_and_nulls() -> None:
    ctx = TokenContext("r", "a", "fairplay", user_id=None, request_id="req-1")
    template = {
        "sub": "{user_id}",
        "who": "user={user_id};req={request_id}",
        "braces": "{{literal}}",
        "all": "{drm_resource_id}/{asset_id}/{drm}",
        "list": [["{request_id}"], {"deep": {"deeper": "{drm}"}}],
    }
    assert render_claims(template, ctx) == {
        "sub": None,
        "who": "user=;req=req-1",
        "braces": "{literal}",
        "all": "r/a/fairplay",
        "list": [["req-1"], {"deep": {"deeper": "fairplay"}}],
    }
    assert render_claims(template, dataclasses.replace(ctx, user_id="u7"))["sub"] == "u7"


def test_render_claims_returns_fresh_objects_and_keeps_the_template() -> None:
    template = {"const": {"a": [1, 2]}, "id": "{drm_resource_id}"}
    first = render_claims(template, CTX)
    first["const"]["a"].append(3)
    assert render_claims(template, CTX)["const"] == {"a": [1, 2]}
    assert template == {"const": {"a": [1, 2]}, "id": "{drm_resource_id}"}


def test_render_claims_constant_template() -> None:
    template = {"v": 1, "nested": {"t": "x{{y}}"}, "list": [True, None]}
    assert render_claims(template, CTX) == {"v": 1, "nested": {"t": "x{y}"}, "list": [True, None]}


def test_render_claims_refuses_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        render_claims({"x": "{nope}"}, CTX)


def test_signer_renders_fresh_values_per_token(make_settings: SettingsFactory) -> None:
    s = make_settings(claims={"id": "{drm_resource_id}", "k": {"r": "{request_id}"}})
    signer = TokenSigner(s)
    tokens = [signer.sign(dataclasses.replace(CTX, drm_resource_id=r, request_id=r)) for r in "xy"]
    claims = [jwt.decode(t, options={"verify_signature": False}) for t in tokens]
    assert [(c["id"], c["k"]["r"]) for c in claims] == [("x", "x"), ("y", "y")]


def test_header_or_query_param(make_settings: SettingsFactory) -> None:
    header_signer = TokenSigner(make_settings(header="X-AxDRM-Message"))
    assert (header_signer.header, header_signer.query_param) == ("X-AxDRM-Message", None)
    query_signer = TokenSigner(make_settings(header=None, query_param="token"))
    assert (query_signer.header, query_signer.query_param) == (None, "token")
    assert query_signer.active_kid == "k1"


@pytest.mark.parametrize("resource_id", [None, ""])
def test_missing_resource_id_never_yields_a_token(
    resource_id: str | None, make_settings: SettingsFactory
) -> None:
    signer = TokenSigner(make_settings())
    with pytest.raises(MissingResourceId, match="asset-9") as info:
        signer.sign(dataclasses.replace(CTX, drm_resource_id=resource_id))
    assert isinstance(info.value, InternalError)
    assert info.value.status == 500
    assert "drmResourceId" in str(info.value)


def test_decode_hmac_secret() -> None:
    raw = bytes(range(40))
    assert decode_hmac_secret("plain secret ü") == "plain secret ü".encode()
    assert decode_hmac_secret("base64:" + base64.b64encode(raw).decode()) == raw
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert decode_hmac_secret("base64:" + urlsafe) == raw
    assert decode_hmac_secret("hex:00") == b"hex:00"  # no other prefixes: raw text
    with pytest.raises(ValueError, match="base64") as info:
        decode_hmac_secret("base64:not*base64")
    assert "not*base64" not in str(info.value)


def test_valid_settings_have_no_problems(make_settings: SettingsFactory) -> None:
    for algorithm in ALGORITHMS:
        assert validate_settings(make_settings(algorithm)) == []


def _problem(s: TokenSettings, prefix: str, words: str) -> None:
    problems = validate_settings(s)
    assert any(p.startswith(prefix) and words in p for p in problems), problems


def test_validation_template_problems(make_settings: SettingsFactory) -> None:
    deep = {"id": "{drm_resource_id}", "message": {"keys": [{"id": "{resource}"}]}}
    _problem(make_settings(claims=deep), "claims.message.keys[0].id:", "unknown placeholder")
    _problem(make_settings(claims={"id": "{drm_resource_id"}), "claims.id:", "malformed")
    _problem(make_settings(claims={"id": "{drm_resource_id!r}"}), "claims.id:", "format spec")
    _problem(make_settings(claims={"id": "{}"}), "claims.id:", "unknown placeholder")
    _problem(make_settings(claims={"id": b"x"}), "claims.id:", "unsupported value type")
    _problem(make_settings(claims={"id": float("nan")}), "claims.id:", "JSON")
    _problem(make_settings(claims={"drm": "{drm}"}), "claims:", "{drm_resource_id}")
    _problem(make_settings(claims={1: "{drm_resource_id}"}), "claims:", "must be strings")
    _problem(make_settings(claims=["{drm_resource_id}"]), "claims:", "must be a mapping")
    for reserved in ("iat", "exp", "jti", "nbf"):
        claims = {"id": "{drm_resource_id}", reserved: 1}
        _problem(make_settings(claims=claims), f"claims.{reserved}:", "reserved")
    claims = {"id": "{drm_resource_id}", "iss": "x"}
    _problem(make_settings(claims=claims, issuer="y"), "claims.iss:", "issuer")


def test_validation_key_problems(
    make_settings: SettingsFactory, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    _problem(make_settings(active_kid="k9"), "active_kid:", "not one of")
    twice = (SigningKey("k1", HS256_SECRET), SigningKey("k1", HS256_SECRET))
    _problem(make_settings(keys=twice), "keys[1].kid:", "duplicate")
    _problem(make_settings(keys=()), "keys:", "at least one")
    _problem(make_settings(keys=(SigningKey("", HS256_SECRET),)), "keys[0].kid:", "empty")
    short = (SigningKey("k1", b"x" * 31),)
    _problem(make_settings(keys=short), "keys[0].material:", "31 bytes")
    _problem(make_settings("HS512", keys=(SigningKey("k1", b"x" * 63),)), "keys[0].", "64")
    rsa_pem, ec_pem = materials["RS256"][0], materials["ES256"][0]
    _problem(make_settings(keys=(SigningKey("k1", rsa_pem),)), "keys[0].material:", "PEM")
    _problem(make_settings("RS256", keys=(SigningKey("k1", ec_pem),)), "keys[0].", "RSA")
    _problem(make_settings("ES256", keys=(SigningKey("k1", rsa_pem),)), "keys[0].", "EC P-256")
    p384 = _pem(ec.generate_private_key(ec.SECP384R1()))
    _problem(make_settings("ES256", keys=(SigningKey("k1", p384),)), "keys[0].", "secp384r1")
    small = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    _problem(make_settings("RS256", keys=(SigningKey("k1", small),)), "keys[0].", "1024 bits")
    public = public_verification_keys(make_settings("RS256"))["k1"]
    _problem(make_settings("RS256", keys=(SigningKey("k1", public),)), "keys[0].", "public key")
    _problem(make_settings("ES256", keys=(SigningKey("k1", b"junk"),)), "keys[0].", "not a PEM")
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    _problem(make_settings("ES256", keys=(SigningKey("k1", encrypted),)), "keys[0].", "encrypted")


def test_validation_other_problems(make_settings: SettingsFactory) -> None:
    _problem(make_settings(lifetime_seconds=0), "lifetime_seconds:", "positive")
    _problem(make_settings(lifetime_seconds=-5), "lifetime_seconds:", "positive")
    _problem(make_settings(nbf_skew_seconds=-1), "nbf_skew_seconds:", ">= 0")
    _problem(make_settings(query_param="t"), "header:", "exactly one")
    _problem(make_settings(header=None), "header:", "exactly one")
    _problem(make_settings(header="Bad Header"), "header:", "not a valid")
    _problem(make_settings(header=None, query_param=""), "query_param:", "empty")
    _problem(make_settings(issuer=""), "issuer:", "empty")
    unsupported = dataclasses.replace(make_settings(), algorithm=cast(Algorithm, "none"))
    _problem(unsupported, "algorithm:", "unsupported")


def test_validation_reports_every_problem_at_once(make_settings: SettingsFactory) -> None:
    s = make_settings(active_kid="zz", lifetime_seconds=0, query_param="t", claims={"x": "{y}"})
    assert len(validate_settings(s)) == 4
    with pytest.raises(ValueError, match="active_kid") as info:
        TokenSigner(s)
    assert "lifetime_seconds" in str(info.value)


def test_reprs_do_not_leak_key_material(
    make_settings: SettingsFactory, materials: dict[str, tuple[bytes, bytes]]
) -> None:
    for algorithm in ALGORITHMS:
        s = make_settings(algorithm)
        texts = [repr(s), str(s), repr(s.keys[0]), repr(TokenSigner(s))]
        for material in materials[algorithm]:
            for text in texts:
                assert material.decode() not in text
                assert material[10:30].decode() not in text
    assert "k1" in repr(TokenSigner(make_settings()))


# -- explain_token


def _sign(s: TokenSettings, ctx: TokenContext = CTX, at: float = NOW) -> str:
    return TokenSigner(s, clock=lambda: at).sign(ctx)


def _explain(token: str, s: TokenSettings, at: float = NOW + 1, **kwargs: Any) -> list[str]:
    problems = explain_token(token, s, clock=lambda: at, **kwargs)
    for problem in problems:
        assert not token or token not in problem
        for segment in token.split("."):
            assert len(segment) < 8 or segment not in problem
        for key in s.keys:
            assert key.material.decode() not in problem
    return problems


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_explain_valid_token(algorithm: Algorithm, make_settings: SettingsFactory) -> None:
    s = make_settings(algorithm)
    assert _explain(_sign(s), s, expected_resource_id="res-123") == []
    rotated = make_settings(algorithm, active_kid="k2")
    assert _explain(_sign(rotated), s) == []


def test_explain_bad_format(make_settings: SettingsFactory) -> None:
    s = make_settings()
    for token in ("not-a-token", "a.b.c", "", _sign(s) + ".x", "eyJhbGciOiJIUzI1NiJ9.WzFd.sig"):
        problems = _explain(token, s)
        assert len(problems) == 1 and "well-formed" in problems[0]


def test_explain_bad_signature(make_settings: SettingsFactory) -> None:
    s = make_settings()
    header, payload, _ = _sign(s).split(".")
    forged = jwt.encode({"x": 1}, b"w" * 32, algorithm="HS256", headers={"kid": "k1"})
    tampered = f"{header}.{payload}.{forged.split('.')[2]}"
    assert _explain(tampered, s) == ["The signature does not match the key with kid 'k1'."]


def test_explain_unknown_kid_and_alg_mismatch(make_settings: SettingsFactory) -> None:
    s = make_settings()
    unknown = _sign(make_settings(keys=(SigningKey("k7", HS256_SECRET),), active_kid="k7"))
    assert _explain(unknown, s) == ["The token's kid 'k7' is not a configured key (k1, k2)."]
    other_alg = _sign(make_settings("HS512"))
    problems = _explain(other_alg, s)
    assert len(problems) == 1 and "alg 'HS512'" in problems[0] and "HS256" in problems[0]
    no_kid = jwt.encode({"drmResourceId": "r"}, HS256_SECRET, algorithm="HS256")
    assert any("no kid" in p for p in _explain(no_kid, s))
    odd_header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":["k1"]}').decode().rstrip("=")
    odd_kid = ".".join([odd_header, *_sign(s).split(".")[1:]])
    assert len(_explain(odd_kid, s)) == 1  # refused, not a crash


def test_explain_expired_and_not_yet_valid(make_settings: SettingsFactory) -> None:
    s = make_settings(nbf_skew_seconds=2)
    token = _sign(s)
    assert _explain(token, s, at=NOW + 59) == []
    assert _explain(token, s, at=NOW + 70) == ["The token expired 10 s ago."]
    assert _explain(token, s, at=NOW + 70, leeway_seconds=15) == []
    early = _explain(token, s, at=NOW - 10)
    assert any("not valid yet" in p for p in early)
    assert any("iat is 10 s in the future" in p for p in early)


def test_explain_missing_claims(make_settings: SettingsFactory) -> None:
    s = make_settings()
    bare = jwt.encode({"drmResourceId": "res-123"}, HS256_SECRET, headers={"kid": "k1"})
    problems = _explain(bare, s)
    assert any("no iat" in p for p in problems)
    assert any("no exp" in p for p in problems)
    assert any("no jti" in p for p in problems)
    typed = jwt.encode(
        {"iat": "x", "exp": int(NOW) + 9, "jti": "j"}, HS256_SECRET, headers={"kid": "k1"}
    )
    assert _explain(typed, s) == ["The token's iat claim is not a number."]


def test_explain_resource_claim_mismatch(make_settings: SettingsFactory) -> None:
    s = make_settings()
    token = _sign(s)
    assert _explain(token, s, expected_resource_id="res-999") == [
        "The 'drmResourceId' claim is 'res-123' but the requested resource is 'res-999'."
    ]
    nested = make_settings(claims={"message": {"keys": [{"id": "{drm_resource_id}"}]}})
    token = _sign(nested)
    path = "message.keys.0.id"
    assert _explain(token, nested, expected_resource_id="res-123", resource_claim=path) == []
    assert (
        "is 'res-123'" in _explain(token, nested, expected_resource_id="x", resource_claim=path)[0]
    )
    missing = _explain(
        token, nested, expected_resource_id="res-123", resource_claim="message.keys.1.id"
    )
    assert missing == ["The token has no 'message.keys.1.id' claim."]


def test_explain_issuer_mismatch(make_settings: SettingsFactory) -> None:
    token = _sign(make_settings(issuer="other"))
    problems = _explain(token, make_settings(issuer="drm-gateway"))
    assert problems == ["The iss claim is 'other', expected 'drm-gateway'."]


def test_explain_reports_several_problems(make_settings: SettingsFactory) -> None:
    s = make_settings()
    token = _sign(make_settings(keys=(SigningKey("k1", b"z" * 32),)))
    problems = _explain(token, s, at=NOW + 600, expected_resource_id="other")
    assert len(problems) == 3
    assert json.dumps(problems)  # plain strings, printable by the CLI
