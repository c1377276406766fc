"""The `fleet` section: how this replica takes part in the whole-fleet view (used only with
the Redis catalog, whose Redis the replicas share).

    fleet:
      replica_id: gw-eu-1          # default: host name and process id, e.g. pod-7f9c-4711
      heartbeat_seconds: 5         # a heartbeat lives 3 intervals: a dead replica leaves then
      reply_timeout_seconds: 2     # how long a fleet-wide admin call waits for the others

Every field is optional. Under `serve --workers N` each worker is a replica of its own: a
configured `replica_id` gets the suffix `-w<index>` there (the default differs per process).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from proxy.config.reader import ConfigReader

# Heartbeats live this many intervals: one or two late beats do not drop a replica.
TTL_INTERVALS = 3
MAX_REPLY_TIMEOUT_SECONDS = 30.0
# A replica id is part of Redis key and channel names: no spaces, no glob characters.
REPLICA_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
_FIELDS = {"replica_id", "heartbeat_seconds", "reply_timeout_seconds"}


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """`replica_id` None: the host name and process id."""

    replica_id: str | None = None
    heartbeat_seconds: float = 5.0
    reply_timeout_seconds: float = 2.0

    @property
    def ttl_seconds(self) -> float:
        """How long a heartbeat lives in Redis."""
        return self.heartbeat_seconds * TTL_INTERVALS


def parse_fleet(reader: ConfigReader, raw: Any) -> FleetSettings:
    """The `fleet` section (every field optional), problems collected on `reader`."""
    path = "fleet"
    section = reader.mapping(raw, path, _FIELDS)
    defaults = FleetSettings()
    replica_id = reader.value(section, "replica_id", path, str, None)
    if replica_id is not None and not REPLICA_ID.fullmatch(replica_id):
        reader.problem(f"{path}.replica_id", f"must match ^{REPLICA_ID.pattern}$")
        replica_id = None
    heartbeat = reader.positive(
        section, "heartbeat_seconds", path, float, defaults.heartbeat_seconds
    )
    reply_timeout = reader.positive(
        section, "reply_timeout_seconds", path, float, defaults.reply_timeout_seconds
    )
    if reply_timeout > MAX_REPLY_TIMEOUT_SECONDS:
        reader.problem(
            f"{path}.reply_timeout_seconds", f"must be at most {MAX_REPLY_TIMEOUT_SECONDS:g}"
        )
        reply_timeout = defaults.reply_timeout_seconds
    return FleetSettings(replica_id, heartbeat, reply_timeout)
