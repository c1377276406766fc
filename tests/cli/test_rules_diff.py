"""`drm-gateway rules diff` as a CI gate: exit codes 0/1/2 on a real SQLite catalog and a
real Redis catalog, JSON totals, sampling with its bound, and one-line errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.catalog.base import RedisCatalogSettings
from proxy.catalog.redis import RedisCatalog
from proxy.catalog.sqlite import SqliteCatalog
from proxy.cli.main import main
from tests.cli.test_main import run
from tests.conftest import ENV, gateway_raw_config
from tests.redis_server import RedisServer

HEADER = "asset_id,drm_resource_id,key_holders,tags,key_ids\n"
TITLES = 2_000


@pytest.fixture(autouse=True)
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config is read without its secrets, as a CI job would."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def export(tmp_path: Path) -> Path:
    """TITLES titles: every 20th without a drmResourceId, every 5th with keys only at legacy."""
    rows = []
    for i in range(TITLES):
        rid = "" if i % 20 == 0 else f"r-{i}"
        holders = "legacy" if i % 5 == 1 else "legacy|incoming"
        rows.append(f"t-{i},{rid},{holders},,")
    path = tmp_path / "export.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """A real SQLite catalog imported by `catalog import`, its config, and four rules files."""
    db = tmp_path / "catalog.db"
    assert main(["catalog", "import", str(export(tmp_path)), "--db", str(db)]) == 0
    capsys.readouterr()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_raw_config(db, "http://a", "http://b")))
    files = {"config": config, "db": db, "export": tmp_path / "export.csv"}
    for name, percent in (("r10", 10), ("r50", 50)):
        files[name] = rules_file(tmp_path / f"{name}.yaml", percent)
    return files


def rules_file(path: Path, percent: float, **extra: Any) -> Path:
    rule = {"name": "ramp", "route": "incoming", "percent": percent, **extra}
    path.write_text(yaml.safe_dump({"version": path.stem, "default": "legacy", "rules": [rule]}))
    return path


def diff(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], old: str, new: str, *extra: str
) -> tuple[int, dict[str, Any]]:
    config = str(files["config"])
    code = main(
        ["rules", "diff", str(files[old]), str(files[new]), "--config", config, "--json", *extra]
    )
    return code, json.loads(capsys.readouterr().out)


def test_raising_a_ramp_exits_0_and_counts_moves_and_guards(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = diff(capsys, setup, "r10", "r50")
    assert code == 0 and report["exit_code"] == 0 and report["reasons"] == []
    totals = report["totals"]
    assert totals["titles"] == TITLES and totals["moved_back"] == 0
    # 40% more of the titles, of which 25% are guarded (5% no id, 20% keys at legacy only)
    assert 0.25 * TITLES < totals["moved"] < 0.35 * TITLES
    rows = {(r["rule"], r["drm"]): r for r in report["by_rule_drm"]}
    assert {drm for _, drm in rows} == {"widevine", "playready", "fairplay", "clearkey", "aes128"}
    ramp = rows["ramp", "widevine"]
    assert ramp["moves"] == {"legacy->incoming": totals["moved"]}
    held = ramp["held_back_by_reason"]
    assert set(held) == {"guard_no_resource_id", "guard_key_holders"}
    assert sum(held.values()) == totals["held_back"]
    for asset_id in ramp["samples"]["held_back_by_reason"]["guard_no_resource_id"]:
        assert int(asset_id.removeprefix("t-")) % 20 == 0  # the titles without an id
    assert len(report["samples"]["moved"]) == 5 and report["sampled"] is None


def test_lowering_a_ramp_exits_1_naming_the_titles_moving_back(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = diff(capsys, setup, "r50", "r10", "--show", "2")
    forward = diff(capsys, setup, "r10", "r50")[1]["totals"]["moved"]
    assert code == 1 and report["totals"]["moved_back"] == forward
    assert report["totals"]["moved"] == 0
    assert report["reasons"] == [f"{forward} title(s) move back toward 'legacy'"]
    assert len(report["samples"]["moved_back"]) == 2


def test_max_moves_exceeded_exits_1(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    moved = diff(capsys, setup, "r10", "r50")[1]["totals"]["moved"]
    assert diff(capsys, setup, "r10", "r50", "--max-moves", str(moved))[0] == 0
    code, report = diff(capsys, setup, "r10", "r50", "--max-moves", str(moved - 1))
    assert code == 1 and "more than --max-moves" in report["reasons"][0]


def test_user_stickiness_is_reported_as_a_share(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    setup["u25"] = rules_file(tmp_path / "u25.yaml", 25, stickiness="user")
    setup["u75"] = rules_file(tmp_path / "u75.yaml", 75, stickiness="user")
    code, report = diff(capsys, setup, "u25", "u75")
    assert code == 0 and report["totals"]["request_dependent"] == TITLES
    row = next(r for r in report["by_rule_drm"] if (r["rule"], r["drm"]) == ("ramp", "widevine"))
    assert row["weighted"]["moved"] == pytest.approx(0.5 * row["moved"], abs=0.01)
    assert diff(capsys, setup, "u75", "u25")[0] == 1


def test_text_output_is_a_table_and_the_real_process_exits_alike(setup: dict[str, Path]) -> None:
    args = ["rules", "diff", "--config", str(setup["config"])]
    ok = run(*args, str(setup["r10"]), str(setup["r50"]))
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[3].split() == ["rule", "drm", "moved", "back", "held", "unchanged", "unservable"]
    assert any(line.startswith("ramp ") and " widevine " in line for line in lines)
    assert "exit 0: nothing moves back" in ok.stdout
    back = run(*args, str(setup["r50"]), str(setup["r10"]))
    assert back.returncode == 1 and "exit 1, reviewer needed" in back.stdout


def test_bad_inputs_exit_2_with_a_clear_message(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefault: legcy\nrules:\n  - name: x\n    route: y\n")
    worse = tmp_path / "worse.yaml"
    worse.write_text("rules: [\n")
    config = str(setup["config"])
    assert main(["rules", "diff", str(bad), str(worse), "--config", config]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: 3 problem(s):" in err and "provider 'legcy' is not configured" in err
    assert f"{worse}: 1 problem(s):" in err and "YAML syntax error" in err  # both files
    good = str(setup["r10"])
    cases = [
        (["--catalog", str(tmp_path / "none.db")], "no such catalog database"),
        (["--catalog", str(setup["export"])], "cannot read the catalog"),
        (["--catalog", "redis://127.0.0.1:1/0"], "cannot read the catalog"),
        (["--catalog", "redis://:secret@127.0.0.1:1/0"], "must not hold a password"),
    ]
    for extra, message in cases:
        assert main(["rules", "diff", good, good, "--config", config, "--json", *extra]) == 2
        out, err = capsys.readouterr()
        assert out == ""  # no log line or partial report where the JSON would be
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["rules", "diff", good, good, "--config", str(tmp_path / "no.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["rules", "diff", good, good, "--config", config, "--sample", "0"])
    assert usage.value.code == 2


def test_sample_states_its_bound_and_covers_the_full_count(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    full = diff(capsys, setup, "r10", "r50")[1]["totals"]["moved"]
    code, report = diff(capsys, setup, "r10", "r50", "--sample", "600", "--seed", "4")
    assert code == 0
    assert report["sampled"] == {"size": 600, "population": TITLES, "seed": 4}
    assert report["totals"]["titles"] == 600
    bound = report["error_bound"]["moved"]
    assert bound["estimate_low"] <= full <= bound["estimate_high"]
    assert bound["share_low"] < bound["share"] < bound["share_high"]
    again = diff(capsys, setup, "r10", "r50", "--sample", "600", "--seed", "4")[1]
    assert again["totals"] == report["totals"]  # the seed repeats the sample


def test_redis_catalog_gives_the_same_answer(
    setup: dict[str, Path], redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = redis_server.url
    assert main(["catalog", "import", str(setup["export"]), "--to", url]) == 0
    capsys.readouterr()
    sqlite = diff(capsys, setup, "r10", "r50")[1]
    code, redis = diff(capsys, setup, "r10", "r50", "--catalog", url)
    assert code == 0 and redis["catalog"] == {"backend": "redis", "location": url}
    assert redis["totals"] == sqlite["totals"]
    assert diff(capsys, setup, "r50", "r10", "--catalog", url)[0] == 1
    code, sampled = diff(
        capsys, setup, "r10", "r50", "--catalog", url, "--sample", "500", "--seed", "4"
    )
    assert code == 0 and sampled["sampled"]["population"] == TITLES
    assert sampled["totals"]["titles"] == 500
    bound = sampled["error_bound"]["moved"]
    assert bound["estimate_low"] <= sqlite["totals"]["moved"] <= bound["estimate_high"]


def test_whole_catalog_reads_agree_with_lookups(
    setup: dict[str, Path], redis_server: RedisServer
) -> None:
    """iter_entries, iter_ids + get_many and count give what `get` gives, on both backends."""
    assert main(["catalog", "import", str(setup["export"]), "--to", redis_server.url]) == 0
    settings = RedisCatalogSettings(url=redis_server.url)
    for catalog in (SqliteCatalog(setup["db"]), RedisCatalog(settings)):
        asyncio.run(check_whole_catalog_reads(catalog))


async def check_whole_catalog_reads(catalog: SqliteCatalog | RedisCatalog) -> None:
    try:
        assert await catalog.count() == TITLES
        pages = [page async for page in catalog.iter_entries(300)]
        assert all(0 < len(page) <= 300 for page in pages)
        entries = {e.asset_id: e for page in pages for e in page}
        ids = [i async for page in catalog.iter_ids(300) for i in page]
        assert sorted(ids) == sorted(entries) and len(entries) == TITLES
        picked = [*ids[::97], "no-such-title"]
        assert {e.asset_id: e for e in await catalog.get_many(picked)} == {
            i: entries[i] for i in ids[::97]
        }
        for asset_id in ids[::401]:
            assert await catalog.get(asset_id) == entries[asset_id]
    finally:
        await catalog.close()
