"""Settings of one emulated provider: frozen dataclasses, validated when built.

The emulator deliberately shares no code with the gateway (see DESIGN.md, "Emulated providers"),
so nothing here imports from ``proxy.*`` outside ``proxy.dev.emulator``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EmulatorKind = str  # "legacy", "incoming", or a provider kind of proxy.dev.emulator.kinds

BASE_KINDS: tuple[str, ...] = ("legacy", "incoming")
# The provider kinds emulated from their documentation (see proxy.dev.emulator.kinds).
PROVIDER_KINDS: tuple[str, ...] = (
    "doverunner",
    "axinom",
    "drmtoday",
    "ezdrm",
    "verimatrix",
    "widevine-cloud",
)
KINDS: tuple[str, ...] = (*BASE_KINDS, *PROVIDER_KINDS)
DEMO_SEED = b"drm-gateway-demo-seed"
DEMO_LEGACY_API_KEY = "demo-legacy-api-key"
# Each base emulator's key API (CPIX, export, ingest) has its own bearer token.
DEMO_LEGACY_KEY_API_TOKEN = "demo-legacy-key-api-token"
DEMO_INCOMING_KEY_API_TOKEN = "demo-incoming-key-api-token"
DEMO_KEY_API_TOKENS: Mapping[str, str] = {
    "legacy": DEMO_LEGACY_KEY_API_TOKEN,
    "incoming": DEMO_INCOMING_KEY_API_TOKEN,
}
DEFAULT_TOKEN_HEADER = "X-Drm-Token"
DEFAULT_PORTS: Mapping[str, int] = {"legacy": 8081, "incoming": 8082}
JWT_ALGORITHMS: tuple[str, ...] = ("HS256", "HS512", "RS256", "ES256")

_RATE_FIELDS = ("error_rate", "reset_rate", "error_json_rate")


@dataclass(frozen=True, kw_only=True)
class Faults:
    """Fault modes applied to the license and key routes (all off by default).

    Rates are probabilities in [0, 1], drawn independently per request from an RNG seeded
    with ``seed`` (None: seeded from the OS). ``status`` forces that status (400..599) with a
    JSON error body on every license/key answer, with a ``Retry-After: <retry_after>``
    header when ``retry_after`` (seconds) is set, as a throttling provider sends.
    """

    latency_ms: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    error_json_rate: float = 0.0
    status: int | None = None
    retry_after: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = _fault_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    def as_json(self) -> dict[str, Any]:
        """The fault modes as a JSON-ready dict (the same keys /_emulator/faults accepts)."""
        return asdict(self)


def _fault_problems(faults: Faults) -> list[str]:
    problems: list[str] = []
    if not _is_number(faults.latency_ms) or not 0 <= faults.latency_ms <= 600_000:
        problems.append("'latency_ms' must be a number between 0 and 600000")
    for name in _RATE_FIELDS:
        value = getattr(faults, name)
        if not _is_number(value) or not 0.0 <= value <= 1.0:
            problems.append(f"'{name}' must be a number between 0 and 1")
    status = faults.status
    if status is not None and (not _is_int(status) or not 400 <= status <= 599):
        problems.append("'status' must be null or an integer between 400 and 599")
    retry_after = faults.retry_after
    if retry_after is not None and (not _is_int(retry_after) or not 0 <= retry_after <= 86_400):
        problems.append("'retry_after' must be null or an integer between 0 and 86400")
    if faults.seed is not None and not _is_int(faults.seed):
        problems.append("'seed' must be null or an integer")
    return problems


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def faults_from_json(data: object) -> Faults:
    """Build Faults from a decoded JSON object; unknown keys or bad values raise ValueError.

    Keys that are absent take their default (off), so a body replaces the whole fault set.
    """
    if not isinstance(data, Mapping):
        raise ValueError("the fault settings must be a JSON object")
    known = set(Faults.__dataclass_fields__)
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise ValueError(f"unknown fault setting(s): {', '.join(unknown)}")
    try:
        return Faults(**{str(key): value for key, value in data.items()})
    except TypeError as exc:  # a value of the wrong type that __post_init__ could not compare
        raise ValueError(str(exc)) from exc


@dataclass(frozen=True, kw_only=True)
class EmulatorSettings:
    """Everything one emulated provider needs.

    ``resources`` maps each resource id the provider knows to the id its keys are derived
    from; ``None`` means "accept all" (every resource is known and derives from itself).
    ``jwt_keys`` maps a ``kid`` to an HMAC secret (bytes) or a PEM public key (str, or bytes
    starting with ``-----BEGIN``); ``None`` means any non-empty token is accepted (incoming).
    ``name`` defaults to the kind. ``secrets`` holds a provider kind's own settings and
    secrets by name (see ``proxy.dev.emulator.kinds``); empty for legacy and incoming.

    legacy and incoming only: ``key_api_token`` is the bearer token of the key API (CPIX key
    generation, key export and ingest; None: no key API, its paths answer 404);
    ``key_store_path`` the JSON-lines file the keys it created or received persist in (None:
    memory only). See ``proxy.dev.emulator.keystore`` and ``keyapi``.
    """

    kind: EmulatorKind
    name: str = ""
    seed: bytes = DEMO_SEED
    api_key: str | None = None
    token_header: str = DEFAULT_TOKEN_HEADER
    resources: Mapping[str, str] | None = None
    jwt_keys: Mapping[str, bytes | str] | None = None
    jwt_algorithms: tuple[str, ...] = JWT_ALGORITHMS
    jwt_audience: str | None = None
    resource_id_claim: str = "drmResourceId"
    clock_skew: float = 5.0
    faults: Faults = field(default_factory=Faults)
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    key_api_token: str | None = field(default=None, repr=False)
    key_store_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.kind)
        if self.key_store_path is not None and not isinstance(self.key_store_path, Path):
            object.__setattr__(self, "key_store_path", Path(self.key_store_path))
        problems = _settings_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def accepts_all_resources(self) -> bool:
        """True when no resource list was given: every resource id is known."""
        return self.resources is None

    @property
    def verifies_tokens(self) -> bool:
        """True when tokens are verified as JWTs rather than merely required."""
        return bool(self.jwt_keys)


def _settings_problems(settings: EmulatorSettings) -> list[str]:
    problems: list[str] = []
    if settings.kind not in KINDS:
        problems.append(f"unknown emulator kind {settings.kind!r} (known: {', '.join(KINDS)})")
    if settings.kind == "legacy" and not settings.api_key:
        problems.append("a legacy emulator needs an api key")
    if not settings.seed:
        problems.append("the key derivation seed must not be empty")
    if not settings.token_header.strip():
        problems.append("the token header name must not be empty")
    unknown_algs = sorted(set(settings.jwt_algorithms) - set(JWT_ALGORITHMS))
    if unknown_algs:
        problems.append(f"unsupported JWT algorithm(s): {', '.join(unknown_algs)}")
    if settings.jwt_keys and not settings.jwt_algorithms:
        problems.append("JWT keys are configured but no algorithm is allowed")
    if not all(settings.resource_id_claim.split(".")):
        problems.append(f"bad resource id claim path {settings.resource_id_claim!r}")
    if not _is_number(settings.clock_skew) or settings.clock_skew < 0:
        problems.append("the clock skew must be a non-negative number of seconds")
    problems.extend(_key_side_problems(settings))
    return problems


def _key_side_problems(settings: EmulatorSettings) -> list[str]:
    problems: list[str] = []
    if settings.kind not in BASE_KINDS:
        if settings.key_api_token is not None:
            problems.append("a key API token applies to the legacy and incoming emulators only")
        if settings.key_store_path is not None:
            problems.append("a key store file applies to the legacy and incoming emulators only")
    token = settings.key_api_token
    if token is not None and (
        not token or not token.isprintable() or any(c.isspace() for c in token)
    ):
        problems.append("the key API token must be non-empty printable text without spaces")
    return problems


def load_resource_ids(path: str | Path) -> dict[str, str]:
    """Read a resource-ids file: ``resource`` or ``resource,derivation_id`` per line.

    Blank lines and ``#`` comments are ignored; a line naming only a resource derives its keys
    from the resource itself. Every malformed line is reported at once in one ValueError.
    """
    resources: dict[str, str] = {}
    problems: list[str] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [part.strip() for part in line.split(",")]
        if len(parts) > 2 or not all(parts):
            problems.append(f"line {number}: expected 'resource' or 'resource,derivation_id'")
            continue
        resources[parts[0]] = parts[-1]
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return resources
