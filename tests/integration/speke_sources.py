"""A gateway whose `incoming` provider is a kind's emulator used as a SPEKE key source (its
`key_api` a protocol other than native), `legacy` the legacy emulator with its native key API,
and a SPEKE endpoint on the internal listener: shared by the tests/integration/test_speke_source_*
tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from proxy.dev.kinds import kind_env, provider_section
from proxy.domain import KeyId
from tests.conftest import StackFactory
from tests.integration.test_speke import answered_keys, request_for
from tests.keys.speke_stack import (
    BEARER,
    KEY_ENV,
    LEGACY_KEY_API_TOKEN,
    PUBLIC_BASE,
    SpekeStack,
    rules_text,
)

# The key API timeouts the tests give (a hang fails fast).
TIMEOUTS = {"connect_seconds": 1.0, "total_seconds": 2.0}
# A `keys:` section naming `incoming` the key source of every title.
INCOMING_SOURCE: dict[str, Any] = {"default": {"source": "incoming"}}


async def speke_source_stack(
    make_stack: StackFactory,
    tmp_path: Path,
    keys: dict[str, Any],
    *,
    kind: str,
    secrets: Mapping[str, str],
    key_api: Callable[[str], dict[str, Any]],
    env: Mapping[str, str],
) -> SpekeStack:
    """The stack, `incoming` being a `kind` provider served by its emulator (with `secrets`,
    any resource accepted) whose `key_api` section is `key_api(<emulator URL>)`; `env` adds
    the secrets that section reads. `keys` is the rules file's `keys:` section."""
    rules = tmp_path / "routing.yaml"
    rules.write_text(rules_text(keys))

    def configure(raw: dict[str, Any]) -> None:
        legacy = raw["providers"]["legacy"]
        legacy["key_api"] = {
            "base_url": legacy["base_url"],
            "token": {"env": "LEGACY_KEY_API_TOKEN"},
            "timeouts": TIMEOUTS,
        }
        url = raw["providers"]["incoming"]["base_url"]
        section = provider_section(kind, url)
        section["key_api"] = {**key_api(url), "timeouts": TIMEOUTS}
        raw["providers"]["incoming"] = section

    stack = await make_stack(
        legacy={"key_api_token": LEGACY_KEY_API_TOKEN},
        incoming={"kind": kind, "secrets": dict(secrets), "resources": None},
        configure=configure,
        env={**KEY_ENV, **kind_env(kind), **env},
        routing={"rules_file": str(rules), "poll_seconds": 0.1},
        speke={
            "listener": "internal",
            "credential": BEARER,
            "public_base_url": PUBLIC_BASE,
            "max_body_bytes": 2 * 1024 * 1024,
        },
    )
    return SpekeStack(stack, rules, stack.gateway.internal_url + "/v2/speke")


async def assert_recorded_and_repeatable(
    speke: SpekeStack,
    asset_id: str,
    resource_id: str,
    key_ids: list[KeyId],
    keys: Mapping[KeyId, bytes],
    secret: str,
) -> None:
    """After a packager got `keys` for the title: the catalog records its drmResourceId, key
    ids and `incoming` as holder; a retry gets the same keys (the source derives them); and
    neither the source's credential (`secret`) nor a content key is in the logs."""
    entry = await speke.catalog_entry(asset_id)
    assert entry["drm_resource_id"] == resource_id
    assert entry["key_ids"] == key_ids
    assert entry["key_holders"] == ["incoming"]
    status, _, again = await speke.post(request_for(resource_id), asset=asset_id)
    assert status == 200 and answered_keys(again) == keys
    logs = speke.stack.logs.getvalue()
    assert secret not in logs
    assert not any(key.hex() in logs for key in keys.values())
