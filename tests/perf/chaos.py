"""`make chaos` (issue 17, item 7): a bounded loopback load test of the gateway's resilience.

    .venv/bin/python -m tests.perf.chaos

The gateway (`drm-gateway serve`, one worker) and both emulated providers (`drm-gateway
emulate legacy|incoming`) run as separate processes on 127.0.0.1 (free ports), each in its own
process group (tests/perf/servers.py); they are stopped, by their own process group ids only,
when the run ends, fails or is interrupted, and `timeout` kills them after the run's budget
in any case. The catalog holds 200 dual-held assets (both providers hold the keys); the rule
routes them to `incoming` with `fallback: legacy`.

Each scenario is a bounded run: CHAOS_RATE Widevine license requests per second (default 200)
for CHAOS_SECONDS (default 30), the fault from 8/30 to 22/30 of the run (8 s to 22 s by
default). The load is open-loop: request i is due at i / rate and its latency counts from
then, so a stalled gateway shows as latency, not as fewer requests.

Scenarios (CHAOS_SCENARIOS=a,b picks some): incoming-5xx-20, incoming-5xx-100,
incoming-latency-3s, incoming-hung (SIGSTOP, SIGCONT after), incoming-killed (SIGKILL,
restarted after), incoming-resets (every connection reset), both-slow (+5 s at both),
shadow-slow (live to legacy, `shadow: {to: incoming, percent: 100}`, incoming +3 s), and
slow-headers (CHAOS_SLOW_CONNECTIONS, default 2,000, connections sending one header line
every 2 s from 127.0.0.2-9 while the normal traffic runs, /healthz and /metrics probed on the
internal port every 0.25 s).

Printed per scenario, and written to CHAOS_OUTPUT (chaos-results.json): requests, success
ratio (HTTP 200), p50/p99 before, during and after the fault, upstream attempts at the
failing provider during the fault (the gateway's drm_gateway_upstream_responses_total delta:
answers, timeouts and connect errors alike; the emulator's own count beside it when it
answers), time to recover (the first whole second after the fault whose success ratio is
>= 99.9% and p99 <= 2x the before-fault p99), and each target with the number it was held
to. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proxy.upstream.breaker import BreakerSettings
from proxy.upstream.budget import RetryBudgetSettings
from proxy.upstream.deadline import DeadlineSettings
from tests.perf import servers as srv
from tests.perf.chaos_load import (
    ProbeResult,
    Sample,
    SlowStats,
    paced_load,
    probe_internal,
    slow_headers,
)
from tests.perf.chaos_stack import (
    RULES_LIVE,
    RULES_SHADOW,
    Metrics,
    Stack,
    build,
    provider_timeout_seconds,
)

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = "drm_gateway_upstream_responses_total"
RETRIES = "drm_gateway_upstream_retries_total"
RECOVERY_SUCCESS = 0.999
SINGLE_PROVIDER_SUCCESS = 0.999
SLOW_CLIENT_SUCCESS = 0.99
SHADOW_NOISE_MS = 10.0  # shadow target: live p99 <= 2x before + this
DEADLINE_SLACK_SECONDS = 0.1


@dataclass(frozen=True)
class Plan:
    rate: float
    seconds: float
    fault_start: float
    fault_end: float
    slow_connections: int
    scenarios: tuple[str, ...]
    output: Path

    @property
    def fault_seconds(self) -> float:
        return self.fault_end - self.fault_start


@dataclass(frozen=True)
class Resilience:
    """The gateway's settings the targets are derived from (config defaults; the provider's
    timeout from the chaos config)."""

    breaker: BreakerSettings
    budget: RetryBudgetSettings
    deadline: DeadlineSettings
    provider_timeout: float
    rate: float

    @property
    def first_try_seconds(self) -> float:
        """A first try that may be followed by the fallback gets this much at most."""
        share = self.deadline.seconds * self.deadline.first_try_share
        return min(self.provider_timeout, share)

    @property
    def detection_seconds(self) -> float:
        """From the fault's start until the breaker opens, at worst: a failure is known only
        when the first try times out, then `consecutive_failures` of them in a row arrive
        one request interval apart."""
        return self.first_try_seconds + self.breaker.consecutive_failures / self.rate

    def probe_allowance(self, seconds: float) -> int:
        """Calls an open circuit lets through in `seconds`: `half_open_probes` per
        `open_seconds`, counting a partial period as a whole one, plus one period."""
        periods = math.ceil(seconds / self.breaker.open_seconds) + 1
        return self.breaker.half_open_probes * periods

    def retry_allowance(self, requests: int, seconds: float) -> float:
        windows = math.ceil(seconds / self.budget.window_seconds)
        return self.budget.min_retries * windows + self.budget.ratio * requests


Action = Callable[[Stack], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    start: Action
    stop: Action
    failing: tuple[str, ...]  # the providers at fault (their attempts are counted)
    single_provider: bool = False  # the >= 99.9% success target applies
    slow_provider: bool = False  # the p99 <= 2x baseline + detection window target applies
    open_circuit: bool = False  # the probes-only target applies
    rules: str | None = None  # a rules file for the whole scenario (then back to RULES_LIVE)
    deadline_target: bool = False
    shadow_target: bool = False
    slow_clients: bool = False


def _faults(provider: str, **faults: Any) -> Action:
    def act(stack: Stack) -> None:
        stack.set_faults(provider, **faults)

    return act


def _both(*actions: Action) -> Action:
    def act(stack: Stack) -> None:
        for action in actions:
            action(stack)

    return act


def _signal(sig: signal.Signals) -> Action:
    def act(stack: Stack) -> None:
        stack.signal_group("incoming", sig)

    return act


def _nothing(stack: Stack) -> None:
    return None


def _kill(stack: Stack) -> None:
    stack.kill("incoming")


def _restart(stack: Stack) -> None:
    stack.start_emulator("incoming")


SCENARIOS = (
    Scenario(
        "incoming-5xx-20",
        _faults("incoming", error_rate=0.2),
        _faults("incoming"),
        ("incoming",),
        single_provider=True,
    ),
    Scenario(
        "incoming-5xx-100",
        _faults("incoming", error_rate=1.0),
        _faults("incoming"),
        ("incoming",),
        single_provider=True,
        open_circuit=True,
    ),
    Scenario(
        "incoming-latency-3s",
        _faults("incoming", latency_ms=3000),
        _faults("incoming"),
        ("incoming",),
        single_provider=True,
        slow_provider=True,
        open_circuit=True,
    ),
    Scenario(
        "incoming-hung",
        _signal(signal.SIGSTOP),
        _signal(signal.SIGCONT),
        ("incoming",),
        single_provider=True,
        slow_provider=True,
        open_circuit=True,
    ),
    Scenario(
        "incoming-killed",
        _kill,
        _restart,
        ("incoming",),
        single_provider=True,
        open_circuit=True,
    ),
    Scenario(
        "incoming-resets",
        _faults("incoming", reset_rate=1.0),
        _faults("incoming"),
        ("incoming",),
        single_provider=True,
        open_circuit=True,
    ),
    Scenario(
        "both-slow",
        _both(_faults("incoming", latency_ms=5000), _faults("legacy", latency_ms=5000)),
        _both(_faults("incoming"), _faults("legacy")),
        ("incoming", "legacy"),
        deadline_target=True,
    ),
    Scenario(
        "shadow-slow",
        _faults("incoming", latency_ms=3000),
        _faults("incoming"),
        ("incoming",),
        rules=RULES_SHADOW,
        shadow_target=True,
    ),
    Scenario("slow-headers", _nothing, _nothing, (), slow_clients=True),
)


# --- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Phase:
    requests: int
    success_ratio: float | None
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    statuses: dict[str, int]

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Phase:
        latencies = [s.latency * 1000 for s in samples]
        ok = sum(1 for s in samples if s.status == 200)
        statuses: dict[str, int] = {}
        for s in samples:
            statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
        return cls(
            requests=len(samples),
            success_ratio=ok / len(samples) if samples else None,
            p50_ms=_round(percentile(latencies, 50)),
            p99_ms=_round(percentile(latencies, 99)),
            max_ms=_round(max(latencies) if latencies else None),
            statuses=dict(sorted(statuses.items())),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "success_ratio": self.success_ratio,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "statuses": self.statuses,
        }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def recovery_seconds(
    samples: Sequence[Sample], fault_end: float, run_end: float, baseline_p99_ms: float | None
) -> int | None:
    """Whole seconds from the fault's end to the first one-second bucket (by due time) whose
    success ratio is >= 99.9% and p99 <= 2x the baseline p99; None if none is."""
    if baseline_p99_ms is None:
        return None
    second = 0
    while fault_end + second + 1 <= run_end + 1e-9:
        low, high = fault_end + second, fault_end + second + 1
        bucket = [s for s in samples if low <= s.sent < high]
        if bucket:
            phase = Phase.of(bucket)
            if (
                phase.success_ratio is not None
                and phase.success_ratio >= RECOVERY_SUCCESS
                and phase.p99_ms is not None
                and phase.p99_ms <= 2 * baseline_p99_ms
            ):
                return second
        second += 1
    return None


# --- running ------------------------------------------------------------------------------


@dataclass
class Target:
    description: str
    met: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"target": self.description, "met": self.met, "detail": self.detail}


@dataclass
class Outcome:
    scenario: Scenario
    samples: list[Sample]
    phases: dict[str, Phase]
    attempts: float | None
    attempts_after_detection: float | None
    emulator_requests: int | None
    retries: float
    budget_refused: float
    recovery_s: int | None
    targets: list[Target] = field(default_factory=list)
    probes: ProbeResult | None = None
    slow: SlowStats | None = None
    notes: list[str] = field(default_factory=list)
    client_errors: dict[str, int] = field(default_factory=dict)  # unanswered, by exception

    @property
    def success_ratio(self) -> float:
        ok = sum(1 for s in self.samples if s.status == 200)
        return ok / len(self.samples) if self.samples else 0.0


async def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def _attempts(before: Metrics, after: Metrics, providers: Sequence[str]) -> float:
    return sum(
        after.total(UPSTREAM, provider=p) - before.total(UPSTREAM, provider=p) for p in providers
    )


def _emulator_totals(stack: Stack, providers: Sequence[str]) -> int | None:
    totals = [stack.emulator_total(p) for p in providers]
    return None if any(t is None for t in totals) else sum(t for t in totals if t is not None)


async def _wait_closed(stack: Stack, timeout: float = 30.0) -> bool:
    """Send a trickle of requests (a circuit moves on only when traffic asks it to) until
    every circuit is closed again; False if one is still open after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(stack.circuits_closed):
            return True
        await asyncio.to_thread(stack.trickle)
        await asyncio.sleep(0.2)
    return False


async def run_scenario(stack: Stack, scenario: Scenario, plan: Plan, res: Resilience) -> Outcome:
    notes: list[str] = []
    if not await _wait_closed(stack):
        notes.append("a circuit was still open when the scenario started")
    if scenario.rules is not None:
        version = "chaos-shadow" if scenario.rules == RULES_SHADOW else "chaos-live"
        await asyncio.to_thread(stack.set_rules, scenario.rules, version)
    start = time.monotonic() + 0.5
    run_end = start + plan.seconds
    errors: dict[str, int] = {}
    load = asyncio.create_task(paced_load(stack.public_url, plan.rate, plan.seconds, start, errors))
    probes = None
    if scenario.slow_clients:
        probes = asyncio.create_task(probe_internal(stack.internal_url, run_end))
    await _sleep_until(start + plan.fault_start)
    before = await asyncio.to_thread(stack.metrics)
    emulator_before = await asyncio.to_thread(_emulator_totals, stack, scenario.failing)
    await asyncio.to_thread(scenario.start, stack)
    slow = None
    if scenario.slow_clients:
        host, port = "127.0.0.1", int(stack.public_url.rsplit(":", 1)[1])
        slow = asyncio.create_task(
            slow_headers(host, port, plan.slow_connections, start + plan.fault_end)
        )
    # Calls admitted before the breaker opened end at most one try later.
    settle = min(res.detection_seconds + res.first_try_seconds, plan.fault_seconds)
    await _sleep_until(start + plan.fault_start + settle)
    settled = await asyncio.to_thread(stack.metrics)
    await _sleep_until(start + plan.fault_end)
    during = await asyncio.to_thread(stack.metrics)
    emulator_during = await asyncio.to_thread(_emulator_totals, stack, scenario.failing)
    await asyncio.to_thread(scenario.stop, stack)
    samples = await load
    probe_result = await probes if probes is not None else None
    slow_result = await slow if slow is not None else None
    if scenario.rules is not None:
        await asyncio.to_thread(stack.set_rules, RULES_LIVE, "chaos-live")

    phases = {
        "before": Phase.of([s for s in samples if s.sent < plan.fault_start]),
        "during": Phase.of([s for s in samples if plan.fault_start <= s.sent < plan.fault_end]),
        "after": Phase.of([s for s in samples if s.sent >= plan.fault_end]),
    }
    failing = scenario.failing
    outcome = Outcome(
        scenario=scenario,
        samples=samples,
        phases=phases,
        attempts=_attempts(before, during, failing) if failing else None,
        attempts_after_detection=_attempts(settled, during, failing) if failing else None,
        emulator_requests=(
            emulator_during - emulator_before
            if emulator_before is not None and emulator_during is not None
            else None
        ),
        retries=sum(during.total(RETRIES, provider=p, result="retried") for p in failing)
        - sum(before.total(RETRIES, provider=p, result="retried") for p in failing),
        budget_refused=sum(
            during.total(RETRIES, provider=p, result="budget_refused") for p in failing
        )
        - sum(before.total(RETRIES, provider=p, result="budget_refused") for p in failing),
        recovery_s=recovery_seconds(samples, plan.fault_end, plan.seconds, phases["before"].p99_ms),
        probes=probe_result,
        slow=slow_result,
        notes=notes,
        client_errors=errors,
    )
    outcome.targets = judge(outcome, plan, res, settle)
    return outcome


def judge(outcome: Outcome, plan: Plan, res: Resilience, settle: float) -> list[Target]:
    """The issue's targets that apply to this scenario, each with the bound it was held to."""
    sc, phases, targets = outcome.scenario, outcome.phases, []
    base_p99 = phases["before"].p99_ms or 0.0
    during = phases["during"]
    if sc.single_provider:
        ratio = outcome.success_ratio
        targets.append(
            Target(
                f"success >= {SINGLE_PROVIDER_SUCCESS:.1%}",
                ratio >= SINGLE_PROVIDER_SUCCESS,
                f"{ratio:.4%} of {len(outcome.samples)}",
            )
        )
    if sc.slow_provider:
        bound = 2 * base_p99 + res.detection_seconds * 1000
        p99 = during.p99_ms if during.p99_ms is not None else math.inf
        targets.append(
            Target(
                "p99 during <= 2x p99 before + detection window",
                p99 <= bound,
                f"{p99:.0f} ms <= {bound:.0f} ms",
            )
        )
    if sc.open_circuit and outcome.attempts_after_detection is not None:
        allowed = res.probe_allowance(plan.fault_seconds - settle)
        got = outcome.attempts_after_detection
        targets.append(
            Target(
                "open/dead provider gets only half-open probes",
                got <= allowed,
                f"{got:.0f} calls in the {plan.fault_seconds - settle:.1f} s after detection "
                f"(+{settle:.2f} s) <= {allowed}",
            )
        )
    if sc.failing:
        allowed_retries = res.retry_allowance(during.requests, plan.fault_seconds)
        targets.append(
            Target(
                "retries within budget + floor",
                outcome.retries <= allowed_retries,
                f"{outcome.retries:.0f} <= {allowed_retries:.0f}",
            )
        )
    if sc.deadline_target:
        bound_ms = (res.deadline.seconds + DEADLINE_SLACK_SECONDS) * 1000
        worst = during.max_ms if during.max_ms is not None else math.inf
        unanswered = during.statuses.get("0", 0)
        targets.append(
            Target(
                "answer (504/503) within deadline + 100 ms",
                worst <= bound_ms and unanswered == 0,
                f"max {worst:.0f} ms <= {bound_ms:.0f} ms; statuses {during.statuses}",
            )
        )
    if sc.shadow_target:
        ratio = during.success_ratio or 0.0
        bound = 2 * base_p99 + SHADOW_NOISE_MS
        p99 = during.p99_ms if during.p99_ms is not None else math.inf
        targets.append(
            Target(
                "live traffic unchanged by a slow shadow",
                ratio >= SINGLE_PROVIDER_SUCCESS and p99 <= bound,
                f"success {ratio:.4%} >= {SINGLE_PROVIDER_SUCCESS:.1%}, "
                f"p99 {p99:.0f} ms <= 2x{base_p99:.0f}+{SHADOW_NOISE_MS:.0f} ms",
            )
        )
    if sc.slow_clients:
        ratio = outcome.success_ratio
        probes = outcome.probes or ProbeResult()
        targets.append(
            Target(
                f"normal traffic >= {SLOW_CLIENT_SUCCESS:.0%} under slow clients",
                ratio >= SLOW_CLIENT_SUCCESS,
                f"{ratio:.4%}",
            )
        )
        targets.append(
            Target(
                "/healthz and /metrics answer every probe",
                probes.sent > 0 and probes.answered == probes.sent,
                f"{probes.answered}/{probes.sent}"
                + (f" ({', '.join(probes.failures[:3])})" if probes.failures else ""),
            )
        )
    return targets


# --- report -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(outcomes: Sequence[Outcome], res: Resilience, plan: Plan) -> None:
    print()
    print(
        f"chaos: {plan.rate:g} req/s for {plan.seconds:g} s per scenario, fault "
        f"{plan.fault_start:g}-{plan.fault_end:g} s; breaker detection window "
        f"{res.detection_seconds:.3f} s (first try {res.first_try_seconds:g} s + "
        f"{res.breaker.consecutive_failures} failures at {plan.rate:g} req/s); half-open probes "
        f"{res.breaker.half_open_probes} per {res.breaker.open_seconds:g} s; deadline "
        f"{res.deadline.seconds:g} s"
    )
    header = (
        f"{'scenario':<20} {'reqs':>5} {'success':>8}  "
        f"{'p50 b/d/a ms':>16}  {'p99 b/d/a ms':>18}  {'attempts':>8} {'after':>5} "
        f"{'recov':>5}  targets"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        p = o.phases
        p50 = "/".join(_fmt(p[k].p50_ms) for k in ("before", "during", "after"))
        p99 = "/".join(_fmt(p[k].p99_ms) for k in ("before", "during", "after"))
        met = "ok" if all(t.met for t in o.targets) else "MISSED"
        print(
            f"{o.scenario.name:<20} {len(o.samples):>5} {o.success_ratio:>8.2%}  {p50:>16}  "
            f"{p99:>18}  {_fmt(o.attempts):>8} {_fmt(o.attempts_after_detection):>5} "
            f"{_fmt(o.recovery_s):>5}  {met}"
        )
    print()
    for o in outcomes:
        during = o.phases["during"]
        extra = f"during: statuses {during.statuses}"
        if o.client_errors:
            extra += f"; unanswered {o.client_errors}"
        if o.emulator_requests is not None:
            extra += f"; emulator counted {o.emulator_requests}"
        if o.retries or o.budget_refused:
            extra += f"; retries {o.retries:.0f}, budget-refused {o.budget_refused:.0f}"
        if o.slow is not None:
            s = o.slow
            extra += (
                f"; slow conns opened {s.opened}, peak {s.peak_open}, closed by gateway "
                f"{s.closed_by_server}, connect failures {s.refused}"
            )
        print(f"  {o.scenario.name}: {extra}")
        for note in o.notes:
            print(f"    note: {note}")
        for t in o.targets:
            print(f"    [{'ok' if t.met else 'MISSED'}] {t.description}: {t.detail}")


def results_json(outcomes: Sequence[Outcome], res: Resilience, plan: Plan) -> dict[str, Any]:
    scenarios = []
    for o in outcomes:
        during = o.phases["during"]
        entry: dict[str, Any] = {
            "name": o.scenario.name,
            "requests": len(o.samples),
            "success_ratio": round(o.success_ratio, 6),
            # p50/p99 of the requests due during the fault; every phase under "phases".
            "p50_ms": during.p50_ms,
            "p99_ms": during.p99_ms,
            "phases": {name: phase.as_json() for name, phase in o.phases.items()},
            "upstream_attempts_failing_provider": o.attempts,
            "upstream_attempts_after_detection": o.attempts_after_detection,
            "emulator_requests_failing_provider": o.emulator_requests,
            "failing_providers": list(o.scenario.failing),
            "retries": o.retries,
            "retries_budget_refused": o.budget_refused,
            "recovery_s": o.recovery_s,
            "targets": [t.as_json() for t in o.targets],
            "targets_met": all(t.met for t in o.targets),
            "notes": o.notes,
            "client_errors": o.client_errors,
        }
        if o.probes is not None:
            entry["internal_probes"] = {
                "sent": o.probes.sent,
                "answered": o.probes.answered,
                "failures": o.probes.failures[:20],
            }
        if o.slow is not None:
            entry["slow_connections"] = vars(o.slow)
        scenarios.append(entry)
    return {
        "rate_per_second": plan.rate,
        "seconds": plan.seconds,
        "fault_window_s": [plan.fault_start, plan.fault_end],
        "breaker_detection_window_s": round(res.detection_seconds, 3),
        "settings": {
            "first_try_seconds": res.first_try_seconds,
            "deadline_seconds": res.deadline.seconds,
            "breaker": vars_of(res.breaker),
            "retry_budget": vars_of(res.budget),
        },
        "scenarios": scenarios,
        "targets_met": all(all(t.met for t in o.targets) for o in outcomes),
    }


def vars_of(settings: Any) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__dataclass_fields__}


# --- main ---------------------------------------------------------------------------------


def env_plan() -> Plan:
    rate = float(os.environ.get("CHAOS_RATE", "200"))
    seconds = float(os.environ.get("CHAOS_SECONDS", "30"))
    if rate <= 0 or seconds < 6:
        raise SystemExit("CHAOS_RATE must be > 0 and CHAOS_SECONDS at least 6")
    names = tuple(s.name for s in SCENARIOS)
    chosen = tuple(n for n in os.environ.get("CHAOS_SCENARIOS", ",".join(names)).split(",") if n)
    unknown = set(chosen) - set(names)
    if unknown:
        raise SystemExit(f"unknown CHAOS_SCENARIOS {sorted(unknown)} (known: {', '.join(names)})")
    return Plan(
        rate=rate,
        seconds=seconds,
        fault_start=round(seconds * 8 / 30, 3),
        fault_end=round(seconds * 22 / 30, 3),
        slow_connections=int(os.environ.get("CHAOS_SLOW_CONNECTIONS", "2000")),
        scenarios=chosen,
        output=Path(os.environ.get("CHAOS_OUTPUT", str(ROOT / "chaos-results.json"))),
    )


async def run_all(stack: Stack, plan: Plan, res: Resilience) -> list[Outcome]:
    # SIGTERM (and asyncio.run's own SIGINT handling) cancel the run; main stops the servers.
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    outcomes = []
    for scenario in SCENARIOS:
        if scenario.name not in plan.scenarios:
            continue
        print(f"{time.strftime('%H:%M:%S')} {scenario.name} ...", flush=True)
        outcome = await run_scenario(stack, scenario, plan, res)
        during = outcome.phases["during"]
        print(
            f"  {len(outcome.samples)} requests, success {outcome.success_ratio:.2%}, "
            f"p99 during {_fmt(during.p99_ms)} ms, targets "
            f"{'ok' if all(t.met for t in outcome.targets) else 'MISSED'}",
            flush=True,
        )
        outcomes.append(outcome)
    return outcomes


def _raise_descriptor_limit(wanted: int = 65_536) -> None:
    """Root may raise its hard limit on open files (children inherit it): 20,000 slow
    connections need that many descriptors on each side of loopback."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(hard, wanted)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    _raise_descriptor_limit()
    plan = env_plan()
    # Each scenario: its run, the drain (the deadline), circuits closing, a rules reload.
    budget = len(plan.scenarios) * (plan.seconds + 60) + 120
    keep = os.environ.get("CHAOS_KEEP") == "1"
    workdir = Path(tempfile.mkdtemp(prefix="drm-chaos-"))
    finished = False
    with srv.Servers(budget) as servers:
        srv.interrupt_on_sigterm()
        try:
            stack = build(workdir, servers)
            res = Resilience(
                BreakerSettings(),
                RetryBudgetSettings(),
                DeadlineSettings(),
                provider_timeout_seconds(workdir),
                plan.rate,
            )
            print(f"work dir {workdir}; gateway {stack.public_url}", flush=True)
            outcomes = asyncio.run(run_all(stack, plan, res))
            finished = True
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: stopping the servers", file=sys.stderr)
            return 130
        finally:
            servers.stop_all()  # a stopped (hung) emulator is continued first
            if not finished:
                print(f"logs kept in {workdir}", file=sys.stderr)
            elif not keep:
                srv.remove_workdir(workdir)
    print_table(outcomes, res, plan)
    results = results_json(outcomes, res, plan)
    plan.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {plan.output}; targets {'met' if results['targets_met'] else 'MISSED'}")
    return 0 if results["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
