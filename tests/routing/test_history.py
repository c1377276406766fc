"""The rules change log: diffs, the bounded ring, what the watcher records and logs, and the
fleet's list in a real Redis."""

from __future__ import annotations

import asyncio
import difflib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.routing import history
from proxy.routing.history import (
    NO_VERSION,
    RulesHistory,
    Version,
    build_change,
    diff_texts,
    iso_timestamp,
    sha256_text,
)
from proxy.routing.history_redis import RedisRulesHistory, fleet_history
from proxy.routing.rules import ProviderTraits
from proxy.routing.watcher import RulesWatcher
from tests.redis_server import RedisServer, start_redis_server

PROVIDERS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(needs_drm_resource_id=True),
}


def ramp(version: str, percent: float, *, route: str = "incoming") -> str:
    return (
        f'version: "{version}"\n'
        "default: legacy\n"
        "rules:\n"
        "  - name: ramp\n"
        f"    route: {route}\n"
        f"    percent: {percent}\n"
    )


def watch(path: Path, text: str) -> tuple[Path, RulesWatcher]:
    """A watcher started on `path` holding `text`."""
    path.write_text(text)
    return path, RulesWatcher(path, default="legacy", providers=PROVIDERS)


def log_lines(buffer: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line["event"] == event]


# --- diffs and the ring ------------------------------------------------------------------------


def test_the_diff_is_unified_and_counts_added_and_removed_lines() -> None:
    diff = diff_texts(ramp("v1", 10), ramp("v2", 50), old_name="rules@v1", new_name="rules@v2")
    lines = diff.text.splitlines()
    assert lines[:2] == ["--- rules@v1", "+++ rules@v2"]
    assert '-version: "v1"' in lines and '+version: "v2"' in lines
    assert "-    percent: 10" in lines and "+    percent: 50" in lines
    assert (diff.added, diff.removed, diff.cut) == (2, 2, False)
    assert diff.summary() == "+2/-2 lines"


def test_a_long_diff_is_cut_and_says_so_while_the_counts_stay_whole() -> None:
    old = "".join(f"line {i}\n" for i in range(300))
    new = "".join(f"changed {i}\n" for i in range(300))
    diff = diff_texts(old, new, old_name="a", new_name="b", max_lines=50)
    lines = diff.text.splitlines()
    assert len(lines) == 51 and diff.cut
    assert lines[-1] == f"... diff cut: {3 + 600 - 50} more lines"  # headers, hunk, 600 lines
    assert (diff.added, diff.removed) == (300, 300)


def test_a_last_line_without_newline_does_not_glue_lines_together() -> None:
    diff = diff_texts("a: 1", "a: 2", old_name="x", new_name="y")
    assert diff.text.splitlines()[-2:] == ["-a: 1", "+a: 2"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("a\nb\nc\nd\n", "a\nB\nC\nX\nd\n"),  # replaced, longer
        ("a\nb\nc\n", "a\nc\n"),  # one line deleted
        ("a\nb\n", "a\nx\ny\nb\n"),  # inserted
        ("a\n", "b\n"),
        ("", "a\nb\n"),  # a first version
        ("a\nb\n", ""),
        ("a\nb", "a\nc"),  # no newline at the end
    ],
)
def test_a_region_too_large_for_difflib_is_shown_replaced_whole_as_difflib_would(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    # One changed region: difflib without context lines gives exactly the coarse hunk.
    expected = "".join(
        line if line.endswith("\n") else line + "\n"
        for line in difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), "a", "b", n=0
        )
    )
    monkeypatch.setattr(history, "_DIFFLIB_MAX_WORK", -1)
    coarse = diff_texts(old, new, old_name="a", new_name="b")
    assert coarse.text == expected


def test_a_large_scattered_change_is_replaced_whole_between_the_common_ends() -> None:
    old = "".join(f"  - name: r{i}\n    percent: 10\n" for i in range(1000))
    new = "head\n" + old.replace("percent: 10", "percent: 50", 900)
    diff = diff_texts(old, new, old_name="a", new_name="b", max_lines=10_000)
    lines = diff.text.splitlines()
    changed = 2 * 900  # from the first line (the new head) to the 900th rule's percent
    assert lines[2] == f"@@ -1,{changed} +1,{changed + 1} @@"
    assert (diff.added, diff.removed) == (changed + 1, changed)
    assert lines[3:5] == ["-  - name: r0", "-    percent: 10"]


def test_the_ring_keeps_the_newest_entries_first_and_is_bounded() -> None:
    history = RulesHistory(max_entries=3)
    previous = NO_VERSION
    for i in range(5):
        text = ramp(f"v{i}", i)
        new = Version(f"v{i}", sha256_text(text), text)
        history.record(
            build_change(result="accepted", new=new, previous=previous, who="t", trigger="test")
        )
        previous = new
    assert len(history) == 3 and history.max_entries == 3
    assert [c.version for c in history.entries()] == ["v4", "v3", "v2"]
    assert [c.version for c in history.entries(2)] == ["v4", "v3"]
    assert history.entries()[0].previous_version == "v3"
    with pytest.raises(ValueError):
        RulesHistory(max_entries=0)


def test_a_subscriber_gets_the_entries_so_far_oldest_first_then_each_new_one() -> None:
    history = RulesHistory()
    texts = [ramp(f"v{i}", i) for i in range(3)]
    changes = [
        build_change(
            result="accepted",
            new=Version(f"v{i}", sha256_text(t), t),
            previous=NO_VERSION,
            who="t",
            trigger="test",
        )
        for i, t in enumerate(texts)
    ]
    history.record(changes[0])
    history.record(changes[1])
    seen: list[str | None] = []
    history.subscribe(lambda change: seen.append(change.version))
    history.record(changes[2])
    assert seen == ["v0", "v1", "v2"]


def test_timestamps_are_utc_with_milliseconds() -> None:
    assert iso_timestamp(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


# --- what the watcher records ----------------------------------------------------------------


def test_the_watcher_records_start_file_admin_and_sighup_changes_with_who(
    tmp_path: Path, log_buffer: io.StringIO
) -> None:
    path, watcher = watch(tmp_path / "routing.yaml", ramp("v1", 10))
    path.write_text(ramp("v2", 50))
    assert watcher.reload("poll").result == "ok"
    assert watcher.reload("poll").result == "unchanged"  # nothing changed: nothing recorded
    path.write_text(ramp("v3", 75))
    assert watcher.reload("admin", who="alice").result == "ok"
    path.write_text(ramp("v4", 100))
    assert watcher.reload("sighup").result == "ok"

    entries = [change.to_dict() for change in watcher.history.entries()]
    assert [(e["version"], e["who"], e["trigger"]) for e in entries] == [
        ("v4", "sighup", "sighup"),
        ("v3", "alice", "admin"),
        ("v2", "file", "poll"),
        ("v1", "start", "start"),
    ]
    assert all(e["result"] == "accepted" and e["problems"] == [] for e in entries)
    assert entries[0]["sha256"] == sha256_text(ramp("v4", 100)) == watcher.active().sha256
    assert entries[0]["previous_sha256"] == sha256_text(ramp("v3", 75))
    assert entries[1]["previous_version"] == "v2"
    assert "-    percent: 50\n+    percent: 75\n" in entries[1]["diff"]
    start = entries[-1]
    assert start["previous_version"] is None and start["previous_sha256"] is None
    assert start["lines_added"] == len(ramp("v1", 10).splitlines())  # the whole file is new

    loaded = log_lines(log_buffer, "rules_loaded")
    assert [(line["who"], line["version"], line["diff"]) for line in loaded] == [
        ("start", "v1", "+6/-0 lines"),
        ("file", "v2", "+2/-2 lines"),
        ("alice", "v3", "+2/-2 lines"),
        ("sighup", "v4", "+2/-2 lines"),
    ]
    watcher.close()


def test_a_refused_file_is_recorded_with_its_problems_and_the_diff_against_the_active_rules(
    tmp_path: Path, log_buffer: io.StringIO
) -> None:
    path, watcher = watch(tmp_path / "routing.yaml", ramp("v1", 10))
    bad = ramp("v2", 150, route="nowhere")
    path.write_text(bad)
    assert watcher.reload("admin", who="bob").result == "refused"

    refused = watcher.history.entries()[0].to_dict()
    assert refused["result"] == "refused" and refused["who"] == "bob"
    assert refused["version"] is None  # the file did not validate
    assert refused["sha256"] == sha256_text(bad)
    assert (refused["previous_version"], refused["previous_sha256"]) == (
        "v1",
        watcher.active().sha256,
    )
    assert refused["problems"] == watcher.problems
    assert any("'nowhere' is not configured" in p for p in refused["problems"])
    assert any("150" in p for p in refused["problems"])
    assert "+    route: nowhere\n" in refused["diff"]
    assert refused["diff"].startswith(f"--- rules@v1\n+++ rules@sha256:{sha256_text(bad)[:12]}")

    line = log_lines(log_buffer, "rules_refused")[-1]
    assert (line["who"], line["trigger"], line["diff"]) == ("bob", "admin", "+3/-3 lines")
    watcher.close()


def test_a_file_refused_at_start_and_an_unreadable_file_are_recorded(tmp_path: Path) -> None:
    path, watcher = watch(tmp_path / "routing.yaml", "version: [not, a, string]\n")
    start = watcher.history.entries()[0]
    assert (start.result, start.who, start.previous_version) == ("refused", "start", None)
    assert start.problems and start.sha256 == sha256_text(path.read_text())

    path.unlink()
    assert watcher.reload("poll").result == "refused"
    gone = watcher.history.entries()[0]
    assert (gone.who, gone.sha256, gone.diff.text) == ("file", None, "")
    assert gone.problems[0].startswith(f"cannot read {path}")
    watcher.close()


def test_without_a_rules_file_the_start_records_the_default_rules() -> None:
    watcher = RulesWatcher(None, default="legacy", providers=PROVIDERS)
    (start,) = watcher.history.entries()
    assert (start.result, start.version, start.who) == ("accepted", "config", "start")
    assert "+default: legacy\n" in start.diff.text
    assert watcher.reload("poll").result == "unchanged" and len(watcher.history) == 1
    watcher.close()


# --- the fleet's list in Redis ----------------------------------------------------------------


async def test_every_replica_pushes_to_one_capped_list_newest_first(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    paths = [tmp_path / "a.yaml", tmp_path / "b.yaml"]
    watchers = [watch(path, ramp("v1", 10))[1] for path in paths]
    stores = [
        RedisRulesHistory(
            Redis.from_url(redis_server.url), key_prefix="t:", replica=name, max_entries=4
        )
        for name in ("gw-a", "gw-b")
    ]
    async with fleet_history(watchers[0].history, stores[0]):
        async with fleet_history(watchers[1].history, stores[1]):
            assert watchers[0].history.fleet is stores[0]
            await wait_for_entries(stores[0], 2)  # both start entries went out
            paths[0].write_text(ramp("v2", 20))
            watchers[0].reload("admin", who="alice")
            await wait_for_entries(stores[0], 3)
            paths[1].write_text(ramp("v2", 20, route="nowhere"))
            watchers[1].reload("poll")
            await wait_for_entries(stores[1], 4)
            paths[0].write_text(ramp("v3", 30))
            watchers[0].reload("sighup")
            await asyncio.sleep(0.05)
            fleet = await stores[1].entries(10)
    assert watchers[0].history.fleet is None
    assert len(fleet) == 4  # capped: the oldest start entry fell off
    assert [(e["replica"], e["who"], e["result"]) for e in fleet] == [
        ("gw-a", "sighup", "accepted"),
        ("gw-b", "file", "refused"),
        ("gw-a", "alice", "accepted"),
        (fleet[3]["replica"], "start", "accepted"),
    ]
    assert fleet[1]["problems"] and fleet[0]["diff"] == watchers[0].history.entries()[0].diff.text
    for watcher in watchers:
        watcher.close()


async def wait_for_entries(store: RedisRulesHistory, count: int) -> None:
    async with asyncio.timeout(5):
        while len(await store.entries(100)) < count:
            await asyncio.sleep(0.02)


async def test_entries_recorded_while_redis_is_down_go_out_when_it_is_back(
    tmp_path: Path, redis_server: RedisServer, log_buffer: io.StringIO
) -> None:
    path, watcher = watch(tmp_path / "routing.yaml", ramp("v1", 10))
    store = RedisRulesHistory(
        Redis.from_url(redis_server.url), key_prefix="t:", replica="gw", retry_seconds=0.05
    )
    async with fleet_history(watcher.history, store):
        await wait_for_entries(store, 1)
        redis_server.stop()
        path.write_text(ramp("v2", 20))
        watcher.reload("poll")
        await asyncio.sleep(0.2)  # a few failed pushes
        assert watcher.history.entries()[0].version == "v2"  # the replica's own log has it
        back = start_redis_server(redis_server.socket_path.parent)  # empty: no persistence
        try:
            await wait_for_entries(store, 1)
            entries = await store.entries(10)
        finally:
            back.stop()
    assert [(e["version"], e["who"]) for e in entries] == [("v2", "file")]
    assert len(log_lines(log_buffer, "rules_history_unavailable")) == 1  # once per cause
    watcher.close()
