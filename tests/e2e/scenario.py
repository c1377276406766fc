"""The end-to-end scene: a catalog and key stores of its own, routing rules, player tokens.

Assets (keys derive from `res-<asset id>` at whichever provider holds them):
- `e2e-legacy`: no drmResourceId yet, keys at the legacy provider only;
- `e2e-incoming`: a new release, keys at the incoming provider only (rule `e2e-new-releases`);
- `e2e-both-N`: keys at both, split 50% by asset by rule `e2e-ramp`.
A provider that does not hold an asset's keys answers 404, so a wrongly routed request cannot
play: the picture itself proves the routing, and each emulator's stats say who served what.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from proxy.access.player_tokens import issue_token
from proxy.dev.emulator import RunningEmulator, derive_key
from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.kinds import kind_env, provider_section
from tests.conftest import SEED, Stack, StackFactory, write_catalog
from tests.e2e.media import (
    TOKEN_PLACEHOLDER,
    HlsMedia,
    package_dash,
    package_hls,
    with_dashif_clearkey,
)
from tests.e2e.players import web_player_url
from tests.e2e.server import StaticServer
from tests.e2e.tools import Tools

LEGACY_ASSET = "e2e-legacy"
INCOMING_ASSET = "e2e-incoming"
RAMP_ASSETS = [f"e2e-both-{i}" for i in range(4)]
ISSUER, AUDIENCE = "drm-gateway-e2e", "drm-gateway"
RULES_YAML = """\
version: "e2e-1"
default: legacy
rules:
  - name: e2e-new-releases
    when: {tags_any: [e2e-new-release]}
    route: incoming
  - name: e2e-ramp
    when: {asset_prefixes: [e2e-both-], drm_resource_id: present}
    route: incoming
    percent: 50
    stickiness: asset
"""

CATALOG: list[tuple[str, str | None, tuple[str, ...] | None, tuple[str, ...]]] = [
    (LEGACY_ASSET, None, ("legacy",), ("e2e",)),
    (INCOMING_ASSET, f"res-{INCOMING_ASSET}", ("incoming",), ("e2e-new-release",)),
    *((asset, f"res-{asset}", None, ("e2e",)) for asset in RAMP_ASSETS),
]
# Legacy knows assets by asset id, incoming by drmResourceId (see tests/conftest.py).
LEGACY_RESOURCES = {asset: f"res-{asset}" for asset in (LEGACY_ASSET, *RAMP_ASSETS)}
INCOMING_RESOURCES = {f"res-{a}": f"res-{a}" for a in (INCOMING_ASSET, *RAMP_ASSETS)}


def content_key(asset_id: str, key_id: str) -> bytes:
    """The key the packager encrypts with: what the provider holding the asset derives."""
    return derive_key(SEED, f"res-{asset_id}", key_id)


def provider_resource(provider: str, asset_id: str) -> str:
    """The resource id under which `provider` is asked for the asset's keys."""
    return asset_id if provider == "legacy" else f"res-{asset_id}"


@dataclass
class Scene:
    """The running stack, the media server and everything a player needs."""

    stack: Stack
    static: StaticServer
    media: Path
    player_secret: bytes
    admin_token: str

    def token(self, *, entitlements: tuple[str, ...] = ("*",), secret: bytes | None = None) -> str:
        """A player token (signed with another secret when `secret` is given)."""
        return issue_token(
            secret_or_private_key=secret or self.player_secret,
            algorithm="HS256",
            kid=None,
            user_id="e2e-viewer",
            entitlements=list(entitlements),
            ttl_seconds=600,
            issuer=ISSUER,
            audience=AUDIENCE,
        )

    def wrong_token(self) -> str:
        """A well-formed token signed with a secret the gateway does not know."""
        return self.token(secret=secrets.token_bytes(32))

    def key_uri(self, asset_id: str, key_id: str) -> str:
        """The gateway key URI ffmpeg writes into the playlist, token still a placeholder."""
        return self.stack.url(f"/v1/keys/{asset_id}/{key_id}?token={TOKEN_PLACEHOLDER}")

    def emulator(self, provider: str) -> RunningEmulator:
        return self.stack.legacy if provider == "legacy" else self.stack.incoming

    def player_url(self, asset_id: str, manifest: str, token: str) -> str:
        """The player page on the media server, licensing from the gateway with `token`."""
        query = {
            "asset": asset_id,
            "manifest": manifest,
            "license": self.stack.url(f"/v1/license/clearkey/{asset_id}"),
            "token": token,
        }
        return f"{self.static.url}/player.html?{urlencode(query)}"

    async def hls(self, tools: Tools, clip: Path, asset_id: str) -> HlsMedia:
        """HLS for `asset_id` under the media server, keys as its provider derives them."""
        return await package_hls(
            tools,
            clip,
            self.media / asset_id / "hls",
            key_uri=lambda key_id: self.key_uri(asset_id, key_id),
            key_for=lambda key_id: content_key(asset_id, key_id),
        )

    def hls_url(self, asset_id: str, playlist: str) -> str:
        """Where ffprobe finds a playlist written by HlsMedia.write_playlist."""
        return f"{self.static.url}/media/{asset_id}/hls/{playlist}"

    async def dash(self, tools: Tools, clip: Path, asset_id: str) -> str:
        """DASH for `asset_id` under the media server; its manifest's path on that server."""
        key_id = secrets.token_hex(16)
        folder = self.media / asset_id / "dash"
        await package_dash(tools, clip, folder, key_id=key_id, key=content_key(asset_id, key_id))
        return f"/media/{asset_id}/dash/manifest.mpd"

    async def web_dash_page(
        self, tools: Tools, clip: Path, player: str, asset_id: str, token: str
    ) -> str:
        """The URL of tests/e2e/web/player.html playing `asset_id`'s DASH with `player`.
        dash.js gets the manifest with DASH-IF ClearKey signalling (it cannot start a
        session from the W3C common PSSH Shaka Packager writes); Shaka and Video.js read
        Shaka Packager's manifest as it is."""
        manifest = await self.dash(tools, clip, asset_id)
        if player == "dashjs":
            path = self.media.parent / manifest.lstrip("/")
            manifest = manifest.replace(path.name, with_dashif_clearkey(path, "dashif.mpd").name)
        return web_player_url(
            self.static.url,
            player,
            f"{self.static.url}{manifest}",
            gateway=self.stack.url(""),
            asset=asset_id,
            token=token,
        )

    async def explain(self, asset_id: str, drm: str) -> dict[str, Any]:
        """The gateway's /admin/explain decision for an asset and DRM system."""
        url = self.stack.internal(f"/admin/explain?asset={asset_id}&drm={drm}")
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        async with self.stack.http.get(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            decision: dict[str, Any] = (await resp.json())["decision"]
            return decision

    async def provider_requests(self, provider: str, route: str) -> list[dict[str, Any]]:
        """The license (`license`) or key (`keys`) requests an emulator answered, oldest first."""
        stats = await self.stack.stats(self.emulator(provider))
        return [r for r in stats["recent"] if r["route"] == route]

    def access_lines(self, route_prefix: str) -> list[dict[str, Any]]:
        """The gateway's access log lines for routes starting with `route_prefix`."""
        return access_lines(self.stack, route_prefix)

    def license_posts(self) -> list[dict[str, Any]]:
        """The access log lines of the license requests (not their CORS preflights)."""
        return license_posts(self.stack)


def license_posts(stack: Stack) -> list[dict[str, Any]]:
    """`stack`'s access log lines of the license requests (not their CORS preflights)."""
    return [a for a in access_lines(stack, "/v1/license/") if a["method"] == "POST"]


def access_lines(stack: Stack, route_prefix: str) -> list[dict[str, Any]]:
    """`stack`'s gateway access log lines for routes starting with `route_prefix`."""
    lines = []
    for raw in stack.logs.getvalue().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("component") == "access" and str(line.get("route", "")).startswith(
            route_prefix
        ):
            lines.append(line)
    return lines


def player_auth_section(secret_file: Path) -> dict[str, Any]:
    """The e2e gateways' player auth: HS256 player tokens signed with the secret in
    `secret_file`, from ISSUER for AUDIENCE."""
    return {
        "mode": "jwt",
        "algorithms": ["HS256"],
        "hmac_secret": {"file": str(secret_file)},
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "leeway_seconds": 30,
    }


async def start_scene(
    make_stack: StackFactory, tmp_path: Path, static: StaticServer, *, incoming_kind: str = ""
) -> Scene:
    """Start both emulators and the gateway with the e2e catalog, rules, auth and CORS; with
    `incoming_kind` the incoming provider is that provider kind, against its emulator."""
    player_secret = secrets.token_bytes(32)
    admin_token = secrets.token_urlsafe(24)
    secret_file = tmp_path / "player-jwt-secret"
    secret_file.write_text("base64:" + base64.b64encode(player_secret).decode())
    admin_file = tmp_path / "admin-token"
    admin_file.write_text(admin_token)
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES_YAML)

    def configure(raw: dict[str, Any]) -> None:
        raw["routing"] = {"default_provider": "legacy", "rules_file": str(rules), "poll_seconds": 1}
        raw["admin"] = {"token": {"file": str(admin_file)}}
        raw["player_auth"] = player_auth_section(secret_file)
        raw["cors"] = {"allowed_origins": [static.url], "allow_credentials": False}
        if incoming_kind:
            url = raw["providers"]["incoming"]["base_url"]
            raw["providers"]["incoming"] = provider_section(incoming_kind, url)

    incoming: dict[str, Any] = {"resources": INCOMING_RESOURCES}
    if incoming_kind:
        incoming |= {"kind": incoming_kind, "secrets": dict(demo_secrets(incoming_kind))}
    stack = await make_stack(
        legacy={"resources": LEGACY_RESOURCES},
        incoming=incoming,
        db=write_catalog(tmp_path / "e2e-catalog.db", CATALOG),
        configure=configure,
        env=kind_env(incoming_kind) if incoming_kind else None,
    )
    return Scene(stack, static, tmp_path / "media", player_secret, admin_token)
