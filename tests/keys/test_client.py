"""The key API client and its config section, against the emulated providers over loopback."""

from __future__ import annotations

import asyncio
import base64
import logging
import traceback
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import ConfigError, parse_config
from proxy.config.providers import KeyApiSettings
from proxy.dev.emulator import EmulatorSettings, RunningEmulator, start_emulator
from proxy.dev.emulator.kinds.axinom import DEMO_SECRETS as AXINOM
from proxy.dev.emulator.kinds.axinom import KeyServiceTenant
from proxy.dev.emulator.kinds.doverunner import DEMO_SECRETS as DOVERUNNER
from proxy.dev.emulator.kinds.doverunner import cpix_key, cpix_key_seed
from proxy.domain import KeyId
from proxy.keys.client import (
    IngestResult,
    KeyApiClient,
    KeyApiError,
    build_cpix_request,
    build_doverunner_cpix_request,
    key_clients,
    read_cpix_keys,
)
from tests.keys.backfill_stack import (
    INCOMING_KEY_API_TOKEN,
    KEY_ENV,
    LEGACY_KEY_API_TOKEN,
    Providers,
    config_for,
    key_id,
    legacy_key,
    legacy_settings,
    raw_config,
    running_providers,
)

KIDS = [key_id("client", 0), key_id("client", 1)]


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    async with running_providers() as running:
        yield running


def client_for(url: str, token: str, name: str = "p", **settings: Any) -> KeyApiClient:
    return KeyApiClient(name, KeyApiSettings(base_url=url, token=token, **settings))


@pytest.fixture
async def clients(providers: Providers) -> AsyncIterator[tuple[KeyApiClient, KeyApiClient]]:
    legacy = client_for(providers.legacy.url, LEGACY_KEY_API_TOKEN, "legacy")
    incoming = client_for(providers.incoming.url, INCOMING_KEY_API_TOKEN, "incoming")
    yield legacy, incoming
    await legacy.close()
    await incoming.close()


# --- config ----------------------------------------------------------------------------------


def test_key_api_section_is_parsed_with_its_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token\n")
    raw = raw_config(
        None,
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
        incoming={"token": {"file": "token"}, "timeouts": {"connect_seconds": 0.5}},
    )
    providers = config_for(raw, tmp_path).providers
    legacy, incoming = providers["legacy"].key_api, providers["incoming"].key_api
    assert legacy is not None and incoming is not None
    assert legacy.token == LEGACY_KEY_API_TOKEN and incoming.token == "file-token"
    assert (incoming.connect_timeout, incoming.total_timeout) == (0.5, 10.0)
    # Each provider's key API names titles as its licenses do.
    assert legacy.resource_id_field == "asset_id"
    assert incoming.resource_id_field == "drm_resource_id"
    assert LEGACY_KEY_API_TOKEN not in repr(legacy) and "file-token" not in repr(providers)


def test_a_provider_without_key_api_has_none(tmp_path: Path) -> None:
    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    del raw["providers"]["legacy"]["key_api"]
    providers = config_for(raw, tmp_path).providers
    assert providers["legacy"].key_api is None
    assert list(key_clients(providers)) == ["incoming"]


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"token": {"env": "INCOMING_KEY_API_TOKEN"}}, "key_api.base_url: is missing"),
        ({"base_url": "https://keys.example"}, "key_api.token: is missing"),
        ({"base_url": "http://keys.example", "token": {"env": "INCOMING_KEY_API_TOKEN"}},
         "key_api.base_url: must be an https:// URL (http:// only to a loopback host)"),
        ({"base_url": "https://keys.example?x=1", "token": {"env": "INCOMING_KEY_API_TOKEN"}},
         "key_api.base_url: must be an https:// URL with a host"),
        ({"base_url": "https://keys.example", "token": {"env": "NOT_SET_ANYWHERE"}},
         "key_api.token.env: environment variable NOT_SET_ANYWHERE is not set"),
        ({"base_url": "https://k.example", "token": {"env": "INCOMING_KEY_API_TOKEN"},
          "timeouts": {"total_seconds": 0}}, "key_api.timeouts.total_seconds: must be greater"),
        ({"base_url": "https://k.example", "token": {"env": "INCOMING_KEY_API_TOKEN"},
          "resource_id": "title"}, "key_api.resource_id: must be one of drm_resource_id, asset_id"),
        ({"base_url": "https://k.example", "token": {"env": "INCOMING_KEY_API_TOKEN"},
          "colour": "red"}, "key_api.colour: unknown field"),
        ("https://k.example", "providers.incoming.key_api: must be a mapping"),
    ],
)  # fmt: skip
def test_key_api_problems_are_reported_with_their_path(
    tmp_path: Path, section: Any, problem: str
) -> None:
    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["providers"]["incoming"]["key_api"] = section
    with pytest.raises(ConfigError) as caught:
        config_for(raw, tmp_path)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    assert not any(INCOMING_KEY_API_TOKEN in line for line in caught.value.problems)


def test_https_and_loopback_http_are_accepted(tmp_path: Path) -> None:
    for url in ("https://keys.example/api/", "http://localhost:8081", "http://[::1]:9"):
        raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
        raw["providers"]["incoming"]["key_api"]["base_url"] = url
        settings = config_for(raw, tmp_path).providers["incoming"].key_api
        assert settings is not None and settings.base_url == url.rstrip("/")


def test_the_rules_tooling_reads_no_key_api_token(tmp_path: Path) -> None:
    from proxy.config import load_rules_view
    from tests.keys.backfill_stack import write_config

    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["providers"]["incoming"]["key_api"]["token"] = {"env": "NOT_SET_ANYWHERE"}
    view = load_rules_view(write_config(raw, tmp_path / "gateway.yaml"))
    assert set(view.providers) == {"legacy", "incoming"}
    assert "NOT_SET_ANYWHERE" not in KEY_ENV


# --- the calls -------------------------------------------------------------------------------


async def test_generate_export_ingest_round_trip(
    providers: Providers, clients: tuple[KeyApiClient, KeyApiClient]
) -> None:
    legacy, incoming = clients
    generated = await legacy.generate("asset-g", KIDS)
    assert set(generated) == set(KIDS) and all(len(key) == 16 for key in generated.values())
    assert await legacy.generate("asset-g", KIDS) == generated  # stored: the same again
    assert await legacy.export("asset-g", KIDS[:1]) == {KIDS[0]: generated[KIDS[0]]}
    assert await incoming.ingest("res-g", generated) == IngestResult(2, 0)
    assert await incoming.ingest("res-g", generated) == IngestResult(0, 2)
    assert await incoming.export("res-g", KIDS) == generated
    counters = await providers.key_api(providers.incoming)
    assert (counters["ingested"], counters["already_present"]) == (2, 2)


async def test_export_of_a_derived_key(clients: tuple[KeyApiClient, KeyApiClient]) -> None:
    legacy, _ = clients
    assert await legacy.export("title-1", KIDS) == {kid: legacy_key("title-1", kid) for kid in KIDS}


async def test_export_asks_for_many_key_ids_in_batches(
    clients: tuple[KeyApiClient, KeyApiClient],
) -> None:
    legacy, _ = clients
    kids = [key_id("many", slot) for slot in range(250)]
    keys = await legacy.export("title-many", kids)
    assert list(keys) == kids


async def test_conflict_is_not_retryable_and_names_no_key(
    clients: tuple[KeyApiClient, KeyApiClient],
) -> None:
    _, incoming = clients
    await incoming.ingest("res-c", {KIDS[0]: b"\x01" * 16})
    with pytest.raises(KeyApiError) as caught:
        await incoming.ingest("res-c", {KIDS[0]: b"\x02" * 16})
    error = caught.value
    assert (error.provider, error.code, error.status, error.retryable) == (
        "incoming",
        "key_conflict",
        409,
        False,
    )
    for key in (b"\x01" * 16, b"\x02" * 16):
        assert base64.b64encode(key).decode() not in str(error) + repr(error)
    assert "res-c" in str(error) and "ingest" in str(error)


async def test_unknown_resource_and_unknown_key(clients: tuple[KeyApiClient, KeyApiClient]) -> None:
    _, incoming = clients
    with pytest.raises(KeyApiError) as caught:
        await incoming.export("res-nobody", KIDS)
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        "unknown_resource",
        404,
        False,
    )
    await incoming.ingest("res-u", {KIDS[0]: b"\x03" * 16})
    with pytest.raises(KeyApiError) as caught:
        await incoming.export("res-u", KIDS)
    assert caught.value.code == "unknown_key"


async def test_wrong_token_is_refused(providers: Providers) -> None:
    client = client_for(providers.legacy.url, "not-the-token")
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.export("t", KIDS)
    finally:
        await client.close()
    assert (caught.value.code, caught.value.status) == ("invalid_key_api_token", 401)
    assert "not-the-token" not in str(caught.value)


@pytest.mark.parametrize(
    ("faults", "code", "status"),
    [
        ({"error_rate": 1.0}, "EMULATED_FAULT", 500),
        ({"error_json_rate": 1.0}, "EMULATED_FAULT", 200),
        ({"status": 503}, "EMULATED_STATUS", 503),
        ({"status": 429}, "EMULATED_STATUS", 429),
        ({"reset_rate": 1.0}, "connect", None),
        ({"latency_ms": 1500}, "timeout", None),
    ],
)
async def test_provider_faults_are_retryable(
    providers: Providers, faults: dict[str, Any], code: str, status: int | None
) -> None:
    await providers.faults(providers.incoming, **faults)
    client = client_for(providers.incoming.url, INCOMING_KEY_API_TOKEN, total_timeout=0.5)
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.ingest("res-f", {KIDS[0]: b"\x04" * 16})
    finally:
        await client.close()
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (code, status, True)


async def test_a_provider_that_is_down_is_a_connect_error() -> None:
    emulator = await start_emulator(legacy_settings())
    url = emulator.url
    await emulator.stop()
    client = client_for(url, LEGACY_KEY_API_TOKEN, connect_timeout=0.5)
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.export("t", KIDS)
    finally:
        await client.close()
    assert (caught.value.code, caught.value.retryable) == ("connect", True)


async def test_an_answer_over_the_limit_is_refused(providers: Providers) -> None:
    client = client_for(providers.legacy.url, LEGACY_KEY_API_TOKEN, max_answer_bytes=64)
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.export("t", KIDS)
    finally:
        await client.close()
    assert caught.value.code == "bad_answer" and "larger than 64 bytes" in str(caught.value)


async def test_arguments_are_checked(clients: tuple[KeyApiClient, KeyApiClient]) -> None:
    legacy, _ = clients
    with pytest.raises(ValueError, match="no key ids"):
        await legacy.export("t", [])
    with pytest.raises(ValueError, match="16 bytes"):
        await legacy.ingest("t", {KIDS[0]: b"short"})


# --- answers from a provider that misbehaves -----------------------------------------------


async def serve_with(handle: Callable[[web.Request], Awaitable[web.Response]]) -> web.AppRunner:
    """A server on a free loopback port answering every path with `handle`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def serve(answer: bytes, content_type: str, status: int = 200) -> web.AppRunner:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(body=answer, status=status, content_type=content_type)

    return await serve_with(handle)


# One ContentKey with the key b"k" * 16, as a CPIX answer (`root_attributes` on the root).
ONE_KID = "00112233-4455-6677-8899-aabbccddeeff"


def one_key_answer(root_attributes: str = "") -> bytes:
    return (
        f'<cpix:CPIX{root_attributes} xmlns:cpix="urn:dashif:org:cpix" '
        'xmlns:pskc="urn:ietf:params:xml:ns:keyprov:pskc"><cpix:ContentKeyList>'
        f'<cpix:ContentKey kid="{ONE_KID}"><cpix:Data><pskc:Secret><pskc:PlainValue>'
        f"{base64.b64encode(b'k' * 16).decode()}</pskc:PlainValue></pskc:Secret></cpix:Data>"
        "</cpix:ContentKey></cpix:ContentKeyList></cpix:CPIX>"
    ).encode()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix">&lol2;</cpix:CPIX>"""


@pytest.mark.parametrize(
    ("answer", "content_type", "operation", "message"),
    [
        (BILLION_LAUGHS, "application/xml", "generate", "without a DTD"),
        (b"<x/>", "application/xml", "generate", "not a CPIX document"),
        (b'{"resource_id": "r", "keys": [{"kid": "zz", "key": "AA=="}]}', "application/json",
         "export", "keys[1] has no 32-hex kid"),
        (b'{"resource_id": "other", "keys": []}', "application/json", "export",
         "names another resource"),
        (b'{"resource_id": "r", "keys": []}', "application/json", "export", "lacks key id"),
        (b'{"stored": "2"}', "application/json", "ingest", "lacks the"),
        (b"not json", "text/plain", "ingest", "not JSON"),
    ],
)  # fmt: skip
async def test_garbled_answers_are_bad_answers(
    answer: bytes, content_type: str, operation: str, message: str
) -> None:
    runner = await serve(answer, content_type)
    port = runner.addresses[0][1]
    client = client_for(f"http://127.0.0.1:{port}", "t")
    try:
        with pytest.raises(KeyApiError) as caught:
            if operation == "generate":
                await client.generate("r", KIDS)
            elif operation == "export":
                await client.export("r", KIDS)
            else:
                await client.ingest("r", {KIDS[0]: b"\x05" * 16})
    finally:
        await client.close()
        await runner.cleanup()
    assert caught.value.code == "bad_answer" and message in str(caught.value)
    assert not caught.value.retryable


async def test_a_redirect_is_not_followed() -> None:
    runner = await serve(b"", "text/plain", status=302)
    port = runner.addresses[0][1]
    client = client_for(f"http://127.0.0.1:{port}", "t")
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.export("r", KIDS)
    finally:
        await client.close()
        await runner.cleanup()
    assert (caught.value.code, caught.value.status) == ("http_302", 302)


# --- documents -------------------------------------------------------------------------------


def test_the_cpix_request_is_minimal_cpix_2_3() -> None:
    document = build_cpix_request('r&"1', [KeyId("00112233445566778899aabbccddeeff")])
    assert b'version="2.3"' in document and b'contentId="r&amp;&quot;1"' in document
    assert b'kid="00112233-4455-6677-8899-aabbccddeeff"' in document
    assert b"commonEncryptionScheme" in document and b"<cpix:Data" not in document


def test_cpix_keys_are_read_from_plain_values() -> None:
    assert read_cpix_keys(one_key_answer()) == {"00112233445566778899aabbccddeeff": b"k" * 16}


# --- protocol: speke (a provider's SPEKE v2 endpoint: Axinom's Key Service) -------------------

AXINOM_PASSWORD_ENV = "AXINOM_MANAGEMENT_KEY"
SPEKE_ENV = {**KEY_ENV, AXINOM_PASSWORD_ENV: AXINOM["management_key"]}


def speke_section(url: str, **fields: Any) -> dict[str, Any]:
    """A `key_api` section for a SPEKE endpoint behind HTTP Basic (tenant : management key)."""
    section: dict[str, Any] = {
        "protocol": "speke",
        "base_url": url,
        "basic": {"username": AXINOM["tenant_id"], "password": {"env": AXINOM_PASSWORD_ENV}},
    }
    return section | fields


def speke_config(tmp_path: Path, section: Any) -> Any:
    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["providers"]["incoming"]["key_api"] = section
    return parse_config(raw, base_dir=tmp_path, env=SPEKE_ENV)


def speke_client(url: str, password: str = AXINOM["management_key"]) -> KeyApiClient:
    settings = KeyApiSettings(
        base_url=url,
        protocol="speke",
        basic_username=AXINOM["tenant_id"],
        basic_password=password,
    )
    return KeyApiClient("axinom", settings)


@pytest.fixture
async def axinom() -> AsyncIterator[RunningEmulator]:
    emulator = await start_emulator(EmulatorSettings(kind="axinom"))
    yield emulator
    await emulator.stop()


def axinom_key(kid: KeyId) -> bytes:
    """The key the Axinom emulator derives for `kid` from its demo key seed."""
    return KeyServiceTenant.from_secrets({}).key(uuid.UUID(hex=kid))


def test_a_speke_key_api_with_basic_auth_is_parsed(tmp_path: Path) -> None:
    config = speke_config(tmp_path, speke_section("https://keys.example/api/SpekeV2"))
    settings = config.providers["incoming"].key_api
    assert settings is not None and settings.protocol == "speke"
    assert settings.base_url == "https://keys.example/api/SpekeV2"
    assert (settings.basic_username, settings.basic_password, settings.token) == (
        AXINOM["tenant_id"],
        AXINOM["management_key"],
        "",
    )
    pair = f"{AXINOM['tenant_id']}:{AXINOM['management_key']}".encode()
    assert settings.authorization == "Basic " + base64.b64encode(pair).decode()
    assert AXINOM["management_key"] not in repr(config.providers)
    assert config.providers["legacy"].key_api is not None
    assert config.providers["legacy"].key_api.protocol == "native"  # the default


def test_a_speke_key_api_only_generates_keys_for_the_rules(tmp_path: Path) -> None:
    """The serving config and the rules tooling (no secrets read) agree: a `speke` key API
    may be a `keys:` source but not a mirror; `native` moves keys both ways."""
    from proxy.config import load_rules_view
    from proxy.routing.watcher import provider_traits
    from tests.keys.backfill_stack import write_config

    config = speke_config(tmp_path, speke_section("https://keys.example/api/SpekeV2"))
    traits = provider_traits(config.providers)
    assert traits["incoming"].key_api and traits["incoming"].key_generate_only
    assert traits["legacy"].key_api and not traits["legacy"].key_generate_only
    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["providers"]["incoming"]["key_api"] = speke_section("https://keys.example/api/SpekeV2")
    view = load_rules_view(write_config(raw, tmp_path / "gateway.yaml"))
    assert view.providers == traits


def test_a_speke_key_api_with_a_bearer_token_is_parsed(tmp_path: Path) -> None:
    section = {
        "protocol": "speke",
        "base_url": "https://keys.example/speke",
        "token": {"env": "INCOMING_KEY_API_TOKEN"},
    }
    settings = speke_config(tmp_path, section).providers["incoming"].key_api
    assert settings is not None and settings.basic_username is None
    assert settings.authorization == f"Bearer {INCOMING_KEY_API_TOKEN}"


BASIC = {"username": "tenant", "password": {"env": AXINOM_PASSWORD_ENV}}


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        (speke_section("https://k.example", token={"env": "INCOMING_KEY_API_TOKEN"}),
         "providers.incoming.key_api: protocol speke needs exactly one credential: token "
         "(bearer) or basic {username, password}, not both"),
        ({"protocol": "speke", "base_url": "https://k.example"},
         "providers.incoming.key_api: protocol speke needs exactly one credential"),
        ({"protocol": "cpix", "base_url": "https://k.example",
          "token": {"env": "INCOMING_KEY_API_TOKEN"}},
         "key_api.protocol: must be one of native, speke"),
        ({"base_url": "https://k.example", "token": {"env": "INCOMING_KEY_API_TOKEN"},
          "basic": BASIC}, "key_api.basic: is for protocol: speke only"),
        (speke_section("https://k.example", basic={"username": "a:b", "password": {"env": "X"}}),
         "key_api.basic.username: must be non-empty printable text without ':'"),
        (speke_section("https://k.example", basic={"username": "tenant"}),
         "key_api.basic.password: is missing"),
        (speke_section("https://k.example", basic={**BASIC, "realm": "x"}),
         "key_api.basic.realm: unknown field"),
        (speke_section("http://keys.example/api/SpekeV2"),
         "key_api.base_url: must be an https:// URL (http:// only to a loopback host)"),
    ],
)  # fmt: skip
def test_speke_key_api_problems_are_reported_with_their_path(
    tmp_path: Path, section: Any, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        speke_config(tmp_path, section)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    assert not any(AXINOM["management_key"] in line for line in caught.value.problems)


async def test_speke_generate_gets_the_keys_the_axinom_key_service_derives(
    axinom: RunningEmulator,
) -> None:
    client = speke_client(f"{axinom.url}/api/SpekeV2")
    try:
        keys = await client.generate("title-speke", KIDS)
        again = await client.generate("another-title", KIDS[:1])
    finally:
        await client.close()
    assert keys == {kid: axinom_key(kid) for kid in KIDS}
    assert again == {KIDS[0]: keys[KIDS[0]]}  # derived from the key seed: always the same
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{axinom.url}/_emulator/stats") as response:
            recent = (await response.json())["recent"]
    assert [r["path"] for r in recent] == ["/api/SpekeV2", "/api/SpekeV2"]
    assert recent[0]["verified"]["content_id"] == "title-speke"
    assert recent[0]["verified"]["key_ids"] == list(KIDS)


async def test_speke_refusal_of_the_credential_is_not_retryable(axinom: RunningEmulator) -> None:
    client = speke_client(f"{axinom.url}/api/SpekeV2", password="not-the-management-key")
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.generate("t", KIDS)
    finally:
        await client.close()
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        "http_401",
        401,
        False,
    )
    assert "not-the-management-key" not in str(caught.value) + repr(caught.value)


async def export_and_ingest_errors(client: KeyApiClient) -> list[tuple[str, KeyApiError]]:
    """(operation, error) of an export and an ingest by `client` (each must raise), then
    close it."""
    errors = []
    try:
        with pytest.raises(KeyApiError) as exported:
            await client.export("t", KIDS)
        errors.append(("export", exported.value))
        with pytest.raises(KeyApiError) as ingested:
            await client.ingest("t", {KIDS[0]: b"\x06" * 16})
        errors.append(("ingest", ingested.value))
    finally:
        await client.close()
    return errors


async def test_speke_export_and_ingest_are_not_supported(axinom: RunningEmulator) -> None:
    client = speke_client(f"{axinom.url}/api/SpekeV2")
    for operation, error in await export_and_ingest_errors(client):
        assert (error.provider, error.code, error.status, error.retryable) == (
            "axinom",
            "not_supported",
            None,
            False,
        )
        assert f"{operation} of resource 't' is not supported" in str(error)
        assert "keys: source but not a mirror nor a backfill" in str(error)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{axinom.url}/_emulator/stats") as response:
            assert (await response.json())["recent"] == []  # nothing was sent


async def test_speke_with_a_bearer_token_posts_to_the_endpoint_itself() -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []
    kid = ONE_KID

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.path, dict(request.headers), await request.read()))
        return web.Response(body=one_key_answer(), content_type="application/xml")

    runner = await serve_with(handle)
    port = runner.addresses[0][1]
    settings = KeyApiSettings(f"http://127.0.0.1:{port}/speke/v2", "speke-token", protocol="speke")
    client = KeyApiClient("p", settings)
    try:
        keys = await client.generate("r-1", [KeyId(uuid.UUID(kid).hex)])
    finally:
        await client.close()
        await runner.cleanup()
    assert keys == {uuid.UUID(kid).hex: b"k" * 16}
    path, headers, body = seen[0]
    assert path == "/speke/v2"
    assert headers["Authorization"] == "Bearer speke-token"
    assert headers["X-Speke-Version"] == "2.0"
    assert headers["Content-Type"] == "application/xml"
    assert b'contentId="r-1"' in body and b'version="2.3"' in body
    assert b'commonEncryptionScheme="cenc"' in body


# --- protocol: doverunner_cpix (DoveRunner's CPIX API, the KMS token in the URL) -------------

KMS_TOKEN = DOVERUNNER["kms_token"]
KMS_ENV = "DOVERUNNER_KMS_TOKEN"
CPIX_ENV = {**KEY_ENV, KMS_ENV: KMS_TOKEN}
KMS_PATH = "/v2/cpix/doverunner/getKey"


def cpix_section(url: str, **fields: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "protocol": "doverunner_cpix",
        "base_url": url,
        "token": {"env": KMS_ENV},
    }
    return section | fields


def cpix_config(tmp_path: Path, section: Any, env: dict[str, str] = CPIX_ENV) -> Any:
    raw = raw_config(None, "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["providers"]["incoming"]["key_api"] = section
    return parse_config(raw, base_dir=tmp_path, env=env)


def cpix_client(url: str, token: str = KMS_TOKEN, **settings: Any) -> KeyApiClient:
    key_api = KeyApiSettings(url, token, protocol="doverunner_cpix", **settings)
    return KeyApiClient("doverunner", key_api)


def doverunner_key(content_id: str, kid: KeyId) -> bytes:
    """The key the DoveRunner emulator derives for `kid` of `content_id` (its demo seed)."""
    return cpix_key(cpix_key_seed(DOVERUNNER), content_id, uuid.UUID(hex=kid))


@pytest.fixture
async def doverunner() -> AsyncIterator[RunningEmulator]:
    emulator = await start_emulator(EmulatorSettings(kind="doverunner"))
    yield emulator
    await emulator.stop()


async def emulator_recent(emulator: RunningEmulator) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/_emulator/stats") as response:
            recent: list[dict[str, Any]] = (await response.json())["recent"]
    return recent


def assert_no_token(error: BaseException, token: str = KMS_TOKEN) -> None:
    """Neither the message, the repr nor the printed traceback shows the token."""
    printed = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), printed):
        assert token not in text and quote_token(token) not in text


def quote_token(token: str) -> str:
    return urllib.parse.quote(token, safe="")


def test_a_doverunner_cpix_key_api_is_parsed(tmp_path: Path) -> None:
    url = "https://drm-kms.doverunner.com/v2/cpix/doverunner/getKey"
    config = cpix_config(tmp_path, cpix_section(url + "/"))
    settings = config.providers["incoming"].key_api
    assert settings is not None and settings.protocol == "doverunner_cpix"
    assert (settings.base_url, settings.token, settings.basic_username) == (url, KMS_TOKEN, None)
    assert settings.request_url == f"{url}/{KMS_TOKEN}"
    assert KMS_TOKEN not in repr(config.providers)
    assert KMS_TOKEN not in repr(KeyApiClient("incoming", settings))
    # The token is one path segment, percent-encoded.
    odd = KeyApiSettings(url, "a/b?c d#e%", protocol="doverunner_cpix")
    assert odd.request_url == f"{url}/a%2Fb%3Fc%20d%23e%25"


@pytest.mark.parametrize(
    ("section", "env", "problem"),
    [
        ({"protocol": "doverunner_cpix", "base_url": "https://kms.example/getKey"}, CPIX_ENV,
         "providers.incoming.key_api.token: is missing"),
        (cpix_section("https://kms.example/getKey"), KEY_ENV,
         "key_api.token.env: environment variable DOVERUNNER_KMS_TOKEN is not set"),
        (cpix_section("https://kms.example/getKey"), {**KEY_ENV, KMS_ENV: "   "},
         "key_api.token: must not be empty (it is the KMS token)"),
        (cpix_section("https://kms.example/getKey",
                      basic={"username": "u", "password": {"env": KMS_ENV}}), CPIX_ENV,
         "key_api.basic: is for protocol: speke only (the doverunner_cpix key API takes a token)"),
        (cpix_section(f"https://kms.example/getKey/{KMS_TOKEN}"), CPIX_ENV,
         "key_api.base_url: protocol doverunner_cpix wants the KMS URL up to getKey"),
        (cpix_section("https://kms.example/v2/cpix/doverunner"), CPIX_ENV,
         "key_api.base_url: protocol doverunner_cpix wants the KMS URL up to getKey"),
        (cpix_section("http://kms.example/getKey"), CPIX_ENV,
         "key_api.base_url: must be an https:// URL (http:// only to a loopback host)"),
        (cpix_section("https://kms.example/getKey?token=x"), CPIX_ENV,
         "key_api.base_url: must be an https:// URL with a host (no query)"),
    ],
)  # fmt: skip
def test_doverunner_cpix_key_api_problems_are_reported_with_their_path(
    tmp_path: Path, section: Any, env: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        cpix_config(tmp_path, section, env)
    assert any(problem in line for line in caught.value.problems), caught.value.problems
    assert not any(KMS_TOKEN in line for line in caught.value.problems)


def test_the_doverunner_cpix_request_is_minimal() -> None:
    kid = KeyId("00112233445566778899aabbccddeeff")
    document = build_doverunner_cpix_request("title-1", [kid])
    root = ET.fromstring(document)
    assert root.tag == "{urn:dashif:org:cpix}CPIX"
    assert root.attrib == {"id": "title-1"}  # CPIX 2.x: the content id is the root's id
    keys = root.findall("{urn:dashif:org:cpix}ContentKeyList/{urn:dashif:org:cpix}ContentKey")
    assert [k.attrib for k in keys] == [{"kid": "00112233-4455-6677-8899-aabbccddeeff"}]
    systems = root.findall("{urn:dashif:org:cpix}DRMSystemList/{urn:dashif:org:cpix}DRMSystem")
    assert [s.attrib for s in systems] == [
        {"kid": "00112233-4455-6677-8899-aabbccddeeff",
         "systemId": "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"}
    ]  # fmt: skip


async def test_doverunner_cpix_generate_gets_the_emulators_keys(
    doverunner: RunningEmulator,
) -> None:
    client = cpix_client(doverunner.url + KMS_PATH)
    try:
        keys = await client.generate("title-cpix", KIDS)
        again = await client.generate("title-cpix", KIDS[:1])
        other = await client.generate("other-title", KIDS[:1])
    finally:
        await client.close()
    assert keys == {kid: doverunner_key("title-cpix", kid) for kid in KIDS}
    assert again == {KIDS[0]: keys[KIDS[0]]}  # deterministic
    assert other == {KIDS[0]: doverunner_key("other-title", KIDS[0])} != again
    recent = await emulator_recent(doverunner)
    assert [r["route"] for r in recent] == ["keys", "keys", "keys"]
    assert recent[0]["verified"] == {"content_id": "title-cpix", "key_ids": list(KIDS)}
    assert "authorization" not in {name.lower() for name in recent[0]["header_names"]}


async def test_doverunner_cpix_wrong_token_is_not_retryable_and_never_shown(
    doverunner: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-kms-token-3f9a1c"
    client = cpix_client(doverunner.url + KMS_PATH, wrong)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(KeyApiError) as caught:
            await client.generate("t", KIDS)
    finally:
        await client.close()
    error = caught.value
    assert (error.provider, error.code, error.status, error.retryable) == (
        "doverunner",
        "http_401",
        401,
        False,
    )
    assert "generate of resource 't' answered 401" in str(error)
    assert_no_token(error, wrong)
    assert_no_token(error, KMS_TOKEN)
    assert wrong not in caplog.text and KMS_TOKEN not in caplog.text


async def test_doverunner_cpix_failures_never_show_the_url(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A provider that is down, or hangs: the error names the provider, never the URL."""
    caplog.set_level(logging.DEBUG)
    emulator = await start_emulator(EmulatorSettings(kind="doverunner"))
    url = emulator.url + KMS_PATH
    await emulator.stop()
    client = cpix_client(url, connect_timeout=0.5)
    try:
        with pytest.raises(KeyApiError) as down:
            await client.generate("t", KIDS)
    finally:
        await client.close()
    assert (down.value.code, down.value.retryable) == ("connect", True)
    assert_no_token(down.value)

    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    runner = await serve_with(hang)
    port = runner.addresses[0][1]
    client = cpix_client(f"http://127.0.0.1:{port}{KMS_PATH}", total_timeout=0.3)
    try:
        with pytest.raises(KeyApiError) as slow:
            await client.generate("t", KIDS)
    finally:
        await client.close()
        await runner.cleanup()
    assert (slow.value.code, slow.value.retryable) == ("timeout", True)
    assert_no_token(slow.value)
    assert KMS_TOKEN not in caplog.text


async def test_doverunner_cpix_export_and_ingest_are_not_supported(
    doverunner: RunningEmulator,
) -> None:
    client = cpix_client(doverunner.url + KMS_PATH)
    for operation, error in await export_and_ingest_errors(client):
        assert (error.code, error.status, error.retryable) == ("not_supported", None, False)
        assert f"{operation} of resource 't' is not supported" in str(error)
        assert "protocol is doverunner_cpix" in str(error)
        assert_no_token(error)
    assert await emulator_recent(doverunner) == []  # nothing was sent


async def test_doverunner_cpix_answers_are_checked() -> None:
    """The token ends the path; an answer for another content id, or lacking a key, is a
    bad_answer that shows neither the token nor a key."""
    seen: list[tuple[str, dict[str, str], bytes]] = []
    kid = ONE_KID
    answers = [one_key_answer(f' id="{content}"') for content in ("r-1", "someone-else")]

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.raw_path, dict(request.headers), await request.read()))
        return web.Response(body=answers[len(seen) - 1], content_type="application/xml")

    runner = await serve_with(handle)
    port = runner.addresses[0][1]
    client = cpix_client(f"http://127.0.0.1:{port}{KMS_PATH}", "tok/en+1")
    try:
        keys = await client.generate("r-1", [KeyId(uuid.UUID(kid).hex)])
        with pytest.raises(KeyApiError) as caught:
            await client.generate("r-1", [KeyId(uuid.UUID(kid).hex)])
    finally:
        await client.close()
        await runner.cleanup()
    assert keys == {uuid.UUID(kid).hex: b"k" * 16}
    path, headers, body = seen[0]
    assert path == f"{KMS_PATH}/tok%2Fen%2B1"
    assert "Authorization" not in headers and "X-Speke-Version" not in headers
    assert headers["Content-Type"] == "application/xml"
    assert b'id="r-1"' in body and b"contentId" not in body
    assert (caught.value.code, caught.value.retryable) == ("bad_answer", False)
    assert "another content id" in str(caught.value)
    assert_no_token(caught.value, "tok/en+1")
