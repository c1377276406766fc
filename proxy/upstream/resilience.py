"""Each provider's circuit breakers, retry budget and fallback statuses, held for the
gateway, with their logs and metrics.

One `CircuitBreaker` per (provider, DRM system), since a provider's Widevine service may be
down while its FairPlay one answers; one `RetryBudget` per provider. `Resilience` builds them
from the `resilience` config section, sets every series at 0 at start (so the dashboard and
alerts see them from the first scrape), logs each circuit transition on one line and
keeps `drm_gateway_circuit_state` current (a timer moves an open circuit to half-open when
its interval ends, so the gauge does not say "open" for a provider nobody sends to).
`snapshot()` is the state as data, for a fleet view or the chaos report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.config.resilience import ProviderResilience, ResilienceSettings
from proxy.errors import (
    CircuitOpen,
    UpstreamError,
    UpstreamPoolExhausted,
    UpstreamRejected,
    UpstreamTimeout,
)
from proxy.observability import metrics
from proxy.observability.logs import get_logger
from proxy.upstream.breaker import OPEN, STATE_NAMES, CircuitBreaker
from proxy.upstream.budget import RetryBudget
from proxy.upstream.window import Clock

log = get_logger("circuit")
RETRY_RESULTS = ("retried", "budget_refused")


def is_failure(error: BaseException) -> bool | None:
    """What an upstream try's error says of the provider's health: True a failure (connect
    error, reset, timeout, 5xx, 429, garbled or error-in-200 answer, our credentials
    refused), False an answer (a 4xx about the content: the provider is fine), None no
    verdict (the try never reached the provider, or failed on our side)."""
    if isinstance(error, UpstreamPoolExhausted | CircuitOpen):
        return None
    if isinstance(error, UpstreamRejected):
        return False
    if isinstance(error, UpstreamError | UpstreamTimeout):
        return True
    return None


class Resilience:
    """The breakers and budgets of the configured providers (see the module docstring).

    `served` maps each provider to the DRM systems it has an endpoint for: their circuits
    exist (and are reported) from the start; others are made on first use."""

    def __init__(
        self,
        settings: ResilienceSettings,
        served: Mapping[str, Iterable[str]],
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self.deadline = settings.deadline
        self._clock = clock
        self._circuits: dict[tuple[str, str], CircuitBreaker] = {}
        self._budgets: dict[str, RetryBudget] = {}
        for provider, drms in served.items():
            self.budget(provider)
            for result in RETRY_RESULTS:
                metrics.labelled(metrics.UPSTREAM_RETRIES, provider, result)
            for drm in drms:
                self.circuit(provider, drm)

    def policy(self, provider: str) -> ProviderResilience:
        return self.settings.for_provider(provider)

    def circuit(self, provider: str, drm: str) -> CircuitBreaker:
        """The circuit of `provider` for `drm` (made, and its series set, on first use)."""
        circuit = self._circuits.get((provider, drm))
        if circuit is None:
            circuit = CircuitBreaker(
                self.policy(provider).breaker,
                provider=provider,
                drm=drm,
                on_transition=self._transition,
            )
            self._circuits[provider, drm] = circuit
            metrics.labelled(metrics.CIRCUIT_STATE, provider, drm).set(0)
            metrics.labelled(metrics.CIRCUIT_REJECTED, provider, drm)
            for state in STATE_NAMES:
                metrics.labelled(metrics.CIRCUIT_TRANSITIONS, provider, drm, state)
        return circuit

    def budget(self, provider: str) -> RetryBudget:
        budget = self._budgets.get(provider)
        if budget is None:
            budget = RetryBudget(self.policy(provider).retry_budget)
            self._budgets[provider] = budget
        return budget

    def snapshot(self) -> dict[str, Any]:
        """Every circuit and budget as JSON-ready data."""
        now = self._clock()
        budgets = {}
        for name, budget in sorted(self._budgets.items()):
            requests, retries = budget.counts(now)
            budgets[name] = {"window_requests": requests, "window_retries": retries}
        return {
            "circuits": [c.snapshot(now) for _, c in sorted(self._circuits.items())],
            "retry_budgets": budgets,
        }

    def _transition(
        self, circuit: CircuitBreaker, old: int, new: int, reason: str, now: float
    ) -> None:
        provider, drm = circuit.provider, circuit.drm
        metrics.labelled(metrics.CIRCUIT_STATE, provider, drm).set(new)
        metrics.labelled(metrics.CIRCUIT_TRANSITIONS, provider, drm, STATE_NAMES[new]).inc()
        retry_after = circuit.retry_after(now)
        emit = log.warning if new == OPEN else log.info
        emit(
            "circuit_transition",
            provider=provider,
            drm=drm,
            old=STATE_NAMES[old],
            new=STATE_NAMES[new],
            why=reason,
            **({"open_seconds": round(retry_after, 3)} if new == OPEN else {}),
        )
        if new == OPEN:
            self._schedule_refresh(circuit, retry_after)

    def _schedule_refresh(self, circuit: CircuitBreaker, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test driving a clock): `admit` moves it on
            return
        loop.call_later(delay, lambda: circuit.refresh(self._clock()))
