"""Which provider makes a title's content keys, and where else they are written.

The `keys:` section of the rules file (hot-reloaded with it, in the same `RuleSet`):

    keys:
      default: {source: legacy, mirrors: [incoming], mirror_failure: fail}
      rules:
        - name: new-releases
          when: {tags_any: [new-release]}
          source: incoming

Rules are tried in order and the first enabled one whose `when` matches (every condition;
any value of a list) decides, else the `default`. `when` takes `asset_ids`,
`asset_prefixes`, `tags_any` and `tags_all`, as routing rules do. The *source* creates the
keys (or, when the packager sent its own, is given them); each *mirror* is written the same
keys; `mirror_failure` says what a failed mirror write does to the packager's request:
`fail` (the default) answers 5xx so the packager retries, `queue` puts the write on a
durable retry queue and answers with the keys (the mirror becomes a key holder only once
the write succeeds).

Pure: the model and its decision, and the section's validation for `proxy.routing.file`,
which reports every problem at once. Provider names must be configured providers with a
`key_api`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from proxy.problems import named_items, show
from proxy.routing.rules import NAME_PATTERN, Providers

MirrorFailure = Literal["fail", "queue"]
MIRROR_FAILURES: Final[tuple[MirrorFailure, ...]] = ("fail", "queue")

SECTION_FIELDS: Final = ("default", "rules")
TARGET_FIELDS: Final = ("source", "mirrors", "mirror_failure")
RULE_FIELDS: Final = ("name", "enabled", "when", *TARGET_FIELDS)
WHEN_FIELDS: Final = ("asset_ids", "asset_prefixes", "tags_any", "tags_all")


@dataclass(frozen=True, slots=True)
class KeyWhen:
    """A key rule's conditions; None means "no condition on this field"."""

    asset_ids: frozenset[str] | None = None
    asset_prefixes: tuple[str, ...] | None = None
    tags_any: frozenset[str] | None = None
    tags_all: frozenset[str] | None = None

    def matches(self, asset_id: str, tags: frozenset[str]) -> bool:
        """True if the title meets every condition."""
        return (
            (self.asset_ids is None or asset_id in self.asset_ids)
            and (self.asset_prefixes is None or asset_id.startswith(self.asset_prefixes))
            and (self.tags_any is None or not self.tags_any.isdisjoint(tags))
            and (self.tags_all is None or self.tags_all <= tags)
        )


@dataclass(frozen=True, slots=True)
class KeyTarget:
    """The provider that makes the keys, the ones they are copied to, and what a failed copy
    does to the packager's request."""

    source: str
    mirrors: tuple[str, ...] = ()
    mirror_failure: MirrorFailure = "fail"


@dataclass(frozen=True, slots=True)
class KeyRule:
    """One validated key rule."""

    name: str
    enabled: bool
    when: KeyWhen
    target: KeyTarget


@dataclass(frozen=True, slots=True)
class KeyDecision:
    """Where one title's keys come from and go, and the rule ("default") that said so."""

    source: str
    mirrors: tuple[str, ...]
    mirror_failure: MirrorFailure
    rule: str


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """The `keys:` section: ordered rules, first match wins, else the default."""

    default: KeyTarget
    rules: tuple[KeyRule, ...] = ()

    def decide(self, asset_id: str, tags: frozenset[str] = frozenset()) -> KeyDecision:
        """The key source and mirrors for a title."""
        for rule in self.rules:
            if rule.enabled and rule.when.matches(asset_id, tags):
                return _decision(rule.target, rule.name)
        return _decision(self.default, "default")

    def providers_used(self) -> frozenset[str]:
        """Every provider the section names."""
        targets = (self.default, *(rule.target for rule in self.rules))
        return frozenset(name for t in targets for name in (t.source, *t.mirrors))


def _decision(target: KeyTarget, rule: str) -> KeyDecision:
    return KeyDecision(target.source, target.mirrors, target.mirror_failure, rule)


# --- parsing ---------------------------------------------------------------------------------


class SectionProblems(Protocol):
    """What the rules file parser gives this section to report problems with."""

    problems: list[str]

    def problem(self, where: str, message: str) -> None: ...

    def string(self, value: Any, where: str) -> str | None: ...

    def string_list(self, value: Any, where: str) -> list[str]: ...


def parse_key_policy(raw: Any, p: SectionProblems, providers: Providers | None) -> KeyPolicy | None:
    """The validated `keys:` section, or None with every problem reported to `p`.

    With `providers` None the provider names are not checked (`rules check` without config).
    """
    where = "keys"
    if not isinstance(raw, dict):
        p.problem(where, f"must be a mapping of default and rules, not {show(raw)}")
        return None
    count = len(p.problems)
    _unknown_fields(raw, SECTION_FIELDS, f"{where}.", p)
    default = None
    if "default" not in raw:
        p.problem(f"{where}.default", "is required (the key source when no rule matches)")
    else:
        default = _parse_target(raw["default"], f"{where}.default", p, providers, rule=False)
    rules = _parse_rules(raw.get("rules", []), p, providers)
    if len(p.problems) > count or default is None:
        return None
    return KeyPolicy(default, rules)


def _parse_rules(raw: Any, p: SectionProblems, providers: Providers | None) -> tuple[KeyRule, ...]:
    if raw is None:
        return ()
    rules: list[KeyRule] = []
    for _, where, item in named_items(raw, "keys.rules", "keys rule", p.problem):
        if rule := _parse_rule(item, f"{where}: ", p, providers):
            rules.append(rule)
    return tuple(rules)


def _parse_rule(
    raw: dict[Any, Any], where: str, p: SectionProblems, providers: Providers | None
) -> KeyRule | None:
    count = len(p.problems)
    _unknown_fields(raw, RULE_FIELDS, where, p)
    name = _rule_name(raw.get("name"), f"{where}name", p) if "name" in raw else None
    if "name" not in raw:
        p.problem(f"{where}name", "is required")
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        p.problem(f"{where}enabled", f"must be true or false, not {show(enabled)}")
    when = _parse_when(raw.get("when"), f"{where}when", p)
    target_fields = {key: raw[key] for key in TARGET_FIELDS if key in raw}
    target = _parse_target(target_fields, where.rstrip(": "), p, providers, rule=True)
    if len(p.problems) > count or name is None or target is None:
        return None
    return KeyRule(name, bool(enabled), when, target)


def _rule_name(name: Any, where: str, p: SectionProblems) -> str | None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        p.problem(where, f"{name!r} must match ^{NAME_PATTERN.pattern}$")
    elif name == "default":
        p.problem(where, "'default' is reserved for the default key target")
    else:
        return name
    return None


def _parse_when(raw: Any, where: str, p: SectionProblems) -> KeyWhen:
    if raw is None:  # no `when`: every title
        return KeyWhen()
    if not isinstance(raw, dict):
        p.problem(where, f"must be a mapping, not {show(raw)}")
        return KeyWhen()
    _unknown_fields(raw, WHEN_FIELDS, f"{where}.", p)
    lists = {key: p.string_list(raw[key], f"{where}.{key}") for key in WHEN_FIELDS if key in raw}

    def as_set(key: str) -> frozenset[str] | None:
        return frozenset(lists[key]) if key in lists else None

    prefixes = lists.get("asset_prefixes")
    return KeyWhen(
        asset_ids=as_set("asset_ids"),
        asset_prefixes=tuple(prefixes) if prefixes is not None else None,
        tags_any=as_set("tags_any"),
        tags_all=as_set("tags_all"),
    )


def _parse_target(
    raw: Any, where: str, p: SectionProblems, providers: Providers | None, *, rule: bool
) -> KeyTarget | None:
    """`source`, `mirrors` and `mirror_failure` (a rule's own fields, or `keys.default`)."""
    sep = ": " if rule else "."
    if not isinstance(raw, dict):
        p.problem(where, f"must be a mapping of {', '.join(TARGET_FIELDS)}, not {show(raw)}")
        return None
    if not rule:
        _unknown_fields(raw, TARGET_FIELDS, f"{where}.", p)
    count = len(p.problems)
    source = None
    if "source" not in raw:
        p.problem(f"{where}{sep}source", "is required (the provider that makes the keys)")
    else:
        source = _key_provider(raw["source"], f"{where}{sep}source", p, providers)
    mirrors = _parse_mirrors(raw.get("mirrors", []), source, f"{where}{sep}mirrors", p, providers)
    failure = raw.get("mirror_failure", "fail")
    if failure not in MIRROR_FAILURES:
        p.problem(f"{where}{sep}mirror_failure", f"{failure!r} must be 'fail' or 'queue'")
    elif failure == "queue" and mirrors and _generates_only(source, providers):
        p.problem(
            f"{where}{sep}mirror_failure",
            f"'queue' copies the keys later by exporting them from the source, and "
            f"'{source}' has a key_api that only generates keys: use 'fail'",
        )
    if len(p.problems) > count or source is None:
        return None
    return KeyTarget(source, mirrors, "queue" if failure == "queue" else "fail")


def _parse_mirrors(
    raw: Any, source: str | None, where: str, p: SectionProblems, providers: Providers | None
) -> tuple[str, ...]:
    if raw is None or raw == []:
        return ()
    if not isinstance(raw, list):
        p.problem(where, f"must be a list of providers, not {show(raw)}")
        return ()
    mirrors: list[str] = []
    for index, item in enumerate(raw):
        name = _key_provider(item, f"{where}[{index}]", p, providers)
        if name is None:
            continue
        if _generates_only(name, providers):
            p.problem(
                f"{where}[{index}]",
                f"provider '{name}' has a key_api that only generates keys (no ingest), so it "
                "can be a source but not a mirror",
            )
        elif name == source:
            p.problem(f"{where}[{index}]", f"'{name}' is the source; a mirror must be another")
        elif name in mirrors:
            p.problem(f"{where}[{index}]", f"'{name}' is listed twice")
        else:
            mirrors.append(name)
    return tuple(mirrors)


def _generates_only(name: str | None, providers: Providers | None) -> bool:
    """Whether `name` is a known provider whose key API cannot export or ingest keys."""
    traits = providers.get(name) if providers is not None and name is not None else None
    return traits is not None and traits.key_api and traits.key_generate_only


def _key_provider(
    value: Any, where: str, p: SectionProblems, providers: Providers | None
) -> str | None:
    """A provider name that is configured with a key API (when `providers` is known)."""
    name = p.string(value, where)
    if name is None or providers is None:
        return name
    with_api = sorted(n for n, traits in providers.items() if traits.key_api)
    if name not in providers:
        known = ", ".join(sorted(providers)) or "none"
        p.problem(where, f"provider '{name}' is not configured (known: {known})")
    elif not providers[name].key_api:
        have = ", ".join(with_api) or "none"
        p.problem(where, f"provider '{name}' has no key_api (providers with one: {have})")
    return name


def _unknown_fields(
    raw: Mapping[Any, Any], allowed: Iterable[str], where: str, p: SectionProblems
) -> None:
    allowed = tuple(allowed)
    for key in raw:
        if key not in allowed:
            hints = difflib.get_close_matches(str(key), allowed, n=1)
            hint = "".join(f" (did you mean '{h}'?)" for h in hints)
            p.problem(f"{where}{key}", "unknown field" + hint)
