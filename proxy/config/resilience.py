"""The `resilience` section: the overall deadline per player request, and per provider the
circuit breaker, the retry budget and the 4xx statuses that may fall back.

    resilience:
      deadline_seconds: 4          # per player request, every upstream try included
      first_try_share: 0.5         # of what is left, for a try that may be followed
      pool_wait_seconds: 0.1       # the wait for a connection slot, bounded on its own
      circuit_breaker:             # defaults for every provider (one circuit per DRM system)
        window_seconds: 10
        min_requests: 20
        failure_ratio: 0.5
        consecutive_failures: 5
        open_seconds: 5
        max_open_seconds: 60       # the longest a provider's Retry-After keeps it open
        half_open_probes: 2
        enabled: true
      retry_budget:                # one retry at most, before any answer byte, within:
        ratio: 0.1                 #   retries <= max(min_retries, ratio * requests)
        min_retries: 3             #   over window_seconds, per provider
        window_seconds: 10
      fallback_statuses: []        # 4xx answers that may go to the rule's fallback
      providers:                   # per provider (by name): any of the three above
        incoming:
          fallback_statuses: [404] # unknown content at incoming: legacy may hold the keys
          circuit_breaker: {open_seconds: 10}

Every field is optional; a provider's section is merged over the defaults above it. Each
default is explained where its settings class is defined (`BreakerSettings`,
`RetryBudgetSettings`, `DeadlineSettings`). 401 and 429 are not listed in
`fallback_statuses`: they always fall back (our credentials; the provider's load).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.reader import ConfigReader
from proxy.upstream.breaker import BreakerSettings
from proxy.upstream.budget import RetryBudgetSettings
from proxy.upstream.deadline import DeadlineSettings

DEFAULT_SHADOW_MAX_IN_FLIGHT = 32
# Statuses that always fall back, so listing them is a mistake worth a message.
ALWAYS_FALLING_BACK = frozenset({401, 429})
_TOP_FIELDS = {
    "deadline_seconds",
    "first_try_share",
    "pool_wait_seconds",
    "circuit_breaker",
    "retry_budget",
    "fallback_statuses",
    "providers",
    "shadow_max_in_flight",
}
_PROVIDER_FIELDS = {"circuit_breaker", "retry_budget", "fallback_statuses"}
_BREAKER_FIELDS = {
    "window_seconds",
    "min_requests",
    "failure_ratio",
    "consecutive_failures",
    "open_seconds",
    "max_open_seconds",
    "half_open_probes",
    "enabled",
}
_BUDGET_FIELDS = {"ratio", "min_retries", "window_seconds"}


@dataclass(frozen=True, slots=True)
class ProviderResilience:
    """One provider's circuit breakers (one per DRM system, all with these settings), its
    retry budget and the 4xx statuses of its answers that may go to the fallback."""

    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    retry_budget: RetryBudgetSettings = field(default_factory=RetryBudgetSettings)
    fallback_statuses: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """The `resilience` section: the deadline, the defaults and each provider's settings."""

    deadline: DeadlineSettings = field(default_factory=DeadlineSettings)
    defaults: ProviderResilience = field(default_factory=ProviderResilience)
    providers: Mapping[str, ProviderResilience] = field(default_factory=dict)
    # Shadow copies in flight at once per gateway process; past it a copy is dropped (and
    # counted), never queued: shadows use their own connection pools and never wait on
    # live traffic's.
    shadow_max_in_flight: int = DEFAULT_SHADOW_MAX_IN_FLIGHT

    def for_provider(self, name: str) -> ProviderResilience:
        return self.providers.get(name, self.defaults)


def parse_resilience(
    reader: ConfigReader, raw: Any, providers: Collection[str]
) -> ResilienceSettings:
    """The `resilience` section (every problem to `reader`); `providers` are the configured
    provider names, which `resilience.providers` may name."""
    path = "resilience"
    section = reader.mapping(raw, path, _TOP_FIELDS)
    deadline = _parse_deadline(reader, section)
    defaults = _parse_provider(reader, section, path, ProviderResilience())
    raw_overrides = section.get("providers")
    names = set(raw_overrides) if isinstance(raw_overrides, dict) else set()
    overrides = reader.mapping(raw_overrides, f"{path}.providers", names)
    by_provider: dict[str, ProviderResilience] = {}
    for name, value in overrides.items():
        where = f"{path}.providers.{name}"
        if name not in providers:
            known = ", ".join(sorted(providers))
            reader.problem(where, f"unknown provider '{name}' (known: {known})")
            continue
        fields = reader.mapping(value, where, _PROVIDER_FIELDS)
        by_provider[name] = _parse_provider(reader, fields, where, defaults)
    shadow_cap = reader.positive(
        section, "shadow_max_in_flight", path, int, DEFAULT_SHADOW_MAX_IN_FLIGHT
    )
    return ResilienceSettings(deadline, defaults, by_provider, shadow_cap)


def _parse_deadline(reader: ConfigReader, section: Mapping[str, Any]) -> DeadlineSettings:
    path, base = "resilience", DeadlineSettings()
    seconds = reader.positive(section, "deadline_seconds", path, float, base.seconds)
    share = reader.positive(section, "first_try_share", path, float, base.first_try_share)
    if share > 1:
        reader.problem(f"{path}.first_try_share", "must be at most 1")
        share = base.first_try_share
    wait = reader.positive(section, "pool_wait_seconds", path, float, base.pool_wait_seconds)
    if wait >= seconds:
        reader.problem(f"{path}.pool_wait_seconds", "must be less than deadline_seconds")
        wait = base.pool_wait_seconds
    return DeadlineSettings(seconds, share, wait, base.min_try_seconds)


def _parse_provider(
    reader: ConfigReader, section: Mapping[str, Any], path: str, base: ProviderResilience
) -> ProviderResilience:
    return ProviderResilience(
        breaker=_parse_breaker(
            reader, section.get("circuit_breaker"), f"{path}.circuit_breaker", base.breaker
        ),
        retry_budget=_parse_budget(
            reader, section.get("retry_budget"), f"{path}.retry_budget", base.retry_budget
        ),
        fallback_statuses=_parse_statuses(reader, section, path, base.fallback_statuses),
    )


def _parse_breaker(
    reader: ConfigReader, raw: Any, path: str, base: BreakerSettings
) -> BreakerSettings:
    section = reader.mapping(raw, path, _BREAKER_FIELDS)
    ratio = reader.positive(section, "failure_ratio", path, float, base.failure_ratio)
    if ratio > 1:
        reader.problem(f"{path}.failure_ratio", "must be at most 1")
        ratio = base.failure_ratio
    open_seconds = reader.positive(section, "open_seconds", path, float, base.open_seconds)
    max_open = reader.positive(section, "max_open_seconds", path, float, base.max_open_seconds)
    if max_open < open_seconds:
        reader.problem(f"{path}.max_open_seconds", "must be at least open_seconds")
        max_open = max(open_seconds, base.max_open_seconds)
    return BreakerSettings(
        window_seconds=reader.positive(section, "window_seconds", path, float, base.window_seconds),
        min_requests=reader.positive(section, "min_requests", path, int, base.min_requests),
        failure_ratio=ratio,
        consecutive_failures=reader.positive(
            section, "consecutive_failures", path, int, base.consecutive_failures
        ),
        open_seconds=open_seconds,
        max_open_seconds=max_open,
        half_open_probes=reader.positive(
            section, "half_open_probes", path, int, base.half_open_probes
        ),
        enabled=reader.value(section, "enabled", path, bool, base.enabled),
    )


def _parse_budget(
    reader: ConfigReader, raw: Any, path: str, base: RetryBudgetSettings
) -> RetryBudgetSettings:
    section = reader.mapping(raw, path, _BUDGET_FIELDS)
    ratio = reader.value(section, "ratio", path, float, base.ratio)
    if not 0 <= ratio <= 1:
        reader.problem(f"{path}.ratio", "must be between 0 and 1")
        ratio = base.ratio
    floor = reader.value(section, "min_retries", path, int, base.min_retries)
    if floor < 0:
        reader.problem(f"{path}.min_retries", "must be 0 or more")
        floor = base.min_retries
    window = reader.positive(section, "window_seconds", path, float, base.window_seconds)
    return RetryBudgetSettings(ratio, floor, window)


def _parse_statuses(
    reader: ConfigReader, section: Mapping[str, Any], path: str, base: frozenset[int]
) -> frozenset[int]:
    values = reader.value(section, "fallback_statuses", path, list, None)
    if values is None:
        return base
    statuses = set()
    for index, value in enumerate(values):
        where = f"{path}.fallback_statuses[{index}]"
        if not isinstance(value, int) or isinstance(value, bool) or not 400 <= value <= 499:
            reader.problem(where, "must be a 4xx status code")
        elif value in ALWAYS_FALLING_BACK:
            reader.problem(where, f"{value} always falls back: leave it out")
        else:
            statuses.add(value)
    return frozenset(statuses)
