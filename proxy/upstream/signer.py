"""Per-request provider tokens: JWTs signed from a claims template (pure; no I/O at sign time).

The config loader reads secrets and PEM files and builds `TokenSettings`; `validate_settings`
reports every problem at once; `TokenSigner` parses the keys once and signs one token per
upstream request; `proxy.cli.token_check` holds the verifier side (`drm-gateway token verify`).
No message built here ever holds a token or key material.

Template strings use `str.format` syntax restricted to bare names: `{drm_resource_id}`,
`{asset_id}`, `{drm}`, `{user_id}`, `{request_id}`; `{{` and `}}` are literal braces. A string
that is exactly one placeholder takes the value as is (`None` becomes JSON null); inside a
longer string a `None` value renders as "".
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import secrets
import string
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import get_default_algorithms

from proxy.domain import HTTP_TOKEN, RSA_MIN_BITS
from proxy.errors import MissingResourceId

Algorithm = Literal["HS256", "HS512", "RS256", "ES256"]
ALGORITHMS: tuple[Algorithm, ...] = ("HS256", "HS512", "RS256", "ES256")
PLACEHOLDERS = frozenset({"drm_resource_id", "asset_id", "drm", "user_id", "request_id"})
RESERVED_CLAIMS = frozenset({"iat", "exp", "jti", "nbf"})

# RFC 7518 §3.2: an HMAC key at least as long as the hash output.
HMAC_MIN_BYTES = {"HS256": 32, "HS512": 64}
_FORMATTER = string.Formatter()
# One encoder instance: json.dumps with non-default options builds a new one per call.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key: an HMAC secret or PEM private key bytes, named by its `kid`."""

    kid: str
    material: bytes = field(repr=False)


def _default_claims() -> dict[str, Any]:
    return {"drmResourceId": "{drm_resource_id}", "drm": "{drm}"}


DEFAULT_TOKEN_HEADER = "X-Drm-Token"
DEFAULT_TOKEN_LIFETIME = 60


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """How one provider wants its per-request token built and sent."""

    algorithm: Algorithm
    keys: tuple[SigningKey, ...]
    active_kid: str
    header: str | None = DEFAULT_TOKEN_HEADER
    query_param: str | None = None
    lifetime_seconds: int = DEFAULT_TOKEN_LIFETIME
    nbf_skew_seconds: int | None = None
    claims: Mapping[str, Any] = field(default_factory=_default_claims)
    issuer: str | None = None


@dataclass(frozen=True, slots=True)
class TokenContext:
    """The per-request values that template placeholders refer to."""

    drm_resource_id: str | None
    asset_id: str
    drm: str
    user_id: str | None = None
    request_id: str | None = None


def decode_hmac_secret(value: str) -> bytes:
    """Turn a configured HMAC secret into bytes.

    `base64:<text>` is decoded (standard or URL-safe alphabet, padding optional); anything
    else is the secret itself as UTF-8. ValueError (never quoting the secret) if invalid.
    """
    if value.startswith("base64:"):
        text = "".join(value[len("base64:") :].split()).replace("-", "+").replace("_", "/")
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except binascii.Error:
            raise ValueError("HMAC secret after 'base64:' is not valid base64") from None
    return value.encode("utf-8")


def load_private_key(algorithm: Algorithm, material: bytes) -> Any:
    """Parse key material for `algorithm` into what signing needs; ValueError says why not."""
    if algorithm in HMAC_MIN_BYTES:
        minimum = HMAC_MIN_BYTES[algorithm]
        if len(material) < minimum:
            raise ValueError(
                f"HMAC secret is {len(material)} bytes; {algorithm} needs at least {minimum}"
            )
        if material.lstrip().startswith(b"-----BEGIN"):
            raise ValueError(f"looks like a PEM key, not an HMAC secret for {algorithm}")
        return material
    key = _load_pem_private_key(material)
    if algorithm == "RS256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("RS256 needs an RSA private key")
        if key.key_size < RSA_MIN_BITS:
            raise ValueError(f"RSA key is {key.key_size} bits; RS256 needs at least {RSA_MIN_BITS}")
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("ES256 needs an EC P-256 private key")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"EC key is on curve {key.curve.name}; ES256 needs P-256 (secp256r1)")
    return key


def _load_pem_private_key(material: bytes) -> Any:
    try:
        return serialization.load_pem_private_key(material, password=None)
    except TypeError:
        raise ValueError("is an encrypted PEM key; provide it unencrypted") from None
    except UnsupportedAlgorithm:
        raise ValueError("uses an unsupported key type") from None
    except ValueError:
        pass
    try:
        serialization.load_pem_public_key(material)
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("is not a PEM private key") from None
    raise ValueError("is a public key; the signer needs the private key")


def validate_settings(s: TokenSettings) -> list[str]:
    """Every problem with `s`, each as "field: problem"; [] when the settings are usable."""
    problems: list[str] = []
    if s.algorithm not in ALGORITHMS:
        problems.append(
            f"algorithm: unsupported {s.algorithm!r} (use one of {join_names(ALGORITHMS)})"
        )
    problems += _key_problems(s)
    if not isinstance(s.lifetime_seconds, int) or s.lifetime_seconds <= 0:
        problems.append(f"lifetime_seconds: must be a positive integer, got {s.lifetime_seconds!r}")
    if s.nbf_skew_seconds is not None and (
        not isinstance(s.nbf_skew_seconds, int) or s.nbf_skew_seconds < 0
    ):
        problems.append(f"nbf_skew_seconds: must be >= 0, got {s.nbf_skew_seconds!r}")
    problems += _transport_problems(s)
    if s.issuer is not None and not s.issuer:
        problems.append("issuer: must not be empty (leave it unset for no iss claim)")
    problems += _claims_problems(s)
    return problems


def _key_problems(s: TokenSettings) -> list[str]:
    if not s.keys:
        return ["keys: at least one signing key is required"]
    problems: list[str] = []
    seen: set[str] = set()
    for i, key in enumerate(s.keys):
        if not key.kid:
            problems.append(f"keys[{i}].kid: must not be empty")
        elif key.kid in seen:
            problems.append(f"keys[{i}].kid: duplicate kid {key.kid!r}")
        seen.add(key.kid)
        if not isinstance(key.material, bytes):
            problems.append(f"keys[{i}].material: must be bytes")
        elif s.algorithm in ALGORITHMS:
            try:
                load_private_key(s.algorithm, key.material)
            except ValueError as exc:
                problems.append(f"keys[{i}].material: {exc}")
    if s.active_kid not in seen:
        problems.append(f"active_kid: {s.active_kid!r} is not one of the kids ({join_names(seen)})")
    return problems


def _transport_problems(s: TokenSettings) -> list[str]:
    if (s.header is None) == (s.query_param is None):
        return ["header: set exactly one of header and query_param"]
    if s.header is not None and not HTTP_TOKEN.match(s.header):
        return [f"header: {s.header!r} is not a valid HTTP header name"]
    if s.query_param is not None and not s.query_param:
        return ["query_param: must not be empty"]
    return []


def _claims_problems(s: TokenSettings) -> list[str]:
    if not isinstance(s.claims, Mapping):
        return ["claims: must be a mapping of claim names to values"]
    problems = [
        f"claims.{name}: reserved claim; the signer adds iat, exp, nbf and jti itself"
        for name in s.claims
        if name in RESERVED_CLAIMS
    ]
    if s.issuer is not None and "iss" in s.claims:
        problems.append("claims.iss: conflicts with issuer; set the issuer in one place")
    problems += _template_problems(s.claims, "claims")
    if not problems and "drm_resource_id" not in _used_placeholders(s.claims):
        problems.append("claims: the template must use {drm_resource_id} somewhere")
    return problems


def _template_problems(node: Any, path: str) -> list[str]:
    if isinstance(node, str):
        try:
            parts = _parse_string(node)
        except ValueError as exc:
            return [f"{path}: malformed placeholder ({exc})"]
        return [
            f"{path}: unknown placeholder {{{name}}} (known: {join_names(PLACEHOLDERS)})"
            for _, name in parts
            if name is not None and name not in PLACEHOLDERS
        ]
    if isinstance(node, Mapping):
        problems: list[str] = []
        for key, value in node.items():
            if not isinstance(key, str):
                problems.append(f"{path}: claim names must be strings, got {key!r}")
            else:
                problems += _template_problems(value, f"{path}.{key}")
        return problems
    if isinstance(node, list | tuple):
        return [p for i, v in enumerate(node) for p in _template_problems(v, f"{path}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{path}: {node!r} cannot be encoded as JSON"]
    if node is None or isinstance(node, bool | int | float):
        return []
    return [f"{path}: unsupported value type {type(node).__name__}"]


def _used_placeholders(node: Any) -> set[str]:
    if isinstance(node, str):
        return {name for _, name in _parse_string(node) if name is not None}
    if isinstance(node, Mapping):
        node = list(node.values())
    if isinstance(node, list | tuple):
        return set().union(*map(_used_placeholders, node))
    return set()


def _parse_string(text: str) -> list[tuple[str, str | None]]:
    """Split into (literal, placeholder name or None) pairs; ValueError when malformed."""
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in _FORMATTER.parse(text):
        if name is not None and (spec or conversion):
            raise ValueError(f"{{{name}}} may not carry a format spec or conversion")
        parts.append((literal, name))
    return parts


def join_names(values: Any) -> str:
    """The values sorted and comma-separated, or "none" (for messages)."""
    return ", ".join(sorted(values)) or "none"


# -- rendering: the template is compiled once into renderers; constant subtrees are reused.

_Renderer = Callable[[TokenContext], Any]


def render_claims(template: Mapping[str, Any], ctx: TokenContext) -> dict[str, Any]:
    """Render a claims template (nested dicts and lists) with the values in `ctx`."""
    result: dict[str, Any] = _compile_claims(template)(ctx)
    return result


def _compile_claims(template: Mapping[str, Any]) -> _Renderer:
    render = _compile(template)
    if render is not None:
        return render
    constant = _constant(template)
    return lambda _ctx: dict(constant)


def _compile(node: Any) -> _Renderer | None:
    """A renderer for a node holding placeholders; None for a constant node."""
    if isinstance(node, str):
        return _compile_string(node)
    if isinstance(node, Mapping | list | tuple):
        return _compile_container(node)
    return None


def _compile_container(node: Mapping[Any, Any] | list[Any] | tuple[Any, ...]) -> _Renderer | None:
    keys = node.keys() if isinstance(node, Mapping) else range(len(node))
    renderers = [(key, r) for key in keys if (r := _compile(node[key])) is not None]
    if not renderers:
        return None
    shape = _constant(node)  # a fresh dict or list; the dynamic slots are refilled per render

    def render(ctx: TokenContext) -> Any:
        out = shape.copy()
        for key, renderer in renderers:
            out[key] = renderer(ctx)
        return out

    return render


def _compile_string(text: str) -> _Renderer | None:
    parts = _parse_string(text)
    names = [name for _, name in parts if name is not None]
    if not names:
        return None
    unknown = set(names) - PLACEHOLDERS
    if unknown:
        raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} in claims template")
    if len(parts) == 1 and not parts[0][0]:
        return attrgetter(names[0])  # exactly one placeholder: keep None as JSON null
    getters = [(literal, attrgetter(name) if name else None) for literal, name in parts]

    def render(ctx: TokenContext) -> str:
        return "".join(lit + ((get(ctx) or "") if get else "") for lit, get in getters)

    return render


def _constant(node: Any) -> Any:
    """A private copy of a constant node (braces unescaped), so renders never alias config."""
    if isinstance(node, str):
        return "".join(literal for literal, _ in _parse_string(node))
    if isinstance(node, Mapping):
        return {key: _constant(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_constant(value) for value in node]
    return node


# -- signing


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def raise_if_invalid(s: TokenSettings) -> None:
    """Raise ValueError listing every problem `validate_settings` finds in `s`."""
    problems = validate_settings(s)
    if problems:
        raise ValueError("invalid token settings: " + "; ".join(problems))


class TokenSigner:
    """Signs one short-lived JWT per upstream request with the active key."""

    __slots__ = ("_clock", "_key", "_prefix", "_render", "_sign", "_static_tail", "settings")

    def __init__(self, settings: TokenSettings, *, clock: Callable[[], float] = time.time) -> None:
        raise_if_invalid(settings)
        self.settings = settings
        self._clock = clock
        active = next(k for k in settings.keys if k.kid == settings.active_kid)
        self._key = load_private_key(settings.algorithm, active.material)
        # pyjwt's algorithm object does the per-alg work (e.g. DER -> raw r||s for ES256).
        self._sign = get_default_algorithms()[settings.algorithm].sign
        header = {"alg": settings.algorithm, "kid": settings.active_kid, "typ": "JWT"}
        self._prefix = _b64(_JSON.encode(header).encode("ascii")) + b"."
        self._render = _compile_claims(settings.claims)
        self._static_tail = {"iss": settings.issuer} if settings.issuer else {}

    def __repr__(self) -> str:
        s = self.settings
        kids = tuple(k.kid for k in s.keys)
        return f"TokenSigner(algorithm={s.algorithm!r}, active_kid={s.active_kid!r}, kids={kids})"

    @property
    def header(self) -> str | None:
        """The request header that carries the token, or None when it goes in the query."""
        return self.settings.header

    @property
    def query_param(self) -> str | None:
        """The query parameter that carries the token, or None when it goes in a header."""
        return self.settings.query_param

    @property
    def active_kid(self) -> str:
        """The kid of the key that signs new tokens."""
        return self.settings.active_kid

    def sign(self, ctx: TokenContext) -> str:
        """A fresh token for `ctx`; MissingResourceId if the asset has no drmResourceId."""
        if not ctx.drm_resource_id:
            raise MissingResourceId(
                f"Asset {ctx.asset_id!r} has no drmResourceId; no provider token was signed."
            )
        payload: dict[str, Any] = self._render(ctx)
        iat = int(self._clock())
        payload["iat"] = iat
        payload["exp"] = iat + self.settings.lifetime_seconds
        if self.settings.nbf_skew_seconds is not None:
            payload["nbf"] = iat - self.settings.nbf_skew_seconds
        payload["jti"] = secrets.token_urlsafe(16)
        payload.update(self._static_tail)
        signing_input = self._prefix + _b64(_JSON.encode(payload).encode("ascii"))
        return (signing_input + b"." + _b64(self._sign(signing_input, self._key))).decode("ascii")


def segment_bytes(segment: str) -> bytes:
    """One JWT segment, base64url with or without padding, decoded (ValueError if not)."""
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("a segment is not base64url") from None


def segment_json(segment: str) -> dict[str, Any]:
    """A JWT header or claims segment as its JSON object (ValueError if it is none)."""
    try:
        document = json.loads(segment_bytes(segment))
    except (ValueError, RecursionError):
        raise ValueError("a segment is not base64url JSON") from None
    if not isinstance(document, dict):
        raise ValueError("a segment is not a JSON object")
    return document
