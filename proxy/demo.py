"""`drm-gateway demo`: both emulated providers, a sample catalog and the gateway, one command.

The gateway reads `deploy/demo/gateway.yaml`, a real config a user can copy; the demo only
overrides ports and the paths of the files it generates under the work directory.
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
from proxy.emulator import EmulatorSettings, start_emulator
from proxy.emulator.settings import DEMO_LEGACY_API_KEY, DEMO_SEED

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "gateway.yaml"
DEMO_INCOMING_JWT_KEY = "demo-incoming-jwt-key-0123456789abcdef"  # 38 bytes, HS256
DEMO_ADMIN_TOKEN = "demo-admin-token-change-me"
DEMO_PLAYER_SECRET = "demo-player-jwt-secret-0123456789abcdef"
# A fixed, documented key id so the printed examples are stable.
DEMO_KEY_ID = "00112233445566778899aabbccddeeff"


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
    from proxy.auth import issue_token

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


def print_banner(
    public: str, internal: str, legacy: str, incoming: str, workdir: Path, admin_token: str
) -> None:
    kid_b64 = base64.urlsafe_b64encode(bytes.fromhex(DEMO_KEY_ID)).rstrip(b"=").decode()
    token = demo_player_token()
    auth = f"-H 'Authorization: Bearer {token}'"
    both, legacy_only, incoming_only = "asset-00003", "asset-00000", "asset-00009"
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


async def run_demo(
    *, workdir: Path, public_port: int, internal_port: int, legacy_port: int, incoming_port: int
) -> None:
    """Start everything, print the examples, run until SIGINT/SIGTERM."""
    from proxy.app import start_gateway

    os.environ.setdefault("LEGACY_API_KEY", DEMO_LEGACY_API_KEY)
    os.environ.setdefault("INCOMING_JWT_KEY", DEMO_INCOMING_JWT_KEY)
    os.environ.setdefault("ADMIN_TOKEN", DEMO_ADMIN_TOKEN)
    os.environ.setdefault("PLAYER_JWT_SECRET", DEMO_PLAYER_SECRET)
    db = write_demo_files(workdir, 10_000)
    write_test_certificate(workdir / "fairplay-cert.der")
    legacy = await start_emulator(
        EmulatorSettings(
            kind="legacy",
            api_key=os.environ["LEGACY_API_KEY"],
            resources=_resources(workdir / "legacy-resources.txt"),
        ),
        port=legacy_port,
    )
    incoming = await start_emulator(
        EmulatorSettings(kind="incoming", resources=_resources(workdir / "incoming-resources.txt")),
        port=incoming_port,
    )
    config = load_config(
        DEMO_CONFIG,
        overrides={
            "server.public.port": public_port,
            "server.internal.port": internal_port,
            "catalog.path": str(db.resolve()),
            "fairplay.certificate_file": str((workdir / "fairplay-cert.der").resolve()),
            "providers.legacy.base_url": legacy.url,
            "providers.incoming.base_url": incoming.url,
        },
    )
    gateway = await start_gateway(config)
    print_banner(
        gateway.public_url,
        gateway.internal_url,
        legacy.url,
        incoming.url,
        workdir,
        os.environ["ADMIN_TOKEN"],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        await incoming.stop()
        await legacy.stop()
        print("demo stopped", flush=True)
