"""`drm-gateway catalog import|audit|sync`: flags, refusals and exit codes, on real files."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from proxy.cli.main import main
from tests.cli.test_main import run
from tests.conftest import ENV, gateway_raw_config

HEADER = "asset_id,drm_resource_id,key_holders,tags,key_ids\n"
ROWS = ["a-1,r-1,legacy,,", "a-2,,legacy,,", "a-3,r-3,incoming,,", "a-4,r-4,,,"]


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def config_for(tmp_path: Path, db: Path) -> Path:
    """A gateway config: legacy (needs nothing), incoming (needs a drmResourceId)."""
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_raw_config(db, "http://a", "http://b")))
    return config


def asset_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'assets'").fetchone():
            return []  # a refused import leaves at most an empty file
        return [r[0] for r in conn.execute("SELECT asset_id FROM assets ORDER BY asset_id")]
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every --config here is read without the config's secrets in the environment."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


# --- import ----------------------------------------------------------------------------------


def test_import_with_rejects_exits_1_and_writes_nothing_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write(tmp_path / "in.csv", [*ROWS, "bad id,,,,"])
    db = tmp_path / "c.db"
    assert main(["catalog", "import", str(source), "--db", str(db)]) == 1
    out = capsys.readouterr().out
    assert "nothing imported: 4 added, 0 updated, 1 rejected (would be)" in out
    assert "  line 6: asset_id 'bad id' is not a valid id" in out
    assert asset_ids(db) == []

    assert main(["catalog", "import", str(source), "--db", str(db), "--allow-rejects"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4 added, 0 updated, 1 rejected\n  line 6:")
    assert asset_ids(db) == ["a-1", "a-2", "a-3", "a-4"]


def test_import_with_config_rejects_unknown_and_unservable_key_holders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "c.db"
    config = config_for(tmp_path, db)
    rows = [*ROWS, "typo,r-5,legcy,,", "no-id,,incoming,,", "both,,legacy|incoming,,"]
    source = write(tmp_path / "in.csv", rows)
    assert main(["catalog", "import", str(source), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[1:3] == [
        "  line 6: key holder 'legcy' not configured (providers: incoming, legacy)",
        "  line 7: no configured provider can serve it: incoming needs a drm_resource_id",
    ]
    assert asset_ids(db) == []
    # the config names the file; --db overrides it; --allow-rejects loads the rest
    other = tmp_path / "other.db"
    argv = ["catalog", "import", str(source), "--config", str(config), "--db", str(other)]
    assert main([*argv, "--allow-rejects"]) == 0
    assert asset_ids(other) == ["a-1", "a-2", "a-3", "a-4", "both"]


def test_import_with_a_broken_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("providers: {legacy: {kind: nope}}\n")
    source = write(tmp_path / "in.csv", ROWS)
    with pytest.raises(SystemExit) as exc:
        main(["catalog", "import", str(source), "--config", str(config)])
    assert exc.value.code == 2


# --- audit -----------------------------------------------------------------------------------


def test_audit_lists_what_no_configured_provider_can_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "c.db"
    rows = [*ROWS, "typo,r-5,legcy,,", "no-id,,incoming,,", "no-id-2,,incoming,,"]
    assert main(["catalog", "import", str(write(tmp_path / "in.csv", rows)), "--db", str(db)]) == 0
    config = config_for(tmp_path, db)
    capsys.readouterr()

    assert main(["catalog", "audit", "--config", str(config), "--limit", "2"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-5:] == [
        "3 that no configured provider (incoming, legacy) can serve (42.9%)",
        "  by cause: unknown_holder 1, no_drm_resource_id 2",
        "  no-id: no configured provider can serve it: incoming needs a drm_resource_id",
        "  no-id-2: no configured provider can serve it: incoming needs a drm_resource_id",
        "  ... and 1 more",
    ]
    assert err == ""

    assert main(["catalog", "audit", "--config", str(config), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == 7
    assert report["missing_drm_resource_id"] == {"count": 3, "sample": ["a-2", "no-id", "no-id-2"]}
    assert report["unservable"]["count"] == 3
    assert report["unservable"]["by_cause"]["unknown_holder"] == 1
    assert report["unservable"]["sample"][-1] == {
        "asset_id": "typo",
        "reason": "no configured provider can serve it: key holder 'legcy' is not a configured "
        "provider",
    }

    assert main(["catalog", "audit", "--db", str(db), "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert "unservable" not in json.loads(out) and "give --config" in err


# --- sync ------------------------------------------------------------------------------------


def sync_files(tmp_path: Path) -> tuple[Path, Path]:
    """A 40-asset target, and a source that fills one id, adds one and lacks one (2.5%)."""
    target_rows = [f"t-{i:02},r-{i},legacy,," for i in range(40)]
    target_rows[0] = "t-00,,legacy,,"
    db = tmp_path / "target.db"
    assert (
        main(["catalog", "import", str(write(tmp_path / "t.csv", target_rows)), "--db", str(db)])
        == 0
    )
    source_rows = ["t-00,r-0,legacy,,", *target_rows[1:39], "new,r-new,legacy,,"]
    return write(tmp_path / "s.csv", source_rows), db


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sync_prints_the_diff_then_applies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, db = sync_files(tmp_path)
    capsys.readouterr()
    assert main(["catalog", "sync", str(source), "--to", str(db), "--sample", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "source 40 assets, target 40: 1 added, 1 updated, 38 unchanged, 0 removed, 0 rejected",
        "  added: 1: new",
        "  drm_resource_id_filled: 1: t-00",
        "  not in the source (kept; --prune removes them): 1: t-39",
        out.splitlines()[-1],
    ]
    assert out.splitlines()[-1].startswith(f"applied to {db} in one transaction (")
    assert "read 41 lines (100%)\ncomparing...\napplying...\n" in err
    assert "new" in asset_ids(db) and "t-39" in asset_ids(db)

    assert main(["catalog", "sync", str(source), "--to", str(db), "--prune"]) == 0
    assert "t-39" not in asset_ids(db)


def test_sync_dry_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, db = sync_files(tmp_path)
    before = digest(db)
    assert main(["catalog", "sync", str(source), "--to", str(db), "--dry-run", "--prune"]) == 0
    out = capsys.readouterr().out
    assert "1 removed" in out and "  removed: 1: t-39" in out
    assert out.splitlines()[-1].startswith("dry run: nothing written")
    assert digest(db) == before


def test_sync_prune_share_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, db = sync_files(tmp_path)
    before = digest(db)
    argv = ["catalog", "sync", str(source), "--to", str(db), "--prune"]
    assert main([*argv, "--max-prune-share", "0.01"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == (
        "refused, nothing written: --prune would remove 1 of 40 assets (2.5%), more than "
        "--max-prune-share 1%; give --force to remove them"
    )
    assert digest(db) == before
    assert main([*argv, "--max-prune-share", "0.01", "--dry-run"]) == 1
    assert "would refuse: --prune" in capsys.readouterr().out
    assert main([*argv, "--max-prune-share", "0.01", "--force"]) == 0
    assert "t-39" not in asset_ids(db)


def test_sync_bad_row_gives_its_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = sync_files(tmp_path)
    bad = write(tmp_path / "bad.csv", ["t-00,r-0,legacy,,", "x,r,legacy,,,extra", "y,,,,"])
    before = digest(db)
    assert main(["catalog", "sync", str(bad), "--to", str(db)]) == 1
    out = capsys.readouterr().out
    assert "rejected:\n  line 3: expected 5 columns, got 6\n" in out
    assert "refused, nothing written: 1 source row(s) rejected" in out
    assert digest(db) == before
    assert main(["catalog", "sync", str(bad), "--to", str(db), "--allow-rejects"]) == 0
    assert "y" in asset_ids(db)


def test_sync_checks_key_holders_with_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, db = sync_files(tmp_path)
    config = config_for(tmp_path, db)
    typo = write(tmp_path / "typo.csv", ["t-00,r-0,legcy,,", "t-01,,incoming,,"])
    assert main(["catalog", "sync", str(typo), "--to", str(db), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "  line 2: key holder 'legcy' not configured (providers: incoming, legacy)" in out
    assert "  line 3: no configured provider can serve it: incoming needs a drm_resource_id" in out


def test_sync_usage_problems_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, db = sync_files(tmp_path)
    # A Redis catalog is a sync target (tests/catalog/test_sync_redis.py), not yet a source.
    assert main(["catalog", "sync", "redis://localhost:6379/0", "--to", str(db)]) == 2
    assert "not supported" in capsys.readouterr().err
    assert main(["catalog", "sync", str(tmp_path / "none.csv"), "--to", str(db)]) == 2
    for bad_share in ("1.5", "five"):
        with pytest.raises(SystemExit) as exc:
            main(["catalog", "sync", str(source), "--to", str(db), "--max-prune-share", bad_share])
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["catalog", "sync", str(source)])  # --to is required
    assert exc.value.code == 2


def test_sync_as_a_command(tmp_path: Path) -> None:
    """The installed entry point: real process, exit status, progress on stderr."""
    source, db = sync_files(tmp_path)
    result = run("catalog", "sync", str(source), "--to", str(db), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "1 added, 1 updated" in result.stdout and "read 41 lines" in result.stderr
    result = run(
        "catalog", "sync", str(source), "--to", str(db), "--prune", "--max-prune-share", "0"
    )
    assert result.returncode == 1 and "refused, nothing written" in result.stdout
