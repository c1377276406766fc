"""The key side of the legacy and incoming emulators: the key store, CPIX key generation, key
export and ingest, each behind its own bearer token; real servers on loopback, real files."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import stat
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.dev.emulator import (
    EmulatorSettings,
    RunningEmulator,
    create_emulator_app,
    derive_key,
    start_emulator,
)
from proxy.dev.emulator.cli import settings_from_args
from proxy.dev.emulator.settings import DEMO_INCOMING_KEY_API_TOKEN, DEMO_LEGACY_KEY_API_TOKEN
from tests.dev.conftest import Launch
from tests.dev.emulator_helpers import (
    API_KEY,
    INCOMING_KEY_API_TOKEN,
    KEY_ID,
    LEGACY_KEY_API_TOKEN,
    SEED,
    b64url,
    bearer,
    cpix_document,
    cpix_keys,
    emulate_help,
    error_code,
    get,
    parse,
    post,
    request,
    set_faults,
    stats,
    unb64url,
)

RESOURCES = {"asset-1": "res-1", "res-1": "res-1"}
TOKENS = {"legacy": LEGACY_KEY_API_TOKEN, "incoming": INCOMING_KEY_API_TOKEN}
AUTH = {"legacy": {"X-Api-Key": API_KEY}, "incoming": {"X-Drm-Token": "any-token"}}
XML = {"Content-Type": "application/xml"}
KID_A = "0123456789abcdef0123456789abcdef"
KID_B = "fedcba9876543210fedcba9876543210"
KEY_1 = bytes(range(16))
KEY_2 = bytes(range(16, 32))
Start = Callable[..., Awaitable[RunningEmulator]]
KINDS = pytest.mark.parametrize("kind", ["legacy", "incoming"])


def settings(kind: str, **kwargs: Any) -> EmulatorSettings:
    """Test settings of a base emulator with its key API on."""
    kwargs.setdefault("seed", SEED)
    kwargs.setdefault("resources", RESOURCES)
    kwargs.setdefault("key_api_token", TOKENS[kind])
    if kind == "legacy":
        kwargs.setdefault("api_key", API_KEY)
    return EmulatorSettings(kind=kind, **kwargs)


@pytest.fixture
def start(launch: Launch) -> Start:
    """Start emulators from EmulatorSettings keywords; all are stopped after the test."""

    async def _start(kind: str, **kwargs: Any) -> RunningEmulator:
        return await launch(settings(kind, **kwargs))

    return _start


async def cpix(
    http: aiohttp.ClientSession, emulator: RunningEmulator, document: bytes, token: str
) -> tuple[int, str, bytes]:
    return await post(http, f"{emulator.url}/v2/cpix", document, **XML, **bearer(token))


async def export(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    resource: str,
    token: str,
    *kids: str,
) -> tuple[int, Any]:
    """GET /v2/keys/{resource}?kid=...; (status, JSON body)."""
    query = "&".join(f"kid={kid}" for kid in kids)
    url = f"{emulator.url}/v2/keys/{resource}" + (f"?{query}" if query else "")
    status, _, body = await get(http, url, **bearer(token))
    return status, json.loads(body)


def exported(data: Any) -> dict[str, bytes]:
    """kid -> key of an export answer."""
    return {entry["kid"]: base64.b64decode(entry["key"], validate=True) for entry in data["keys"]}


async def ingest(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    resource: str,
    token: str,
    keys: dict[str, bytes],
) -> tuple[int, bytes]:
    """PUT /v2/keys/{resource}; (status, body)."""
    data = {
        "keys": [{"kid": kid, "key": base64.b64encode(key).decode()} for kid, key in keys.items()]
    }
    url = f"{emulator.url}/v2/keys/{resource}"
    status, _, body = await request(
        http,
        "PUT",
        url,
        json.dumps(data).encode(),
        {"Content-Type": "application/json", **bearer(token)},
    )
    return status, body


async def clearkey(
    http: aiohttp.ClientSession, emulator: RunningEmulator, kind: str, resource: str, *kids: str
) -> dict[str, bytes]:
    """kid (hex) -> key of a ClearKey license for ``kids``."""
    body = json.dumps({"kids": [b64url(bytes.fromhex(kid)) for kid in kids]}).encode()
    url = f"{emulator.url}/license/clearkey/{resource}"
    status, _, answer = await post(http, url, body, **AUTH[kind])
    assert status == 200, answer
    return {unb64url(key["kid"]).hex(): unb64url(key["k"]) for key in json.loads(answer)["keys"]}


async def aes_key(
    http: aiohttp.ClientSession, emulator: RunningEmulator, kind: str, resource: str, kid: str
) -> bytes:
    status, _, body = await get(http, f"{emulator.url}/keys/{resource}/{kid}", **AUTH[kind])
    assert status == 200, body
    return body


# -- CPIX key generation -----------------------------------------------------------------------


@KINDS
async def test_cpix_generates_keys_that_export_and_licenses_serve(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind)
    token = TOKENS[kind]
    document = cpix_document("new-title", {KID_A: None, KID_B: None})
    status, content_type, answer = await cpix(http, emulator, document, token)
    assert (status, content_type) == (200, "application/xml")
    keys = cpix_keys(answer)
    assert set(keys) == {KID_A, KID_B} and keys[KID_A] != keys[KID_B]
    assert all(len(key) == 16 for key in keys.values())
    # Every other element of the request is kept, with its namespace prefixes.
    assert b"<cpix:DRMSystemList><cpix:DRMSystem " in answer
    assert b'<cpix:ContentKeyUsageRule kid="' in answer and b'version="2.3"' in answer
    # Asking again answers the same stored keys, generating nothing.
    assert cpix_keys((await cpix(http, emulator, document, token))[2]) == keys
    status, data = await export(http, emulator, "new-title", token)
    assert status == 200 and data["resource_id"] == "new-title"
    assert exported(data) == keys
    assert all(entry["kid"] == entry["kid"].lower() for entry in data["keys"])
    assert await clearkey(http, emulator, kind, "new-title", KID_A, KID_B) == keys
    assert await aes_key(http, emulator, kind, "new-title", KID_B.upper()) == keys[KID_B]
    # A key id this resource never had: no derivation for a resource the settings do not know.
    url = f"{emulator.url}/keys/new-title/{KEY_ID}"
    status, _, body = await get(http, url, **AUTH[kind])
    assert (status, error_code(body)) == (404, "unknown_key")
    data = await stats(http, emulator)
    assert data["key_api"] == {
        "generated": 2,
        "exported": 2,
        "ingested": 0,
        "already_present": 0,
        "conflicts": 0,
    }
    assert data["key_store"] == {"resources": 1, "keys": 2, "persistent": False}
    assert {"route": "cpix", "drm": None, "status": 200, "count": 2} in data["by_route"]
    assert data["recent"][0]["resource"] == "new-title"


async def test_cpix_generation_replaces_derivation_for_that_key(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start("incoming")
    token = TOKENS["incoming"]
    answer = (await cpix(http, emulator, cpix_document("res-1", {KID_A: None}), token))[2]
    generated = cpix_keys(answer)[KID_A]
    assert generated != derive_key(SEED, "res-1", KID_A)
    assert await clearkey(http, emulator, "incoming", "res-1", KID_A, KID_B) == {
        KID_A: generated,
        KID_B: derive_key(SEED, "res-1", KID_B),
    }


async def test_cpix_stores_given_keys_and_refuses_a_conflict(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start("legacy")
    token = TOKENS["legacy"]
    document = cpix_document("given", {KID_A: KEY_1, KID_B: None})
    status, _, answer = await cpix(http, emulator, document, token)
    assert status == 200
    keys = cpix_keys(answer)
    assert keys[KID_A] == KEY_1 and len(keys[KID_B]) == 16
    assert await clearkey(http, emulator, "legacy", "given", KID_A) == {KID_A: KEY_1}
    status, _, body = await cpix(http, emulator, cpix_document("given", {KID_A: KEY_2}), token)
    assert (status, error_code(body)) == (409, "key_conflict")
    assert KID_A in json.loads(body)["message"]
    assert base64.b64encode(KEY_2) not in body and base64.b64encode(KEY_1) not in body
    assert exported((await export(http, emulator, "given", token))[1]) == keys
    counters = (await stats(http, emulator))["key_api"]
    assert (counters["generated"], counters["ingested"], counters["conflicts"]) == (1, 1, 1)


async def test_cpix_answer_keeps_the_document(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("incoming")
    document = (
        b'<?xml version="1.0"?>\n<!-- a comment -->\n'
        b'<CPIX xmlns="urn:dashif:org:cpix" xmlns:x="urn:example:x" contentId="a&amp;b" '
        b'x:note="q&quot;&lt;">\n'
        b'  <ContentKeyList><ContentKey kid="01234567-89AB-cdef-0123-456789abcdef" xml:lang="en"/>'
        b"</ContentKeyList>\n"
        b'  <Extra xmlns="">plain &amp; <x:y>t</x:y> tail</Extra>\n'
        b"</CPIX>\n"
    )
    status, _, answer = await cpix(http, emulator, document, TOKENS["incoming"])
    assert status == 200
    keys = cpix_keys(answer)
    assert list(keys) == [KID_A]
    root = ET.fromstring(answer)
    assert root.attrib == {"contentId": "a&b", "{urn:example:x}note": 'q"<'}
    extra = root.find("Extra")  # an element without a namespace stays without one
    assert extra is not None and extra.text == "plain & " and extra[0].tag == "{urn:example:x}y"
    content_key = root.find("{urn:dashif:org:cpix}ContentKeyList/{urn:dashif:org:cpix}ContentKey")
    assert content_key is not None
    assert content_key.attrib["{http://www.w3.org/XML/1998/namespace}lang"] == "en"
    assert exported((await export(http, emulator, "a&b", TOKENS["incoming"]))[1]) == keys


async def test_concurrent_cpix_for_one_new_kid_agree(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start("incoming")
    document = cpix_document("race", {KID_A: None})
    answers = await asyncio.gather(
        *(cpix(http, emulator, document, TOKENS["incoming"]) for _ in range(8))
    )
    assert len({cpix_keys(answer)[KID_A] for _, _, answer in answers}) == 1
    assert (await stats(http, emulator))["key_api"]["generated"] == 1


BILLION_LAUGHS = (
    b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
    + b"".join(
        f'<!ENTITY lol{n} "{f"&lol{n - 1};" * 10 if n > 1 else "&lol;" * 10}">\n'.encode()
        for n in range(1, 10)
    )
    + b']>\n<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&lol9;"><cpix:ContentKeyList>'
    b'<cpix:ContentKey kid="0123456789abcdef0123456789abcdef"/></cpix:ContentKeyList></cpix:CPIX>'
)
EXTERNAL_ENTITY = (
    b'<?xml version="1.0"?>\n<!DOCTYPE c [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&x;"/>'
)


@pytest.mark.parametrize("document", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "xxe"])
async def test_cpix_with_entities_is_refused_quickly(
    start: Start, http: aiohttp.ClientSession, document: bytes
) -> None:
    emulator = await start("incoming")
    began = time.monotonic()
    status, _, body = await cpix(http, emulator, document, TOKENS["incoming"])
    assert time.monotonic() - began < 1.0
    assert (status, error_code(body)) == (400, "bad_cpix")
    assert b"lol" not in body and b"passwd" not in body
    assert (await stats(http, emulator))["key_store"]["keys"] == 0


def _content_key(inner: str, kid: str = "01234567-89ab-cdef-0123-456789abcdef") -> bytes:
    return (
        '<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" '
        'xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc" contentId="t">'
        f'<cpix:ContentKeyList><cpix:ContentKey kid="{kid}">{inner}</cpix:ContentKey>'
        "</cpix:ContentKeyList></cpix:CPIX>"
    ).encode()


@pytest.mark.parametrize(
    "document",
    [
        b"not xml at all",
        b"<cpix:CPIX xmlns:cpix='urn:dashif:org:cpix' contentId='t'>",  # unclosed
        b"<CPIX contentId='t'/>",  # no CPIX namespace
        cpix_document(None, {KID_A: None}),  # no contentId
        cpix_document("   ", {KID_A: None}),
        cpix_document("x" * 513, {KID_A: None}),
        b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="t"><cpix:ContentKeyList/>'
        b"</cpix:CPIX>",
        _content_key("", kid=KID_A),  # a kid not in UUID form
        _content_key("", kid=""),
        _content_key("<cpix:Data><pskc:Secret><pskc:EncryptedValue/></pskc:Secret></cpix:Data>"),
        _content_key(
            "<cpix:Data><pskc:Secret><pskc:PlainValue>"
            + base64.b64encode(bytes(15)).decode()
            + "</pskc:PlainValue></pskc:Secret></cpix:Data>"
        ),
        _content_key(
            "<cpix:Data><pskc:Secret><pskc:PlainValue>!!not-base64!!</pskc:PlainValue>"
            "</pskc:Secret></cpix:Data>"
        ),
        b"\xff\xfe<bad encoding",
    ],
)
async def test_malformed_cpix_is_400_without_echo(
    start: Start, http: aiohttp.ClientSession, document: bytes
) -> None:
    emulator = await start("legacy")
    status, _, body = await cpix(http, emulator, document, TOKENS["legacy"])
    assert (status, error_code(body)) == (400, "bad_cpix")
    assert b"not-base64" not in body and b"xxxxx" not in body


async def test_cpix_needs_xml(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("legacy")
    document = cpix_document("t", {KID_A: None})
    headers = {"Content-Type": "application/json", **bearer(TOKENS["legacy"])}
    status, _, body = await post(http, f"{emulator.url}/v2/cpix", document, **headers)
    assert (status, error_code(body)) == (415, "unsupported_media_type")


# -- export and ingest ---------------------------------------------------------------------------


@KINDS
async def test_ingested_keys_are_served_instead_of_derived_ones(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind)
    token = TOKENS[kind]
    status, body = await ingest(http, emulator, "res-1", token, {KEY_ID: KEY_1})
    assert status == 200
    assert json.loads(body) == {"resource_id": "res-1", "stored": 1, "already_present": 0}
    assert KEY_1 != derive_key(SEED, "res-1", KEY_ID)
    assert await clearkey(http, emulator, kind, "res-1", KEY_ID, KID_A) == {
        KEY_ID: KEY_1,
        KID_A: derive_key(SEED, "res-1", KID_A),  # a kid not ingested is still derived
    }
    assert await aes_key(http, emulator, kind, "res-1", KEY_ID) == KEY_1
    # A resource the settings do not know serves what was ingested for it.
    assert (await ingest(http, emulator, "moved-title", token, {KID_B: KEY_2}))[0] == 200
    assert await clearkey(http, emulator, kind, "moved-title", KID_B) == {KID_B: KEY_2}
    assert await aes_key(http, emulator, kind, "moved-title", KID_B) == KEY_2
    # Export: the stored keys, plus the asked kids (derived where not stored).
    status, data = await export(http, emulator, "res-1", token, KID_A.upper(), KEY_ID)
    assert status == 200
    assert [entry["kid"] for entry in data["keys"]] == [KEY_ID, KID_A]
    assert exported(data) == {KEY_ID: KEY_1, KID_A: derive_key(SEED, "res-1", KID_A)}


async def test_reingest_is_idempotent(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("incoming")
    token = TOKENS["incoming"]
    assert (await ingest(http, emulator, "t", token, {KID_A: KEY_1}))[0] == 200
    for _ in range(2):
        status, body = await ingest(http, emulator, "t", token, {KID_A: KEY_1, KID_B: KEY_2})
        assert status == 200
        assert json.loads(body)["already_present"] >= 1
    status, body = await ingest(http, emulator, "t", token, {KID_A: KEY_1, KID_B: KEY_2})
    assert json.loads(body) == {"resource_id": "t", "stored": 0, "already_present": 2}
    assert exported((await export(http, emulator, "t", token))[1]) == {KID_A: KEY_1, KID_B: KEY_2}
    counters = (await stats(http, emulator))["key_api"]
    assert (counters["ingested"], counters["already_present"]) == (2, 5)


async def test_ingest_conflict_is_409_naming_the_kid_not_the_key(
    start: Start, http: aiohttp.ClientSession
) -> None:
    emulator = await start("incoming")
    token = TOKENS["incoming"]
    assert (await ingest(http, emulator, "t", token, {KID_A: KEY_1}))[0] == 200
    # One new kid and one conflicting kid: the whole request is refused, nothing stored.
    status, body = await ingest(http, emulator, "t", token, {KID_B: KEY_2, KID_A: KEY_2})
    assert (status, error_code(body)) == (409, "key_conflict")
    assert KID_A in json.loads(body)["message"]
    for key in (KEY_1, KEY_2):
        assert base64.b64encode(key) not in body and key.hex().encode() not in body
    assert exported((await export(http, emulator, "t", token))[1]) == {KID_A: KEY_1}
    # The same resource id at another key id is fine; another resource is independent.
    assert (await ingest(http, emulator, "other", token, {KID_A: KEY_2}))[0] == 200
    assert (await stats(http, emulator))["key_api"]["conflicts"] == 1


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", "bad_ingest"),
        (b"[]", "bad_ingest"),
        (b'{"keys": []}', "bad_ingest"),
        (b'{"keys": [{"kid": "' + KID_A.encode() + b'"}]}', "bad_ingest"),
        (b'{"keys": [], "extra": 1}', "bad_ingest"),
        (b'{"keys": [{"kid": 5, "key": "AAAAAAAAAAAAAAAAAAAAAA=="}]}', "bad_ingest"),
        (b'{"keys": [{"kid": "abc", "key": "AAAAAAAAAAAAAAAAAAAAAA=="}]}', "invalid_key_id"),
        (b'{"keys": [{"kid": "' + KID_A.encode() + b'", "key": "AAAA"}]}', "invalid_key"),
        (
            b'{"keys": [{"kid": "' + KID_A.encode() + b'", "key": "_-_-_-_-_-_-_-_-_-_-_w"}]}',
            "invalid_key",
        ),
    ],
)
async def test_bad_ingest_is_400(
    start: Start, http: aiohttp.ClientSession, body: bytes, code: str
) -> None:
    emulator = await start("incoming")
    url = f"{emulator.url}/v2/keys/t"
    status, _, answer = await request(http, "PUT", url, body, bearer(TOKENS["incoming"]))
    assert (status, error_code(answer)) == (400, code)
    assert b"AAAA" not in answer and b"_-_-" not in answer


async def test_ingest_body_is_bounded(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("incoming")
    url = f"{emulator.url}/v2/keys/t"
    body = io.BytesIO(b'{"keys": [' + b" " * (1024 * 1024) + b"]}")
    async with http.put(url, data=body, headers=bearer(TOKENS["incoming"])) as response:
        assert response.status == 413
        assert set(json.loads(await response.read())) == {"errorCode", "message"}


async def test_export_errors(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("legacy")
    token = TOKENS["legacy"]
    status, data = await export(http, emulator, "nowhere", token)
    assert (status, data["errorCode"]) == (404, "unknown_resource")
    status, data = await export(http, emulator, "res-1", token, "not-a-kid")
    assert (status, data["errorCode"]) == (400, "invalid_key_id")
    status, data = await export(http, emulator, "asset-1", token, KID_A)  # derives from res-1
    assert status == 200 and exported(data) == {KID_A: derive_key(SEED, "res-1", KID_A)}
    status, data = await export(http, emulator, "res-1", token)
    assert (status, data) == (200, {"resource_id": "res-1", "keys": []})
    assert (await ingest(http, emulator, "stored-only", token, {KID_A: KEY_1}))[0] == 200
    status, data = await export(http, emulator, "stored-only", token, KID_B)
    assert (status, data["errorCode"]) == (404, "unknown_key")


# -- authentication ------------------------------------------------------------------------------


@KINDS
async def test_key_api_needs_its_own_token(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind)
    other = TOKENS["incoming" if kind == "legacy" else "legacy"]
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "missing_key_api_token"),
        ({"Authorization": "Bearer "}, "missing_key_api_token"),
        ({"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}, "missing_key_api_token"),
        (AUTH[kind], "missing_key_api_token"),  # the license credential is not the key API's
        (bearer(other), "invalid_key_api_token"),  # nor the other provider's key API token
        (bearer(TOKENS[kind] + "x"), "invalid_key_api_token"),
        (bearer(TOKENS[kind][:-1]), "invalid_key_api_token"),
    ]
    document = cpix_document("t", {KID_A: None})
    ingest_body = json.dumps({"keys": [{"kid": KID_A, "key": base64.b64encode(KEY_1).decode()}]})
    for headers, code in cases:
        for method, path, body in (
            ("POST", "/v2/cpix", document),
            ("GET", f"/v2/keys/res-1?kid={KID_A}", None),
            ("PUT", "/v2/keys/t", ingest_body.encode()),
        ):
            status, _, answer = await request(
                http, method, f"{emulator.url}{path}", body, {**XML, **headers}
            )
            assert (status, error_code(answer)) == (401, code), (method, headers)
            assert TOKENS[kind].encode() not in answer
    assert (await stats(http, emulator))["key_store"]["keys"] == 0
    assert (await stats(http, emulator))["key_api"]["generated"] == 0
    # Lowercase scheme is fine (RFC 9110: case-insensitive).
    headers = {**XML, "Authorization": f"bearer {TOKENS[kind]}"}
    status, _, _ = await request(http, "POST", f"{emulator.url}/v2/cpix", document, headers)
    assert status == 200


@KINDS
async def test_without_a_token_there_is_no_key_api(
    start: Start, http: aiohttp.ClientSession, kind: str
) -> None:
    emulator = await start(kind, key_api_token=None)
    for method, path in (("POST", "/v2/cpix"), ("GET", "/v2/keys/res-1"), ("PUT", "/v2/keys/t")):
        status, _, body = await request(
            http, method, f"{emulator.url}{path}", b"x", bearer(TOKENS[kind])
        )
        assert (status, error_code(body)) == (404, "not_found")


# -- persistence ---------------------------------------------------------------------------------


@pytest.fixture
async def restartable() -> AsyncIterator[Callable[[EmulatorSettings], Awaitable[RunningEmulator]]]:
    """start(settings) -> a running emulator; stop() them in the test; leftovers stop after."""
    running: list[RunningEmulator] = []

    async def _start(emulator_settings: EmulatorSettings) -> RunningEmulator:
        emulator = await start_emulator(emulator_settings)
        running.append(emulator)
        return emulator

    yield _start
    for emulator in running:
        await emulator.stop()


async def test_keys_persist_across_a_restart(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    restartable: Callable[[EmulatorSettings], Awaitable[RunningEmulator]],
) -> None:
    path = tmp_path / "keys.jsonl"
    token = TOKENS["incoming"]
    first = await restartable(settings("incoming", key_store_path=path))
    answer = (await cpix(http, first, cpix_document("gen", {KID_A: None}), token))[2]
    generated = cpix_keys(answer)
    assert (await ingest(http, first, "res-1", token, {KEY_ID: KEY_1}))[0] == 200
    assert (await stats(http, first))["key_store"] == {
        "resources": 2,
        "keys": 2,
        "persistent": True,
    }
    await first.stop()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["kid"] for line in lines)

    second = await restartable(settings("incoming", key_store_path=path))
    assert exported((await export(http, second, "gen", token))[1]) == generated
    assert await clearkey(http, second, "incoming", "res-1", KEY_ID) == {KEY_ID: KEY_1}
    assert await aes_key(http, second, "incoming", "gen", KID_A) == generated[KID_A]
    status, body = await ingest(http, second, "res-1", token, {KEY_ID: KEY_1})
    assert (status, json.loads(body)["already_present"]) == (200, 1)
    # The same file cannot be served by two emulators at once.
    with pytest.raises(ValueError, match="in use"):
        await restartable(settings("incoming", key_store_path=path))
    # Reset keeps the stored keys (the provider's data) but zeroes the key API counters.
    async with http.post(f"{second.url}/_emulator/reset") as response:
        assert response.status == 200
    data = await stats(http, second)
    assert data["key_store"]["keys"] == 2 and set(data["key_api"].values()) == {0}
    assert exported((await export(http, second, "gen", token))[1]) == generated


async def test_a_torn_last_line_is_ignored_with_a_warning(
    tmp_path: Path,
    http: aiohttp.ClientSession,
    restartable: Callable[[EmulatorSettings], Awaitable[RunningEmulator]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "keys.jsonl"
    good = {"resource_id": "t", "kid": KID_A, "key": base64.b64encode(KEY_1).decode()}
    torn = json.dumps({"resource_id": "t", "kid": KID_B, "key": base64.b64encode(KEY_2).decode()})
    path.write_bytes(json.dumps(good).encode() + b"\n" + torn[:-7].encode())
    token = TOKENS["legacy"]
    with caplog.at_level(logging.WARNING, logger="proxy.dev.emulator.keystore"):
        emulator = await restartable(settings("legacy", key_store_path=path))
    assert "torn last line" in caplog.text and base64.b64encode(KEY_2).decode() not in caplog.text
    assert exported((await export(http, emulator, "t", token))[1]) == {KID_A: KEY_1}
    # The torn tail was cut off, so the next write starts on a line of its own.
    assert (await ingest(http, emulator, "t", token, {KID_B: KEY_2}))[0] == 200
    await emulator.stop()
    assert len(path.read_bytes().splitlines()) == 2
    again = await restartable(settings("legacy", key_store_path=path))
    expected = {KID_A: KEY_1, KID_B: KEY_2}
    assert exported((await export(http, again, "t", token))[1]) == expected


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"{not json}\n{}\n", "line 1: not a JSON object"),
        (b'{"resource_id": "t", "kid": "%s", "key": "AAAA"}\n' % KID_A.encode(), "line 1: the key"),
        (b'{"resource_id": "t", "kid": "ABC", "key": "AAAA"}\n', "line 1: kid"),
        (b'{"resource_id": "", "kid": "x", "key": "AAAA"}\n', "line 1: resource_id"),
        (b'{"resource_id": "t"}\n', "line 1: expected an object"),
    ],
)
def test_a_malformed_key_store_is_a_startup_error(
    tmp_path: Path, content: bytes, match: str
) -> None:
    path = tmp_path / "keys.jsonl"
    good = json.dumps({"resource_id": "t", "kid": KID_B, "key": base64.b64encode(KEY_1).decode()})
    path.write_bytes(content + good.encode() + b"\n")
    with pytest.raises(ValueError, match=match) as caught:
        create_emulator_app(settings("incoming", key_store_path=path))
    assert str(path) in str(caught.value)


def test_a_key_store_giving_one_kid_two_keys_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    lines = [
        {"resource_id": "t", "kid": KID_A, "key": base64.b64encode(key).decode()}
        for key in (KEY_1, KEY_1, KEY_2)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ValueError, match=r"line 3: .* different key than on line 1") as caught:
        create_emulator_app(settings("incoming", key_store_path=path))
    assert base64.b64encode(KEY_2).decode() not in str(caught.value)


# -- fault modes ---------------------------------------------------------------------------------


async def test_fault_modes_apply_to_the_key_api(start: Start, http: aiohttp.ClientSession) -> None:
    emulator = await start("incoming")
    token = TOKENS["incoming"]
    assert (await set_faults(http, emulator, status=503))[0] == 200
    status, body = await ingest(http, emulator, "t", token, {KID_A: KEY_1})
    assert (status, error_code(body)) == (503, "EMULATED_STATUS")
    status, _, body = await cpix(http, emulator, cpix_document("t", {KID_B: None}), token)
    assert (status, error_code(body)) == (503, "EMULATED_STATUS")
    assert (await export(http, emulator, "res-1", token))[0] == 503
    assert (await stats(http, emulator))["key_store"]["keys"] == 0  # nothing got through

    assert (await set_faults(http, emulator, error_rate=1.0))[0] == 200
    status, body = await ingest(http, emulator, "t", token, {KID_A: KEY_1})
    assert (status, error_code(body)) == (500, "EMULATED_FAULT")
    assert (await set_faults(http, emulator, reset_rate=1.0))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):  # a POST: the client does not retry it
        await cpix(http, emulator, cpix_document("t", {KID_B: None}), token)
    assert (await set_faults(http, emulator, latency_ms=150))[0] == 200
    began = time.monotonic()
    assert (await ingest(http, emulator, "t", token, {KID_A: KEY_1}))[0] == 200
    assert time.monotonic() - began >= 0.15
    recent = (await stats(http, emulator))["recent"]
    assert [(r["route"], r["status"], r["fault"]) for r in recent] == [
        ("key_ingest", 503, "status"),
        ("cpix", 503, "status"),
        ("key_export", 503, "status"),
        ("key_ingest", 500, "error"),
        ("cpix", None, "reset"),
        ("key_ingest", 200, None),
    ]


# -- settings and command line -------------------------------------------------------------------


def test_settings_of_the_key_side() -> None:
    secret = "very-secret-key-api-token"
    built = settings("incoming", key_api_token=secret, key_store_path="keys.jsonl")
    assert secret not in repr(built) and built.key_store_path == Path("keys.jsonl")
    with pytest.raises(ValueError, match="key API token must be"):
        settings("incoming", key_api_token="has space")
    with pytest.raises(ValueError, match="key API token must be"):
        settings("legacy", key_api_token="")
    with pytest.raises(ValueError, match=r"key API token applies.*key store file applies"):
        EmulatorSettings(kind="ezdrm", key_api_token="t", key_store_path=Path("k"))


def test_cli_key_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMULATOR_KEY_API_TOKEN", raising=False)
    legacy = settings_from_args(parse("emulate", "legacy"))
    assert (legacy.key_api_token, legacy.key_store_path) == (DEMO_LEGACY_KEY_API_TOKEN, None)
    incoming = settings_from_args(parse("emulate", "incoming"))
    assert incoming.key_api_token == DEMO_INCOMING_KEY_API_TOKEN
    path = tmp_path / "k.jsonl"
    args = parse("emulate", "incoming", "--key-api-token", "tok", "--key-store", str(path))
    built = settings_from_args(args)
    assert (built.key_api_token, built.key_store_path) == ("tok", path)
    monkeypatch.setenv("EMULATOR_KEY_API_TOKEN", "from-env")
    assert settings_from_args(parse("emulate", "legacy")).key_api_token == "from-env"
    assert settings_from_args(parse("emulate", "legacy", "--no-key-api")).key_api_token is None
    assert settings_from_args(parse("emulate", "ezdrm")).key_api_token is None
    for argv in (
        ("ezdrm", "--key-store", str(path)),
        ("legacy", "--no-key-api", "--key-api-token", "x"),
    ):
        with pytest.raises(ValueError):
            settings_from_args(parse("emulate", *argv))
    text = emulate_help("legacy")
    assert "--key-store" in text and "--key-api-token" in text and "--no-key-api" in text


def test_cli_reports_a_malformed_key_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "k.jsonl"
    path.write_bytes(b"garbage\n")
    args = parse("emulate", "incoming", "--port", "0", "--key-store", str(path))
    assert args.func(args) == 1
    assert f"key store {path}: line 1" in capsys.readouterr().err
    assert os.path.exists(path)
