"""Load shedding: the cap on player requests in flight and the bounded queue in front of it,
as a unit and through the gateway against a slow emulated provider."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.errors import Overloaded
from proxy.observability.metrics import REGISTRY
from proxy.server.admission import Admission
from tests.conftest import Stack, StackFactory


async def test_a_free_slot_is_taken_at_once_and_a_queued_request_gets_the_next() -> None:
    admission = Admission(max_requests=1, max_queued=1, queue_seconds=5)
    await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    assert admission.queued == 1 and not waiting.done()
    admission.release()
    async with asyncio.timeout(5):
        await waiting
    assert admission.queued == 0
    admission.release()


async def test_past_the_queue_or_its_wait_a_request_is_overloaded() -> None:
    admission = Admission(max_requests=1, max_queued=1, queue_seconds=0.05)
    await admission.acquire()
    waiting = asyncio.create_task(admission.acquire())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as full:  # the queue holds one: a second cannot queue
        await admission.acquire()
    assert full.value.detail == "queue_full"
    with pytest.raises(Overloaded) as late:  # the queued one's wait runs out
        await waiting
    assert late.value.detail == "queue_timeout" and admission.queued == 0
    admission.release()
    await admission.acquire()  # the slot is free again: no slot was lost to the timeouts


async def test_with_no_queue_a_request_past_the_cap_is_refused_at_once() -> None:
    admission = Admission(max_requests=2, max_queued=0, queue_seconds=5)
    await admission.acquire()
    await admission.acquire()
    with pytest.raises(Overloaded):
        await admission.acquire()


async def _license(stack: Stack) -> tuple[int, dict[str, str], dict[str, Any]]:
    url = stack.url("/v1/license/widevine/both-2")
    async with stack.http.post(url, data=b"\x08\x01challenge") as resp:
        body: dict[str, Any] = {} if resp.status == 200 else await resp.json()
        return resp.status, dict(resp.headers), body


async def test_an_overloaded_gateway_answers_503_with_retry_after_before_any_work(
    make_stack: StackFactory,
) -> None:
    def configure(raw: dict[str, Any]) -> None:
        raw["server"]["clients"] = {
            "in_flight": {"max_requests": 2, "max_queued": 1, "queue_seconds": 0.2}
        }

    stack = await make_stack(configure=configure)
    await stack.faults(stack.legacy, latency_ms=1500)
    await stack.faults(stack.incoming, latency_ms=1500)
    before = REGISTRY.get_sample_value(
        "drm_gateway_refused_requests_total", {"reason": "overloaded", "detail": "queue_full"}
    )
    answers = await asyncio.gather(*(_license(stack) for _ in range(6)))
    statuses = sorted(status for status, _, _ in answers)
    overloaded = [a for a in answers if a[0] == 503 and a[2].get("error") == "overloaded"]
    # Two in flight; one queued then timed out (0.2 s); three could not queue.
    assert len(overloaded) == 4 and statuses.count(200) == 2, statuses
    assert all(headers.get("Retry-After") == "1" for _, headers, _ in overloaded)
    after = REGISTRY.get_sample_value(
        "drm_gateway_refused_requests_total", {"reason": "overloaded", "detail": "queue_full"}
    )
    assert (after or 0) - (before or 0) == 3
    calls = (await stack.stats(stack.legacy))["total"] + (await stack.stats(stack.incoming))[
        "total"
    ]
    assert calls == 2  # the refused requests never reached a provider
