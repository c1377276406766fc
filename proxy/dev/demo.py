"""`drm-gateway demo`: both emulated providers, a sample catalog and the gateway, one command.

Its config, rules and FairPlay test certificate ship with the package (`demo_data/`, package
data): each start copies them into the work directory, writes the catalog beside them and
serves `<workdir>/gateway.yaml`, a real config a user can copy, overriding only the
listeners' host and ports, the providers' URLs and the CORS origin of its player page. With
ffmpeg, Shaka Packager and the web players (Shaka Player, hls.js, dash.js) installed it also
serves the player page and one title as DASH ClearKey and as HLS AES-128; the page names the
provider that answered each license or key request (its config turns on
`server.provider_header`).

Packagers get keys from the SPEKE endpoint on the internal port (`speke:` in the config): the
copied rules file gets a `keys:` section naming the roles whose emulator has a key API (the
demo's own generic emulators; a provider kind's emulator has none), and the banner prints a
request for a new title's keys with the demo packager token.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import errno
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.catalog.importer import import_file
from proxy.config import Config, load_config
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.emulator.settings import (
    DEMO_INCOMING_KEY_API_TOKEN,
    DEMO_LEGACY_API_KEY,
    DEMO_LEGACY_KEY_API_TOKEN,
    DEMO_SEED,
    PROVIDER_KINDS,
)
from proxy.dev.kinds import kind_env, provider_section
from proxy.dev.media import WEB_PLAYER_BY_KEY, install_commands
from proxy.dev.player import (
    DASH,
    HLS,
    DemoStream,
    DemoTitle,
    PlayerServer,
    PlayerTools,
    find_player_tools,
    player_url,
    prepare_demo_media,
    start_player_server,
)

# Package data (pyproject.toml): copied into the work directory at each start.
DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
DEMO_FILES = ("gateway.yaml", "routing.yaml", "fairplay-cert.der")
DEMO_INCOMING_JWT_KEY = "demo-incoming-jwt-key-0123456789abcdef"  # 38 bytes, HS256
DEMO_ADMIN_TOKEN = "demo-admin-token-change-me"
DEMO_PLAYER_SECRET = "demo-player-jwt-secret-0123456789abcdef"
DEMO_PACKAGER_TOKEN = "demo-packager-token-change-me"  # the SPEKE endpoint's bearer token
# The title the SPEKE example packages (new: the endpoint records it in the catalog; the demo
# player token is entitled to asset-*), and the document it sends (written by the demo).
SPEKE_ASSET, SPEKE_RESOURCE = "asset-speke-0001", "res-speke-0001"
SPEKE_KIDS = ("6a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "7b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e")
SPEKE_REQUEST = "speke-request.xml"
DEMO_ASSETS = 10_000  # titles in the demo catalog
# A fixed, documented key id so the printed examples are stable.
DEMO_KEY_ID = "00112233445566778899aabbccddeeff"
# The titles the examples use: keys at both providers (so the rules decide), at legacy only,
# at incoming only. The player page plays the first.
BOTH_ASSET, LEGACY_ONLY_ASSET, INCOMING_ONLY_ASSET = "asset-00003", "asset-00000", "asset-00009"

# The provider kinds each role can run as (`generic`: the demo's own emulated provider). The
# legacy provider must serve titles that have no drmResourceId yet, so only kinds that do not
# need one can play it.
GENERIC = "generic"
INCOMING_KINDS = (GENERIC, *PROVIDER_KINDS)
LEGACY_KINDS = (GENERIC, "ezdrm", "axinom")
# How each kind's emulator finds a title: by the content id its protocol carries.
_CONTENT_BY_ASSET = frozenset({"ezdrm"})  # EZDRM's FairPlay URL names the asset
_CONTENT_BY_KEY_ID = frozenset({"axinom"})  # Axinom's entitlement lists key ids


@dataclass(frozen=True, slots=True)
class DemoKinds:
    """Which provider kind plays each role (`generic`: the demo's own emulators)."""

    legacy: str = GENERIC
    incoming: str = GENERIC


@dataclass(frozen=True, slots=True)
class DemoPort:
    """One of the demo's listeners: what it is, and how a user moves it."""

    name: str  # the flag is --<name>-port, the make variable DEMO_<NAME>_PORT
    role: str
    offset: int  # from --ports BASE

    @property
    def flag(self) -> str:
        """The command-line flag that moves this port."""
        return f"--{self.name}-port"

    @property
    def make_variable(self) -> str:
        """The `make demo` variable passed to the flag (Makefile)."""
        return f"DEMO_{self.name.upper()}_PORT"


# One block of five from --ports BASE (default 8080-8084): one variable moves them all, and
# none is a port other tools default to (Prometheus's 9090, dev web servers' 8000).
DEFAULT_BASE_PORT = 8080
DEMO_PORTS = (
    DemoPort("public", "the gateway's public port", 0),
    DemoPort("legacy", "the legacy emulator", 1),
    DemoPort("incoming", "the incoming emulator", 2),
    DemoPort("internal", "the gateway's internal port", 3),
    DemoPort("player", "the player page", 4),
)
MOVE_ALL = "or move all five with --ports BASE (make demo PORTS=BASE)"


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """The port of each listener (fields named as `DEMO_PORTS`)."""

    public: int
    legacy: int
    incoming: int
    internal: int
    player: int

    @classmethod
    def choose(cls, base: int = DEFAULT_BASE_PORT, **chosen: int | None) -> DemoPorts:
        """Each port as `chosen`, else `base` plus its offset."""

        def pick(port: DemoPort) -> int:
            number = chosen.get(port.name)
            return base + port.offset if number is None else number

        return cls(**{port.name: pick(port) for port in DEMO_PORTS})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoPorts:
        """The ports a `drm-gateway demo` command line asks for."""
        chosen = {port.name: getattr(args, f"{port.name}_port") for port in DEMO_PORTS}
        return cls.choose(args.ports, **chosen)

    def of(self, port: DemoPort) -> int:
        """The number `port` listens on."""
        number: int = getattr(self, port.name)
        return number


def busy_port(host: str, ports: DemoPorts, needed: Iterable[DemoPort]) -> str | None:
    """The one line saying which of the `needed` ports cannot be listened on, and how to move
    it; None when all can (checked before anything starts, so no traceback and no half-start)."""
    for port in needed:
        number = ports.of(port)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            # SO_REUSEADDR as the listeners set it: a previous run's TIME_WAIT is no conflict.
            socket.create_server((host, number), family=family).close()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            return (
                f"drm-gateway demo: cannot listen on {host}:{number} for {port.role} "
                f"({reason}); choose another port with {port.flag} PORT "
                f"(make demo {port.make_variable}=PORT), {MOVE_ALL}"
            )
    return None


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
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags", "key_ids"])
        for a in assets:
            holders = "|".join(a.key_holders) if a.key_holders else ""
            # Every demo title is packaged with the one demo key id (see demo_stream).
            row = [a.asset_id, a.drm_resource_id or "", holders, "|".join(a.tags), DEMO_KEY_ID]
            writer.writerow(row)
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
    (workdir / SPEKE_REQUEST).write_text(speke_request())
    return db


def speke_request() -> str:
    """A SPEKE v2 request for the demo title: video and audio keys, Widevine, PlayReady,
    FairPlay and HLS AES-128 signalling, media and master playlists."""
    systems = {
        "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed": "<cpix:PSSH/><cpix:ContentProtectionData/>",
        "9a04f079-9840-4286-ab92-e65be0885f95": "<cpix:PSSH/><cpix:ContentProtectionData/>",
        "94ce86fb-07ff-4f43-adb8-93d2fa968ca2": "",
        "3ea8778f-7742-4bf9-b18b-e834b2acbd47": "",
    }
    hls = '<cpix:HLSSignalingData playlist="media"/><cpix:HLSSignalingData playlist="master"/>'
    video, audio = SPEKE_KIDS
    keys = "".join(
        f'<cpix:ContentKey kid="{k}" commonEncryptionScheme="cbcs"/>' for k in SPEKE_KIDS
    )
    drm = "".join(
        f'<cpix:DRMSystem kid="{kid}" systemId="{system}">{children}{hls}</cpix:DRMSystem>'
        for kid in SPEKE_KIDS
        for system, children in systems.items()
    )
    rules = (
        f'<cpix:ContentKeyUsageRule kid="{video}" intendedTrackType="VIDEO"><cpix:VideoFilter/>'
        f'</cpix:ContentKeyUsageRule><cpix:ContentKeyUsageRule kid="{audio}" '
        'intendedTrackType="AUDIO"><cpix:AudioFilter/></cpix:ContentKeyUsageRule>'
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cpix:CPIX contentId="{SPEKE_RESOURCE}" version="2.3" '
        'xmlns:cpix="urn:dashif:org:cpix" xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc">\n'
        f"<cpix:ContentKeyList>{keys}</cpix:ContentKeyList>\n"
        f"<cpix:DRMSystemList>{drm}</cpix:DRMSystemList>\n"
        f"<cpix:ContentKeyUsageRuleList>{rules}</cpix:ContentKeyUsageRuleList>\n"
        "</cpix:CPIX>\n"
    )


def key_roles(kinds: DemoKinds) -> tuple[str, ...]:
    """The roles whose emulator has a key API (the demo's own generic ones), legacy first."""
    return tuple(role for role in ROLES if getattr(kinds, role) == GENERIC)


def add_keys_section(rules: Path, kinds: DemoKinds) -> None:
    """Append to the work directory's rules a `keys:` section for the SPEKE endpoint: the
    first role with a key API makes the keys, the other (if it has one) gets a copy."""
    roles = key_roles(kinds)
    if not roles:
        return
    mirrors = ", ".join(roles[1:])
    with rules.open("a", encoding="utf-8") as out:
        out.write(
            "\n# Added by `drm-gateway demo` for its SPEKE endpoint: the emulators' key APIs.\n"
            f"keys:\n  default: {{source: {roles[0]}, mirrors: [{mirrors}]}}\n"
        )


def copy_demo_config(workdir: Path) -> Path:
    """Copy the shipped config, rules and certificate into `workdir` (afresh: the work
    directory is the demo's own); the config's path there."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in DEMO_FILES:
        shutil.copyfile(DEMO_DATA / name, workdir / name)
    return workdir / DEMO_FILES[0]


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
    """The player page's link, or the `missing` tools and the commands that `install` them."""

    server: str | None = None
    missing: tuple[str, ...] = ()
    install: tuple[str, ...] = ()
    unplayable: bool = False  # no provider of this demo serves ClearKey or HLS keys
    formats: tuple[str, ...] = (DASH, HLS)  # what the page offers (dash: ClearKey, hls: keys)


def player_section(
    status: PlayerStatus, *, public: str, internal: str, token: str, admin_token: str, rules: Path
) -> str:
    """The banner's "Watch it play" lines: the page link, or how to get the page."""
    if status.unplayable:
        return """Watch it play: the player page plays DASH ClearKey and HLS AES-128, and neither
provider kind of this demo serves either (start it with the generic incoming kind to watch).
"""
    if status.server is not None:
        stream = demo_stream()
        titles = [DemoTitle.of(stream, fmt) for fmt in status.formats]
        first = titles[0]
        link = player_url(
            status.server,
            gateway=public,
            asset_id=first.asset,
            token=token,
            manifest=first.manifest,
            player=first.players[0],
        )
        offered = "".join(
            f"  {t.label:<32}{' or '.join(WEB_PLAYER_BY_KEY[p].name for p in t.players)}\n"
            for t in titles
        )
        explain = "".join(
            f"""  curl -s -H 'Authorization: Bearer {admin_token}' \\
       '{internal}/admin/explain?asset={t.asset}&drm={t.drm}'
"""
            for t in titles
        )
        return f"""Watch it play: open the player page in Chrome, Chromium, Edge or Firefox; pick a
player and a title there:

{offered}
It lists each license or key request with the provider that answered it (the
X-Drm-Gateway-Provider header). That title's keys are at both providers, so
{rules} picks one:

  {link}

{explain}"""
    commands = "".join(f"  {command}\n" for command in status.install)
    return f"""Watch it play: the player page needs ffmpeg, Shaka Packager, Shaka Player, hls.js and
dash.js; missing here: {", ".join(status.missing)}. Install them, then start the demo again:

{commands}"""


@dataclass(frozen=True, slots=True)
class Served:
    """The DRM systems (aes128: HLS keys) each role's provider serves in this demo."""

    legacy: frozenset[str]
    incoming: frozenset[str]

    def title_for(self, drm: str) -> str | None:
        """A title whose `drm` request some provider serves: the incoming-only one where the
        incoming provider serves it, else one the legacy provider holds; None: nobody does."""
        if drm in self.incoming:
            return INCOMING_ONLY_ASSET
        return BOTH_ASSET if drm in self.legacy else None

    def page_formats(self) -> tuple[str, ...]:
        """What the player page can offer: DASH where a provider serves ClearKey, HLS where
        one serves HLS keys."""
        either = self.legacy | self.incoming
        return tuple(fmt for fmt, drm in ((DASH, "clearkey"), (HLS, "aes128")) if drm in either)


def _optional_examples(public: str, auth: str, token: str, served: Served) -> str:
    """The ClearKey and HLS key examples, for the titles a provider here serves them for."""
    kid_b64 = base64.urlsafe_b64encode(bytes.fromhex(DEMO_KEY_ID)).rstrip(b"=").decode()
    lines = []
    clearkey, key = served.title_for("clearkey"), served.title_for("aes128")
    if clearkey is not None:
        lines.append(
            f"""  curl -s -X POST {auth} -H 'Content-Type: application/json' \\
       --data '{{"kids":["{kid_b64}"],"type":"temporary"}}' \\
       {public}/v1/license/clearkey/{clearkey}"""
        )
    if key is not None:
        lines.append(f"  curl -s '{public}/v1/keys/{key}/{DEMO_KEY_ID}?token={token}' | xxd")
    unserved = [name for name, title in (("ClearKey", clearkey), ("HLS keys", key)) if not title]
    if unserved:
        lines.append(f"  # no provider kind of this demo serves {' or '.join(unserved)}")
    return "\n".join(lines)


def speke_section(internal: str, public: str, workdir: Path, kinds: DemoKinds, token: str) -> str:
    """The banner's packager lines: a SPEKE request for the demo title's keys, then that key
    as a player fetches it (run in this order); or why the endpoint is off."""
    packager = os.environ.get("SPEKE_PACKAGER_TOKEN", DEMO_PACKAGER_TOKEN)
    if not key_roles(kinds):
        return "  # SPEKE is off: no provider kind of this demo has a key API\n"
    kid = SPEKE_KIDS[1].replace("-", "")
    return f"""  curl -s -X POST -H 'Authorization: Bearer {packager}' -H 'X-Speke-Version: 2.0' \\
       -H 'Content-Type: application/xml' --data-binary @{workdir / SPEKE_REQUEST} \\
       '{internal}/v2/speke?asset={SPEKE_ASSET}'
  curl -s '{public}/v1/keys/{SPEKE_ASSET}/{kid}?token={token}' | xxd
"""


def print_banner(
    public: str,
    internal: str,
    legacy: str,
    incoming: str,
    workdir: Path,
    admin_token: str,
    player: PlayerStatus,
    kinds: DemoKinds = DemoKinds(),
    served: Served | None = None,
) -> None:
    """Print where everything runs and examples that work as printed."""
    token = demo_player_token()
    auth = f"-H 'Authorization: Bearer {token}'"
    all_drms = frozenset({"widevine", "playready", "fairplay", "clearkey", "aes128"})
    optional = _optional_examples(public, auth, token, served or Served(all_drms, all_drms))
    both, legacy_only, incoming_only = BOTH_ASSET, LEGACY_ONLY_ASSET, INCOMING_ONLY_ASSET
    rules = workdir / "routing.yaml"
    watch = player_section(
        player,
        public=public,
        internal=internal,
        token=token,
        admin_token=admin_token,
        rules=rules,
    )
    print(
        f"""
drm-gateway demo is running (Ctrl-C stops everything)

  gateway, public     {public}
  gateway, internal   {internal}   (/healthz /readyz /metrics)
  legacy emulator     {legacy}   (kind {kinds.legacy})
  incoming emulator   {incoming}   (kind {kinds.incoming})
  demo key seed       {DEMO_SEED.decode()}   (key = HMAC-SHA256(seed, "<resource>:<kid hex>")[:16])
  config              {workdir / "gateway.yaml"}   (ports and provider URLs as above)
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
{optional}
  curl -s {public}/v1/certificate/fairplay | openssl x509 -inform der -noout -subject
  curl -s {internal}/metrics | grep drm_gateway_requests_total

Packagers (SPEKE v2 on the internal port; the keys: section of {rules} picks the
providers that make and keep each title's keys, and the catalog records them):

{speke_section(internal, public, workdir, kinds, token)}
Ops (internal port, admin token {admin_token}):

  curl -s -H 'Authorization: Bearer {admin_token}' \\
       '{internal}/admin/explain?asset={both}&drm=widevine'
  curl -s -H 'Authorization: Bearer {admin_token}' {internal}/admin/rules
  # edit {rules} (e.g. a percent): the gateway reloads it within 2 s
  # (each start of the demo copies the shipped config and rules into {workdir} again)
""",
        flush=True,
    )


async def _serve_player(
    workdir: Path,
    tools: PlayerTools,
    host: str,
    port: int,
    *,
    formats: tuple[str, ...],
    gateway: str,
) -> PlayerServer:
    """Make (or find cached) the player media in `formats` (HLS key URIs name `gateway`), then
    serve it with the page and the web players."""
    media = await prepare_demo_media(
        workdir, demo_stream(), tools.media, say=_say, formats=formats, gateway=gateway
    )
    return await start_player_server(media, host=host, port=port, dists=tools.dists)


def _say(line: str) -> None:
    print(line, flush=True)


def _player_origins(port: int) -> list[str]:
    """The player page's origins, so its license requests pass the gateway's CORS."""
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


def _shown(url: str) -> str:
    """`url` as a browser or curl on this machine reaches it (not the wildcard address)."""
    return url.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


async def run_demo(
    *,
    workdir: Path,
    ports: DemoPorts,
    host: str = "127.0.0.1",
    tools: PlayerTools | None = None,
    missing: tuple[str, ...] = (),
    kinds: DemoKinds = DemoKinds(),
) -> None:
    """Start everything, print the examples, run until SIGINT/SIGTERM.

    With `tools` it also serves the player page, else it names the `missing` ones.
    """
    from proxy.server.app import start_gateway

    os.environ.setdefault("LEGACY_API_KEY", DEMO_LEGACY_API_KEY)
    os.environ.setdefault("INCOMING_JWT_KEY", DEMO_INCOMING_JWT_KEY)
    os.environ.setdefault("ADMIN_TOKEN", DEMO_ADMIN_TOKEN)
    os.environ.setdefault("PLAYER_JWT_SECRET", DEMO_PLAYER_SECRET)
    os.environ.setdefault("LEGACY_KEY_API_TOKEN", DEMO_LEGACY_KEY_API_TOKEN)
    os.environ.setdefault("INCOMING_KEY_API_TOKEN", DEMO_INCOMING_KEY_API_TOKEN)
    os.environ.setdefault("SPEKE_PACKAGER_TOKEN", DEMO_PACKAGER_TOKEN)
    for kind in (kinds.legacy, kinds.incoming):
        for name, value in kind_env(kind).items():
            os.environ.setdefault(name, value)
    config_path = copy_demo_config(workdir)
    add_keys_section(workdir / "routing.yaml", kinds)
    write_demo_files(workdir, DEMO_ASSETS)
    legacy, incoming = await _start_emulators(workdir, host, ports, kinds)
    config = _demo_config(config_path, host, ports, kinds, _shown(legacy.url), _shown(incoming.url))
    gateway = await start_gateway(config)
    served = Served(*(config.providers[role].traits.serves or frozenset() for role in ROLES))
    formats = served.page_formats()
    server = None
    if tools and formats:
        public = _shown(gateway.public_url)
        server = await _serve_player(
            workdir, tools, host, ports.player, formats=formats, gateway=public
        )
    install = tuple(install_commands(missing, workdir))
    if not formats:
        player = PlayerStatus(unplayable=True)
    elif server is not None:
        player = PlayerStatus(_shown(server.url), formats=formats)
    else:
        player = PlayerStatus(None, missing, install)
    print_banner(
        _shown(gateway.public_url),
        _shown(gateway.internal_url),
        _shown(legacy.url),
        _shown(incoming.url),
        workdir,
        os.environ["ADMIN_TOKEN"],
        player,
        kinds,
        served,
    )
    await _wait_for_signal()
    if server is not None:
        await server.stop()
    await gateway.stop()
    await incoming.stop()
    await legacy.stop()
    print("demo stopped", flush=True)


def _demo_config(
    path: Path, host: str, ports: DemoPorts, kinds: DemoKinds, legacy: str, incoming: str
) -> Config:
    """The work directory's config with the listeners and provider URLs of this run; a role
    played by a provider kind gets that kind's section (demo_data/providers/)."""
    overrides: dict[str, Any] = {
        "server.public.host": host,
        "server.public.port": ports.public,
        "server.internal.host": host,
        "server.internal.port": ports.internal,
        "cors.allowed_origins": _player_origins(ports.player),
    }
    for role, kind, url in (
        ("legacy", kinds.legacy, legacy),
        ("incoming", kinds.incoming, incoming),
    ):
        if kind == GENERIC:
            overrides[f"providers.{role}.base_url"] = url
            overrides[f"providers.{role}.key_api.base_url"] = url
        else:
            overrides[f"providers.{role}"] = provider_section(kind, url)
    # The SPEKE answers point players at the public port; no key API: no SPEKE.
    public = _shown(f"http://{_url_host(host)}:{ports.public}")
    overrides["speke.public_base_url"] = public
    if not key_roles(kinds):
        overrides["speke"] = None
    return load_config(path, overrides=overrides)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


ROLES = ("legacy", "incoming")


def emulator_resources(kind: str, role: str, assets: list[DemoAsset]) -> dict[str, str]:
    """What the `role` provider's emulator of `kind` knows: each title it holds, by the
    content id its protocol names, mapped to the id the title's keys derive from."""
    held = [a for a in assets if _held_by(a, role)]
    if kind in _CONTENT_BY_KEY_ID:
        return {DEMO_KEY_ID: DEMO_KEY_ID}  # every demo title is packaged with this key id
    if kind in _CONTENT_BY_ASSET or (kind, role) == (GENERIC, "legacy"):
        return {a.asset_id: a.derivation_id for a in held}
    return {a.drm_resource_id: a.derivation_id for a in held if a.drm_resource_id}


def _emulator_settings(kind: str, role: str, assets: list[DemoAsset]) -> EmulatorSettings:
    resources = emulator_resources(kind, role, assets)
    if kind != GENERIC:
        return EmulatorSettings(kind=kind, resources=resources, secrets=demo_secrets(kind))
    if role == "legacy":  # a static API key
        return EmulatorSettings(
            kind="legacy",
            api_key=os.environ["LEGACY_API_KEY"],
            resources=resources,
            key_api_token=os.environ["LEGACY_KEY_API_TOKEN"],
        )
    return EmulatorSettings(  # verifying the gateway's per-request JWTs
        kind="incoming",
        resources=resources,
        jwt_keys={"demo-1": os.environ["INCOMING_JWT_KEY"].encode()},
        jwt_algorithms=("HS256",),
        key_api_token=os.environ["INCOMING_KEY_API_TOKEN"],
    )


async def _start_emulators(
    workdir: Path, host: str, ports: DemoPorts, kinds: DemoKinds
) -> tuple[RunningEmulator, RunningEmulator]:
    """One emulator per role, of the kind that plays it."""
    assets = demo_assets(DEMO_ASSETS)
    legacy = await start_emulator(
        _emulator_settings(kinds.legacy, "legacy", assets), host, ports.legacy
    )
    incoming = await start_emulator(
        _emulator_settings(kinds.incoming, "incoming", assets), host, ports.incoming
    )
    return legacy, incoming


async def _wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _port(text: str) -> int:
    """A TCP port to listen on, 1-65535 (argparse type)."""
    number = int(text)
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError("must be between 1 and 65535")
    return number


def _base_port(text: str) -> int:
    """A first port such that all five fit below 65536 (argparse type)."""
    number = _port(text)
    if number + len(DEMO_PORTS) - 1 > 65535:
        raise argparse.ArgumentTypeError(f"must be at most {65536 - len(DEMO_PORTS)}")
    return number


_EPILOG = f"""\
The shipped config, rules and FairPlay test certificate (copied into --dir at each start):
  {DEMO_DATA / DEMO_FILES[0]}
"""


def register(subparsers: Any) -> None:
    """Add the `demo` command to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "demo",
        help="both emulators, a sample catalog and the gateway",
        description="Both emulated providers, a 10,000-asset catalog, the gateway and (with\n"
        "ffmpeg, Shaka Packager and the web players installed) a player page where Shaka\n"
        "Player, hls.js or dash.js plays a title and the provider of each answer shows.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", type=Path, default=Path(".demo"), help="where files are written")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)"
    )
    parser.add_argument(
        "--ports",
        type=_base_port,
        default=DEFAULT_BASE_PORT,
        metavar="BASE",
        help=f"the five ports are BASE..BASE+4 (default {DEFAULT_BASE_PORT}; make demo PORTS=BASE)",
    )
    parser.add_argument(
        "--legacy-kind",
        choices=LEGACY_KINDS,
        default=GENERIC,
        help="the legacy provider's kind (only kinds that need no drmResourceId: it serves the "
        "titles that have none yet)",
    )
    parser.add_argument(
        "--incoming-kind",
        choices=INCOMING_KINDS,
        default=GENERIC,
        help="the incoming provider's kind (generic: the demo's own JWT provider)",
    )
    for port in DEMO_PORTS:
        parser.add_argument(
            port.flag,
            type=_port,
            metavar="PORT",
            help=f"{port.role} (default BASE+{port.offset}; make demo {port.make_variable}=PORT)",
        )
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    """`drm-gateway demo`: check the ports, then run the demo until SIGINT/SIGTERM."""
    from proxy.observability.logs import configure_logging
    from proxy.server.app import run_event_loop

    ports = DemoPorts.from_args(args)
    tools, missing = find_player_tools(args.dir)
    needed = [p for p in DEMO_PORTS if tools is not None or p.name != "player"]
    problem = busy_port(args.host, ports, needed)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    configure_logging(level="info", fmt="auto", cache=True)
    kinds = DemoKinds(args.legacy_kind, args.incoming_kind)
    demo = run_demo(
        workdir=args.dir,
        ports=ports,
        host=args.host,
        tools=tools,
        missing=tuple(missing),
        kinds=kinds,
    )
    try:
        run_event_loop(demo)
    except OSError as exc:  # a port taken after the check above
        if exc.errno != errno.EADDRINUSE:
            raise
        print(f"drm-gateway demo: {exc}; choose other ports, {MOVE_ALL}", file=sys.stderr)
        return 1
    return 0
