"""`make bench`: the gateway's cost per license request against nginx and a bare aiohttp proxy.

    .venv/bin/python -m tests.perf.bench      (scripts/bench.sh installs wrk and nginx first)

CPU pinning (2 cores): the load generator (wrk, one thread) runs on core 0, the system under
test on core 1. The upstream (nginx `return 200`, a 1.5 KB answer) runs on core 1 when it is
itself measured ("upstream") and on core 0, beside wrk, when it stands behind a proxy. The
2-worker gateway runs on both cores, contended with wrk and the upstream.

Configurations: upstream, nginx-proxy (proxy_pass, keep-alive pool), bare-aiohttp
(tests/perf/bare_proxy.py), gateway (full path, one worker, Widevine), gateway-fairplay (the
same gateway, a FairPlay request transcoded both ways), gateway-2w (two workers),
gateway-catalog-sqlite and gateway-catalog-redis (the full path with the catalog cache off,
every request reading the SQLite file or a local redis-server on a unix socket), and one
`kind-<kind>` per provider kind (kind-doverunner, kind-axinom, kind-drmtoday, kind-ezdrm,
kind-verimatrix, kind-widevine-cloud).
The full path: player JWT verification, catalog lookup (warm cache over a 100,000-asset SQLite
catalog), a 20-rule file (tests/perf/rules.yaml; the request matches rule 14), a per-request
HS256 provider JWT, metrics, and JSON access logging to a file.

Provider kinds: a `kind-<kind>` row is the one-worker `gateway` with its generic `incoming`
provider replaced by that kind's section (proxy/dev/demo_data/providers/<kind>.yaml, secrets
from proxy/dev/kinds.py kind_env) pointed at the same nginx origin, which answers the kind's
Widevine path with the kind's success envelope (raw license; DRMtoday `{"license": <base64>}`,
raw with specConform; the Widevine API `{"status": "OK", "license": <base64>}`); each kind's
license bytes are its own, so the check before measuring proves the kind's adapter answered.
Kind rows run at 32 connections only; the generic baseline is the `gateway` row of the same
run (added at 32 connections when BENCH_CONFIGS names kinds but not `gateway`). The report
gives each kind's CPU per request as a ratio to it (target: at most 1.15).

Environment: BENCH_DURATION (s, default 10), BENCH_REPEATS (3), BENCH_CONNECTIONS ("1,32,64";
kind rows: 32 only), BENCH_CONFIGS (comma list, default all), BENCH_PLAYER_AUTH
(auto|on|off), BENCH_PROFILE (1: py-spy profiles at 32 connections of the gateway and of
every kind row measured; or a comma list of the configs to profile), BENCH_MICRO (0 skips
micro-benchmarks and memory), BENCH_CATALOG (0 skips the catalog backends at cache miss
and the Redis import; BENCH_CATALOG_ROUNDS, BENCH_IMPORT_ASSETS: tests/perf/catalogbench.py),
BENCH_OUTPUT (bench-results.json), BENCH_KEEP (1 keeps the work
dir).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from proxy.dev.kinds import kind_env
from tests.perf import servers as srv
from tests.perf.report import print_report, summarize
from tests.perf.workload import (
    ANSWER,
    CKC,
    ENV,
    FAIRPLAY_BODY,
    KIND_PREFIX,
    KINDS,
    PLAYER_AUTH_SUPPORTED,
    WIDEVINE_BODY,
    bench_assets,
    kind_config_path,
    kind_license,
    kind_route,
    write_workload,
)
from tests.redis_server import start_redis_server

ROOT = Path(__file__).resolve().parents[2]
PERF = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
KIND_CONFIGS = tuple(KIND_PREFIX + kind for kind in KINDS)
# The full path with the catalog cache off (TTL 1 us: every request reads the backend).
CATALOG_CONFIGS = ("gateway-catalog-sqlite", "gateway-catalog-redis")
CONFIGS = (
    "upstream", "nginx-proxy", "bare-aiohttp", "gateway", "gateway-fairplay", "gateway-2w",
    *CATALOG_CONFIGS, *KIND_CONFIGS,
)  # fmt: skip
KIND_CONNECTIONS = 32  # kind rows, and the generic baseline they are compared with
WARMUP_SECONDS = 2
PORTS = ("upstream", "origin", "nginx-proxy", "bare", "gateway", "gateway-internal")


@dataclass(frozen=True)
class Plan:
    duration: int
    repeats: int
    connections: tuple[int, ...]
    configs: tuple[str, ...]
    player_auth: bool
    profile: frozenset[str]  # the configs py-spy records
    micro: bool
    baseline_only: bool = False  # `gateway` was added only as the kind rows' baseline
    catalog: bool = True  # catalog backends at cache miss, Redis import (catalogbench.py)

    def connections_for(self, config: str) -> tuple[int, ...]:
        """Kind rows at 32 connections only; `gateway` always includes 32 when they run."""
        if config in KIND_CONFIGS or (config == "gateway" and self.baseline_only):
            return (KIND_CONNECTIONS,)
        if config == "gateway" and any(c in KIND_CONFIGS for c in self.configs):
            return tuple(sorted({*self.connections, KIND_CONNECTIONS}))
        return self.connections

    @property
    def expected_seconds(self) -> int:
        cells = sum(len(self.connections_for(c)) for c in self.configs)
        measured = cells * self.repeats * self.duration
        profiled = len(self.profile & set(self.configs)) * self.duration
        overhead = len(self.configs) * (WARMUP_SECONDS + 4) + 20 + profiled
        return measured + overhead + (60 if self.micro else 0) + (120 if self.catalog else 0)


@dataclass
class Bench:
    """The run's work dir, ports, servers and results."""

    plan: Plan
    workdir: Path
    servers: srv.Servers
    ports: dict[str, int] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def env_plan() -> Plan:
    configs = tuple(c for c in os.environ.get("BENCH_CONFIGS", ",".join(CONFIGS)).split(",") if c)
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown BENCH_CONFIGS {sorted(unknown)} (known: {', '.join(CONFIGS)})")
    baseline_only = "gateway" not in configs and any(c in KIND_CONFIGS for c in configs)
    if baseline_only:
        configs = ("gateway", *configs)  # the kind rows' generic baseline, in the same run
    return Plan(
        duration=int(os.environ.get("BENCH_DURATION", "10")),
        repeats=int(os.environ.get("BENCH_REPEATS", "3")),
        connections=tuple(
            int(c) for c in os.environ.get("BENCH_CONNECTIONS", "1,32,64").split(",")
        ),
        configs=configs,
        player_auth=_player_auth_switch(os.environ.get("BENCH_PLAYER_AUTH", "auto")),
        profile=_profiled(os.environ.get("BENCH_PROFILE", ""), configs),
        micro=os.environ.get("BENCH_MICRO", "1") != "0",
        baseline_only=baseline_only,
        catalog=os.environ.get("BENCH_CATALOG", "1") != "0",
    )


def _profiled(value: str, configs: tuple[str, ...]) -> frozenset[str]:
    """BENCH_PROFILE: "1" is the one-worker gateway (its FairPlay row when measured alone) and
    every kind row; else the configs named."""
    if value in ("", "0"):
        return frozenset()
    if value == "1":
        gateway = "gateway" if "gateway" in configs else "gateway-fairplay"
        return frozenset({gateway, *KIND_CONFIGS})
    names = frozenset(c for c in value.split(",") if c)
    unknown = names - {"gateway", "gateway-fairplay", *KIND_CONFIGS}
    if unknown:
        raise SystemExit(f"BENCH_PROFILE names {sorted(unknown)}: only gateway rows are profiled")
    return names


def _player_auth_switch(value: str) -> bool:
    """auto: on when the gateway's config has a player_auth section."""
    if value == "off":
        return False
    if value == "on" and not PLAYER_AUTH_SUPPORTED:
        raise SystemExit("BENCH_PLAYER_AUTH=on, but this gateway has no player_auth config")
    return PLAYER_AUTH_SUPPORTED


# --- preparation -------------------------------------------------------------------------


# --- servers -----------------------------------------------------------------------------


def start_upstream(bench: Bench, name: str, cpus: str) -> srv.Server:
    """nginx `return 200`; the origin also answers each provider kind's Widevine path."""
    ckc_tag = "<ckc>" + base64.b64encode(CKC).decode() + "</ckc>"
    port = bench.ports["upstream" if name == "upstream" else "origin"]
    routes = [] if name == "upstream" else [kind_route(kind) for kind in KINDS]
    conf = srv.nginx_upstream_conf(bench.workdir, name, port, ANSWER, ckc_tag, routes)
    server = bench.servers.start(
        name, srv.nginx_argv(conf), cpus=cpus, log=bench.workdir / f"{name}.log"
    )
    base = f"http://127.0.0.1:{port}"
    check(server, f"{base}/v1/license/widevine/x", {}, ANSWER.encode())
    for route in routes:
        check(server, base + route.path, {}, route.body.encode())
        if route.spec_conform_body is not None:
            spec = route.spec_conform_body.encode()
            check(server, f"{base}{route.path}?specConform=true", {}, spec)
    return server


def start_sut(bench: Bench, config: str) -> srv.Server:
    """Start the system under test for `config` (the upstream is already running)."""
    work, ports = bench.workdir, bench.ports
    origin = f"http://127.0.0.1:{ports['origin']}"
    if config == "nginx-proxy":
        conf = srv.nginx_proxy_conf(work, "nginx-proxy", ports["nginx-proxy"], ports["origin"])
        return bench.servers.start(
            config, srv.nginx_argv(conf), cpus="1", log=work / "nginx-proxy.log"
        )
    if config == "bare-aiohttp":
        argv = [sys.executable, "-m", "tests.perf.bare_proxy", str(ports["bare"]), origin]
        return bench.servers.start(config, argv, cpus="1", log=work / "bare.log", env=_env())
    if config in CATALOG_CONFIGS:
        return bench.servers.start(
            config, gateway_argv(catalog_config(bench, config), 1), cpus="1",
            log=work / f"access-{config}.log", env=_env(),
        )  # fmt: skip
    if config in KIND_CONFIGS:
        kind = config.removeprefix(KIND_PREFIX)
        return bench.servers.start(
            config, gateway_argv(kind_config_path(work, config), 1), cpus="1",
            log=work / f"access-{config}.log", env=_env(kind_env(kind)),
        )  # fmt: skip
    workers = 2 if config == "gateway-2w" else 1
    return bench.servers.start(
        config, gateway_argv(work / "gateway.yaml", workers), cpus="0,1" if workers > 1 else "1",
        log=work / f"access-{workers}w.log", env=_env(),
    )  # fmt: skip


def catalog_config(bench: Bench, config: str) -> Path:
    """gateway.yaml with the catalog cache off, over the bench's SQLite catalog or (for
    gateway-catalog-redis) a redis-server on a private socket holding the same assets,
    copied by `drm-gateway catalog sync`; the server is stopped with the other servers."""
    raw = yaml.safe_load((bench.workdir / "gateway.yaml").read_text())
    uncached = {"ttl_seconds": 1e-6, "negative_ttl_seconds": 1e-6, "stale_seconds": 0}
    raw["catalog"] |= uncached
    if config == "gateway-catalog-redis":
        (bench.workdir / "redis").mkdir(exist_ok=True)
        redis = start_redis_server(bench.workdir / "redis")
        bench.servers.on_stop(redis.stop)
        sync = [str(VENV_BIN / "drm-gateway"), "catalog", "sync", raw["catalog"]["path"]]
        subprocess.run([*sync, "--to", redis.url], check=True, capture_output=True, timeout=300)
        raw["catalog"] = {"backend": "redis", "redis": {"url": redis.url}, **uncached}
    path = bench.workdir / f"{config}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def gateway_argv(config: Path, workers: int) -> list[str]:
    """`drm-gateway serve` (with `--workers N` once the CLI has it; else proxy.server.workers)."""
    cli = [str(VENV_BIN / "drm-gateway"), "serve", "--config", str(config)]
    if workers == 1:
        return cli
    help_text = subprocess.run([*cli[:2], "--help"], capture_output=True, text=True).stdout
    if "--workers" in help_text:
        return [*cli, "--workers", str(workers)]
    launch = (
        "import sys; from pathlib import Path; from proxy.config import load_config;"
        "from proxy.observability.logs import configure_logging;"
        "from proxy.server.workers import run_workers;"
        "c = load_config(Path(sys.argv[1]));"
        "configure_logging(level=c.log.level, fmt=c.log.format); run_workers(c, int(sys.argv[2]))"
    )
    return [sys.executable, "-c", launch, str(config), str(workers)]


def _env(secrets: dict[str, str] | None = None) -> dict[str, str]:
    """The servers' environment: ours, the bench secrets and a kind's provider `secrets`."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"} | ENV
    env["PYTHONPATH"] = str(ROOT)
    return env | (secrets or {})


def target(bench: Bench, config: str) -> tuple[str, str]:
    """(base URL, DRM system of the requests) for a configuration."""
    port = {"upstream": "upstream", "nginx-proxy": "nginx-proxy", "bare-aiohttp": "bare"}.get(
        config, "gateway"
    )
    return (
        f"http://127.0.0.1:{bench.ports[port]}",
        "fairplay" if config == "gateway-fairplay" else "widevine",
    )


def check(
    server: srv.Server,
    url: str,
    headers: dict[str, str],
    expected: bytes,
    *,
    fairplay: bool = False,
) -> None:
    """One request before measuring: the system under test must answer 200 with `expected`."""
    body = FAIRPLAY_BODY if fairplay else WIDEVINE_BODY
    status, answer = srv.wait_http(
        url,
        body=body,
        headers={"Content-Type": "application/octet-stream", **headers},
        server=server,
    )
    if status != 200 or answer != expected:
        raise RuntimeError(
            f"{server.name}: {url} answered {status} {answer[:200]!r}; log:\n{srv.tail(server.log)}"
        )


# --- measuring ---------------------------------------------------------------------------


def wrk(bench: Bench, base_url: str, drm: str, connections: int, seconds: int) -> dict[str, Any]:
    """One wrk run (one thread, pinned to core 0); its JSON summary."""
    env = os.environ | {
        "WRK_PATHS_FILE": str(bench.workdir / f"paths-{drm}.txt"),
        "WRK_BODY_KIND": drm,
        "WRK_TOKEN": bench.extra["token"],
    }
    argv = [
        "timeout", str(seconds + 30), "taskset", "-c", "0", "wrk", "-t1", f"-c{connections}",
        f"-d{seconds}s", "--timeout", "5s", "-s", str(PERF / "wrk_post.lua"), base_url,
    ]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, env=env, check=False).stdout
    line = next((x for x in out.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    result: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    return result


def measure(bench: Bench, config: str, server: srv.Server) -> None:
    """Warm up, then every connection count `repeats` times; CPU is the server's own."""
    base_url, drm = target(bench, config)
    wrk(bench, base_url, drm, 32, WARMUP_SECONDS)  # warm caches, pools and the catalog
    for connections in bench.plan.connections_for(config):
        for repeat in range(1, bench.plan.repeats + 1):
            cpu_before = server.cpu_seconds()
            raw = wrk(bench, base_url, drm, connections, bench.plan.duration)
            cpu = server.cpu_seconds() - cpu_before
            run = run_record(config, connections, repeat, raw, cpu)
            bench.runs.append(run)
            flag = "" if run["valid"] else "  INVALID (errors or non-2xx answers)"
            print(
                f"  {config:<22} c{connections:<3} #{repeat}  {run['rps']:>9,.0f} req/s"
                f"  p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms"
                f"  cpu {run['cpu_us_per_request']:.0f} us/req{flag}",
                flush=True,
            )


def run_record(
    config: str, connections: int, repeat: int, raw: dict[str, Any], cpu_seconds: float
) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors"]
    requests = raw["requests"]
    return {
        "config": config,
        "connections": connections,
        "repeat": repeat,
        "requests": raw["requests"],
        "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "errors": errors,
        "cpu_us_per_request": round(cpu_seconds * 1e6 / requests, 1) if requests else 0.0,
        "valid": requests > 0 and not any(errors.values()),
    }


def check_gateway(bench: Bench, config: str, server: srv.Server) -> None:
    """The gateway answers the bench asset byte-exact: Widevine (and for the generic
    provider FairPlay too); a kind row must hand back that kind's own license."""
    token = {"Authorization": f"Bearer {bench.extra['token']}"}
    url = f"http://127.0.0.1:{bench.ports['gateway']}/v1/license/"
    asset = bench_assets()[0]
    if config in KIND_CONFIGS:
        expected = kind_license(config.removeprefix(KIND_PREFIX))
        check(server, f"{url}widevine/{asset}", token, expected)
        return
    check(server, f"{url}widevine/{asset}", token, ANSWER.encode())
    check(server, f"{url}fairplay/{asset}", token, CKC, fairplay=True)


def record_profile(bench: Bench, config: str, server: srv.Server) -> None:
    """BENCH_PROFILE: py-spy records the gateway while wrk drives it at 32 connections."""
    from tests.perf.profiling import profile_gateway

    base_url, drm = target(bench, config)
    bench.extra.setdefault("profiles", {})[config] = profile_gateway(
        server,
        bench.workdir / f"profile-{config}.txt",
        bench.plan.duration,
        partial(wrk, bench, base_url, drm, 32, bench.plan.duration),
        title=config,
    )


def run_gateway_configs(bench: Bench, todo: list[str]) -> None:
    for config in todo:
        if config == "gateway-fairplay" and "gateway" in todo:
            continue  # measured on the one-worker gateway started for "gateway"
        server = start_sut(bench, config)
        check_gateway(bench, config, server)
        names = [config, "gateway-fairplay"] if config == "gateway" else [config]
        for name in (n for n in names if n in todo):
            print(f"{name}:", flush=True)
            measure(bench, name, server)
        for name in (n for n in names if n in todo and n in bench.plan.profile):
            record_profile(bench, name, server)
        bench.extra.setdefault("memory", {})[config] = [
            {"pid": pid, "process": comm, "rss_mib": round(rss / 1024, 1)}
            for pid, comm, rss, _ in server.members()
        ]
        bench.servers.stop(server)


def run_all(bench: Bench) -> None:
    todo = list(bench.plan.configs)
    if "upstream" in todo:
        upstream = start_upstream(bench, "upstream", cpus="1")
        print("upstream:", flush=True)
        measure(bench, "upstream", upstream)
        bench.servers.stop(upstream)
    if not set(todo) - {"upstream"}:
        return
    start_upstream(bench, "origin", cpus="0")
    for config in ("nginx-proxy", "bare-aiohttp"):
        if config in todo:
            server = start_sut(bench, config)
            check(server, target(bench, config)[0] + "/v1/license/widevine/x", {}, ANSWER.encode())
            print(f"{config}:", flush=True)
            measure(bench, config, server)
            bench.servers.stop(server)
    run_gateway_configs(bench, [c for c in todo if c.startswith("gateway") or c in KIND_CONFIGS])


# --- main --------------------------------------------------------------------------------


def _require_tools() -> None:
    missing = [
        tool for tool in ("wrk", "nginx", "taskset", "timeout") if shutil.which(tool) is None
    ]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run scripts/bench.sh (installs them)")
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the benchmark pins wrk to core 0 and the proxy to core 1: needs 2 cores")


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through `with Servers(...)`, which stops every server


def main() -> int:
    _require_tools()
    plan = env_plan()
    minutes, seconds = divmod(plan.expected_seconds, 60)
    kinds = sum(c in KIND_CONFIGS for c in plan.configs)
    print(
        f"bench: {len(plan.configs) - kinds} configs x {len(plan.connections)} connection counts"
        f" + {kinds} provider kinds x 1 (c{KIND_CONNECTIONS}), x {plan.repeats} repeats x "
        f"{plan.duration} s; expected about {minutes} min {seconds} s\n"
        f"pinning: wrk (1 thread) on core 0; system under test on core 1; upstream on core 1 "
        f"alone, core 0 behind a proxy; gateway-2w on cores 0-1 (contended)\n"
        f"player auth: {'on (JWT verified, cached by token hash)' if plan.player_auth else 'OFF'}",
        flush=True,
    )
    if plan.baseline_only:
        print(f"gateway added at {KIND_CONNECTIONS} connections: the kind rows' baseline")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="drm-gateway-bench-"))
    started = time.monotonic()
    bench = Bench(plan, workdir, srv.Servers(budget_seconds=plan.expected_seconds + 600))
    try:
        with bench.servers:
            for name in PORTS:
                bench.ports[name] = srv.free_port()
            bench.extra["token"] = write_workload(
                workdir, bench.ports, player_auth=plan.player_auth
            )
            run_all(bench)
        if plan.micro:
            from tests.perf.microbench import run_all as run_micro

            micro, kind_ratios, memory = run_micro()
            bench.extra["micro"], bench.extra["catalog_memory"] = micro, memory
            bench.extra["micro_kind_vs_generic"] = kind_ratios
        if plan.catalog:
            from tests.perf.catalogbench import run_all as run_catalog

            bench.extra["catalog"] = run_catalog(workdir)
    finally:
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(workdir, ignore_errors=True)
    results = summarize(bench.runs, plan, bench.extra, time.monotonic() - started)
    print_report(results)
    output = Path(os.environ.get("BENCH_OUTPUT", ROOT / "bench-results.json"))
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
