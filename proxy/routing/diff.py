"""`rules diff`: which titles change provider between two rules files ("what moves").

Pure: no I/O. The CLI (`proxy.cli.rules_diff`) streams catalog entries into a `DiffRun`;
each title is evaluated under OLD and NEW with the real `evaluate`/`explain` for every DRM
system a provider serves, and classified per (NEW's deciding rule, DRM system):

- moved: a different provider that is not the default (legacy -> incoming, or across);
- moved_back: a different provider that is the config's `routing.default_provider`;
- held_back: the same provider, though NEW's first matching rule in its rollout wanted
  another one and a guard forbade it (counted under that rule, per guard reason);
- unchanged, and unservable (no provider may serve it under either file).

Speed: a decision reads a title only through its tags, drmResourceId presence, key ids
presence, key holders, whether each rule's asset_ids/asset_prefixes hold it, and whether
each asset- or drmResourceId-sticky ramp includes it. Titles alike in all of these (their
*signature*) share one evaluation, so a catalog costs one SHA-256 per partial ramp per title.

Request dependence: with `stickiness: user` a title's provider depends on the viewer. Each
such ramp's bucket is uniform over users, so OLD/NEW thresholds of one rule split users into
at most three exact shares (in both, in one only, in neither); the rules are evaluated for
each combination with that rule forced in or out, and a title's outcome carries the share of
users it applies to. Rules naming platforms or a minimum app version are evaluated for each
platform / version they name plus "any other"; there the traffic mix is unknown, so the
share reported is that of the most affected platform / version.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generic, Literal, TypeVar

from proxy.catalog.base import CatalogEntry
from proxy.domain import ALL_DRMS
from proxy.routing.rules import (
    BUCKETS,
    Decision,
    GuardReason,
    Providers,
    RequestContext,
    Rule,
    RuleSet,
    bucket,
    explain,
    guard_against,
)

T = TypeVar("T")
Category = Literal["moved", "moved_back", "held_back", "unchanged", "unservable"]
CATEGORIES: tuple[Category, ...] = ("moved", "moved_back", "held_back", "unchanged", "unservable")
UNSERVABLE_RULE = "none"  # the row of titles no provider may serve
_EPSILON = 1e-9  # user shares are sums of products of exact fractions
MAX_VARIANTS = 512  # request shapes evaluated per title signature
Z_95 = 1.959964  # two-sided 95% normal quantile


def served_drms(providers: Providers) -> tuple[str, ...]:
    """The DRM systems (aes128 included) at least one configured provider serves."""
    return tuple(
        drm
        for drm in ALL_DRMS
        if any(t.serves is None or drm in t.serves for t in providers.values())
    )


# --- request variants ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """One request shape: the platform and app version sent, and OLD/NEW with every partial
    user-sticky ramp forced in or out; `weight` is the share of users it stands for."""

    group: int  # the (platform, app version) combination
    platform: str | None
    app_version: str | None
    weight: float
    old: RuleSet
    new: RuleSet


class TooManyVariants(ValueError):
    """The rules depend on the request in more ways than `MAX_VARIANTS` evaluations cover."""


def _user_ramps(rules: RuleSet) -> dict[str, int]:
    return {r.name: r.threshold for r in rules.rules if r.stickiness == "user" and r.enabled}


def _user_splits(
    old: RuleSet, new: RuleSet
) -> list[list[tuple[str, bool | None, bool | None, float]]]:
    """Per partial user-sticky rule: its user shares as (name, in OLD, in NEW, share)."""
    olds, news = _user_ramps(old), _user_ramps(new)
    splits = []
    for name in sorted(olds.keys() | news.keys()):
        t_old, t_new = olds.get(name), news.get(name)
        thresholds = {t for t in (t_old, t_new) if t is not None}
        if all(t in (0, BUCKETS) for t in thresholds):
            continue  # everyone or no one: no user dependence
        edges = sorted({0, BUCKETS, *thresholds})
        splits.append(
            [
                (
                    name,
                    None if t_old is None else low < t_old,
                    None if t_new is None else low < t_new,
                    (high - low) / BUCKETS,
                )
                for low, high in itertools.pairwise(edges)
            ]
        )
    return splits


def _forced(rules: RuleSet, inside: Mapping[str, bool | None]) -> RuleSet:
    """`rules` with the named user-sticky rules' rollouts fixed: all users in, or none."""
    changed = tuple(
        replace(r, threshold=BUCKETS if inside[r.name] else 0)
        if r.stickiness == "user" and inside.get(r.name) is not None
        else r
        for r in rules.rules
    )
    return replace(rules, rules=changed)


def _request_shapes(old: RuleSet, new: RuleSet) -> list[tuple[str | None, str | None]]:
    """Each platform and minimum app version the rules name, plus "any other" (None)."""
    platforms: set[str] = set()
    versions: set[tuple[int, ...]] = set()
    for rule in (*old.rules, *new.rules):
        platforms.update(rule.when.platforms or ())
        if rule.when.min_app_version is not None:
            versions.add(rule.when.min_app_version)
    version_texts = [".".join(map(str, v)) for v in sorted(versions)]
    return list(itertools.product([None, *sorted(platforms)], [None, *version_texts]))


def build_variants(old: RuleSet, new: RuleSet) -> list[Variant]:
    """Every request shape a title's decision can depend on; TooManyVariants past the cap."""
    shapes = _request_shapes(old, new)
    splits = _user_splits(old, new)
    combos = math.prod(len(s) for s in splits) * len(shapes)
    if combos > MAX_VARIANTS:
        raise TooManyVariants(
            f"the rules depend on platform, app version and user ramps in {combos} ways "
            f"(at most {MAX_VARIANTS} are evaluated): use --sample or fewer partial user ramps"
        )
    variants = []
    for combo in itertools.product(*splits):
        old_in = {name: in_old for name, in_old, _, _ in combo}
        new_in = {name: in_new for name, _, in_new, _ in combo}
        weight = math.prod(share for *_, share in combo)
        old_v, new_v = _forced(old, old_in), _forced(new, new_in)
        for group, (platform, version) in enumerate(shapes):
            variants.append(Variant(group, platform, version, weight, old_v, new_v))
    return variants


# --- signatures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _RampCheck:
    """A rollout whose membership depends on the title: one hash, compared per threshold."""

    name: str
    by_resource_id: bool  # stickiness drm_resource_id, else asset
    thresholds: tuple[int, ...]


class Signer:
    """Computes a title's signature: everything `evaluate` reads of it (see the module)."""

    def __init__(self, old: RuleSet, new: RuleSet) -> None:
        rules = (*old.rules, *new.rules)
        self._id_sets = list(dict.fromkeys(r.when.asset_ids for r in rules if r.when.asset_ids))
        self._prefixes = list(
            dict.fromkeys(r.when.asset_prefixes for r in rules if r.when.asset_prefixes)
        )
        ramps: dict[tuple[str, bool], set[int]] = {}
        for rule in rules:
            if rule.stickiness != "user" and 0 < rule.threshold < BUCKETS:
                key = (rule.name, rule.stickiness == "drm_resource_id")
                ramps.setdefault(key, set()).add(rule.threshold)
        self._ramps = [_RampCheck(n, r, tuple(sorted(t))) for (n, r), t in ramps.items()]

    def sign(self, entry: CatalogEntry) -> tuple[Any, ...]:
        """The title's signature: equal signatures get equal decisions."""
        asset_id = entry.asset_id
        checks: list[bool] = [asset_id in ids for ids in self._id_sets]
        checks.extend(asset_id.startswith(prefixes) for prefixes in self._prefixes)
        for ramp in self._ramps:
            value = (entry.drm_resource_id or asset_id) if ramp.by_resource_id else asset_id
            slot = bucket(ramp.name, value)
            checks.extend(slot < t for t in ramp.thresholds)
        return (
            entry.tags,
            entry.drm_resource_id is None,
            bool(entry.key_ids),
            entry.key_holders,
            tuple(checks),
        )


# --- classification --------------------------------------------------------------------------

RowKey = tuple[str, str]  # (rule, drm)
OutcomeKey = tuple[str, str, Category, str]  # (rule, drm, category, detail)


@dataclass(frozen=True, slots=True)
class Classified:
    """One title under one request shape for one DRM system."""

    rule: str
    category: Category
    detail: str  # "old->new" for a move, the guard reason when held back, else ""


def _held_by(
    new: RuleSet, ctx: RequestContext, providers: Providers
) -> tuple[Rule, GuardReason] | None:
    """NEW's first rule that matched in its rollout but was guarded, with the guard."""
    verdicts = explain(new, ctx, providers).verdicts
    by_name = {r.name: r for r in new.rules}
    for verdict in verdicts:
        if verdict.outcome == "guarded":
            rule = by_name[verdict.rule]
            guard = guard_against(rule.route, ctx, providers)
            return (rule, guard) if guard is not None else None
    return None


def _decision(rules: RuleSet, ctx: RequestContext, providers: Providers) -> Decision | None:
    return explain(rules, ctx, providers).decision  # None: no provider may serve it


def classify(
    variant: Variant, ctx: RequestContext, providers: Providers, default: str
) -> Classified:
    """Compare OLD's and NEW's decision for one request (see the module for the buckets)."""
    old = _decision(variant.old, ctx, providers)
    new = _decision(variant.new, ctx, providers)
    if new is None:
        return Classified(UNSERVABLE_RULE, "unservable", "")
    old_provider = old.provider if old is not None else "none"
    if old_provider != new.provider:
        moved: Category = "moved_back" if new.provider == default else "moved"
        return Classified(new.rule, moved, f"{old_provider}->{new.provider}")
    held = _held_by(variant.new, ctx, providers)
    if held is not None and held[0].route != new.provider:
        return Classified(held[0].name, "held_back", held[1])
    return Classified(new.rule, "unchanged", "")


@dataclass(frozen=True, slots=True)
class TitleOutcome:
    """What one signature's titles do: per outcome its share of requests (1.0 unless the
    answer depends on the request), and whether it depends on the request at all."""

    shares: tuple[tuple[OutcomeKey, float], ...]
    categories: frozenset[Category]
    dependent_rows: frozenset[RowKey]  # the rows whose outcome varies with the request


def judge_title(
    entry: CatalogEntry,
    variants: Sequence[Variant],
    drms: Sequence[str],
    providers: Providers,
    default: str,
) -> TitleOutcome:
    """Evaluate one title under every variant and DRM system."""
    shares: dict[OutcomeKey, float] = {}
    dependent: set[RowKey] = set()
    for drm in drms:
        by_group: dict[int, dict[OutcomeKey, float]] = {}
        for variant in variants:
            ctx = RequestContext(
                drm, entry.asset_id, entry, variant.platform, variant.app_version, "diff"
            )
            c = classify(variant, ctx, providers, default)
            weights = by_group.setdefault(variant.group, {})
            key = (c.rule, drm, c.category, c.detail)
            weights[key] = weights.get(key, 0.0) + variant.weight
        keys = {key for weights in by_group.values() for key in weights}
        for key in keys:
            share = max(weights.get(key, 0.0) for weights in by_group.values())
            shares[key] = 1.0 if share > 1 - _EPSILON else share
        if len(keys) > 1:  # more than one outcome for this DRM system: the request decides
            dependent.update((key[0], key[1]) for key in keys)
    categories = frozenset(key[2] for key in shares)
    return TitleOutcome(tuple(shares.items()), categories, frozenset(dependent))


# --- aggregation -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Group:
    """The titles sharing one signature: how many, and the first few ids."""

    outcome: TitleOutcome
    count: int = 0
    ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class RowCounts:
    """One (rule, DRM system) row: titles per bucket (those it applies to for at least some
    requests), the same weighted by the share of requests, moves by provider pair, samples."""

    rule: str
    drm: str
    counts: dict[Category, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    weighted: dict[Category, float] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0.0))
    held_by_reason: dict[str, int] = field(default_factory=dict)
    moves: dict[str, int] = field(default_factory=dict)
    request_dependent: int = 0
    samples: dict[Category, list[str]] = field(default_factory=dict)
    held_samples: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Totals:
    """Titles (not title x DRM pairs) in each bucket, over all DRM systems."""

    titles: int = 0
    moved: int = 0
    moved_back: int = 0
    held_back: int = 0
    unchanged: int = 0
    unservable: int = 0
    request_dependent: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DiffResult:
    """Totals, rows in rule order, and up to `show` sample ids per bucket."""

    totals: Totals
    rows: list[RowCounts]
    samples: dict[Category, list[dict[str, str]]]
    signatures: int


class DiffRun:
    """Accumulates titles (`add`) and reports them (`result`); see the module."""

    def __init__(
        self,
        old: RuleSet,
        new: RuleSet,
        providers: Providers,
        *,
        default: str,
        show: int = 5,
    ) -> None:
        self.old, self.new, self.providers, self.default = old, new, providers, default
        self.drms = served_drms(providers)
        self.variants = build_variants(old, new)
        self.show = show
        self._signer = Signer(old, new)
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self.titles = 0

    def add(self, entries: Iterable[CatalogEntry]) -> None:
        """Count a batch of titles."""
        groups, sign, show = self._groups, self._signer.sign, self.show
        for entry in entries:
            key = sign(entry)
            group = groups.get(key)
            if group is None:
                outcome = judge_title(entry, self.variants, self.drms, self.providers, self.default)
                group = groups[key] = _Group(outcome)
            group.count += 1
            if len(group.ids) < show:
                group.ids.append(entry.asset_id)
            self.titles += 1

    def result(self) -> DiffResult:
        """The counts so far, rows ordered as NEW's rules, then default and guards."""
        rows: dict[RowKey, RowCounts] = {}
        title_counts = dict.fromkeys(CATEGORIES, 0)
        dependent = 0
        samples: dict[Category, list[dict[str, str]]] = {c: [] for c in CATEGORIES}
        for group in self._groups.values():
            outcome = group.outcome
            for category in outcome.categories:
                title_counts[category] += group.count
            dependent += group.count if outcome.dependent_rows else 0
            for rule, drm in outcome.dependent_rows:
                row = rows.get((rule, drm)) or rows.setdefault((rule, drm), RowCounts(rule, drm))
                row.request_dependent += group.count
            for (rule, drm, category, detail), share in outcome.shares:
                row = rows.get((rule, drm)) or rows.setdefault((rule, drm), RowCounts(rule, drm))
                self._count(row, category, detail, share, group)
                self._sample(samples[category], group.ids, rule, drm, detail)
        totals = Totals(
            titles=self.titles,
            moved=title_counts["moved"],
            moved_back=title_counts["moved_back"],
            held_back=title_counts["held_back"],
            unchanged=title_counts["unchanged"],
            unservable=title_counts["unservable"],
            request_dependent=dependent,
        )
        return DiffResult(totals, self._ordered(rows), samples, len(self._groups))

    def _count(
        self, row: RowCounts, category: Category, detail: str, share: float, group: _Group
    ) -> None:
        row.counts[category] += group.count
        row.weighted[category] += share * group.count
        if category == "held_back":
            row.held_by_reason[detail] = row.held_by_reason.get(detail, 0) + group.count
            _extend(row.held_samples.setdefault(detail, []), group.ids, self.show)
        elif category in ("moved", "moved_back"):
            row.moves[detail] = row.moves.get(detail, 0) + group.count
        _extend(row.samples.setdefault(category, []), group.ids, self.show)

    def _sample(
        self, into: list[dict[str, str]], ids: list[str], rule: str, drm: str, detail: str
    ) -> None:
        for asset_id in ids[: self.show - len(into)]:
            into.append({"asset_id": asset_id, "drm": drm, "rule": rule, "detail": detail})

    def _ordered(self, rows: dict[RowKey, RowCounts]) -> list[RowCounts]:
        order = {rule.name: i for i, rule in enumerate(self.new.rules)}
        drm_order = {drm: i for i, drm in enumerate(ALL_DRMS)}

        def position(key: RowKey) -> tuple[int, str, int]:
            rule, drm = key
            return (order.get(rule, len(order)), rule, drm_order.get(drm, 0))

        return [rows[key] for key in sorted(rows, key=position)]


def _extend(into: list[str], ids: list[str], limit: int) -> None:
    into.extend(ids[: max(0, limit - len(into))])


# --- sampling --------------------------------------------------------------------------------


class Reservoir(Generic[T]):
    """A uniform random sample of `size` items from a stream fed in batches, holding only
    the sample (algorithm R); `seen` counts the stream."""

    def __init__(self, size: int, rng: random.Random) -> None:
        self.size, self.rng, self.seen = size, rng, 0
        self.kept: list[T] = []

    def add(self, items: Iterable[T]) -> None:
        for item in items:
            if self.seen < self.size:
                self.kept.append(item)
            else:
                slot = self.rng.randrange(self.seen + 1)
                if slot < self.size:
                    self.kept[slot] = item
            self.seen += 1


def share_interval(hits: int, sample: int, population: int) -> tuple[float, float]:
    """95% interval on the share of `population` with the property, `hits` of a uniform
    `sample` having it: Wilson score interval, narrowed by the finite-population correction."""
    if sample <= 0:
        return 0.0, 1.0
    p = hits / sample
    z2 = Z_95 * Z_95
    centre = (p + z2 / (2 * sample)) / (1 + z2 / sample)
    half = Z_95 * math.sqrt(p * (1 - p) / sample + z2 / (4 * sample * sample)) / (1 + z2 / sample)
    if population > 1:
        half *= math.sqrt(max(0.0, (population - sample) / (population - 1)))
        centre = p + (centre - p) * math.sqrt(max(0.0, (population - sample) / (population - 1)))
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == sample else min(1.0, centre + half)
    return low, high


def error_bound(totals: Totals, population: int) -> dict[str, Any]:
    """Per bucket: the observed count and share of the sample, the 95% interval on the share
    of the whole catalog, and the catalog-wide counts it scales to."""
    sample = totals.titles
    bound: dict[str, Any] = {"confidence": 0.95, "method": "wilson score, finite population"}
    for name in ("moved", "moved_back", "held_back"):
        hits = getattr(totals, name)
        low, high = share_interval(hits, sample, population)
        bound[name] = {
            "observed": hits,
            "share": hits / sample if sample else 0.0,
            "share_low": low,
            "share_high": high,
            "estimate": round(hits / sample * population) if sample else 0,
            "estimate_low": max(hits, math.floor(low * population)),
            "estimate_high": min(population - (sample - hits), math.ceil(high * population)),
        }
    return bound


# --- verdict ---------------------------------------------------------------------------------


def verdict(
    totals: Totals,
    *,
    default: str,
    max_moves: int | None,
    population: int | None = None,
) -> tuple[int, list[str]]:
    """(exit code, reasons): 1 when anything moves back toward `default`, or more than
    `max_moves` titles move (scaled to `population` when `totals` is a sample), else 0."""
    reasons = []
    if totals.moved_back:
        reasons.append(f"{totals.moved_back} title(s) move back toward '{default}'")
    if max_moves is not None:
        moved = totals.moved
        scaled = ""
        if population is not None and totals.titles:
            moved = round(totals.moved / totals.titles * population)
            scaled = f" (estimated from {totals.moved} of a {totals.titles}-title sample)"
        if moved > max_moves:
            reasons.append(f"{moved} title(s) move{scaled}, more than --max-moves {max_moves}")
    return (1 if reasons else 0), reasons
