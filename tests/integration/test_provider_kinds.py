"""Every provider kind, end to end: the gateway against that kind's emulator over loopback.

The adapters (proxy/upstream/<kind>.py) and the emulators (proxy/dev/emulator/kinds/) were
written apart from each provider's documentation; these tests are where the two meet. Success
is asserted on the emulator's side too: who answered, the challenge byte-exact, and what the
emulator verified of the token or custom data.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog.importer import import_file
from proxy.dev.emulator import derive_key
from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.kinds import KIND_ENV, kind_env, provider_section
from proxy.observability.metrics import REGISTRY
from proxy.upstream.registry import PROVIDER_KINDS
from tests.conftest import SEED, Stack, StackFactory

KID = "00112233445566778899aabbccddeeff"
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 2
CHALLENGE = bytes(range(256)) * 3 + b"\r\n\x00end"
ASSET, RESOURCE = "incoming-only", "res-inc-1"
# Keys at incoming only, so the key-holder guard sends every DRM system there; the catalog
# knows its key id (Axinom builds its entitlement from key ids).
CATALOG = [
    ("both-1", "res-both-1", "", "catalog", KID),
    ("legacy-only", "", "legacy", "catalog", ""),
    (ASSET, RESOURCE, "incoming", "new-release", KID),
    ("incoming-missing", "res-not-yet", "incoming", "", "ffeeddccbbaa99887766554433221100"),
]
# Where each kind's emulator looks content up: the content id the protocol carries.
EMULATOR_RESOURCES = {
    "axinom": {KID: KID},  # the key ids of the entitlement
    "ezdrm": {ASSET: ASSET},  # FairPlay: the asset id in the URL
}
KINDS = sorted(KIND_ENV)
SERVED = [
    (kind, drm)
    for kind in KINDS
    for drm in ("widevine", "playready", "fairplay")
    if drm in PROVIDER_KINDS[kind].drms
]


def synthetic_license(provider: str, drm: str, challenge: bytes) -> bytes:
    digest = hashlib.sha256(challenge).hexdigest().encode()
    return b"EMULATED-LICENSE\n" + provider.encode() + b"\n" + drm.encode() + b"\n" + digest


def write_kind_catalog(path: Path) -> Path:
    source = path.with_suffix(".csv")
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags", "key_ids"])
        writer.writerows(CATALOG)
    assert not import_file(source, path).rejected
    return path


async def kind_stack(
    make_stack: StackFactory, tmp_path: Path, kind: str, *, env: dict[str, str] | None = None
) -> Stack:
    """The gateway with a `kind` provider as `incoming`, in front of that kind's emulator."""

    def use_kind(raw: dict[str, Any]) -> None:
        url = raw["providers"]["incoming"]["base_url"]
        raw["providers"]["incoming"] = provider_section(kind, url)

    emulator: dict[str, Any] = {"kind": kind, "secrets": dict(demo_secrets(kind))}
    if kind in EMULATOR_RESOURCES:
        emulator["resources"] = EMULATOR_RESOURCES[kind]
    return await make_stack(
        incoming=emulator,
        db=write_kind_catalog(tmp_path / "kinds.db"),
        configure=use_kind,
        env={**kind_env(kind), **(env or {})},
    )


async def post(stack: Stack, drm: str, asset: str = ASSET) -> tuple[int, bytes, str]:
    body, content_type = (
        (SPC, "application/octet-stream")
        if drm == "fairplay"
        else (
            CHALLENGE,
            "application/octet-stream",
        )
    )
    async with stack.http.post(
        stack.url(f"/v1/license/{drm}/{asset}"), data=body, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, await resp.read(), resp.headers["X-Request-Id"]


def access_line(stack: Stack, request_id: str) -> dict[str, Any]:
    for line in stack.logs.getvalue().splitlines():
        record = json.loads(line)
        if record.get("event") == "request" and record.get("request_id") == request_id:
            return dict(record)
    raise AssertionError(f"no access line for {request_id}")


@pytest.mark.parametrize(("kind", "drm"), SERVED)
async def test_each_kind_serves_each_drm_system_through_the_gateway(
    make_stack: StackFactory, tmp_path: Path, kind: str, drm: str
) -> None:
    stack = await kind_stack(make_stack, tmp_path, kind)
    status, body, request_id = await post(stack, drm)
    assert status == 200, body
    challenge = SPC if drm == "fairplay" else CHALLENGE
    # The emulator's synthetic license names it and hashes the challenge as it decoded it.
    assert body == synthetic_license(kind, drm, challenge)
    stats = await stack.stats(stack.incoming)
    record = stats["recent"][-1]
    assert (record["drm"], record["status"]) == (drm, 200)
    assert record["challenge_sha256"] == hashlib.sha256(challenge).hexdigest()
    verified = record["verified"]
    if kind == "axinom":
        assert [k.replace("-", "") for k in verified["key_ids"]] == [KID]
    elif kind == "ezdrm":
        assert verified["account"] == demo_secrets(kind)["account_id"]
    else:  # a content id in the token: the asset's drmResourceId
        assert RESOURCE in json.dumps(verified)
    line = access_line(stack, request_id)
    assert (line["provider"], line["status"], line["provider_error"]) == ("incoming", 200, None)


async def test_doverunner_clearkey_holds_the_real_keys_of_the_content(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await kind_stack(make_stack, tmp_path, "doverunner")
    kid = base64.urlsafe_b64encode(bytes.fromhex(KID)).rstrip(b"=").decode()
    request = {"kids": [kid], "type": "temporary"}
    async with stack.http.post(stack.url(f"/v1/license/clearkey/{ASSET}"), json=request) as resp:
        assert resp.status == 200, await resp.text()
        keys = json.loads(await resp.read())["keys"]
    key = base64.urlsafe_b64encode(derive_key(SEED, RESOURCE, KID)).rstrip(b"=").decode()
    assert keys == [{"kty": "oct", "kid": kid, "k": key}]
    record = (await stack.stats(stack.incoming))["recent"][-1]
    assert (record["route"], record["drm"], record["verified"]) == (
        "license",
        "clearkey",
        {"site_id": "DEMO", "cid": RESOURCE},
    )


def _wrong(kind: str) -> dict[str, str]:
    """The kind's environment with every secret replaced by another of the same shape."""
    wrong = {}
    for name, value in kind_env(kind).items():
        if kind == "axinom":
            wrong[name] = "ZZ" + value[2:]
        elif kind == "widevine-cloud":
            wrong[name] = ("f" if value[0] != "f" else "e") + value[1:]
        else:
            wrong[name] = value[:-1] + ("X" if value[-1] != "X" else "Y")
    return wrong


# What the player gets when the provider refuses our credentials, and the provider's code.
WRONG_SECRET = {
    "doverunner": (502, "upstream_auth_failed", "7019"),
    "axinom": (502, "upstream_auth_failed", "bad_signature"),
    "drmtoday": (502, "upstream_auth_failed", "3000"),
    "verimatrix": (502, "upstream_auth_failed", "MDRM-505"),  # "token is invalid"
    "widevine-cloud": (502, "upstream_auth_failed", "SIGNATURE_FAILED"),
    "ezdrm": (502, "upstream_unavailable", "-"),
}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_credential_reaches_the_player_as_an_upstream_error_with_its_code(
    make_stack: StackFactory, tmp_path: Path, kind: str
) -> None:
    stack = await kind_stack(make_stack, tmp_path, kind, env=_wrong(kind))
    status, body, request_id = await post(stack, "widevine")
    expected_status, expected_error, code = WRONG_SECRET[kind]
    assert (status, json.loads(body)["error"]) == (expected_status, expected_error), body
    line = access_line(stack, request_id)
    assert (line["error"], line["provider_error"]) == (
        expected_error,
        None if code == "-" else code,
    )
    labels = {"provider": "incoming", "provider_error": code}
    counted = [
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "drm_gateway_upstream_responses"
        for s in metric.samples
        if all(s.labels.get(k) == v for k, v in labels.items()) and s.name.endswith("_total")
    ]
    assert sum(counted) >= 1
    secrets = [*kind_env(kind).values(), *_wrong(kind).values()]
    leaks = [s for s in secrets if s in stack.logs.getvalue() or s.encode() in body]
    assert leaks == []


# A title whose keys the provider does not hold (the catalog says incoming, wrongly): what the
# player gets, and the provider's own code on the access line (None: it sends none).
UNKNOWN_CONTENT = [
    ("doverunner", "widevine", 502, "upstream_bad_response", "7001"),
    ("doverunner", "fairplay", 502, "upstream_bad_response", "7001"),
    ("axinom", "widevine", 403, "upstream_rejected", "license_denied"),
    ("axinom", "fairplay", 403, "upstream_rejected", "license_denied"),
    ("drmtoday", "widevine", 403, "upstream_rejected", "40000"),
    ("drmtoday", "fairplay", 403, "upstream_rejected", "43000"),
    ("verimatrix", "widevine", 404, "upstream_rejected", "MDRM-717"),
    ("verimatrix", "fairplay", 404, "upstream_rejected", "MDRM-1011"),
    ("widevine-cloud", "widevine", 502, "upstream_bad_response", "INVALID_CONTENT_INFO"),
    # EZDRM names the content only in the FairPlay URL, and publishes no error format.
    ("ezdrm", "fairplay", 502, "upstream_unavailable", None),
    # Widevine's API serves no FairPlay: the guard answers before any provider call.
    ("widevine-cloud", "fairplay", 503, "no_provider", None),
]


@pytest.mark.parametrize(("kind", "drm", "status", "error", "code"), UNKNOWN_CONTENT)
async def test_content_the_provider_does_not_hold_is_refused_with_its_code(
    make_stack: StackFactory,
    tmp_path: Path,
    kind: str,
    drm: str,
    status: int,
    error: str,
    code: str | None,
) -> None:
    stack = await kind_stack(make_stack, tmp_path, kind)
    got_status, body, request_id = await post(stack, drm, "incoming-missing")
    assert (got_status, json.loads(body)["error"]) == (status, error), body
    line = access_line(stack, request_id)
    assert (line["error"], line["provider_error"]) == (error, code)
