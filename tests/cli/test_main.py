"""The `drm-gateway` commands, run as a user would: real processes, real files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.conftest import ENV, free_ports, gateway_raw_config, write_catalog

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess, with `env` added to ours and `unset` removed from it."""
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset},
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


# Run `main` with the arguments after the output file; write the modules loaded at exit there.
MODULES_AT_EXIT = """
import json, sys
from proxy.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""
# Modules of the development tools (proxy.dev.demo, proxy.dev.media, proxy.dev.player too).
DEV_CODE = ("proxy.dev",)


def dev_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(DEV_CODE)]


def test_serve_loads_no_demo_or_emulator_code(tmp_path: Path) -> None:
    public, internal = free_ports(2)
    raw = gateway_raw_config(write_catalog(tmp_path / "c.db"), "http://a", "http://b")
    raw["server"] |= {"public": {"port": public}, "internal": {"port": internal}}
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    loaded = tmp_path / "modules.json"
    argv = [sys.executable, "-c", MODULES_AT_EXIT, str(loaded), "serve", "--config", str(config)]
    serve = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **ENV}, stdout=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{internal}/healthz", serve)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    modules = json.loads(loaded.read_text())
    assert "proxy.server.app" in modules  # it did serve
    assert dev_modules(modules) == []


def test_commands_parse_without_loading_dev_code(tmp_path: Path) -> None:
    script = """
import json, sys
from proxy.cli import build_parser
lines = [
    ["serve", "--config", "x.yaml", "--workers", "2"],
    ["config", "check", "x.yaml"],
    ["catalog", "audit", "--db", "x.db"],
    ["rules", "check", "r.yaml"],
    ["token", "verify", "t", "--config", "x.yaml", "--provider", "p"],
]
for argv in lines:
    build_parser(argv[0]).parse_args(argv)
before = sorted(sys.modules)
build_parser("emulate").parse_args(["emulate", "legacy"])
print(json.dumps([before, sorted(sys.modules)]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    before, after_emulate = json.loads(result.stdout)
    assert dev_modules(before) == []
    assert "proxy.dev.emulator.cli" in after_emulate  # chosen, the command's module loads


def test_dev_commands_show_their_whole_help() -> None:
    listed = run("--help")
    assert listed.returncode == 0 and "demo" in listed.stdout and "emulate" in listed.stdout
    emulate = run("emulate", "--help")
    assert emulate.returncode == 0 and "--jwt-key" in emulate.stdout
    demo = run("demo", "--help")
    assert demo.returncode == 0 and "--ports BASE" in demo.stdout


def wait_until_up(url: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Poll `url` until it answers 200; fail if `process` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the process exited before it was up"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.1)


def test_catalog_import_and_audit(tmp_path: Path) -> None:
    source = tmp_path / "assets.csv"
    lines = ["asset_id,drm_resource_id,key_holders,tags"]
    lines += [f"a-{i},{'' if i % 4 == 0 else f'r-{i}'},,news" for i in range(20)]
    lines.append("bad id,r-x,,")
    source.write_text("\n".join(lines) + "\n")
    db = tmp_path / "catalog.db"
    # A rejected row fails the import, which then writes nothing...
    result = run("catalog", "import", str(source), "--db", str(db))
    assert result.returncode == 1, result.stderr
    assert "nothing imported" in result.stdout and "line 22" in result.stdout
    # ...unless rejects are allowed: the other rows go in, exit 0, the line still shown.
    result = run("catalog", "import", str(source), "--db", str(db), "--allow-rejects")
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


KID = "00112233445566778899aabbccddeeff"
KEYED_ROWS = [
    "asset_id,drm_resource_id,key_holders,tags,key_ids",
    f"keyed,r-1,,,{KID}|{KID.upper()}",
    "unkeyed-1,r-2,,,",
    "unkeyed-2,r-3,incoming,,",
    "legacy-held,r-4,legacy,,",
    f"short,r-5,,,{KID[:-1]}",
    f"gap,r-6,,,{KID}||{KID}",
    "guid,r-7,,,00112233-4455-6677-8899-AABBCCDDEEFF",
]


def keyed_config(tmp_path: Path, db: Path) -> Path:
    """A gateway config over `db` whose `incoming` provider is of kind `keyed`."""
    raw = gateway_raw_config(db, "http://a", "http://b")
    raw["providers"]["incoming"]["kind"] = "keyed"
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config


def test_catalog_import_with_key_ids_then_audit(tmp_path: Path) -> None:
    source = tmp_path / "assets.csv"
    source.write_text("\n".join(KEYED_ROWS) + "\n")
    db = tmp_path / "catalog.db"
    result = run("catalog", "import", str(source), "--db", str(db), "--allow-rejects")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "5 added, 0 updated, 2 rejected",
        f"  line 6: key id '{KID[:-1]}' has 31 hex digits, expected 32",
        "  line 7: key id 2 in key_ids is empty",
    ]

    # Without a config nothing says which providers need key ids: said so, on stderr.
    result = run("catalog", "audit", "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "5 assets, 0 without a drm_resource_id (0.0%)\n"
    assert "key ids and servability not checked: give --config" in result.stderr

    # With one (read like the rules tooling: no secret in the environment is needed).
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump(gateway_raw_config(db, "http://a", "http://b")))
    result = run("catalog", "audit", "--config", str(config), unset=tuple(ENV))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "no configured provider needs key ids",
        "0 that no configured provider (incoming, legacy) can serve (0.0%)",
    ]


def test_catalog_audit_reports_key_ids_a_configured_provider_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.cli import main
    from proxy.upstream import generic
    from proxy.upstream.registry import PROVIDER_KINDS

    # A kind that needs key ids (as Axinom's protocol does), serving like the generic one.
    monkeypatch.setitem(
        cast(dict[str, Any], PROVIDER_KINDS), "keyed", replace(generic.KIND, needs_key_ids=True)
    )
    source = tmp_path / "assets.csv"
    source.write_text("\n".join(KEYED_ROWS) + "\n")
    db = tmp_path / "catalog.db"
    assert main(["catalog", "import", str(source), "--db", str(db), "--allow-rejects"]) == 0
    config = keyed_config(tmp_path, db)
    for env in ENV:
        monkeypatch.delenv(env, raising=False)
    capsys.readouterr()

    assert main(["catalog", "audit", "--config", str(config), "--limit", "1"]) == 0
    out, err = capsys.readouterr()
    # legacy-held is no gap: only legacy, which needs no key ids, holds its keys
    assert out.splitlines() == [
        "5 assets, 0 without a drm_resource_id (0.0%)",
        "2 without key ids, which incoming needs (40.0%)",
        "  unkeyed-1",
        "  ... and 1 more",
        # held only by incoming, which needs key ids: nobody can serve it
        "1 that no configured provider (incoming, legacy) can serve (20.0%)",
        "  by cause: no_key_ids 1",
        "  unkeyed-2: no configured provider can serve it: incoming needs key ids",
    ]
    assert err == ""

    other = tmp_path / "other.db"  # --db wins over the config's catalog file
    assert main(["catalog", "import", str(source), "--db", str(other), "--allow-rejects"]) == 0
    other_source = tmp_path / "more.csv"
    other_source.write_text("asset_id,drm_resource_id,key_holders,tags\nlate,r-9,,\n")
    assert main(["catalog", "import", str(other_source), "--db", str(other)]) == 0
    capsys.readouterr()
    assert main(["catalog", "audit", "--config", str(config), "--db", str(other)]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == [
        "3 without key ids, which incoming needs (50.0%)",
        "  late",
        "  unkeyed-1",
        "  unkeyed-2",
    ]


def test_catalog_audit_of_a_corrupt_db_fails_cleanly(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"not a database" * 100)
    result = run("catalog", "audit", "--db", str(db))
    assert result.returncode == 1
    assert "audit failed: cannot read the catalog database" in result.stderr
    assert "Traceback" not in result.stderr


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


SECRETS = tuple(ENV)  # every secret the test configs name, unset for the rules tooling
DEMO_CONFIG = "proxy/dev/demo_data/gateway.yaml"


def rules_file(tmp_path: Path, name: str, *, default: str = "legacy", route: str) -> Path:
    path = tmp_path / name
    path.write_text(
        f'version: "{name}"\ndefault: {default}\nrules:\n'
        f"  - name: new\n    when: {{tags_any: [new-release]}}\n    route: {route}\n"
    )
    return path


def config_without_key_material(tmp_path: Path, **routing: str) -> Path:
    """A config whose secrets are unset and whose provider key file does not exist."""
    raw = gateway_raw_config(tmp_path / "catalog.db", "http://a", "http://b")
    raw["providers"]["incoming"]["auth"].update(
        algorithm="RS256", keys=[{"kid": "k1", "private_key_file": str(tmp_path / "no.pem")}]
    )
    raw["routing"] = {"default_provider": "legacy", **routing}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_rules_check_against_a_config_needs_no_secret(tmp_path: Path) -> None:
    ok = run("rules", "check", "rules/routing.yaml", "--config", DEMO_CONFIG, unset=SECRETS)
    assert ok.returncode == 0, ok.stderr
    assert f"checked against the providers of {DEMO_CONFIG}: incoming, legacy" in ok.stdout

    unknown = rules_file(tmp_path, "unknown.yaml", route="nowhere")
    refused = run("rules", "check", str(unknown), "--config", DEMO_CONFIG, unset=SECRETS)
    assert refused.returncode == 1
    assert (
        "rule 'new' (#1): route: provider 'nowhere' is not configured (known: incoming, legacy)"
        in refused.stderr
    )
    config = config_without_key_material(tmp_path)
    guarded = rules_file(tmp_path, "guarded.yaml", default="incoming", route="legacy")
    refused = run("rules", "check", str(guarded), "--config", str(config), unset=SECRETS)
    assert refused.returncode == 1, refused.stdout
    assert "default: provider 'incoming' needs a drmResourceId" in refused.stderr
    assert "not set" not in refused.stderr and "no.pem" not in refused.stderr


def test_rules_check_without_config_names_the_skipped_checks(tmp_path: Path) -> None:
    result = run("rules", "check", str(rules_file(tmp_path, "r.yaml", route="nowhere")))
    assert result.returncode == 0, result.stderr
    skipped = result.stdout.split("skipped without --config", 1)[1]
    assert "provider names (default, route, fallback, shadow.to)" in skipped
    assert "the default provider does not need a drmResourceId" in skipped


def test_rules_explain_needs_no_secret(tmp_path: Path) -> None:
    from tests.conftest import write_catalog

    write_catalog(tmp_path / "catalog.db")
    rules = rules_file(tmp_path, "routing.yaml", route="incoming")
    config = config_without_key_material(tmp_path, rules_file=str(rules))
    args = ("rules", "explain", "--config", str(config), "--asset", "incoming-only")
    explained = run(*args, "--drm", "widevine", unset=SECRETS)
    assert explained.returncode == 0, explained.stderr
    body = json.loads(explained.stdout)
    assert body["decision"]["provider"] == "incoming" and body["rules_version"] == "routing.yaml"

    rules.write_text(rules.read_text().replace("route: incoming", "route: nowhere"))
    refused = run(*args, "--drm", "widevine", unset=SECRETS)
    assert refused.returncode == 1
    assert f"{rules}: 1 problem(s)" in refused.stderr and "'nowhere'" in refused.stderr
