"""Provider-token checks: the verifier keys for a `TokenSettings`, and why a token is refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from proxy.upstream.signer import (
    HMAC_MIN_BYTES,
    TokenSettings,
    join_names,
    load_private_key,
    raise_if_invalid,
)

_BAD_FORMAT = (
    "The token is not a well-formed JWT (expected header.payload.signature, "
    "each base64url-encoded JSON)."
)


def public_verification_keys(s: TokenSettings) -> dict[str, bytes]:
    """kid -> what a verifier needs: the HMAC secret itself, or the public key as PEM."""
    raise_if_invalid(s)
    if s.algorithm in HMAC_MIN_BYTES:
        return {k.kid: k.material for k in s.keys}
    return {
        k.kid: load_private_key(s.algorithm, k.material)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in s.keys
    }


def explain_token(
    token: str,
    s: TokenSettings,
    *,
    expected_resource_id: str | None = None,
    resource_claim: str = "drmResourceId",
    clock: Callable[[], float] = time.time,
    leeway_seconds: int = 0,
) -> list[str]:
    """Every reason `token` would be refused under `s`, as sentences; [] when it is valid.

    `resource_claim` is a dotted path into the claims (list items by index: `a.keys.0.id`).
    """
    raise_if_invalid(s)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return [_BAD_FORMAT]
    problems = _header_problems(header, s)
    if not problems:
        problems += _signature_problems(token, str(header["kid"]), s)
    now = clock()
    problems += _time_problems(claims, now, leeway_seconds)
    problems += _identity_problems(claims, s, expected_resource_id, resource_claim)
    return problems


def _header_problems(header: dict[str, Any], s: TokenSettings) -> list[str]:
    problems: list[str] = []
    if header.get("alg") != s.algorithm:
        problems.append(
            f"The token is signed with alg {_show(header.get('alg'))} "
            f"but the provider is configured for {s.algorithm}."
        )
    kid = header.get("kid")
    kids = {k.kid for k in s.keys}
    if kid is None:
        problems.append("The token header has no kid, so no key can be chosen to verify it.")
    elif not isinstance(kid, str) or kid not in kids:
        problems.append(
            f"The token's kid {_show(kid)} is not a configured key ({join_names(kids)})."
        )
    return problems


def _signature_problems(token: str, kid: str, s: TokenSettings) -> list[str]:
    material = next(k.material for k in s.keys if k.kid == kid)
    key = load_private_key(s.algorithm, material)
    verify_key = key if isinstance(key, bytes) else key.public_key()
    try:
        jwt.PyJWS().decode(token, verify_key, algorithms=[s.algorithm])
    except jwt.InvalidSignatureError:
        return [f"The signature does not match the key with kid {kid!r}."]
    except jwt.PyJWTError:
        return [_BAD_FORMAT]
    return []


def _time_problems(claims: dict[str, Any], now: float, leeway: int) -> list[str]:
    times: dict[str, float] = {}
    problems: list[str] = []
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            times[name] = value
        elif value is not None:
            problems.append(f"The token's {name} claim is not a number.")
        elif name != "nbf":  # nbf is optional; iat and exp are always required
            problems.append(f"The token has no {name} claim.")
    if problems:
        return problems
    if now >= times["exp"] + leeway:
        problems.append(f"The token expired {int(now - times['exp'])} s ago.")
    if now + leeway < times.get("nbf", now):
        problems.append(f"The token is not valid yet (nbf is {int(times['nbf'] - now)} s ahead).")
    if now + leeway < times["iat"]:
        problems.append(f"The token's iat is {int(times['iat'] - now)} s in the future.")
    return problems


def _identity_problems(
    claims: dict[str, Any], s: TokenSettings, expected: str | None, path: str
) -> list[str]:
    problems: list[str] = []
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        problems.append("The token has no jti claim, so replays cannot be detected.")
    if s.issuer is not None and claims.get("iss") != s.issuer:
        problems.append(f"The iss claim is {_show(claims.get('iss'))}, expected {s.issuer!r}.")
    if expected is not None:
        actual = _lookup(claims, path)
        if actual is _MISSING:
            problems.append(f"The token has no {path!r} claim.")
        elif actual != expected:
            problems.append(
                f"The {path!r} claim is {_show(actual)} "
                f"but the requested resource is {_show(expected)}."
            )
    return problems


_MISSING = object()


def _lookup(claims: Any, path: str) -> Any:
    node = claims
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _show(value: Any) -> str:
    """A short repr of a claim value for a message (values come from untrusted tokens)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
