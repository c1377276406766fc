"""`drm-gateway backfill` as users run it: options, exit codes, report, metrics, and a job that
survives `kill -9` at random points (a real subprocess, killed several times, then rerun)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import pytest

from proxy.catalog.sqlite import SqliteCatalog
from proxy.cli.backfill import ProgressBar, default_checkpoint, parse_rate
from proxy.cli.main import main
from proxy.dev.emulator.settings import Faults
from tests.conftest import free_ports
from tests.keys.backfill_stack import (
    KEY_ENV,
    ProvidersThread,
    Title,
    incoming_settings,
    legacy_settings,
    make_titles,
    providers_in_thread,
    raw_config,
    write_config,
    write_titles,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The config's secrets, for in-process runs and subprocesses alike; the current folder
    is the test's (where a default checkpoint goes)."""
    monkeypatch.chdir(tmp_path)
    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)
    return {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}


def setup_job(
    tmp_path: Path, thread: ProvidersThread, titles: list[Title], **config: Any
) -> tuple[Path, Path]:
    """A catalog of `titles` and a config naming the running providers; (config, catalog)."""
    db = write_titles(tmp_path / "catalog.db", titles)
    providers = thread.providers
    raw = raw_config(db, providers.legacy.url, providers.incoming.url)
    raw.update(config)
    return write_config(raw, tmp_path / "gateway.yaml"), db


def backfill(config: Path, *args: str) -> int:
    """`drm-gateway backfill --config CONFIG --from legacy --to incoming ARGS`, in process."""
    return main(
        ["backfill", "--config", str(config), "--from", "legacy", "--to", "incoming", *args]
    )


# --- usage -------------------------------------------------------------------------------------


@pytest.fixture
def offline_config(tmp_path: Path, env: dict[str, str]) -> Path:
    """A valid config whose providers are not running (usage errors come first)."""
    db = write_titles(tmp_path / "catalog.db", make_titles(2))
    raw = raw_config(db, "http://127.0.0.1:9", "http://127.0.0.1:9")
    return write_config(raw, tmp_path / "gateway.yaml")


@pytest.mark.parametrize(
    ("edit", "args", "message"),
    [
        (None, ["--from", "legacy", "--to", "nobody", "--all"],
         "--to: unknown provider 'nobody' (known: incoming, legacy)"),
        (None, ["--from", "legacy", "--to", "legacy", "--all"], "name the same provider"),
        ("no_key_api", ["--from", "legacy", "--to", "incoming", "--all"],
         "--from: provider 'legacy' has no key_api section"),
        ("generate_only", ["--from", "legacy", "--to", "incoming", "--all"],
         "--to: provider 'incoming' has a key_api with protocol 'speke', which only generates "
         "keys: a backfill needs key export and ingest (protocol native)"),
        ("no_verify", ["--from", "legacy", "--to", "incoming", "--all"],
         "serves neither clearkey nor aes128"),
        ("http", ["--from", "legacy", "--to", "incoming", "--all"],
         "catalog backend 'http' is read-only"),
        ("no_db", ["--from", "legacy", "--to", "incoming", "--all"],
         "the catalog database /nowhere/catalog.db does not exist"),
    ],
)  # fmt: skip
def test_usage_problems_exit_2(
    tmp_path: Path,
    offline_config: Path,
    capsys: pytest.CaptureFixture[str],
    edit: str | None,
    args: list[str],
    message: str,
) -> None:
    import yaml

    raw = yaml.safe_load(offline_config.read_text())
    if edit == "no_key_api":
        del raw["providers"]["legacy"]["key_api"]
    elif edit == "generate_only":
        raw["providers"]["incoming"]["key_api"] = {
            "protocol": "speke",
            "base_url": "https://keys.example/api/SpekeV2",
            "token": {"env": "INCOMING_KEY_API_TOKEN"},
        }
    elif edit == "no_verify":
        del raw["providers"]["incoming"]["license_urls"]["clearkey"]
        del raw["providers"]["incoming"]["key_url"]
    elif edit == "http":
        raw["catalog"] = {"backend": "http", "http": {"base_url": "https://meta.example"}}
    elif edit == "no_db":
        raw["catalog"]["path"] = "/nowhere/catalog.db"
    write_config(raw, offline_config)
    assert main(["backfill", "--config", str(offline_config), *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--all", "--assets", "x"],
        [],
        ["--all", "--rate", "fast"],
        ["--all", "--rate", "0/s"],
        ["--all", "--concurrency", "0"],
        ["--all", "--metrics-port", "70000"],
    ],
)
def test_bad_options_exit_2(offline_config: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        backfill(offline_config, *args)
    assert caught.value.code == 2


def test_a_catalog_failing_mid_run_exits_1(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.redis_server import start_redis_server

    directory = tmp_path / "redis"
    directory.mkdir()
    server = start_redis_server(directory)
    raw = raw_config(None, "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["catalog"] = {"backend": "redis", "redis": {"url": server.url}}
    config = write_config(raw, tmp_path / "gateway.yaml")
    server.stop()
    assert backfill(config, "--all") == 1
    assert "catalog unavailable: Redis catalog unix://" in capsys.readouterr().err


def test_a_config_with_problems_exits_2(tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("providers: {}\n")
    with pytest.raises(SystemExit) as caught:
        backfill(config, "--all")
    assert caught.value.code == 2


def test_a_checkpoint_of_another_job_exits_2(
    tmp_path: Path, offline_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "job.checkpoint"
    with sqlite3.connect(checkpoint) as conn:
        conn.execute("CREATE TABLE job (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO job VALUES (?, ?)",
            [("source", "legacy"), ("target", "other"), ("input", "all")],
        )
    assert backfill(offline_config, "--all", "--checkpoint", str(checkpoint)) == 2
    assert "checkpoint of another job (legacy -> other, all)" in capsys.readouterr().err


def test_rates_and_default_checkpoint_names() -> None:
    assert parse_rate("50/s") == 50.0 and parse_rate("2.5") == 2.5
    assert parse_rate("unlimited") is None
    assert default_checkpoint("a", "b", None) == Path("backfill-a-to-b-all.checkpoint")
    assert default_checkpoint("a", "b", Path("/x/list.txt")).name == (
        "backfill-a-to-b-list.checkpoint"
    )


def test_the_progress_line_has_rate_and_eta() -> None:
    class Stream:
        text = ""

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None: ...

        def isatty(self) -> bool:
            return True

    now = [0.0]
    stream = Stream()
    bar = ProgressBar(1000, cast(TextIO, stream), label="legacy -> incoming", clock=lambda: now[0])
    now[0] = 10.0
    bar(250)
    assert "250/1,000  25%" in stream.text and "25.0 titles/s" in stream.text
    assert "ETA 0:00:30" in stream.text


# --- running it --------------------------------------------------------------------------------


@pytest.fixture
def providers() -> Iterator[ProvidersThread]:
    with providers_in_thread() as thread:
        yield thread


@pytest.fixture
def slow_providers() -> Iterator[ProvidersThread]:
    """Both providers taking 2 ms per answer, so a run lasts long enough to be killed."""
    slow = Faults(latency_ms=2)
    with providers_in_thread(
        legacy_settings(faults=slow), incoming_settings(faults=slow)
    ) as thread:
        yield thread


@pytest.fixture
def slow_incoming() -> Iterator[ProvidersThread]:
    """The destination taking 300 ms per answer: a run lasts long enough to be scraped."""
    with providers_in_thread(incoming=incoming_settings(faults=Faults(latency_ms=300))) as thread:
        yield thread


def test_a_run_reports_as_text_and_json(
    tmp_path: Path,
    env: dict[str, str],
    providers: ProvidersThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    titles = [*make_titles(12), Title("x-no-keys", "res-x", ())]
    config, _ = setup_job(tmp_path, providers, titles)
    report = tmp_path / "report.json"
    checkpoint = tmp_path / "job.checkpoint"
    code = backfill(
        config,
        "--all",
        "--concurrency",
        "3",
        "--checkpoint",
        str(checkpoint),
        "--report-json",
        str(report),
    )
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "backfill legacy -> incoming: every title of the catalog" in out
    assert "done                  12" in out and "no_key_ids 1" in out
    assert "13/13 100%" in err and "titles/s" in err  # the progress line
    data = json.loads(report.read_text())
    assert data["totals"] == {"done": 12, "already_there": 0, "skipped": 1, "failed": 0}
    assert data["skipped"] == [{"asset_id": "x-no-keys", "reason": "no_key_ids"}]
    assert (data["failed"], data["exit_code"], data["checkpoint"]) == ([], 0, str(checkpoint))
    counters = providers.run(providers.providers.key_api(providers.providers.incoming))
    assert counters["ingested"] == 24


def test_a_failed_title_exits_1_and_is_listed(
    tmp_path: Path,
    env: dict[str, str],
    providers: ProvidersThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    titles = make_titles(3)
    config, _ = setup_job(tmp_path, providers, titles)
    state = providers.providers
    resource = titles[1].drm_resource_id
    assert resource is not None
    providers.run(state.ingest(state.incoming, resource, {titles[1].key_ids[0]: b"\x09" * 16}))
    report = tmp_path / "r.json"
    code = backfill(config, "--all", "--report-json", str(report))
    out = capsys.readouterr().out
    assert (tmp_path / "backfill-legacy-to-incoming-all.checkpoint").is_file()  # the default
    assert code == 1
    assert "failed titles (1 of 1" in out and "t-00001  target_key_conflict" in out
    data = json.loads(report.read_text())
    assert data["failed"] == [{"asset_id": "t-00001", "reason": "target_key_conflict"}]
    assert data["exit_code"] == 1


def test_a_dry_run_writes_nothing(
    tmp_path: Path,
    env: dict[str, str],
    providers: ProvidersThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, db = setup_job(tmp_path, providers, make_titles(5))
    before = db.read_bytes()
    assert backfill(config, "--all", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run: no provider was called and nothing was written" in out
    assert "would transfer" in out and "t-00000" in out
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("*.checkpoint"))
    for emulator in (providers.providers.legacy, providers.providers.incoming):
        assert providers.run(providers.providers.stats(emulator))["total"] == 0


def test_metrics_are_served_while_it_runs(
    tmp_path: Path, env: dict[str, str], slow_incoming: ProvidersThread
) -> None:
    config, _ = setup_job(tmp_path, slow_incoming, make_titles(6))
    (port,) = free_ports(1)
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "backfill", "--config", str(config),
         "--from", "legacy", "--to", "incoming", "--all", "--concurrency", "2",
         "--metrics-port", str(port), "--checkpoint", str(tmp_path / "job.checkpoint")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        scraped = scrape_until(port, "drm_gateway_backfill_titles_planned 6.0", process)
    finally:
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    assert "drm_gateway_backfill_in_flight" in scraped
    assert "drm_gateway_backfill_transfer_seconds_bucket" in scraped
    assert "drm_gateway_upstream" not in scraped  # its own registry only


def scrape_until(port: int, wanted: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                text = str(r.read().decode())
            if wanted in text:
                return text
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"never scraped {wanted!r}")


# --- kill -9 at random points, then resume -------------------------------------------------------


def rows(checkpoint: Path) -> int:
    if not checkpoint.exists():
        return 0
    try:
        with sqlite3.connect(f"{checkpoint.resolve().as_uri()}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM titles").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created yet


def test_kill_9_at_random_points_then_a_rerun_moves_every_title_once(
    tmp_path: Path, env: dict[str, str], slow_providers: ProvidersThread
) -> None:
    providers = slow_providers
    count, concurrency = 300, 8
    titles = make_titles(count)
    config, db = setup_job(tmp_path, providers, titles)
    checkpoint = tmp_path / "job.checkpoint"
    command = [
        sys.executable, "-m", "proxy.cli", "backfill", "--config", str(config),
        "--from", "legacy", "--to", "incoming", "--all", "--rate", "unlimited",
        "--concurrency", str(concurrency), "--checkpoint", str(checkpoint),
    ]  # fmt: skip
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    thresholds = sorted(rng.sample(range(5, count - 20), 4))
    kills = 0
    for threshold in thresholds:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while rows(checkpoint) < threshold and process.poll() is None:
            assert time.monotonic() < deadline, f"seed {seed}: no progress"
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.03))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
    assert kills >= 2, f"seed {seed}: the runs ended before they could be killed"
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"seed {seed}:\n{done.stdout}\n{done.stderr}"

    # Every title is at the destination, each key stored there exactly once.
    state = providers.providers
    counters = providers.run(state.key_api(state.incoming))
    store = providers.run(state.stats(state.incoming))["key_store"]
    assert counters["ingested"] == 2 * count and store["keys"] == 2 * count, seed
    assert counters["conflicts"] == 0
    # Only titles in flight when a process died were asked for again.
    assert counters["already_present"] <= kills * concurrency * 2, (seed, counters)
    # The catalog and the checkpoint say so too.
    with sqlite3.connect(checkpoint) as conn:
        outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM titles GROUP BY outcome"))
        assert sum(outcomes.values()) == count and "failed" not in outcomes, outcomes

    async def holders() -> set[frozenset[str] | None]:
        catalog = SqliteCatalog(db)
        try:
            entries = [await catalog.get(title.asset_id) for title in titles]
            return {entry.key_holders if entry else None for entry in entries}
        finally:
            await catalog.close()

    assert asyncio.run(holders()) == {frozenset({"legacy", "incoming"})}
