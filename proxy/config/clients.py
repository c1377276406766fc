"""`server.clients`: how long a client may take and how many connections it may hold.

    server:
      clients:
        first_request_timeout_seconds: 10  # connect -> first byte of the first request
        header_timeout_seconds: 10         # first byte of a request -> end of its head
        body_timeout_seconds: 10           # end of the head -> end of the body (then 408)
        keepalive_timeout_seconds: 75      # idle between two requests on one connection
        public:                            # the player listener (and SPEKE's own one)
          max_connections: 10000           # open connections, per worker process
          max_connections_per_client: 256  # per peer address; 0: no per-client cap
          backlog: 1024                    # the kernel's queue of unaccepted connections
        internal:                          # /healthz, /readyz, /metrics, admin
          max_connections: 256
          max_connections_per_client: 0
          backlog: 128
        in_flight:                         # player requests being served, per worker
          max_requests: 2048               # past it a request queues ...
          max_queued: 1024                 # ... with at most this many others ...
          queue_seconds: 1                 # ... for at most this long; else 503 overloaded

A connection over a cap is closed as soon as it is accepted (nothing is read or written)
and counted in `drm_gateway_connections_refused_total`. The caps of each listener are its
own, so a flood of the public port leaves the internal port its whole capacity. Keep the
caps of all listeners together under the process's file-descriptor limit (`ulimit -n`),
with room for upstream connections.

Timeouts close the connection (a body timeout first answers 408 to the request) and are
counted in `drm_gateway_client_timeouts_total`. Each is a total for its phase, not a gap
between reads: a client sending one header line every few seconds is closed when the head
is not complete `header_timeout_seconds` after its first byte.

The per-client cap is per peer address. A peer in `server.trusted_proxies` (an ingress)
carries many players, whose addresses are known only per request (X-Forwarded-For): such a
peer is held to `max_connections` alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.reader import ConfigReader

_TIMEOUTS = (
    "first_request_timeout_seconds",
    "header_timeout_seconds",
    "body_timeout_seconds",
    "keepalive_timeout_seconds",
)
_LISTENER_FIELDS = {"max_connections", "max_connections_per_client", "backlog"}
_IN_FLIGHT_FIELDS = {"max_requests", "max_queued", "queue_seconds"}


@dataclass(frozen=True, slots=True)
class InFlightLimits:
    """Player requests in flight per worker, and the bounded queue in front of them
    (proxy/server/admission.py); `max_queued` 0 refuses at once past the cap."""

    max_requests: int = 2048
    max_queued: int = 1024
    queue_seconds: float = 1.0


_MAX_BACKLOG = 65_535  # the kernel clamps to net.core.somaxconn anyway


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """One listener's caps: open connections in all, per peer address (0: no cap)."""

    max_connections: int
    max_connections_per_client: int
    backlog: int


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """The `server.clients` section: per-phase timeouts and each listener's caps."""

    first_request_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 75.0  # above a cloud load balancer's 60 s idle timeout
    public: ConnectionLimits = field(default_factory=lambda: ConnectionLimits(10_000, 256, 1024))
    internal: ConnectionLimits = field(default_factory=lambda: ConnectionLimits(256, 0, 128))
    in_flight: InFlightLimits = field(default_factory=InFlightLimits)


def parse_clients(reader: ConfigReader, raw: Any) -> ClientSettings:
    """`server.clients` (every problem to `reader`, with its key path)."""
    path = "server.clients"
    section = reader.mapping(raw, path, {*_TIMEOUTS, "public", "internal", "in_flight"})
    defaults = ClientSettings()
    timeouts = {
        name: reader.positive(section, name, path, float, getattr(defaults, name))
        for name in _TIMEOUTS
    }
    return ClientSettings(
        **timeouts,
        public=_parse_limits(reader, section.get("public"), f"{path}.public", defaults.public),
        internal=_parse_limits(
            reader, section.get("internal"), f"{path}.internal", defaults.internal
        ),
        in_flight=_parse_in_flight(reader, section.get("in_flight"), f"{path}.in_flight"),
    )


def _parse_in_flight(reader: ConfigReader, raw: Any, path: str) -> InFlightLimits:
    section: Mapping[str, Any] = reader.mapping(raw, path, _IN_FLIGHT_FIELDS)
    defaults = InFlightLimits()
    queued = reader.value(section, "max_queued", path, int, defaults.max_queued)
    if queued < 0:
        reader.problem(f"{path}.max_queued", "must be 0 (no queue) or more")
        queued = defaults.max_queued
    return InFlightLimits(
        max_requests=reader.positive(section, "max_requests", path, int, defaults.max_requests),
        max_queued=queued,
        queue_seconds=reader.positive(
            section, "queue_seconds", path, float, defaults.queue_seconds
        ),
    )


def _parse_limits(
    reader: ConfigReader, raw: Any, path: str, default: ConnectionLimits
) -> ConnectionLimits:
    section: Mapping[str, Any] = reader.mapping(raw, path, _LISTENER_FIELDS)
    total = reader.positive(section, "max_connections", path, int, default.max_connections)
    per_client = reader.value(
        section, "max_connections_per_client", path, int, default.max_connections_per_client
    )
    if per_client < 0:
        reader.problem(f"{path}.max_connections_per_client", "must be 0 (no cap) or more")
        per_client = default.max_connections_per_client
    elif per_client > total:
        reader.problem(
            f"{path}.max_connections_per_client",
            f"must be at most max_connections ({total})",
        )
    backlog = reader.positive(section, "backlog", path, int, default.backlog)
    if backlog > _MAX_BACKLOG:
        reader.problem(f"{path}.backlog", f"must be at most {_MAX_BACKLOG}")
        backlog = default.backlog
    return ConnectionLimits(total, per_client, backlog)
