"""Fault injection for the license and key routes: latency, errors, resets, error-in-200."""

from __future__ import annotations

import random
from enum import Enum

from proxy.dev.emulator.settings import Faults


class Fault(Enum):
    """The fault drawn for one request (latency is separate: it delays, then this applies)."""

    RESET = "reset"
    ERROR = "error"
    ERROR_JSON = "error_json"
    STATUS = "status"


class FaultInjector:
    """Holds the current fault modes and a deterministic RNG (re-seeded on every change)."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def faults(self) -> Faults:
        """The fault modes in force."""
        return self._faults

    def replace(self, faults: Faults) -> None:
        """Switch to new fault modes, restarting the RNG from their seed."""
        self._faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def latency_seconds(self) -> float:
        """How long to sleep before answering a license or key request."""
        return self._faults.latency_ms / 1000.0

    def draw(self) -> Fault | None:
        """The fault for the next request, or None; each rate is drawn independently."""
        faults = self._faults
        # A rate of 0 draws nothing, so enabling one mode does not shift another's sequence.
        for fault, rate in (
            (Fault.RESET, faults.reset_rate),
            (Fault.ERROR, faults.error_rate),
            (Fault.ERROR_JSON, faults.error_json_rate),
        ):
            if rate > 0 and self._rng.random() < rate:
                return fault
        return Fault.STATUS if faults.status is not None else None
