"""The rehearsal's verdict: the numbers of rehearsal-results.json, its targets, the printed
summary and the chart.

Definitions (also in the JSON's `definitions`):

- failed license: a request not answered 200, not answered at all within 15 s, or answered
  200 with a key that is not the title's content key (ClearKey, AES-128). Every title of the
  rehearsal is servable (legacy holds the keys of all of them and needs no drmResourceId), so
  every failed request counts.
- routed provider: the provider the rules chose for a request (the access line's
  `fallback_from` when the fallback answered, else its `provider`).
- flap: a (title, DRM system) whose routed provider was `incoming` for one request and
  `legacy` for a later one (ordered by when the gateway started them). A request the rules
  routed to incoming but the fallback (legacy) answered, e.g. during the outage, is a
  fallback, not a flap: its routed provider is still incoming. Fallbacks are counted apart.
- missing-id detection: from a title's first request (its due time) to the first poll of
  `/admin/missing` that lists it. A title first requested more than 60 s before the end and
  never listed counts as undetected (target missed).
- id filled -> incoming: from the moment a title is eligible for incoming (its id is in the
  catalog and the ramp includes its bucket) to the due time of its first request answered by
  incoming; requests sent more than STALE_GRACE_S after eligibility and still routed to
  legacy are counted as `stale_after_fill`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.perf.rehearse_load import (
    DRMS,
    OK,
    PROVIDERS,
    VERDICTS,
    AccessLog,
    Plan,
    Records,
)
from tests.perf.rehearse_stack import (
    RAMP_STEPS,
    Scale,
    TitleClass,
    asset_id,
    ramp_bucket,
)

DETECTION_TARGET_S = 60.0
WALL_TARGET_S = 600.0
BUCKET_S = 10.0
STALE_GRACE_S = 5.0
OUTAGE_SETTLE_S = 15.0  # after the restart, circuits close on the next probes
SAMPLES = 10


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50": _round(_percentile(values, 50)),
        "p95": _round(_percentile(values, 95)),
        "max": _round(max(values) if values else None),
    }


def _eligible_at(index: int, filled: float, ramp: Sequence[dict[str, Any]]) -> float | None:
    """When title `index` could first go to incoming after its id was filled: the later of
    the fill and the first applied ramp step whose threshold includes its bucket."""
    bucket = ramp_bucket(index)
    for step in ramp:
        if bucket < round(step["percent"] * 100):
            return max(filled, float(step["applied_s"]))
    return None


def analyse(
    scale: Scale,
    kinds: Sequence[TitleClass],
    plan: Plan,
    records: Records,
    access: AccessLog,
    events: Any,
    *,
    wall_seconds: float,
) -> dict[str, Any]:
    n = records.issued
    end = max((records.sent[i] for i in range(n)), default=0.0)
    killed = events.outage.get("killed_s")
    restarted = events.outage.get("restarted_s")

    verdicts: Counter[str] = Counter()
    failed_by: Counter[str] = Counter()
    failed_samples: list[dict[str, Any]] = []
    fallbacks = fallbacks_outage = 0
    buckets: dict[int, Counter[str]] = {}
    first_request: dict[int, float] = {}
    incoming_after_restart = 0
    for i in range(n):
        index, drm, t = plan.titles[i], DRMS[plan.drms[i]], records.sent[i]
        verdict = records.verdict[i]
        verdicts[VERDICTS[verdict]] += 1
        bucket = buckets.setdefault(int(t // BUCKET_S), Counter())
        bucket["requests"] += 1
        if kinds[index] == "noid" and index not in first_request:
            first_request[index] = t
        if records.fallback[i]:
            fallbacks += 1
            bucket["fallbacks"] += 1
            if killed is not None and killed <= t <= (restarted or end) + OUTAGE_SETTLE_S:
                fallbacks_outage += 1
        if verdict != OK:
            bucket["failed"] += 1
            failed_by[f"{drm}/{kinds[index]}/{records.status[i] or VERDICTS[verdict]}"] += 1
            if len(failed_samples) < SAMPLES:
                failed_samples.append(
                    {"t_s": round(t, 2), "asset_id": asset_id(index), "drm": drm,
                     "status": records.status[i], "verdict": VERDICTS[verdict]}
                )  # fmt: skip
            continue
        answered = records.answered[i]
        bucket[PROVIDERS[answered] if answered >= 0 else "unknown"] += 1
        if answered == 1 and restarted is not None and t > restarted:
            incoming_after_restart += 1

    flaps, flap_samples = _flaps(plan, records, n)
    detection = _detection(first_request, events.first_listed, end)
    to_incoming = _to_incoming(plan, records, n, events)

    by_time = [
        {"t_s": key * BUCKET_S, **{k: counts.get(k, 0) for k in
         ("requests", "legacy", "incoming", "unknown", "failed", "fallbacks")}}
        for key, counts in sorted(buckets.items())
    ]  # fmt: skip
    steps = [step["percent"] for step in events.ramp]
    gated = all(step.get("gated") for step in events.ramp)
    failed = n - verdicts["ok"]
    det_max = detection["max_s"]
    targets = [
        _target("failed_licenses", "== 0", failed, failed == 0),
        _target("flaps", "== 0", len(flaps), not flaps),
        _target(
            "missing_id_detection_max_s",
            f"<= {DETECTION_TARGET_S:g} s, no requested title left unlisted",
            det_max,
            det_max is not None and det_max <= DETECTION_TARGET_S and detection["undetected"] == 0,
        ),
        _target(
            "ramp_reached_100",
            "steps 10, 50, 100% each applied after `rules diff` showed nothing moving back",
            steps,
            steps == list(RAMP_STEPS) and gated,
        ),
        _target(
            "outage_rehearsed",
            f"incoming killed for {scale.outage_seconds:g} s, restarted, serving again",
            {
                "killed_s": killed,
                "restarted_s": restarted,
                "incoming_ok_after": incoming_after_restart,
            },
            killed is not None and restarted is not None and incoming_after_restart > 0,
        ),
        _target(
            "wall_time_s",
            f"<= {WALL_TARGET_S:g} s at full scale (reported, not gating)",
            round(wall_seconds, 1),
            wall_seconds <= WALL_TARGET_S or scale.name != "full",
            gating=False,
        ),
    ]
    joined = sum(1 for i in range(n) if records.routed[i] >= 0)
    return {
        "failed_licenses": failed,
        "flaps": len(flaps),
        "fallbacks": {
            "total": fallbacks,
            "during_outage": fallbacks_outage,
            "outside_outage": fallbacks - fallbacks_outage,
            "outage_window_s": [killed, (restarted or end) + OUTAGE_SETTLE_S]
            if killed is not None
            else None,
        },
        "missing_id_detection_max_s": det_max,
        "missing_id_to_incoming_max_s": to_incoming["max_s"],
        "licenses_by_provider": by_time,
        "targets": targets,
        "targets_met": all(t["met"] for t in targets if t["gating"]),
        "parameters": scale.as_json(),
        "duration_s": round(end, 1),
        "wall_time_s": round(wall_seconds, 1),
        "requests": n,
        "verdicts": dict(verdicts),
        "failed_by": dict(failed_by.most_common(20)),
        "failed_samples": failed_samples,
        "flap_samples": flap_samples,
        "missing_id_detection": detection,
        "missing_id_to_incoming": to_incoming,
        "ramp": events.ramp,
        "rules_diffs": events.diffs,
        "outage": events.outage,
        "backfill": events.backfill,
        "id_fill_batches": events.fills,
        "errors": events.errors,
        "access_log": {
            "lines": access.lines,
            "requests_joined": joined,
            "share_joined": round(joined / n, 4) if n else None,
        },
        "titles": dict(Counter(kinds)),
        "definitions": __doc__.split("Definitions (also in the JSON's `definitions`):", 1)[1]
        .strip()
        .replace("\n  ", " ")
        .split("\n- "),
    }


def _target(
    name: str, target: str, value: Any, met: bool, *, gating: bool = True
) -> dict[str, Any]:
    return {"name": name, "target": target, "value": value, "met": bool(met), "gating": gating}


def _flaps(plan: Plan, records: Records, n: int) -> tuple[set[int], list[dict[str, Any]]]:
    """Titles with a (title, DRM) routed incoming then, later, legacy."""
    order = sorted(
        (records.decided[i] if records.decided[i] >= 0 else records.sent[i], i)
        for i in range(n)
        if records.routed[i] >= 0
    )
    on_incoming: dict[int, float] = {}
    flapped: set[int] = set()
    samples: list[dict[str, Any]] = []
    for t, i in order:
        key = plan.titles[i] * len(DRMS) + plan.drms[i]
        if records.routed[i] == 1:
            on_incoming.setdefault(key, t)
        elif key in on_incoming:
            index = plan.titles[i]
            if index not in flapped and len(samples) < SAMPLES:
                samples.append(
                    {"asset_id": asset_id(index), "drm": DRMS[plan.drms[i]],
                     "incoming_at_s": round(on_incoming[key], 3), "legacy_at_s": round(t, 3)}
                )  # fmt: skip
            flapped.add(index)
    return flapped, samples


def _detection(
    first_request: dict[int, float], first_listed: dict[int, float], end: float
) -> dict[str, Any]:
    delays = []
    undetected = pending = 0
    for index, t in first_request.items():
        listed = first_listed.get(index)
        if listed is not None:
            delays.append(max(0.0, listed - t))
        elif end - t > DETECTION_TARGET_S:
            undetected += 1
        else:
            pending += 1
    return {
        "titles_requested": len(first_request),
        "titles_listed": len(delays),
        "undetected": undetected,
        "pending_at_end": pending,
        "max_s": _round(max(delays) if delays else None),
        **{k: v for k, v in _stats(delays).items() if k != "max"},
    }


def _to_incoming(plan: Plan, records: Records, n: int, events: Any) -> dict[str, Any]:
    eligible: dict[int, float] = {}
    for index, filled in events.filled_at.items():
        at = _eligible_at(index, filled, events.ramp)
        if at is not None:
            eligible[index] = at
    first_incoming: dict[int, float] = {}
    stale = 0
    stale_samples: list[dict[str, Any]] = []
    for i in range(n):
        index = plan.titles[i]
        at = eligible.get(index)
        if at is None:
            continue
        t = records.sent[i]
        if t >= at and records.answered[i] == 1 and records.verdict[i] == OK:
            first_incoming.setdefault(index, t)
        if t > at + STALE_GRACE_S and records.routed[i] == 0:
            stale += 1
            if len(stale_samples) < SAMPLES:
                stale_samples.append(
                    {"asset_id": asset_id(index), "eligible_s": round(at, 2), "t_s": round(t, 2)}
                )
    delays = [max(0.0, first_incoming[i] - eligible[i]) for i in first_incoming]
    return {
        "titles_filled": len(events.filled_at),
        "titles_eligible": len(eligible),
        "titles_served_by_incoming": len(first_incoming),
        "not_requested_since": len(eligible) - len(first_incoming),
        "stale_after_fill": stale,
        "stale_samples": stale_samples,
        "max_s": _round(max(delays) if delays else None),
        **{k: v for k, v in _stats(delays).items() if k != "max"},
    }


# --- printed summary and chart --------------------------------------------------------------


def print_summary(results: dict[str, Any]) -> None:
    p = results["parameters"]
    print()
    print(
        f"rehearsal ({p['scale']}): {p['titles']:,} titles, {results['requests']:,} requests "
        f"at {p['rate_per_second']:g} req/s over {results['duration_s']:g} s; wall time "
        f"{results['wall_time_s']:g} s"
    )
    print(f"  verdicts            {results['verdicts']}")
    if results["failed_by"]:
        print(f"  failed by           {results['failed_by']}")
    fb = results["fallbacks"]
    print(
        f"  fallbacks           {fb['total']} ({fb['during_outage']} in the outage window, "
        f"{fb['outside_outage']} outside)"
    )
    det = results["missing_id_detection"]
    print(
        f"  missing-id titles   requested {det['titles_requested']}, listed "
        f"{det['titles_listed']}, detection p50 {det['p50']} s max {det['max_s']} s"
    )
    inc = results["missing_id_to_incoming"]
    print(
        f"  id filled->incoming filled {inc['titles_filled']}, eligible {inc['titles_eligible']}, "
        f"served by incoming {inc['titles_served_by_incoming']}, p50 {inc['p50']} s max "
        f"{inc['max_s']} s, stale {inc['stale_after_fill']}"
    )
    for step in results["ramp"]:
        totals = step["diff"].get("totals", "skipped")
        print(f"  ramp {step['percent']:>3}% at {step['applied_s']:7.1f} s  rules diff {totals}")
    print(f"  outage              {results['outage']}")
    for run in results["backfill"]:
        print(f"  backfill run {run['run']}     exit {run['exit']} {run.get('totals')}")
    for error in results["errors"][:5]:
        print(f"  error: {error}")
    print()
    for t in results["targets"]:
        mark = "ok" if t["met"] else ("MISSED" if t["gating"] else "missed (not gating)")
        print(f"  [{mark}] {t['name']}: {t['value']} (target {t['target']})")
    print(f"\ntargets {'met' if results['targets_met'] else 'MISSED'}")


def chart(results: dict[str, Any], records: Records, events: Any, scale: Scale, path: Path) -> None:
    """The incoming share of answered licenses and the error rate over time (about 100
    points), with the ramp steps and the outage marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_s = max(2.0, round(scale.seconds / 100))  # about 100 points
    size = int(max(results["duration_s"], 1) // step_s) + 1
    total, failed, ok, incoming = ([0] * size for _ in range(4))
    for i in range(records.issued):
        b = int(records.sent[i] // step_s)
        total[b] += 1
        if records.verdict[i] != OK:
            failed[b] += 1
        elif records.answered[i] >= 0:
            ok[b] += 1
            incoming[b] += records.answered[i] == 1
    xs = [b * step_s for b in range(size)]
    share = [100 * incoming[b] / ok[b] if ok[b] else float("nan") for b in range(size)]
    errors = [100 * failed[b] / total[b] if total[b] else float("nan") for b in range(size)]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    top.plot(xs, share, color="tab:blue", label="answered by incoming (%)")
    top.set_ylabel("incoming share (%)")
    top.set_ylim(-2, 102)
    bottom.plot(xs, errors, color="tab:red", label="failed licenses (%)")
    bottom.set_ylabel("error rate (%)")
    bottom.set_xlabel("seconds since the load started")
    bottom.set_ylim(bottom=0, top=max(1.0, max((e for e in errors if e == e), default=0) * 1.2))
    for axis in (top, bottom):
        if "killed_s" in events.outage:
            axis.axvspan(
                events.outage["killed_s"],
                events.outage.get("restarted_s", results["duration_s"]),
                color="tab:orange",
                alpha=0.25,
                label="incoming down",
            )
        for step in events.ramp:
            axis.axvline(step["applied_s"], color="grey", linestyle="--", linewidth=1)
        axis.grid(alpha=0.3)
    for step in events.ramp:
        top.annotate(f"{step['percent']}%", (step["applied_s"], 95), xytext=(3, 0),
                     textcoords="offset points", fontsize=8)  # fmt: skip
    top.legend(loc="lower right", fontsize=8)
    bottom.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"migration rehearsal ({scale.name}): {scale.titles:,} titles, {scale.rate:g} req/s; "
        f"failed {results['failed_licenses']}, flaps {results['flaps']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
