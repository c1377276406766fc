"""A circuit breaker for one provider and DRM system: closed, open, half-open.

    closed ──(failure ratio over the window, or N consecutive failures)──▶ open
    open ──(open interval passed; the next request is a probe)──▶ half-open
    half-open ──(a probe succeeds)──▶ closed
    half-open ──(a probe fails)──▶ open

State values (the `drm_gateway_circuit_state` gauge) rise with severity, so the maximum
over workers or replicas is the worst one: CLOSED 0, HALF_OPEN 1, OPEN 2.

While closed, every outcome is counted in a sliding window (`SlidingWindow`). It opens when
the window holds at least `min_requests` outcomes and `failure_ratio` of them failed, or
after `consecutive_failures` failures in a row (which catches a dead provider at low
traffic, where the window never reaches its minimum). While open, `admit` refuses at once:
the caller falls back or answers 503 with `retry_after()`, no failed call first. After
`open_seconds` (longer if the provider's Retry-After says so, at most `max_open_seconds`),
up to `half_open_probes` requests at a time go through as probes; the first probe outcome
decides. A dead provider therefore receives at most `half_open_probes` calls per open
interval per (provider, DRM system) and process.

What counts as a failure is the caller's call (`proxy.upstream.resilience.is_failure`):
connect errors, resets, timeouts, 5xx, 429 and garbled answers; a 4xx about the content is
an answer, so a success here. Pure: every method that needs the time takes `now`
(monotonic seconds; the gateway reads its clock once per try), and `on_transition` reports
each change (the gateway logs it and sets the metrics).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from proxy.upstream.window import SlidingWindow

CLOSED: Final = 0
HALF_OPEN: Final = 1
OPEN: Final = 2
STATE_NAMES: Final = ("closed", "half_open", "open")

# What `admit` returns: the caller hands it back with the outcome.
REFUSED: Final = 0
ADMITTED: Final = 1
PROBE: Final = 2

# (breaker, old state, new state, reason, now) -> None
OnTransition = Callable[["CircuitBreaker", int, int, str, float], None]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a provider's circuit opens and for how long. Defaults, and why:

    - `window_seconds` 10: long enough to gather `min_requests` outcomes at modest traffic,
      short enough that a failure burst is judged on seconds-old data.
    - `min_requests` 20: a ratio over fewer calls is noise (1 failure in 3 is 33%).
    - `failure_ratio` 0.5: half the calls failing means the provider is not usable; lower
      ratios would open on the ordinary error rate of a busy provider.
    - `consecutive_failures` 5: a dead provider at low traffic opens after 5 calls; five in
      a row at a healthy 1% error rate happens once in 10^10 calls.
    - `open_seconds` 5: how long a failing provider is left alone before a probe; with
      `half_open_probes` it bounds what a dead provider receives (2 calls per 5 s).
    - `max_open_seconds` 60: the longest a provider's Retry-After may keep it open.
    - `half_open_probes` 2: probes at a time, so one hung probe does not stall recovery.
    - `enabled` True: False keeps every circuit closed (outcomes still counted).
    """

    window_seconds: float = 10.0
    min_requests: int = 20
    failure_ratio: float = 0.5
    consecutive_failures: int = 5
    open_seconds: float = 5.0
    max_open_seconds: float = 60.0
    half_open_probes: int = 2
    enabled: bool = True


class CircuitBreaker:
    """One circuit (see the module docstring). `admit` before a call; then exactly one of
    `success`, `failure` or `release` (no verdict: cancelled, or never sent) with its ticket."""

    __slots__ = (
        "_consecutive",
        "_on_transition",
        "_open_until",
        "_probes",
        "_state",
        "_window",
        "drm",
        "provider",
        "settings",
    )

    def __init__(
        self,
        settings: BreakerSettings,
        *,
        provider: str = "-",
        drm: str = "-",
        on_transition: OnTransition | None = None,
    ) -> None:
        self.settings = settings
        self.provider = provider
        self.drm = drm
        self._on_transition = on_transition
        self._window = SlidingWindow(settings.window_seconds)
        self._state: int = CLOSED
        self._consecutive = 0
        self._probes = 0
        self._open_until = 0.0

    @property
    def state(self) -> int:
        """CLOSED, HALF_OPEN or OPEN (an open circuit whose interval has passed reports
        OPEN until `admit` or `refresh` moves it on)."""
        return self._state

    @property
    def closed(self) -> bool:
        return self._state == CLOSED

    def admit(self, now: float) -> int:
        """ADMITTED, PROBE (half-open: this call decides) or REFUSED (do not send)."""
        if self._state == CLOSED:
            return ADMITTED
        if self._state == OPEN:
            if now < self._open_until:
                return REFUSED
            self._move(HALF_OPEN, "open_interval_passed", now)
        if self._probes < self.settings.half_open_probes:
            self._probes += 1
            return PROBE
        return REFUSED

    def success(self, ticket: int, now: float) -> None:
        """The call got a usable answer (or a 4xx about the content)."""
        if ticket == PROBE:
            self._probes -= 1
            if self._state == HALF_OPEN:
                self._move(CLOSED, "probe_succeeded", now)
            return
        self._consecutive = 0
        if self._state == CLOSED:
            self._window.add(now)

    def failure(self, ticket: int, now: float, *, retry_after: float | None = None) -> None:
        """The call failed (see the module docstring); `retry_after` is the provider's own
        advice in seconds, honoured as the open interval if it is longer."""
        if ticket == PROBE:
            self._probes -= 1
            if self._state == HALF_OPEN:
                self._open("probe_failed", retry_after, now)
            return
        if self._state != CLOSED:
            return  # a call admitted before the circuit opened: already judged
        self._consecutive += 1
        window = self._window
        window.add_hit(now)
        if not self.settings.enabled:
            return
        if self._consecutive >= self.settings.consecutive_failures:
            self._open("consecutive_failures", retry_after, now)
        elif (
            window.total >= self.settings.min_requests
            and window.hits >= self.settings.failure_ratio * window.total
        ):
            self._open("failure_ratio", retry_after, now)

    def release(self, ticket: int) -> None:
        """The call ended without a verdict: a probe slot is freed for another request."""
        if ticket == PROBE:
            self._probes -= 1

    def retry_after(self, now: float) -> float:
        """Seconds until a request may be admitted again (a player's Retry-After)."""
        if self._state == OPEN:
            return max(0.0, self._open_until - now)
        return 0.0 if self._state == CLOSED else 1.0  # half-open: the probes decide soon

    def refresh(self, now: float) -> None:
        """Move an open circuit whose interval has passed to half-open (a timer calls this,
        so the state metric does not stay `open` for a provider nobody sends to)."""
        if self._state == OPEN and now >= self._open_until:
            self._move(HALF_OPEN, "open_interval_passed", now)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The circuit as JSON-ready data (fleet view, chaos report)."""
        total, failures = self._window.counts(now)
        return {
            "provider": self.provider,
            "drm": self.drm,
            "state": STATE_NAMES[self._state],
            "window_calls": total,
            "window_failures": failures,
            "consecutive_failures": self._consecutive,
            "probes_in_flight": self._probes,
            "retry_after_seconds": math.ceil(self.retry_after(now)),
        }

    def _open(self, reason: str, retry_after: float | None, now: float) -> None:
        settings = self.settings
        interval = settings.open_seconds
        if retry_after is not None and retry_after > interval:
            interval = min(retry_after, settings.max_open_seconds)
        self._open_until = now + interval
        self._move(OPEN, reason, now)

    def _move(self, state: int, reason: str, now: float) -> None:
        old = self._state
        self._state = state
        if state != HALF_OPEN:  # judged afresh from here
            self._window.clear()
            self._consecutive = 0
        if self._on_transition is not None:
            self._on_transition(self, old, state, reason, now)
