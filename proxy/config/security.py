"""Security settings from the config: player authentication, CORS and rate limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.access.cors import CorsPolicy, validate_cors
from proxy.access.player_tokens import (
    DEFAULT_MAX_LIFETIME_SECONDS,
    PlayerAuthSettings,
    validate_player_auth,
)
from proxy.config.reader import ConfigReader
from proxy.upstream.signer import decode_hmac_secret

_AUTH_FIELDS = {
    "mode",
    "algorithms",
    "hmac_secret",
    "jwks_file",
    "jwks_check_seconds",
    "issuer",
    "audience",
    "leeway_seconds",
    "max_lifetime_seconds",
    "user_claim",
    "entitlements_claim",
    "token_query_param",
    "cache_size",
    "cache_ttl_seconds",
}


@dataclass(frozen=True, slots=True)
class RateLimit:
    rate_per_second: float
    burst: int


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Token buckets per user and per client IP, in memory per replica."""

    per_user: RateLimit | None = None
    per_ip: RateLimit | None = None
    max_keys: int = 100_000


def parse_player_auth(reader: ConfigReader, raw: Any) -> PlayerAuthSettings:
    """The `player_auth` section; it is required, so turning auth off is always explicit."""
    path = "player_auth"
    if raw is None:
        reader.problem(path, "is missing (use `mode: none` explicitly for local development)")
        return PlayerAuthSettings(mode="none")
    section = reader.mapping(raw, path, _AUTH_FIELDS)
    mode = reader.value(section, "mode", path, str, "jwt")
    if mode not in ("jwt", "none"):
        reader.problem(f"{path}.mode", "must be jwt or none")
        return PlayerAuthSettings(mode="none")
    if mode == "none":
        return PlayerAuthSettings(mode="none")
    secret = None
    if "hmac_secret" in section:
        value = reader.secret(section["hmac_secret"], f"{path}.hmac_secret")
        try:
            secret = decode_hmac_secret(value) if value is not None else None
        except ValueError as exc:
            reader.problem(f"{path}.hmac_secret", str(exc))
    jwks = (
        reader.path(section["jwks_file"], f"{path}.jwks_file") if "jwks_file" in section else None
    )
    defaults = PlayerAuthSettings()  # every default is written once, there
    algorithms = reader.value(section, "algorithms", path, list, list(defaults.algorithms))
    settings = PlayerAuthSettings(
        mode="jwt",
        algorithms=tuple(str(a) for a in algorithms),
        hmac_secret=secret,
        jwks_file=jwks,
        jwks_check_seconds=reader.positive(
            section, "jwks_check_seconds", path, float, defaults.jwks_check_seconds
        ),
        issuer=reader.value(section, "issuer", path, str, None),
        audience=reader.value(section, "audience", path, str, None),
        leeway_seconds=reader.value(
            section, "leeway_seconds", path, float, defaults.leeway_seconds
        ),
        max_lifetime_seconds=_max_lifetime(reader, section, path),
        user_claim=reader.value(section, "user_claim", path, str, defaults.user_claim),
        entitlements_claim=reader.value(
            section, "entitlements_claim", path, str, defaults.entitlements_claim
        ),
        token_query_param=reader.value(
            section, "token_query_param", path, str, defaults.token_query_param
        ),
        cache_size=reader.positive(section, "cache_size", path, int, defaults.cache_size),
        cache_ttl_seconds=reader.positive(
            section, "cache_ttl_seconds", path, float, defaults.cache_ttl_seconds
        ),
    )
    for problem in validate_player_auth(settings):
        reader.problem(path, problem)
    return settings


def _max_lifetime(reader: ConfigReader, section: dict[str, Any], path: str) -> float | None:
    """`max_lifetime_seconds`: a day when absent; an explicit `null` accepts any lifetime."""
    if "max_lifetime_seconds" in section and section["max_lifetime_seconds"] is None:
        return None
    value: float | None = reader.positive(
        section, "max_lifetime_seconds", path, float, DEFAULT_MAX_LIFETIME_SECONDS
    )
    return value


def parse_cors(reader: ConfigReader, raw: Any) -> CorsPolicy | None:
    if raw is None:
        return None
    path = "cors"
    section = reader.mapping(raw, path, {"allowed_origins", "allow_credentials", "max_age"})
    origins = reader.value(section, "allowed_origins", path, list, [])
    policy = CorsPolicy(
        allowed_origins=frozenset(str(o) for o in origins),
        allow_credentials=reader.value(section, "allow_credentials", path, bool, False),
        max_age=reader.value(section, "max_age", path, int, 600),
    )
    for problem in validate_cors(policy):
        reader.problem(path, problem)
    return policy


def _parse_limit(reader: ConfigReader, raw: Any, path: str) -> RateLimit | None:
    if raw is None:
        return None
    section = reader.mapping(raw, path, {"rate_per_second", "burst"})
    rate = reader.positive(section, "rate_per_second", path, float, None)
    burst = reader.positive(section, "burst", path, int, None)
    if rate is None or burst is None:
        reader.problem(path, "needs rate_per_second and burst, both greater than 0")
        return None
    return RateLimit(rate, burst)


def parse_rate_limits(reader: ConfigReader, raw: Any) -> RateLimits:
    section = reader.mapping(raw, "rate_limit", {"per_user", "per_ip", "max_keys"})
    return RateLimits(
        per_user=_parse_limit(reader, section.get("per_user"), "rate_limit.per_user"),
        per_ip=_parse_limit(reader, section.get("per_ip"), "rate_limit.per_ip"),
        max_keys=reader.positive(section, "max_keys", "rate_limit", int, 100_000),
    )
