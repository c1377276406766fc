"""`make rehearse` (issue 18, item 5): a migration rehearsal on loopback.

    .venv/bin/python -m tests.perf.rehearse          # full: 100,000 titles, 300 req/s
    REHEARSE_SCALE=small .venv/bin/python -m tests.perf.rehearse   # ~1 minute

A private redis-server holds the catalog (5% of the titles without a drmResourceId, 40% with
keys only at legacy, the rest at both); both emulated providers and the gateway run as their
own processes on 127.0.0.1 (tests/perf/servers.py; stopped by their process group ids). The
rules file starts with one ramp rule toward `incoming` at 0% (fallback `legacy`). While a
paced player load runs over every DRM system (tests/perf/rehearse_load.py), the rehearsal:

(a) runs `drm-gateway backfill --from legacy --to incoming --all --rate N/s` (rerun once to
    resume when titles failed during the outage);
(b) polls `GET /admin/missing` and fills the listed titles' drmResourceIds in batches with
    `drm-gateway catalog import BATCH --to redis://…`;
(c) raises the ramp 0 → 10 → 50 → 100% by rewriting the rules file, each step only after
    `drm-gateway rules diff OLD NEW --config C --catalog redis://… --json` exits 0 with
    `totals.moved_back` 0 (else it waits and asks again; REHEARSE_DIFF=skip applies steps
    ungated and marks that target missed);
(d) kills the incoming emulator (SIGKILL) midway and restarts it on the same port 10 s later.

It prints progress, a summary, and writes rehearsal-results.json and rehearsal.png to
REHEARSE_OUT (default: the current directory); exit status 1 when a target is missed
(tests/perf/rehearse_report.py defines them), 2 when the rehearsal could not run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.conftest import ADMIN_TOKEN
from tests.perf import rehearse_report as report
from tests.perf import servers as srv
from tests.perf.rehearse_load import AccessLog, Plan, Records, load_process, merge_player_columns
from tests.perf.rehearse_stack import (
    RAMP_STEPS,
    RehearsalStack,
    Scale,
    TitleClass,
    catalog_row,
    classes,
    cli,
    gateway_config,
    new_stack,
    provider_header_supported,
    rules_text,
    rules_version,
    scale_from_env,
    start_redis,
    write_files,
    write_rows,
)

MISSING_POLL_SECONDS = 2.0
FILL_EVERY_SECONDS = 3.0
PROGRESS_EVERY_SECONDS = 10.0
DIFF_RETRY_SECONDS = 5.0
RUN_TAG = "rh"


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


@dataclass
class Events:
    """What the rehearsal did, and when (seconds from the load's start)."""

    ramp: list[dict[str, Any]] = field(default_factory=list)  # applied steps
    diffs: list[dict[str, Any]] = field(default_factory=list)  # every rules diff asked
    outage: dict[str, float] = field(default_factory=dict)
    backfill: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)  # id batches
    first_listed: dict[int, float] = field(default_factory=dict)  # title -> seen in /missing
    filled_at: dict[int, float] = field(default_factory=dict)  # title -> id in the catalog
    errors: list[str] = field(default_factory=list)
    percent: int = 0


@dataclass
class Rehearsal:
    stack: RehearsalStack
    scale: Scale
    kinds: list[TitleClass]
    redis_url: str
    start: float = 0.0  # monotonic time of the load's start
    events: Events = field(default_factory=Events)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    counters: Any = None  # the load process's shared counters (issued, failed)

    def now(self) -> float:
        return time.monotonic() - self.start

    async def sleep_until(self, moment: float) -> bool:
        """Sleep until `moment` (load time); False if the load stopped first."""
        delay = moment - self.now()
        if delay <= 0:
            return not self.stop.is_set()
        try:
            await asyncio.wait_for(self.stop.wait(), delay)
        except TimeoutError:
            return True
        return False

    async def run_cli(
        self, name: str, *args: str, stoppable: bool = False
    ) -> tuple[int, bytes, bytes]:
        """Run a `drm-gateway` command; its stderr goes to `<name>.err` in the work dir as it
        comes (progress reads it); `stoppable`: SIGTERM it (by its PID) when the load ends
        first."""
        err_path = self.stack.workdir / f"{name}.err"
        with err_path.open("wb") as err_file:
            process = await asyncio.create_subprocess_exec(
                *cli(*args),
                stdout=asyncio.subprocess.PIPE,
                stderr=err_file,
                stdin=asyncio.subprocess.DEVNULL,
                cwd=self.stack.workdir,
                env=self.stack.env,
            )
        talk = asyncio.ensure_future(process.communicate())
        if stoppable:
            stopped = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({talk, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not talk.done() and process.returncode is None:
                process.terminate()
        out, _ = await talk
        code = process.returncode if process.returncode is not None else -1
        (self.stack.workdir / f"{name}.out").write_bytes(out)
        return code, out, err_path.read_bytes()

    def backfill_progress(self) -> str:
        """The running backfill's last progress line (its stderr), or ''."""
        runs = sorted(self.stack.workdir.glob("backfill-*.err"))
        if not runs:
            return ""
        with runs[-1].open("rb") as err:
            err.seek(max(0, runs[-1].stat().st_size - 400))
            tail = err.read().decode(errors="replace")
        lines = [line.strip() for line in tail.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1][-140:] if lines else ""

    # --- (a) the key backfill --------------------------------------------------------------

    async def backfill(self) -> None:
        if not await self.sleep_until(self.scale.backfill_start):
            return
        for attempt in (1, 2):
            started = self.now()
            log(f"backfill run {attempt}: legacy -> incoming at {self.scale.backfill_rate:g}/s")
            report_path = self.stack.workdir / f"backfill-{attempt}.json"
            code, _out, err = await self.run_cli(
                f"backfill-{attempt}",
                "backfill", "--config", str(self.stack.config_path),
                "--from", "legacy", "--to", "incoming", "--all",
                "--rate", f"{self.scale.backfill_rate:g}/s", "--concurrency", "4",
                "--checkpoint", str(self.stack.workdir / "backfill.checkpoint"),
                "--report-json", str(report_path), stoppable=True,
            )  # fmt: skip
            entry: dict[str, Any] = {
                "run": attempt,
                "started_s": round(started, 1),
                "ended_s": round(self.now(), 1),
                "exit": code,
                "stopped_at_load_end": self.stop.is_set(),
            }
            try:
                data = json.loads(report_path.read_text())
                entry["totals"] = data.get("totals")
            except (OSError, ValueError):
                entry["stderr_tail"] = err.decode(errors="replace")[-400:]
            self.events.backfill.append(entry)
            log(f"backfill run {attempt}: exit {code}, {entry.get('totals')}")
            if code != 1 or self.stop.is_set():
                return
            # Titles failed while incoming was down: resume after the outage ends.
            end = self.scale.outage_at + self.scale.outage_seconds + 2
            if not await self.sleep_until(end):
                return

    # --- (b) missing drmResourceIds --------------------------------------------------------

    def _missing(self) -> list[str]:
        request = urllib.request.Request(
            f"{self.stack.internal_url}/admin/missing?limit=100000",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            data = json.loads(resp.read())
        return [str(title["asset_id"]) for title in data["titles"]]

    async def poll_missing(self, queue: asyncio.Queue[int]) -> None:
        while not self.stop.is_set():
            try:
                listed = await asyncio.to_thread(self._missing)
            except (OSError, ValueError, KeyError) as exc:
                self.events.errors.append(f"/admin/missing at {self.now():.1f} s: {exc}")
                listed = []
            seen = self.now()
            for asset in listed:
                index = int(asset.rsplit("-", 1)[1])
                if index not in self.events.first_listed:
                    self.events.first_listed[index] = seen
                    queue.put_nowait(index)
            await self.sleep_until(self.now() + MISSING_POLL_SECONDS)

    async def fill_ids(self, queue: asyncio.Queue[int]) -> None:
        batch_number = 0
        while not self.stop.is_set():
            await self.sleep_until(self.now() + FILL_EVERY_SECONDS)
            batch: list[int] = []
            while not queue.empty():
                batch.append(queue.get_nowait())
            if not batch:
                continue
            batch_number += 1
            path = self.stack.workdir / f"fill-{batch_number:03d}.jsonl"
            write_rows(path, (catalog_row(i, self.kinds[i], with_id=True) for i in batch))
            started = self.now()
            # `catalog import --to`: writes and announces just these rows (`catalog sync`
            # would first read the whole 100,000-title target to diff it).
            code, _out, err = await self.run_cli(
                f"fill-{batch_number:03d}", "catalog", "import", str(path), "--to", self.redis_url
            )
            done = self.now()
            self.events.fills.append(
                {"batch": batch_number, "titles": len(batch), "started_s": round(started, 2),
                 "done_s": round(done, 2), "exit": code}
            )  # fmt: skip
            if code != 0:
                self.events.errors.append(
                    f"fill batch {batch_number}: exit {code}: {err.decode(errors='replace')[-300:]}"
                )
                for index in batch:  # try again with the next batch
                    queue.put_nowait(index)
                continue
            for index in batch:
                self.events.filled_at[index] = done
            log(
                f"filled {len(batch)} drmResourceIds (batch {batch_number}, {done - started:.1f} s)"
            )

    # --- (c) the ramp, gated by `rules diff` -----------------------------------------------

    async def diff(self, old: Path, new: Path) -> tuple[bool, dict[str, Any]]:
        started = self.now()
        code, out, err = await self.run_cli(
            f"diff-{new.stem}",
            "rules", "diff", str(old), str(new), "--config", str(self.stack.config_path),
            "--catalog", self.redis_url, "--json",
        )  # fmt: skip
        entry: dict[str, Any] = {
            "new": new.name,
            "at_s": round(started, 1),
            "seconds": round(self.now() - started, 1),
            "exit": code,
        }
        text = err.decode(errors="replace")
        if code == 2 and "invalid choice" in text:
            entry["error"] = (
                "`drm-gateway rules diff` is not available in this gateway (interface 6); "
                "the ramp is not raised without it (REHEARSE_DIFF=skip overrides)"
            )
        try:
            totals = json.loads(out)["totals"]
            entry["totals"] = totals
        except (ValueError, KeyError, TypeError):
            totals = None
            if code != 0 and "error" not in entry:
                entry["error"] = text.strip()[-300:] or "no JSON output"
        self.events.diffs.append(entry)
        clean = code == 0 and isinstance(totals, dict) and totals.get("moved_back") == 0
        return clean, entry

    async def ramp(self) -> None:
        skip = os.environ.get("REHEARSE_DIFF") == "skip"
        for at, percent in zip(self.scale.ramp_at, RAMP_STEPS, strict=True):
            if not await self.sleep_until(at):
                return
            new = self.stack.workdir / f"rules-{percent:03d}.yaml"
            new.write_text(rules_text(percent))
            while True:
                if skip:
                    clean, entry = True, {"new": new.name, "skipped": True}
                    self.events.diffs.append(entry)
                else:
                    clean, entry = await self.diff(self.stack.rules_path, new)
                if self.stop.is_set():
                    return
                if clean:
                    break
                log(f"ramp {percent}%: rules diff says no: {entry}")
                if "error" in entry and "not available" in str(entry["error"]):
                    self.events.errors.append(str(entry["error"]))
                    return
                if not await self.sleep_until(self.now() + DIFF_RETRY_SECONDS):
                    return
            await asyncio.to_thread(self._apply, percent)
            applied = self.now()
            self.events.percent = percent
            self.events.ramp.append(
                {"percent": percent, "applied_s": round(applied, 2), "gated": not skip,
                 "diff": entry}
            )  # fmt: skip
            totals = entry.get("totals", {})
            log(f"ramp -> {percent}% (rules diff: {totals or 'skipped'})")

    def _apply(self, percent: int) -> None:
        self.stack.set_rules(rules_text(percent), rules_version(percent))

    # --- (d) the outage --------------------------------------------------------------------

    async def outage(self) -> None:
        if not await self.sleep_until(self.scale.outage_at):
            return
        log(f"outage: killing the incoming emulator for {self.scale.outage_seconds:g} s")
        await asyncio.to_thread(self.stack.kill, "incoming")
        self.events.outage["killed_s"] = round(self.now(), 2)
        await self.sleep_until(self.scale.outage_at + self.scale.outage_seconds)
        self.events.outage["restart_begun_s"] = round(self.now(), 2)
        await asyncio.to_thread(self.stack.start_emulator, "incoming")
        self.events.outage["restarted_s"] = round(self.now(), 2)  # answering /healthz again
        log("outage: incoming restarted on the same port")

    # --- progress --------------------------------------------------------------------------

    async def progress(self, records: Records, access: AccessLog) -> None:
        last = 0
        while not self.stop.is_set():
            await self.sleep_until(self.now() + PROGRESS_EVERY_SECONDS)
            await asyncio.to_thread(access.read)
            upto = int(self.counters.issued.value)
            window = range(last, upto)
            incoming = sum(1 for n in window if records.answered[n] == 1)
            known = sum(1 for n in window if records.answered[n] >= 0)
            share = f"{incoming / known:.0%}" if known else "-"
            log(
                f"t={self.now():5.0f} s  sent {upto:,}  failed {self.counters.failed.value}  "
                f"incoming share {share}  ramp {self.events.percent}%  "
                f"missing listed {len(self.events.first_listed)} filled "
                f"{len(self.events.filled_at)}"
            )
            if progress := self.backfill_progress():
                log(f"  backfill: {progress}")
            last = upto


async def rehearse(
    stack: RehearsalStack, scale: Scale, kinds: list[TitleClass], redis_url: str
) -> tuple[Rehearsal, Plan, Records, AccessLog]:
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    plan = Plan.make(scale.titles, scale.rate, scale.seconds)
    records = Records(plan.total)
    run = Rehearsal(stack, scale, kinds, redis_url)
    # The players run in their own process (its own CPU share and event loop): this one's
    # timers (ramp, outage, polls) stay on time however busy the load keeps it.
    context = multiprocessing.get_context("spawn")
    conn, theirs = context.Pipe()
    counters = SimpleNamespace(issued=context.RawValue("q", 0), failed=context.RawValue("q", 0))
    child = context.Process(
        target=load_process,
        args=(stack.public_url, scale.titles, scale.rate, scale.seconds, RUN_TAG, theirs,
              counters),
        daemon=True,
    )  # fmt: skip
    child.start()
    if await asyncio.to_thread(conn.poll, 120) is False:
        raise RuntimeError("the load process did not start")
    await asyncio.to_thread(conn.recv)  # "ready"
    run.start = time.monotonic() + 0.5
    run.counters = counters
    conn.send(run.start)
    wall_start = time.time() + (run.start - time.monotonic())  # the same moment, wall clock
    access = AccessLog(stack.workdir / "gateway.log", records, RUN_TAG, wall_start)
    access.offset = (stack.workdir / "gateway.log").stat().st_size
    queue: asyncio.Queue[int] = asyncio.Queue()
    log(
        f"load: {scale.rate:g} req/s for {scale.seconds:g} s over {scale.titles:,} titles; "
        f"ramp at {scale.ramp_at} s, outage at {scale.outage_at:g} s"
    )
    helpers = [
        asyncio.create_task(coro)
        for coro in (
            run.backfill(),
            run.poll_missing(queue),
            run.fill_ids(queue),
            run.ramp(),
            run.outage(),
            run.progress(records, access),
        )
    ]
    issued, columns = await asyncio.to_thread(conn.recv)
    await asyncio.to_thread(child.join, 30)
    run.stop.set()
    merge_player_columns(records, issued, columns)
    log("load done; stopping the helpers")
    for helper in helpers:
        try:
            await asyncio.wait_for(helper, 120)
        except TimeoutError:
            helper.cancel()
            run.events.errors.append(f"a helper did not stop: {helper.get_coro()}")
    await asyncio.sleep(1.5)  # the gateway flushes its last access lines
    access.read()
    return run, plan, records, access


def setup(workdir: Path, servers: srv.Servers, scale: Scale) -> tuple[RehearsalStack, str, Any]:
    stack = new_stack(workdir, servers)
    redis = start_redis(workdir)
    servers.on_stop(redis.stop)
    log(f"redis-server at {redis.url} (pid {redis.process.pid})")
    kinds = classes(scale)
    write_files(workdir, scale, kinds)
    log(f"importing the catalog of {scale.titles:,} titles into Redis")
    started = time.monotonic()
    done = subprocess.run(  # its progress on our stderr
        cli("catalog", "import", str(workdir / "catalog.jsonl"), "--to", redis.url),
        env=stack.env,
        cwd=workdir,
        check=False,
        stdout=subprocess.PIPE,
    )
    if done.returncode != 0:
        raise RuntimeError(f"catalog import failed:\n{done.stdout.decode(errors='replace')}")
    log(f"catalog imported in {time.monotonic() - started:.1f} s")
    header = provider_header_supported()
    gateway_config(stack, redis.url, provider_header=header)
    stack.start_emulator("legacy")
    stack.start_emulator("incoming")
    stack.start_gateway()
    log(
        f"gateway {stack.public_url} (internal {stack.internal_url}); provider from "
        f"{'the X-Drm-Gateway-Provider header and ' if header else ''}the access log"
    )
    return stack, redis.url, kinds


def main() -> int:
    wall_started = time.monotonic()
    scale = scale_from_env()
    out = Path(os.environ.get("REHEARSE_OUT", ".")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    keep = os.environ.get("REHEARSE_KEEP") == "1"
    workdir = Path(tempfile.mkdtemp(prefix="drm-rehearse-"))
    log(f"rehearsal ({scale.name}): work dir {workdir}; results to {out}")
    budget = scale.seconds + 600
    finished = False
    with srv.Servers(budget) as servers:
        srv.interrupt_on_sigterm()
        try:
            stack, redis_url, kinds = setup(workdir, servers, scale)
            run, plan, records, access = asyncio.run(rehearse(stack, scale, kinds, redis_url))
            finished = True
        except (KeyboardInterrupt, asyncio.CancelledError):
            print("interrupted: stopping the servers", file=sys.stderr)
            return 130
        except RuntimeError as exc:
            print(f"rehearsal could not run: {exc}", file=sys.stderr)
            return 2
        finally:
            servers.stop_all()
            if not finished or keep:
                print(f"logs kept in {workdir}", file=sys.stderr)
    wall = time.monotonic() - wall_started
    results = report.analyse(scale, kinds, plan, records, access, run.events, wall_seconds=wall)
    results_path = out / "rehearsal-results.json"
    chart_path = out / "rehearsal.png"
    report.chart(results, records, run.events, scale, chart_path)
    results["chart"] = str(chart_path)
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    report.print_summary(results)
    print(f"\nwrote {results_path} and {chart_path}; wall time {wall:.0f} s")
    if finished and not keep:
        srv.remove_workdir(workdir)  # after the report: it reads the access log there
    return 0 if results["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
