"""Tests for proxy.routing.diff: buckets against a plain per-request evaluation, user-ramp
shares against real user ids, guards, sampling bounds and the exit verdict."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml

from proxy.catalog.base import CatalogEntry
from proxy.errors import NoProvider
from proxy.routing.diff import (
    MAX_VARIANTS,
    DiffRun,
    Reservoir,
    TooManyVariants,
    Totals,
    build_variants,
    error_bound,
    served_drms,
    share_interval,
    verdict,
)
from proxy.routing.file import parse_rules
from proxy.routing.rules import ProviderTraits, RequestContext, RuleSet, evaluate

PROVIDERS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(
        needs_drm_resource_id=True,
        serves=frozenset({"widevine", "playready", "clearkey", "aes128"}),
    ),
    "backup": ProviderTraits(needs_drm_resource_id=False, needs_key_ids=True),
}
DRMS = served_drms(PROVIDERS)


def rules(*items: dict[str, Any], version: str = "t") -> RuleSet:
    text = yaml.safe_dump({"version": version, "default": "legacy", "rules": list(items)})
    return parse_rules(text, source=version, providers=PROVIDERS)


def ramp(percent: float, *, name: str = "ramp", **extra: Any) -> dict[str, Any]:
    return {"name": name, "route": "incoming", "percent": percent, **extra}


def catalog(size: int, seed: int = 7) -> list[CatalogEntry]:
    """Titles of every kind the guards and conditions look at."""
    rng = random.Random(seed)
    holders = [None, frozenset({"legacy"}), frozenset({"legacy", "incoming"}), frozenset()]
    tags = [frozenset(), frozenset({"sport"}), frozenset({"kids", "sport"})]
    entries = []
    for i in range(size):
        asset = f"{rng.choice(['live-', 'vod-', 'x'])}{i}"
        entries.append(
            CatalogEntry(
                asset_id=asset,
                drm_resource_id=None if rng.random() < 0.1 else f"r-{i % 997}",
                key_holders=rng.choice(holders),
                tags=rng.choice(tags),
                key_ids=("0" * 32,) if rng.random() < 0.5 else (),
            )
        )
    return entries


def run(old: RuleSet, new: RuleSet, entries: list[CatalogEntry], show: int = 3) -> DiffRun:
    diff = DiffRun(old, new, PROVIDERS, default="legacy", show=show)
    diff.add(entries[: len(entries) // 2])
    diff.add(entries[len(entries) // 2 :])  # batches add up
    return diff


def provider(rules: RuleSet, entry: CatalogEntry, drm: str) -> str:
    try:
        return evaluate(rules, RequestContext(drm, entry.asset_id, entry), PROVIDERS).provider
    except NoProvider:
        return "none"


def test_served_drms_include_aes128_and_every_drm_some_provider_serves() -> None:
    assert DRMS == ("widevine", "playready", "fairplay", "clearkey", "aes128")
    only = {"p": ProviderTraits(needs_drm_resource_id=False, serves=frozenset({"aes128"}))}
    assert served_drms(only) == ("aes128",)


def test_counts_match_a_plain_evaluation_of_every_title() -> None:
    """The signature cache must give what evaluating each title and DRM system gives."""
    old = rules(
        ramp(30, when={"asset_prefixes": ["live-"]}, name="live"),
        ramp(10, stickiness="drm_resource_id"),
        {"name": "kids", "route": "backup", "when": {"tags_all": ["kids", "sport"]}},
        version="old",
    )
    new = rules(
        ramp(70, when={"asset_prefixes": ["live-"]}, name="live"),
        ramp(5, stickiness="drm_resource_id"),
        {"name": "pinned", "route": "incoming", "when": {"asset_ids": ["vod-3", "x4", "vod-5"]}},
        version="new",
    )
    entries = catalog(3000)
    result = run(old, new, entries).result()
    moved: set[str] = set()
    back: set[str] = set()
    pairs: dict[str, int] = {}
    for entry in entries:
        for drm in DRMS:
            before, after = provider(old, entry, drm), provider(new, entry, drm)
            if before != after:
                (back if after == "legacy" else moved).add(entry.asset_id)
                pairs[f"{before}->{after}"] = pairs.get(f"{before}->{after}", 0) + 1
    assert result.totals.titles == 3000
    assert (result.totals.moved, result.totals.moved_back) == (len(moved), len(back))
    assert moved and back  # the rules were made to move titles both ways
    counted: dict[str, int] = {}
    for row in result.rows:
        for pair, count in row.moves.items():
            counted[pair] = counted.get(pair, 0) + count
    assert counted == pairs
    assert result.signatures < 1000  # titles alike share one evaluation


def test_held_back_per_guard_and_counted_under_the_rule_that_wanted_the_title() -> None:
    entries = [
        CatalogEntry("ok", "r1", frozenset({"legacy", "incoming"})),
        CatalogEntry("no-id", None, frozenset({"legacy", "incoming"})),
        CatalogEntry("keys-at-legacy", "r3", frozenset({"legacy"})),
    ]
    result = run(rules(version="old"), rules(ramp(100)), entries).result()
    rows = {(row.rule, row.drm): row for row in result.rows}
    widevine = rows["ramp", "widevine"]
    assert widevine.counts["moved"] == 1 and widevine.samples["moved"] == ["ok"]
    assert widevine.held_by_reason == {"guard_no_resource_id": 1, "guard_key_holders": 1}
    assert widevine.held_samples["guard_key_holders"] == ["keys-at-legacy"]
    # incoming does not serve FairPlay: the rule wanted every title there.
    assert rows["ramp", "fairplay"].held_by_reason == {"guard_unserved_drm": 3}
    assert result.totals.held_back == 3 and result.totals.moved == 1
    assert result.totals.moved_back == 0
    assert result.samples["held_back"][0]["detail"].startswith("guard_")


def test_a_later_rule_that_moves_the_title_wins_over_a_guarded_one() -> None:
    entry = CatalogEntry("t", None, None, key_ids=("0" * 32,))
    new = rules(ramp(100), {"name": "rest", "route": "backup"})  # ramp guarded: no id
    result = run(rules(version="old"), new, [entry]).result()
    assert result.totals.held_back == 0 and result.totals.moved == 1
    assert {(row.rule, row.drm): row.moves for row in result.rows} == {
        ("rest", drm): {"legacy->backup": 1} for drm in DRMS
    }


def test_user_ramp_share_matches_real_users() -> None:
    """25% -> 60% by user: each title moves for 35% of users; checked with 4,000 user ids."""
    old = rules(ramp(25, stickiness="user"), version="old")
    new = rules(ramp(60, stickiness="user"), version="new")
    entry = CatalogEntry("t-1", "r-1", None)
    result = run(old, new, [entry]).result()
    row = next(r for r in result.rows if r.rule == "ramp" and r.drm == "widevine")
    assert row.counts["moved"] == 1 and row.request_dependent == 1
    assert row.weighted["moved"] == pytest.approx(0.35)
    users = [f"user-{i}" for i in range(4000)]

    def at(rules: RuleSet, user: str) -> str:
        ctx = RequestContext("widevine", entry.asset_id, entry, user_id=user)
        return evaluate(rules, ctx, PROVIDERS).provider

    share = sum(at(old, u) != at(new, u) for u in users) / len(users)
    assert share == pytest.approx(0.35, abs=0.03)
    back = run(new, old, [entry]).result()
    assert back.totals.moved_back == 1 and back.totals.moved == 0


def test_platform_rules_are_evaluated_for_the_platforms_they_name() -> None:
    new = rules({"name": "ios", "route": "incoming", "when": {"platforms": ["iOS"]}})
    result = run(rules(version="old"), new, [CatalogEntry("t", "r", None)]).result()
    assert result.totals.moved == 1 and result.totals.request_dependent == 1
    assert len(build_variants(rules(version="old"), new)) == 2  # ios, any other


def test_too_many_request_shapes_are_refused() -> None:
    items = [
        ramp(50, name=f"u{i}", stickiness="user", when={"platforms": [f"p{i}"]}) for i in range(8)
    ]
    with pytest.raises(TooManyVariants, match=str(MAX_VARIANTS)):
        build_variants(rules(version="old"), rules(*items))


def test_samples_are_capped_at_show() -> None:
    entries = [CatalogEntry(f"a{i}", f"r{i}", None) for i in range(50)]
    result = run(rules(version="old"), rules(ramp(100)), entries, show=2).result()
    assert len(result.samples["moved"]) == 2
    assert all(len(ids) <= 2 for row in result.rows for ids in row.samples.values())


def test_reservoir_is_uniform_and_bounded() -> None:
    hits = [0] * 10
    for seed in range(2000):
        keep: Reservoir[CatalogEntry] = Reservoir(3, random.Random(seed))
        keep.add(CatalogEntry(str(i), None) for i in range(10))
        assert len(keep.kept) == 3 and keep.seen == 10
        for entry in keep.kept:
            hits[int(entry.asset_id)] += 1
    assert all(abs(h / 2000 - 0.3) < 0.05 for h in hits)


def test_share_interval() -> None:
    low, high = share_interval(50, 100, 10**9)
    assert low == pytest.approx(0.404, abs=0.002) and high == pytest.approx(0.596, abs=0.002)
    low, high = share_interval(0, 1000, 10**6)
    assert low == 0.0 and 0.003 < high < 0.005  # none seen is not "none there"
    assert share_interval(7, 100, 100) == pytest.approx((0.07, 0.07))  # the whole catalog


def test_error_bound_covers_the_truth_and_scales() -> None:
    population = [i < 2300 for i in range(10_000)]  # 23% move
    covered = 0
    for seed in range(200):
        sample = random.Random(seed).sample(population, 500)
        bound = error_bound(Totals(titles=500, moved=sum(sample)), 10_000)
        covered += bound["moved"]["estimate_low"] <= 2300 <= bound["moved"]["estimate_high"]
    assert covered >= 180  # a 95% interval, allowing for chance


def test_verdict() -> None:
    assert verdict(Totals(titles=10, moved=3), default="legacy", max_moves=None) == (0, [])
    code, reasons = verdict(Totals(titles=10, moved_back=1), default="legacy", max_moves=None)
    assert code == 1 and "back toward 'legacy'" in reasons[0]
    assert verdict(Totals(titles=10, moved=3), default="legacy", max_moves=3)[0] == 0
    assert verdict(Totals(titles=10, moved=4), default="legacy", max_moves=3)[0] == 1
    code, reasons = verdict(
        Totals(titles=10, moved=1), default="legacy", max_moves=50, population=1000
    )
    assert code == 1 and "100 title(s) move (estimated" in reasons[0]
