"""`make rehearse` at REHEARSE_SCALE=small (about a minute): the whole migration rehearsal as
ops run it (a subprocess: its own redis-server, emulators and gateway), plus the judgement of
flaps and fallbacks on hand-made records. (tests/perf holds the script but collects no tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from array import array
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.perf import rehearse_report as report
from tests.perf.rehearse_load import OK, Plan, Records
from tests.perf.rehearse_stack import ramp_bucket

ROOT = Path(__file__).resolve().parents[2]
KEYS = (
    "failed_licenses",
    "flaps",
    "fallbacks",
    "missing_id_detection_max_s",
    "missing_id_to_incoming_max_s",
    "licenses_by_provider",
    "targets",
    "targets_met",
    "parameters",
    "duration_s",
    "wall_time_s",
)


@pytest.mark.slow
def test_small_rehearsal_meets_its_targets(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env |= {"REHEARSE_SCALE": "small", "REHEARSE_OUT": str(tmp_path)}
    env.pop("REHEARSE_DIFF", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.perf.rehearse"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout[-4000:] + done.stderr[-4000:]
    results_path = tmp_path / "rehearsal-results.json"
    assert results_path.is_file(), output
    results = json.loads(results_path.read_text())
    assert set(KEYS) <= set(results), output
    assert done.returncode == 0, output
    assert results["targets_met"] is True
    assert all(t["met"] for t in results["targets"] if t["gating"])
    assert results["failed_licenses"] == 0 and results["flaps"] == 0
    assert [step["percent"] for step in results["ramp"]] == [10, 50, 100]
    assert all(step["diff"]["totals"]["moved_back"] == 0 for step in results["ramp"])
    # The phases happened: titles were discovered and filled, the outage made fallbacks,
    # the backfill copied keys, and incoming answered most of the end of the run.
    assert results["missing_id_detection"]["titles_listed"] > 0
    assert results["missing_id_to_incoming"]["titles_served_by_incoming"] > 0
    assert results["fallbacks"]["during_outage"] > 0
    assert results["backfill"] and (results["backfill"][0].get("totals") or {}).get("done", 0) > 0
    last = results["licenses_by_provider"][-1]
    assert last["incoming"] > last["legacy"]
    png = tmp_path / "rehearsal.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _records(rows: list[tuple[float, int, int]]) -> tuple[Plan, Records]:
    """Requests of title 0, widevine: (gateway start time, routed, fallback)."""
    plan = Plan(1.0, array("l", [0] * len(rows)), array("b", [0] * len(rows)))
    records = Records(len(rows))
    records.issued = len(rows)
    for number, (t, routed, fallback) in enumerate(rows):
        records.sent[number] = records.decided[number] = t
        records.routed[number] = routed
        records.answered[number] = 0 if fallback else routed
        records.fallback[number] = fallback
        records.verdict[number] = OK
    return plan, records


def test_a_fallback_is_not_a_flap_but_a_move_back_is() -> None:
    # legacy, incoming, then the fallback answers (still routed to incoming): no flap.
    plan, records = _records([(1.0, 0, 0), (2.0, 1, 0), (3.0, 1, 1), (4.0, 1, 0)])
    flapped, _ = report._flaps(plan, records, records.issued)
    assert flapped == set()
    # routed to incoming, then routed to legacy: a flap, whatever order they finished in.
    plan, records = _records([(5.0, 0, 0), (2.0, 1, 0)])
    flapped, samples = report._flaps(plan, records, records.issued)
    assert flapped == {0}
    assert samples[0]["incoming_at_s"] == 2.0 and samples[0]["legacy_at_s"] == 5.0


def test_eligibility_waits_for_the_ramp_step_that_includes_the_title() -> None:
    bucket = ramp_bucket(0)
    ramp = [{"percent": p, "applied_s": at} for p, at in ((10, 10.0), (50, 20.0), (100, 30.0))]
    first = next(step for step in ramp if bucket < step["percent"] * 100)
    assert report._eligible_at(0, 5.0, ramp) == first["applied_s"]
    assert report._eligible_at(0, 40.0, ramp) == 40.0
    assert report._eligible_at(0, 5.0, []) is None
    events = SimpleNamespace(filled_at={}, ramp=ramp)
    assert (
        report._to_incoming(plan=_records([])[0], records=Records(0), n=0, events=events)[
            "titles_filled"
        ]
        == 0
    )
