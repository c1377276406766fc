"""The rules file: parse and validate it into a `RuleSet`, reporting every problem at once."""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.domain import ALL_DRMS
from proxy.keys.policy import KeyPolicy, parse_key_policy
from proxy.problems import Problems, named_items, show
from proxy.routing.rules import (
    NAME_PATTERN,
    STICKINESS,
    Providers,
    Rule,
    RulesError,
    RuleSet,
    Shadow,
    When,
    parse_version,
)

_TOP_FIELDS = ("version", "default", "rules", "keys")
_REQUIRED_TOP_FIELDS = ("version", "default", "rules")
_RULE_FIELDS = ("name", "enabled", "when", "route", "percent", "stickiness", "fallback", "shadow")
_LIST_FIELDS = ("drm", "asset_ids", "asset_prefixes", "tags_any", "tags_all", "platforms")
_WHEN_FIELDS = (*_LIST_FIELDS, "drm_resource_id", "min_app_version")
_SHADOW_FIELDS = ("to", "percent")


# What `parse_rules` checks only when it knows the configured providers (`rules check
# --config`); without them these are skipped, and the CLI says so.
PROVIDER_CHECKS = (
    "provider names (default, route, fallback, shadow.to) are configured providers",
    "the default provider does not need a drmResourceId (assets without one need a home)",
    "keys: source and mirrors are configured providers with a key_api",
)


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys, which YAML would silently collapse."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)  # resolve `<<` merge keys first, as construct_mapping would
    seen: set[str] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(str(key))
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Problems(Problems):
    """Collects every problem of a file, with typed checks for the rules' fields."""

    def __init__(self, providers: Providers | None) -> None:
        super().__init__()
        self.providers = providers

    def unknown_fields(self, raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            if key not in allowed:
                hints = difflib.get_close_matches(str(key), allowed, n=1)
                self.problem(
                    f"{where}{key}",
                    "unknown field" + "".join(f" (did you mean '{h}'?)" for h in hints),
                )

    def required(self, raw: Mapping[Any, Any], keys: Iterable[str], where: str) -> None:
        for key in keys:
            if key not in raw:
                self.problem(f"{where}{key}", "is required")

    def string(self, value: Any, where: str) -> str | None:
        if isinstance(value, str) and value.strip():
            return value
        self.problem(where, f"must be a non-empty string, not {show(value)}")
        return None

    def provider(self, value: Any, where: str) -> str | None:
        name = self.string(value, where)
        if name is not None and self.providers is not None and name not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            self.problem(where, f"provider '{name}' is not configured (known: {known})")
        return name

    def percent(self, value: Any, where: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(where, f"must be a number 0-100, not {show(value)}")
        elif not math.isfinite(value) or not 0 <= value <= 100:
            self.problem(where, f"{value} is out of range 0-100")
        elif abs(value * 100 - round(value * 100)) > 1e-6:
            self.problem(where, f"{value} has more than two decimals")
        else:
            return float(value)
        return None

    def string_list(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.problem(where, f"must be a non-empty list, not {show(value)}")
            return []
        items = [self.string(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return [item for item in items if item is not None]


def parse_rules(text: str, *, source: str, providers: Providers | None) -> RuleSet:
    """Parse and validate a rules file; raise RulesError listing every problem.

    With `providers` None the provider names are not checked (for `rules check FILE`).
    """
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        raise RulesError([f"YAML syntax error at {where}: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise RulesError([f"YAML error: {exc}"]) from None
    if doc is None:
        raise RulesError([f"{source}: the rules file is empty"])
    problems = _Problems(providers)
    ruleset = _parse_document(doc, text, source, problems)
    if problems.problems or ruleset is None:
        raise RulesError(problems.problems)
    return ruleset


def load_rules_file(path: Path, *, providers: Providers | None) -> RuleSet:
    """Read and parse a rules file; an unreadable file is a RulesError too."""
    return parse_rules(read_rules_text(path), source=str(path), providers=providers)


def read_rules_text(path: Path) -> str:
    """A rules file's text; RulesError if it cannot be read or is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RulesError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise RulesError([f"{path} is not UTF-8 (byte {exc.start})"]) from None


def _parse_document(doc: Any, text: str, source: str, p: _Problems) -> RuleSet | None:
    if not isinstance(doc, dict):
        p.problem("top level", f"must be a mapping of version, default, rules; not {show(doc)}")
        return None
    p.unknown_fields(doc, _TOP_FIELDS, "")
    p.required(doc, _REQUIRED_TOP_FIELDS, "")
    version = doc.get("version")
    if "version" in doc and not (isinstance(version, str) and version.strip()):
        hint = f' (quote it: version: "{version}")' if version is not None else ""
        p.problem("version", f"must be a non-empty string{hint}, not {show(version)}")
    default = p.provider(doc["default"], "default") if "default" in doc else None
    if default and p.providers and default in p.providers:
        if p.providers[default].needs_drm_resource_id:
            p.problem(
                "default",
                f"provider '{default}' needs a drmResourceId, so assets "
                "without one would have nowhere to go",
            )
    rules = _parse_rule_list(doc.get("rules", []), p)
    keys = _parse_keys(doc, p)
    if p.problems or not isinstance(version, str) or default is None:
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return RuleSet(version, digest, default, rules, source, doc, keys, text)


def _parse_keys(doc: dict[Any, Any], p: _Problems) -> KeyPolicy | None:
    """The optional `keys:` section (see proxy.keys.policy)."""
    if "keys" not in doc:
        return None
    return parse_key_policy(doc["keys"], p, p.providers)


def _parse_rule_list(raw: Any, p: _Problems) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for index, where, item in named_items(raw, "rules", "rule", p.problem):
        if rule := _parse_rule(item, index, f"{where}: ", p):
            rules.append(rule)
    return tuple(rules)


def _parse_rule(raw: dict[Any, Any], index: int, where: str, p: _Problems) -> Rule | None:
    count = len(p.problems)
    p.unknown_fields(raw, _RULE_FIELDS, where)
    p.required(raw, ("name", "route"), where)
    name = _rule_name(raw["name"], f"{where}name", p) if "name" in raw else None
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        p.problem(f"{where}enabled", f"must be true or false, not {show(enabled)}")
    when = _parse_when(raw.get("when"), f"{where}when", p)
    route = p.provider(raw["route"], f"{where}route") if "route" in raw else None
    percent = p.percent(raw["percent"], f"{where}percent") if "percent" in raw else 100.0
    stickiness = raw.get("stickiness", "asset")
    if stickiness not in STICKINESS:
        p.problem(f"{where}stickiness", f"{stickiness!r} is not one of {', '.join(STICKINESS)}")
    fallback = p.provider(raw["fallback"], f"{where}fallback") if "fallback" in raw else None
    if fallback is not None and fallback == route:
        p.problem(f"{where}fallback", f"must differ from route ('{route}')")
    shadow = _parse_shadow(raw["shadow"], route, f"{where}shadow", p) if "shadow" in raw else None
    if len(p.problems) > count or name is None or route is None or percent is None:
        return None
    threshold = round(percent * 100)
    return Rule(name, index, enabled, when, route, percent, threshold, stickiness, fallback, shadow)


def _rule_name(name: Any, where: str, p: _Problems) -> str | None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        p.problem(where, f"{name!r} must match ^{NAME_PATTERN.pattern}$")
    elif name == "default":
        p.problem(where, "'default' is reserved for the default decision")
    else:
        return name
    return None


def _parse_when(raw: Any, where: str, p: _Problems) -> When:
    if raw is None:  # `when:` left empty matches everything, like no `when`
        return When()
    if not isinstance(raw, dict):
        p.problem(where, f"must be a mapping, not {show(raw)}")
        return When()
    p.unknown_fields(raw, _WHEN_FIELDS, f"{where}.")
    lists = {key: p.string_list(raw[key], f"{where}.{key}") for key in _LIST_FIELDS if key in raw}
    for drm in lists.get("drm", ()):
        if drm not in ALL_DRMS:
            p.problem(f"{where}.drm", f"{drm!r} is not one of {', '.join(ALL_DRMS)}")
    presence = raw.get("drm_resource_id")
    if "drm_resource_id" in raw and presence not in ("present", "absent"):
        p.problem(f"{where}.drm_resource_id", f"{presence!r} must be 'present' or 'absent'")
    minimum = raw.get("min_app_version")
    min_version = parse_version(minimum) if isinstance(minimum, str) else None
    if "min_app_version" in raw and min_version is None:
        p.problem(f"{where}.min_app_version", f"{minimum!r} must be a quoted version like '5.0.0'")

    def as_set(key: str) -> frozenset[str] | None:
        return frozenset(lists[key]) if key in lists else None

    return When(
        drm=as_set("drm"),
        asset_ids=as_set("asset_ids"),
        asset_prefixes=tuple(lists["asset_prefixes"]) if "asset_prefixes" in lists else None,
        tags_any=as_set("tags_any"),
        tags_all=as_set("tags_all"),
        drm_resource_id=presence,
        platforms=frozenset(v.lower() for v in lists["platforms"])
        if "platforms" in lists
        else None,
        min_app_version=min_version,
    )


def _parse_shadow(raw: Any, route: str | None, where: str, p: _Problems) -> Shadow | None:
    if not isinstance(raw, dict):
        p.problem(where, f"must be a mapping of to and percent, not {show(raw)}")
        return None
    p.unknown_fields(raw, _SHADOW_FIELDS, f"{where}.")
    p.required(raw, _SHADOW_FIELDS, f"{where}.")
    to = p.provider(raw["to"], f"{where}.to") if "to" in raw else None
    if to is not None and to == route:
        p.problem(f"{where}.to", f"must differ from route ('{route}')")
    percent = p.percent(raw["percent"], f"{where}.percent") if "percent" in raw else None
    return Shadow(to, percent) if to is not None and percent is not None else None


def summarize(rules: RuleSet) -> str:
    """One line for `rules check`: counts, version and providers used."""
    enabled = sum(rule.enabled for rule in rules.rules)
    used = ", ".join(sorted(rules.providers_used()))
    line = (
        f"ok: {len(rules.rules)} rules ({enabled} enabled), version {rules.version}, "
        f"providers used: {used}, default {rules.default}"
    )
    if rules.keys is not None:
        default = rules.keys.default
        mirrors = ", ".join(default.mirrors) or "none"
        line += (
            f"; keys: {len(rules.keys.rules)} rules, default source {default.source} "
            f"(mirrors: {mirrors}; mirror_failure: {default.mirror_failure})"
        )
    return line
