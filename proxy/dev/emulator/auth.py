"""How each emulated provider authenticates callers, checked its own plain way.

legacy: a static ``X-Api-Key`` (constant-time compare); a request carrying the incoming
provider's token header is refused as a ``token_leak``.
incoming: a token in a configured header; with JWT keys it is verified for real (kid,
signature, exp, nbf, the drm resource id claim, a never-replayed jti).
"""

from __future__ import annotations

import heapq
import hmac
import time
import warnings
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.settings import EmulatorSettings

API_KEY_HEADER = "X-Api-Key"
_HMAC_ALGORITHMS = ("HS256", "HS512")
_MAX_JTIS = 100_000

VerificationKey = bytes | rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _unauthorized(code: str, message: str) -> EmulatorError:
    return EmulatorError(401, code, message)


def check_legacy_request(headers: Mapping[str, str], settings: EmulatorSettings) -> None:
    """Raise 401 unless the api key matches and no incoming-provider token leaked in."""
    if settings.token_header in headers:
        raise _unauthorized("token_leak", "This provider must never receive that token header.")
    given = headers.get(API_KEY_HEADER)
    if given is None:
        raise _unauthorized("missing_api_key", "The API key is missing.")
    expected = (settings.api_key or "").encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
        raise _unauthorized("invalid_api_key", "The API key is not valid.")


def extract_token(headers: Mapping[str, str], header_name: str) -> str:
    """The token from its header (an optional ``Bearer`` prefix dropped); 401 if absent."""
    value = headers.get(header_name, "").strip()
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value:
        raise _unauthorized("missing_token", "The DRM token is missing.")
    return value


class ReplayCache:
    """A bounded set of seen ``jti`` values, each kept until its token expires.

    When full of live entries the soonest-expiring one is dropped: memory stays bounded, at the
    price of a window in which that one jti could be replayed (fine for an emulator).
    """

    def __init__(self, max_entries: int = _MAX_JTIS) -> None:
        self._max_entries = max_entries
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, jti: str, expires_at: float, now: float) -> bool:
        """Remember ``jti``; False if it was already seen and has not expired yet."""
        self._purge(now)
        if jti in self._expiry:
            return False
        while len(self._expiry) >= self._max_entries:
            self._pop_soonest()
        self._expiry[jti] = expires_at
        heapq.heappush(self._heap, (expires_at, jti))
        return True

    def clear(self) -> None:
        """Forget every jti."""
        self._expiry.clear()
        self._heap.clear()

    def _purge(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            self._pop_soonest()

    def _pop_soonest(self) -> None:
        expires_at, jti = heapq.heappop(self._heap)
        if self._expiry.get(jti) == expires_at:
            del self._expiry[jti]


class TokenVerifier:
    """Verifies incoming-provider JWTs against the configured keys, allowed algorithms and URL."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self._settings = settings
        self._keys = {
            kid: _load_key(kid, raw, settings.jwt_algorithms)
            for kid, raw in (settings.jwt_keys or {}).items()
        }
        self._claim_path = settings.resource_id_claim.split(".")
        self.replay_cache = ReplayCache()

    def verify(self, token: str, resource: str) -> None:
        """Raise 401 unless ``token`` is valid, for ``resource``, and not seen before."""
        key, algorithms = self._key_for(token)
        claims = self._decode(token, key, algorithms)
        if _dig(claims, self._claim_path) != resource:
            raise _unauthorized("resource_mismatch", "The token is for another resource.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _unauthorized("invalid_token", "The token's jti is not a non-empty string.")
        now = time.time()
        expires_at = float(claims["exp"]) + self._settings.clock_skew
        if not self.replay_cache.add(jti, expires_at, now):
            raise _unauthorized("replayed", "This token was already used.")

    def _key_for(self, token: str) -> tuple[VerificationKey, list[str]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _unauthorized("invalid_token", "The token is malformed.") from None
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self._keys:
            raise _unauthorized("unknown_kid", "The token's key id is not known.")
        return self._keys[kid]

    def _decode(self, token: str, key: VerificationKey, algorithms: list[str]) -> dict[str, Any]:
        audience = self._settings.jwt_audience
        options: jwt.types.Options = {"require": ["exp", "jti"], "verify_aud": audience is not None}
        try:
            # Short HMAC secrets are the caller's business; a warning must not become a 500.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
                return jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    options=options,
                    audience=audience,
                    leeway=self._settings.clock_skew,
                )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("token_expired", "The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise _unauthorized("token_not_yet_valid", "The token is not valid yet.") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("invalid_signature", "The token signature is wrong.") from None
        except jwt.MissingRequiredClaimError as exc:
            message = f"The token lacks the '{exc.claim}' claim."
            raise _unauthorized("invalid_token", message) from None
        except jwt.InvalidTokenError:
            raise _unauthorized("invalid_token", "The token is not valid.") from None


def _dig(claims: Mapping[str, Any], path: list[str]) -> object:
    value: object = claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _load_key(
    kid: str, raw: bytes | str, allowed: tuple[str, ...]
) -> tuple[VerificationKey, list[str]]:
    """A verification key and the algorithms it may be used with (no algorithm confusion)."""
    data = raw.encode() if isinstance(raw, str) else raw
    if not data.lstrip().startswith(b"-----BEGIN"):
        return data, [alg for alg in allowed if alg in _HMAC_ALGORITHMS]
    public_key = _load_public_pem(kid, data)
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key, [alg for alg in allowed if alg == "RS256"]
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1":
        return public_key, [alg for alg in allowed if alg == "ES256"]
    raise ValueError(f"JWT key {kid!r}: only RSA and P-256 EC public keys are supported")


def _load_public_pem(kid: str, data: bytes) -> object:
    try:
        return load_pem_public_key(data)
    except ValueError:
        pass
    try:
        # A private key PEM is accepted too, for convenience: only its public half is kept.
        return load_pem_private_key(data, password=None).public_key()
    except (TypeError, ValueError):
        raise ValueError(f"JWT key {kid!r} is not a readable PEM key") from None
