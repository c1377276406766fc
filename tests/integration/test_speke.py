"""SPEKE end to end: a packager asks the gateway for keys; the emulated providers make and hold
them; the catalog records them; players get licenses and keys for the title at once, from
the providers the routing guards allow."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.domain import KeyId
from proxy.keys import AES128_HLS, FAIRPLAY, PLAYREADY, WIDEVINE
from proxy.observability.metrics import REGISTRY
from tests.conftest import StackFactory
from tests.integration.test_license_flow import synthetic_license
from tests.keys.cpix_docs import (
    AUDIO,
    NS,
    VIDEO,
    VIDEO_KID,
    b64_text,
    drm_element,
    read_playready_header,
    two_key_request,
)
from tests.keys.speke_stack import (
    LEGACY_TO_INCOMING,
    PUBLIC_BASE,
    SECRETS,
    SpekeStack,
    speke_stack,
)
from tests.redis_server import RedisServer

CHALLENGE = b"\x08\x01speke-title"


def request_for(content_id: str) -> bytes:
    """Video + audio keys, Widevine, PlayReady, FairPlay and HLS AES-128, for `content_id`."""
    return two_key_request().replace(b'contentId="movie-1"', f'contentId="{content_id}"'.encode())


def answered_keys(document: bytes) -> dict[KeyId, bytes]:
    """kid -> key of every ContentKey of a CPIX answer."""
    root = ET.fromstring(document)
    keys = {}
    for element in root.iterfind("cpix:ContentKeyList/cpix:ContentKey", NS):
        value = element.find("cpix:Data/pskc:Secret/pskc:PlainValue", NS)
        assert value is not None and value.text
        keys[KeyId(element.get("kid", "").replace("-", ""))] = base64.b64decode(value.text)
    return keys


def routing_and_keys(keys: dict[str, Any], *, version: str = "r1") -> str:
    """Rules: titles movie-* go to incoming (guards permitting), the rest to legacy."""
    return yaml.safe_dump(
        {
            "version": version,
            "default": "legacy",
            "rules": [
                {"name": "movies", "when": {"asset_prefixes": ["movie-"]}, "route": "incoming"}
            ],
            "keys": keys,
        },
        sort_keys=False,
    )


async def served_by(speke: SpekeStack, asset: str) -> str:
    """Which emulator answered a Widevine license request for `asset`."""
    stack = speke.stack
    async with stack.http.post(stack.url(f"/v1/license/widevine/{asset}"), data=CHALLENGE) as resp:
        body = await resp.read()
        assert resp.status == 200, body
    for provider in ("legacy", "incoming"):
        if body == synthetic_license(provider, "widevine", CHALLENGE):
            return provider
    raise AssertionError(body[:80])


async def player_keys(speke: SpekeStack, asset: str, kids: list[KeyId]) -> dict[KeyId, bytes]:
    """The keys a player gets through the gateway: a ClearKey license of `kids`."""
    stack = speke.stack
    request = {
        "kids": [base64.urlsafe_b64encode(bytes.fromhex(k)).rstrip(b"=").decode() for k in kids],
        "type": "temporary",
    }
    async with stack.http.post(stack.url(f"/v1/license/clearkey/{asset}"), json=request) as resp:
        assert resp.status == 200, await resp.text()
        body = json.loads(await resp.read())
    return {
        KeyId(base64.urlsafe_b64decode(k["kid"] + "==").hex()): base64.urlsafe_b64decode(
            k["k"] + "=="
        )
        for k in body["keys"]
    }


async def hls_key(speke: SpekeStack, asset: str, kid: KeyId) -> bytes:
    async with speke.stack.http.get(speke.stack.url(f"/v1/keys/{asset}/{kid}")) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.read()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- the happy path --------------------------------------------------------------------------


async def test_a_packagers_keys_reach_both_providers_and_players_at_once(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    speke.rules.write_text(routing_and_keys(LEGACY_TO_INCOMING))
    await eventually(lambda: _rules_version(speke, "r1"))
    async with speke.stack.http.post(
        speke.stack.url("/v1/license/widevine/movie-7"), data=CHALLENGE
    ) as resp:
        assert resp.status == 404  # not in the catalog yet

    ok = sample("drm_gateway_speke_requests_total", result="ok")
    status, headers, body = await speke.post(request_for("res-movie-7"), asset="movie-7")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/xml")
    assert headers["Cache-Control"] == "no-store"
    assert (headers["X-Speke-Version"], headers["X-Speke-User-Agent"][:12]) == (
        "2.0",
        "drm-gateway/",
    )
    keys = answered_keys(body)
    assert set(keys) == {VIDEO, AUDIO}
    # The source made them, the mirror holds the same ones: each by the id its licenses use.
    assert await speke.exported(speke.stack.legacy, "movie-7", [VIDEO, AUDIO]) == keys
    assert await speke.exported(speke.stack.incoming, "res-movie-7", [VIDEO, AUDIO]) == keys
    entry = await speke.catalog_entry("movie-7")
    assert entry["drm_resource_id"] == "res-movie-7"
    assert entry["key_ids"] == [VIDEO, AUDIO]
    assert entry["key_holders"] == ["incoming", "legacy"]
    assert sample("drm_gateway_speke_requests_total", result="ok") == ok + 1

    # Routing moves the title at once: the rule sends it to incoming, which holds the keys.
    assert await served_by(speke, "movie-7") == "incoming"
    assert await player_keys(speke, "movie-7", [VIDEO, AUDIO]) == keys
    assert await hls_key(speke, "movie-7", AUDIO) == keys[AUDIO]
    _check_signalling(body, "movie-7")


def _check_signalling(body: bytes, asset: str) -> None:
    """Every DRM system's signalling points at this gateway, never at a key store."""
    root = ET.fromstring(body)
    aes = drm_element(root, VIDEO_KID, AES128_HLS)
    line = b64_text(aes, "cpix:HLSSignalingData[@playlist='media']")
    assert f'URI="{PUBLIC_BASE}/v1/keys/{asset}/{VIDEO}"' in line
    assert line.startswith("#EXT-X-KEY:METHOD=AES-128")
    master = b64_text(aes, "cpix:HLSSignalingData[@playlist='master']")
    assert master.startswith("#EXT-X-SESSION-KEY:")
    fairplay = b64_text(drm_element(root, VIDEO_KID, FAIRPLAY), "cpix:HLSSignalingData")
    assert f'URI="skd://{asset}"' in fairplay
    playready = drm_element(root, VIDEO_KID, PLAYREADY)
    pro = base64.b64decode(playready.findtext("cpix:SmoothStreamingProtectionHeaderData", "", NS))
    la_url = read_playready_header(pro).findtext(".//{*}LA_URL")
    assert la_url == f"{PUBLIC_BASE}/v1/license/playready/{asset}"
    widevine = drm_element(root, VIDEO_KID, WIDEVINE)
    pssh = base64.b64decode(widevine.findtext("cpix:PSSH", "", NS))
    assert struct.unpack(">I", pssh[:4])[0] == len(pssh)


async def _rules_version(speke: SpekeStack, version: str) -> bool:
    async with speke.stack.anon.get(
        speke.stack.internal("/admin/rules"), headers=speke.stack.admin_headers()
    ) as resp:
        data = await resp.json()
        return bool(data["version"] == version)


async def test_a_title_whose_keys_only_the_source_holds_stays_there(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    keys = {"default": {"source": "legacy"}}  # no mirror: incoming never gets them
    speke = await speke_stack(make_stack, tmp_path, keys=keys)
    speke.rules.write_text(routing_and_keys(keys))
    await eventually(lambda: _rules_version(speke, "r1"))
    status, _, body = await speke.post(request_for("res-movie-8"), asset="movie-8")
    assert status == 200, body
    assert (await speke.catalog_entry("movie-8"))["key_holders"] == ["legacy"]
    # The rule says incoming; the key holders guard keeps the title at legacy.
    assert await served_by(speke, "movie-8") == "legacy"
    assert await player_keys(speke, "movie-8", [VIDEO]) == {VIDEO: answered_keys(body)[VIDEO]}


async def test_the_asset_comes_from_the_catalog_by_its_resource_id(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    status, _, body = await speke.post(request_for("res-both-1"))  # conftest: asset both-1
    assert status == 200, body
    entry = await speke.catalog_entry("both-1")
    assert entry["key_ids"] == [VIDEO, AUDIO] and entry["tags"] == ["catalog"]


async def test_a_key_source_switch_takes_effect_on_rules_reload(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    speke.rules.write_text(routing_and_keys({"default": {"source": "incoming"}}, version="r2"))
    await eventually(lambda: _rules_version(speke, "r2"))
    status, _, body = await speke.post(request_for("res-new-1"), asset="new-1")
    assert status == 200
    assert (await speke.catalog_entry("new-1"))["key_holders"] == ["incoming"]
    assert await speke.exported(speke.stack.incoming, "res-new-1", [VIDEO]) == {
        VIDEO: answered_keys(body)[VIDEO]
    }


async def test_without_a_keys_section_key_requests_answer_503(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path, keys=None)
    status, headers, body = await speke.post(request_for("res-x"), asset="x")
    assert status == 503 and json.loads(body)["error"] == "no_key_policy"
    assert headers["X-Speke-User-Agent"].startswith("drm-gateway/")
    async with speke.stack.anon.get(speke.stack.internal("/readyz")) as resp:
        ready = await resp.json()
    assert ready["ready"] and any("no keys section" in w for w in ready["warnings"])


# --- mirror failures -------------------------------------------------------------------------


async def test_a_mirror_down_fails_the_request_and_the_retry_succeeds(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    await speke.stack.faults(speke.stack.incoming, status=503)
    status, headers, body = await speke.post(request_for("res-m-1"), asset="m-1")
    assert status == 503, body
    error = json.loads(body)
    assert error["error"] == "key_mirror_failed" and set(error) == {
        "error",
        "message",
        "request_id",
    }
    assert headers["X-Request-Id"] == error["request_id"]
    async with speke.stack.anon.get(
        speke.stack.internal("/admin/catalog/m-1"), headers=speke.stack.admin_headers()
    ) as resp:
        assert resp.status == 404  # nothing recorded: the packager retries
    await speke.stack.faults(speke.stack.incoming)
    status, _, body = await speke.post(request_for("res-m-1"), asset="m-1")
    assert status == 200
    keys = answered_keys(body)
    assert await speke.exported(speke.stack.incoming, "res-m-1", [VIDEO, AUDIO]) == keys
    assert await speke.exported(speke.stack.legacy, "m-1", [VIDEO, AUDIO]) == keys


async def test_a_queued_mirror_is_written_later_and_only_then_a_holder(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    queue = {"default": {"source": "legacy", "mirrors": ["incoming"], "mirror_failure": "queue"}}
    speke = await speke_stack(make_stack, tmp_path, keys=queue)
    await speke.stack.faults(speke.stack.incoming, status=503)
    status, _, body = await speke.post(request_for("res-q-1"), asset="q-1")
    assert status == 200, body
    keys = answered_keys(body)
    entry = await speke.catalog_entry("q-1")
    assert entry["key_holders"] == ["legacy"]
    assert sample("drm_gateway_key_mirror_queue") == 1
    assert sample("drm_gateway_key_mirror_writes_total", provider="incoming", result="queued") >= 1
    await asyncio.sleep(0.5)  # the drain retries meanwhile, and fails: still not a holder
    assert (await speke.catalog_entry("q-1"))["key_holders"] == ["legacy"]
    assert (
        sample("drm_gateway_key_mirror_writes_total", provider="incoming", result="retry_failed")
        >= 1
    )

    await speke.stack.faults(speke.stack.incoming)

    async def written() -> bool:
        return bool((await speke.catalog_entry("q-1"))["key_holders"] == ["incoming", "legacy"])

    await eventually(written)
    assert await speke.exported(speke.stack.incoming, "res-q-1", [VIDEO, AUDIO]) == keys
    assert sample("drm_gateway_key_mirror_queue") == 0
    assert await player_keys(speke, "q-1", [VIDEO, AUDIO]) == keys


# --- refusals --------------------------------------------------------------------------------

MISSING_SCHEME = request_for("res-x").replace(b' commonEncryptionScheme="cbcs"', b"", 1)


@pytest.mark.parametrize(
    ("body", "asset", "version", "code", "message"),
    [
        (request_for("res-x"), "x", None, "invalid_cpix", "Unsupported SPEKE version"),
        (request_for("res-x"), "x", "1.0", "invalid_cpix", "Unsupported SPEKE version"),
        (request_for("res-x"), "x", "2.1", "invalid_cpix", "Unsupported CPIX@version"),
        (request_for(""), "x", "2.0", "invalid_cpix", "Missing CPIX@contentId"),
        (
            MISSING_SCHEME,
            "x",
            "2.0",
            "invalid_cpix",
            f"Missing ContentKey@commonEncryptionScheme for KID {VIDEO_KID}",
        ),
        (
            request_for("res-x").replace(b'"cbcs" explicitIV', b'"cenc" explicitIV'),
            "x",
            "2.0",
            "invalid_cpix",
            "Non compliant ContentKey@commonEncryptionScheme combination",
        ),
        (b"<not-xml", "x", "2.0", "invalid_cpix", "Malformed CPIX document: not well-formed XML"),
        (request_for("bad id!"), "x", "2.0", "invalid_cpix", "Invalid CPIX@contentId"),
        (request_for("res-nowhere"), None, "2.0", "unknown_content", "No catalog asset has"),
        (request_for("res-other"), "both-1", "2.0", "content_id_conflict", "The asset already"),
    ],
)
async def test_every_refused_document_is_a_422_with_its_message(
    make_stack: StackFactory,
    tmp_path: Path,
    body: bytes,
    asset: str | None,
    version: str | None,
    code: str,
    message: str,
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    headers = {
        "Authorization": "Bearer " + SECRETS[2],
        "Content-Type": "application/xml",
        **({"X-Speke-Version": version} if version is not None else {}),
    }
    status, answer_headers, answer = await speke.post(body, headers=headers, asset=asset)
    assert status == 422, answer
    error = json.loads(answer)
    assert error["error"] == code and error["message"].startswith(message), error
    assert answer_headers["X-Speke-User-Agent"].startswith("drm-gateway/")
    assert ("X-Speke-Version" in answer_headers) == (version in ("2.0", "2.1"))


async def test_a_key_the_provider_already_has_otherwise_is_a_422(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    assert (await speke.post(request_for("res-k"), asset="k"))[0] == 200
    own = base64.b64encode(bytes(16)).decode()
    secret = f"<pskc:Secret><pskc:PlainValue>{own}</pskc:PlainValue></pskc:Secret>"
    key = f'<cpix:ContentKey kid="{VIDEO_KID}" commonEncryptionScheme="cbcs"'
    body = request_for("res-k").replace(
        f"{key}/>".encode(), f"{key}><cpix:Data>{secret}</cpix:Data></cpix:ContentKey>".encode()
    )
    status, _, answer = await speke.post(body, asset="k")
    assert status == 422 and json.loads(answer)["error"] == "key_conflict"
    assert own.encode() not in answer


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&lol9;" version="2.3"/>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE cpix [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&xxe;" version="2.3"/>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, EXTERNAL_ENTITY], ids=["laughs", "external"])
async def test_entities_are_refused_fast(
    make_stack: StackFactory, tmp_path: Path, body: bytes
) -> None:
    speke = await speke_stack(make_stack, tmp_path)
    started = time.perf_counter()
    status, _, answer = await speke.post(body, asset="x")
    assert time.perf_counter() - started < 1.0
    assert status == 422
    assert json.loads(answer)["message"] == "DTDs and entities are not allowed in a CPIX document"
    assert b"root:" not in answer and b"lol" not in answer


# --- secrets ---------------------------------------------------------------------------------


async def test_no_key_or_token_in_any_log_line_or_error_body(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    queue = {"default": {"source": "legacy", "mirrors": ["incoming"], "mirror_failure": "queue"}}
    speke = await speke_stack(make_stack, tmp_path, keys=queue)
    bodies: list[bytes] = []
    status, _, body = await speke.post(request_for("res-s-1"), asset="s-1")
    assert status == 200
    keys = answered_keys(body)
    await speke.stack.faults(speke.stack.incoming, status=503)
    assert (await speke.post(request_for("res-s-2"), asset="s-2"))[0] == 200  # queued
    bodies.append((await speke.post(request_for("res-s-1"), asset="nope", headers={}))[2])
    bodies.append((await speke.post(b"<x/>", asset="s-1"))[2])
    await speke.stack.faults(speke.stack.legacy, status=503)
    bodies.append((await speke.post(request_for("res-s-3"), asset="s-3"))[2])
    await asyncio.sleep(0.3)  # a few drain rounds fail and log
    await speke.stack.faults(speke.stack.legacy)
    await speke.stack.faults(speke.stack.incoming)

    async def drained() -> bool:
        return bool((await speke.catalog_entry("s-2"))["key_holders"] == ["incoming", "legacy"])

    await eventually(drained)
    logs = speke.stack.logs.getvalue()
    assert "speke_request" in logs and "key_mirror_retry_failed" in logs
    queued = await speke.exported(speke.stack.legacy, "s-2", [VIDEO, AUDIO])
    forbidden = [*SECRETS]
    for key in [*keys.values(), *queued.values()]:
        forbidden += [
            base64.b64encode(key).decode(),
            key.hex(),
            base64.urlsafe_b64encode(key).decode(),
        ]
    for secret in forbidden:
        assert secret not in logs
        for body in bodies:
            assert secret.encode() not in body


# --- listeners and storage -------------------------------------------------------------------


async def test_a_listener_of_its_own_serves_only_speke(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await speke_stack(make_stack, tmp_path, listener="own")
    assert speke.speke_url != speke.stack.internal("/v2/speke")
    assert (await speke.post(request_for("res-o"), asset="o"))[0] == 200
    async with speke.stack.anon.post(speke.stack.internal("/v2/speke")) as resp:
        assert resp.status == 404
    async with speke.stack.anon.get(speke.speke_url.replace("/v2/speke", "/metrics")) as resp:
        assert resp.status == 404 and (await resp.json())["error"] == "not_found"


async def test_keys_are_recorded_in_a_shared_redis_catalog(
    make_stack: StackFactory, tmp_path: Path, redis_server: RedisServer
) -> None:
    def redis(raw: dict[str, Any]) -> None:
        raw["catalog"] = {
            "backend": "redis",
            "ttl_seconds": 3600,
            "redis": {"url": redis_server.url},
        }

    speke = await speke_stack(make_stack, tmp_path, configure_more=redis)
    status, _, body = await speke.post(request_for("res-r-1"), asset="r-1")
    assert status == 200, body
    entry = await speke.catalog_entry("r-1")  # a one-hour cache, dropped on the announcement
    assert (entry["drm_resource_id"], entry["key_holders"]) == ("res-r-1", ["incoming", "legacy"])
    status, _, again = await speke.post(request_for("res-r-1"))  # found by its resource id
    assert status == 200 and answered_keys(again) == answered_keys(body)
    assert await player_keys(speke, "r-1", [VIDEO]) == {VIDEO: answered_keys(body)[VIDEO]}
