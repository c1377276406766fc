"""The migration rehearsal's world: its scale, its catalog of titles, the files the processes
read (catalog export, the incoming provider's resource list, rules, gateway config) and the
processes themselves (a private redis-server, both emulators, the gateway), each started and
stopped by this run only (tests/perf/servers.py and tests/redis_server.py).

Titles (by index i of N): `rh-{i:06d}`, two key ids each, keys derived by the legacy emulator
from the asset id. A fixed shuffle gives each title its class:

- `noid` (5%): no drmResourceId in the catalog yet, keys at both providers (the incoming
  emulator knows `res-…` for it: the id exists at the provider, the catalog lacks it);
- `legacy` (40%): keys only at legacy (`key_holders: [legacy]`), until the backfill copies
  them (the incoming emulator knows nothing of them before);
- `both` (the rest): keys at both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from proxy.routing.rules import bucket
from tests.conftest import ADMIN_TOKEN, INCOMING_JWT_KEY_B64, LEGACY_API_KEY, SEED, free_ports
from tests.keys.backfill_stack import (
    INCOMING_KEY_API_TOKEN,
    KEY_ENV,
    LEGACY_KEY_API_TOKEN,
    raw_config,
)
from tests.perf import chaos_stack
from tests.perf import servers as srv
from tests.redis_server import REDIS_SERVER, RedisServer, start_redis_server

TitleClass = Literal["noid", "legacy", "both"]
RULE_NAME = "migrate-to-incoming"
RAMP_STEPS = (10, 50, 100)


@dataclass(frozen=True)
class Scale:
    """How big and how long one rehearsal is; the phases happen at fixed shares of the load."""

    name: str
    titles: int
    rate: float  # player requests per second
    seconds: float  # the load's duration
    backfill_rate: float  # titles per second
    outage_seconds: float = 10.0
    noid_share: float = 0.05
    legacy_share: float = 0.40

    @property
    def backfill_start(self) -> float:
        return round(self.seconds * 0.05, 1)

    @property
    def ramp_at(self) -> tuple[float, ...]:
        """When each of RAMP_STEPS is attempted (seconds from the load's start)."""
        return tuple(round(self.seconds * share, 1) for share in (0.10, 0.25, 0.60))

    @property
    def outage_at(self) -> float:
        return round(self.seconds * 0.40, 1)

    def as_json(self) -> dict[str, Any]:
        return {
            "scale": self.name,
            "titles": self.titles,
            "rate_per_second": self.rate,
            "load_seconds": self.seconds,
            "backfill_rate_per_second": self.backfill_rate,
            "backfill_start_s": self.backfill_start,
            "ramp_steps_percent": list(RAMP_STEPS),
            "ramp_attempt_at_s": list(self.ramp_at),
            "outage_at_s": self.outage_at,
            "outage_seconds": self.outage_seconds,
            "noid_share": self.noid_share,
            "legacy_only_share": self.legacy_share,
        }


SCALES = {
    "full": Scale("full", titles=100_000, rate=300.0, seconds=420.0, backfill_rate=120.0),
    "small": Scale("small", titles=5_000, rate=60.0, seconds=50.0, backfill_rate=80.0),
}


def scale_from_env() -> Scale:
    """REHEARSE_SCALE (full, small); REHEARSE_RATE and REHEARSE_SECONDS change its load."""
    name = os.environ.get("REHEARSE_SCALE", "full")
    if name not in SCALES:
        raise SystemExit(f"REHEARSE_SCALE must be one of {', '.join(SCALES)}, not {name!r}")
    scale = SCALES[name]
    try:
        rate = float(os.environ.get("REHEARSE_RATE", scale.rate))
        seconds = float(os.environ.get("REHEARSE_SECONDS", scale.seconds))
    except ValueError:
        raise SystemExit("REHEARSE_RATE and REHEARSE_SECONDS must be numbers") from None
    if rate <= 0 or seconds < 3 * scale.outage_seconds:
        raise SystemExit(
            f"REHEARSE_RATE must be > 0, REHEARSE_SECONDS >= {3 * scale.outage_seconds:g}"
        )
    return dataclasses.replace(scale, rate=rate, seconds=seconds)


# --- titles ---------------------------------------------------------------------------------


def asset_id(index: int) -> str:
    return f"rh-{index:06d}"


def resource_id(index: int) -> str:
    return f"res-rh-{index:06d}"


def key_ids(index: int) -> tuple[str, str]:
    """Two stable key ids (32 hex digits) of title `index`."""
    return tuple(  # type: ignore[return-value]
        hashlib.sha256(f"rh-key/{index}/{slot}".encode()).hexdigest()[:32] for slot in (0, 1)
    )


def expected_key(index: int, kid_hex: str) -> bytes:
    """The content key both providers must hand out (the legacy emulator derives it from the
    asset id; the incoming one from the same id, or holds the copy the backfill made)."""
    message = f"{asset_id(index)}:{kid_hex}".encode()
    return hmac.new(SEED, message, hashlib.sha256).digest()[:16]


def classes(scale: Scale, seed: int = 18) -> list[TitleClass]:
    """Each title's class, by index (a fixed shuffle: no class clusters in the index range)."""
    n = scale.titles
    noid, legacy = round(n * scale.noid_share), round(n * scale.legacy_share)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    found: list[TitleClass] = ["both"] * n
    for position, index in enumerate(order):
        if position < noid:
            found[index] = "noid"
        elif position < noid + legacy:
            found[index] = "legacy"
    return found


def catalog_row(index: int, kind: TitleClass, *, with_id: bool) -> dict[str, Any]:
    """The export row of one title (`with_id`: its drmResourceId filled in)."""
    return {
        "asset_id": asset_id(index),
        "drm_resource_id": resource_id(index) if (kind != "noid" or with_id) else None,
        "key_holders": ["legacy"] if kind == "legacy" else ["legacy", "incoming"],
        "tags": ["rehearsal"],
        "key_ids": list(key_ids(index)),
    }


def write_rows(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    with path.open("w") as out:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    return path


def rules_text(percent: int) -> str:
    """The rules file at one ramp step: every title toward incoming (guards permitting: its
    drmResourceId, its keys there), legacy the fallback and the default."""
    return (
        f'version: "rehearse-{percent:03d}"\n'
        "default: legacy\n"
        "rules:\n"
        f"  - name: {RULE_NAME}\n"
        "    route: incoming\n"
        f"    percent: {percent}\n"
        "    stickiness: asset\n"
        "    fallback: legacy\n"
    )


def rules_version(percent: int) -> str:
    return f"rehearse-{percent:03d}"


def ramp_bucket(index: int) -> int:
    """The rollout bucket of title `index` under the rule (stickiness: the asset id)."""
    return bucket(RULE_NAME, asset_id(index))


# --- processes ------------------------------------------------------------------------------


def start_redis(workdir: Path) -> RedisServer:
    """The rehearsal's own redis-server (tests/redis_server.py: a private unix socket, no
    persistence), stopped by its PID."""
    if not Path(REDIS_SERVER).is_file():
        raise RuntimeError("redis-server is not installed (scripts/install-tools.sh installs it)")
    directory = workdir / "redis"
    directory.mkdir()
    return start_redis_server(directory)


class RehearsalStack(chaos_stack.Stack):
    """The chaos harness's processes, with the emulators' key APIs, the incoming provider's
    resource list and a key store that survives its restart."""

    def start_emulator(self, name: str) -> srv.Server:
        argv = [
            str(chaos_stack.VENV_BIN / "drm-gateway"), "emulate", name,
            "--host", "127.0.0.1", "--port", str(self.ports[name]),
            "--seed", SEED.decode(),
            "--key-store", str(self.workdir / f"{name}-keys.jsonl"),
        ]  # fmt: skip
        if name == "legacy":
            argv += ["--api-key", LEGACY_API_KEY, "--key-api-token", LEGACY_KEY_API_TOKEN]
        else:
            argv += [
                "--jwt-key", f"k1=base64:{INCOMING_JWT_KEY_B64}", "--jwt-algorithm", "HS256",
                "--key-api-token", INCOMING_KEY_API_TOKEN,
                "--resource-ids", str(self.workdir / "incoming-resources.txt"),
            ]  # fmt: skip
        server = self.servers.start(
            name, argv, cpus=self._cpus(), log=self.workdir / f"{name}.log", env=self.env
        )
        self.procs[name] = server
        self.wait_ready(f"{self.emulator_url(name)}/healthz", server)
        return server

    @property
    def config_path(self) -> Path:
        return self.workdir / "gw.yaml"

    @property
    def rules_path(self) -> Path:
        return self.workdir / "rules.yaml"


def provider_header_supported() -> bool:
    """Whether this gateway has `server.provider_header` (interface 5)."""
    from proxy.config.load import ServerSettings

    return "provider_header" in ServerSettings.__dataclass_fields__


def write_files(workdir: Path, scale: Scale, kinds: list[TitleClass]) -> None:
    """The catalog export, the incoming emulator's resource list and the first rules file."""
    write_rows(
        workdir / "catalog.jsonl",
        (catalog_row(i, kind, with_id=False) for i, kind in enumerate(kinds)),
    )
    with (workdir / "incoming-resources.txt").open("w") as out:
        for index, kind in enumerate(kinds):
            if kind != "legacy":  # keys derived from the asset id, as legacy's
                out.write(f"{resource_id(index)},{asset_id(index)}\n")
    (workdir / "rules.yaml").write_text(rules_text(0))


def gateway_config(stack: RehearsalStack, redis_url: str, *, provider_header: bool) -> None:
    """gw.yaml: the test gateway's providers with their key APIs, the Redis catalog, JSON
    access lines at info (the rehearsal reads who answered and why from them)."""
    raw = raw_config(
        None,
        stack.emulator_url("legacy"),
        stack.emulator_url("incoming"),
        legacy={"resource_id": "asset_id"},
    )
    ports = stack.ports
    raw["server"] = {
        "public": {"host": "127.0.0.1", "port": ports["gateway"]},
        "internal": {"host": "127.0.0.1", "port": ports["internal"]},
        "max_body_bytes": 4096,
    }
    if provider_header:
        raw["server"]["provider_header"] = True
    raw["catalog"] = {"backend": "redis", "redis": {"url": redis_url}, "ttl_seconds": 60}
    raw["routing"] = {
        "default_provider": "legacy",
        "rules_file": str(stack.rules_path),
        "poll_seconds": 1,
    }
    raw["log"] = {"level": "info", "format": "json"}
    stack.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))


def new_stack(workdir: Path, servers: srv.Servers) -> RehearsalStack:
    names = ("legacy", "incoming", "gateway", "internal")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | KEY_ENV
    env["ADMIN_TOKEN"] = ADMIN_TOKEN
    return RehearsalStack(workdir, servers, env, ports)


def cli(*args: str) -> list[str]:
    return [str(chaos_stack.VENV_BIN / "drm-gateway"), *args]
