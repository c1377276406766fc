"""Tests for proxy.access.ratelimit: burst, refill, retry-after, bound on keys (fake clock)."""

from __future__ import annotations

import pytest

from proxy.access.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_burst_is_allowed_then_refused_with_retry_after(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.check("u") for _ in range(3)] == [None, None, None]
    assert limiter.check("u") == pytest.approx(0.5)  # one token at 2/s


def test_refused_requests_do_not_consume_tokens(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.check("u") is None
    clock.now += 0.25
    assert limiter.check("u") == pytest.approx(0.75)
    clock.now += 0.25
    assert limiter.check("u") == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("u") is None


def test_tokens_refill_at_the_rate(clock: FakeClock) -> None:
    limiter = RateLimiter(2.0, 3, clock=clock)
    for _ in range(3):
        limiter.check("u")
    clock.now += 0.5  # exactly one token back
    assert limiter.check("u") is None
    assert limiter.check("u") == pytest.approx(0.5)
    clock.now += 1.0  # two tokens back
    assert [limiter.check("u") for _ in range(3)] == [None, None, pytest.approx(0.5)]


def test_refill_never_exceeds_the_burst(clock: FakeClock) -> None:
    limiter = RateLimiter(10.0, 2, clock=clock)
    limiter.check("u")
    clock.now += 3600
    assert [limiter.check("u") for _ in range(3)] == [None, None, pytest.approx(0.1)]


def test_keys_are_independent(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.check("user:a") is None
    assert limiter.check("user:a") == pytest.approx(1.0)
    assert limiter.check("user:b") is None
    assert limiter.check("ip:192.0.2.1") is None


def test_keys_are_bounded_and_least_recently_used_dropped(clock: FakeClock) -> None:
    limiter = RateLimiter(1.0, 1, max_keys=2, clock=clock)
    limiter.check("a")
    limiter.check("b")
    assert limiter.check("a") is not None  # "a" is exhausted, and now most recently used
    limiter.check("c")  # evicts "b", the least recently used
    assert len(limiter) == 2
    assert limiter.check("a") is not None  # kept, still exhausted
    assert limiter.check("b") is None  # dropped, so it starts full again (evicting "c")
    assert len(limiter) == 2


@pytest.mark.parametrize(
    ("rate", "burst", "max_keys", "expected"),
    [
        (0.0, 1, 10, "rate_per_second"),
        (-1.0, 1, 10, "rate_per_second"),
        (1.0, 0, 10, "burst"),
        (1.0, 1, 0, "max_keys"),
    ],
)
def test_invalid_limits_are_refused(rate: float, burst: int, max_keys: int, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        RateLimiter(rate, burst, max_keys=max_keys)
