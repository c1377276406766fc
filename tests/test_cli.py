"""The `drm-gateway` commands, run as a user would: real processes, real files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ENV, gateway_raw_config

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_config_check_ok_and_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(gateway_raw_config(tmp_path / "c.db", "http://a", "http://b")))
    result = run("config", "check", str(good), env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: providers incoming, legacy")

    raw = gateway_raw_config(tmp_path / "c.db", "http://a", "http://b")
    raw["providers"]["legacy"]["license_urls"]["widevine"] = "not a url"
    raw["server"]["public"]["port"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = run("config", "check", str(bad), env=ENV)
    assert result.returncode == 2
    assert "2 problem(s)" in result.stderr
    assert "providers.legacy.license_urls.widevine: not a URL" in result.stderr
    assert "server.public.port: must be between 0 and 65535" in result.stderr


def test_config_check_layers_files_in_order(tmp_path: Path) -> None:
    good = tmp_path / "base.yaml"
    good.write_text(yaml.safe_dump(gateway_raw_config(tmp_path / "c.db", "http://a", "http://b")))
    layer = tmp_path / "layer.yaml"
    layer.write_text("routing: {default_provider: nobody}\n")
    result = run("config", "check", str(good), str(layer), env=ENV)
    assert result.returncode == 2
    assert "routing.default_provider: unknown provider 'nobody'" in result.stderr
    layer.write_text("log: {level: debug}\n")
    assert run("config", "check", str(good), str(layer), env=ENV).returncode == 0


def test_serve_with_bad_config_exits_before_binding(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    raw = gateway_raw_config(tmp_path / "c.db", "http://a", "http://b")
    raw["server"]["public"]["port"] = free_port
    raw["routing"]["default_provider"] = "nobody"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run("serve", "--config", str(path), env=ENV)
    assert result.returncode == 2
    assert "routing.default_provider: unknown provider 'nobody'" in result.stderr
    assert result.stdout == ""


def test_catalog_import_and_audit(tmp_path: Path) -> None:
    source = tmp_path / "assets.csv"
    lines = ["asset_id,drm_resource_id,key_holders,tags"]
    lines += [f"a-{i},{'' if i % 4 == 0 else f'r-{i}'},,news" for i in range(20)]
    lines.append("bad id,r-x,,")
    source.write_text("\n".join(lines) + "\n")
    db = tmp_path / "catalog.db"
    result = run("catalog", "import", str(source), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert "20" in result.stdout and "line 22" in result.stdout
    assert "imported" in result.stderr  # progress goes to stderr

    result = run("catalog", "audit", "--db", str(db), "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert "20" in result.stdout and "5" in result.stdout
    # Sorted by id, cut at the limit: a-0, a-12, a-16 shown; a-4 and a-8 counted, not listed.
    assert "a-0\n" in result.stdout and "a-16\n" in result.stdout
    assert "a-4\n" not in result.stdout and "and 2 more" in result.stdout


def test_catalog_import_of_missing_file_fails_clearly(tmp_path: Path) -> None:
    result = run("catalog", "import", str(tmp_path / "nope.csv"), "--db", str(tmp_path / "c.db"))
    assert result.returncode == 1
    assert "import failed" in result.stderr


def test_catalog_audit_of_missing_db(tmp_path: Path) -> None:
    result = run("catalog", "audit", "--db", str(tmp_path / "none.db"))
    assert result.returncode == 1
    assert "no such catalog database" in result.stderr


def test_rules_check_and_explain(tmp_path: Path) -> None:
    from tests.conftest import write_catalog

    ok = run("rules", "check", "rules/routing.yaml")
    assert ok.returncode == 0 and ok.stdout.startswith("ok: ")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "x"\ndefault: legacy\nrules:\n  - name: a\n    route: nowhere\n    percent: 120\n'
    )
    db = write_catalog(tmp_path / "catalog.db")
    config = tmp_path / "gateway.yaml"
    raw = gateway_raw_config(db, "http://a", "http://b")
    config.write_text(yaml.safe_dump(raw))
    refused = run("rules", "check", str(bad), "--config", str(config), env=ENV)
    assert refused.returncode == 1
    assert "'nowhere' is not configured" in refused.stderr and "percent: 120" in refused.stderr

    rules = tmp_path / "routing.yaml"
    rules.write_text(
        'version: "cli-1"\ndefault: legacy\nrules:\n'
        "  - name: new\n    when: {tags_any: [new-release]}\n    route: incoming\n"
    )
    raw["routing"] = {"rules_file": str(rules)}
    config.write_text(yaml.safe_dump(raw))
    explained = run(
        "rules",
        "explain",
        "--config",
        str(config),
        "--asset",
        "incoming-only",
        "--drm",
        "widevine",
        env=ENV,
    )
    assert explained.returncode == 0, explained.stderr
    import json

    body = json.loads(explained.stdout)
    assert body["decision"]["provider"] == "incoming" and body["decision"]["rule"] == "new"
    assert body["rules_version"] == "cli-1"
