"""The circuit breaker's state machine, the sliding window under it and the retry budget,
driven by an explicit clock (every method takes `now`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from proxy.upstream.breaker import (
    ADMITTED,
    CLOSED,
    HALF_OPEN,
    OPEN,
    PROBE,
    REFUSED,
    BreakerSettings,
    CircuitBreaker,
)
from proxy.upstream.budget import RetryBudget, RetryBudgetSettings
from proxy.upstream.window import SlidingWindow

T0 = 1_000.0  # an arbitrary monotonic time


@dataclass
class Recorder:
    """Every transition a breaker reports: (old, new, reason, now)."""

    seen: list[tuple[str, str, str, float]] = field(default_factory=list)

    def __call__(self, breaker: CircuitBreaker, old: int, new: int, why: str, now: float) -> None:
        names = ("closed", "half_open", "open")
        self.seen.append((names[old], names[new], why, now))


def breaker(recorder: Recorder | None = None, **settings: object) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerSettings(**settings),  # type: ignore[arg-type]
        provider="incoming",
        drm="widevine",
        on_transition=recorder,
    )


def fail(b: CircuitBreaker, now: float, times: int = 1, retry_after: float | None = None) -> None:
    for _ in range(times):
        b.failure(b.admit(now), now, retry_after=retry_after)


def succeed(b: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        b.success(b.admit(now), now)


# --- sliding window --------------------------------------------------------------------------


def test_window_counts_and_forgets_buckets_as_they_leave() -> None:
    window = SlidingWindow(10.0)  # ten 1 s buckets
    window.add(T0)
    window.add_hit(T0 + 0.5)
    window.add_hit(T0 + 3.2, total=False)
    assert window.counts(T0 + 3.5) == (2, 2)
    assert window.counts(T0 + 9.9) == (2, 2)  # the T0 bucket is still in
    assert window.counts(T0 + 10.0) == (0, 1)  # ... and out: only the hit at 3.2 remains
    assert window.counts(T0 + 12.9) == (0, 1)
    assert window.counts(T0 + 13.0) == (0, 0)


def test_window_starts_afresh_after_a_long_pause_or_a_clock_step_back() -> None:
    window = SlidingWindow(10.0)
    for i in range(5):
        window.add(T0 + i)
    assert window.counts(T0 + 100) == (0, 0)
    window.add(T0 + 100)
    assert window.counts(T0 + 50) == (0, 0)  # stepped back: nothing can be trusted


def test_window_refuses_an_empty_span() -> None:
    with pytest.raises(ValueError):
        SlidingWindow(0)


# --- closed -> open --------------------------------------------------------------------------


def test_a_closed_circuit_admits_and_stays_closed_below_the_minimum() -> None:
    b = breaker(min_requests=20, consecutive_failures=100)
    for i in range(19):
        fail(b, T0 + i * 0.01)
    assert b.state == CLOSED and b.admit(T0 + 1) == ADMITTED


def test_it_opens_on_the_failure_ratio_once_the_minimum_is_reached() -> None:
    recorder = Recorder()
    b = breaker(recorder, min_requests=20, failure_ratio=0.5, consecutive_failures=100)
    for i in range(10):  # alternate: 50% failures, never 2 in a row
        succeed(b, T0 + i * 0.1)
        if i < 9:
            fail(b, T0 + i * 0.1 + 0.05)
    assert b.state == CLOSED  # 19 calls, 9 failures
    fail(b, T0 + 1.0)  # the 20th call, 10 failures: 50%
    assert b.state == OPEN
    assert recorder.seen == [("closed", "open", "failure_ratio", T0 + 1.0)]


def test_it_stays_closed_under_the_ratio() -> None:
    b = breaker(min_requests=20, failure_ratio=0.5, consecutive_failures=100)
    for i in range(100):
        (fail if i % 3 == 0 else succeed)(b, T0 + i * 0.05)  # 33% failures
    assert b.state == CLOSED


def test_old_failures_leave_the_window() -> None:
    b = breaker(min_requests=10, failure_ratio=0.5, consecutive_failures=100, window_seconds=10)
    fail(b, T0, 9)
    succeed(b, T0 + 10.5)  # the failures' bucket has left: 1 call, 0 failures
    fail(b, T0 + 10.6)
    assert b.state == CLOSED


def test_it_opens_on_consecutive_failures_and_a_success_resets_the_run() -> None:
    recorder = Recorder()
    b = breaker(recorder, consecutive_failures=5, min_requests=1000)
    fail(b, T0, 4)
    succeed(b, T0)
    fail(b, T0, 4)
    assert b.state == CLOSED
    fail(b, T0 + 0.5)
    assert b.state == OPEN
    assert recorder.seen == [("closed", "open", "consecutive_failures", T0 + 0.5)]


def test_a_disabled_breaker_never_opens() -> None:
    b = breaker(enabled=False, consecutive_failures=1, min_requests=1)
    fail(b, T0, 100)
    assert b.state == CLOSED and b.admit(T0) == ADMITTED


# --- open ------------------------------------------------------------------------------------


def test_an_open_circuit_refuses_until_its_interval_ends() -> None:
    b = breaker(consecutive_failures=1, open_seconds=5)
    fail(b, T0)
    assert b.admit(T0 + 4.99) == REFUSED
    assert b.retry_after(T0 + 1) == pytest.approx(4.0)
    assert b.snapshot(T0 + 1)["retry_after_seconds"] == 4
    assert b.admit(T0 + 5.0) == PROBE
    assert b.state == HALF_OPEN


def test_late_outcomes_of_calls_admitted_before_opening_are_ignored() -> None:
    b = breaker(consecutive_failures=2, open_seconds=5)
    early = [b.admit(T0) for _ in range(3)]
    b.failure(early[0], T0)
    b.failure(early[1], T0)
    assert b.state == OPEN
    b.success(early[2], T0 + 0.1)  # answered late: does not close the circuit
    b.failure(b.admit(T0 + 0.2), T0 + 0.2)  # refused ticket: nothing happens
    assert b.state == OPEN and b.retry_after(T0) == pytest.approx(5.0)


def test_a_provider_retry_after_lengthens_the_open_interval_up_to_the_cap() -> None:
    b = breaker(consecutive_failures=1, open_seconds=5, max_open_seconds=30)
    fail(b, T0, retry_after=12)
    assert b.retry_after(T0) == pytest.approx(12)
    c = breaker(consecutive_failures=1, open_seconds=5, max_open_seconds=30)
    fail(c, T0, retry_after=3600)
    assert c.retry_after(T0) == pytest.approx(30)
    d = breaker(consecutive_failures=1, open_seconds=5)
    fail(d, T0, retry_after=1)  # shorter than open_seconds: the interval stands
    assert d.retry_after(T0) == pytest.approx(5)


def test_refresh_moves_an_expired_open_circuit_to_half_open() -> None:
    recorder = Recorder()
    b = breaker(recorder, consecutive_failures=1, open_seconds=5)
    fail(b, T0)
    b.refresh(T0 + 4)
    assert b.state == OPEN
    b.refresh(T0 + 5)
    assert b.state == HALF_OPEN
    assert recorder.seen[-1] == ("open", "half_open", "open_interval_passed", T0 + 5)


# --- half-open -------------------------------------------------------------------------------


def test_half_open_admits_a_few_probes_at_a_time() -> None:
    b = breaker(consecutive_failures=1, open_seconds=5, half_open_probes=2)
    fail(b, T0)
    now = T0 + 5
    first, second, third = b.admit(now), b.admit(now), b.admit(now)
    assert (first, second, third) == (PROBE, PROBE, REFUSED)
    assert b.retry_after(now) == 1.0
    b.release(first)  # e.g. the player went away: its slot goes to another request
    assert b.admit(now) == PROBE


def test_a_probe_success_closes_the_circuit_afresh() -> None:
    recorder = Recorder()
    b = breaker(recorder, consecutive_failures=3, open_seconds=5, half_open_probes=2)
    fail(b, T0, 3)
    probe, other = b.admit(T0 + 5), b.admit(T0 + 5)
    b.success(probe, T0 + 5.1)
    assert b.state == CLOSED
    b.failure(other, T0 + 5.2)  # the other probe's outcome no longer decides
    assert b.state == CLOSED
    fail(b, T0 + 5.3, 2)  # the run of failures starts from 0 again
    assert b.state == CLOSED
    assert [(old, new, why) for old, new, why, _ in recorder.seen] == [
        ("closed", "open", "consecutive_failures"),
        ("open", "half_open", "open_interval_passed"),
        ("half_open", "closed", "probe_succeeded"),
    ]


def test_a_probe_failure_opens_the_circuit_again() -> None:
    recorder = Recorder()
    b = breaker(recorder, consecutive_failures=1, open_seconds=5)
    fail(b, T0)
    probe = b.admit(T0 + 5)
    b.failure(probe, T0 + 5.5)
    assert b.state == OPEN and b.admit(T0 + 10.4) == REFUSED and b.admit(T0 + 10.5) == PROBE
    assert recorder.seen[2][:3] == ("half_open", "open", "probe_failed")


def test_a_dead_provider_gets_only_the_probes() -> None:
    """Over a minute of requests every 10 ms to a dead provider, what is sent: the calls
    that opened it, then at most `half_open_probes` per open interval."""
    b = breaker(consecutive_failures=5, open_seconds=5, half_open_probes=2)
    sent = 0
    now = T0
    pending: list[int] = []
    while now < T0 + 60:
        ticket = b.admit(now)
        if ticket != REFUSED:
            sent += 1
            pending.append(ticket)
        if len(pending) >= 2 or (pending and b.state != HALF_OPEN):
            for t in pending:  # the probes fail after a little while
                b.failure(t, now)
            pending.clear()
        now += 0.01
    assert sent <= 5 + 2 * (60 // 5)


def test_snapshot_is_json_ready() -> None:
    b = breaker(consecutive_failures=2)
    fail(b, T0)
    assert b.snapshot(T0) == {
        "provider": "incoming",
        "drm": "widevine",
        "state": "closed",
        "window_calls": 1,
        "window_failures": 1,
        "consecutive_failures": 1,
        "probes_in_flight": 0,
        "retry_after_seconds": 0,
    }


# --- retry budget ----------------------------------------------------------------------------


def test_the_floor_lets_a_quiet_provider_retry() -> None:
    budget = RetryBudget(RetryBudgetSettings(ratio=0.1, min_retries=3, window_seconds=10))
    assert [budget.allow_retry(T0) for _ in range(4)] == [True, True, True, False]
    assert budget.counts(T0) == (0, 3)


def test_retries_stay_within_the_ratio_of_requests() -> None:
    budget = RetryBudget(RetryBudgetSettings(ratio=0.1, min_retries=3, window_seconds=10))
    for i in range(100):
        budget.request(T0 + i * 0.01)
    allowed = sum(budget.allow_retry(T0 + 1) for _ in range(50))
    assert allowed == 10  # 10% of 100, above the floor of 3
    for _ in range(9):
        budget.request(T0 + 1)
    assert not budget.allow_retry(T0 + 1)  # an 11th retry would exceed 0.1 * 109
    budget.request(T0 + 1)
    assert budget.allow_retry(T0 + 1)  # 110 requests allow 11


def test_the_budget_refills_as_the_window_slides() -> None:
    budget = RetryBudget(RetryBudgetSettings(ratio=0.1, min_retries=1, window_seconds=10))
    assert budget.allow_retry(T0) and not budget.allow_retry(T0 + 5)
    assert budget.allow_retry(T0 + 10.5)


def test_a_zero_budget_never_retries() -> None:
    settings = RetryBudgetSettings(ratio=0, min_retries=0)
    budget = RetryBudget(settings)
    budget.request(T0)
    assert not settings.enabled and not budget.allow_retry(T0)
