"""`drm-gateway demo` as a user runs it: every curl line and the player link work as printed."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import yaml
from cryptography import x509

from proxy.cli import build_parser
from proxy.config import load_config
from proxy.dev.demo import (
    DEMO_ADMIN_TOKEN,
    DEMO_DATA,
    DEMO_FILES,
    DEMO_INCOMING_JWT_KEY,
    DEMO_KEY_ID,
    DEMO_PACKAGER_TOKEN,
    DEMO_PLAYER_SECRET,
    DEMO_PORTS,
    INCOMING_ONLY_ASSET,
    SPEKE_ASSET,
    SPEKE_KIDS,
    SPEKE_REQUEST,
    DemoPort,
    DemoPorts,
    demo_stream,
)
from proxy.dev.emulator import derive_key
from proxy.dev.emulator.settings import (
    DEMO_INCOMING_KEY_API_TOKEN,
    DEMO_LEGACY_API_KEY,
    DEMO_LEGACY_KEY_API_TOKEN,
    DEMO_SEED,
)
from proxy.dev.kinds import KIND_ENV
from proxy.dev.media import (
    DASHIF_CLEARKEY,
    INSTALL_COMMAND,
    PACKAGER_SPEC,
    SHAKA_PLAYER_FILE,
    WEB_PLAYERS,
    MediaToolError,
    find_media_tools,
    install_commands,
    signal_dashif_clearkey,
)
from proxy.dev.player import DASH, HLS, TITLES_FILE, find_player_tools, prepare_demo_media
from tests.conftest import free_ports
from tests.e2e.tools import PLAY_SCRIPT, find_tools

ROOT = Path(__file__).resolve().parents[2]
# The demo as `make demo` runs it from a checkout; tests/test_wheel.py runs an installed one.
FROM_CHECKOUT = (sys.executable, "-m", "proxy.cli")
PLAYER_LINK = re.compile(r"http://127\.0\.0\.1:\d+/player\.html\?\S+")
FIRST_RUN_LINE = "packaging demo media (first run only)..."
PICKED = ("dashjs", "hlsjs")  # the players the picker opens beside the printed (Shaka) link
# The secrets the demo sets for itself (proxy.dev.demo.run_demo), for loading its config here.
DEMO_SECRETS = {
    "LEGACY_API_KEY": DEMO_LEGACY_API_KEY,
    "INCOMING_JWT_KEY": DEMO_INCOMING_JWT_KEY,
    "ADMIN_TOKEN": DEMO_ADMIN_TOKEN,
    "LEGACY_KEY_API_TOKEN": DEMO_LEGACY_KEY_API_TOKEN,
    "INCOMING_KEY_API_TOKEN": DEMO_INCOMING_KEY_API_TOKEN,
    "SPEKE_PACKAGER_TOKEN": DEMO_PACKAGER_TOKEN,
    "PLAYER_JWT_SECRET": DEMO_PLAYER_SECRET,
}
needs_curl = pytest.mark.skipif(not Path("/usr/bin/curl").exists(), reason="curl is not installed")


def printed_commands(banner: str) -> list[str]:
    """The curl commands of the banner, continuation lines joined."""
    joined = banner.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


@dataclass(frozen=True)
class Demo:
    """A running demo: its banner, work directory, and the file its output keeps going to."""

    banner: str
    workdir: Path
    output: Path

    def log(self) -> str:
        """Everything the demo printed so far."""
        return self.output.read_text()


def demo_env(**changes: str) -> dict[str, str]:
    """This process's environment without secrets (the demo sets its own), plus `changes`."""
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_KEY", "_TOKEN", "_SECRET"))}
    return env | changes


def run_demo(
    workdir: Path,
    *,
    path: str | None = None,
    command: tuple[str, ...] = FROM_CHECKOUT,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Demo]:
    """Start the demo as `make demo` does, yield it once the banner is out, then stop it."""
    public, internal, legacy, incoming, player = free_ports(5)
    output = workdir.parent / f"{workdir.name}.out"
    env = demo_env() if env is None else env
    if path is not None:
        env["PATH"] = path
    ports = {"public": public, "internal": internal, "legacy": legacy, "incoming": incoming}
    argv = [*command, "demo", "--dir", str(workdir), *args]
    for name, port in {**ports, "player": player}.items():
        argv += [f"--{name}-port", str(port)]
    with output.open("w") as out:
        demo = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    try:
        deadline = time.monotonic() + 60
        while "Try it" not in output.read_text() or "admin/rules" not in output.read_text():
            assert demo.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "the demo did not start within 60 s"
            time.sleep(0.2)
        yield Demo(output.read_text(), workdir, output)
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.returncode == 0
    assert "demo stopped" in output.read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One demo for the module, started on a fresh work directory (so media is made anew)."""
    yield from run_demo(tmp_path_factory.mktemp("demo") / "demo")


def fetch(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


@needs_curl
def test_demo_serves_every_example_it_prints(demo: Demo) -> None:
    check_printed_examples(demo.banner)


def check_printed_examples(banner: str, *, at_least: int = 9) -> None:
    """Run every curl line of the banner: each succeeds with a body that is no error."""
    commands = printed_commands(banner)
    assert len(commands) >= at_least
    for command in commands:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command], capture_output=True, timeout=30
        )
        assert result.returncode == 0, (command, result.stderr)
        assert result.stdout, command
        assert b'"error": "' not in result.stdout, (command, result.stdout[:300])


# Legacy and incoming kinds: DoveRunner serves ClearKey but no HLS keys; Axinom and the Widevine
# API need key ids / serve Widevine only; EZDRM as the legacy provider serves titles without
# a drmResourceId.
KIND_COMBINATIONS = [
    ("generic", "doverunner"),
    ("ezdrm", "axinom"),
    ("axinom", "widevine-cloud"),
    ("generic", "drmtoday"),
    ("ezdrm", "verimatrix"),
]


@needs_curl
@pytest.mark.parametrize(("legacy", "incoming"), KIND_COMBINATIONS)
def test_each_printed_example_works_with_provider_kinds(
    tmp_path: Path, legacy: str, incoming: str
) -> None:
    args = ("--legacy-kind", legacy, "--incoming-kind", incoming)
    for demo in run_demo(tmp_path / "demo", args=args):
        assert f"(kind {legacy})" in demo.banner and f"(kind {incoming})" in demo.banner
        check_printed_examples(demo.banner, at_least=7)
        served = "clearkey" in demo.banner and "/v1/license/clearkey/" in demo.banner
        assert served == (legacy == "generic" or incoming == "doverunner")
        # SPEKE needs an emulator with a key API: the demo's own generic ones have one.
        assert ("/v2/speke" in demo.banner) == ("generic" in (legacy, incoming))
        # The incoming-only title's license comes from the chosen kind's emulator.
        token = re.search(r"player token +(\S+)", demo.banner)
        public = re.search(r"gateway, public +(\S+)", demo.banner)
        assert token is not None and public is not None
        request = urllib.request.Request(
            f"{public.group(1)}/v1/license/widevine/{INCOMING_ONLY_ASSET}",
            data=b"\x08\x04",
            headers={
                "Authorization": f"Bearer {token.group(1)}",
                "Content-Type": "application/octet-stream",
            },
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.read().split(b"\n")[:3] == [
                b"EMULATED-LICENSE",
                incoming.encode(),
                b"widevine",
            ]


def test_demo_serves_the_player_page_it_links_or_says_how_to_get_it(demo: Demo) -> None:
    banner = demo.banner
    tools, missing = find_player_tools(demo.workdir)
    if tools is None:
        assert PLAYER_LINK.search(banner) is None
        assert f"missing here: {', '.join(missing)}" in banner
        assert f"\n  {INSTALL_COMMAND}\n" in banner
        return
    assert FIRST_RUN_LINE in banner
    link = PLAYER_LINK.search(banner)
    assert link is not None, banner
    parts = urlsplit(link.group())
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    assert set(query) == {"gateway", "asset", "manifest", "token"}
    assert query["asset"] == demo_stream().asset_id
    server = f"{parts.scheme}://{parts.netloc}"

    status, kind, page = fetch(link.group())
    assert (status, kind.split(";")[0]) == (200, "text/html")
    for player in WEB_PLAYERS:  # the page loads the chosen one from its route
        script = f"/{player.key}/{player.file}"
        assert f'script: "{script}"'.encode() in page, script
        status, kind, body = fetch(server + script)
        assert status == 200 and kind.split(";")[0] in {"text/javascript", "application/javascript"}
        assert body == (tools.dists[player.key] / player.file).read_bytes()
    status, kind, mpd = fetch(server + query["manifest"])
    assert (status, kind) == (200, "application/dash+xml")
    kid = DEMO_KEY_ID
    assert f'default_KID="{kid[:8]}-{kid[8:12]}-{kid[12:16]}-{kid[16:20]}-{kid[20:]}"' in (
        mpd.decode()
    )
    assert DASHIF_CLEARKEY in mpd.decode()
    # The picker's titles: the DASH title for Shaka Player and dash.js, the HLS one for hls.js.
    titles = json.loads(fetch(f"{server}/media/{TITLES_FILE}")[2])
    assert [(t["format"], t["drm"], t["players"]) for t in titles] == [
        (DASH, "clearkey", ["shaka", "dashjs"]),
        (HLS, "aes128", ["hlsjs"]),
    ]
    assert titles[0]["manifest"] == query["manifest"]
    status, kind, playlist = fetch(server + titles[1]["manifest"])
    assert (status, kind) == (200, "application/vnd.apple.mpegurl")
    key_uri = f"{query['gateway']}/v1/keys/{demo_stream().asset_id}/{kid}"
    assert f'#EXT-X-KEY:METHOD=AES-128,URI="{key_uri}"' in playlist.decode()
    # The key is the gateway's to give: no file of the media folder holds it.
    key = derive_key(DEMO_SEED, demo_stream().derivation_id, kid)
    served = [p for p in (demo.workdir / "media").rglob("*") if p.is_file()]
    assert served and not [p for p in served if key in p.read_bytes()]


def test_the_demo_player_page_plays_each_player_and_names_the_provider(
    demo: Demo, tmp_path: Path
) -> None:
    e2e_tools, missing = find_tools()
    if e2e_tools is None or find_player_tools(demo.workdir)[0] is None:
        pytest.skip(f"no headless player here ({', '.join(missing)}); {INSTALL_COMMAND}")
    link = PLAYER_LINK.search(demo.banner)
    assert link is not None
    parts = urlsplit(link.group())
    query = {name: values[0] for name, values in parse_qs(parts.query).items()}
    page = f"{parts.scheme}://{parts.netloc}{parts.path}"
    # The printed link (Shaka Player), then dash.js and hls.js as the picker opens them: only
    # the player chosen, the page picks the title that player plays.
    chosen = [{"player": p, "gateway": query["gateway"], "token": query["token"]} for p in PICKED]
    urls = [link.group()] + [f"{page}?{urlencode(fields)}" for fields in chosen]
    argv = [e2e_tools.node, str(PLAY_SCRIPT)]
    for index, url in enumerate(urls):
        argv += ["--url", url, "--screenshot", str(tmp_path / f"demo-{index}.png")]
    played = subprocess.run(
        [*argv, "--timeout-ms", "90000"], capture_output=True, text=True, timeout=120
    )
    assert played.returncode == 0, played.stdout[-2000:] + played.stderr[-2000:]
    pages = json.loads(played.stdout.strip().splitlines()[-1])["pages"]
    asset = demo_stream().asset_id
    expected = {drm: explain(demo.banner, asset, drm)["provider"] for drm in ("clearkey", "aes128")}
    kinds = [("license", "clearkey"), ("license", "clearkey"), ("key", "aes128")]
    for result, (request, drm) in zip(pages, kinds, strict=True):
        assert (result["state"], result["error"], result["licenseRequests"]) == (
            "playing",
            None,
            1,
        ), result
        assert result["currentTime"] > 2 and result["decodedFrames"] > 0
        # The page shows the provider the gateway's header named: the one the rules chose.
        assert result["answers"] == [
            {"request": request, "status": 200, "provider": expected[drm]}
        ], result
    # The gateway answered those requests from that provider, as its access log says.
    answered = [
        (line["drm"], line["provider"], line["status"])
        for line in map(json.loads, re.findall(r'^\{"component": ?"access".*$', demo.log(), re.M))
        if line["asset_id"] == asset
        and line["method"] in ("POST", "GET")
        and line["route"] in ("/v1/license/{drm}/{asset_id}", "/v1/keys/{asset_id}/{key_id}")
    ]
    assert answered[-3:] == [(drm, expected[drm], 200) for _, drm in kinds]


def explain(banner: str, asset: str, drm: str = "clearkey") -> dict[str, Any]:
    """The gateway's routing decision for the asset's `drm` requests."""
    internal = re.search(r"gateway, internal\s+(\S+)", banner)
    assert internal is not None
    request = urllib.request.Request(
        f"{internal.group(1)}/admin/explain?asset={asset}&drm={drm}",
        headers={"Authorization": f"Bearer {DEMO_ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        decision: dict[str, Any] = json.loads(resp.read())["decision"]
    return decision


def test_the_demo_without_ffmpeg_says_how_to_get_the_player(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    for demo in run_demo(tmp_path / "demo", path=str(empty)):
        text = demo.banner
        assert PLAYER_LINK.search(text) is None
        assert FIRST_RUN_LINE not in text
        missing = find_player_tools(demo.workdir, str(empty))[1]
        assert missing[0] == "ffmpeg"
        assert f"missing here: {', '.join(missing)}. Install them" in text
        assert f"\n  {INSTALL_COMMAND}\n" in text
        assert "Try it (each line works as printed)" in text


async def test_demo_media_is_made_once_then_reused(tmp_path: Path) -> None:
    tools, missing = find_media_tools()
    if tools is None:
        pytest.skip(f"no media tools here ({', '.join(missing)}); {INSTALL_COMMAND}")
    said: list[str] = []
    both = (DASH, HLS)
    first = "http://127.0.0.1:1"
    media = await prepare_demo_media(
        tmp_path, demo_stream(), tools, said.append, formats=both, gateway=first
    )
    folder = media / demo_stream().asset_id
    hls = media / f"{demo_stream().asset_id}-hls"
    assert said[0] == FIRST_RUN_LINE
    assert (folder / "manifest.mpd").is_file()
    made = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert {"video_init.mp4", "audio_init.mp4", "video_1.m4s"} <= set(made)
    segments = {p.name: p.stat().st_mtime_ns for p in hls.iterdir()}
    assert {"index.m3u8", "seg000.ts", "seg004.ts"} <= set(segments)

    said.clear()
    again = await prepare_demo_media(
        tmp_path, demo_stream(), tools, said.append, formats=both, gateway=first
    )
    assert again == media
    assert said == []
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == made
    assert {p.name: p.stat().st_mtime_ns for p in hls.iterdir()} == segments
    # No partial folder, no key file left.
    assert sorted(p.name for p in media.iterdir()) == sorted([folder.name, hls.name, TITLES_FILE])

    # The HLS key URIs name the gateway: another gateway URL re-packages HLS only.
    await prepare_demo_media(
        tmp_path, demo_stream(), tools, said.append, formats=both, gateway="http://127.0.0.1:2"
    )
    assert [line.split(":")[0] for line in said] == [
        FIRST_RUN_LINE,
        f"  encrypting it for {demo_stream().asset_id} with ffmpeg (HLS, AES-128)",
    ]
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == made
    assert 'URI="http://127.0.0.1:2/v1/keys/' in (hls / "index.m3u8").read_text()


def test_the_demo_mpd_signals_clearkey_as_dash_if_does() -> None:
    w3c = (
        '<ContentProtection schemeIdUri="urn:uuid:1077efec-c0b2-4d02-ace3-3c1e52e2fb4b">\n'
        "  <cenc:pssh>AAAANHBzc2g=</cenc:pssh>\n</ContentProtection>"
    )
    mpd = f"<AdaptationSet>{w3c}</AdaptationSet><AdaptationSet>{w3c}</AdaptationSet>"
    signalled = signal_dashif_clearkey(mpd)
    assert signalled == (
        f"<AdaptationSet>{DASHIF_CLEARKEY}</AdaptationSet>"
        f"<AdaptationSet>{DASHIF_CLEARKEY}</AdaptationSet>"
    )
    with pytest.raises(MediaToolError):
        signal_dashif_clearkey(signalled)


def test_the_demo_incoming_provider_verifies_tokens(demo: Demo) -> None:
    # The gateway's signed tokens work (the printed ClearKey example for an incoming-only
    # title succeeds above); a forged one is refused by the emulated incoming provider.
    incoming = re.search(r"incoming emulator\s+(http://\S+)", demo.banner)
    assert incoming is not None, demo.banner
    request = urllib.request.Request(
        f"{incoming.group(1)}/license/widevine/res-00009",
        data=b"\x08\x04",
        headers={"X-Drm-Token": "forged.token.value"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 401


def test_the_demo_packager_gets_keys_players_then_get(demo: Demo) -> None:
    # The printed SPEKE request, by hand: the answer's key is the one the gateway then serves.
    internal = re.search(r"gateway, internal +(\S+)", demo.banner)
    public = re.search(r"gateway, public +(\S+)", demo.banner)
    token = re.search(r"player token +(\S+)", demo.banner)
    assert internal is not None and public is not None and token is not None
    request = urllib.request.Request(
        f"{internal.group(1)}/v2/speke?asset={SPEKE_ASSET}",
        data=(demo.workdir / SPEKE_REQUEST).read_bytes(),
        headers={
            "Authorization": f"Bearer {DEMO_PACKAGER_TOKEN}",
            "Content-Type": "application/xml",
            "X-Speke-Version": "2.0",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["X-Speke-Version"] == "2.0"
        answer = ET.fromstring(resp.read())
    ns = {"cpix": "urn:dashif:org:cpix", "pskc": "urn:ietf:params:xml:ns:keyprov:pskc"}
    keys = {
        element.get("kid", "").replace("-", ""): base64.b64decode(
            element.findtext("cpix:Data/pskc:Secret/pskc:PlainValue", "", ns)
        )
        for element in answer.iterfind("cpix:ContentKeyList/cpix:ContentKey", ns)
    }
    assert set(keys) == {kid.replace("-", "") for kid in SPEKE_KIDS}
    for kid, key in keys.items():
        url = f"{public.group(1)}/v1/keys/{SPEKE_ASSET}/{kid}?token={token.group(1)}"
        assert fetch(url)[2] == key
    assert (
        "keys:\n  default: {source: legacy, mirrors: [incoming]}"
        in (demo.workdir / "routing.yaml").read_text()
    )


# --- ports (issue 12, item 12) -------------------------------------------------------------


@pytest.mark.parametrize("port", DEMO_PORTS, ids=[p.name for p in DEMO_PORTS])
def test_a_busy_port_is_one_line_naming_its_flag(port: DemoPort, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    if port.name == "player" and find_player_tools(workdir)[0] is None:
        pytest.skip("the player page's port is used only with the player tools installed")
    chosen = dict(zip((p.name for p in DEMO_PORTS), free_ports(len(DEMO_PORTS)), strict=True))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        chosen[port.name] = taken.getsockname()[1]
        argv = [*FROM_CHECKOUT, "demo", "--dir", str(workdir)]
        for p in DEMO_PORTS:
            argv += [p.flag, str(chosen[p.name])]
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=demo_env()
        )
    assert (result.returncode, result.stdout) == (1, "")
    [line] = result.stderr.splitlines()
    assert line.startswith(f"drm-gateway demo: cannot listen on 127.0.0.1:{chosen[port.name]} ")
    assert f"{port.flag} PORT (make demo {port.make_variable}=PORT)" in line
    assert "--ports BASE (make demo PORTS=BASE)" in line
    assert not workdir.exists()  # checked before anything was written or started


def test_the_ports_are_one_block_unless_moved_one_by_one() -> None:
    assert DemoPorts.choose() == DemoPorts(
        public=8080, legacy=8081, incoming=8082, internal=8083, player=8084
    )
    moved = DemoPorts.choose(18080, player=9999)
    assert [moved.of(p) for p in DEMO_PORTS] == [18080, 18081, 18082, 18083, 9999]
    assert [f.name for f in dataclasses.fields(DemoPorts)] == [p.name for p in DEMO_PORTS]


def _without_make_variables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}


def test_make_demo_passes_each_port_variable_to_its_flag() -> None:
    moved = {p.make_variable: 20_000 + 7 * p.offset for p in DEMO_PORTS}
    cases = {
        (): DemoPorts.choose(),
        ("PORTS=30000",): DemoPorts.choose(30000),
        tuple(f"{name}={port}" for name, port in moved.items()): DemoPorts(*moved.values()),
    }
    for variables, expected in cases.items():
        made = subprocess.run(
            ["make", "--no-print-directory", "-n", "demo", *variables],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_without_make_variables(),  # under `make test` the parent's flags leak in
        )
        assert made.returncode == 0, made.stderr
        program, *argv = made.stdout.splitlines()[-1].split()
        assert program.endswith("/drm-gateway") and argv[0] == "demo", made.stdout
        assert DemoPorts.from_args(build_parser("demo").parse_args(argv)) == expected, variables


# --- the shipped files (issue 13, item 6) ------------------------------------------------------


def test_the_shipped_demo_rules_are_the_repository_rules() -> None:
    # The wheel carries only proxy/: the demo's rules are a copy that must not drift.
    shipped, source = DEMO_DATA / "routing.yaml", ROOT / "rules" / "routing.yaml"
    assert shipped.read_text() == source.read_text(), f"cp {source} {shipped}"


def test_the_shipped_demo_config_loads_with_its_files_on_the_demo_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in DEMO_SECRETS.items():
        monkeypatch.setenv(name, value)
    config = load_config(DEMO_DATA / "gateway.yaml")
    ports = DemoPorts.choose()
    assert (config.server.public.port, config.server.internal.port) == (
        ports.public,
        ports.internal,
    )
    raw = yaml.safe_load((DEMO_DATA / "gateway.yaml").read_text())["providers"]
    assert [urlsplit(raw[p]["base_url"]).port for p in ("legacy", "incoming")] == [
        ports.legacy,
        ports.incoming,
    ]
    assert config.cors is not None
    assert f"http://127.0.0.1:{ports.player}" in config.cors.allowed_origins
    assert config.routing.rules_file == DEMO_DATA / "routing.yaml"
    # The player page shows who answered: the header is on, and exposed to the page.
    assert config.server.provider_header is True
    assert "X-Drm-Gateway-Provider" in config.cors.expose_headers
    assert config.catalog.path == DEMO_DATA / "catalog.db"  # written by the demo, in its copy
    certificate = x509.load_der_x509_certificate(config.fairplay.certificate or b"")
    assert certificate.subject.rfc4514_string() == "CN=drm-gateway demo FairPlay"
    assert sorted(p.name for p in DEMO_DATA.iterdir() if p.is_file()) == sorted(DEMO_FILES)
    # One provider section per emulated kind (proxy/dev/kinds.py), shipped beside them.
    assert {p.stem for p in (DEMO_DATA / "providers").iterdir()} == set(KIND_ENV)


def test_the_demo_installs_the_tool_versions_the_tests_use() -> None:
    assert PACKAGER_SPEC in (ROOT / "scripts" / "install-e2e.sh").read_text()
    pins = json.loads((ROOT / "tests" / "e2e" / "package.json").read_text())["dependencies"]
    for player in WEB_PLAYERS:
        assert player.spec == f"{player.package}@{pins[player.package]}"


def test_outside_a_checkout_one_npm_command_installs_the_missing_players(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("proxy.dev.media.IN_CHECKOUT", False)
    labels = [player.label for player in WEB_PLAYERS]
    commands = install_commands(["ffmpeg", labels[0], labels[2]], tmp_path)
    assert commands[0].startswith("apt-get install ffmpeg")
    assert commands[1:] == [
        f"npm install --prefix {tmp_path} {WEB_PLAYERS[0].spec} {WEB_PLAYERS[2].spec}"
    ]


def test_the_demo_finds_shaka_player_in_its_work_directory(tmp_path: Path) -> None:
    if find_media_tools()[0] is None:
        pytest.skip(f"no media tools here; {INSTALL_COMMAND}")
    dist = tmp_path / "node_modules" / "shaka-player" / "dist"  # npm install --prefix tmp_path
    dist.mkdir(parents=True)
    (dist / SHAKA_PLAYER_FILE).write_text("/* Shaka Player */")
    tools, missing = find_player_tools(tmp_path)
    assert tools is not None and missing == []
    assert tools.shaka_dist == dist


def test_the_image_recipe_runs_the_demo_where_its_healthcheck_looks() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    recipe = re.search(r"^#\s+docker run (.*) drm-gateway (demo .*)$", dockerfile, re.M)
    assert recipe is not None, "the Dockerfile documents how to run the demo"
    published = {int(port) for port in re.findall(r"-p (\d+):\1", recipe.group(1))}
    args = build_parser("demo").parse_args(recipe.group(2).split())
    ports = DemoPorts.from_args(args)
    assert args.host == "0.0.0.0"  # reachable through the published ports
    assert {ports.public, ports.internal} <= published
    healthcheck = re.search(r"127\.0\.0\.1:(\d+)/healthz", dockerfile.split("AS final", 1)[1])
    assert healthcheck is not None and int(healthcheck.group(1)) == ports.internal
    assert 'ENTRYPOINT ["drm-gateway"]' in dockerfile  # `docker run IMAGE demo ...`
