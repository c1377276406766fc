"""The EZDRM emulator on loopback: requests built by hand as EZDRM's docs describe them."""

from __future__ import annotations

import argparse
import base64
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from proxy.dev.emulator import EmulatorSettings, RunningEmulator
from proxy.dev.emulator.cli import register, settings_from_args
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import emulate_help

ACCOUNT = "A1B2C3"  # the demo account of the brief
WIDEVINE = "/widevine-php/widevine-foreignkey.php"
PLAYREADY = "/cency/preauth.aspx"
CONTENT_ID = "09cc0377-6dd4-40cb-b09d-b582236e70fe"
SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 4
CHALLENGE = b"\x08\x01\x12\x10" + bytes(range(64))
ROOT = Path(__file__).resolve().parents[3]

Start = Callable[..., Awaitable[RunningEmulator]]


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start EZDRM emulators from EmulatorSettings keywords; stopped after the test."""

    async def _start(**kwargs: Any) -> RunningEmulator:
        return await launch(EmulatorSettings(kind="ezdrm", **kwargs))

    return _start


def synthetic(drm: str, challenge: bytes, provider: str = "ezdrm") -> bytes:
    """The synthetic license the emulator contract defines, rebuilt from its definition."""
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\n{provider}\n{drm}\n{digest}".encode()


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    content_type: str = "application/octet-stream",
) -> tuple[int, str, bytes]:
    """POST ``body`` (the URL is sent as written); (status, content type, body)."""
    headers = {"Content-Type": content_type}
    async with http.post(URL(url, encoded=True), data=body, headers=headers) as r:
        return r.status, r.content_type, await r.read()


async def last_request(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        data: dict[str, Any] = await response.json()
    recent: dict[str, Any] = data["recent"][-1]
    return recent


@pytest.mark.parametrize(
    ("path", "drm", "media"),
    [(WIDEVINE, "widevine", "application/octet-stream"), (PLAYREADY, "playready", "text/xml")],
)
async def test_widevine_and_playready_answer_the_raw_license(
    start: Start, http: aiohttp.ClientSession, path: str, drm: str, media: str
) -> None:
    emulator = await start()
    status, content_type, body = await post(http, f"{emulator.url}{path}?pX={ACCOUNT}", CHALLENGE)
    assert (status, content_type) == (200, media)
    assert body == synthetic(drm, CHALLENGE)
    seen = await last_request(http, emulator)
    assert seen["drm"] == drm and seen["resource"] is None
    assert seen["challenge_sha256"] == hashlib.sha256(CHALLENGE).hexdigest()
    assert seen["verified"] == {"account": ACCOUNT, "content_id": None, "custom_data": False}


async def test_fairplay_takes_the_raw_spc_and_answers_a_binary_ckc(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    url = f"{emulator.url}/api/licenses/{CONTENT_ID}?pX={ACCOUNT}"
    status, content_type, body = await post(http, url, SPC)
    assert (status, content_type, body) == (
        200,
        "application/octet-stream",
        synthetic("fairplay", SPC),
    )
    seen = await last_request(http, emulator)
    assert (seen["drm"], seen["resource"]) == ("fairplay", CONTENT_ID)
    assert seen["verified"] == {"account": ACCOUNT, "content_id": CONTENT_ID, "custom_data": False}


async def test_custom_data_is_accepted_when_it_is_base64(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    custom = base64.b64encode(b'{"user":"u-1","session":"s>?"}').decode()
    assert "+" in custom or "/" in custom or "=" in custom  # the value needs URL-encoding
    url = f"{emulator.url}{WIDEVINE}?pX={ACCOUNT}&CustomData={quote(custom, safe='')}"
    status, _, body = await post(http, url, CHALLENGE)
    assert (status, body) == (200, synthetic("widevine", CHALLENGE))
    assert (await last_request(http, emulator))["verified"]["custom_data"] is True


@pytest.mark.parametrize(
    "query",
    [
        "",  # no account at all
        "?pX=FFFFFF",  # another account
        "?pX=a1b2c3",  # the account id is compared exactly
        f"?pX={ACCOUNT}&pX={ACCOUNT}",  # ambiguous
        f"?px={ACCOUNT}",  # the parameter name is pX
        f"?pX={ACCOUNT}&CustomData=not*base64",
        f"?pX={ACCOUNT}&CustomData=",
    ],
)
async def test_a_bad_account_or_custom_data_is_refused_with_a_500_text(
    start: Start, http: aiohttp.ClientSession, query: str
) -> None:
    emulator = await start()
    for path in (WIDEVINE, f"/api/licenses/{CONTENT_ID}"):
        body = SPC if path.startswith("/api") else CHALLENGE
        status, content_type, answer = await post(http, f"{emulator.url}{path}{query}", body)
        assert (status, content_type) == (500, "text/plain")
        assert answer and b"EMULATED-LICENSE" not in answer


async def test_playready_refusals_are_soap_faults(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start()
    status, content_type, body = await post(http, f"{emulator.url}{PLAYREADY}?pX=000000", CHALLENGE)
    assert (status, content_type) == (500, "text/xml")
    assert b"<soap:Fault>" in body and b"<faultstring>" in body


@pytest.mark.parametrize("path", [WIDEVINE, PLAYREADY])
async def test_an_empty_challenge_is_refused(
    start: Start, http: aiohttp.ClientSession, path: str
) -> None:
    emulator = await start()
    status, _, _ = await post(http, f"{emulator.url}{path}?pX={ACCOUNT}", b"")
    assert status == 500


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (SPC, "application/x-www-form-urlencoded"),  # EZDRM wants octet-stream
        (b"spc=" + base64.b64encode(SPC), "application/octet-stream"),  # a form body
        (base64.b64encode(SPC), "application/octet-stream"),  # base64, not binary
        (b"", "application/octet-stream"),
    ],
)
async def test_fairplay_accepts_only_a_binary_spc(
    start: Start, http: aiohttp.ClientSession, body: bytes, content_type: str
) -> None:
    emulator = await start()
    url = f"{emulator.url}/api/licenses/{CONTENT_ID}?pX={ACCOUNT}"
    status, answer_type, _ = await post(http, url, body, content_type)
    assert (status, answer_type) == (500, "text/plain")


async def test_fairplay_content_ids_come_from_the_key_store(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(resources={"asset-known": "res-known"})
    base = f"{emulator.url}/api/licenses"
    known = await post(http, f"{base}/asset-known?pX={ACCOUNT}", SPC)
    unknown = await post(http, f"{base}/asset-unknown?pX={ACCOUNT}", SPC)
    assert known[0] == 200 and known[2] == synthetic("fairplay", SPC)
    assert unknown[:2] == (500, "text/plain")


async def test_the_account_and_provider_name_follow_the_settings(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start(name="incoming", secrets={"account_id": "9F00AA"})
    url = f"{emulator.url}{WIDEVINE}"
    assert (await post(http, f"{url}?pX={ACCOUNT}", CHALLENGE))[0] == 500
    status, _, body = await post(http, f"{url}?pX=9F00AA", CHALLENGE)
    assert (status, body) == (200, synthetic("widevine", CHALLENGE, provider="incoming"))


async def test_no_clearkey_or_key_route(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start()
    for path in ("/license/clearkey/res-1", f"/keys/res-1/{'00' * 16}"):
        status, _, _ = await post(http, f"{emulator.url}{path}?pX={ACCOUNT}", b'{"kids":[]}')
        assert status == 404


def test_cli_help_lists_the_kind_and_secret_overrides_the_account() -> None:
    assert "--secret" in emulate_help("ezdrm")
    parser = argparse.ArgumentParser(prog="drm-gateway")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["emulate", "ezdrm", "--secret", "account_id=77AA00"])
    assert dict(settings_from_args(args).secrets) == {"account_id": "77AA00"}
    defaults = settings_from_args(parser.parse_args(["emulate", "ezdrm"]))
    assert dict(defaults.secrets) == {"account_id": ACCOUNT}
