"""Resilience against the emulated providers' fault modes, over loopback: the circuit
breaker, the deadline and its shares, the retry budget, throttling providers and the 4xx
statuses configured to fall back (issue 17, items 1, 2, 3 and 6)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import INCOMING_RESOURCES, Stack, StackFactory

# both-1 and both-2 go to incoming, with legacy as the fallback; legacy-only (no
# drmResourceId) and incoming-only (only incoming holds its keys) have no fallback.
RULES = """
version: "resilience-1"
default: legacy
rules:
  - name: incoming-first
    when: {asset_ids: [both-1, both-2]}
    route: incoming
    fallback: legacy
"""
WIDEVINE = "/v1/license/widevine/{}"


async def resilient_stack(
    make_stack: StackFactory, tmp_path: Path, resilience: dict[str, Any], **kw: Any
) -> Stack:
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES)
    return await make_stack(
        routing={"rules_file": str(rules), "poll_seconds": 5}, resilience=resilience, **kw
    )


async def license_of(stack: Stack, asset: str) -> tuple[int, bytes, dict[str, str]]:
    async with stack.http.post(stack.url(WIDEVINE.format(asset)), data=b"\x08\x04") as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def served_by(body: bytes) -> str:
    """The provider named in an emulated synthetic license."""
    assert body.startswith(b"EMULATED-LICENSE\n"), body[:80]
    return body.split(b"\n")[1].decode()


async def upstream_calls(stack: Stack, emulator: Any) -> int:
    total: int = (await stack.stats(emulator))["total"]
    return total


async def metric(stack: Stack, name: str, **labels: str) -> float:
    async with stack.http.get(stack.internal("/metrics")) as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


async def circuit_state(stack: Stack, provider: str, drm: str) -> float:
    return await metric(stack, "drm_gateway_circuit_state", provider=provider, drm=drm)


def transitions(stack: Stack) -> list[tuple[str, str, str]]:
    """(provider, drm, new state) of every circuit transition logged so far."""
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    moves = [ln for ln in lines if ln["event"] == "circuit_transition"]
    return [(ln["provider"], ln["drm"], ln["new"]) for ln in moves]


async def test_a_failing_provider_is_cut_off_and_let_back_in_when_it_recovers(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await resilient_stack(
        make_stack, tmp_path, {"circuit_breaker": {"consecutive_failures": 5, "open_seconds": 1}}
    )
    await stack.faults(stack.incoming, error_rate=1.0)
    for _ in range(5):  # each fails at incoming, then falls back
        status, body, _ = await license_of(stack, "both-1")
        assert (status, served_by(body)) == (200, "legacy")
    assert await upstream_calls(stack, stack.incoming) == 5
    assert await circuit_state(stack, "incoming", "widevine") == 2
    # The registry is the process's: counters are compared with their value before.
    rejected_before = await metric(
        stack, "drm_gateway_circuit_rejected_total", provider="incoming", drm="widevine"
    )
    started = time.monotonic()
    for _ in range(20):  # open: straight to legacy, incoming untouched
        status, body, _ = await license_of(stack, "both-1")
        assert (status, served_by(body)) == (200, "legacy")
    assert time.monotonic() - started < 1.0, "the loop outlasted the open interval"
    assert await upstream_calls(stack, stack.incoming) == 5
    rejected = await metric(
        stack, "drm_gateway_circuit_rejected_total", provider="incoming", drm="widevine"
    )
    assert rejected == rejected_before + 20
    # Its PlayReady circuit is its own: still closed, so PlayReady still reaches incoming.
    await stack.faults(stack.incoming)  # the provider recovers
    async with stack.http.post(
        stack.url("/v1/license/playready/both-1"), data=b"<challenge/>"
    ) as resp:
        assert resp.status == 200 and served_by(await resp.read()) == "incoming"
    await asyncio.sleep(1.05)  # the open interval ends: the next request is a probe
    status, body, _ = await license_of(stack, "both-1")
    assert (status, served_by(body)) == (200, "incoming")
    assert await circuit_state(stack, "incoming", "widevine") == 0
    assert transitions(stack) == [
        ("incoming", "widevine", "open"),
        ("incoming", "widevine", "half_open"),
        ("incoming", "widevine", "closed"),
    ]


async def test_an_open_circuit_without_a_fallback_answers_503_with_retry_after(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await resilient_stack(
        make_stack, tmp_path, {"circuit_breaker": {"consecutive_failures": 3, "open_seconds": 30}}
    )
    await stack.faults(stack.incoming, error_rate=1.0)
    for _ in range(3):
        status, body, _ = await license_of(stack, "incoming-only")
        assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
    status, body, headers = await license_of(stack, "incoming-only")
    assert (status, json.loads(body)["error"]) == (503, "circuit_open")
    assert 29 <= int(headers["Retry-After"]) <= 30
    assert await upstream_calls(stack, stack.incoming) == 3


async def test_a_slow_provider_falls_back_within_the_deadline(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """Deadline 2 s: incoming's try gets 0.9 s (half, less the pool wait); at +1.5 s it
    times out and legacy answers well within the 2 s."""
    stack = await resilient_stack(make_stack, tmp_path, {"deadline_seconds": 2})
    await stack.faults(stack.incoming, latency_ms=1500)
    started = time.monotonic()
    status, body, _ = await license_of(stack, "both-1")
    elapsed = time.monotonic() - started
    assert (status, served_by(body)) == (200, "legacy")
    assert 0.85 <= elapsed < 2.0, elapsed
    lines = [json.loads(line) for line in stack.logs.getvalue().splitlines()]
    (fallback,) = [ln for ln in lines if ln["event"] == "fallback"]
    assert (fallback["provider"], fallback["error"]) == ("incoming", "upstream_timeout")


async def test_both_providers_slow_is_a_504_within_the_deadline(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await resilient_stack(make_stack, tmp_path, {"deadline_seconds": 1.5})
    await stack.faults(stack.incoming, latency_ms=3000)
    await stack.faults(stack.legacy, latency_ms=3000)
    started = time.monotonic()
    status, body, _ = await license_of(stack, "both-1")
    elapsed = time.monotonic() - started
    assert (status, json.loads(body)["error"]) == (504, "upstream_timeout")
    assert elapsed <= 1.5 + 0.1, elapsed


async def retried_and_refused(stack: Stack, provider: str) -> tuple[float, float]:
    name = "drm_gateway_upstream_retries_total"
    return (
        await metric(stack, name, provider=provider, result="retried"),
        await metric(stack, name, provider=provider, result="budget_refused"),
    )


async def test_a_reset_before_the_answer_is_retried_once(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await resilient_stack(make_stack, tmp_path, {})
    retried, refused = await retried_and_refused(stack, "legacy")
    # seed 1: the first request is reset, the second is not.
    await stack.faults(stack.legacy, reset_rate=0.5, seed=1)
    status, body, _ = await license_of(stack, "legacy-only")  # legacy, no fallback
    assert (status, served_by(body)) == (200, "legacy")
    assert await upstream_calls(stack, stack.legacy) == 2
    assert await retried_and_refused(stack, "legacy") == (retried + 1, refused)


async def test_retries_stop_when_the_budget_is_spent(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    """min_retries 2 and 10% of 6 requests: 2 retries, the other 4 requests fail at once."""
    stack = await resilient_stack(
        make_stack,
        tmp_path,
        {
            "circuit_breaker": {"consecutive_failures": 100, "min_requests": 1000},
            "retry_budget": {"ratio": 0.1, "min_retries": 2},
        },
    )
    retried, refused = await retried_and_refused(stack, "legacy")
    await stack.faults(stack.legacy, reset_rate=1.0)
    for _ in range(6):
        status, body, _ = await license_of(stack, "legacy-only")
        assert (status, json.loads(body)["error"]) == (502, "upstream_unavailable")
    assert await upstream_calls(stack, stack.legacy) == 6 + 2
    assert await retried_and_refused(stack, "legacy") == (retried + 2, refused + 4)


async def test_a_throttling_provider_gives_players_503_with_its_retry_after(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await resilient_stack(make_stack, tmp_path, {})
    await stack.faults(stack.legacy, status=429, retry_after=7)
    status, body, headers = await license_of(stack, "legacy-only")
    assert (status, headers["Retry-After"]) == (503, "7")
    answer = json.loads(body)
    assert answer["error"] == "upstream_overloaded"
    assert "EMULATED" not in body.decode()  # never the provider's body
    # Where the rule has a fallback, the player does not see it at all.
    await stack.faults(stack.legacy)
    await stack.faults(stack.incoming, status=503, retry_after=3)
    status, body, _ = await license_of(stack, "both-1")
    assert (status, served_by(body)) == (200, "legacy")


async def test_a_configured_404_falls_back_to_the_provider_holding_the_keys(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    # Incoming's key store has not got both-1's keys yet: it answers 404.
    without_both_1 = {k: v for k, v in INCOMING_RESOURCES.items() if k != "res-both-1"}
    configured = await resilient_stack(
        make_stack,
        tmp_path,
        {"providers": {"incoming": {"fallback_statuses": [404]}}},
        incoming={"resources": without_both_1},
    )
    status, body, _ = await license_of(configured, "both-1")
    assert (status, served_by(body)) == (200, "legacy")
    assert await upstream_calls(configured, configured.incoming) == 1
    # A 404 is an answer about the content, not a failure: the circuit stays closed.
    for _ in range(6):
        await license_of(configured, "both-1")
    assert await upstream_calls(configured, configured.incoming) == 7
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = await resilient_stack(make_stack, plain_dir, {}, incoming={"resources": without_both_1})
    status, body, _ = await license_of(plain, "both-1")
    assert (status, json.loads(body)["error"]) == (404, "upstream_rejected")
    assert await upstream_calls(plain, plain.legacy) == 0
