"""Tests for proxy.routing.rules: the rollout hash, validation, evaluation, guards and explain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.catalog.base import CatalogEntry
from proxy.errors import NoProvider
from proxy.routing.file import load_rules_file, parse_rules, summarize
from proxy.routing.rules import (
    BUCKETS,
    Decision,
    ProviderTraits,
    RequestContext,
    RulesError,
    RuleSet,
    Shadow,
    bucket,
    evaluate,
    explain,
)

ROOT = Path(__file__).resolve().parents[2]
ROUTING = ROOT / "rules" / "routing.yaml"
PROVIDERS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(needs_drm_resource_id=True),
}
# A third provider that needs no drmResourceId, to see evaluation move on to a later rule.
THREE = {**PROVIDERS, "backup": ProviderTraits(needs_drm_resource_id=False)}

asset_ids = st.text(min_size=1, max_size=40)
rule_names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda name: name != "default"
)
percents = st.integers(0, BUCKETS).map(lambda n: n / 100)


def doc(*rules: dict[str, Any], default: str = "legacy") -> dict[str, Any]:
    return {"version": "t1", "default": default, "rules": list(rules)}


def make(*rules: dict[str, Any], default: str = "legacy", providers: Any = PROVIDERS) -> RuleSet:
    text = yaml.safe_dump(doc(*rules, default=default))
    return parse_rules(text, source="test", providers=providers)


def ctx(
    drm: str = "widevine",
    asset: str = "a1",
    *,
    rid: str | None = "res-a1",
    holders: set[str] | None = None,
    tags: tuple[str, ...] = (),
    platform: str | None = None,
    app: str | None = None,
    user: str | None = None,
) -> RequestContext:
    key_holders = frozenset(holders) if holders is not None else None
    entry = CatalogEntry(asset, rid, key_holders, frozenset(tags))
    return RequestContext(drm, asset, entry, platform, app, user)


def problems_of(text: str, providers: Any = PROVIDERS) -> list[str]:
    with pytest.raises(RulesError) as info:
        parse_rules(text, source="test", providers=providers)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def rule_problems(rule: dict[str, Any], *before: dict[str, Any]) -> str:
    """Problems of a file holding `before` rules then `rule`, joined for substring checks."""
    return "\n".join(problems_of(yaml.safe_dump(doc(*before, rule))))


# --- the rollout hash -------------------------------------------------------------------

# Computed once and written down; a change of hash function or bucket count must fail here.
GOLDEN_BUCKETS = [
    ("ramp-widevine", "asset-0001", 4199),
    ("ramp-widevine", "asset-0002", 9218),
    ("ramp-widevine", "asset-0003", 1814),
    ("ramp-playready", "asset-0001", 5761),
    ("pin-canaries", "canary-0001", 2352),
    ("a", "", 2626),
    ("", "", 4368),
    ("r", "user-42", 9973),
    ("ramp-fairplay-apple", "res-9f3c", 2296),
    ("x.y-z_1", "ünïcode-ασσετ", 1702),
    ("ramp-widevine", "a" * 200, 1414),
    ("rule", "asset:with:colons", 7718),
]


@pytest.mark.parametrize(("rule", "value", "expected"), GOLDEN_BUCKETS)
def test_bucket_golden(rule: str, value: str, expected: int) -> None:
    assert bucket(rule, value) == expected


@settings(max_examples=200, deadline=None)
@given(name=rule_names, asset=asset_ids, low=percents, high=percents)
def test_raising_percent_only_adds(name: str, asset: str, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)

    def included(percent: float) -> bool:
        rules = make({"name": name, "route": "incoming", "percent": percent})
        return evaluate(rules, ctx(asset=asset), PROVIDERS).provider == "incoming"

    assert not included(low) or included(high)


@settings(max_examples=200, deadline=None)
@given(name=rule_names, asset=asset_ids)
def test_percent_zero_includes_none_and_hundred_all(name: str, asset: str) -> None:
    none = make({"name": name, "route": "incoming", "percent": 0})
    every = make({"name": name, "route": "incoming", "percent": 100})
    assert evaluate(none, ctx(asset=asset), PROVIDERS) == Decision(
        "legacy", "default", "rollout_excluded"
    )
    assert evaluate(every, ctx(asset=asset), PROVIDERS) == Decision("incoming", name, "rule_match")


@settings(max_examples=200, deadline=None)
@given(
    drm=st.sampled_from(["widevine", "playready", "fairplay", "clearkey", "aes128"]),
    asset=asset_ids,
    rid=st.none() | st.text(min_size=1, max_size=10),
    holders=st.none() | st.sets(st.sampled_from(["legacy", "incoming"])),
    tags=st.lists(st.sampled_from(["new-release", "kids", "4k"]), max_size=3),
    platform=st.none() | st.sampled_from(["ios", "iOS", "tvos", "android", "web"]),
    app=st.none() | st.sampled_from(["4.9.9", "5.0.0", "5.12.1", "junk"]),
    user=st.none() | st.text(max_size=10),
)
def test_decisions_are_deterministic(**fields: Any) -> None:
    fields["tags"] = tuple(fields["tags"])
    request = ctx(fields.pop("drm"), fields.pop("asset"), **fields)
    first = load_rules_file(ROUTING, providers=PROVIDERS)
    again = load_rules_file(ROUTING, providers=PROVIDERS)
    try:
        decision: Decision | None = evaluate(first, request, PROVIDERS)
    except NoProvider:
        decision = None
    for rules in (first, again):
        if decision is None:
            with pytest.raises(NoProvider):
                evaluate(rules, request, PROVIDERS)
        else:
            assert evaluate(rules, request, PROVIDERS) == decision
        assert explain(rules, request, PROVIDERS).decision == decision


def test_share_at_25_percent_is_close_to_25() -> None:
    rules = make({"name": "ramp-widevine", "route": "incoming", "percent": 25})
    hits = sum(
        evaluate(rules, ctx(asset=f"asset-{i:05d}"), PROVIDERS).provider == "incoming"
        for i in range(10_000)
    )
    assert 2_300 <= hits <= 2_700


def test_rollout_uses_round_of_percent_times_100() -> None:
    # 0.29 * 100 is 28.999999999999996 in floating point; the threshold must still be 29.
    rules = make({"name": "r", "route": "incoming", "percent": 0.29})
    assert rules.rules[0].threshold == 29
    asset = next(f"x{i}" for i in range(100_000) if bucket("r", f"x{i}") == 28)
    assert evaluate(rules, ctx(asset=asset), PROVIDERS).rule == "r"


def test_bucket_equal_to_threshold_is_out() -> None:
    rules = make({"name": "r", "route": "incoming", "percent": 25})
    at = next(f"x{i}" for i in range(200_000) if bucket("r", f"x{i}") == 2500)
    below = next(f"x{i}" for i in range(200_000) if bucket("r", f"x{i}") == 2499)
    assert evaluate(rules, ctx(asset=at), PROVIDERS).reason == "rollout_excluded"
    assert evaluate(rules, ctx(asset=below), PROVIDERS).reason == "rule_match"
    zero = make({"name": "r", "route": "incoming", "percent": 0})
    first = next(f"x{i}" for i in range(200_000) if bucket("r", f"x{i}") == 0)
    assert evaluate(zero, ctx(asset=first), PROVIDERS).reason == "rollout_excluded"


def test_stickiness_user_and_its_asset_stand_in() -> None:
    rules = make({"name": "r", "route": "incoming", "percent": 50, "stickiness": "user"})
    user_in = next(f"u{i}" for i in range(1000) if bucket("r", f"u{i}") < 5000)
    user_out = next(f"u{i}" for i in range(1000) if bucket("r", f"u{i}") >= 5000)
    for asset in ("a1", "a2", "a3", "a4"):
        assert evaluate(rules, ctx(asset=asset, user=user_in), PROVIDERS).rule == "r"
        assert evaluate(rules, ctx(asset=asset, user=user_out), PROVIDERS).rule == "default"
    asset_in = next(f"a{i}" for i in range(1000) if bucket("r", f"a{i}") < 5000)
    assert evaluate(rules, ctx(asset=asset_in, user=None), PROVIDERS).rule == "r"


def test_stickiness_drm_resource_id() -> None:
    rules = make(
        {"name": "r", "route": "legacy", "percent": 50, "stickiness": "drm_resource_id"},
        default="incoming",
        providers={"legacy": PROVIDERS["legacy"], "incoming": ProviderTraits(False)},
    )
    providers = {"legacy": PROVIDERS["legacy"], "incoming": ProviderTraits(False)}
    rid_in = next(f"res{i}" for i in range(1000) if bucket("r", f"res{i}") < 5000)
    rid_out = next(f"res{i}" for i in range(1000) if bucket("r", f"res{i}") >= 5000)
    for asset in ("a1", "a2", "a3"):
        assert evaluate(rules, ctx(asset=asset, rid=rid_in), providers).rule == "r"
        assert evaluate(rules, ctx(asset=asset, rid=rid_out), providers).rule == "default"
    asset_in = next(f"a{i}" for i in range(1000) if bucket("r", f"a{i}") < 5000)
    assert evaluate(rules, ctx(asset=asset_in, rid=None), providers).rule == "r"


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"percent": 120}, "rule 'ramp-widevine' (#2): percent: 120 is out of range 0-100"),
        ({"percent": -1}, "rule 'ramp-widevine' (#2): percent: -1 is out of range 0-100"),
        ({"percent": 12.345}, "rule 'ramp-widevine' (#2): percent: 12.345 has more than two"),
        ({"percent": "ten"}, "rule 'ramp-widevine' (#2): percent: must be a number"),
        ({"percent": True}, "rule 'ramp-widevine' (#2): percent: must be a number"),
        ({"percent": float("nan")}, "rule 'ramp-widevine' (#2): percent: nan is out of range"),
        ({"stickiness": "session"}, "rule 'ramp-widevine' (#2): stickiness: 'session' is not"),
        ({"when": {"drm": ["widevine", "wv"]}}, "rule 'ramp-widevine' (#2): when.drm: 'wv'"),
        ({"when": {"drm": "widevine"}}, "(#2): when.drm: must be a non-empty list"),
        ({"when": {"drm": []}}, "(#2): when.drm: must be a non-empty list"),
        ({"when": {"tags_any": ["ok", ""]}}, "(#2): when.tags_any[1]: must be a non-empty"),
        ({"when": {"tags": ["x"]}}, "rule 'ramp-widevine' (#2): when.tags: unknown field"),
        ({"when": ["drm"]}, "rule 'ramp-widevine' (#2): when: must be a mapping"),
        ({"when": {"drm_resource_id": "yes"}}, "(#2): when.drm_resource_id: 'yes' must be"),
        ({"when": {"drm_resource_id": True}}, "(#2): when.drm_resource_id: True must be"),
        ({"when": {"min_app_version": "5.x"}}, "(#2): when.min_app_version: '5.x' must be"),
        ({"when": {"min_app_version": 5.0}}, "(#2): when.min_app_version: 5.0 must be a quoted"),
        ({"rout": "legacy"}, "rule 'ramp-widevine' (#2): rout: unknown field (did you mean"),
        ({"route": "nobody"}, "(#2): route: provider 'nobody' is not configured"),
        ({"route": 7}, "rule 'ramp-widevine' (#2): route: must be a non-empty string"),
        ({"fallback": "nobody"}, "(#2): fallback: provider 'nobody' is not configured"),
        ({"fallback": "incoming"}, "(#2): fallback: must differ from route ('incoming')"),
        ({"shadow": {"to": "nobody", "percent": 1}}, "(#2): shadow.to: provider 'nobody' is"),
        ({"shadow": {"to": "incoming", "percent": 1}}, "(#2): shadow.to: must differ from"),
        ({"shadow": {"to": "legacy"}}, "(#2): shadow.percent: is required"),
        ({"shadow": {"to": "legacy", "percent": 101}}, "(#2): shadow.percent: 101 is out of"),
        ({"shadow": {"to": "legacy", "percent": 1, "x": 1}}, "(#2): shadow.x: unknown field"),
        ({"shadow": "legacy"}, "rule 'ramp-widevine' (#2): shadow: must be a mapping"),
        ({"enabled": "yes"}, "rule 'ramp-widevine' (#2): enabled: must be true or false"),
        ({"name": "pin"}, "rule 'pin' (#2): name: duplicate of rule #1"),
        ({"name": "Ramp Widevine"}, "rule 'Ramp Widevine' (#2): name: 'Ramp Widevine' must"),
        ({"name": "default"}, "rule 'default' (#2): name: 'default' is reserved"),
        ({"name": 12}, "rule #2: name: 12 must match"),
        ({"name": None}, "rule #2: name: None must match"),
    ],
)
def test_each_rule_problem_is_named_by_rule_and_field(rule: dict[str, Any], expected: str) -> None:
    base = {"name": "ramp-widevine", "route": "incoming"}
    pin = {"name": "pin", "route": "incoming"}
    assert expected in rule_problems({**base, **rule}, pin)


def test_missing_rule_fields() -> None:
    text = rule_problems({"percent": 5}, {"name": "ok", "route": "legacy"})
    assert "rule #2: name: is required" in text
    assert "rule #2: route: is required" in text
    assert "rule #1: must be a mapping" in "\n".join(
        problems_of("version: '1'\ndefault: legacy\nrules: [x]\n")
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("default: legacy\nrules: []\n", "version: is required"),
        ("version: '1'\nrules: []\n", "default: is required"),
        ("version: '1'\ndefault: legacy\n", "rules: is required"),
        ("version: 3\ndefault: legacy\nrules: []\n", "version: must be a non-empty string"),
        ("version: 2026-11-21\ndefault: legacy\nrules: []\n", 'quote it: version: "2026-11-21"'),
        ("version: '1'\ndefault: legacy\nrules: {}\n", "rules: must be a list"),
        ("version: '1'\ndefault: nobody\nrules: []\n", "default: provider 'nobody' is not"),
        ("version: '1'\ndefault: incoming\nrules: []\n", "default: provider 'incoming' needs a"),
        ("version: '1'\ndefault: legacy\nrules: []\nextra: 1\n", "extra: unknown field"),
        ("- a\n- b\n", "top level: must be a mapping"),
        ("", "the rules file is empty"),
        ("  \n# only a comment\n", "the rules file is empty"),
    ],
)
def test_each_file_problem(text: str, expected: str) -> None:
    assert expected in "\n".join(problems_of(text))


def test_yaml_syntax_error_has_its_line_number() -> None:
    text = "version: '1'\ndefault: legacy\nrules:\n  - name: a\n    route: [legacy\n"
    (problem,) = problems_of(text)
    assert problem.startswith("YAML syntax error at line 6")
    (problem,) = problems_of("version: '1'\ndefault: legacy\nrules: []\n  bad: indent\n")
    assert problem.startswith("YAML syntax error at line 4")


def test_duplicate_yaml_key_is_refused_with_its_line() -> None:
    text = "version: '1'\ndefault: legacy\nrules:\n  - name: a\n    percent: 5\n    percent: 50\n"
    (problem,) = problems_of(text)
    assert problem == "YAML syntax error at line 6, column 5: duplicate key 'percent'"


def test_every_problem_is_reported_at_once() -> None:
    text = yaml.safe_dump(
        {
            "version": "1",
            "default": "nobody",
            "color": "blue",
            "rules": [
                {"name": "a", "route": "legacy", "percent": 120},
                {"name": "a", "route": "ghost", "when": {"tags": ["x"], "drm": ["dvd"]}},
                {"name": "c", "route": "legacy", "stickiness": "moon"},
            ],
        }
    )
    problems = problems_of(text)
    expected = [
        "color: unknown field",
        "default: provider 'nobody' is not configured (known: incoming, legacy)",
        "rule 'a' (#1): percent: 120 is out of range 0-100",
        "rule 'a' (#2): name: duplicate of rule #1",
        "rule 'a' (#2): when.tags: unknown field",
        "rule 'a' (#2): when.drm: 'dvd' is not one of",
        "rule 'a' (#2): route: provider 'ghost' is not configured",
        "rule 'c' (#3): stickiness: 'moon' is not one of",
    ]
    for text_part in expected:
        assert any(text_part in problem for problem in problems), text_part
    assert len(problems) == len(expected)


def test_providers_none_skips_only_provider_checks() -> None:
    text = yaml.safe_dump(doc({"name": "a", "route": "ghost"}, default="anyone"))
    assert parse_rules(text, source="t", providers=None).default == "anyone"
    bad = yaml.safe_dump(doc({"name": "a", "route": "ghost", "percent": 101}))
    assert problems_of(bad, providers=None) == ["rule 'a' (#1): percent: 101 is out of range 0-100"]


def test_load_rules_file_refuses_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules_file(tmp_path / "missing.yaml", providers=PROVIDERS)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"version: '\xe9'\n")
    with pytest.raises(RulesError, match="is not UTF-8"):
        load_rules_file(latin, providers=PROVIDERS)


def test_ruleset_identity_and_admin_view(tmp_path: Path) -> None:
    text = "version: 'v7'\ndefault: legacy\nrules:\n  - {name: a, route: incoming, percent: 2.5}\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    rules = load_rules_file(path, providers=PROVIDERS)
    assert rules.version == "v7"
    assert rules.source == str(path)
    assert rules.sha256 == hashlib.sha256(text.encode()).hexdigest()
    view = json.loads(json.dumps(rules.to_dict()))
    assert view["rules"] == [{"name": "a", "route": "incoming", "percent": 2.5}]
    assert view["sha256"] == rules.sha256


# --- matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "minimum", "matches"),
    [
        ("5.10.0", "5.9.9", True),
        ("5.9.9", "5.10.0", False),
        ("5.0.0", "5.0.0", True),
        ("5.0", "5.0.0", True),
        ("5", "5.0.0", True),
        ("4.99.99", "5.0.0", False),
        ("5.0.0.1", "5.0.0", True),
        (" 5.1.0 ", "5.0.0", True),
        ("5.0.0-beta", "5.0.0", False),
        ("junk", "5.0.0", False),
        ("", "5.0.0", False),
        (None, "5.0.0", False),
        ("9" * 50, "5.0.0", False),
        ("\u0665.\u0660.\u0660", "1.0.0", False),  # Arabic-Indic digits
    ],
)
def test_min_app_version(app: str | None, minimum: str, matches: bool) -> None:
    rules = make({"name": "r", "route": "incoming", "when": {"min_app_version": minimum}})
    assert (evaluate(rules, ctx(app=app), PROVIDERS).rule == "r") is matches


@pytest.mark.parametrize(
    ("when", "fields", "matches"),
    [
        ({"platforms": ["ios", "tvos"]}, {"platform": "iOS"}, True),
        ({"platforms": ["iOS"]}, {"platform": "ios"}, True),
        ({"platforms": ["ios"]}, {"platform": "android"}, False),
        ({"platforms": ["ios"]}, {}, False),
        ({"tags_any": ["kids", "4k"]}, {"tags": ("4k",)}, True),
        ({"tags_any": ["kids", "4k"]}, {"tags": ("hdr",)}, False),
        ({"tags_all": ["kids", "4k"]}, {"tags": ("4k", "kids", "hdr")}, True),
        ({"tags_all": ["kids", "4k"]}, {"tags": ("4k",)}, False),
        ({"asset_prefixes": ["show-", "film-"]}, {"asset": "film-9"}, True),
        ({"asset_prefixes": ["show-", "film-"]}, {"asset": "clip-9"}, False),
        ({"asset_ids": ["a1", "a2"]}, {"asset": "a2"}, True),
        ({"asset_ids": ["a1", "a2"]}, {"asset": "a3"}, False),
        ({"drm": ["playready", "widevine"]}, {"drm": "widevine"}, True),
        ({"drm": ["clearkey", "aes128"]}, {"drm": "aes128"}, True),
        ({"drm": ["clearkey", "aes128"]}, {"drm": "fairplay"}, False),
        ({"drm_resource_id": "present"}, {"rid": "r1"}, True),
        ({"drm_resource_id": "present"}, {"rid": None}, False),
        ({"drm_resource_id": "absent"}, {"rid": None}, True),
        ({"drm_resource_id": "absent"}, {"rid": "r1"}, False),
        ({"drm": ["widevine"], "platforms": ["web"]}, {"platform": "web"}, True),
        (
            {"drm": ["widevine"], "platforms": ["web"]},
            {"drm": "playready", "platform": "web"},
            False,
        ),
        (None, {}, True),
        ({}, {"drm": "fairplay"}, True),
    ],
)
def test_conditions(when: dict[str, Any] | None, fields: dict[str, Any], matches: bool) -> None:
    # Route to a provider that needs nothing, so only the conditions decide.
    rules = make({"name": "r", "route": "backup", "when": when}, providers=THREE)
    assert (evaluate(rules, ctx(**fields), THREE).rule == "r") is matches


def test_first_match_wins_and_disabled_rules_are_skipped() -> None:
    rules = make(
        {"name": "off", "enabled": False, "route": "backup"},
        {"name": "first", "route": "incoming", "when": {"drm": ["widevine"]}},
        {"name": "second", "route": "backup"},
        providers=THREE,
    )
    assert evaluate(rules, ctx("widevine"), THREE) == Decision("incoming", "first", "rule_match")
    assert evaluate(rules, ctx("playready"), THREE) == Decision("backup", "second", "rule_match")


# --- guards -----------------------------------------------------------------------------


def test_guard_no_resource_id_falls_to_default_with_its_reason() -> None:
    rules = make({"name": "all-in", "route": "incoming"})
    decision = evaluate(rules, ctx(rid=None), PROVIDERS)
    assert decision == Decision("legacy", "default", "guard_no_resource_id")
    assert evaluate(rules, ctx(), PROVIDERS) == Decision("incoming", "all-in", "rule_match")


def test_guarded_rule_passes_on_to_the_next_rule() -> None:
    rules = make(
        {"name": "all-in", "route": "incoming"},
        {"name": "then-backup", "route": "backup"},
        providers=THREE,
    )
    decision = evaluate(rules, ctx(rid=None), THREE)
    assert decision == Decision("backup", "then-backup", "rule_match")


def test_key_holders_limit_the_choice() -> None:
    rules = make({"name": "all-in", "route": "incoming"})
    only_legacy = ctx(holders={"legacy"})
    assert evaluate(rules, only_legacy, PROVIDERS) == Decision(
        "legacy", "default", "guard_key_holders"
    )
    both = ctx(holders={"legacy", "incoming"})
    assert evaluate(rules, both, PROVIDERS).provider == "incoming"


def test_first_passed_on_rule_gives_the_reason() -> None:
    rules = make(
        {"name": "never", "route": "incoming", "percent": 0},
        {"name": "all-in", "route": "incoming"},
    )
    assert evaluate(rules, ctx(rid=None), PROVIDERS).reason == "rollout_excluded"


@pytest.mark.parametrize(
    ("rid", "holders", "why"),
    [
        (None, {"incoming"}, "no routable provider holds its keys"),
        ("res-1", set(), "no routable provider holds its keys"),
        ("res-1", {"elsewhere"}, "no routable provider holds its keys"),
    ],
)
def test_no_provider_when_nothing_passes_the_guards(
    rid: str | None, holders: set[str], why: str
) -> None:
    rules = make({"name": "other", "route": "incoming", "when": {"drm": ["fairplay"]}})
    with pytest.raises(NoProvider) as info:
        evaluate(rules, ctx("widevine", rid=rid, holders=holders), PROVIDERS)
    assert why in info.value.message
    assert "legacy" not in info.value.message and "incoming" not in info.value.message
    assert info.value.status == 503


def test_guarded_default_goes_to_a_provider_that_can_serve() -> None:
    # A new title whose keys exist only at the incoming provider, and no rule for it.
    rules = make({"name": "other", "route": "incoming", "when": {"drm": ["fairplay"]}})
    decision = evaluate(rules, ctx("widevine", rid="res-1", holders={"incoming"}), PROVIDERS)
    assert (decision.provider, decision.rule, decision.reason) == (
        "incoming",
        "guard:key_holders",
        "guard_key_holders",
    )


def test_guard_overriding_the_default_is_named_not_the_rule_passed_over() -> None:
    # A ramp excludes the asset, then the default lacks its keys: the key-holder guard chose.
    rules = make({"name": "ramp", "route": "incoming", "percent": 0})
    new_title = ctx(rid="res-1", holders={"incoming"})
    assert evaluate(rules, new_title, PROVIDERS) == Decision(
        "incoming", "guard:key_holders", "guard_key_holders"
    )
    result = explain(rules, new_title, PROVIDERS)
    assert [(v.rule, v.outcome) for v in result.verdicts] == [("ramp", "rollout_excluded")]
    assert result.override == (
        "'legacy' is unconfigured or lacks the keys (key holders: incoming); 'incoming' serves"
    )
    # The default serving after a ramp excluded the asset still says so, with no override.
    served = explain(rules, ctx(), PROVIDERS)
    assert served.decision == Decision("legacy", "default", "rollout_excluded")
    assert served.override is None


def test_resource_id_guard_overriding_the_default_is_named() -> None:
    # Only possible without the providers at parse time (rules check without --config).
    rules = make(
        {"name": "ramp", "route": "legacy", "percent": 0}, default="incoming", providers=None
    )
    decision = evaluate(rules, ctx(rid=None), PROVIDERS)
    assert decision == Decision("legacy", "guard:no_resource_id", "guard_no_resource_id")
    assert "'incoming' needs a drmResourceId" in str(
        explain(rules, ctx(rid=None), PROVIDERS).override
    )


def test_no_provider_for_a_default_needing_a_resource_id() -> None:
    rules = make(default="incoming", providers=None)
    only_incoming = {"incoming": PROVIDERS["incoming"]}
    with pytest.raises(NoProvider, match="no drmResourceId"):
        evaluate(rules, ctx(rid=None), only_incoming)


# Axinom-like: builds its entitlement from the key ids; serves no FairPlay here.
KEYED = {
    "legacy": ProviderTraits(needs_drm_resource_id=False),
    "incoming": ProviderTraits(
        needs_drm_resource_id=False,
        needs_key_ids=True,
        serves=frozenset({"widevine", "playready"}),
    ),
}
KID = "00112233445566778899aabbccddeeff"


def keyed_ctx(drm: str = "widevine", *, kids: tuple[str, ...] = (KID,)) -> RequestContext:
    entry = CatalogEntry("a1", None, None, frozenset(), kids)
    return RequestContext(drm, "a1", entry)


def test_a_provider_needing_key_ids_is_never_chosen_for_an_asset_without_them() -> None:
    rules = make({"name": "all-in", "route": "incoming"}, providers=KEYED)
    assert evaluate(rules, keyed_ctx(), KEYED) == Decision("incoming", "all-in", "rule_match")
    assert evaluate(rules, keyed_ctx(kids=()), KEYED) == Decision(
        "legacy", "default", "guard_no_key_ids"
    )
    verdict = explain(rules, keyed_ctx(kids=()), KEYED).verdicts[0]
    assert (verdict.outcome, verdict.detail) == (
        "guarded",
        "'incoming' needs the content key ids and the catalog has none for the asset",
    )


def test_a_provider_is_never_chosen_for_a_drm_system_it_does_not_serve() -> None:
    rules = make({"name": "all-in", "route": "incoming"}, providers=KEYED)
    assert evaluate(rules, keyed_ctx("fairplay"), KEYED) == Decision(
        "legacy", "default", "guard_unserved_drm"
    )
    # A default that does not serve the system hands it to one that does, named as the guard.
    flipped = make(default="incoming", providers=KEYED)
    assert evaluate(flipped, keyed_ctx("clearkey"), KEYED) == Decision(
        "legacy", "guard:unserved_drm", "guard_unserved_drm"
    )
    assert "does not serve" in str(explain(flipped, keyed_ctx("clearkey"), KEYED).override)


@pytest.mark.parametrize(
    ("drm", "kids", "why"),
    [
        ("fairplay", (KID,), "No configured DRM provider serves this DRM system."),
        ("widevine", (), "its key ids are not known yet"),
    ],
)
def test_no_provider_names_the_guard_of_the_default(
    drm: str, kids: tuple[str, ...], why: str
) -> None:
    only_incoming = {"incoming": KEYED["incoming"]}
    rules = make(default="incoming", providers=only_incoming)
    with pytest.raises(NoProvider, match=why):
        evaluate(rules, keyed_ctx(drm, kids=kids), only_incoming)


def test_fallback_kept_only_where_it_may_serve() -> None:
    rules = make({"name": "r", "route": "incoming", "fallback": "legacy"})
    assert evaluate(rules, ctx(), PROVIDERS).fallback == "legacy"
    assert evaluate(rules, ctx(holders={"incoming"}), PROVIDERS).fallback is None
    reverse = make({"name": "r", "route": "legacy", "fallback": "incoming"})
    assert evaluate(reverse, ctx(rid=None), PROVIDERS) == Decision("legacy", "r", "rule_match")


def test_shadow_kept_only_where_it_may_serve() -> None:
    rules = make({"name": "r", "route": "legacy", "shadow": {"to": "incoming", "percent": 2.5}})
    assert evaluate(rules, ctx(), PROVIDERS).shadow == Shadow("incoming", 2.5)
    assert evaluate(rules, ctx(rid=None), PROVIDERS).shadow is None
    assert evaluate(rules, ctx(holders={"legacy"}), PROVIDERS).shadow is None


# --- explain ----------------------------------------------------------------------------


def test_explain_gives_every_verdict_in_order() -> None:
    rules = make(
        {"name": "off", "enabled": False, "route": "incoming"},
        {"name": "fp", "route": "incoming", "when": {"drm": ["fairplay"]}},
        {"name": "never", "route": "incoming", "percent": 0},
        {"name": "keys", "route": "incoming", "when": {"drm_resource_id": "present"}},
        {"name": "half", "route": "backup", "percent": 50},
        {"name": "later", "route": "backup"},
        providers=THREE,
    )
    asset = next(f"a{i}" for i in range(1000) if bucket("half", f"a{i}") < 5000)
    result = explain(rules, ctx("widevine", asset, holders={"legacy", "backup"}), THREE)
    assert result.decision == Decision("backup", "half", "rule_match")
    outcomes = [(v.rule, v.outcome) for v in result.verdicts]
    assert outcomes == [
        ("off", "disabled"),
        ("fp", "not_matched"),
        ("never", "rollout_excluded"),
        ("keys", "guarded"),
        ("half", "matched"),
        ("later", "not_reached"),
    ]
    verdicts = {v.rule: v for v in result.verdicts}
    assert verdicts["fp"].detail == "drm: request has 'widevine', rule wants one of ['fairplay']"
    assert verdicts["never"].bucket == bucket("never", asset)
    assert f"bucket {bucket('never', asset)} >= 0" in verdicts["never"].detail
    assert "key holders: backup, legacy" in verdicts["keys"].detail
    assert verdicts["half"].bucket == bucket("half", asset)
    assert "'half' won first" in verdicts["later"].detail
    assert json.loads(json.dumps(result.to_dict()))["decision"]["rule"] == "half"


def test_explain_reports_no_provider_as_an_error() -> None:
    rules = make({"name": "r", "route": "incoming"})
    result = explain(rules, ctx(rid=None, holders={"incoming"}), PROVIDERS)
    assert result.decision is None
    assert result.error is not None and "No DRM provider" in result.error
    assert [(v.rule, v.outcome) for v in result.verdicts] == [("r", "guarded")]
    assert "needs a drmResourceId" in result.verdicts[0].detail


# --- the shipped file and whole documents------------------------------------------------


def test_shipped_routing_file_is_valid() -> None:
    rules = load_rules_file(ROUTING, providers=PROVIDERS)
    assert 6 <= len(rules.rules) <= 8
    assert rules.default == "legacy"
    assert summarize(rules) == (
        f"ok: {len(rules.rules)} rules ({sum(r.enabled for r in rules.rules)} enabled), "
        f"version {rules.version}, providers used: incoming, legacy, default legacy"
    )
    assert evaluate(rules, ctx("playready", "canary-0001"), PROVIDERS).rule == "pin-canaries"
    new = ctx("fairplay", "x", tags=("new-release",))
    assert evaluate(rules, new, PROVIDERS) == Decision("incoming", "new-releases", "rule_match")
    assert evaluate(rules, ctx("widevine", "x", rid=None), PROVIDERS).provider == "legacy"


VALID_DOCUMENTS = [
    doc(),
    doc({"name": "a", "route": "incoming", "when": None}),
    doc(
        {
            "name": "every.field_1",
            "enabled": False,
            "when": {
                "drm": ["widevine", "aes128"],
                "asset_ids": ["a"],
                "asset_prefixes": ["p-"],
                "tags_any": ["t"],
                "tags_all": ["t", "u"],
                "drm_resource_id": "absent",
                "platforms": ["ios"],
                "min_app_version": "5.12",
            },
            "route": "incoming",
            "percent": 12.5,
            "stickiness": "user",
            "fallback": "legacy",
            "shadow": {"to": "legacy", "percent": 0.01},
        }
    ),
]


@pytest.mark.parametrize("document", VALID_DOCUMENTS)
def test_valid_documents_pass(document: dict[str, Any]) -> None:
    parse_rules(yaml.safe_dump(document), source="t", providers=PROVIDERS)


@pytest.mark.parametrize(
    "document",
    [
        {"default": "legacy", "rules": []},
        {**doc(), "version": 3},
        {**doc(), "extra": True},
        doc({"route": "legacy"}),
        doc({"name": "Bad Name", "route": "legacy"}),
        doc({"name": "default", "route": "legacy"}),
        doc({"name": "a", "route": "legacy", "percent": 120}),
        doc({"name": "a", "route": "legacy", "stickiness": "session"}),
        doc({"name": "a", "route": "legacy", "when": {"tags": ["x"]}}),
        doc({"name": "a", "route": "legacy", "when": {"drm": ["dvd"]}}),
        doc({"name": "a", "route": "legacy", "when": {"drm_resource_id": "yes"}}),
        doc({"name": "a", "route": "legacy", "when": {"min_app_version": "5.x"}}),
        doc({"name": "a", "route": "legacy", "when": {"platforms": []}}),
        doc({"name": "a", "route": "legacy", "shadow": {"to": "incoming"}}),
        doc({"name": "a", "route": "legacy", "enabled": "yes"}),
    ],
)
def test_bad_documents_are_refused(document: dict[str, Any]) -> None:
    with pytest.raises(RulesError):
        parse_rules(yaml.safe_dump(document), source="t", providers=None)
