"""The chaos test's processes: both emulated providers and the gateway, each its own process
group on 127.0.0.1 (free ports), started and stopped by tests/perf/servers.py; the catalog,
the rules files and the gateway config they use; and the two readers of counters (the
gateway's /metrics and the emulators' /_emulator/stats)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import (
    ENV,
    INCOMING_JWT_KEY_B64,
    LEGACY_API_KEY,
    SEED,
    free_ports,
    gateway_raw_config,
)
from tests.conftest import write_catalog as _write_catalog
from tests.perf import servers as srv

VENV_BIN = Path(sys.executable).parent
ASSETS = 200  # dual-held assets the load cycles through
ASSET_PREFIX = "chaos-"
# Both providers hold every asset: the live route is incoming, legacy is its fallback.
RULES_LIVE = f"""\
version: chaos-live
default: legacy
rules:
  - name: dual-held-to-incoming
    when: {{asset_prefixes: [{ASSET_PREFIX}]}}
    route: incoming
    fallback: legacy
"""
# The shadow scenario: live traffic to legacy, a copy of every request to incoming.
RULES_SHADOW = f"""\
version: chaos-shadow
default: legacy
rules:
  - name: live-legacy-shadow-incoming
    when: {{asset_prefixes: [{ASSET_PREFIX}]}}
    route: legacy
    shadow: {{to: incoming, percent: 100}}
"""
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def asset(index: int) -> str:
    return f"{ASSET_PREFIX}{index % ASSETS:04d}"


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; (0, b"") when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


def http_post_json(url: str, data: dict[str, Any], timeout: float = 2.0) -> int:
    body = json.dumps(data).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class Metrics:
    """One scrape of the gateway's /metrics: samples by (name, frozenset of label pairs)."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        found: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _METRIC.match(line)
            if match is None:
                continue
            labels = frozenset(_LABEL.findall(match.group(2) or ""))
            try:
                found[(match.group(1), labels)] = float(match.group(3))
            except ValueError:
                continue
        return cls(found)

    def total(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (metric, have), value in self.samples.items()
            if metric == name and wanted <= have
        )


@dataclass
class Stack:
    """The running processes and where they listen."""

    workdir: Path
    servers: srv.Servers
    env: dict[str, str]
    ports: dict[str, int]
    procs: dict[str, srv.Server] = field(default_factory=dict)

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def internal_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['internal']}"

    def emulator_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    # --- processes ---------------------------------------------------------------------

    def _cpus(self) -> str:
        return f"0-{(os.cpu_count() or 1) - 1}"

    def start_emulator(self, name: str) -> srv.Server:
        argv = [
            str(VENV_BIN / "drm-gateway"), "emulate", name,
            "--host", "127.0.0.1", "--port", str(self.ports[name]),
            "--seed", SEED.decode(),
        ]  # fmt: skip
        if name == "legacy":
            argv += ["--api-key", LEGACY_API_KEY]
        else:
            argv += ["--jwt-key", f"k1=base64:{INCOMING_JWT_KEY_B64}", "--jwt-algorithm", "HS256"]
        server = self.servers.start(
            name, argv, cpus=self._cpus(), log=self.workdir / f"{name}.log", env=self.env
        )
        self.procs[name] = server
        self.wait_ready(f"{self.emulator_url(name)}/healthz", server)
        return server

    def start_gateway(self) -> srv.Server:
        argv = [str(VENV_BIN / "drm-gateway"), "serve", "--config", str(self.workdir / "gw.yaml")]
        server = self.servers.start(
            "gateway", argv, cpus=self._cpus(), log=self.workdir / "gateway.log", env=self.env
        )
        self.procs["gateway"] = server
        self.wait_ready(f"{self.internal_url}/readyz", server)
        return server

    def wait_ready(self, url: str, server: srv.Server, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{srv.tail(server.log)}")
            if http_get(url, timeout=1.0)[0] == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{server.name} not ready at {url}:\n{srv.tail(server.log)}")

    def signal_group(self, name: str, sig: signal.Signals) -> None:
        """Send `sig` to the process group of one of our own servers (never anything else)."""
        os.killpg(self.procs[name].pgid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL one of our servers' process group and reap it."""
        server = self.procs.pop(name)
        if server in self.servers.running:
            self.servers.running.remove(server)
        try:
            os.killpg(server.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.process.wait(10)

    # --- counters ----------------------------------------------------------------------

    def metrics(self) -> Metrics:
        status, body = http_get(f"{self.internal_url}/metrics", timeout=5.0)
        return Metrics.parse(body.decode(errors="replace")) if status == 200 else Metrics()

    def emulator_total(self, name: str) -> int | None:
        """The emulator's count of requests it recorded, None when it does not answer."""
        status, body = http_get(f"{self.emulator_url(name)}/_emulator/stats", timeout=1.0)
        if status != 200:
            return None
        total = json.loads(body).get("total")
        return int(total) if isinstance(total, int) else None

    def set_faults(self, name: str, **faults: Any) -> None:
        status = http_post_json(f"{self.emulator_url(name)}/_emulator/faults", faults)
        if status != 200:
            raise RuntimeError(f"{name}: POST /_emulator/faults {faults} answered {status}")

    def set_rules(self, text: str, version: str, timeout: float = 15.0) -> None:
        """Rewrite the rules file and wait until the gateway has loaded `version`."""
        path = self.workdir / "rules.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics().total("drm_gateway_rules_info", version=version) >= 1:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the gateway did not load rules version {version}")

    def trickle(self, requests: int = 4) -> None:
        """A few license requests, answers ignored (they let open circuits probe)."""
        for index in range(requests):
            request = urllib.request.Request(
                f"{self.public_url}/v1/license/widevine/{asset(index)}",
                data=b"chaos-trickle",
                headers={"Content-Type": "application/octet-stream"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=5.0) as resp:
                    resp.read()
            except OSError:  # HTTPError included
                pass

    def circuits_closed(self) -> bool:
        """No circuit open or half-open (state 0 is closed)."""
        metrics = self.metrics()
        return all(
            value == 0
            for (name, _), value in metrics.samples.items()
            if name == "drm_gateway_circuit_state"
        )


def build(workdir: Path, servers: srv.Servers) -> Stack:
    """Write the catalog, rules and config; start both emulators and the gateway."""
    names = ("legacy", "incoming", "gateway", "internal")
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | ENV
    stack = Stack(workdir, servers, env, ports)
    entries: list[Any] = [
        (asset(i), f"res-{asset(i)}", ("legacy", "incoming"), ("chaos",)) for i in range(ASSETS)
    ]
    db = _write_catalog(workdir / "catalog.db", entries)
    (workdir / "rules.yaml").write_text(RULES_LIVE)
    raw = gateway_raw_config(db, stack.emulator_url("legacy"), stack.emulator_url("incoming"))
    raw["server"] = {
        "public": {"host": "127.0.0.1", "port": ports["gateway"]},
        "internal": {"host": "127.0.0.1", "port": ports["internal"]},
        "max_body_bytes": 4096,
    }
    raw["routing"] = {"rules_file": str(workdir / "rules.yaml"), "poll_seconds": 1}
    raw["player_auth"] = {"mode": "none"}
    raw["log"] = {"level": "warning", "format": "json"}
    (workdir / "gw.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    stack.start_emulator("legacy")
    stack.start_emulator("incoming")
    stack.start_gateway()
    return stack


def provider_timeout_seconds(workdir: Path) -> float:
    """The `incoming` provider's total timeout in the config written by `build`."""
    raw = yaml.safe_load((workdir / "gw.yaml").read_text())
    return float(raw["providers"]["incoming"]["timeouts"]["total_seconds"])
