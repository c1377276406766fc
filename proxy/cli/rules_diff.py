"""`drm-gateway rules diff OLD NEW --config C`: what a rules change moves, title by title.

Reads the whole catalog (a SQLite file or a Redis catalog) page by page through the
backend's whole-catalog reads (`iter_entries`; for a sample `iter_ids`, then `get_many`), and
hands the entries to `proxy.routing.diff`. Exit 0: nothing moves back and at most
--max-moves titles move; 1: a reviewer is needed; 2: usage, config, rules file or catalog
problem (one line each, never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.cli.backfill import UsageError  # a bad input: one line, exit status 2

if TYPE_CHECKING:
    from proxy.catalog.base import CatalogSettings
    from proxy.catalog.redis import RedisCatalog
    from proxy.catalog.sqlite import SqliteCatalog
    from proxy.config import RulesView
    from proxy.routing.diff import DiffResult, DiffRun, RowCounts
    from proxy.routing.rules import RuleSet

BATCH = 1_000  # titles read and evaluated per batch
# Above this many titles (and without --sample) a uniform sample of AUTO_SAMPLE is judged.
AUTO_SAMPLE_ABOVE = 2_000_000
AUTO_SAMPLE = 200_000
# A page's pipeline (1,000 hashes) may take longer than a license lookup's timeout allows.
READ_TIMEOUT = 30.0
EXIT_OK, EXIT_REVIEW, EXIT_USAGE = 0, 1, 2


def add_diff_command(rules_cmds: Any) -> None:
    """Register `rules diff` under the `rules` command."""
    diff = rules_cmds.add_parser(
        "diff",
        help="what a rules change moves: per rule and DRM system, over the catalog",
        description="Evaluates OLD and NEW for every catalog title and DRM system (or a "
        "uniform sample) and counts the titles that move forward, move back toward the "
        "default provider, or that a guard holds back. Exit 0: nothing moves back and at "
        "most --max-moves move; 1: a reviewer is needed; 2: usage, invalid rules file, "
        "unreadable config or unreachable catalog.",
    )
    diff.add_argument("old", type=Path, help="the rules file in force")
    diff.add_argument("new", type=Path, help="the proposed rules file")
    diff.add_argument("--config", type=Path, required=True, help="the gateway config")
    diff.add_argument(
        "--catalog",
        metavar="PATH_OR_URL",
        help="a SQLite catalog file or a redis://, rediss://, unix:// URL (default: the "
        "config's catalog)",
    )
    diff.add_argument(
        "--key-prefix", help="Redis key prefix (default: the config's, else drm-gateway:)"
    )
    diff.add_argument(
        "--password-env", metavar="NAME", help="the Redis password is in this variable"
    )
    diff.add_argument(
        "--sample",
        type=_count_arg(1),
        metavar="N",
        help=f"judge a uniform random sample of N titles (automatic, {AUTO_SAMPLE:,}, above "
        f"{AUTO_SAMPLE_ABOVE:,} titles)",
    )
    diff.add_argument("--seed", type=int, help="random seed of the sample (default: random)")
    diff.add_argument(
        "--max-moves", type=_count_arg(0), metavar="N", help="exit 1 if more than N titles move"
    )
    diff.add_argument(
        "--show", type=_count_arg(0), default=5, metavar="K", help="sample ids per bucket (5)"
    )
    diff.add_argument("--json", action="store_true", help="the full result as JSON")
    diff.set_defaults(func=cmd_rules_diff)


def _count_arg(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def cmd_rules_diff(args: argparse.Namespace) -> int:
    """Run `rules diff`; its exit status."""
    from proxy.observability.logs import configure_logging

    # Backend warnings would repeat the one-line error (and stdout carries the report).
    configure_logging(level="error", fmt="console", stream=sys.stderr)
    try:
        view = _config_view(args.config)
        assert view.routing is not None and view.catalog is not None  # routing=True
        old, new = _rules(args.old, args.new, view=view)
        settings, where = _catalog_settings(args, view.catalog)
        report = asyncio.run(_run(args, view, old, new, settings))
    except UsageError as exc:
        print(f"drm-gateway rules diff: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _ProblemsExit as exc:
        return exc.code
    report["catalog"] = where
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return int(report["exit_code"])


class _ProblemsExit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _print_problems(source: Path, problems: list[str]) -> None:
    from proxy.cli.main import _print_problems as print_problems

    print_problems(source, problems)


def _config_view(path: Path) -> RulesView:
    from proxy.config import ConfigError, load_rules_view

    try:
        return load_rules_view(path, routing=True)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        raise _ProblemsExit(EXIT_USAGE) from None


def _rules(*paths: Path, view: RulesView) -> list[RuleSet]:
    """Each rules file, checked against the config's providers; every problem of every
    file is printed before giving up."""
    from proxy.routing.file import load_rules_file
    from proxy.routing.rules import RulesError

    loaded, refused = [], False
    for path in paths:
        try:
            loaded.append(load_rules_file(path, providers=view.providers))
        except RulesError as exc:
            _print_problems(path, exc.problems)
            refused = True
    if refused:
        raise _ProblemsExit(EXIT_USAGE)
    return loaded


def _catalog_settings(
    args: argparse.Namespace, configured: CatalogSettings
) -> tuple[CatalogSettings, dict[str, str]]:
    """The catalog to read (--catalog, else the config's) and how to name it."""
    from dataclasses import replace

    from proxy.catalog.base import CatalogSettings, RedisCatalogSettings
    from proxy.catalog.redis import URL_SCHEMES, check_url

    target = args.catalog
    if target is None:
        if configured.backend == "sqlite" and configured.path is not None:
            return configured, {"backend": "sqlite", "location": str(configured.path)}
        if configured.backend == "redis" and configured.redis is not None:
            redis = replace(configured.redis, timeout=READ_TIMEOUT)
            if args.key_prefix is not None:
                redis = replace(redis, key_prefix=args.key_prefix)
            return replace(configured, redis=redis), {"backend": "redis", "location": redis.url}
        raise UsageError(
            f"the config's catalog backend '{configured.backend}' cannot be listed: give "
            "--catalog with a SQLite file or a redis:// URL"
        )
    if target.split(":", 1)[0] in URL_SCHEMES and "://" in target:
        try:
            check_url(target)
        except ValueError as exc:
            raise UsageError(f"--catalog {exc}") from None
        base = configured.redis
        prefix = args.key_prefix or (base.key_prefix if base is not None else "drm-gateway:")
        password = _password(args)
        if password is None and base is not None and base.url == target:
            password = base.password  # the config's own Redis, named again
        redis = RedisCatalogSettings(
            url=target, password=password, key_prefix=prefix, timeout=READ_TIMEOUT
        )
        return CatalogSettings(backend="redis", redis=redis), {
            "backend": "redis",
            "location": target,
        }
    return CatalogSettings(backend="sqlite", path=Path(target)), {
        "backend": "sqlite",
        "location": target,
    }


def _password(args: argparse.Namespace) -> str | None:
    if args.password_env is None:
        return None
    password = os.environ.get(args.password_env) or None
    if password is None:
        raise UsageError(f"--password-env: environment variable {args.password_env} is not set")
    return password


def _open(settings: CatalogSettings) -> SqliteCatalog | RedisCatalog:
    """The catalog backend itself (no cache in front: every title is read once)."""
    from proxy.catalog.redis import RedisCatalog
    from proxy.catalog.sqlite import SqliteCatalog
    from proxy.errors import CatalogUnavailable

    if settings.backend == "redis" and settings.redis is not None:
        return RedisCatalog(settings.redis)
    assert settings.path is not None  # _catalog_settings gives a path or Redis settings
    try:
        return SqliteCatalog(settings.path)
    except CatalogUnavailable:
        raise UsageError(f"{settings.path}: no such catalog database") from None


async def _run(
    args: argparse.Namespace,
    view: RulesView,
    old: RuleSet,
    new: RuleSet,
    settings: CatalogSettings,
) -> dict[str, Any]:
    """Read the catalog (all of it, or a sample) into a DiffRun and build the report."""
    from proxy.errors import CatalogUnavailable
    from proxy.routing.diff import DiffRun, TooManyVariants

    assert view.routing is not None
    default = view.routing.default_provider
    try:
        run = DiffRun(old, new, view.providers, default=default, show=args.show)
    except TooManyVariants as exc:
        raise UsageError(str(exc)) from None
    catalog = _open(settings)
    started = time.monotonic()
    try:
        size = args.sample
        if size is None and await catalog.count() > AUTO_SAMPLE_ABOVE:
            size = AUTO_SAMPLE
        sampled = None if size is None else await _judge_sample(catalog, run, size, args.seed)
        if sampled is None:
            async for page in catalog.iter_entries(BATCH):
                run.add(page)
    except CatalogUnavailable as exc:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise UsageError(f"cannot read the catalog: {_one_line(cause)}") from None
    finally:
        await catalog.close()
    elapsed = time.monotonic() - started
    return build_report(run, run.result(), args, default=default, elapsed=elapsed, sampled=sampled)


async def _judge_sample(
    catalog: SqliteCatalog | RedisCatalog, run: DiffRun, size: int, seed: int | None
) -> dict[str, int] | None:
    """Judge a uniform sample of `size` titles: ids first (no entry decoded), then only the
    sampled entries. None when the catalog is no larger than the sample (judge it all)."""
    from proxy.routing.diff import Reservoir

    seed = seed if seed is not None else random.randrange(2**32)
    keep: Reservoir[str] = Reservoir(size, random.Random(seed))
    async for ids in catalog.iter_ids(BATCH):
        keep.add(ids)
    if keep.seen <= size:
        return None
    for start in range(0, size, BATCH):
        run.add(await catalog.get_many(keep.kept[start : start + BATCH]))
    return {"size": run.titles, "population": keep.seen, "seed": seed}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# --- output ----------------------------------------------------------------------------------


def build_report(
    run: DiffRun,
    result: DiffResult,
    args: argparse.Namespace,
    *,
    default: str,
    elapsed: float,
    sampled: dict[str, int] | None,
) -> dict[str, Any]:
    """The JSON document (`--json` prints it; the text view is made from it)."""
    from proxy.routing.diff import error_bound, verdict

    population = sampled["population"] if sampled else None
    read = population if population is not None else result.totals.titles
    code, reasons = verdict(
        result.totals, default=default, max_moves=args.max_moves, population=population
    )
    return {
        "old": _rules_identity(run.old, args.old),
        "new": _rules_identity(run.new, args.new),
        "default_provider": default,
        "drms": list(run.drms),
        "totals": result.totals.to_dict(),
        "sampled": sampled,
        "error_bound": error_bound(result.totals, population) if population else None,
        "by_rule_drm": [_row_json(row) for row in result.rows],
        "samples": result.samples,
        "request_shapes": len(run.variants),
        "signatures": result.signatures,
        "elapsed_seconds": round(elapsed, 3),
        "titles_per_second": round(read / elapsed) if elapsed > 0 else None,
        "max_moves": args.max_moves,
        "exit_code": code,
        "reasons": reasons,
    }


def _rules_identity(rules: RuleSet, path: Path) -> dict[str, str]:
    return {"file": str(path), "version": rules.version, "sha256": rules.sha256}


def _row_json(row: RowCounts) -> dict[str, Any]:
    counts = row.counts
    return {
        "rule": row.rule,
        "drm": row.drm,
        "moved": counts["moved"],
        "moved_back": counts["moved_back"],
        "held_back": counts["held_back"],
        "held_back_by_reason": row.held_by_reason,
        "unchanged": counts["unchanged"],
        "unservable": counts["unservable"],
        "moves": row.moves,
        "request_dependent": row.request_dependent,
        "weighted": {name: round(value, 3) for name, value in row.weighted.items()},
        "samples": {**row.samples, "held_back_by_reason": row.held_samples},
    }


_COLUMNS = ("rule", "drm", "moved", "back", "held", "unchanged", "unservable")


def format_report(report: dict[str, Any]) -> str:
    """The readable view: header, one table row per (rule, DRM system), notes, totals."""
    old, new, totals = report["old"], report["new"], report["totals"]
    catalog = report.get("catalog", {})
    lines = [
        f"rules diff: {old['file']} (version {old['version']}) -> {new['file']} "
        f"(version {new['version']}); default provider {report['default_provider']}",
        f"catalog: {catalog.get('location')} ({catalog.get('backend')}); "
        f"DRM systems: {', '.join(report['drms'])}",
    ]
    sampled = report["sampled"]
    if sampled:
        lines.append(
            f"sampled: {sampled['size']:,} of {sampled['population']:,} titles "
            f"(uniform, seed {sampled['seed']})"
        )
    lines += ["", *_table(report["by_rule_drm"]), *_notes(report), ""]
    lines.append(
        f"totals: {totals['titles']:,} titles; {totals['moved']:,} move forward, "
        f"{totals['moved_back']:,} move back, {totals['held_back']:,} held back by a guard"
        + (
            f"; {totals['request_dependent']:,} depend on the request"
            if totals["request_dependent"]
            else ""
        )
    )
    if report["error_bound"]:
        lines += _bound_lines(report["error_bound"], sampled["population"])
    speed = report["titles_per_second"]
    lines.append(
        f"read and judged in {report['elapsed_seconds']} s"
        + (f" ({speed:,} titles/s)" if speed else "")
    )
    if report["exit_code"]:
        lines.append(f"exit 1, reviewer needed: {'; '.join(report['reasons'])}")
    else:
        lines.append("exit 0: nothing moves back" + _max_moves_note(report))
    return "\n".join(lines)


def _max_moves_note(report: dict[str, Any]) -> str:
    limit = report["max_moves"]
    return "" if limit is None else f", at most {limit:,} titles move"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [list(_COLUMNS)]
    for row in rows:
        cells.append(
            [
                row["rule"],
                row["drm"],
                *(
                    f"{row[name]:,}"
                    for name in ("moved", "moved_back", "held_back", "unchanged", "unservable")
                ),
            ]
        )
    if len(cells) == 1:
        return ["(the catalog is empty)"]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_COLUMNS))]
    return [
        "  ".join(
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in cells
    ]


def _notes(report: dict[str, Any]) -> list[str]:
    """Per row: request dependence, moves by provider pair, guard reasons, sample ids."""
    notes: list[str] = []
    for row in report["by_rule_drm"]:
        name = f"{row['rule']}/{row['drm']}"
        if row["request_dependent"]:
            shares = ", ".join(
                f"{label} {100 * row['weighted'][key] / row[key]:.1f}%"
                for key, label in (("moved", "moved"), ("moved_back", "back"))
                if row[key]
            )
            notes.append(
                f"  {name}: {row['request_dependent']:,} titles depend on the request "
                f"(user ramp, platform or app version)"
                + (f"; share of requests: {shares}" if shares else "")
            )
        for pair, count in row["moves"].items():
            ids = row["samples"].get(
                "moved_back" if pair.endswith(f"->{report['default_provider']}") else "moved", []
            )
            notes.append(f"  {name}: {count:,} {pair.replace('->', ' -> ')}: {', '.join(ids)}")
        for reason, count in row["held_back_by_reason"].items():
            ids = row["samples"]["held_back_by_reason"].get(reason, [])
            notes.append(f"  {name}: {count:,} held back by {reason}: {', '.join(ids)}")
    return ["", "samples:", *notes] if notes else []


def _bound_lines(bound: dict[str, Any], population: int) -> list[str]:
    lines = [f"95% interval over all {population:,} titles ({bound['method']}):"]
    for name in ("moved", "moved_back", "held_back"):
        b = bound[name]
        lines.append(
            f"  {name}: {100 * b['share']:.2f}% ({100 * b['share_low']:.2f}-"
            f"{100 * b['share_high']:.2f}%), about {b['estimate']:,} titles "
            f"({b['estimate_low']:,}-{b['estimate_high']:,})"
        )
    return lines
