"""`drm-gateway backfill`: the command line around `proxy.keys.backfill`.

Parses the options, builds the run from the gateway's config (the catalog's write side, both
providers' key API clients, the destination's own provider adapter for verification), shows
a progress bar with rate and ETA on stderr, serves the run's metrics if asked, and prints the
report (text on stdout, JSON to --report-json). Exit 0: every title done, already there or
skipped; 1: some failed, or the run stopped early; 2: a usage or config problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when the command runs, so other commands load none of it
    from proxy.config import Config
    from proxy.keys.backfill import BackfillJob, BackfillMetrics, BackfillReport

DEFAULT_RATE = 50.0
REPORT_FAILED_LINES = 20


class UsageError(Exception):
    """A problem with the command line or the config for this job (exit status 2)."""


def add_backfill_command(commands: Any) -> None:
    """The `backfill` command's parser."""
    parser = commands.add_parser(
        "backfill",
        help="copy existing titles' keys from one provider to another, verified",
        description="For every title whose key holders include --from and not --to: export "
        "its keys from --from, ingest them at --to, verify them through the gateway's own "
        "provider client (a ClearKey license, or the AES-128 keys), then add --to to the "
        "title's key holders in the catalog. Checkpointed (a rerun resumes), idempotent, "
        "rate-limited. Exit 0: no title failed; 1: some failed or the run stopped early; "
        "2: usage or config problem.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the gateway's config")
    parser.add_argument("--from", dest="source", required=True, help="provider holding the keys")
    parser.add_argument("--to", dest="target", required=True, help="provider to copy them to")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--assets", type=Path, help="file of asset ids, one a line")
    which.add_argument("--all", action="store_true", help="every title of the catalog")
    parser.add_argument(
        "--rate",
        type=parse_rate,
        default=DEFAULT_RATE,
        metavar="N/s",
        help=f"transfer attempts per second, or 'unlimited' (default {DEFAULT_RATE:g}/s)",
    )
    parser.add_argument(
        "--concurrency", type=_positive, default=8, help="titles in flight (default 8)"
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive,
        default=4,
        help="tries per title on retryable failures (default 4)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would be done; call and write nothing"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint file (default: backfill-FROM-to-TO-INPUT.checkpoint in the current "
        "directory); a rerun with it resumes the job",
    )
    parser.add_argument("--report-json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--metrics-port", type=_port, help="serve Prometheus metrics on this port while running"
    )
    parser.add_argument(
        "--metrics-host", default="127.0.0.1", help="address for --metrics-port (127.0.0.1)"
    )
    parser.set_defaults(func=cmd_backfill)


def parse_rate(text: str) -> float | None:
    """`N/s`, `N` or `unlimited` (None)."""
    if text.strip().lower() == "unlimited":
        return None
    number = text.strip().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 50/s)") from None
    if not 0 < rate < float("inf"):
        raise argparse.ArgumentTypeError("must be greater than 0 (or 'unlimited')")
    return rate


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65535:
        raise argparse.ArgumentTypeError("must be a port number (1-65535)")
    return value


def default_checkpoint(source: str, target: str, assets: Path | None) -> Path:
    """backfill-FROM-to-TO-all.checkpoint, or -<list name>.checkpoint, in the current folder."""
    what = "all" if assets is None else assets.stem
    return Path(f"backfill-{source}-to-{target}-{what}.checkpoint")


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run the job; its exit status."""
    from proxy.catalog.keys import KeyRecordsError
    from proxy.cli.main import _load_or_exit
    from proxy.keys.backfill import BackfillJob, BackfillUsageError
    from proxy.observability.logs import configure_logging

    config = _load_or_exit(args.config)
    # stdout is the report's, stderr the progress line's: only errors are logged, there.
    # Every failed title and its reason is in the report.
    configure_logging(level="error", fmt=config.log.format, stream=sys.stderr)
    job = BackfillJob(
        source=args.source,
        target=args.target,
        assets_file=args.assets,
        concurrency=args.concurrency,
        dry_run=args.dry_run,
        max_attempts=args.max_attempts,
    )
    try:
        check_job(config, job)
        report = asyncio.run(_run(config, job, args))
    except (UsageError, BackfillUsageError) as exc:
        print(f"drm-gateway backfill: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the metrics port is taken, a file cannot be written
        print(f"drm-gateway backfill: {exc}", file=sys.stderr)
        return 2
    except KeyRecordsError as exc:  # the catalog failed mid-run: the checkpoint has the rest
        print(f"drm-gateway backfill: catalog unavailable: {exc}; rerun to resume", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.report_json is not None:
        write_json_report(report, args.report_json)
    if report.checkpoint is not None:
        report.checkpoint.close()
    return 0 if report.ok else 1


def check_job(config: Config, job: BackfillJob) -> None:
    """UsageError unless both providers exist and have a key API, they differ, the
    destination can be verified, and the catalog can record holders."""
    from proxy.config.load import KEY_RECORD_BACKENDS

    known = ", ".join(sorted(config.providers))
    for option, name in (("--from", job.source), ("--to", job.target)):
        settings = config.providers.get(name)
        if settings is None:
            raise UsageError(f"{option}: unknown provider '{name}' (known: {known})")
        if settings.key_api is None:
            raise UsageError(f"{option}: provider '{name}' has no key_api section in the config")
        if not settings.key_api.transfers:
            raise UsageError(
                f"{option}: provider '{name}' has a key_api with protocol "
                f"'{settings.key_api.protocol}', which only generates keys: a backfill needs "
                "key export and ingest (protocol native)"
            )
    if job.source == job.target:
        raise UsageError("--from and --to name the same provider")
    target = config.providers[job.target]
    if target.endpoint("clearkey") is None and target.endpoint("aes128") is None:
        raise UsageError(
            f"--to: provider '{job.target}' serves neither clearkey nor aes128, so the "
            "copied keys cannot be verified"
        )
    if config.catalog.backend not in KEY_RECORD_BACKENDS:
        raise UsageError(
            f"catalog backend '{config.catalog.backend}' is read-only: key holders cannot be "
            "recorded there"
        )
    path = config.catalog.path
    if config.catalog.backend == "sqlite" and (path is None or not path.is_file()):
        raise UsageError(f"the catalog database {path} does not exist")


async def _run(config: Config, job: BackfillJob, args: argparse.Namespace) -> BackfillReport:
    """Open everything the job needs, run it, close everything."""
    from proxy.catalog.keys import open_key_records
    from proxy.keys.backfill import Backfill, BackfillMetrics, Checkpoint, TokenBucket
    from proxy.keys.client import KeyApiClient
    from proxy.keys.transfer import Verifier
    from proxy.upstream.registry import build_provider

    checkpoint_path = args.checkpoint or default_checkpoint(job.source, job.target, job.assets_file)
    checkpoint = Checkpoint.open(checkpoint_path, job.identity, dry_run=job.dry_run)
    metrics = BackfillMetrics()
    async with AsyncExitStack() as stack:
        records = open_key_records(config.catalog)
        stack.push_async_callback(records.close)
        source = target = verifier = None
        if not job.dry_run:
            source = _key_client(config, job.source, KeyApiClient)
            target = _key_client(config, job.target, KeyApiClient)
            provider = build_provider(config.providers[job.target])
            await provider.open()
            for closing in (source.close, target.close, provider.close):
                stack.push_async_callback(closing)
            verifier = Verifier(provider)
        if args.metrics_port is not None:
            stack.push_async_callback(
                await serve_metrics(metrics, args.metrics_host, args.metrics_port)
            )
        total = await _planned(job, records)
        metrics.planned.set(total or 0)
        bar = ProgressBar(total, sys.stderr, label=f"{job.source} -> {job.target}")
        bucket = None
        if args.rate is not None:
            bucket = TokenBucket(args.rate, max(1.0, min(args.rate, job.concurrency)))
        backfill = Backfill(
            job,
            records=records,
            source=source,
            target=target,
            verifier=verifier,
            checkpoint=checkpoint,
            bucket=bucket,
            metrics=metrics,
            progress=bar,
        )
        _stop_on_signals(backfill.stop)
        try:
            return await backfill.run()
        finally:
            bar.close()


def _key_client(config: Config, name: str, factory: Any) -> Any:
    settings = config.providers[name].key_api
    assert settings is not None  # checked by check_job
    return factory(name, settings)


async def _planned(job: BackfillJob, records: Any) -> int | None:
    """How many titles the input holds (None if it cannot be counted quickly)."""
    from proxy.keys.backfill import count_asset_list

    if job.assets_file is not None:
        return count_asset_list(job.assets_file)
    count: int = await records.count_assets()
    return count


def _stop_on_signals(stop: Callable[[str], None]) -> None:
    """SIGINT and SIGTERM stop taking titles; those in flight finish and are recorded."""
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        name = signal.Signals(number).name
        loop.add_signal_handler(number, stop, f"interrupted ({name}); rerun to resume")


async def serve_metrics(metrics: BackfillMetrics, host: str, port: int) -> Callable[[], Any]:
    """Serve `GET /metrics` (the run's own registry) on host:port; returns the stopper."""
    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"--metrics-port: cannot listen on {host}:{port} ({exc.strerror})") from None
    return runner.cleanup


# --- progress --------------------------------------------------------------------------------


class ProgressBar:
    """One stderr line: titles gone through, share, rate and ETA. Redrawn in place on a
    terminal (at most every `interval` seconds); elsewhere (a log file) a line every
    `log_interval` seconds."""

    def __init__(
        self,
        total: int | None,
        stream: TextIO,
        *,
        label: str,
        interval: float = 0.2,
        log_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.label = label
        self._tty = stream.isatty()
        self._interval = interval if self._tty else log_interval
        self._clock = clock
        self._started = clock()
        self._drawn = 0.0
        self._seen = 0

    def __call__(self, seen: int) -> None:
        self._seen = seen
        now = self._clock()
        if now - self._drawn >= self._interval:
            self._drawn = now
            self._draw(now)

    def close(self) -> None:
        """Draw the last state and end the line."""
        self._draw(self._clock())
        if self._tty:
            self.stream.write("\n")
        self.stream.flush()

    def line(self, now: float) -> str:
        """The progress line at time `now`."""
        elapsed = max(now - self._started, 1e-9)
        rate = self._seen / elapsed
        text = f"{self.label}  {self._seen:,}"
        if self.total:
            share = min(self._seen / self.total, 1.0)
            filled = int(share * 24)
            text += f"/{self.total:,} {share:4.0%} [{'#' * filled}{'.' * (24 - filled)}]"
        text += f"  {rate:,.1f} titles/s"
        if self.total and rate > 0:
            text += f"  ETA {_clock_time(max(self.total - self._seen, 0) / rate)}"
        return text + f"  elapsed {_clock_time(elapsed)}"

    def _draw(self, now: float) -> None:
        if self._tty:
            self.stream.write("\r\x1b[2K" + self.line(now))
        else:
            self.stream.write(self.line(now) + "\n")
        self.stream.flush()


def _clock_time(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# --- report ----------------------------------------------------------------------------------

_LABELS = {
    "done": "done",
    "already_there": "already there",
    "skipped": "skipped",
    "failed": "failed",
}


def format_report(report: BackfillReport) -> str:
    """The report as text: this run, the job's totals, the failed titles (the first ones)."""
    job = report.job
    what = "every title of the catalog" if job.assets_file is None else str(job.assets_file)
    lines = [f"backfill {job.source} -> {job.target}: {what}"]
    handled = sum(report.this_run.values())
    rate = handled / report.elapsed if report.elapsed > 0 else 0.0
    peak = peak_rss_mb()
    lines.append(
        f"this run: {handled:,} titles in {report.elapsed:.1f} s ({rate:,.1f} titles/s); "
        f"{report.earlier:,} finished by an earlier run"
        + (f"; peak RSS {peak:.1f} MB" if peak is not None else "")
    )
    if job.dry_run:
        lines.extend(_dry_run_lines(report))
    else:
        lines.extend(_totals_lines(report))
    if report.stopped is not None:
        lines.append(f"stopped early: {report.stopped}")
    return "\n".join(lines)


def _dry_run_lines(report: BackfillReport) -> list[str]:
    lines = ["dry run: no provider was called and nothing was written"]
    for (outcome, reason), count in sorted(report.this_run.items()):
        sample = ", ".join(report.samples.get(f"{outcome}:{reason}", [])[:5])
        verb = "would transfer" if reason == "would_transfer" else f"{_LABELS[outcome]} ({reason})"
        lines.append(f"  {verb:<40} {count:>9,}   e.g. {sample}")
    return lines


def _totals_lines(report: BackfillReport) -> list[str]:
    lines = ["job totals (every run with this checkpoint):"]
    for outcome, label in _LABELS.items():
        count = report.totals.get(outcome, 0)
        reasons = report.reasons.get(outcome, {})
        detail = ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items()))
        lines.append(f"  {label:<14} {count:>9,}" + (f"   {detail}" if detail else ""))
    failed = report.totals.get("failed", 0)
    if failed and report.checkpoint is not None:
        shown = min(failed, REPORT_FAILED_LINES)
        lines.append(f"failed titles ({shown} of {failed:,}; all of them in --report-json):")
        for (asset_id, reason), _ in zip(
            report.checkpoint.titles("failed"), range(shown), strict=False
        ):
            lines.append(f"  {asset_id}  {reason}")
    return lines


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MB; None where /proc has no status.

    Not getrusage's ru_maxrss: Linux carries it across exec, so a process started from a big
    one would report its parent's size."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def write_json_report(report: BackfillReport, path: Path) -> None:
    """The report as JSON, the title lists streamed from the checkpoint (flat memory)."""
    job = report.job
    head = {
        "source": job.source,
        "target": job.target,
        "input": job.identity.input,
        "dry_run": job.dry_run,
        "checkpoint": None if report.checkpoint is None else _path(report.checkpoint.path),
        "this_run": {
            "titles": sum(report.this_run.values()),
            "seconds": round(report.elapsed, 3),
            "finished_earlier": report.earlier,
            "outcomes": _nested(report),
            "peak_rss_mb": peak_rss_mb(),
        },
        "totals": report.totals,
        "reasons": report.reasons,
        "stopped": report.stopped,
        "exit_code": 0 if report.ok else 1,
    }
    if job.dry_run:
        head["samples"] = report.samples
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps(head, indent=2)[:-2])  # reopened below to add the title lists
        for outcome in ("failed", "skipped"):
            out.write(f',\n  "{outcome}": [')
            _write_titles(out, _titles(report, outcome))
            out.write("]")
        out.write("\n}\n")


def _titles(report: BackfillReport, outcome: str) -> Iterator[tuple[str, str | None]]:
    if report.checkpoint is None or report.job.dry_run:
        return iter(())
    return report.checkpoint.titles("failed" if outcome == "failed" else "skipped")


def _write_titles(out: TextIO, titles: Iterator[tuple[str, str | None]]) -> None:
    for number, (asset_id, reason) in enumerate(titles):
        separator = "," if number else ""
        out.write(f"{separator}\n    {json.dumps({'asset_id': asset_id, 'reason': reason})}")


def _nested(report: BackfillReport) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outcome, reason), count in report.this_run.items():
        nested.setdefault(outcome, {})[reason] = count
    return nested


def _path(path: Path | None) -> str | None:
    return None if path is None else str(path)
