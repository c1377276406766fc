"""`server.provider_header`: license and key answers name the provider that answered, over
loopback against both emulated providers; off by default, exposed to allowed browser origins
when on, the fallback's name after a fallback, and never on an error answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from proxy.access.cors import PROVIDER_HEADER
from proxy.dev.emulator import derive_key
from tests.conftest import SEED, Stack, StackFactory

# both-1 goes to incoming with legacy as its fallback; legacy-only has no drmResourceId and
# stays on legacy (the default); incoming-only is a new release at incoming, no fallback.
RULES = """
version: "provider-header-1"
default: legacy
rules:
  - name: incoming-first
    when: {asset_ids: [both-1]}
    route: incoming
    fallback: legacy
  - name: new-releases
    when: {tags_any: [new-release]}
    route: incoming
"""
ORIGIN = "https://player.example.com"
KEY_ID = "00112233445566778899aabbccddeeff"


async def header_stack(make_stack: StackFactory, tmp_path: Path, *, on: bool | None) -> Stack:
    """A gateway with the rules above and CORS for ORIGIN; `on` None: the option unset."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES)

    def configure(raw: dict[str, Any]) -> None:
        raw["routing"] = {"rules_file": str(rules), "poll_seconds": 5}
        raw["cors"] = {"allowed_origins": [ORIGIN]}
        if on is not None:
            raw["server"]["provider_header"] = on

    return await make_stack(configure=configure)


async def license_answer(stack: Stack, asset: str, **headers: str) -> tuple[int, Any, bytes]:
    url = stack.url(f"/v1/license/widevine/{asset}")
    async with stack.http.post(url, data=b"\x08\x04", headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def served_by(body: bytes) -> str:
    """The provider named in an emulated synthetic license."""
    assert body.startswith(b"EMULATED-LICENSE\n"), body[:80]
    return body.split(b"\n")[1].decode()


async def test_answers_name_no_provider_unless_configured(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await header_stack(make_stack, tmp_path, on=None)
    status, headers, body = await license_answer(stack, "incoming-only", Origin=ORIGIN)
    assert (status, served_by(body)) == (200, "incoming")
    assert PROVIDER_HEADER not in headers
    assert headers["Access-Control-Expose-Headers"] == "X-Request-Id"
    async with stack.http.get(stack.url(f"/v1/keys/legacy-only/{KEY_ID}")) as resp:
        assert resp.status == 200 and len(await resp.read()) == 16
        assert PROVIDER_HEADER not in resp.headers


async def test_license_and_key_answers_name_the_routed_provider(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await header_stack(make_stack, tmp_path, on=True)
    for asset, provider in (("incoming-only", "incoming"), ("legacy-only", "legacy")):
        status, headers, body = await license_answer(stack, asset, Origin=ORIGIN)
        assert (status, served_by(body), headers[PROVIDER_HEADER]) == (200, provider, provider)
        # A page on ORIGIN may read it: the answer lists it among the exposed headers.
        assert headers["Access-Control-Expose-Headers"] == f"X-Request-Id, {PROVIDER_HEADER}"
    # Keys too; the key is the one the named provider derives for the title.
    for asset, provider, resource in (
        ("legacy-only", "legacy", "res-legacy-only"),
        ("incoming-only", "incoming", "res-inc-1"),
    ):
        async with stack.http.get(stack.url(f"/v1/keys/{asset}/{KEY_ID}")) as resp:
            assert resp.status == 200
            assert await resp.read() == derive_key(SEED, resource, KEY_ID)
            assert resp.headers[PROVIDER_HEADER] == provider
    # Another origin reads nothing of it (no CORS headers), though the header is sent.
    status, headers, _ = await license_answer(stack, "legacy-only", Origin="https://x.example")
    assert (status, headers[PROVIDER_HEADER]) == (200, "legacy")
    assert "Access-Control-Expose-Headers" not in headers
    assert "Access-Control-Allow-Origin" not in headers


async def test_after_a_fallback_the_header_names_the_provider_that_answered(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await header_stack(make_stack, tmp_path, on=True)
    status, headers, body = await license_answer(stack, "both-1")
    assert (status, served_by(body), headers[PROVIDER_HEADER]) == (200, "incoming", "incoming")
    await stack.faults(stack.incoming, status=503, retry_after=3)
    status, headers, body = await license_answer(stack, "both-1")
    assert (status, served_by(body), headers[PROVIDER_HEADER]) == (200, "legacy", "legacy")
    assert (await stack.stats(stack.incoming))["total"] == 2  # incoming was tried first


async def test_error_answers_name_no_provider(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await header_stack(make_stack, tmp_path, on=True)
    await stack.faults(stack.incoming, status=503, retry_after=3)
    status, headers, body = await license_answer(stack, "incoming-only")  # no fallback
    assert status == 503 and b'"upstream_overloaded"' in body
    assert PROVIDER_HEADER not in headers
    async with stack.anon.get(stack.url(f"/v1/keys/legacy-only/{KEY_ID}")) as resp:
        assert resp.status == 401
        assert PROVIDER_HEADER not in resp.headers
