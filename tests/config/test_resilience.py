"""The `resilience` section: defaults, per-provider overrides merged over them, and every
problem reported with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.resilience import ProviderResilience, ResilienceSettings
from proxy.upstream.breaker import BreakerSettings
from proxy.upstream.budget import RetryBudgetSettings
from proxy.upstream.deadline import DeadlineSettings
from tests.conftest import ENV, gateway_raw_config


def raw_with(resilience: Any) -> dict[str, Any]:
    raw = gateway_raw_config(Path("catalog.db"), "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["resilience"] = resilience
    return raw


def settings_of(resilience: Any) -> ResilienceSettings:
    return parse_config(raw_with(resilience), base_dir=Path("/srv"), env=ENV).resilience


def problems_of(resilience: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw_with(resilience), base_dir=Path("/srv"), env=ENV)
    return info.value.problems


def test_without_the_section_every_default_applies() -> None:
    config = parse_config(
        gateway_raw_config(Path("c.db"), "http://127.0.0.1:1", "http://127.0.0.1:2"),
        base_dir=Path("/srv"),
        env=ENV,
    )
    assert config.resilience == ResilienceSettings()
    assert config.resilience.deadline == DeadlineSettings(4.0, 0.5, 0.1, 0.05)
    incoming = config.resilience.for_provider("incoming")
    assert incoming == ProviderResilience(BreakerSettings(), RetryBudgetSettings(), frozenset())
    assert (incoming.breaker.consecutive_failures, incoming.breaker.open_seconds) == (5, 5.0)
    assert (incoming.retry_budget.ratio, incoming.retry_budget.min_retries) == (0.1, 3)


def test_a_provider_section_is_merged_over_the_defaults() -> None:
    settings = settings_of(
        {
            "deadline_seconds": 3,
            "pool_wait_seconds": 0.05,
            "circuit_breaker": {"open_seconds": 10, "min_requests": 50},
            "retry_budget": {"ratio": 0.2},
            "fallback_statuses": [410],
            "providers": {
                "incoming": {
                    "circuit_breaker": {"open_seconds": 2},
                    "fallback_statuses": [404, 410],
                }
            },
        }
    )
    assert (settings.deadline.seconds, settings.deadline.pool_wait_seconds) == (3.0, 0.05)
    legacy, incoming = settings.for_provider("legacy"), settings.for_provider("incoming")
    assert (legacy.breaker.open_seconds, legacy.breaker.min_requests) == (10.0, 50)
    assert legacy.fallback_statuses == {410}
    assert (incoming.breaker.open_seconds, incoming.breaker.min_requests) == (2.0, 50)
    assert incoming.retry_budget.ratio == 0.2  # from the defaults above it
    assert incoming.fallback_statuses == {404, 410}


def test_every_problem_is_reported_with_its_path() -> None:
    problems = problems_of(
        {
            "deadline_seconds": 0,
            "first_try_share": 1.5,
            "circuit_breaker": {
                "failure_ratio": 2,
                "open_seconds": 10,
                "max_open_seconds": 5,
                "half_open_probes": 0,
                "enabled": "yes",
                "colour": "red",
            },
            "retry_budget": {"ratio": -0.1, "min_retries": -1},
            "fallback_statuses": [500, 429, "404"],
            "providers": {"nobody": {}, "incoming": {"circuit_breaker": {"min_requests": 1.5}}},
        }
    )
    assert problems == [
        "resilience.deadline_seconds: must be greater than 0",
        "resilience.first_try_share: must be at most 1",
        "resilience.circuit_breaker.colour: unknown field",
        "resilience.circuit_breaker.failure_ratio: must be at most 1",
        "resilience.circuit_breaker.max_open_seconds: must be at least open_seconds",
        "resilience.circuit_breaker.half_open_probes: must be greater than 0",
        "resilience.circuit_breaker.enabled: must be true or false",
        "resilience.retry_budget.ratio: must be between 0 and 1",
        "resilience.retry_budget.min_retries: must be 0 or more",
        "resilience.fallback_statuses[0]: must be a 4xx status code",
        "resilience.fallback_statuses[1]: 429 always falls back: leave it out",
        "resilience.fallback_statuses[2]: must be a 4xx status code",
        "resilience.providers.nobody: unknown provider 'nobody' (known: incoming, legacy)",
        "resilience.providers.incoming.circuit_breaker.min_requests: must be an integer",
    ]


def test_the_pool_wait_must_fit_in_the_deadline() -> None:
    assert problems_of({"deadline_seconds": 1, "pool_wait_seconds": 1}) == [
        "resilience.pool_wait_seconds: must be less than deadline_seconds"
    ]


def test_a_section_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of([1]) == ["resilience: must be a mapping"]
    assert problems_of({"providers": 5}) == ["resilience.providers: must be a mapping"]


def test_the_shadow_cap_defaults_to_32_and_must_be_positive() -> None:
    assert settings_of(None).shadow_max_in_flight == 32
    assert settings_of({"shadow_max_in_flight": 4}).shadow_max_in_flight == 4
    assert problems_of({"shadow_max_in_flight": 0}) == [
        "resilience.shadow_max_in_flight: must be greater than 0"
    ]
