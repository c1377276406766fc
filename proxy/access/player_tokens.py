"""Player tokens: verify the player's JWT and check that it entitles the asset (pure; no web).

Keys come from an HMAC secret (HS256/384/512) or a JWKS file of RSA/EC public keys
(RS256/384/512, ES256/384/512, several `kid`s), never both: an allow-list that mixes the two
families is refused, and an HS* token is only ever checked against the HMAC secret, so a
public key can never be used as an HMAC secret (algorithm confusion). `alg: none` is refused.

Verified tokens are cached by the sha256 of the token, each until min(exp + leeway, cached
time + cache TTL); the cache is cleared when the JWKS keys change. `exp`, `nbf` and `iat` are
checked against the injected clock (not pyjwt's own), so cache hits and full verifications
agree on time. A token's lifetime (`exp - iat`) is bounded by `max_lifetime_seconds` (a day
by default), so a leaked token signed to last for years is refused. No message built here
holds a token or key material.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt
from cachetools import LRUCache

from proxy.access.jwks import (
    EC_ALGORITHMS,
    RSA_ALGORITHMS,
    Stamp,
    VerifyKey,
    load_jwks,
    read_jwks,
    read_stamp,
)
from proxy.errors import NotEntitled, Unauthorized
from proxy.observability.logs import get_logger

# Minimum HMAC secret per algorithm: as long as the hash output (RFC 7518 §3.2).
HMAC_ALGORITHMS: Mapping[str, int] = {"HS256": 32, "HS384": 48, "HS512": 64}
KNOWN_ALGORITHMS = frozenset(HMAC_ALGORITHMS) | RSA_ALGORITHMS | frozenset(EC_ALGORITHMS)
MAX_TOKEN_CHARS = 8192
MAX_LEEWAY_SECONDS = 300.0
# A day: the longest lifetime the tokens this project issues have (demo, benchmark), long
# enough for a player session, yet a leaked token is worthless by tomorrow (not in year 9999).
DEFAULT_MAX_LIFETIME_SECONDS = 86_400.0
_MAX_USER_ID_CHARS = 256

MISSING = "A player token is required."
MALFORMED = "The player token is not a well-formed JWT."
EXPIRED = "The player token has expired."
NOT_YET_VALID = "The player token is not valid yet (nbf or iat is in the future)."
WRONG_AUDIENCE = "The player token was not issued for this service (aud)."
WRONG_ISSUER = "The player token was not issued by a trusted issuer (iss)."
ALG_NOT_ALLOWED = "The player token's signing algorithm (alg) is not allowed."
NO_KID = "The player token does not name its signing key (kid)."
UNKNOWN_KID = "The player token's signing key (kid) is not known."
KEY_MISMATCH = "The player token's algorithm (alg) does not match its signing key."
BAD_SIGNATURE = "The player token's signature is not valid."
MISSING_EXP = "The player token has no expiry time (exp)."
MISSING_IAT = "The player token has no issue time (iat), which bounds its lifetime."
LIFETIME_TOO_LONG = "The player token's lifetime (exp - iat) is longer than allowed."
BAD_TIME = "The player token's exp, nbf or iat claim is not a finite number."
MISSING_USER = "The player token carries no usable user id."
BAD_ENTITLEMENTS = "The player token's entitlements claim must be a list of strings."
INVALID = "The player token is not valid."

# Every way a token is refused -> its `detail`: the one list of values the refused-requests
# metric label and the access line's `detail` field can take for `unauthorized`.
TOKEN_REFUSALS: Mapping[str, str] = {
    MISSING: "missing_token",
    MALFORMED: "malformed",
    EXPIRED: "expired",
    NOT_YET_VALID: "not_yet_valid",
    WRONG_AUDIENCE: "wrong_audience",
    WRONG_ISSUER: "wrong_issuer",
    ALG_NOT_ALLOWED: "alg_not_allowed",
    NO_KID: "missing_kid",
    UNKNOWN_KID: "unknown_kid",
    KEY_MISMATCH: "key_mismatch",
    BAD_SIGNATURE: "bad_signature",
    MISSING_EXP: "missing_exp",
    MISSING_IAT: "missing_iat",
    LIFETIME_TOO_LONG: "lifetime_too_long",
    BAD_TIME: "bad_time",
    MISSING_USER: "missing_user",
    BAD_ENTITLEMENTS: "bad_entitlements",
    INVALID: "invalid",
}


def _refused(message: str) -> Unauthorized:
    """The Unauthorized error for one of the refusals above, its detail attached."""
    return Unauthorized(message, detail=TOKEN_REFUSALS[message])


# Time claims are checked in _check_times against the injected clock, not by pyjwt.
_DECODE_OPTIONS: jwt.types.Options = {
    "require": ["exp"],
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
}
_log = get_logger("auth")


@dataclass(frozen=True, slots=True)
class PlayerAuthSettings:
    """How player tokens are verified; `mode="none"` is for local development only."""

    mode: Literal["jwt", "none"] = "jwt"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    hmac_secret: bytes | None = field(default=None, repr=False)
    jwks_file: Path | None = None
    jwks_check_seconds: float = 2.0
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0
    # exp - iat may be at most this (iat then required); None accepts any lifetime.
    max_lifetime_seconds: float | None = DEFAULT_MAX_LIFETIME_SECONDS
    user_claim: str = "sub"
    entitlements_claim: str = "entitlements"
    token_query_param: str = "token"
    cache_size: int = 100_000
    cache_ttl_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Player:
    """An authenticated player: who, which assets, and until when (epoch seconds)."""

    user_id: str
    entitlements: tuple[str, ...]
    expires_at: float


ANONYMOUS = Player(user_id="anonymous", entitlements=("*",), expires_at=math.inf)


def validate_player_auth(s: PlayerAuthSettings) -> list[str]:
    """Every problem with `s`, each as "field: problem"; [] when the settings are usable."""
    if s.mode == "none":
        return []
    if s.mode != "jwt":
        return [f"mode: must be 'jwt' or 'none', got {s.mode!r}"]
    return _algorithm_problems(s) + _key_problems(s) + _value_problems(s)


def _algorithm_problems(s: PlayerAuthSettings) -> list[str]:
    if not s.algorithms:
        return ["algorithms: at least one algorithm is required"]
    problems: list[str] = []
    for alg in s.algorithms:
        if alg.lower() == "none":
            problems.append("algorithms: 'none' can never be allowed (unsigned tokens)")
        elif alg not in KNOWN_ALGORITHMS:
            known = ", ".join(sorted(KNOWN_ALGORITHMS))
            problems.append(f"algorithms: unknown algorithm {alg!r} (use {known})")
    hmac_algs, public_algs = _families(s.algorithms)
    if hmac_algs and public_algs:
        problems.append(
            "algorithms: mixing HMAC (HS*) with RSA/EC algorithms invites algorithm "
            "confusion; allow one family only"
        )
    return problems


def _families(algorithms: Sequence[str]) -> tuple[list[str], list[str]]:
    """The HMAC and the public-key (RSA/EC) algorithms among `algorithms`."""
    hmac_algs = [a for a in algorithms if a in HMAC_ALGORITHMS]
    return hmac_algs, [a for a in algorithms if a in KNOWN_ALGORITHMS and a not in hmac_algs]


def _key_problems(s: PlayerAuthSettings) -> list[str]:
    hmac_algs, public_algs = _families(s.algorithms)
    problems: list[str] = []
    if hmac_algs and s.hmac_secret is None:
        problems.append(f"hmac_secret: required for {', '.join(hmac_algs)}")
    if s.hmac_secret is not None:
        if not hmac_algs:
            problems.append("hmac_secret: set, but no HS* algorithm is allowed")
        minimum = max((HMAC_ALGORITHMS[a] for a in hmac_algs), default=32)
        if len(s.hmac_secret) < minimum:
            problems.append(
                f"hmac_secret: {len(s.hmac_secret)} bytes; at least {minimum} are required"
            )
        if s.hmac_secret.lstrip().startswith(b"-----BEGIN"):
            problems.append("hmac_secret: looks like a PEM key, not an HMAC secret")
    if public_algs and s.jwks_file is None:
        problems.append(f"jwks_file: required for {', '.join(public_algs)}")
    if s.jwks_file is not None and not public_algs:
        problems.append("jwks_file: set, but no RS*/ES* algorithm is allowed")
    return problems


def _value_problems(s: PlayerAuthSettings) -> list[str]:
    checks = [
        (not s.user_claim, "user_claim: must not be empty"),
        (not s.entitlements_claim, "entitlements_claim: must not be empty"),
        (not s.token_query_param, "token_query_param: must not be empty"),
        (s.issuer == "", "issuer: must not be empty (leave it unset to skip the check)"),
        (s.audience == "", "audience: must not be empty (leave it unset to skip the check)"),
        (
            not 0 <= s.leeway_seconds <= MAX_LEEWAY_SECONDS,
            f"leeway_seconds: must be 0..{MAX_LEEWAY_SECONDS:g}",
        ),
        (
            s.max_lifetime_seconds is not None and not s.max_lifetime_seconds > 0,
            "max_lifetime_seconds: must be > 0 (null accepts any lifetime)",
        ),
        (s.cache_size < 0, "cache_size: must be >= 0 (0 turns the cache off)"),
        (s.cache_ttl_seconds < 0, "cache_ttl_seconds: must be >= 0"),
        (s.jwks_check_seconds <= 0, "jwks_check_seconds: must be > 0"),
    ]
    return [message for failed, message in checks if failed]


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for anything else."""
    if not authorization_header:
        return None
    scheme, _, value = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class PlayerAuthenticator:
    """Verifies player tokens (with a verified-token cache) and checks entitlements."""

    def __init__(self, s: PlayerAuthSettings, *, clock: Callable[[], float] = time.time) -> None:
        problems = validate_player_auth(s)
        if problems:
            raise ValueError("invalid player auth settings: " + "; ".join(problems))
        self._s = s
        self._clock = clock
        self._allowed = frozenset(s.algorithms)
        self._keys: dict[str, VerifyKey] = {}
        self._jwks_stamp: Stamp | None = None
        self._next_check = math.inf
        self._cache: LRUCache[bytes, tuple[Player, float]] | None = (
            LRUCache(maxsize=s.cache_size) if s.cache_size > 0 else None
        )
        if s.mode == "jwt" and s.jwks_file is not None:
            self._jwks_stamp, self._keys = read_jwks(s.jwks_file, self._allowed)
            self._next_check = clock() + s.jwks_check_seconds

    @property
    def settings(self) -> PlayerAuthSettings:
        """The settings this authenticator was built from."""
        return self._s

    @property
    def jwks_kids(self) -> frozenset[str]:
        """The kids of the JWKS keys in use (empty with an HMAC secret)."""
        return frozenset(self._keys)

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are cached (for metrics and tests)."""
        return 0 if self._cache is None else len(self._cache)

    def authenticate(self, token: str | None) -> Player:
        """The player a token proves; raises Unauthorized saying why not."""
        if self._s.mode == "none":
            return ANONYMOUS
        if not token:
            raise _refused(MISSING)
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise _refused(MALFORMED)
        now = self._clock()
        if now >= self._next_check:
            self.reload_if_changed()
        if self._cache is None:
            return self._verify(token, now)
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(digest)
        # The deadline is at most exp + leeway, so an expired token never passes from cache.
        if cached is not None and now < cached[1]:
            return cached[0]
        player = self._verify(token, now)
        deadline = min(player.expires_at + self._s.leeway_seconds, now + self._s.cache_ttl_seconds)
        self._cache[digest] = (player, deadline)
        return player

    def check_entitled(self, player: Player, asset_id: str) -> None:
        """Raise NotEntitled unless an entry is `asset_id`, `*`, or a prefix `p*` of it."""
        entries = player.entitlements
        if asset_id in entries or "*" in entries:
            return
        for entry in entries:
            if entry.endswith("*") and asset_id.startswith(entry[:-1]):
                return
        raise NotEntitled()

    def reload_if_changed(self) -> bool:
        """Reload the JWKS file if its mtime, size or inode changed; True if keys were replaced.

        A file that cannot be read or parsed keeps the current keys (a warning is logged).
        """
        path = self._s.jwks_file
        if self._s.mode != "jwt" or path is None:
            return False
        self._next_check = self._clock() + self._s.jwks_check_seconds
        try:
            stamp = read_stamp(path)
        except OSError as exc:
            _log.warning("jwks_unreadable", path=str(path), problem=exc.strerror)
            return False
        if stamp == self._jwks_stamp:
            return False
        # Remembered even if broken: the same broken file is not re-parsed every poll.
        self._jwks_stamp = stamp
        try:
            keys = load_jwks(path, self._allowed)
        except ValueError as exc:
            _log.warning("jwks_reload_refused", path=str(path), problem=str(exc))
            return False
        self._keys = keys
        if self._cache is not None:
            self._cache.clear()
        _log.info("jwks_reloaded", path=str(path), kids=sorted(keys))
        return True

    def _verify(self, token: str, now: float) -> Player:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused(MALFORMED) from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _refused(MALFORMED)
        if alg not in self._allowed:
            raise _refused(ALG_NOT_ALLOWED)
        claims = self._decode(token, alg, self._key_for(alg, header.get("kid")))
        _check_times(claims, now, self._s.leeway_seconds, self._s.max_lifetime_seconds)
        return Player(
            user_id=_user_id(claims.get(self._s.user_claim)),
            entitlements=_entitlements(claims.get(self._s.entitlements_claim)),
            expires_at=float(claims["exp"]),
        )

    def _key_for(self, alg: str, kid: object) -> Any:
        # HS* tokens only ever meet the HMAC secret: never a JWKS public key (confusion).
        if alg in HMAC_ALGORITHMS:
            return self._s.hmac_secret
        if not isinstance(kid, str) or not kid:
            raise _refused(NO_KID)
        key = self._keys.get(kid)
        if key is None:
            raise _refused(UNKNOWN_KID)
        if alg not in key.algorithms:
            raise _refused(KEY_MISMATCH)
        return key.key

    def _decode(self, token: str, alg: str, key: Any) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._s.audience,
                issuer=self._s.issuer,
                options=_DECODE_OPTIONS,
            )
        except jwt.InvalidSignatureError:
            raise _refused(BAD_SIGNATURE) from None
        except jwt.MissingRequiredClaimError as exc:
            missing = {"exp": MISSING_EXP, "aud": WRONG_AUDIENCE, "iss": WRONG_ISSUER}
            raise _refused(missing.get(exc.claim, INVALID)) from None
        except jwt.InvalidAudienceError:
            raise _refused(WRONG_AUDIENCE) from None
        except jwt.InvalidIssuerError:
            raise _refused(WRONG_ISSUER) from None
        except jwt.DecodeError:
            raise _refused(MALFORMED) from None
        except jwt.PyJWTError:
            raise _refused(INVALID) from None


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(BAD_TIME)
    number = float(value)
    if not math.isfinite(number):  # json.loads accepts Infinity: an everlasting token
        raise _refused(BAD_TIME)
    return number


def _check_times(
    claims: Mapping[str, Any], now: float, leeway: float, max_lifetime: float | None
) -> None:
    exp = _number(claims["exp"])
    if now >= exp + leeway:
        raise _refused(EXPIRED)
    for name in ("nbf", "iat"):
        if name in claims and _number(claims[name]) > now + leeway:
            raise _refused(NOT_YET_VALID)
    if max_lifetime is None:
        return
    # The lifetime the issuer gave the token; without iat it could not be bounded at all.
    if "iat" not in claims:
        raise _refused(MISSING_IAT)
    if exp - _number(claims["iat"]) > max_lifetime:
        raise _refused(LIFETIME_TOO_LONG)


def _user_id(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_USER_ID_CHARS:
        raise _refused(MISSING_USER)
    return value


def _entitlements(value: object) -> tuple[str, ...]:
    if value is None:
        return ()  # no claim: authenticated, entitled to nothing (403 at check time)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _refused(BAD_ENTITLEMENTS)


def issue_token(
    *,
    secret_or_private_key: bytes | str | Any,
    algorithm: str,
    kid: str | None,
    user_id: str,
    entitlements: Sequence[str],
    ttl_seconds: float,
    issuer: str | None = None,
    audience: str | None = None,
    clock: Callable[[], float] = time.time,
    user_claim: str = "sub",
    entitlements_claim: str = "entitlements",
) -> str:
    """Sign a player token (for the demo and tests): HMAC secret or PEM/key-object private key."""
    if algorithm not in KNOWN_ALGORITHMS:
        raise ValueError(f"algorithm: unsupported {algorithm!r}")
    now = clock()
    claims: dict[str, Any] = {
        user_claim: user_id,
        entitlements_claim: list(entitlements),
        "iat": int(now),
        "exp": int(now + ttl_seconds),
        "jti": uuid.uuid4().hex,
    }
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, secret_or_private_key, algorithm=algorithm, headers=headers)
