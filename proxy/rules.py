"""Routing rules: parse and validate the rules file, then decide which provider serves a request.

Pure: no I/O except `load_rules_file`. Modelled on flagd/Unleash: rules are tried in order,
the first enabled rule whose `when` matches and whose rollout includes the request wins, else
the `default` provider; every decision carries the rule name and a reason.

Rollout bucket (fixed; changing it reshuffles every ramp, and a golden test guards it):
    bucket = int.from_bytes(sha256(f"{rule_name}:{value}".encode()).digest()[:8], "big") % 10_000
and the request is in when `bucket < round(percent * 100)`, so raising `percent` only adds
traffic. `value` is the stickiness value: the asset id, the user id or the drmResourceId;
when a request has no user (or the asset no drmResourceId) the asset id stands in.

Guards no rule can override: a provider that needs a drmResourceId is never chosen for an
asset without one, and where the catalog lists `key_holders` only those providers are chosen.
A guarded or rollout-excluded rule passes the request on to the next rule; if the default
then serves it, the reason says why the first matching rule did not (its guard or
`rollout_excluded`). A later rule that serves it reports plain `rule_match`.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from proxy.catalog.base import CatalogEntry
from proxy.errors import NoProvider

Reason = Literal[
    "rule_match", "rollout_excluded", "guard_no_resource_id", "guard_key_holders", "default"
]
Stickiness = Literal["asset", "user", "drm_resource_id"]
Outcome = Literal[
    "matched", "not_matched", "disabled", "rollout_excluded", "guarded", "not_reached"
]
Providers = Mapping[str, "ProviderTraits"]

BUCKETS = 10_000
DRM_SYSTEMS = ("widevine", "playready", "fairplay", "clearkey", "aes128")
STICKINESS = ("asset", "user", "drm_resource_id")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # whole name: fullmatch
# Digit runs are capped so a hostile X-App-Version cannot make int() work hard.
_VERSION_PATTERN = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")

_TOP_FIELDS = ("version", "default", "rules")
_RULE_FIELDS = ("name", "enabled", "when", "route", "percent", "stickiness", "fallback", "shadow")
_LIST_FIELDS = ("drm", "asset_ids", "asset_prefixes", "tags_any", "tags_all", "platforms")
_WHEN_FIELDS = (*_LIST_FIELDS, "drm_resource_id", "min_app_version")
_SHADOW_FIELDS = ("to", "percent")


@dataclass(frozen=True, slots=True)
class ProviderTraits:
    """What the rules need to know of one configured provider."""

    needs_drm_resource_id: bool


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request, as the rules see it. `drm` is `aes128` for HLS key requests."""

    drm: str
    asset_id: str
    entry: CatalogEntry
    platform: str | None = None  # X-Client-Platform, compared case-insensitively
    app_version: str | None = None  # X-App-Version; not 1-4 dotted numbers = too old
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class Shadow:
    """Send a sampled copy of the request to `to`; the caller samples `percent`."""

    to: str
    percent: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes and why. `rule` is "default" when no rule decided."""

    provider: str
    rule: str
    reason: Reason
    fallback: str | None = None
    shadow: Shadow | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class When:
    """A rule's conditions, pre-compiled; None means "no condition on this field"."""

    drm: frozenset[str] | None = None
    asset_ids: frozenset[str] | None = None
    asset_prefixes: tuple[str, ...] | None = None
    tags_any: frozenset[str] | None = None
    tags_all: frozenset[str] | None = None
    drm_resource_id: str | None = None  # "present" | "absent"
    platforms: frozenset[str] | None = None  # lower-cased
    min_app_version: tuple[int, ...] | None = None  # padded to 4 parts


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule. `threshold` = round(percent * 100), compared with the bucket."""

    name: str
    index: int  # 1-based position in the file, for messages
    enabled: bool
    when: When
    route: str
    percent: float
    threshold: int
    stickiness: Stickiness
    fallback: str | None
    shadow: Shadow | None


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated rules file: immutable, so a reload swaps it whole."""

    version: str
    sha256: str  # of the file's text, UTF-8
    default: str
    rules: tuple[Rule, ...]
    source: str
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def providers_used(self) -> frozenset[str]:
        """Every provider named by the default or a rule (route, fallback, shadow)."""
        names = {self.default}
        for rule in self.rules:
            names.update(
                n for n in (rule.route, rule.fallback, rule.shadow and rule.shadow.to) if n
            )
        return frozenset(names)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for the admin API: identity plus the rules as written."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "source": self.source,
            "default": self.default,
            "rules": self.document.get("rules", []),
        }


class RulesError(ValueError):
    """A rules file was refused; `problems` lists every reason, `str()` one per line."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one rule made of a request, for `explain`; `bucket` when a rollout applies."""

    rule: str
    outcome: Outcome
    detail: str
    bucket: int | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision (or the error that stopped it) with every rule's verdict in order."""

    decision: Decision | None
    verdicts: list[Verdict]
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        decision = self.decision.to_dict() if self.decision else None
        return {
            "decision": decision,
            "verdicts": [asdict(v) for v in self.verdicts],
            "error": self.error,
        }


def bucket(rule_name: str, value: str) -> int:
    """The rollout bucket (0..9999) of a stickiness value under a rule. Fixed forever."""
    digest = hashlib.sha256(f"{rule_name}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


# --- parsing and validation -------------------------------------------------------------


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


def _show(value: Any) -> str:
    return f"{type(value).__name__} {repr(value)[:40]}"


class _Problems:
    """Collects every problem of a file, so one run shows them all."""

    def __init__(self, providers: Providers | None) -> None:
        self.items: list[str] = []
        self.providers = providers

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def unknown_fields(self, raw: Mapping[Any, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in raw:
            if key not in allowed:
                hints = difflib.get_close_matches(str(key), allowed, n=1)
                self.add(
                    f"{where}{key}",
                    "unknown field" + "".join(f" (did you mean '{h}'?)" for h in hints),
                )

    def required(self, raw: Mapping[Any, Any], keys: Iterable[str], where: str) -> None:
        for key in keys:
            if key not in raw:
                self.add(f"{where}{key}", "is required")

    def string(self, value: Any, where: str) -> str | None:
        if isinstance(value, str) and value.strip():
            return value
        self.add(where, f"must be a non-empty string, not {_show(value)}")
        return None

    def provider(self, value: Any, where: str) -> str | None:
        name = self.string(value, where)
        if name is not None and self.providers is not None and name not in self.providers:
            known = ", ".join(sorted(self.providers)) or "none"
            self.add(where, f"provider '{name}' is not configured (known: {known})")
        return name

    def percent(self, value: Any, where: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(where, f"must be a number 0-100, not {_show(value)}")
        elif not math.isfinite(value) or not 0 <= value <= 100:
            self.add(where, f"{value} is out of range 0-100")
        elif abs(value * 100 - round(value * 100)) > 1e-6:
            self.add(where, f"{value} has more than two decimals")
        else:
            return float(value)
        return None

    def string_list(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not value:
            self.add(where, f"must be a non-empty list, not {_show(value)}")
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
    if problems.items or ruleset is None:
        raise RulesError(problems.items)
    return ruleset


def load_rules_file(path: Path, *, providers: Providers | None) -> RuleSet:
    """Read and parse a rules file; an unreadable file is a RulesError too."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise RulesError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise RulesError([f"{path} is not UTF-8 (byte {exc.start})"]) from None
    return parse_rules(text, source=str(path), providers=providers)


def _parse_document(doc: Any, text: str, source: str, p: _Problems) -> RuleSet | None:
    if not isinstance(doc, dict):
        p.add("top level", f"must be a mapping of version, default, rules; not {_show(doc)}")
        return None
    p.unknown_fields(doc, _TOP_FIELDS, "")
    p.required(doc, _TOP_FIELDS, "")
    version = doc.get("version")
    if "version" in doc and not (isinstance(version, str) and version.strip()):
        hint = f' (quote it: version: "{version}")' if version is not None else ""
        p.add("version", f"must be a non-empty string{hint}, not {_show(version)}")
    default = p.provider(doc["default"], "default") if "default" in doc else None
    if default and p.providers and default in p.providers:
        if p.providers[default].needs_drm_resource_id:
            p.add(
                "default",
                f"provider '{default}' needs a drmResourceId, so assets "
                "without one would have nowhere to go",
            )
    rules = _parse_rule_list(doc.get("rules", []), p)
    if p.items or not isinstance(version, str) or default is None:
        return None
    digest = hashlib.sha256(text.encode()).hexdigest()
    return RuleSet(version, digest, default, rules, source, doc)


def _parse_rule_list(raw: Any, p: _Problems) -> tuple[Rule, ...]:
    if not isinstance(raw, list):
        p.add("rules", f"must be a list, not {_show(raw)}")
        return ()
    rules: list[Rule] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(raw, start=1):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"rule '{name}' (#{index})" if isinstance(name, str) else f"rule #{index}"
        if isinstance(name, str) and name in first_index:
            p.add(f"{where}: name", f"duplicate of rule #{first_index[name]}")
        elif isinstance(name, str):
            first_index[name] = index
        if not isinstance(item, dict):
            p.add(where, f"must be a mapping, not {_show(item)}")
        elif rule := _parse_rule(item, index, f"{where}: ", p):
            rules.append(rule)
    return tuple(rules)


def _parse_rule(raw: dict[Any, Any], index: int, where: str, p: _Problems) -> Rule | None:
    count = len(p.items)
    p.unknown_fields(raw, _RULE_FIELDS, where)
    p.required(raw, ("name", "route"), where)
    name = _rule_name(raw["name"], f"{where}name", p) if "name" in raw else None
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        p.add(f"{where}enabled", f"must be true or false, not {_show(enabled)}")
    when = _parse_when(raw.get("when"), f"{where}when", p)
    route = p.provider(raw["route"], f"{where}route") if "route" in raw else None
    percent = p.percent(raw["percent"], f"{where}percent") if "percent" in raw else 100.0
    stickiness = raw.get("stickiness", "asset")
    if stickiness not in STICKINESS:
        p.add(f"{where}stickiness", f"{stickiness!r} is not one of {', '.join(STICKINESS)}")
    fallback = p.provider(raw["fallback"], f"{where}fallback") if "fallback" in raw else None
    if fallback is not None and fallback == route:
        p.add(f"{where}fallback", f"must differ from route ('{route}')")
    shadow = _parse_shadow(raw["shadow"], route, f"{where}shadow", p) if "shadow" in raw else None
    if len(p.items) > count or name is None or route is None or percent is None:
        return None
    threshold = round(percent * 100)
    return Rule(name, index, enabled, when, route, percent, threshold, stickiness, fallback, shadow)


def _rule_name(name: Any, where: str, p: _Problems) -> str | None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        p.add(where, f"{name!r} must match ^{NAME_PATTERN.pattern}$")
    elif name == "default":
        p.add(where, "'default' is reserved for the default decision")
    else:
        return name
    return None


def _parse_when(raw: Any, where: str, p: _Problems) -> When:
    if raw is None:  # `when:` left empty matches everything, like no `when`
        return When()
    if not isinstance(raw, dict):
        p.add(where, f"must be a mapping, not {_show(raw)}")
        return When()
    p.unknown_fields(raw, _WHEN_FIELDS, f"{where}.")
    lists = {key: p.string_list(raw[key], f"{where}.{key}") for key in _LIST_FIELDS if key in raw}
    for drm in lists.get("drm", ()):
        if drm not in DRM_SYSTEMS:
            p.add(f"{where}.drm", f"{drm!r} is not one of {', '.join(DRM_SYSTEMS)}")
    presence = raw.get("drm_resource_id")
    if "drm_resource_id" in raw and presence not in ("present", "absent"):
        p.add(f"{where}.drm_resource_id", f"{presence!r} must be 'present' or 'absent'")
    minimum = raw.get("min_app_version")
    min_version = _parse_version(minimum) if isinstance(minimum, str) else None
    if "min_app_version" in raw and min_version is None:
        p.add(f"{where}.min_app_version", f"{minimum!r} must be a quoted version like '5.0.0'")

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
        p.add(where, f"must be a mapping of to and percent, not {_show(raw)}")
        return None
    p.unknown_fields(raw, _SHADOW_FIELDS, f"{where}.")
    p.required(raw, _SHADOW_FIELDS, f"{where}.")
    to = p.provider(raw["to"], f"{where}.to") if "to" in raw else None
    if to is not None and to == route:
        p.add(f"{where}.to", f"must differ from route ('{route}')")
    percent = p.percent(raw["percent"], f"{where}.percent") if "percent" in raw else None
    return Shadow(to, percent) if to is not None and percent is not None else None


def _parse_version(text: str | None) -> tuple[int, ...] | None:
    """'5.12' -> (5, 12, 0, 0); None for anything but 1-4 dotted numbers."""
    if text is None or not _VERSION_PATTERN.fullmatch(text.strip()):
        return None
    parts = tuple(int(part) for part in text.strip().split("."))
    return parts + (0,) * (4 - len(parts))


# --- evaluation -------------------------------------------------------------------------


def _mismatch(when: When, ctx: RequestContext) -> str | None:
    """The first condition the request fails (its field name), or None if all hold."""
    entry = ctx.entry
    if when.drm is not None and ctx.drm not in when.drm:
        return "drm"
    if when.asset_ids is not None and ctx.asset_id not in when.asset_ids:
        return "asset_ids"
    if when.asset_prefixes is not None and not ctx.asset_id.startswith(when.asset_prefixes):
        return "asset_prefixes"
    if when.tags_any is not None and when.tags_any.isdisjoint(entry.tags):
        return "tags_any"
    if when.tags_all is not None and not when.tags_all <= entry.tags:
        return "tags_all"
    if when.drm_resource_id is not None and (
        (entry.drm_resource_id is None) != (when.drm_resource_id == "absent")
    ):
        return "drm_resource_id"
    if when.platforms is not None and (ctx.platform or "").lower() not in when.platforms:
        return "platforms"
    if when.min_app_version is not None:
        version = _parse_version(ctx.app_version)
        if version is None or version < when.min_app_version:
            return "min_app_version"
    return None


def _guard(provider: str, entry: CatalogEntry, providers: Providers) -> Reason | None:
    """None if `provider` may serve `entry`, else the guard that forbids it."""
    traits = providers.get(provider)
    if traits is None:  # not configured; parsing with the same providers rules this out
        return "guard_key_holders"
    if traits.needs_drm_resource_id and entry.drm_resource_id is None:
        return "guard_no_resource_id"
    if entry.key_holders is not None and provider not in entry.key_holders:
        return "guard_key_holders"
    return None


def _stickiness_value(rule: Rule, ctx: RequestContext) -> str:
    if rule.stickiness == "user" and ctx.user_id:
        return ctx.user_id
    if rule.stickiness == "drm_resource_id" and ctx.entry.drm_resource_id:
        return ctx.entry.drm_resource_id
    return ctx.asset_id  # also the documented stand-in for a missing user / drmResourceId


def _judge(
    rule: Rule, ctx: RequestContext, providers: Providers
) -> tuple[Outcome, str | None, int | None]:
    """(outcome, why, bucket): why is the failed field or the guard reason."""
    if not rule.enabled:
        return "disabled", None, None
    failed = _mismatch(rule.when, ctx)
    if failed is not None:
        return "not_matched", failed, None
    slot = bucket(rule.name, _stickiness_value(rule, ctx)) if rule.threshold < BUCKETS else None
    if slot is not None and slot >= rule.threshold:
        return "rollout_excluded", "rollout_excluded", slot
    guard = _guard(rule.route, ctx.entry, providers)
    return ("guarded", guard, slot) if guard else ("matched", None, slot)


def _rule_decision(rule: Rule, entry: CatalogEntry, providers: Providers) -> Decision:
    """The rule's decision; fallback and shadow only where the guards let them serve."""
    fallback = rule.fallback
    if fallback is not None and _guard(fallback, entry, providers):
        fallback = None
    shadow = rule.shadow
    if shadow is not None and _guard(shadow.to, entry, providers):
        shadow = None
    return Decision(rule.route, rule.name, "rule_match", fallback, shadow)


def _decide(
    rules: RuleSet, ctx: RequestContext, providers: Providers, trace: list[Verdict] | None
) -> Decision:
    """The one evaluation loop; with a `trace` it also judges the rules after the winner."""
    winner: Decision | None = None
    passed_on: Reason | None = None  # why the first matching rule did not decide
    for rule in rules.rules:
        if winner is not None and trace is None:
            break
        outcome, why, slot = _judge(rule, ctx, providers)
        if trace is not None:
            trace.append(_verdict(rule, ctx, (outcome, why, slot), winner))
        if winner is None and outcome == "matched":
            winner = _rule_decision(rule, ctx.entry, providers)
        elif winner is None and outcome in ("rollout_excluded", "guarded"):
            passed_on = passed_on or cast(Reason, why)
    if winner is not None:
        return winner
    guard = _guard(rules.default, ctx.entry, providers)
    if guard is None:
        return Decision(rules.default, "default", passed_on or "default")
    # The default cannot serve this asset: any provider the guards allow may (e.g. a new
    # title whose keys exist only at the incoming provider), in configuration order.
    for name in providers:
        if _guard(name, ctx.entry, providers) is None:
            return Decision(name, "default", passed_on or guard)
    if guard == "guard_no_resource_id":
        raise NoProvider("No DRM provider can serve this asset: it has no drmResourceId yet.")
    raise NoProvider("No DRM provider can serve this asset: no routable provider holds its keys.")


def evaluate(rules: RuleSet, ctx: RequestContext, providers: Providers) -> Decision:
    """Decide which provider serves `ctx`; raise NoProvider if none may."""
    return _decide(rules, ctx, providers, None)


def explain(rules: RuleSet, ctx: RequestContext, providers: Providers) -> Explanation:
    """The decision `evaluate` makes, with every rule's verdict in order (no I/O)."""
    verdicts: list[Verdict] = []
    try:
        decision = _decide(rules, ctx, providers, verdicts)
    except NoProvider as exc:
        return Explanation(None, verdicts, exc.message)
    return Explanation(decision, verdicts)


def _verdict(
    rule: Rule,
    ctx: RequestContext,
    judged: tuple[Outcome, str | None, int | None],
    winner: Decision | None,
) -> Verdict:
    outcome, why, slot = judged
    inside = slot is not None and slot < rule.threshold
    rollout = (
        f"bucket {slot} {'<' if inside else '>='} {rule.threshold} "
        f"(percent {rule.percent}, stickiness {rule.stickiness})"
    )
    if outcome == "disabled":
        detail = "enabled: false"
    elif outcome == "not_matched":
        detail = _describe_mismatch(rule.when, ctx, str(why))
    elif outcome == "rollout_excluded":
        detail = rollout
    elif why == "guard_no_resource_id":
        detail = f"'{rule.route}' needs a drmResourceId and the asset has none"
    elif why == "guard_key_holders":
        holders = ", ".join(sorted(ctx.entry.key_holders or ())) or "none"
        detail = f"'{rule.route}' is unconfigured or lacks the keys (key holders: {holders})"
    else:
        detail = f"route {rule.route}" + (f"; {rollout}" if slot is not None else "")
    if winner is not None and outcome != "disabled":  # reported for ops, not evaluated
        return Verdict(
            rule.name,
            "not_reached",
            f"'{winner.rule}' won first; would be {outcome.replace('_', ' ')}: {detail}",
            slot,
        )
    return Verdict(rule.name, outcome, detail, slot)


_WANTS = {
    "drm": "one of",
    "asset_ids": "one of",
    "asset_prefixes": "a prefix in",
    "tags_any": "any of",
    "tags_all": "all of",
    "drm_resource_id": "",
    "platforms": "one of",
    "min_app_version": "at least",
}


def _describe_mismatch(when: When, ctx: RequestContext, name: str) -> str:
    entry = ctx.entry
    have: Any = {
        "drm": ctx.drm,
        "asset_ids": ctx.asset_id,
        "asset_prefixes": ctx.asset_id,
        "tags_any": sorted(entry.tags),
        "tags_all": sorted(entry.tags),
        "drm_resource_id": "absent" if entry.drm_resource_id is None else "present",
        "platforms": ctx.platform,
        "min_app_version": ctx.app_version,
    }[name]
    want: Any = getattr(when, name)
    if name == "asset_ids":
        want = f"{len(want)} listed ids"
    elif name == "min_app_version":
        want = ".".join(map(str, want))
    elif isinstance(want, frozenset | tuple):
        want = sorted(want)
    return f"{name}: request has {have!r}, rule wants {_WANTS[name]} {want}".replace("  ", " ")


def summarize(rules: RuleSet) -> str:
    """One line for `rules check`: counts, version and providers used."""
    enabled = sum(rule.enabled for rule in rules.rules)
    used = ", ".join(sorted(rules.providers_used()))
    return (
        f"ok: {len(rules.rules)} rules ({enabled} enabled), version {rules.version}, "
        f"providers used: {used}, default {rules.default}"
    )
