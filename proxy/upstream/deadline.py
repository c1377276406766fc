"""The overall deadline of one player request, and each upstream try's share of it.

A player request gets `seconds` (default 4 s) from the moment the gateway starts on it
(after the body is read) to its answer. Each upstream try gets `TryLimits`: a `pool_wait`
for a free connection slot, bounded on its own (a full pool is the gateway's limit, not the
provider's slowness: it fails as `UpstreamPoolExhausted`), and then a `timeout` for
connecting and the exchange, which starts once a slot is held, so the wait is never
silently taken from the provider's time. A try that may be followed by another (a fallback
or a retry) gets `first_try_share` of what remains; the last try gets all that remains.
Either way a try's `pool_wait + timeout` fits in its share, so a fallback always starts in
time to finish within the deadline, and two slow providers end in a 504 within it.

The gateway sets `TRY_LIMITS` (a context variable) around each try; the provider transport
reads it. Through a context variable, not a parameter, because every provider kind's
adapter sits between the two and none of them needs to know. Pure: the clock is injected.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import NamedTuple

from proxy.upstream.window import Clock


@dataclass(frozen=True, slots=True)
class DeadlineSettings:
    """Defaults, and why:

    - `seconds` 4: players retry a license request after about 5-10 s (ExoPlayer's default
      read timeout is 8 s, AVPlayer's resource loader similar); answering (even 504) before
      that lets the player's own retry reach a healthy replica. The provider calls normally
      take 50-300 ms, so 4 s leaves room for one slow try and a fallback.
    - `first_try_share` 0.5: a try that may be followed by another gets half of what is
      left, so the fallback (or retry) gets at least as much time as the first try had.
    - `pool_wait_seconds` 0.1: waiting longer for a connection slot means every connection
      to the provider is busy; falling back (or a quick 503) serves the player better.
    - `min_try_seconds` 0.05: a try with less time than this is not started (it could only
      time out); the request ends with the error it has.
    """

    seconds: float = 4.0
    first_try_share: float = 0.5
    pool_wait_seconds: float = 0.1
    min_try_seconds: float = 0.05


class TryLimits(NamedTuple):
    """One upstream try: the longest wait for a connection slot, then the time for
    connecting and the whole exchange (counted from when the slot is held). A NamedTuple:
    made once per try, and a frozen dataclass costs three times as much to make."""

    timeout: float
    pool_wait: float


# The current try's limits; None outside a gateway try (the transport's own timeouts apply).
TRY_LIMITS: ContextVar[TryLimits | None] = ContextVar("drm_gateway_try_limits", default=None)


def try_limits(
    remaining: float, provider_timeout: float, settings: DeadlineSettings, *, last: bool
) -> TryLimits | None:
    """A try's limits when `remaining` seconds are left of the deadline: the provider's own
    timeout at most, within `first_try_share` of what is left unless this is the `last`
    try. None when less than `min_try_seconds` would be left for the exchange."""
    share = remaining if last else remaining * settings.first_try_share
    pool_wait = settings.pool_wait_seconds
    if pool_wait > share / 2:
        pool_wait = share / 2
    timeout = share - pool_wait
    if timeout > provider_timeout:
        timeout = provider_timeout
    if timeout < settings.min_try_seconds:
        return None
    return TryLimits(timeout, pool_wait)


class Deadline:
    """One request's deadline: `settings.seconds` from its creation."""

    __slots__ = ("_clock", "at", "settings")

    def __init__(self, settings: DeadlineSettings, *, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.at = clock() + settings.seconds

    def remaining(self) -> float:
        return self.at - self._clock()

    def limits(self, provider_timeout: float, *, last: bool) -> TryLimits | None:
        """The next try's limits (see `try_limits`), None if the deadline leaves no room."""
        return try_limits(self.remaining(), provider_timeout, self.settings, last=last)
