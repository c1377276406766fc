"""What the benchmark sends and serves: the catalog, the request paths, the player token, the
upstream's answers and the gateway's configs (the full path switched on): `gateway.yaml`
(the generic `incoming` provider) and one `gateway-kind-<kind>.yaml` per provider kind."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.access.player_tokens import issue_token
from proxy.config import Config
from proxy.dev.demo import demo_assets, write_demo_files
from proxy.dev.kinds import KIND_ENV, provider_section
from tests.perf.servers import Route

PERF = Path(__file__).resolve().parent
CATALOG_ASSETS = 100_000
BENCH_ASSETS = 1_000  # requests cycle through these (all cached after the warm-up)
ANSWER_BYTES = 1536
BODY_BYTES = 2048
PLAYER_SECRET = "bench-player-secret-0123456789abcdef"
ENV = {
    "LEGACY_API_KEY": "bench-legacy-api-key",
    "INCOMING_JWT_KEY": "bench-incoming-jwt-key-0123456789abcdef",
    "PLAYER_JWT_SECRET": PLAYER_SECRET,
}
# The upstream's answer (1.5 KB) and a CKC-like blob (binary, the size of a real one); the
# gateway must hand both back byte-exact.
ANSWER = ("license-" * (ANSWER_BYTES // 8))[:ANSWER_BYTES]
CKC = b"\x00\x00\x00\x01" + bytes((i * 7 + 3) % 256 for i in range(1100))
# The bodies tests/perf/wrk_post.lua sends (a binary SPC for FairPlay).
WIDEVINE_BODY = b"c" * BODY_BYTES
FAIRPLAY_BODY = b"\x00\x00\x00\x01" + b"s" * (BODY_BYTES - 4)
PLAYER_AUTH_SUPPORTED = "player_auth" in Config.__dataclass_fields__
# The provider kinds with a dev provider section (proxy/dev/demo_data/providers): every kind
# but `generic`, which `gateway.yaml`'s own `incoming` provider is.
KINDS: tuple[str, ...] = tuple(KIND_ENV)
KIND_PREFIX = "kind-"


def bench_assets() -> list[str]:
    """New releases (keys only at the incoming provider) with no other tag."""
    assets = [
        a.asset_id
        for a in demo_assets(CATALOG_ASSETS)
        if a.key_holders == ("incoming",) and a.tags == ("new-release",)
    ]
    return assets[:BENCH_ASSETS]


def kind_license(kind: str) -> bytes:
    """The Widevine license the origin serves for `kind`: as long as ANSWER, and the kind's
    own, so a check proves the request went through that kind's adapter (legacy gets ANSWER)."""
    return (f"{kind}-license-" * ANSWER_BYTES)[:ANSWER_BYTES].encode("ascii")


def kind_route(kind: str) -> Route:
    """The kind's Widevine URL path on the origin, answered with the kind's success envelope
    (what its adapter unwraps: proxy/upstream/drmtoday.py unwrap_widevine,
    widevine_cloud.py read_license; the others take the body as the license)."""
    path = provider_section(kind, "")["license_urls"]["widevine"].split("?", 1)[0]
    license_ = kind_license(kind).decode("ascii")
    encoded = base64.b64encode(kind_license(kind)).decode("ascii")
    if kind == "drmtoday":  # JSON unless the URL asks specConform=true
        body = json.dumps({"license": encoded}, separators=(",", ":"))
        return Route(path, body, "application/json", spec_conform_body=license_)
    if kind == "widevine-cloud":
        body = json.dumps({"status": "OK", "license": encoded}, separators=(",", ":"))
        return Route(path, body, "application/json")
    return Route(path, license_, "application/octet-stream")


def kind_config_path(workdir: Path, config: str) -> Path:
    """Where the gateway config of a `kind-<kind>` bench configuration is written."""
    return workdir / f"gateway-{config}.yaml"


def write_workload(workdir: Path, ports: Mapping[str, int], *, player_auth: bool) -> str:
    """Write the catalog, the wrk path files, gateway.yaml and each kind's gateway config;
    return the player token."""
    print(f"work dir {workdir}; writing a {CATALOG_ASSETS:,}-asset SQLite catalog", flush=True)
    db = write_demo_files(workdir / "catalog", CATALOG_ASSETS)
    assets = bench_assets()
    for drm in ("widevine", "fairplay"):
        (workdir / f"paths-{drm}.txt").write_text(
            "".join(f"/v1/license/{drm}/{asset}\n" for asset in assets)
        )
    config = gateway_config(ports, db, player_auth=player_auth)
    (workdir / "gateway.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for kind in KINDS:
        text = yaml.safe_dump(kind_gateway_config(config, kind), sort_keys=False)
        kind_config_path(workdir, KIND_PREFIX + kind).write_text(text)
    return issue_token(
        secret_or_private_key=PLAYER_SECRET.encode(),
        algorithm="HS256",
        kid=None,
        user_id="bench-user",
        entitlements=["*"],
        ttl_seconds=24 * 3600,
        issuer="bench-idp",
        audience="drm-gateway",
    )


def gateway_config(ports: Mapping[str, int], db: Path, *, player_auth: bool) -> dict[str, Any]:
    """Both providers on the nginx origin; the bench assets route to `incoming` (rule 14)."""
    origin = f"http://127.0.0.1:{ports['origin']}"
    drms = ("widevine", "playready", "fairplay", "clearkey")
    config: dict[str, Any] = {
        "server": {
            "public": {"host": "127.0.0.1", "port": ports["gateway"]},
            "internal": {"host": "127.0.0.1", "port": ports["gateway-internal"]},
            "max_body_bytes": 65536,
        },
        "log": {"level": "info", "format": "json"},  # stdout, redirected to a file
        "catalog": {"backend": "sqlite", "path": str(db), "ttl_seconds": 3600},
        "routing": {"rules_file": str(PERF / "rules.yaml"), "poll_seconds": 2},
        "providers": {
            "legacy": {
                "base_url": origin,
                "license_urls": {d: f"/legacy/license/{d}/{{asset_id}}" for d in drms},
                "auth": {
                    "type": "header",
                    "header": "X-Api-Key",
                    "secret": {"env": "LEGACY_API_KEY"},
                },
                "fairplay": {"request": "form", "response": "ckc_tag"},
            },
            "incoming": {
                "base_url": origin,
                "needs_drm_resource_id": True,
                "license_urls": {d: f"/incoming/license/{d}/{{drm_resource_id}}" for d in drms},
                "auth": {
                    "type": "jwt",
                    "header": "X-Drm-Token",
                    "algorithm": "HS256",
                    "keys": [{"kid": "bench-1", "secret": {"env": "INCOMING_JWT_KEY"}}],
                    "lifetime_seconds": 60,
                    "claims": {"drmResourceId": "{drm_resource_id}", "drm": "{drm}"},
                },
                # Both directions transcoded: binary SPC -> form, <ckc>base64</ckc> -> binary.
                "fairplay": {"request": "form", "response": "ckc_tag"},
            },
        },
    }
    if player_auth:
        config["player_auth"] = {
            "mode": "jwt",
            "algorithms": ["HS256"],
            "hmac_secret": {"env": "PLAYER_JWT_SECRET"},
            "issuer": "bench-idp",
            "audience": "drm-gateway",
        }
    elif PLAYER_AUTH_SUPPORTED:
        config["player_auth"] = {"mode": "none"}
    return config


def kind_gateway_config(generic: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The same full path with the `incoming` provider replaced by `kind`'s section, on the
    same nginx origin (the rules, catalog, player auth and logging unchanged)."""
    config = copy.deepcopy(dict(generic))
    origin = config["providers"]["incoming"]["base_url"]
    config["providers"]["incoming"] = provider_section(kind, origin)
    return config
