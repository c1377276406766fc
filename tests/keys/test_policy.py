"""The `keys:` section of the rules file: decisions, validation (every problem at once), the
shipped example, and hot reload with the rest of the file."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_rules_view
from proxy.keys.policy import KeyDecision, KeyPolicy, KeyTarget
from proxy.routing.file import load_rules_file, parse_rules, summarize
from proxy.routing.rules import ProviderTraits, RulesError
from proxy.routing.watcher import RulesWatcher

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = {
    "legacy": ProviderTraits(needs_drm_resource_id=False, key_api=True),
    "incoming": ProviderTraits(needs_drm_resource_id=True, key_api=True),
    "backup": ProviderTraits(needs_drm_resource_id=False, key_api=True),
    "plain": ProviderTraits(needs_drm_resource_id=False),  # no key API
}
SECTION: dict[str, Any] = {
    "default": {"source": "legacy", "mirrors": ["incoming"]},
    "rules": [
        {"name": "canaries", "when": {"asset_ids": ["c-1", "c-2"]}, "source": "incoming"},
        {
            "name": "live",
            "when": {"asset_prefixes": ["live-", "ch-"]},
            "source": "legacy",
            "mirrors": ["incoming", "backup"],
            "mirror_failure": "queue",
        },
        {"name": "kids", "when": {"tags_all": ["kids", "hd"]}, "source": "backup"},
        {"name": "sport", "when": {"tags_any": ["sports", "f1"]}, "source": "incoming"},
        {"name": "off", "enabled": False, "source": "backup"},
    ],
}


def rules_text(keys: Any = SECTION, **top: Any) -> str:
    doc = {"version": "k1", "default": "legacy", "rules": [], **top}
    if keys is not None:
        doc["keys"] = keys
    return yaml.safe_dump(doc, sort_keys=False)


def policy(keys: Any = SECTION, providers: Any = PROVIDERS) -> KeyPolicy:
    rules = parse_rules(rules_text(keys), source="test", providers=providers)
    assert rules.keys is not None
    return rules.keys


def problems(keys: Any, providers: Any = PROVIDERS) -> list[str]:
    with pytest.raises(RulesError) as refused:
        parse_rules(rules_text(keys), source="test", providers=providers)
    return refused.value.problems


# --- decisions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asset", "tags", "expected"),
    [
        ("c-1", {"sports"}, KeyDecision("incoming", (), "fail", "canaries")),
        ("live-7", set(), KeyDecision("legacy", ("incoming", "backup"), "queue", "live")),
        ("ch-1", set(), KeyDecision("legacy", ("incoming", "backup"), "queue", "live")),
        ("m-1", {"kids", "hd", "x"}, KeyDecision("backup", (), "fail", "kids")),
        ("m-1", {"kids"}, KeyDecision("legacy", ("incoming",), "fail", "default")),
        ("m-1", {"f1"}, KeyDecision("incoming", (), "fail", "sport")),
        ("m-1", set(), KeyDecision("legacy", ("incoming",), "fail", "default")),
    ],
)
def test_first_enabled_matching_rule_decides_else_the_default(
    asset: str, tags: set[str], expected: KeyDecision
) -> None:
    assert policy().decide(asset, frozenset(tags)) == expected


def test_a_rule_without_when_matches_every_title_and_disabled_rules_never() -> None:
    keys = {"default": {"source": "legacy"}, "rules": [{"name": "all", "source": "incoming"}]}
    assert policy(keys).decide("anything").source == "incoming"
    assert policy().providers_used() == {"legacy", "incoming", "backup"}


def test_defaults_no_mirrors_and_fail() -> None:
    assert policy({"default": {"source": "incoming"}}).default == KeyTarget("incoming", (), "fail")


def test_a_rules_file_without_keys_has_no_key_policy_and_keeps_its_summary() -> None:
    rules = parse_rules(rules_text(None), source="t", providers=PROVIDERS)
    assert rules.keys is None
    assert "keys" not in summarize(rules)
    with_keys = parse_rules(rules_text(), source="t", providers=PROVIDERS)
    assert summarize(with_keys).endswith(
        "; keys: 5 rules, default source legacy (mirrors: incoming; mirror_failure: fail)"
    )
    assert with_keys.to_dict()["keys"] == SECTION


# --- validation ------------------------------------------------------------------------------


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    keys = {
        "default": {"source": "nobody", "mirrors": ["plain", "legacy"], "mirror": ["x"]},
        "rules": [
            {"name": "a", "when": {"tags_any": [], "drm": ["widevine"]}, "source": "legacy"},
            {"name": "a", "source": "incoming", "mirrors": ["incoming"]},
            {"name": "default", "source": "legacy"},
            {"name": "Bad Name", "source": "legacy", "mirror_failure": "ignore"},
            {"name": "b", "mirrors": "incoming", "enabled": "yes"},
            {"name": "c", "source": "legacy", "mirrors": ["backup", "backup"]},
            "not-a-mapping",
        ],
        "extra": 1,
    }
    found = problems(keys)
    expected = [
        "keys.extra: unknown field",
        "keys.default.mirror: unknown field (did you mean 'mirrors'?)",
        "keys.default.source: provider 'nobody' is not configured (known: backup, incoming, "
        "legacy, plain)",
        "keys.default.mirrors[0]: provider 'plain' has no key_api (providers with one: backup, "
        "incoming, legacy)",
        "keys rule 'a' (#1): when.drm: unknown field",
        "keys rule 'a' (#1): when.tags_any: must be a non-empty list, not list []",
        "keys rule 'a' (#2): name: duplicate of keys rule #1",
        "keys rule 'a' (#2): mirrors[0]: 'incoming' is the source; a mirror must be another",
        "keys rule 'default' (#3): name: 'default' is reserved for the default key target",
        "keys rule 'Bad Name' (#4): name: 'Bad Name' must match ^[a-z0-9][a-z0-9_.-]{0,63}$",
        "keys rule 'Bad Name' (#4): mirror_failure: 'ignore' must be 'fail' or 'queue'",
        "keys rule 'b' (#5): enabled: must be true or false, not str 'yes'",
        "keys rule 'b' (#5): source: is required (the provider that makes the keys)",
        "keys rule 'b' (#5): mirrors: must be a list of providers, not str 'incoming'",
        "keys rule 'c' (#6): mirrors[1]: 'backup' is listed twice",
        "keys rule #7: must be a mapping, not str 'not-a-mapping'",
    ]
    assert sorted(found) == sorted(expected)


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ([], "keys: must be a mapping of default and rules, not list []"),
        ({"rules": []}, "keys.default: is required (the key source when no rule matches)"),
        ({"default": "legacy"}, "keys.default: must be a mapping of source, mirrors,"),
        ({"default": {"source": "legacy"}, "rules": {}}, "keys.rules: must be a list, not dict"),
        ({"default": {"source": ""}}, "keys.default.source: must be a non-empty string"),
        ({"default": {"source": "legacy", "mirrors": [3]}}, "keys.default.mirrors[0]: must be"),
        ({"default": {"source": "legacy"}, "rules": [{"source": "legacy"}]}, "name: is required"),
        (
            {
                "default": {"source": "legacy"},
                "rules": [{"name": "x", "when": 1, "source": "legacy"}],
            },
            "when: must be a mapping, not int 1",
        ),
    ],
)
def test_malformed_sections_are_refused_with_a_message(keys: Any, problem: str) -> None:
    assert any(p.startswith(problem) or problem in p for p in problems(keys)), problems(keys)


def test_without_providers_the_names_are_not_checked() -> None:
    keys = {"default": {"source": "anything", "mirrors": ["else"]}}
    assert policy(keys, providers=None).default == KeyTarget("anything", ("else",))


def test_the_routing_part_of_a_file_is_checked_with_its_keys() -> None:
    text = rules_text({"default": {"source": "plain"}}).replace("default: legacy", "default: x")
    with pytest.raises(RulesError) as refused:
        parse_rules(text, source="t", providers=PROVIDERS)
    assert len(refused.value.problems) == 2


# --- the shipped example ---------------------------------------------------------------------


def _uncommented_keys(path: Path) -> str:
    """The commented `keys:` example of a rules file, uncommented."""
    text = path.read_text()
    block = text[text.index("# keys:") :]
    return "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines()) + "\n"


@pytest.mark.parametrize("path", [ROOT / "rules/routing.yaml"])
def test_the_commented_example_is_valid_once_uncommented(path: Path) -> None:
    shipped = load_rules_file(path, providers=PROVIDERS)
    assert shipped.keys is None  # off until uncommented
    text = path.read_text() + "\n" + _uncommented_keys(path)
    rules = parse_rules(text, source="t", providers=PROVIDERS)
    assert rules.keys is not None
    assert rules.keys.decide("live-1").mirror_failure == "queue"
    assert rules.keys.decide("m", frozenset({"new-release"})).source == "incoming"
    assert rules.keys.decide("m").mirrors == ("incoming",)


def test_rules_tooling_knows_which_providers_have_a_key_api(tmp_path: Path) -> None:
    config = {
        "providers": {
            name: {
                "base_url": "http://127.0.0.1:1",
                "license_urls": {"widevine": "/l/{asset_id}"},
                **(
                    {"key_api": {"base_url": "http://127.0.0.1:2", "token": {"env": "T"}}}
                    if api
                    else {}
                ),
            }
            for name, api in (("legacy", True), ("plain", False))
        },
        "routing": {"default_provider": "legacy"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    view = load_rules_view(path)  # no secret is read: T is not set
    assert view.providers["legacy"].key_api and not view.providers["plain"].key_api


# --- hot reload ------------------------------------------------------------------------------


def test_the_watcher_swaps_the_keys_with_the_rules_and_keeps_them_on_a_bad_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(rules_text({"default": {"source": "legacy", "mirrors": ["incoming"]}}))
    watcher = RulesWatcher(path, default="legacy", providers=PROVIDERS, poll_seconds=0.05)
    first = watcher.active().keys
    assert first is not None and first.default.source == "legacy"

    path.write_text(rules_text({"default": {"source": "incoming"}}, version="k2"))
    assert watcher.reload("test").result == "ok"
    swapped = watcher.active().keys
    assert swapped is not None and swapped.default == KeyTarget("incoming")

    path.write_text(rules_text({"default": {"source": "plain"}}, version="k3"))
    result = watcher.reload("test")
    assert result.result == "refused"
    assert result.problems == [
        "keys.default.source: provider 'plain' has no key_api (providers with one: backup, "
        "incoming, legacy)"
    ]
    assert watcher.active().keys is swapped  # the last good keys stay

    path.write_text(rules_text(None, version="k4"))
    time.sleep(0.01)
    assert watcher.reload("test").result == "ok"
    assert watcher.active().keys is None
    watcher.close()


# A key API that only generates keys (SPEKE, DoveRunner's CPIX): a source, never a mirror.
GENERATE_ONLY = {
    **PROVIDERS,
    "axinom": ProviderTraits(needs_drm_resource_id=False, key_api=True, key_generate_only=True),
}


def test_a_generate_only_key_api_is_a_source_but_never_a_mirror() -> None:
    as_source = policy({"default": {"source": "axinom", "mirrors": ["incoming"]}}, GENERATE_ONLY)
    assert as_source.default == KeyTarget("axinom", ("incoming",), "fail")
    assert problems({"default": {"source": "legacy", "mirrors": ["axinom"]}}, GENERATE_ONLY) == [
        "keys.default.mirrors[0]: provider 'axinom' has a key_api that only generates keys "
        "(no ingest), so it can be a source but not a mirror"
    ]


def test_queueing_mirror_writes_needs_a_source_that_exports() -> None:
    """The queue copies the keys later by exporting them from the source: a source that can
    only generate them would leave every queued job failing."""
    queued = {"source": "axinom", "mirrors": ["incoming"], "mirror_failure": "queue"}
    assert problems({"default": queued}, GENERATE_ONLY) == [
        "keys.default.mirror_failure: 'queue' copies the keys later by exporting them from "
        "the source, and 'axinom' has a key_api that only generates keys: use 'fail'"
    ]
    assert policy({"default": {**queued, "mirrors": []}}, GENERATE_ONLY).default.source == "axinom"
