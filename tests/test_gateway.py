"""The request flow without HTTP: a real SQLite catalog, real rules, and a fake ProviderClient
per provider recording what it was asked (the seam lets a test swap the provider side)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy.catalog import SqliteCatalog
from proxy.config import Config, ProviderSettings, UrlTemplate, parse_config
from proxy.domain import AssetId, KeyId
from proxy.errors import (
    AssetMismatch,
    BadSpc,
    CircuitOpen,
    GatewayError,
    NoProvider,
    UnknownAsset,
    UpstreamOverloaded,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.gateway import Gateway
from proxy.observability import metrics
from proxy.observability.access import RequestInfo
from proxy.observability.metrics import REGISTRY
from proxy.routing.watcher import RulesWatcher
from proxy.upstream.base import (
    Call,
    ClientInfo,
    FairPlayCall,
    KeyCall,
    LicenseCall,
    ProviderAnswer,
)
from proxy.upstream.breaker import CLOSED, OPEN
from proxy.upstream.deadline import TRY_LIMITS, TryLimits
from tests.conftest import ENV, gateway_raw_config, write_catalog

CLIENT = ClientInfo(forwarded_for="192.0.2.7", platform="web", user_id="user-1")
SPC = b"\x00\x00\x00\x01" + bytes(range(64))


@dataclass
class FakeProvider:
    """A ProviderClient that answers from a script and records every call."""

    settings: ProviderSettings
    fail_with: GatewayError | None = None
    calls: list[tuple[Call, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    # Errors for the next calls, in order, before `fail_with` applies (None: an answer).
    script: list[GatewayError | None] = field(default_factory=list)
    limits: list[TryLimits | None] = field(default_factory=list)  # TRY_LIMITS at each call
    on_call: Callable[[], None] | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    def endpoint(self, drm: str) -> UrlTemplate | None:
        return self.settings.endpoint(drm)

    async def _answer(self, call: Call, endpoint: UrlTemplate) -> ProviderAnswer:
        self.calls.append((call, endpoint.template))
        self.limits.append(TRY_LIMITS.get())
        if self.on_call is not None:
            self.on_call()
        if self.gate is not None:
            await self.gate.wait()
        if self.script:
            scripted = self.script.pop(0)
            if scripted is not None:
                raise scripted
        elif self.fail_with is not None:
            raise self.fail_with
        return ProviderAnswer(f"{self.name}:{call.drm}".encode(), "application/octet-stream", ())

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._answer(call, endpoint)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._answer(call, endpoint)

    async def key(self, call: KeyCall, endpoint: UrlTemplate) -> bytes:
        return (await self._answer(call, endpoint)).body.ljust(16, b".")[:16]

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


RULES = """
version: "t1"
default: legacy
rules:
  - name: incoming-with-fallback
    when: {asset_ids: [both-1]}
    route: incoming
    fallback: legacy
  - name: shadowed
    when: {asset_ids: [both-2], drm: [playready]}
    route: legacy
    shadow: {to: incoming, percent: 100}
  - name: incoming-no-fallback
    when: {asset_ids: [both-2]}
    route: incoming
"""


class FakeClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Flow:
    gateway: Gateway
    legacy: FakeProvider
    incoming: FakeProvider
    config: Config
    clock: FakeClock = field(default_factory=FakeClock)


async def make_flow(tmp_path: Path, resilience: dict[str, Any] | None = None) -> Flow:
    rules = tmp_path / "routing.yaml"
    rules.write_text(RULES)
    db = write_catalog(tmp_path / "catalog.db")
    raw = gateway_raw_config(db, "http://127.0.0.1:9", "http://127.0.0.1:9")
    raw["routing"] = {"rules_file": str(rules)}
    if resilience is not None:
        raw["resilience"] = resilience
    config = parse_config(raw, base_dir=tmp_path, env=ENV)
    legacy = FakeProvider(config.providers["legacy"])
    incoming = FakeProvider(config.providers["incoming"])
    clock = FakeClock()
    gateway = Gateway(
        config,
        SqliteCatalog(db),
        {"legacy": legacy, "incoming": incoming},
        RulesWatcher.from_config(config),
        clock=clock,
    )
    return Flow(gateway, legacy, incoming, config, clock)


@pytest.fixture
async def flow(tmp_path: Path) -> Any:
    flow = await make_flow(tmp_path)
    yield flow
    await flow.gateway.close()
    await flow.gateway.catalog.close()


def info() -> RequestInfo:
    return RequestInfo("req-0001")


async def test_license_goes_to_the_decided_provider_at_its_endpoint(flow: Flow) -> None:
    record = info()
    answer = await flow.gateway.license(
        record,
        drm="widevine",
        asset_id=AssetId("both-2"),
        body=b"\x08\x04",
        content_type=None,
        client=CLIENT,
    )
    assert answer.body == b"incoming:widevine"
    ((call, endpoint),) = flow.incoming.calls
    assert isinstance(call, LicenseCall) and call.challenge == b"\x08\x04"
    assert call.entry.drm_resource_id == "res-both-2" and call.request_id == "req-0001"
    assert endpoint.endswith("/license/widevine/{drm_resource_id}")
    assert (record.provider, record.rule, record.rules_version) == (
        "incoming",
        "incoming-no-fallback",
        "t1",
    )
    assert record.upstream_ms is not None and not flow.legacy.calls


async def test_fallback_on_an_upstream_failure(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamUnavailable()
    record = info()
    key = await flow.gateway.key(
        record, asset_id=AssetId("both-1"), key_id=KeyId("0" * 32), client=CLIENT
    )
    assert key == b"legacy:aes128..."
    assert (record.fallback_from, record.provider) == ("incoming", "legacy")
    assert len(flow.incoming.calls) == len(flow.legacy.calls) == 1


async def test_a_provider_rejection_is_not_retried_elsewhere(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamRejected(403)
    with pytest.raises(UpstreamRejected):
        await flow.gateway.key(
            info(), asset_id=AssetId("both-1"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.legacy.calls


async def test_no_fallback_configured_means_the_error_reaches_the_player(flow: Flow) -> None:
    flow.incoming.fail_with = UpstreamUnavailable()
    with pytest.raises(UpstreamUnavailable):
        await flow.gateway.key(
            info(), asset_id=AssetId("both-2"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.legacy.calls


async def test_shadow_copy_does_not_delay_or_change_the_answer(flow: Flow) -> None:
    flow.incoming.gate = asyncio.Event()  # the shadow hangs until released
    flow.incoming.fail_with = UpstreamUnavailable()
    answer = await flow.gateway.license(
        info(),
        drm="playready",
        asset_id=AssetId("both-2"),
        body=b"<challenge/>",
        content_type="text/xml",
        client=CLIENT,
    )
    assert answer.body == b"legacy:playready"
    await asyncio.sleep(0)
    assert len(flow.incoming.calls) == 1  # sent, still waiting
    flow.incoming.gate.set()


async def test_shadow_copies_use_their_own_clients_and_are_capped_not_queued(
    tmp_path: Path,
) -> None:
    flow = await make_flow(tmp_path, resilience={"shadow_max_in_flight": 2})
    shadow = FakeProvider(flow.config.providers["incoming"], gate=asyncio.Event())
    gateway = Gateway(
        flow.config,
        flow.gateway.catalog,
        flow.gateway.providers,
        flow.gateway.rules,
        shadow_providers={"legacy": flow.legacy, "incoming": shadow},
        clock=flow.clock,
    )
    dropped = REGISTRY.get_sample_value(
        "drm_gateway_shadow_requests_total", {"provider": "incoming", "result": "dropped"}
    )
    try:
        for _ in range(5):  # the shadow provider hangs: two copies in flight, three dropped
            answer = await gateway.license(
                info(),
                drm="playready",
                asset_id=AssetId("both-2"),
                body=b"<challenge/>",
                content_type="text/xml",
                client=CLIENT,
            )
            assert answer.body == b"legacy:playready"  # live traffic unaffected
        await asyncio.sleep(0)
        assert len(shadow.calls) == 2 and flow.incoming.calls == []  # never the live client
        after = REGISTRY.get_sample_value(
            "drm_gateway_shadow_requests_total", {"provider": "incoming", "result": "dropped"}
        )
        assert (after or 0) - (dropped or 0) == 3
    finally:
        await gateway.close()
        await flow.gateway.close()
        await flow.gateway.catalog.close()


async def test_fairplay_call_carries_the_decoded_spc_and_the_ckc_is_encoded_for_the_player(
    flow: Flow,
) -> None:
    body = b"spc=" + base64.b64encode(SPC) + b"&assetId=res-both-2"
    answer = await flow.gateway.fairplay(
        info(),
        asset_id=AssetId("both-2"),
        body=body,
        content_type="application/x-www-form-urlencoded",
        client=CLIENT,
    )
    ((call, _),) = flow.incoming.calls
    assert isinstance(call, FairPlayCall) and call.spc.spc == SPC
    # form clients get <ckc>base64</ckc> by default
    assert answer.body.strip() == b"<ckc>" + base64.b64encode(b"incoming:fairplay") + b"</ckc>"


async def test_fairplay_body_naming_another_asset_is_refused_before_any_call(flow: Flow) -> None:
    body = b"spc=" + base64.b64encode(SPC) + b"&assetId=both-1"
    with pytest.raises(AssetMismatch):
        await flow.gateway.fairplay(
            info(),
            asset_id=AssetId("both-2"),
            body=body,
            content_type="application/x-www-form-urlencoded",
            client=CLIENT,
        )
    assert not flow.incoming.calls and not flow.legacy.calls


async def test_malformed_spc_is_refused_before_the_catalog_is_read(flow: Flow) -> None:
    record = info()
    with pytest.raises(BadSpc):
        await flow.gateway.fairplay(
            record,
            asset_id=AssetId("not-in-catalog"),
            body=b"spc=%%%",
            content_type="application/x-www-form-urlencoded",
            client=CLIENT,
        )
    assert record.asset_id is None  # never reached resolve()


async def test_unknown_asset(flow: Flow) -> None:
    with pytest.raises(UnknownAsset):
        await flow.gateway.key(
            info(), asset_id=AssetId("nope"), key_id=KeyId("0" * 32), client=CLIENT
        )


async def test_guard_keeps_assets_away_from_providers_that_cannot_serve_them(flow: Flow) -> None:
    """orphan's keys are held by nobody we know: no provider may be chosen."""
    with pytest.raises(NoProvider):
        await flow.gateway.key(
            info(), asset_id=AssetId("orphan"), key_id=KeyId("0" * 32), client=CLIENT
        )
    assert not flow.incoming.calls and not flow.legacy.calls


# --- resilience: circuit breaker, deadline shares, retry budget, fallback statuses ---------


def unavailable(*, before_answer: bool) -> UpstreamUnavailable:
    error = UpstreamUnavailable()
    error.before_answer = before_answer
    return error


async def widevine(flow: Flow, asset: str, record: RequestInfo | None = None) -> ProviderAnswer:
    return await flow.gateway.license(
        record or info(),
        drm="widevine",
        asset_id=AssetId(asset),
        body=b"\x08\x04",
        content_type=None,
        client=CLIENT,
    )


def retries(provider: str, result: str) -> float:
    labels = {"provider": provider, "result": result}
    return metrics.REGISTRY.get_sample_value("drm_gateway_upstream_retries_total", labels) or 0


@pytest.fixture
async def guarded(tmp_path: Path) -> Any:
    """A flow whose circuits open after 3 failures in a row, for 5 s."""
    flow = await make_flow(
        tmp_path,
        {
            "circuit_breaker": {"consecutive_failures": 3, "open_seconds": 5},
            "retry_budget": {"ratio": 0.1, "min_retries": 2},
            "providers": {"incoming": {"fallback_statuses": [404]}},
        },
    )
    yield flow
    await flow.gateway.close()
    await flow.gateway.catalog.close()


async def test_an_open_circuit_sends_straight_to_the_fallback(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamUnavailable()
    for _ in range(3):
        assert (await widevine(guarded, "both-1")).body == b"legacy:widevine"
    circuit = guarded.gateway.resilience.circuit("incoming", "widevine")
    assert circuit.state == OPEN and len(guarded.incoming.calls) == 3
    record = info()
    assert (await widevine(guarded, "both-1", record)).body == b"legacy:widevine"
    assert len(guarded.incoming.calls) == 3  # no failed call first
    assert (record.fallback_from, record.provider) == ("incoming", "legacy")
    # Other DRM systems of the same provider have circuits of their own.
    assert guarded.gateway.resilience.circuit("incoming", "playready").state == CLOSED


async def test_without_a_fallback_an_open_circuit_answers_503_with_retry_after(
    guarded: Flow,
) -> None:
    guarded.incoming.fail_with = unavailable(before_answer=False)
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            await widevine(guarded, "both-2")
    guarded.clock.now += 1.2
    with pytest.raises(CircuitOpen) as raised:
        await widevine(guarded, "both-2")
    assert (raised.value.status, raised.value.retry_after) == (503, 4)  # ceil(5 - 1.2)
    assert len(guarded.incoming.calls) == 3


async def test_a_probe_after_the_open_interval_closes_the_circuit(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamUnavailable()
    for _ in range(3):
        await widevine(guarded, "both-1")
    circuit = guarded.gateway.resilience.circuit("incoming", "widevine")
    guarded.clock.now += 5.0
    guarded.incoming.fail_with = None
    assert (await widevine(guarded, "both-1")).body == b"incoming:widevine"  # the probe
    assert circuit.state == CLOSED and len(guarded.incoming.calls) == 4


async def test_a_failed_probe_opens_it_again(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamUnavailable()
    for _ in range(3):
        await widevine(guarded, "both-1")
    guarded.clock.now += 5.0
    circuit = guarded.gateway.resilience.circuit("incoming", "widevine")
    assert (await widevine(guarded, "both-1")).body == b"legacy:widevine"  # probe failed
    assert circuit.state == OPEN and len(guarded.incoming.calls) == 4


async def test_a_content_4xx_is_an_answer_not_a_failure(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamRejected(403)
    for _ in range(5):
        with pytest.raises(UpstreamRejected):
            await widevine(guarded, "both-1")
    assert guarded.gateway.resilience.circuit("incoming", "widevine").state == CLOSED
    assert not guarded.legacy.calls  # 403 is not in incoming's fallback_statuses


async def test_a_configured_4xx_falls_back(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamRejected(404)  # unknown content at incoming
    record = info()
    assert (await widevine(guarded, "both-1", record)).body == b"legacy:widevine"
    assert record.fallback_from == "incoming"
    guarded.legacy.fail_with = UpstreamRejected(404)  # legacy's own 404s do not fall back
    with pytest.raises(UpstreamRejected):
        await widevine(guarded, "both-1")


async def test_a_throttling_provider_falls_back_or_gives_503_with_its_retry_after(
    guarded: Flow,
) -> None:
    guarded.incoming.fail_with = UpstreamOverloaded(retry_after=7)
    assert (await widevine(guarded, "both-1")).body == b"legacy:widevine"
    with pytest.raises(UpstreamOverloaded) as raised:
        await widevine(guarded, "both-2")
    assert (raised.value.status, raised.value.retry_after) == (503, 7)
    await widevine(guarded, "both-1")  # the third failure in a row opens the circuit ...
    circuit = guarded.gateway.resilience.circuit("incoming", "widevine")
    assert circuit.state == OPEN
    assert circuit.retry_after(guarded.clock.now) == pytest.approx(7)  # ... for its 7 s


async def test_a_failure_before_any_answer_byte_is_retried_once(guarded: Flow) -> None:
    before = retries("incoming", "retried")
    guarded.incoming.script = [unavailable(before_answer=True), None]
    assert (await widevine(guarded, "both-2")).body == b"incoming:widevine"
    assert len(guarded.incoming.calls) == 2 and retries("incoming", "retried") == before + 1
    guarded.incoming.script = [unavailable(before_answer=True), unavailable(before_answer=True)]
    with pytest.raises(UpstreamUnavailable):
        await widevine(guarded, "both-2")
    assert len(guarded.incoming.calls) == 4  # at most one retry per request


async def test_a_failure_after_answer_bytes_is_not_retried(guarded: Flow) -> None:
    guarded.incoming.script = [unavailable(before_answer=False), None]
    with pytest.raises(UpstreamUnavailable):
        await widevine(guarded, "both-2")
    assert len(guarded.incoming.calls) == 1


async def test_retries_stop_when_the_budget_is_spent(tmp_path: Path) -> None:
    """min_retries 2, ratio 0.1: with 5 requests in the window, 2 retries, then none."""
    flow = await make_flow(
        tmp_path,
        {
            "circuit_breaker": {"consecutive_failures": 100},
            "retry_budget": {"ratio": 0.1, "min_retries": 2},
        },
    )
    refused = retries("incoming", "budget_refused")
    outcomes = []
    for _ in range(5):
        flow.incoming.script = [unavailable(before_answer=True), None]
        try:
            await widevine(flow, "both-2")
            outcomes.append("retried")
        except UpstreamUnavailable:
            outcomes.append("refused")
        flow.clock.now += 0.01
    assert outcomes == ["retried", "retried", "refused", "refused", "refused"]
    assert len(flow.incoming.calls) == 5 + 2
    assert retries("incoming", "budget_refused") == refused + 3
    flow.clock.now += 11  # the window has moved on: the budget is back
    flow.incoming.script = [unavailable(before_answer=True), None]
    assert (await widevine(flow, "both-2")).body == b"incoming:widevine"
    await flow.gateway.close()
    await flow.gateway.catalog.close()


async def test_a_request_with_a_fallback_falls_back_instead_of_retrying(guarded: Flow) -> None:
    guarded.incoming.script = [unavailable(before_answer=True), None]
    assert (await widevine(guarded, "both-1")).body == b"legacy:widevine"
    assert len(guarded.incoming.calls) == 1


async def test_each_try_gets_its_share_of_the_deadline(guarded: Flow) -> None:
    """4 s deadline, provider timeouts 2 s: the first try may take 1.9 s (+0.1 s pool
    wait), the fallback gets what is left."""
    guarded.incoming.fail_with = UpstreamTimeout()

    def slow() -> None:
        guarded.clock.now += 1.5

    guarded.incoming.on_call = slow
    assert (await widevine(guarded, "both-1")).body == b"legacy:widevine"
    assert guarded.incoming.limits == [TryLimits(1.9, 0.1)]
    assert guarded.legacy.limits == [TryLimits(2.0, 0.1)]  # 2.5 s left: the provider's 2 s
    guarded.incoming.on_call = lambda: setattr(guarded.clock, "now", guarded.clock.now + 3.0)
    await widevine(guarded, "both-1")
    last = guarded.legacy.limits[-1]
    assert last is not None and last.timeout == pytest.approx(0.9)  # 1 s left, less the wait
    assert TRY_LIMITS.get() is None  # set for the try only


async def test_no_fallback_when_the_deadline_is_spent(guarded: Flow) -> None:
    guarded.incoming.fail_with = UpstreamTimeout()
    guarded.incoming.on_call = lambda: setattr(guarded.clock, "now", guarded.clock.now + 3.98)
    with pytest.raises(UpstreamTimeout):
        await widevine(guarded, "both-1")
    assert not guarded.legacy.calls


async def test_no_shadow_copy_to_a_provider_whose_circuit_is_open(guarded: Flow) -> None:
    circuit = guarded.gateway.resilience.circuit("incoming", "playready")
    for _ in range(3):
        circuit.failure(circuit.admit(guarded.clock.now), guarded.clock.now)
    assert circuit.state == OPEN
    answer = await guarded.gateway.license(
        info(),
        drm="playready",
        asset_id=AssetId("both-2"),  # legacy, shadowed to incoming at 100%
        body=b"<challenge/>",
        content_type="text/xml",
        client=CLIENT,
    )
    await asyncio.sleep(0)
    assert answer.body == b"legacy:playready" and not guarded.incoming.calls


async def test_the_circuits_as_data(guarded: Flow) -> None:
    snapshot = guarded.gateway.resilience.snapshot()
    names = {(c["provider"], c["drm"]) for c in snapshot["circuits"]}
    assert ("incoming", "widevine") in names and ("legacy", "aes128") in names
    assert set(snapshot["retry_budgets"]) == {"legacy", "incoming"}
