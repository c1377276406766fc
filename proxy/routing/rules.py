"""Routing rules: the rule types, and the decision of which provider serves a request.

Pure: no I/O; `proxy.routing.file` parses and validates the rules file. Modelled on
flagd/Unleash: rules are tried in order, the first enabled rule whose `when` matches and whose
rollout includes the request wins, else the `default` provider; every decision carries the
rule name and a reason.

Rollout bucket (fixed; changing it reshuffles every ramp, and a golden test guards it):
    bucket = int.from_bytes(sha256(f"{rule_name}:{value}".encode()).digest()[:8], "big") % 10_000
and the request is in when `bucket < round(percent * 100)`, so raising `percent` only adds
traffic. `value` is the stickiness value: the asset id, the user id or the drmResourceId;
when a request has no user (or the asset no drmResourceId) the asset id stands in.

Guards no rule can override: a provider is never chosen for a DRM system it does not serve,
one that needs a drmResourceId (or the content key ids) never for an asset the catalog has
none for, and where the catalog lists `key_holders` only those providers are chosen.
A guarded or rollout-excluded rule passes the request on to the next rule; if the default
then serves it, the reason says why the first matching rule did not (its guard or
`rollout_excluded`). A later rule that serves it reports plain `rule_match`. When a guard
forbids the default provider itself and another provider serves, that guard decided: the
rule is named after it (`guard:key_holders`, `guard:no_resource_id`, `guard:no_key_ids`,
`guard:unserved_drm`; no rule file can use a colon) and the reason is the guard's,
whatever earlier rules did.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from proxy.catalog.base import CatalogEntry
from proxy.errors import NoProvider
from proxy.problems import ProblemsError

if TYPE_CHECKING:
    from proxy.keys.policy import KeyPolicy

Reason = Literal[
    "rule_match",
    "rollout_excluded",
    "guard_no_resource_id",
    "guard_no_key_ids",
    "guard_key_holders",
    "guard_unserved_drm",
    "default",
]
Stickiness = Literal["asset", "user", "drm_resource_id"]
Outcome = Literal[
    "matched", "not_matched", "disabled", "rollout_excluded", "guarded", "not_reached"
]
Providers = Mapping[str, "ProviderTraits"]
GuardReason = Literal[
    "guard_no_resource_id", "guard_no_key_ids", "guard_key_holders", "guard_unserved_drm"
]

BUCKETS = 10_000
STICKINESS = ("asset", "user", "drm_resource_id")
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # whole name: fullmatch
# The `rule` of a decision a guard made by overriding the default provider.
GUARD_RULES: Mapping[GuardReason, str] = {
    "guard_no_resource_id": "guard:no_resource_id",
    "guard_no_key_ids": "guard:no_key_ids",
    "guard_key_holders": "guard:key_holders",
    "guard_unserved_drm": "guard:unserved_drm",
}
# Digit runs are capped so a hostile X-App-Version cannot make int() work hard.
_VERSION_PATTERN = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9}){0,3}")


@dataclass(frozen=True, slots=True)
class ProviderTraits:
    """What the rules need to know of one configured provider: what it needs of an asset,
    and the DRM systems (`aes128` for HLS keys) it serves; `serves` None means every one.
    `key_api`: it has a key API, so the `keys:` section may name it;
    `key_generate_only`: that API only makes keys (no export or ingest): a source, never a
    mirror."""

    needs_drm_resource_id: bool
    needs_key_ids: bool = False
    serves: frozenset[str] | None = None
    key_api: bool = False
    key_generate_only: bool = False


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
    """Where a request goes and why. `rule` is "default" when no rule decided, or one of
    GUARD_RULES when a guard overrode the default provider."""

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
    """A validated rules file: immutable, so a reload swaps it whole. `keys` is its `keys:`
    section (which provider makes a title's content keys), None when it has none."""

    version: str
    sha256: str  # of the file's text, UTF-8
    default: str
    rules: tuple[Rule, ...]
    source: str
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    keys: KeyPolicy | None = None
    text: str = field(default="", compare=False, repr=False)  # as written: for the change log

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
            "keys": self.document.get("keys"),
        }


class RulesError(ProblemsError):
    """A rules file was refused; `problems` lists every reason, `str()` one per line."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one rule made of a request, for `explain`; `bucket` when a rollout applies."""

    rule: str
    outcome: Outcome
    detail: str
    bucket: int | None = None


@dataclass(frozen=True, slots=True)
class Explanation:
    """A decision (or the error that stopped it) with every rule's verdict in order;
    `override` says why, when a guard overrode the default provider."""

    decision: Decision | None
    verdicts: list[Verdict]
    error: str | None = None
    override: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        decision = self.decision.to_dict() if self.decision else None
        return {
            "decision": decision,
            "verdicts": [asdict(v) for v in self.verdicts],
            "override": self.override,
            "error": self.error,
        }


def bucket(rule_name: str, value: str) -> int:
    """The rollout bucket (0..9999) of a stickiness value under a rule. Fixed forever."""
    digest = hashlib.sha256(f"{rule_name}:{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def parse_version(text: str | None) -> tuple[int, ...] | None:
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
        version = parse_version(ctx.app_version)
        if version is None or version < when.min_app_version:
            return "min_app_version"
    return None


def guard_against(provider: str, ctx: RequestContext, providers: Providers) -> GuardReason | None:
    """None if `provider` may serve this request, else the guard that forbids it."""
    traits = providers.get(provider)
    entry = ctx.entry
    if traits is None:  # not configured; parsing with the same providers rules this out
        return "guard_key_holders"
    if traits.serves is not None and ctx.drm not in traits.serves:
        return "guard_unserved_drm"
    if traits.needs_drm_resource_id and entry.drm_resource_id is None:
        return "guard_no_resource_id"
    if traits.needs_key_ids and not entry.key_ids:
        return "guard_no_key_ids"
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
    guard = guard_against(rule.route, ctx, providers)
    return ("guarded", guard, slot) if guard else ("matched", None, slot)


def _rule_decision(rule: Rule, ctx: RequestContext, providers: Providers) -> Decision:
    """The rule's decision; fallback and shadow only where the guards let them serve."""
    fallback = rule.fallback
    if fallback is not None and guard_against(fallback, ctx, providers):
        fallback = None
    shadow = rule.shadow
    if shadow is not None and guard_against(shadow.to, ctx, providers):
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
            winner = _rule_decision(rule, ctx, providers)
        elif winner is None and outcome in ("rollout_excluded", "guarded"):
            passed_on = passed_on or cast(Reason, why)
    if winner is not None:
        return winner
    guard = guard_against(rules.default, ctx, providers)
    if guard is None:
        return Decision(rules.default, "default", passed_on or "default")
    # The default cannot serve this asset: any provider the guards allow may (e.g. a new
    # title whose keys exist only at the incoming provider), in configuration order. The
    # guard chose, so it is named, not the earlier rule that merely passed the request on.
    for name in providers:
        if guard_against(name, ctx, providers) is None:
            return Decision(name, GUARD_RULES[guard], guard)
    raise NoProvider(_NO_PROVIDER[guard])


_NO_PROVIDER: Mapping[GuardReason, str] = {
    "guard_no_resource_id": "No DRM provider can serve this asset: it has no drmResourceId yet.",
    "guard_no_key_ids": "No DRM provider can serve this asset: its key ids are not known yet.",
    "guard_key_holders": "No DRM provider can serve this asset: no routable provider holds "
    "its keys.",
    "guard_unserved_drm": "No configured DRM provider serves this DRM system.",
}


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
    if decision.rule not in GUARD_RULES.values():
        return Explanation(decision, verdicts)
    detail = _guard_detail(cast(GuardReason, decision.reason), rules.default, ctx.entry)
    return Explanation(decision, verdicts, override=f"{detail}; '{decision.provider}' serves")


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
    elif outcome == "guarded":
        detail = _guard_detail(cast(GuardReason, why), rule.route, ctx.entry)
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


def _guard_detail(guard: GuardReason, provider: str, entry: CatalogEntry) -> str:
    """Why `guard` forbids `provider` for this asset, for ops."""
    if guard == "guard_no_resource_id":
        return f"'{provider}' needs a drmResourceId and the asset has none"
    if guard == "guard_no_key_ids":
        return f"'{provider}' needs the content key ids and the catalog has none for the asset"
    if guard == "guard_unserved_drm":
        return f"'{provider}' does not serve this DRM system"
    holders = ", ".join(sorted(entry.key_holders or ())) or "none"
    return f"'{provider}' is unconfigured or lacks the keys (key holders: {holders})"


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
