"""`drm-gateway token sign/verify` for every provider kind, through the real CLI (a subprocess).

Each kind's provider section is the one the demo runs against its emulator; its secrets come
from the environment. Every command's stdout and stderr is scanned for those secrets.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.catalog.base import CatalogEntry
from proxy.catalog.importer import import_file
from proxy.cli.token_check import SignRequest, VerifyRequest, sign, verify
from proxy.config.providers import ProviderSettings, parse_providers
from proxy.config.reader import ConfigReader
from proxy.dev.kinds import KIND_ENV, kind_env, provider_section
from tests.conftest import ENV, INCOMING_JWT_KEY, gateway_raw_config

ASSET, RESOURCE, KID = "asset-1", "res-1", "00112233445566778899aabbccddeeff"
OTHER, OTHER_RESOURCE, OTHER_KID = "asset-2", "res-2", "ffeeddccbbaa99887766554433221100"
BARE = "bare"  # neither a drmResourceId nor key ids
CATALOG = [(ASSET, RESOURCE, KID), (OTHER, OTHER_RESOURCE, OTHER_KID), (BARE, "", "")]
KINDS = ["generic", *sorted(KIND_ENV)]
SIGNING_KINDS = [kind for kind in KINDS if kind != "ezdrm"]
# Where each kind's credential goes, as `token sign` says on stderr.
SENT_AS = {
    "generic": "header X-Drm-Token",
    "doverunner": "header pallycon-customdata-v2",
    "axinom": "header X-AxDRM-Message",
    "drmtoday": "header x-dt-auth-token",
    "verimatrix": "header Authorization",
    "widevine-cloud": "POST body (application/json)",
}
# What a credential changed without its key must be refused for.
TAMPERED = {
    "generic": "signature",
    "doverunner": "hash",
    "axinom": "signature",
    "drmtoday": "signature",
    "verimatrix": "signature",
    "widevine-cloud": "signature",
}


def guid(kid: str) -> str:
    return f"{kid[:8]}-{kid[8:12]}-{kid[12:16]}-{kid[16:20]}-{kid[20:]}"


# How a kind's credential names the asset: Axinom by key id, the others by drmResourceId.
NAMED_BY = {"axinom": (guid(KID), OTHER_KID)}


def base_env(kind: str) -> dict[str, str]:
    return {**ENV, **(kind_env(kind) if kind != "generic" else {})}


def secrets_of(env: dict[str, str]) -> set[str]:
    """Every secret value an environment holds, with the decoded forms a leak could take."""
    values = set(env.values()) | {INCOMING_JWT_KEY.hex()}
    for value in list(values):
        values.add(value.removeprefix("base64:"))
    return {v for v in values if len(v) >= 6}


@dataclass
class KindCli:
    """One kind's provider (`incoming`) in a config of its own, and the CLI run against it."""

    kind: str
    config: Path
    env: dict[str, str]
    secrets: set[str]

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "token", *args],
            capture_output=True,
            text=True,
            timeout=60,
            input=stdin,
            env={**os.environ, **self.env},
        )
        for secret in self.secrets:
            assert secret not in result.stdout and secret not in result.stderr, args[0]
        return result

    def sign(self, *extra: str, asset: str = ASSET, drm: str = "widevine") -> Any:
        common = ("--config", str(self.config), "--provider", "incoming")
        return self.run("sign", *common, "--asset", asset, "--drm", drm, *extra)

    def verify(self, credential: str, asset: str | None = ASSET, *extra: str) -> Any:
        common = ("--config", str(self.config), "--provider", "incoming")
        assets = ("--asset", asset) if asset else ()
        return self.run("verify", *common, *assets, *extra, credential)


def write_catalog(path: Path) -> Path:
    source = path.with_suffix(".csv")
    with source.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["asset_id", "drm_resource_id", "key_holders", "tags", "key_ids"])
        writer.writerows((asset, res, "", "", kid) for asset, res, kid in CATALOG)
    assert not import_file(source, path).rejected
    return path


CliFactory = Callable[..., KindCli]


@pytest.fixture
def kind_cli(tmp_path: Path) -> CliFactory:
    db = write_catalog(tmp_path / "catalog.db")

    def make(
        kind: str,
        section: Callable[[dict[str, Any]], None] | None = None,
        env: dict[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> KindCli:
        raw = gateway_raw_config(db, "http://127.0.0.1:9", "http://127.0.0.1:9")
        if kind != "generic":
            raw["providers"]["incoming"] = provider_section(kind, "http://127.0.0.1:9")
        if section is not None:
            section(raw["providers"]["incoming"])
        config = tmp_path / f"{kind}.yaml"
        config.write_text(yaml.safe_dump(raw))
        run_env = {**base_env(kind), **(env or {})}
        return KindCli(
            kind, config, run_env, secrets_of({**base_env(kind), **run_env}) | {*secrets}
        )

    return make


def signed_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def reasons(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal reasons `token verify` printed (not the decoded credential after them)."""
    return "\n".join(line for line in result.stdout.splitlines() if line.startswith("- "))


def tamper(kind: str, credential: str) -> str:
    """The credential naming the other asset, changed without its key."""

    def swap(text: str) -> str:
        return text.replace(RESOURCE, OTHER_RESOURCE).replace(guid(KID), guid(OTHER_KID))

    if kind == "widevine-cloud":
        outer = json.loads(credential)
        inner = base64.b64decode(outer["request"]).decode()
        old, new = (base64.b64encode(r.encode()).decode() for r in (RESOURCE, OTHER_RESOURCE))
        outer["request"] = base64.b64encode(inner.replace(old, new).encode()).decode()
        return json.dumps(outer)
    if kind == "doverunner":
        return base64.b64encode(swap(base64.b64decode(credential).decode()).encode()).decode()
    header, payload, signature = credential.split(".")
    claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    forged = base64.urlsafe_b64encode(swap(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


# --- every kind: sign, verify, refuse -----------------------------------------------------------


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_sign_then_verify_round_trips(kind_cli: CliFactory, kind: str) -> None:
    cli = kind_cli(kind)
    signed = cli.sign()
    [credential] = signed_lines(signed)
    assert signed.stderr.startswith(f"sent as {SENT_AS[kind]}\n")
    ok = cli.verify(credential)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("ok: ")
    named, _ = NAMED_BY.get(kind, (RESOURCE, OTHER_RESOURCE))
    assert named in ok.stdout  # the decoded credential is printed
    assert credential not in ok.stdout


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_a_tampered_credential_is_refused(kind_cli: CliFactory, kind: str) -> None:
    cli = kind_cli(kind)
    [credential] = signed_lines(cli.sign())
    forged = tamper(kind, credential)
    assert forged != credential
    for asset in (OTHER, None):
        refused = cli.verify(forged, asset)
        assert refused.returncode == 1, refused.stdout
        assert refused.stdout.startswith("refused: ")
        assert TAMPERED[kind] in reasons(refused)


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_a_credential_for_another_asset_is_refused(kind_cli: CliFactory, kind: str) -> None:
    cli = kind_cli(kind)
    [credential] = signed_lines(cli.sign())
    refused = cli.verify(credential, OTHER)
    assert refused.returncode == 1, refused.stdout
    _, other = NAMED_BY.get(kind, (RESOURCE, OTHER_RESOURCE))
    assert other in reasons(refused)
    assert "signature" not in reasons(refused) and "hash" not in reasons(refused)
    without_asset = cli.verify(credential, None)
    assert without_asset.returncode == 0 and "note: no --asset given" in without_asset.stdout


def wrong(env: dict[str, str]) -> dict[str, str]:
    """Every secret replaced by another of the same shape."""
    changed = {}
    for name, value in env.items():
        if name == "AXINOM_COMMUNICATION_KEY":
            changed[name] = "ZZ" + value[2:]
        elif name.startswith("WIDEVINE_"):
            changed[name] = ("f" if value[0] != "f" else "e") + value[1:]
        else:
            changed[name] = value[:-1] + ("X" if value[-1] != "X" else "Y")
    return changed


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_a_credential_checked_with_other_keys_is_refused(kind_cli: CliFactory, kind: str) -> None:
    [credential] = signed_lines(kind_cli(kind).sign())
    others = wrong(
        kind_env(kind) if kind != "generic" else {"INCOMING_JWT_KEY": "base64:" + "A" * 44}
    )
    refused = kind_cli(kind, env=others).verify(credential)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert TAMPERED[kind] in reasons(refused)


# --- what each kind adds ------------------------------------------------------------------------


def test_doverunner_prints_the_policy_decrypted_and_its_external_keys_masked(
    kind_cli: CliFactory,
) -> None:
    cenc_key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

    def external_key(section: dict[str, Any]) -> None:
        entry = {"track_type": "ALL", "key_id": KID, "key": {"env": "CENC_KEY"}}
        section["doverunner"]["policy"]["external_key"] = {"mpeg_cenc": [entry]}

    cli = kind_cli("doverunner", external_key, env={"CENC_KEY": cenc_key}, secrets={cenc_key})
    [credential] = signed_lines(cli.sign("--user", "user-7", drm="playready"))
    ok = cli.verify(credential)
    assert ok.returncode == 0, ok.stdout
    decoded = json.loads(ok.stdout.split("custom data:\n", 1)[1])
    assert (decoded["drm_type"], decoded["user_id"], decoded["cid"]) == (
        "PlayReady",
        "user-7",
        RESOURCE,
    )
    assert decoded["policy"]["playback_policy"] == {"persistent": False, "license_duration": 0}
    assert decoded["policy"]["external_key"]["mpeg_cenc"][0] == {
        "track_type": "ALL",
        "key_id": KID,
        "key": "(secret, not shown)",
    }


def test_doverunner_clearkey_has_no_token(kind_cli: CliFactory) -> None:
    result = kind_cli("doverunner").sign(drm="clearkey")
    assert (result.returncode, result.stdout) == (0, "")
    assert "nothing is signed" in result.stderr and f"cid={RESOURCE}" in result.stderr


def test_drmtoday_sends_both_the_token_and_the_custom_data(kind_cli: CliFactory) -> None:
    def both(section: dict[str, Any]) -> None:
        section["drmtoday"]["auth"] = "both"

    cli = kind_cli("drmtoday", both)
    signed = cli.sign("--user", "user-9")
    token, custom_data = signed_lines(signed)
    assert "sent as header x-dt-auth-token (stdout line 1)" in signed.stderr
    assert "sent as header x-dt-custom-data (stdout line 2)" in signed.stderr
    assert cli.verify(token).returncode == 0
    checked = cli.verify(custom_data)
    assert checked.returncode == 0, checked.stdout
    assert "custom data carries no signature" in checked.stdout
    decoded = json.loads(checked.stdout.split("custom data:\n", 1)[1])
    assert decoded == {"userId": "user-9", "sessionId": "cli", "merchant": "demo-merchant"}
    other_merchant = base64.b64encode(json.dumps({**decoded, "merchant": "x"}).encode())
    assert cli.verify(other_merchant.decode()).returncode == 1


def test_verimatrix_in_the_query_with_the_bearer_scheme(kind_cli: CliFactory) -> None:
    def in_query(section: dict[str, Any]) -> None:
        section["verimatrix"] |= {"token_in": "query", "scheme": "bearer"}

    cli = kind_cli("verimatrix", in_query)
    signed = cli.sign()
    [value] = signed_lines(signed)
    assert value.startswith("Bearer%20eyJ") and "sent as query parameter Authorization" in (
        signed.stderr
    )
    ok = cli.verify(value)
    assert ok.returncode == 0, ok.stdout
    assert '"sub": "res-1"' in ok.stdout and '"aud": "urn:verimatrix:multidrm"' in ok.stdout


def test_widevine_cloud_wraps_the_challenge_file_given(
    kind_cli: CliFactory, tmp_path: Path
) -> None:
    challenge = b"\x08\x04" + bytes(range(256))
    (tmp_path / "challenge.bin").write_bytes(challenge)
    cli = kind_cli("widevine-cloud")
    signed = cli.sign("--challenge", str(tmp_path / "challenge.bin"))
    [body] = signed_lines(signed)
    assert "placeholder" not in signed.stderr
    ok = cli.run("verify", "--config", str(cli.config), "--provider", "incoming", "-", stdin=body)
    assert ok.returncode == 0, ok.stdout
    decoded = json.loads(ok.stdout.split("license request:\n", 1)[1])
    assert decoded["request"]["payload"] == {
        "bytes": len(challenge),
        "sha256": hashlib.sha256(challenge).hexdigest(),
    }
    assert decoded["request"]["content_id"] == RESOURCE
    placeholder = cli.sign()
    assert "placeholder" in placeholder.stderr and placeholder.returncode == 0


def test_ezdrm_signs_nothing_and_never_shows_its_account(kind_cli: CliFactory) -> None:
    cli = kind_cli("ezdrm")
    signed = cli.sign("--user", "user-1")
    assert (signed.returncode, signed.stdout) == (0, "")
    assert "nothing is signed" in signed.stderr and "pX=<account id>" in signed.stderr
    refused = cli.verify("anything")
    assert refused.returncode == 2 and "nothing to verify" in refused.stderr


def test_ezdrm_shows_the_custom_data_made_from_the_user(kind_cli: CliFactory) -> None:
    def from_user(section: dict[str, Any]) -> None:
        section["ezdrm"]["custom_data_from_user"] = True

    signed = kind_cli("ezdrm", from_user).sign("--user", "user-1")
    assert "CustomData=" + base64.b64encode(b"user-1").decode() in signed.stderr


def test_generic_static_header_signs_nothing_and_shows_no_secret(kind_cli: CliFactory) -> None:
    cli = kind_cli("generic")
    common = ("--config", str(cli.config), "--provider", "legacy")
    signed = cli.run("sign", *common, "--asset", ASSET, "--drm", "widevine")
    assert (signed.returncode, signed.stdout) == (0, "")
    assert "nothing is signed" in signed.stderr and "X-Api-Key" in signed.stderr
    refused = cli.run("verify", *common, "token")
    assert refused.returncode == 2 and "signs no tokens" in refused.stderr


# --- what cannot be signed, and usage problems ----------------------------------------------------


@pytest.mark.parametrize("kind", SIGNING_KINDS)
def test_an_asset_without_what_the_kind_needs_cannot_be_signed(
    kind_cli: CliFactory, kind: str
) -> None:
    result = kind_cli(kind).sign(asset=BARE)
    assert (result.returncode, result.stdout) == (1, "")
    needed = "no key ids" if kind == "axinom" else "no drmResourceId"
    assert result.stderr.startswith("cannot sign: ") and needed in result.stderr


@pytest.mark.parametrize(
    ("kind", "args", "said"),
    [
        ("doverunner", ("--provider", "nope", "--asset", ASSET), "unknown provider 'nope'"),
        ("doverunner", ("--provider", "incoming", "--asset", "nope"), "not in the catalog"),
        ("widevine-cloud", ("--provider", "incoming", "--asset", ASSET), "serves no playready"),
        (
            "axinom",
            ("--provider", "incoming", "--asset", ASSET, "--challenge", "{config}"),
            "--challenge is for kind widevine-cloud",
        ),
        ("axinom", ("--provider", "incoming", "--asset", ASSET, "--challenge", "/nope"), "/nope"),
    ],
)
def test_usage_and_config_problems_exit_2(
    kind_cli: CliFactory, kind: str, args: tuple[str, ...], said: str
) -> None:
    cli = kind_cli(kind)
    args = tuple(arg.format(config=cli.config) for arg in args)
    result = cli.run("sign", "--config", str(cli.config), *args, "--drm", "playready")
    assert (result.returncode, result.stdout) == (2, "")
    assert said in result.stderr


def test_verify_usage_problems_exit_2(kind_cli: CliFactory) -> None:
    cli = kind_cli("verimatrix")
    unknown_asset = cli.verify("x.y.z", "nope")
    assert unknown_asset.returncode == 2 and "not in the catalog" in unknown_asset.stderr
    garbled = cli.verify("not a token")
    assert garbled.returncode == 1 and "well-formed" in garbled.stdout

    def custom_data_only(section: dict[str, Any]) -> None:
        section["drmtoday"] = {"merchant": "demo-merchant", "auth": "custom_data"}

    drmtoday = kind_cli("drmtoday", custom_data_only)
    no_secret = drmtoday.verify("a.b.c")
    assert no_secret.returncode == 2 and "sends no upfront token" in no_secret.stderr


# --- lifetimes (in process: the clock is the verify request's) ------------------------------------


def provider(kind: str) -> ProviderSettings:
    raw = {"incoming": provider_section(kind, "http://127.0.0.1:9")}
    reader = ConfigReader(Path("."), kind_env(kind))
    providers = parse_providers(reader, raw)
    assert reader.problems == []
    return providers["incoming"]


@pytest.mark.parametrize(
    ("kind", "late", "said"),
    [
        ("doverunner", 601, "s old; DoveRunner accepts 600 s"),
        ("axinom", 61, "The message expired"),
        ("drmtoday", 61, "The token expired"),
        ("verimatrix", 61, "The token expired"),
    ],
)
def test_a_credential_past_its_lifetime_is_refused(kind: str, late: int, said: str) -> None:
    settings = provider(kind)
    entry = CatalogEntry(ASSET, RESOURCE, key_ids=(KID,))
    [credential] = sign(settings, SignRequest(entry, "widevine")).credentials
    now = time.time()
    assert verify(settings, VerifyRequest(credential.value, entry, now=now)).problems == ()
    late_verdict = verify(settings, VerifyRequest(credential.value, entry, now=now + late))
    assert any(said in problem for problem in late_verdict.problems), late_verdict.problems
