"""The deadline arithmetic: each try's share, the pool-slot wait apart, and the guarantee
that a first try and a fallback together fit in the deadline."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.deadline import Deadline, DeadlineSettings, TryLimits, try_limits

SETTINGS = DeadlineSettings()  # 4 s, first try 0.5 of what is left, 0.1 s pool wait


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_first_try_gets_its_share_less_the_pool_wait() -> None:
    assert try_limits(4.0, 5.0, SETTINGS, last=False) == TryLimits(1.9, 0.1)


def test_the_last_try_gets_all_that_is_left() -> None:
    limits = try_limits(2.1, 5.0, SETTINGS, last=True)
    assert limits is not None and limits.timeout == pytest.approx(2.0) and limits.pool_wait == 0.1


def test_the_provider_timeout_caps_a_try() -> None:
    assert try_limits(4.0, 0.8, SETTINGS, last=False) == TryLimits(0.8, 0.1)
    assert try_limits(4.0, 0.8, SETTINGS, last=True) == TryLimits(0.8, 0.1)


def test_a_short_share_halves_the_pool_wait() -> None:
    limits = try_limits(0.16, 5.0, SETTINGS, last=True)
    assert limits is not None
    assert limits.timeout == pytest.approx(0.08) and limits.pool_wait == pytest.approx(0.08)


def test_no_try_without_room_for_the_exchange() -> None:
    assert try_limits(0.09, 5.0, SETTINGS, last=True) is None
    assert try_limits(0.15, 5.0, SETTINGS, last=False) is None  # share 0.075: too short
    assert try_limits(-1.0, 5.0, SETTINGS, last=True) is None


def test_a_deadline_counts_down_on_its_clock() -> None:
    clock = FakeClock()
    deadline = Deadline(SETTINGS, clock=clock)
    assert deadline.at == 104.0 and deadline.remaining() == 4.0
    assert deadline.limits(5.0, last=False) == TryLimits(1.9, 0.1)
    clock.now += 2.0  # the first try timed out after its share (and the pool wait)
    second = deadline.limits(5.0, last=True)
    assert second is not None and second.timeout == pytest.approx(1.9)
    clock.now += 3.97
    assert deadline.limits(5.0, last=True) is None


@given(
    seconds=st.floats(0.2, 30),
    share=st.floats(0.1, 1.0),
    wait=st.floats(0.001, 0.5),
    first_timeout=st.floats(0.05, 10),
    second_timeout=st.floats(0.05, 10),
    first_took=st.floats(0, 1),
)
def test_a_first_try_and_a_fallback_always_fit_in_the_deadline(
    seconds: float,
    share: float,
    wait: float,
    first_timeout: float,
    second_timeout: float,
    first_took: float,
) -> None:
    """Whatever the settings and however long the first try took (up to its limits), the
    worst case of both tries (full pool waits, full timeouts) ends within the deadline."""
    settings = DeadlineSettings(seconds, share, min(wait, seconds / 2))
    first = try_limits(seconds, first_timeout, settings, last=False)
    if first is None:
        return
    assert first.pool_wait + first.timeout <= seconds * share + 1e-9
    spent = first_took * (first.pool_wait + first.timeout)
    second = try_limits(seconds - spent, second_timeout, settings, last=True)
    if second is None:
        return
    assert spent + second.pool_wait + second.timeout <= seconds + 1e-9
