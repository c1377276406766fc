"""An Axinom provider as the key source: the gateway's SPEKE endpoint gets its keys from the
Axinom Key Service's own SPEKE v2 endpoint (`key_api.protocol: speke`, HTTP Basic with the
tenant id and management key), emulated by the Axinom emulator from Axinom's documentation.

The packager asks the gateway; the gateway asks Axinom; the keys answered are the ones the
emulator derives from its key seed; the catalog records `incoming` (the Axinom provider) as
the title's key holder. A SPEKE endpoint only generates keys, so a rules file whose `keys:`
section names it as a mirror is refused (the gateway unready, 503 to the packager).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.emulator.kinds.axinom import KeyServiceTenant
from proxy.domain import KeyId
from tests.conftest import StackFactory
from tests.integration.speke_sources import (
    INCOMING_SOURCE,
    assert_recorded_and_repeatable,
    speke_source_stack,
)
from tests.integration.test_speke import answered_keys, eventually, request_for
from tests.keys.cpix_docs import AUDIO, VIDEO
from tests.keys.speke_stack import SpekeStack

AXINOM = demo_secrets("axinom")
MANAGEMENT_KEY_ENV = "AXINOM_MANAGEMENT_KEY"
AXINOM_SOURCE = INCOMING_SOURCE
LEGACY_WITH_AXINOM_MIRROR: dict[str, Any] = {
    "default": {"source": "legacy", "mirrors": ["incoming"]}
}


def axinom_key(kid: KeyId) -> bytes:
    """The key the Axinom emulator derives for `kid` from its demo tenant's key seed."""
    return KeyServiceTenant.from_secrets(AXINOM).key(uuid.UUID(hex=kid))


async def axinom_speke_stack(
    make_stack: StackFactory, tmp_path: Path, keys: dict[str, Any]
) -> SpekeStack:
    """The gateway with `incoming` an `axinom` provider whose key API is the Axinom
    emulator's SPEKE v2 endpoint (HTTP Basic with the demo tenant's management key)."""

    def speke_key_api(url: str) -> dict[str, Any]:
        return {
            "protocol": "speke",
            "base_url": f"{url}/api/SpekeV2",
            "basic": {
                "username": AXINOM["tenant_id"],
                "password": {"env": MANAGEMENT_KEY_ENV},
            },
        }

    return await speke_source_stack(
        make_stack,
        tmp_path,
        keys,
        kind="axinom",
        secrets=AXINOM,
        key_api=speke_key_api,
        env={MANAGEMENT_KEY_ENV: AXINOM["management_key"]},
    )


async def test_a_packager_gets_the_keys_the_axinom_key_service_derives(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await axinom_speke_stack(make_stack, tmp_path, AXINOM_SOURCE)
    status, headers, body = await speke.post(request_for("res-ax-1"), asset="ax-1")
    assert status == 200, body
    assert headers["X-Speke-Version"] == "2.0"
    keys = answered_keys(body)
    assert keys == {VIDEO: axinom_key(VIDEO), AUDIO: axinom_key(AUDIO)}
    # Axinom was asked over its SPEKE v2 endpoint, for the title's drmResourceId.
    record = (await speke.stack.stats(speke.stack.incoming))["recent"][-1]
    assert (record["path"], record["status"]) == ("/api/SpekeV2", 200)
    assert record["verified"] == {
        "tenant_id": AXINOM["tenant_id"],
        "content_id": "res-ax-1",
        "key_ids": [VIDEO, AUDIO],
    }
    # Axinom derives the keys from its key seed: a retry gets the same ones.
    await assert_recorded_and_repeatable(
        speke, "ax-1", "res-ax-1", [VIDEO, AUDIO], keys, AXINOM["management_key"]
    )


async def test_a_title_keyed_at_axinom_is_licensed_there_at_once(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await axinom_speke_stack(make_stack, tmp_path, AXINOM_SOURCE)
    status, _, body = await speke.post(request_for("res-ax-2"), asset="ax-2")
    assert status == 200, body
    stack = speke.stack
    # Routed to legacy by default, the key-holder guard sends the title to Axinom, whose
    # entitlement lists the key ids the SPEKE request recorded.
    async with stack.http.post(
        stack.url("/v1/license/widevine/ax-2"), data=b"\x08\x01axinom-speke-title"
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.read()).startswith(b"EMULATED-LICENSE\naxinom\nwidevine\n")
    record = (await stack.stats(stack.incoming))["recent"][-1]
    assert record["route"] == "license"
    assert sorted(k.replace("-", "") for k in record["verified"]["key_ids"]) == sorted(
        [VIDEO, AUDIO]
    )


async def test_an_axinom_speke_provider_named_as_a_mirror_is_refused_by_the_rules(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """SPEKE only generates keys: a rules file naming Axinom a mirror is refused where it is
    read (unready, every problem listed), never found out by a packager's call."""
    speke = await axinom_speke_stack(make_stack, tmp_path, LEGACY_WITH_AXINOM_MIRROR)
    async with speke.stack.anon.get(speke.stack.internal("/readyz")) as resp:
        assert resp.status == 503
        ready = await resp.json()
    assert any(
        "keys.default.mirrors[0]: provider 'incoming' has a key_api that only generates keys"
        in problem
        for problem in ready["problems"]
    ), ready
    status, _, body = await speke.post(request_for("res-ax-3"), asset="ax-3")
    assert status == 503 and json.loads(body)["error"] == "rules_unavailable", body
    assert (await speke.stack.stats(speke.stack.incoming))["recent"] == []  # nothing sent

    # Rules naming it as the source instead take effect on reload, and work.
    speke.rules.write_text(
        yaml.safe_dump({"version": "k2", "default": "legacy", "rules": [], "keys": AXINOM_SOURCE})
    )

    async def reloaded() -> bool:
        status, _, _ = await speke.post(request_for("res-ax-3"), asset="ax-3")
        return status == 200

    await eventually(reloaded)
    assert (await speke.catalog_entry("ax-3"))["key_holders"] == ["incoming"]
