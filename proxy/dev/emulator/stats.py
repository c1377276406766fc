"""What the emulator saw: counters and the last requests, for tests and ops (no secrets).

Only header NAMES are kept in general; values are kept for a few harmless headers that tests
need to follow a request through the gateway (request id, forwarding, content type, trace).
"""

from __future__ import annotations

import hashlib
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RECORDED_HEADER_VALUES = ("X-Request-Id", "X-Forwarded-For", "Content-Type", "traceparent")
HISTORY_SIZE = 200
# Key API counters (legacy and incoming): keys created by CPIX, keys answered by an export,
# keys newly stored (ingest, or CPIX carrying keys), keys given that were already stored with
# the same value, and requests refused with 409 key_conflict.
KEY_API_COUNTERS = ("generated", "exported", "ingested", "already_present", "conflicts")


@dataclass(frozen=True, kw_only=True)
class RequestRecord:
    """One license or key request as seen by the emulator."""

    method: str
    path: str
    route: str
    drm: str | None
    resource: str | None
    status: int | None  # None: the connection was reset on purpose, no answer was sent
    fault: str | None
    challenge_sha256: str | None
    body_sha256: str | None
    headers: Mapping[str, str | None]
    header_names: tuple[str, ...]
    verified: Mapping[str, Any] = field(default_factory=dict)  # a kind's checked facts

    def as_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "drm": self.drm,
            "resource": self.resource,
            "status": self.status,
            "fault": self.fault,
            "challenge_sha256": self.challenge_sha256,
            "body_sha256": self.body_sha256,
            "headers": dict(self.headers),
            "header_names": list(self.header_names),
            "verified": dict(self.verified),
        }


def sha256_hex(data: bytes | None) -> str | None:
    """Hex sha256 of some bytes, None for None."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str | None]:
    """The values of the few headers whose values are recorded (None when absent)."""
    return {name: headers.get(name) for name in RECORDED_HEADER_VALUES}


class StatsRecorder:
    """Counts requests by (route, drm, status), keeps the last ``HISTORY_SIZE`` of them, and
    counts what the key API did (``KEY_API_COUNTERS``)."""

    def __init__(self, history: int = HISTORY_SIZE) -> None:
        self._counts: Counter[tuple[str, str | None, int | None]] = Counter()
        self._recent: deque[RequestRecord] = deque(maxlen=history)
        self._total = 0
        self._key_api: Counter[str] = Counter()

    def count_key_api(self, counter: str, amount: int = 1) -> None:
        """Add ``amount`` to one of the ``KEY_API_COUNTERS``."""
        if counter not in KEY_API_COUNTERS:
            raise ValueError(f"unknown key API counter {counter!r}")
        self._key_api[counter] += amount

    def record(self, entry: RequestRecord) -> None:
        """Count one request and remember it."""
        self._total += 1
        self._counts[(entry.route, entry.drm, entry.status)] += 1
        self._recent.append(entry)

    def clear(self) -> None:
        """Forget everything."""
        self._counts.clear()
        self._recent.clear()
        self._total = 0
        self._key_api.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counters and recent requests (oldest first) as a JSON-ready dict."""
        by_route = [
            {"route": route, "drm": drm, "status": status, "count": count}
            for (route, drm, status), count in sorted(self._counts.items(), key=_count_order)
        ]
        return {
            "total": self._total,
            "by_route": by_route,
            "recent": [entry.as_json() for entry in self._recent],
            "key_api": {name: self._key_api[name] for name in KEY_API_COUNTERS},
        }


def _count_order(item: tuple[tuple[str, str | None, int | None], int]) -> tuple[str, str, int]:
    (route, drm, status), _ = item
    return route, drm or "", status or 0
