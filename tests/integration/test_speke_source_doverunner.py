"""A DoveRunner provider as the key source: the gateway's SPEKE endpoint gets its keys from
DoveRunner's CPIX API (`key_api.protocol: doverunner_cpix`, the KMS token as the last path
segment of the KMS URL), emulated by the DoveRunner emulator from DoveRunner's documentation.

The packager asks the gateway; the gateway posts a CPIX document whose root `id` is the
title's id at DoveRunner; the keys answered are the ones the emulator derives from its key
seed, the content id and the kid; the catalog records `incoming` (the DoveRunner provider) as
the title's key holder. The KMS token never reaches a log line nor an error answer.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.emulator.kinds.doverunner import cpix_key, cpix_key_seed
from proxy.domain import KeyId
from tests.conftest import StackFactory
from tests.integration.speke_sources import (
    INCOMING_SOURCE,
    assert_recorded_and_repeatable,
    speke_source_stack,
)
from tests.integration.test_speke import answered_keys, request_for
from tests.keys.cpix_docs import AUDIO, VIDEO
from tests.keys.speke_stack import SpekeStack

DOVERUNNER = demo_secrets("doverunner")
KMS_TOKEN_ENV = "DOVERUNNER_KMS_TOKEN"
KMS_PATH = "/v2/cpix/doverunner/getKey"


def doverunner_key(content_id: str, kid: KeyId) -> bytes:
    """The key the DoveRunner emulator derives for `kid` of `content_id` (demo key seed)."""
    return cpix_key(cpix_key_seed(DOVERUNNER), content_id, uuid.UUID(hex=kid))


def cpix_key_api(url: str) -> dict[str, Any]:
    return {
        "protocol": "doverunner_cpix",
        "base_url": url + KMS_PATH,
        "token": {"env": KMS_TOKEN_ENV},
    }


async def doverunner_speke_stack(
    make_stack: StackFactory, tmp_path: Path, kms_token: str = DOVERUNNER["kms_token"]
) -> SpekeStack:
    return await speke_source_stack(
        make_stack,
        tmp_path,
        INCOMING_SOURCE,
        kind="doverunner",
        secrets=DOVERUNNER,
        key_api=cpix_key_api,
        env={KMS_TOKEN_ENV: kms_token},
    )


async def test_a_packager_gets_the_keys_doverunners_cpix_api_derives(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await doverunner_speke_stack(make_stack, tmp_path)
    status, headers, body = await speke.post(request_for("res-dr-1"), asset="dr-1")
    assert status == 200, body
    assert headers["X-Speke-Version"] == "2.0"
    keys = answered_keys(body)
    assert keys == {
        VIDEO: doverunner_key("res-dr-1", VIDEO),
        AUDIO: doverunner_key("res-dr-1", AUDIO),
    }
    # DoveRunner was asked over its CPIX API, for the title's id there.
    record = (await speke.stack.stats(speke.stack.incoming))["recent"][-1]
    assert (record["route"], record["status"]) == ("keys", 200)
    assert record["path"].startswith(KMS_PATH + "/")
    assert record["verified"] == {"content_id": "res-dr-1", "key_ids": [VIDEO, AUDIO]}
    # Derived from the seed, content id and kid: a retry gets the same keys.
    await assert_recorded_and_repeatable(
        speke, "dr-1", "res-dr-1", [VIDEO, AUDIO], keys, DOVERUNNER["kms_token"]
    )


async def test_a_wrong_kms_token_fails_the_request_and_is_never_shown(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    wrong = "wrong-kms-token-5d1e7b"
    speke = await doverunner_speke_stack(make_stack, tmp_path, kms_token=wrong)
    status, _, body = await speke.post(request_for("res-dr-2"), asset="dr-2")
    assert status == 502, body  # DoveRunner refused the token: not retryable
    assert json.loads(body)["error"] == "key_source_failed"
    record = (await speke.stack.stats(speke.stack.incoming))["recent"][-1]
    assert record["status"] == 401
    async with speke.stack.anon.get(
        speke.stack.internal("/admin/catalog/dr-2"), headers=speke.stack.admin_headers()
    ) as resp:
        assert resp.status == 404  # nothing recorded
    logs = speke.stack.logs.getvalue()
    for token in (wrong, DOVERUNNER["kms_token"]):
        assert token not in logs and token.encode() not in body


async def test_a_title_keyed_at_doverunner_is_licensed_there_at_once(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    speke = await doverunner_speke_stack(make_stack, tmp_path)
    status, _, body = await speke.post(request_for("res-dr-3"), asset="dr-3")
    assert status == 200, body
    stack = speke.stack
    # Routed to legacy by default, the key-holder guard sends the title to DoveRunner.
    async with stack.http.post(
        stack.url("/v1/license/widevine/dr-3"), data=b"\x08\x01doverunner-cpix-title"
    ) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.read()).startswith(b"EMULATED-LICENSE\ndoverunner\nwidevine\n")
    record = (await stack.stats(stack.incoming))["recent"][-1]
    assert record["route"] == "license"
    assert record["verified"]["cid"] == "res-dr-3"
