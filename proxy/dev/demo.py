"""`drm-gateway demo`: both emulated providers, a sample catalog and the gateway, one command.

The gateway reads `deploy/demo/gateway.yaml`, a real config a user can copy; the demo only
overrides ports, the paths of the files it generates under the work directory, and the CORS
origin of its player page (which follows `--player-port`). With ffmpeg, Shaka Packager and
Shaka Player installed it also serves the player page and a DASH ClearKey stream of one title.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from proxy.catalog.importer import import_file
from proxy.config import load_config
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.settings import DEMO_LEGACY_API_KEY, DEMO_SEED
from proxy.dev.media import INSTALL_COMMAND
from proxy.dev.player import (
    DemoStream,
    PlayerServer,
    find_player_tools,
    player_url,
    prepare_demo_media,
    start_player_server,
)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "gateway.yaml"
DEMO_INCOMING_JWT_KEY = "demo-incoming-jwt-key-0123456789abcdef"  # 38 bytes, HS256
DEMO_ADMIN_TOKEN = "demo-admin-token-change-me"
DEMO_PLAYER_SECRET = "demo-player-jwt-secret-0123456789abcdef"
# A fixed, documented key id so the printed examples are stable.
DEMO_KEY_ID = "00112233445566778899aabbccddeeff"
DEMO_PLAYER_PORT = 8000
# The titles the examples use: keys at both providers (so the rules decide), at legacy only,
# at incoming only. The player page plays the first.
BOTH_ASSET, LEGACY_ONLY_ASSET, INCOMING_ONLY_ASSET = "asset-00003", "asset-00000", "asset-00009"


@dataclass(frozen=True, slots=True)
class DemoAsset:
    asset_id: str
    drm_resource_id: str | None
    key_holders: tuple[str, ...] | None
    tags: tuple[str, ...]
    # The id each title's keys derive from; the legacy provider knows it even when the
    # catalog has not been given the drmResourceId yet.
    derivation_id: str


def demo_assets(count: int) -> list[DemoAsset]:
    """A mixed catalog: 30% without drmResourceId (legacy only), 40% at both providers,
    20% propagated but keys still only at legacy, 10% new titles only at incoming."""
    assets = []
    for i in range(count):
        asset_id, resource_id = f"asset-{i:05d}", f"res-{i:05d}"
        bucket = i % 10
        tags = ("sports",) if i % 7 == 0 else ("kids",) if i % 11 == 0 else ()
        if bucket < 3:
            entry = DemoAsset(asset_id, None, ("legacy",), ("catalog", *tags), resource_id)
        elif bucket < 7:
            entry = DemoAsset(asset_id, resource_id, None, ("catalog", *tags), resource_id)
        elif bucket < 9:
            entry = DemoAsset(asset_id, resource_id, ("legacy",), ("catalog", *tags), resource_id)
        else:
            entry = DemoAsset(
                asset_id, resource_id, ("incoming",), ("new-release", *tags), resource_id
            )
        assets.append(entry)
    return assets


def _held_by(asset: DemoAsset, provider: str) -> bool:
    return asset.key_holders is None or provider in asset.key_holders


def write_demo_files(workdir: Path, count: int) -> Path:
    """Write the catalog CSV, SQLite catalog, emulator key stores and example bodies."""
    workdir.mkdir(parents=True, exist_ok=True)
    assets = demo_assets(count)
    source = workdir / "catalog.csv"
    with source.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags"])
        for a in assets:
            holders = "|".join(a.key_holders) if a.key_holders else ""
            writer.writerow([a.asset_id, a.drm_resource_id or "", holders, "|".join(a.tags)])
    db = workdir / "catalog.db"
    db.unlink(missing_ok=True)
    import_file(source, db)
    (workdir / "legacy-resources.txt").write_text(
        "".join(f"{a.asset_id},{a.derivation_id}\n" for a in assets if _held_by(a, "legacy"))
    )
    (workdir / "incoming-resources.txt").write_text(
        "".join(
            f"{a.drm_resource_id}\n"
            for a in assets
            if a.drm_resource_id and _held_by(a, "incoming")
        )
    )
    (workdir / "widevine-challenge.bin").write_bytes(b"\x08\x04")  # service-certificate request
    (workdir / "fairplay-spc.bin").write_bytes(b"\x00\x00\x00\x01" + bytes(range(60)))
    return db


def write_test_certificate(path: Path) -> None:
    """A self-signed test certificate (DER) standing in for a FairPlay application cert."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "drm-gateway demo FairPlay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.DER))


def _resources(path: Path) -> dict[str, str]:
    pairs = (line.split(",", 1) for line in path.read_text().split())
    return {p[0]: p[-1] for p in pairs}


def demo_player_token() -> str:
    """A player token entitled to every demo asset, valid for 24 hours."""
    from proxy.access.player_tokens import issue_token

    return issue_token(
        secret_or_private_key=os.environ["PLAYER_JWT_SECRET"].encode(),
        algorithm="HS256",
        kid=None,
        user_id="demo-user",
        entitlements=["asset-*"],
        ttl_seconds=86_400,
        issuer="demo-idp",
        audience="drm-gateway",
    )


def demo_stream() -> DemoStream:
    """The title the player page plays, keyed exactly as both emulators derive its keys."""
    index = int(BOTH_ASSET.removeprefix("asset-"))
    asset = demo_assets(index + 1)[index]
    return DemoStream(asset.asset_id, asset.derivation_id, DEMO_KEY_ID, DEMO_SEED)


@dataclass(frozen=True, slots=True)
class PlayerStatus:
    """The player page's link, or why there is none (`missing` tools or `problem`)."""

    server: str | None = None
    missing: tuple[str, ...] = ()
    problem: str | None = None


def player_section(
    status: PlayerStatus, *, public: str, internal: str, token: str, admin_token: str
) -> str:
    """The banner's "Watch it play" lines: the page link, or how to get the page."""
    if status.server is not None:
        stream = demo_stream()
        link = player_url(
            status.server,
            gateway=public,
            asset_id=stream.asset_id,
            token=token,
            manifest=stream.manifest_path(),
        )
        return f"""Watch it play: open the player page in Chrome, Chromium, Edge or Firefox.
Shaka Player plays DASH ClearKey (CENC) for {stream.asset_id} and gets the license from the
gateway; that title's keys are at both providers, so rules/routing.yaml picks one:

  {link}

  curl -s -H 'Authorization: Bearer {admin_token}' \\
       '{internal}/admin/explain?asset={stream.asset_id}&drm=clearkey'
"""
    if status.problem is not None:
        return f"Watch it play: no player page ({status.problem}).\n"
    return f"""Watch it play: the player page needs ffmpeg, Shaka Packager and Shaka Player;
missing here: {", ".join(status.missing)}. Install them, then start the demo again:

  {INSTALL_COMMAND}
"""


def print_banner(
    public: str,
    internal: str,
    legacy: str,
    incoming: str,
    workdir: Path,
    admin_token: str,
    player: PlayerStatus,
) -> None:
    """Print where everything runs and examples that work as printed."""
    kid_b64 = base64.urlsafe_b64encode(bytes.fromhex(DEMO_KEY_ID)).rstrip(b"=").decode()
    token = demo_player_token()
    auth = f"-H 'Authorization: Bearer {token}'"
    both, legacy_only, incoming_only = BOTH_ASSET, LEGACY_ONLY_ASSET, INCOMING_ONLY_ASSET
    watch = player_section(
        player, public=public, internal=internal, token=token, admin_token=admin_token
    )
    print(
        f"""
drm-gateway demo is running (Ctrl-C stops everything)

  gateway, public     {public}
  gateway, internal   {internal}   (/healthz /readyz /metrics)
  legacy emulator     {legacy}
  incoming emulator   {incoming}
  demo key seed       {DEMO_SEED.decode()}   (key = HMAC-SHA256(seed, "<resource>:<kid hex>")[:16])
  catalog             10,000 assets in {workdir / "catalog.db"}
                      {legacy_only}: no drmResourceId, keys at legacy only
                      {both}: keys at both providers; {incoming_only}: keys at incoming only

  player token        {token}
                      (user demo-user, entitled to asset-*, valid 24 h)

{watch}
Try it (each line works as printed):

  curl -s -X POST {auth} -H 'Content-Type: application/octet-stream' \\
       --data-binary @{workdir / "widevine-challenge.bin"} {public}/v1/license/widevine/{both}
  curl -s -X POST {auth} -H 'Content-Type: text/xml' \\
       --data '<challenge>demo</challenge>' {public}/v1/license/playready/{legacy_only}
  curl -s -X POST {auth} -H 'Content-Type: application/octet-stream' \\
       --data-binary @{workdir / "fairplay-spc.bin"} {public}/v1/license/fairplay/{both} | xxd
  curl -s -X POST {auth} -H 'Content-Type: application/json' \\
       --data '{{"kids":["{kid_b64}"],"type":"temporary"}}' \\
       {public}/v1/license/clearkey/{incoming_only}
  curl -s '{public}/v1/keys/{both}/{DEMO_KEY_ID}?token={token}' | xxd
  curl -s {public}/v1/certificate/fairplay | openssl x509 -inform der -noout -subject
  curl -s {internal}/metrics | grep drm_gateway_requests_total

Ops (internal port, admin token {admin_token}):

  curl -s -H 'Authorization: Bearer {admin_token}' \\
       '{internal}/admin/explain?asset={both}&drm=widevine'
  curl -s -H 'Authorization: Bearer {admin_token}' {internal}/admin/rules
  # edit rules/routing.yaml (e.g. a percent): the gateway reloads it within 2 s
""",
        flush=True,
    )


async def _prepare_player(workdir: Path) -> tuple[Path | None, PlayerStatus]:
    """Make (or find cached) the player media; its folder, or None and why not."""
    tools, missing = find_player_tools()
    if tools is None:
        return None, PlayerStatus(missing=tuple(missing))
    media = await prepare_demo_media(workdir, demo_stream(), tools, say=_say)
    return media, PlayerStatus()


async def _serve_player(media: Path | None, port: int) -> tuple[PlayerServer | None, str | None]:
    """Start the player page server; None and the reason when it cannot listen."""
    if media is None:
        return None, None
    try:
        return await start_player_server(media, port=port), None
    except OSError as exc:
        return None, f"cannot listen on 127.0.0.1:{port}: {exc.strerror}; try --player-port"


def _say(line: str) -> None:
    print(line, flush=True)


def _player_origins(port: int) -> list[str]:
    """The player page's origins, so its license requests pass the gateway's CORS."""
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


async def run_demo(
    *,
    workdir: Path,
    public_port: int,
    internal_port: int,
    legacy_port: int,
    incoming_port: int,
    player_port: int = DEMO_PLAYER_PORT,
) -> None:
    """Start everything, print the examples, run until SIGINT/SIGTERM."""
    from proxy.server.app import start_gateway

    os.environ.setdefault("LEGACY_API_KEY", DEMO_LEGACY_API_KEY)
    os.environ.setdefault("INCOMING_JWT_KEY", DEMO_INCOMING_JWT_KEY)
    os.environ.setdefault("ADMIN_TOKEN", DEMO_ADMIN_TOKEN)
    os.environ.setdefault("PLAYER_JWT_SECRET", DEMO_PLAYER_SECRET)
    db = write_demo_files(workdir, 10_000)
    media, player = await _prepare_player(workdir)
    write_test_certificate(workdir / "fairplay-cert.der")
    legacy, incoming = await _start_emulators(workdir, legacy_port, incoming_port)
    config = load_config(
        DEMO_CONFIG,
        overrides={
            "server.public.port": public_port,
            "server.internal.port": internal_port,
            "catalog.path": str(db.resolve()),
            "fairplay.certificate_file": str((workdir / "fairplay-cert.der").resolve()),
            "providers.legacy.base_url": legacy.url,
            "providers.incoming.base_url": incoming.url,
            "cors.allowed_origins": _player_origins(player_port),
        },
    )
    gateway = await start_gateway(config)
    server, problem = await _serve_player(media, player_port)
    if server is not None:
        player = PlayerStatus(server=server.url)
    elif problem is not None:
        player = PlayerStatus(problem=problem)
    print_banner(
        gateway.public_url,
        gateway.internal_url,
        legacy.url,
        incoming.url,
        workdir,
        os.environ["ADMIN_TOKEN"],
        player,
    )
    await _wait_for_signal()
    if server is not None:
        await server.stop()
    await gateway.stop()
    await incoming.stop()
    await legacy.stop()
    print("demo stopped", flush=True)


async def _start_emulators(
    workdir: Path, legacy_port: int, incoming_port: int
) -> tuple[RunningEmulator, RunningEmulator]:
    """The legacy provider (API key) and the incoming one, verifying the gateway's JWTs."""
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy",
            api_key=os.environ["LEGACY_API_KEY"],
            resources=_resources(workdir / "legacy-resources.txt"),
        ),
        port=legacy_port,
    )
    incoming = await start_emulator(
        EmulatorSettings(
            kind="incoming",
            resources=_resources(workdir / "incoming-resources.txt"),
            jwt_keys={"demo-1": os.environ["INCOMING_JWT_KEY"].encode()},
            jwt_algorithms=("HS256",),
        ),
        port=incoming_port,
    )
    return legacy, incoming


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
