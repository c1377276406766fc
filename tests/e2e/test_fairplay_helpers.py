"""Shaka Player's own FairPlay helpers against the gateway, in headless Chromium.

No browser here decrypts FairPlay, so this proves the bytes: Shaka Player (the pinned
shaka-player build) is configured by the web/fairplay.js snippet docs/players.md quotes, then
sends the certificate and license requests the way its DRM engine does, with each request
helper `shaka.drm.FairPlay` exports (and none: Shaka's raw SPC), to one gateway in front of
every FairPlay wire format the emulated providers speak. `commonFairPlayResponse` unwraps
each answer; the CKC bytes Shaka would hand to the CDM must be the ones the emulator made
(its deterministic synthetic CKC of the SPC it decoded), for every helper x provider.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from proxy.access.player_tokens import issue_token
from proxy.catalog.importer import import_file
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.kinds import KIND_ENV, kind_env, provider_section
from proxy.upstream.fairplay import FairPlayFormats
from proxy.upstream.registry import PROVIDER_KINDS
from tests.conftest import SEED, Stack, StackFactory, player_token
from tests.e2e.players import install_web_pages, page_result
from tests.e2e.scenario import license_posts
from tests.e2e.server import StaticServer, start_static_server
from tests.e2e.tools import Tools

SHAKA_VERSION = "v5.2.12"
# Every FairPlay request helper Shaka Player 5.2.12 exports; None: no helper (the raw SPC).
HELPERS: tuple[str | None, ...] = (
    "verimatrixFairPlayRequest",
    "ezdrmFairPlayRequest",
    "conaxFairPlayRequest",
    "expressplayFairPlayRequest",
    "muxFairPlayRequest",
    "gumletFairPlayRequest",
    None,
)
FAIRPLAY_KINDS = tuple(k for k in sorted(KIND_ENV) if "fairplay" in PROVIDER_KINDS[k].drms)
PROVIDERS = ("legacy", "incoming", *FAIRPLAY_KINDS)
KID = "00112233445566778899aabbccddeeff"  # Axinom's entitlement lists the content key ids
SHAKA_BAD_HTTP_STATUS = 1001
# Helpers whose body no server can read in the compiled build: Closure renames the `spc`
# field of gumletFairPlayRequest's JSON (lib/drm/fairplay.js writes `{spc: ...}` unquoted).
BROKEN_HELPERS = frozenset({"gumletFairPlayRequest"})


def asset_of(provider: str) -> str:
    return f"fp-{provider}"


def helper_name(helper: str | None) -> str:
    return helper or "(none)"


def expected_request(helper: str | None, spc: bytes) -> tuple[str | None, bytes]:
    """The content type and body each helper puts on the wire (read from Shaka's source):
    the text ones hold the SPC in base64url with padding (Shaka's toBase64), not escaped."""
    b64 = base64.urlsafe_b64encode(spc)
    if helper == "verimatrixFairPlayRequest":
        return "application/x-www-form-urlencoded", b"spc=" + b64
    if helper == "gumletFairPlayRequest":
        return "application/json", json.dumps({"spc": b64.decode()}).replace(" ", "").encode()
    if helper is None:
        return None, spc
    return "application/octet-stream", spc


def assert_gumlet_body_unreadable(sent: tuple[int, str | None, bytes], spc: bytes) -> None:
    """The compiled gumletFairPlayRequest sends JSON holding the base64url SPC under a
    renamed field instead of `spc`: the gateway refuses it as it refuses any JSON without one."""
    attempt, content_type, body = sent
    document = json.loads(body)
    assert (attempt, content_type) == (0, "application/json")
    assert list(document.values()) == [base64.urlsafe_b64encode(spc).decode()]
    assert "spc" not in document


def make_spc(helper: str | None, provider: str) -> bytes:
    """A synthetic SPC: the version-1 header, random bytes, then bytes whose base64 holds
    `+` and `/` (`-` and `_` in base64url); its tail names the case."""
    name = f"{helper_name(helper)}@{provider}".encode()
    return b"\x00\x00\x00\x01" + os.urandom(32) + b"\xfb\xef\xbe\xff\xff\xff" + name


@dataclass
class FairPlayScene:
    stack: Stack
    static: StaticServer
    media: Path
    emulators: dict[str, RunningEmulator]
    certificate: bytes


def write_catalog(path: Path) -> Path:
    """One title per provider, its keys held by that provider only (so the key-holder guard
    routes it there), each with a drmResourceId and the key id."""
    source = path.with_suffix(".csv")
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags", "key_ids"])
        for provider in PROVIDERS:
            writer.writerow([asset_of(provider), f"res-{asset_of(provider)}", provider, "fp", KID])
    assert not import_file(source, path).rejected
    return path


@pytest.fixture
async def fairplay_scene(make_stack: StackFactory, tmp_path: Path) -> AsyncIterator[FairPlayScene]:
    media = tmp_path / "media"
    media.mkdir()
    certificate = b"0\x82" + os.urandom(64)  # served as is; no browser parses it here
    (tmp_path / "fairplay.der").write_bytes(certificate)
    kinds: dict[str, RunningEmulator] = {}
    static = await start_static_server(media)
    try:
        for kind in FAIRPLAY_KINDS:
            settings = EmulatorSettings(kind=kind, seed=SEED, secrets=dict(demo_secrets(kind)))
            kinds[kind] = await start_emulator(settings)

        def configure(raw: dict[str, Any]) -> None:
            for kind, emulator in kinds.items():
                raw["providers"][kind] = provider_section(kind, emulator.url)
            raw["cors"] = {"allowed_origins": [static.url], "allow_credentials": False}
            raw["fairplay"] = {"certificate_file": str(tmp_path / "fairplay.der")}

        stack = await make_stack(
            legacy={"resources": None},  # every title known: the CKC is all this checks
            incoming={"resources": None},
            db=write_catalog(tmp_path / "fairplay.db"),
            configure=configure,
            env={name: value for kind in FAIRPLAY_KINDS for name, value in kind_env(kind).items()},
        )
        emulators = {"legacy": stack.legacy, "incoming": stack.incoming, **kinds}
        yield FairPlayScene(stack, static, media, emulators, certificate)
    finally:
        for emulator in kinds.values():
            await emulator.stop()
        await static.stop()


def provider_formats(scene: FairPlayScene, provider: str) -> FairPlayFormats:
    formats: FairPlayFormats = scene.stack.config.providers[provider].fairplay
    return formats


async def run_cases(
    tools: Tools, scene: FairPlayScene, cases: list[dict[str, Any]]
) -> dict[str, Any]:
    web = install_web_pages(scene.media)
    (scene.media / "web" / "cases.json").write_text(json.dumps(cases))
    query = urlencode({"cases": f"{web}/cases.json"})
    result: dict[str, Any] = await page_result(
        tools, f"{scene.static.url}{web}/fairplay.html?{query}"
    )
    return result


def case(name: str, gateway: str, provider: str, token: str, helper: str | None, spc: bytes) -> Any:
    """One case of web/fairplay-check.js."""
    return {
        "name": name,
        "gateway": gateway,
        "assetId": asset_of(provider),
        "token": token,
        "helper": helper,
        "spc": base64.b64encode(spc).decode(),
    }


def wrong_token() -> str:
    """A well-formed player token signed with a secret the gateway does not know."""
    return issue_token(
        secret_or_private_key=os.urandom(32),
        algorithm="HS256",
        kid=None,
        user_id="e2e-viewer",
        entitlements=["*"],
        ttl_seconds=600,
        issuer="test-idp",
        audience="drm-gateway",
    )


async def test_every_shaka_fairplay_helper_gets_the_emulators_ckc_from_every_provider_format(
    fairplay_scene: FairPlayScene, e2e_tools: Tools
) -> None:
    scene = fairplay_scene
    gateway, token = scene.stack.url(""), player_token()
    spcs = {(h, p): make_spc(h, p) for h in HELPERS for p in PROVIDERS}
    cases = [
        case(f"{helper_name(h)}@{p}", gateway, p, token, h, spc) for (h, p), spc in spcs.items()
    ]
    # The same helper and title with a wrong token: refused before any provider is asked.
    wrong_spc = make_spc("verimatrixFairPlayRequest", "wrong-token")
    cases.append(case("wrong-token", gateway, "incoming", wrong_token(), HELPERS[0], wrong_spc))

    report = await run_cases(e2e_tools, scene, cases)

    assert report["version"] == SHAKA_VERSION
    # A newer Shaka Player with another helper fails here until the helper is covered.
    assert set(report["helpers"]) == {h for h in HELPERS if h}
    results = {r["name"]: r for r in report["results"]}
    wrong = results["wrong-token"]
    assert (wrong["error"]["code"], wrong["error"]["status"]) == (SHAKA_BAD_HTTP_STATUS, 401)
    assert json.loads(wrong["error"]["text"])["error"] == "unauthorized"
    assert "ckc" not in wrong
    matrix, served, refused = [], [], {(asset_of("incoming"), 401, "unauthorized")}
    for (helper, provider), spc in spcs.items():
        result = results[f"{helper_name(helper)}@{provider}"]
        formats = provider_formats(scene, provider)
        row = [helper_name(helper), provider, f"{formats.request}/{formats.response}"]
        first = result["sent"][0]
        sent = (first["attempt"], first["contentType"], base64.b64decode(first["body"]))
        if helper in BROKEN_HELPERS:
            assert_gumlet_body_unreadable(sent, spc)
            assert (result["error"]["code"], result["error"]["status"]) == (
                SHAKA_BAD_HTTP_STATUS,
                400,
            )
            assert json.loads(result["error"]["text"])["error"] == "bad_spc"
            # Shaka retries; a retry resends the body without the helper's Content-Type
            # (headers are reset and the helpers skip attempts > 0).
            retries = result["sent"][1:]
            assert retries and {a["contentType"] for a in retries} == {None}
            refused.add((asset_of(provider), 400, "bad_spc"))
            matrix.append((*row, "400 bad_spc"))
            continue
        assert "error" not in result, result
        assert [a["attempt"] for a in result["sent"]] == [0]
        assert sent == (0, *expected_request(helper, spc))
        assert base64.b64decode(result["certificate"]) == scene.certificate
        # The CKC Shaka hands to the CDM is the one the emulator made of this very SPC (each
        # emulator is named after its provider, and the name is in the synthetic CKC).
        assert base64.b64decode(result["ckc"]) == synthetic_license(provider, "fairplay", spc)
        served.append((asset_of(provider), provider, 200))
        matrix.append((*row, f"CKC equal ({result['answerType']})"))
    for provider, emulator in scene.emulators.items():
        seen = [r for r in (await scene.stack.stats(emulator))["recent"] if r["route"] == "license"]
        assert sorted(r["challenge_sha256"] for r in seen) == sorted(
            hashlib.sha256(spcs[(h, provider)]).hexdigest()
            for h in HELPERS
            if h not in BROKEN_HELPERS
        ), provider
    posts = license_posts(scene.stack)
    ok = sorted((a["asset_id"], a["provider"], a["status"]) for a in posts if a["status"] == 200)
    assert ok == sorted(served)
    assert {
        (a["asset_id"], a["status"], a["error"]) for a in posts if a["status"] != 200
    } == refused
    print("\nShaka helper | provider | provider FairPlay request/response | outcome")
    for cells in matrix:
        print("  " + " | ".join(cells))
