"""FairPlay through the gateway: every client format x both providers, byte-exact both ways."""

from __future__ import annotations

import base64
import hashlib
import json
from urllib.parse import quote

import pytest

from proxy.observability.metrics import REGISTRY
from tests.conftest import StackFactory, player_token

SPC = b"\x00\x00\x00\x01" + bytes(range(200)) + b"+/=" * 5
B64 = base64.b64encode(SPC).decode()

# The body each client format sends, and its content type.
CLIENT_BODIES = {
    "binary": (SPC, "application/octet-stream"),
    "form": (
        f"spc={quote(B64, safe='')}".encode(),  # assetId: see the tests at the end
        "application/x-www-form-urlencoded",
    ),
    "base64": (B64.encode(), "text/plain"),
    "json": (json.dumps({"spc": B64}).encode(), "application/json"),
}


def expected_ckc(provider: str) -> bytes:
    digest = hashlib.sha256(SPC).hexdigest().encode()
    return b"EMULATED-LICENSE\n" + provider.encode() + b"\nfairplay\n" + digest


def decode_for_client(fmt: str, body: bytes) -> bytes:
    """How each kind of player reads its CKC (written here independently of the gateway)."""
    if fmt == "binary":
        return body
    if fmt == "form":  # such players expect <ckc>base64</ckc>
        text = body.decode().strip()
        assert text.startswith("<ckc>") and text.endswith("</ckc>")
        return base64.b64decode(text[5:-6])
    if fmt == "base64":
        return base64.b64decode(body)
    return base64.b64decode(json.loads(body)["ckc"])


@pytest.mark.parametrize("client_format", list(CLIENT_BODIES))
@pytest.mark.parametrize(
    ("asset", "provider"), [("both-1", "legacy"), ("incoming-only", "incoming")]
)
async def test_every_client_format_with_either_provider(
    make_stack: StackFactory, client_format: str, asset: str, provider: str
) -> None:
    stack = await make_stack()
    body, content_type = CLIENT_BODIES[client_format]
    wanted = {"legacy": "form", "incoming": "binary"}[provider]
    before = (
        REGISTRY.get_sample_value(
            "drm_gateway_fairplay_transcodes_total",
            {"client_format": client_format, "provider_format": wanted},
        )
        or 0
    )
    async with stack.http.post(
        stack.url(f"/v1/license/fairplay/{asset}"),
        data=body,
        headers={"Content-Type": content_type},
    ) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.read()
    assert decode_for_client(client_format, answer) == expected_ckc(provider)
    emulator = stack.legacy if provider == "legacy" else stack.incoming
    seen = (await stack.stats(emulator))["recent"][-1]
    assert seen["challenge_sha256"] == hashlib.sha256(SPC).hexdigest()
    after = REGISTRY.get_sample_value(
        "drm_gateway_fairplay_transcodes_total",
        {"client_format": client_format, "provider_format": wanted},
    )
    assert after == before + 1


async def test_switching_provider_changes_nothing_the_player_sees(make_stack: StackFactory) -> None:
    # Same client format, both providers: the player gets the same encoding of the CKC.
    stack = await make_stack()
    body, content_type = CLIENT_BODIES["form"]
    shapes = []
    for asset in ("both-1", "incoming-only"):
        async with stack.http.post(
            stack.url(f"/v1/license/fairplay/{asset}"),
            data=body,
            headers={"Content-Type": content_type},
        ) as resp:
            assert resp.status == 200
            shapes.append((resp.headers["Content-Type"], (await resp.read())[:5]))
    assert shapes[0] == shapes[1]
    assert shapes[0][1] == b"<ckc>"


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (
            b"spc=" + quote("spc=" + B64, safe="").encode(),
            "application/x-www-form-urlencoded",
            "form",
        ),
        (
            b"spc=" + quote(json.dumps({"spc": B64}), safe="").encode(),
            "application/x-www-form-urlencoded",
            "JSON",
        ),
        (base64.b64encode(B64.encode()), "text/plain", "base64"),
        (b"spc=!!!not-base64!!!", "application/x-www-form-urlencoded", "base64"),
        (
            b"spc=" + base64.b64encode(b"\x00\x00\x00\x01short"),
            "application/x-www-form-urlencoded",
            "at least 16",
        ),
    ],
)
async def test_malformed_spc_is_400_and_never_forwarded(
    make_stack: StackFactory, body: bytes, content_type: str, fragment: str
) -> None:
    stack = await make_stack()
    async with stack.http.post(
        stack.url("/v1/license/fairplay/both-1"), data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 400
        error = await resp.json()
    assert error["error"] == "bad_spc"
    assert fragment.lower() in error["message"].lower()
    assert (await stack.stats(stack.legacy))["total"] == 0


@pytest.mark.parametrize("faults", [{"error_json_rate": 1.0}])
async def test_json_error_in_200_is_502(make_stack: StackFactory, faults: dict[str, float]) -> None:
    stack = await make_stack()
    await stack.faults(stack.legacy, **faults)
    body, content_type = CLIENT_BODIES["binary"]
    async with stack.http.post(
        stack.url("/v1/license/fairplay/both-1"), data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_bad_response"


async def test_certificate_endpoint(make_stack: StackFactory, tmp_path: object) -> None:
    from pathlib import Path

    cert = Path(str(tmp_path)) / "fp.der"
    cert.write_bytes(b"0\x82\x01\x0atest-der-bytes")
    stack = await make_stack(fairplay={"certificate_file": str(cert)})
    async with stack.http.get(stack.url("/v1/certificate/fairplay")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/x-x509-ca-cert"
        assert await resp.read() == cert.read_bytes()
    async with stack.http.get(stack.url("/v1/certificate/fairplay?format=base64")) as resp:
        assert base64.b64decode(await resp.text()) == cert.read_bytes()


async def test_no_certificate_configured_is_404(make_stack: StackFactory) -> None:
    stack = await make_stack()
    async with stack.http.get(stack.url("/v1/certificate/fairplay")) as resp:
        assert resp.status == 404


def _body_with_asset_id(client_format: str, asset_id: str) -> tuple[bytes, str]:
    """A player body carrying `assetId`, in each format that has room for one."""
    if client_format == "form":
        return f"spc={quote(B64, safe='')}&assetId={quote(asset_id)}".encode(), (
            "application/x-www-form-urlencoded"
        )
    return json.dumps({"spc": B64, "assetId": asset_id}).encode(), "application/json"


@pytest.mark.parametrize("client_format", ["form", "json"])
@pytest.mark.parametrize("body_asset", ["both-2", "res-both-2", "../both-1", "both-1 "])
async def test_body_asset_id_naming_another_asset_is_refused_before_upstream(
    make_stack: StackFactory, client_format: str, body_asset: str
) -> None:
    """A player entitled to both-1 only cannot reach another title through the body's assetId."""
    stack = await make_stack()
    token = player_token(["both-1"])
    body, content_type = _body_with_asset_id(client_format, body_asset)
    before = (await stack.stats(stack.legacy))["total"]
    async with stack.anon.post(
        stack.url("/v1/license/fairplay/both-1"),
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 400
        answer = await resp.json()
    assert answer["error"] == "asset_mismatch"
    assert answer["request_id"] == resp.headers["X-Request-Id"]
    assert (await stack.stats(stack.legacy))["total"] == before


@pytest.mark.parametrize("client_format", ["form", "json"])
@pytest.mark.parametrize("body_asset", ["both-1", "res-both-1"])
async def test_body_asset_id_naming_the_path_asset_or_its_resource_id_is_forwarded(
    make_stack: StackFactory, client_format: str, body_asset: str
) -> None:
    """Players copy assetId from the skd:// URI: the asset id or its drmResourceId both pass."""
    stack = await make_stack()
    token = player_token(["both-1"])
    body, content_type = _body_with_asset_id(client_format, body_asset)
    async with stack.anon.post(
        stack.url("/v1/license/fairplay/both-1"),
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert decode_for_client(client_format, await resp.read()) == expected_ckc("legacy")
    seen = (await stack.stats(stack.legacy))["recent"][-1]
    sent = f"spc={quote(B64, safe='')}&assetId={body_asset}".encode()  # legacy wants form
    assert seen["body_sha256"] == hashlib.sha256(sent).hexdigest()


@pytest.mark.parametrize("client_format", ["binary", "base64"])
async def test_formats_without_asset_id_send_the_path_asset(
    make_stack: StackFactory, client_format: str
) -> None:
    """Binary and base64 bodies have no assetId: the provider gets the entitled path asset."""
    stack = await make_stack()
    body, content_type = CLIENT_BODIES[client_format]
    async with stack.http.post(
        stack.url("/v1/license/fairplay/both-1"), data=body, headers={"Content-Type": content_type}
    ) as resp:
        assert resp.status == 200, await resp.text()
    seen = (await stack.stats(stack.legacy))["recent"][-1]
    sent = f"spc={quote(B64, safe='')}&assetId=both-1".encode()
    assert seen["body_sha256"] == hashlib.sha256(sent).hexdigest()
