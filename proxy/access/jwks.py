"""JWKS files: load a player-token JWKS file into public verification keys by kid (no web)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.domain import RSA_MIN_BITS

RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512"})
EC_ALGORITHMS: Mapping[str, str] = {
    "ES256": "secp256r1",
    "ES384": "secp384r1",
    "ES512": "secp521r1",
}
_MAX_JWKS_BYTES = 1_000_000
Stamp = tuple[int, int, int]  # (mtime_ns, size, inode) of the JWKS file


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """One JWKS public key and the algorithms it may verify."""

    algorithms: frozenset[str]
    key: Any = field(repr=False)


def read_stamp(path: Path) -> Stamp:
    """The file's (mtime_ns, size, inode), to tell when it changed; OSError if unreadable."""
    st = os.stat(path)
    # The inode catches an atomic rename (and a Kubernetes secret's symlink swap).
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def read_jwks(path: Path, algorithms: frozenset[str]) -> tuple[Stamp, dict[str, VerifyKey]]:
    """The file's stamp and its keys by kid (see `load_jwks`); ValueError if unusable."""
    # Stat first: if the file changes while being read, the next poll sees a new stamp.
    try:
        stamp = read_stamp(path)
    except OSError as exc:
        raise ValueError(f"jwks_file: cannot read {path}: {exc.strerror}") from None
    return stamp, load_jwks(path, algorithms)


def load_jwks(path: Path, algorithms: frozenset[str]) -> dict[str, VerifyKey]:
    """Parse a JWKS file into verification keys by kid; ValueError (no key material) if bad.

    Keys for other uses (`use` not `sig`) or only for algorithms outside `algorithms` are
    skipped; private keys, symmetric keys, short RSA keys and duplicate kids are refused.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"jwks_file: cannot read {path}: {exc.strerror}") from None
    if len(raw) > _MAX_JWKS_BYTES:
        raise ValueError(f"jwks_file: {path} is larger than {_MAX_JWKS_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError(f"jwks_file: {path} is not valid JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"jwks_file: {path} has no 'keys' list")
    keys: dict[str, VerifyKey] = {}
    for index, entry in enumerate(entries):
        kid, key = _parse_jwk(entry, f"jwks_file: keys[{index}]", algorithms)
        if kid in keys:
            raise ValueError(f"jwks_file: duplicate kid {kid!r}")
        if key is not None:
            keys[kid] = key
    if not keys:
        allowed = ", ".join(sorted(algorithms))
        raise ValueError(f"jwks_file: {path} has no signing key usable with {allowed}")
    return keys


def _parse_jwk(entry: object, where: str, allowed: frozenset[str]) -> tuple[str, VerifyKey | None]:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is not a JSON object")
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError(f"{where} has no 'kid'")
    where = f"jwks_file: key {kid!r}"
    kty, alg = entry.get("kty"), entry.get("alg")
    if entry.get("use", "sig") != "sig" or (alg is not None and alg not in allowed):
        return kid, None  # not for us: encryption keys, other algorithms
    if kty not in ("RSA", "EC"):
        raise ValueError(f"{where}: key type {kty!r} is not supported (RSA or EC public keys)")
    if "d" in entry:
        raise ValueError(f"{where} is a private key; publish only the public part")
    if alg is not None and (alg in RSA_ALGORITHMS) != (kty == "RSA"):
        raise ValueError(f"{where}: alg {alg!r} does not fit key type {kty!r}")
    try:
        # pyjwt's error texts quote the JWK; ours do not.
        key = jwt.PyJWK(entry).key
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ValueError(f"{where} is not a valid {kty} public key") from None
    algs = frozenset([alg]) if alg is not None else _algorithms_for(key)
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
        raise ValueError(f"{where}: RSA key is {key.key_size} bits; {RSA_MIN_BITS} required")
    if isinstance(key, ec.EllipticCurvePublicKey) and any(
        EC_ALGORITHMS.get(a) != key.curve.name for a in algs
    ):
        raise ValueError(f"{where}: curve {key.curve.name} does not fit {', '.join(algs)}")
    usable = algs & allowed
    return kid, (VerifyKey(usable, key) if usable else None)


def _algorithms_for(key: Any) -> frozenset[str]:
    if isinstance(key, rsa.RSAPublicKey):
        return RSA_ALGORITHMS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return frozenset(a for a, curve in EC_ALGORITHMS.items() if curve == key.curve.name)
    raise ValueError("not an RSA or EC public key")
