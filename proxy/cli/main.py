"""`drm-gateway` commands: serve, demo, config check, catalog import/audit/sync, backfill,
emulate."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from proxy.catalog import CatalogSettings
from proxy.cli.backfill import add_backfill_command
from proxy.cli.rules_diff import add_diff_command
from proxy.config import Config, ConfigError, RulesView, load_config, load_rules_view
from proxy.domain import ALL_DRMS
from proxy.observability.logs import configure_logging
from proxy.routing.rules import ProviderTraits

if TYPE_CHECKING:  # the sync command's types; its modules are imported when it runs
    from proxy.catalog.base import RedisCatalogSettings
    from proxy.catalog.sync import RedisTarget


def _print_problems(source: Path, problems: list[str]) -> None:
    print(f"{source}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def _load_or_exit(path: Path, layers: Sequence[Path] = ()) -> Config:
    try:
        return load_config(path, layers=layers)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        raise SystemExit(2) from None


def _rules_view_or_exit(path: Path, *, routing: bool = False) -> RulesView:
    """Provider names and traits (and routing, catalog) of a config; no secret is needed."""
    try:
        return load_rules_view(path, routing=routing)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config[0], args.config[1:])
    configure_logging(level=config.log.level, fmt=config.log.format, cache=True)
    if args.workers > 1:
        from proxy.server.workers import WorkersFailed, run_workers

        try:
            run_workers(config, args.workers)
        except WorkersFailed as exc:
            print(f"drm-gateway: {exc}", file=sys.stderr)
            return 1
        return 0
    from proxy.server.app import run_event_loop, serve

    run_event_loop(serve(config))
    return 0


def _workers(text: str) -> int:
    count = int(text)
    if count < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return count


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.file[0], args.file[1:])
    providers = ", ".join(sorted(config.providers))
    rules = config.routing.rules_file or "none (default provider only)"
    print(f"ok: providers {providers}; rules {rules}")
    return 0


def _catalog_db(args: argparse.Namespace) -> Path:
    if args.db is None:
        raise SystemExit("give --db PATH or --config FILE")
    return Path(args.db)


def _catalog_progress(verb: str) -> Any:
    """A progress callback rewriting one stderr line: `<verb> N lines (P%)`."""

    def progress(lines: int, done: int, total: int) -> None:
        share = f" ({100 * done // total}%)" if total else ""
        print(f"\r{verb} {lines:,} lines{share}", end="", file=sys.stderr, flush=True)

    return progress


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from proxy.catalog.importer import CatalogImportError, format_import_report, import_file

    try:
        if args.to is not None:
            report = _import_to_redis(args)
        else:
            db, providers = _catalog_source(args)
            report = import_file(
                args.file,
                db,
                progress=_catalog_progress("imported"),
                providers=providers,
                allow_rejects=args.allow_rejects,
            )
    except CatalogImportError as exc:
        print(f"\nimport failed: {exc}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    print(format_import_report(report))
    # Rejected rows fail the command (an export job should notice) unless they are allowed.
    return 0 if report.applied and (args.allow_rejects or not report.rejected) else 1


def _usage_exit(message: str) -> NoReturn:
    print(f"drm-gateway catalog import: {message}", file=sys.stderr)
    raise SystemExit(2)


def _import_to_redis(args: argparse.Namespace) -> Any:
    """`catalog import FILE --to redis://...`: the export into a Redis catalog (exit 2 on a
    usage problem: --db given too, a bad URL, an unset password variable)."""
    import os

    from proxy.catalog.base import RedisCatalogSettings
    from proxy.catalog.redis import check_url, import_to_redis

    if args.db is not None:
        _usage_exit("give either --db or --to, not both")
    try:
        check_url(args.to)
    except ValueError as exc:
        _usage_exit(f"--to {exc}")
    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env) or None
        if password is None:
            _usage_exit(f"--password-env: environment variable {args.password_env} is not set")
    settings = RedisCatalogSettings(
        url=args.to, password=password, key_prefix=args.key_prefix, channel=args.channel
    )
    providers = None
    if args.config is not None:
        providers = _rules_view_or_exit(args.config).providers
    return asyncio.run(
        import_to_redis(
            args.file,
            settings,
            progress=_catalog_progress("imported"),
            providers=providers,
            allow_rejects=args.allow_rejects,
        )
    )


def _catalog_source(
    args: argparse.Namespace,
) -> tuple[Path, Mapping[str, ProviderTraits] | None]:
    """The catalog file (--db, else the config's), and the configured providers' traits (None
    without --config). Read like the rules tooling: no secret is needed."""
    if args.config is None:
        return _catalog_db(args), None
    view = _rules_view_or_exit(args.config, routing=True)
    assert view.catalog is not None  # asked for with routing=True
    if args.db is not None:
        return Path(args.db), view.providers
    if view.catalog.path is None:
        raise SystemExit(f"{args.config}: catalog backend '{view.catalog.backend}' has no file")
    return view.catalog.path, view.providers


def cmd_catalog_audit(args: argparse.Namespace) -> int:
    import json

    from proxy.catalog.importer import (
        CatalogImportError,
        audit,
        audit_report_json,
        format_audit_report,
    )

    db, providers = _catalog_source(args)
    if not db.is_file():
        print(f"{db}: no such catalog database", file=sys.stderr)
        return 1
    needing = None
    if providers is not None:
        needing = tuple(sorted(name for name, p in providers.items() if p.needs_key_ids))
    try:
        report = audit(db, limit=args.limit, key_id_providers=needing, providers=providers)
    except CatalogImportError as exc:
        print(f"audit failed: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(audit_report_json(report), indent=2))
    else:
        print(format_audit_report(report))
    if providers is None:
        print(
            "key ids and servability not checked: give --config to check them against the "
            "configured providers",
            file=sys.stderr,
        )
    return 0


def cmd_catalog_sync(args: argparse.Namespace) -> int:
    from proxy.catalog.importer import CatalogImportError
    from proxy.catalog.sync import (
        RedisTarget,
        SyncOptions,
        SyncUsageError,
        format_diff,
        parse_source,
        parse_target,
        sync,
        sync_to_redis,
    )

    providers = _rules_view_or_exit(args.config).providers if args.config else None
    try:
        source, target = parse_source(args.source), parse_target(args.to)
        settings = _redis_sync_settings(args, target) if isinstance(target, RedisTarget) else None
    except SyncUsageError as exc:
        print(f"drm-gateway catalog sync: {exc}", file=sys.stderr)
        return 2
    options = SyncOptions(
        prune=args.prune,
        dry_run=args.dry_run,
        force=args.force,
        allow_rejects=args.allow_rejects,
        max_prune_share=args.max_prune_share,
        providers=providers,
        sample=args.sample,
    )

    reading = _catalog_progress("read")
    line_open = [False]  # a progress line to end before the next message

    def progress(lines: int, done: int, total: int) -> None:
        line_open[0] = True
        reading(lines, done, total)

    def note(phase: str) -> None:
        print(("\n" if line_open[0] else "") + f"{phase}...", file=sys.stderr, flush=True)
        line_open[0] = False

    def show(diff: Any, rejected: Any) -> None:
        print(format_diff(diff, rejected), flush=True)

    started = time.monotonic()
    try:
        if isinstance(target, RedisTarget):
            assert settings is not None  # built for every Redis target above
            where = f"{target.url} in batches, each announced"
            report = asyncio.run(
                sync_to_redis(source, settings, options, show=show, progress=progress, note=note)
            )
        else:
            where = f"{target.path} in one transaction"
            report = sync(source, target, options, show=show, progress=progress, note=note)
    except CatalogImportError as exc:
        print(f"\nsync failed: {exc}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    if report.refusal is not None:
        verb = "would refuse" if args.dry_run else "refused, nothing written"
        print(f"{verb}: {report.refusal}")
        return 1
    print(
        f"dry run: nothing written ({elapsed:.1f} s)"
        if args.dry_run
        else f"applied to {where} ({elapsed:.1f} s)"
    )
    return 0


def _redis_sync_settings(args: argparse.Namespace, target: RedisTarget) -> RedisCatalogSettings:
    """The Redis catalog `catalog sync --to` names; SyncUsageError if --password-env names an
    unset variable."""
    import os

    from proxy.catalog.base import RedisCatalogSettings
    from proxy.catalog.sync import SyncUsageError

    password = None
    if args.password_env is not None:
        password = os.environ.get(args.password_env) or None
        if password is None:
            raise SyncUsageError(
                f"--password-env: environment variable {args.password_env} is not set"
            )
    return RedisCatalogSettings(
        url=target.url, password=password, key_prefix=args.key_prefix, channel=args.channel
    )


def _share_arg(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1 (0.05 is 5%)")
    return share


def _add_catalog_commands(commands: Any) -> Any:
    """The `catalog` command and its import, audit and sync subcommands; returns the
    subcommands' parsers (for other catalog tools to join)."""
    catalog = commands.add_parser("catalog", help="catalog tools")
    catalog_cmds = catalog.add_subparsers(dest="catalog_command", required=True)
    imp = catalog_cmds.add_parser(
        "import",
        help="load CSV or JSON Lines into the catalog",
        description="Exit 0: imported; 1: rows rejected (nothing imported unless "
        "--allow-rejects) or the import failed; 2: usage or config problem.",
    )
    imp.add_argument("file", type=Path)
    _add_catalog_source(imp)
    _add_redis_target(imp)
    _add_allow_rejects(imp)
    imp.set_defaults(func=cmd_catalog_import)
    aud = catalog_cmds.add_parser(
        "audit",
        help="report assets lacking a drmResourceId or key ids, or that no provider can serve",
    )
    _add_catalog_source(aud)
    aud.add_argument("--limit", type=int, default=50, help="list at most this many (default 50)")
    aud.add_argument("--format", choices=("text", "json"), default="text")
    aud.set_defaults(func=cmd_catalog_audit)
    _add_sync_command(catalog_cmds)
    return catalog_cmds


def _add_redis_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to",
        metavar="URL",
        help="import into the Redis catalog at this redis://, rediss:// or unix:// URL",
    )
    parser.add_argument(
        "--password-env", metavar="NAME", help="the Redis password is in this variable"
    )
    parser.add_argument("--key-prefix", default="drm-gateway:", help="as catalog.redis.key_prefix")
    parser.add_argument(
        "--channel", help="as catalog.redis.channel (default: the key prefix + 'changes')"
    )


def _add_allow_rejects(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-rejects",
        action="store_true",
        help="write the valid rows even if some are rejected, and exit 0",
    )


def _add_sync_command(catalog_cmds: Any) -> None:
    sync = catalog_cmds.add_parser(
        "sync",
        help="make a SQLite or Redis catalog match an export (or another catalog), diff "
        "shown first",
        description="Prints the diff, then applies it: to a SQLite file in one transaction, to "
        "Redis in pipelined batches that announce the changed ids. Exit 0: applied (or a clean "
        "dry run); 1: rows rejected, a refused prune, or a failure; 2: usage or config problem.",
    )
    sync.add_argument("source", help="CSV / JSON Lines export, or a SQLite catalog file")
    sync.add_argument(
        "--to",
        required=True,
        help="the SQLite catalog file, or the redis://, rediss:// or unix:// URL, to update",
    )
    sync.add_argument(
        "--password-env", metavar="NAME", help="the Redis password is in this variable"
    )
    sync.add_argument("--key-prefix", default="drm-gateway:", help="as catalog.redis.key_prefix")
    sync.add_argument(
        "--channel", help="as catalog.redis.channel (default: the key prefix + 'changes')"
    )
    sync.add_argument(
        "--config", type=Path, help="check key holders against this config's providers"
    )
    sync.add_argument("--prune", action="store_true", help="delete what the source lacks")
    sync.add_argument("--dry-run", action="store_true", help="print the diff, write nothing")
    sync.add_argument(
        "--force", action="store_true", help="prune beyond --max-prune-share (or with rejects)"
    )
    sync.add_argument(
        "--max-prune-share",
        type=_share_arg,
        default=0.05,
        help="--prune refuses to delete more than this share of the target (default 0.05)",
    )
    sync.add_argument(
        "--sample", type=int, default=10, help="asset ids shown per kind of change (default 10)"
    )
    _add_allow_rejects(sync)
    sync.set_defaults(func=cmd_catalog_sync)


def _missing_usage(message: object) -> int:
    """A usage problem of `catalog missing`: said on stderr, exit status 2."""
    print(f"drm-gateway catalog missing: {message}", file=sys.stderr)
    return 2


def _missing_table(data: dict[str, Any]) -> str:
    """The JSON answer of /admin/missing as aligned columns, most requested first."""
    rows = [("asset_id", "count", "by_drm", "first_seen", "last_seen")]
    for title in data["titles"]:
        by_drm = " ".join(f"{drm}:{n}" for drm, n in sorted(title["by_drm"].items()))
        rows.append(
            (
                title["asset_id"],
                str(title["count"]),
                by_drm,
                title["first_seen"],
                title["last_seen"],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


def cmd_catalog_missing(args: argparse.Namespace) -> int:
    import json
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    token = os.environ.get(args.token_env, "")
    if not token:
        return _missing_usage(f"environment variable {args.token_env} (the admin token) is empty")
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("http", "https") or not url.netloc:
        return _missing_usage(f"--url must be http(s)://host:port, not {args.url!r}")
    query = urllib.parse.urlencode(
        {"limit": args.limit, "format": "csv" if args.format == "csv" else "json"}
    )
    request = urllib.request.Request(
        f"{args.url.rstrip('/')}/admin/missing?{query}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = response.read().decode()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        print(f"{args.url}: HTTP {exc.code}: {message}", file=sys.stderr)
        return 2 if exc.code == 400 else 1
    except (OSError, ValueError) as exc:  # refused, timed out, no such host
        print(f"{args.url}: cannot fetch the list ({exc})", file=sys.stderr)
        return 1
    if args.format != "table":
        print(body, end="" if body.endswith("\n") else "\n")
        return 0
    data = json.loads(body)
    print(_missing_table(data))
    print(
        f"{len(data['titles'])} of {data['total']} titles listed ({data['scope']}); "
        f"{data['evicted']} evicted to stay within {data['max_titles']}",
        file=sys.stderr,
    )
    return 0


def _catalog_entry(settings: CatalogSettings, asset_id: str) -> Any:
    """The asset's catalog entry straight from the backend (no cache); exits if unknown."""
    from proxy.catalog import build_catalog

    async def lookup() -> Any:
        catalog = build_catalog(settings)
        try:
            return await catalog.get(asset_id)
        finally:
            await catalog.close()

    entry = asyncio.run(lookup())
    if entry is None:
        raise SystemExit(f"asset '{asset_id}' is not in the catalog")
    return entry


def _token_usage(message: object) -> int:
    """A usage or config problem of the token commands: said on stderr, exit status 2."""
    print(f"drm-gateway token: {message}", file=sys.stderr)
    return 2


def _token_provider(config: Config, name: str) -> Any:
    settings = config.providers.get(name)
    if settings is None:
        raise SystemExit(
            _token_usage(f"unknown provider '{name}' (known: {', '.join(config.providers)})")
        )
    return settings


def _token_entry(config: Config, asset_id: str) -> Any:
    """The asset's catalog entry; an unknown asset is a usage problem (exit status 2)."""
    try:
        return _catalog_entry(config.catalog, asset_id)
    except SystemExit as exc:
        raise SystemExit(_token_usage(exc.code)) from None


def _challenge(path: Path | None) -> bytes | None:
    try:
        return path.read_bytes() if path is not None else None
    except OSError as exc:
        raise SystemExit(_token_usage(f"cannot read {path} ({exc.strerror})")) from None


def cmd_token_sign(args: argparse.Namespace) -> int:
    from proxy.cli.token_check import CannotSign, NotApplicable, SignRequest, sign

    config = _load_or_exit(args.config)
    settings = _token_provider(config, args.provider)
    entry = _token_entry(config, args.asset)
    request = SignRequest(entry, args.drm, args.user, _challenge(args.challenge))
    try:
        signed = sign(settings, request)
    except NotApplicable as exc:
        return _token_usage(exc)
    except CannotSign as exc:
        print(f"cannot sign: {exc}", file=sys.stderr)
        return 1
    # stdout: the values exactly as sent, one a line; stderr: where each goes, and notes.
    for number, credential in enumerate(signed.credentials, 1):
        print(credential.value)
        line = f" (stdout line {number})" if len(signed.credentials) > 1 else ""
        print(f"sent as {credential.where}{line}", file=sys.stderr)
    for note in signed.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_token_verify(args: argparse.Namespace) -> int:
    from proxy.cli.token_check import NotApplicable, VerifyRequest, format_verdict, verify

    config = _load_or_exit(args.config)
    settings = _token_provider(config, args.provider)
    entry = _token_entry(config, args.asset) if args.asset else None
    credential = sys.stdin.read() if args.token == "-" else args.token
    request = VerifyRequest(credential, entry, resource_claim=args.resource_claim)
    try:
        verdict = verify(settings, request)
    except NotApplicable as exc:
        return _token_usage(exc)
    print(format_verdict(verdict))
    return 1 if verdict.problems else 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from proxy.routing.file import PROVIDER_CHECKS, load_rules_file, summarize
    from proxy.routing.rules import RulesError

    providers = _rules_view_or_exit(args.config).providers if args.config else None
    try:
        rules = load_rules_file(args.file, providers=providers)
    except RulesError as exc:
        _print_problems(args.file, exc.problems)
        return 1
    print(summarize(rules))
    if providers is None:
        print("skipped without --config (give the gateway config to run them):")
        for check in PROVIDER_CHECKS:
            print(f"  - {check}")
    else:
        print(f"checked against the providers of {args.config}: {', '.join(sorted(providers))}")
    return 0


def cmd_rules_explain(args: argparse.Namespace) -> int:
    import json

    from proxy.routing.rules import RequestContext, RulesError
    from proxy.routing.watcher import explain_answer, load_rules

    view = _rules_view_or_exit(args.config, routing=True)
    assert view.routing is not None and view.catalog is not None  # asked for with routing=True
    source = view.routing.rules_file or args.config
    try:
        rules = load_rules(
            view.routing.rules_file,
            default=view.routing.default_provider,
            providers=view.providers,
        )
    except RulesError as exc:
        _print_problems(source, exc.problems)
        return 1
    entry = _catalog_entry(view.catalog, args.asset)
    context = RequestContext(
        args.drm, args.asset, entry, args.platform, args.app_version, args.user
    )
    print(json.dumps(explain_answer(rules, context, view.providers), indent=2))
    return 0


def _add_rules_commands(commands: Any) -> None:
    rules = commands.add_parser("rules", help="routing rules tools")
    rules_cmds = rules.add_subparsers(dest="rules_command", required=True)
    check = rules_cmds.add_parser("check", help="validate a rules file")
    check.add_argument("file", type=Path)
    check.add_argument("--config", type=Path, help="also check providers against this config")
    check.set_defaults(func=cmd_rules_check)
    exp = rules_cmds.add_parser("explain", help="show the decision and every rule's verdict")
    exp.add_argument("--config", type=Path, required=True)
    exp.add_argument("--asset", required=True)
    exp.add_argument("--drm", required=True, choices=ALL_DRMS)
    exp.add_argument("--platform")
    exp.add_argument("--app-version")
    exp.add_argument("--user")
    exp.set_defaults(func=cmd_rules_explain)
    add_diff_command(rules_cmds)


def _add_token_commands(commands: Any) -> None:
    token = commands.add_parser("token", help="provider credential tools (debugging)")
    token_cmds = token.add_subparsers(dest="token_command", required=True)
    sign = token_cmds.add_parser(
        "sign",
        help="print the credential(s) the gateway would send the provider for an asset",
        description="stdout: each credential value exactly as sent, one a line; stderr: "
        "where each goes. Exit 1: the asset lacks what the kind needs; 2: usage or config.",
    )
    verify = token_cmds.add_parser(
        "verify",
        help="decode a provider credential with the config's keys and say why it is refused",
        description="Exit 0: the provider would accept it; 1: refused (the reasons are "
        "printed); 2: usage or config. Prints the decoded claims or custom data, never a key.",
    )
    for parser in (sign, verify):
        parser.add_argument("--config", type=Path, required=True)
        parser.add_argument("--provider", required=True)
    sign.add_argument("--asset", required=True)
    sign.add_argument("--drm", required=True, choices=ALL_DRMS)
    sign.add_argument("--user", default=None)
    sign.add_argument(
        "--challenge",
        type=Path,
        help="widevine-cloud: the Widevine challenge the envelope wraps (default: a placeholder)",
    )
    sign.set_defaults(func=cmd_token_sign)
    verify.add_argument(
        "token",
        help="the credential as `token sign` prints it, or - to read it from stdin "
        "(a shell variable, never typed on a shared screen)",
    )
    verify.add_argument(
        "--asset", help="also check the credential names this asset (drmResourceId or key ids)"
    )
    verify.add_argument(
        "--resource-claim", default="drmResourceId", help="generic kind: dotted claim path"
    )
    verify.set_defaults(func=cmd_token_verify)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_catalog_missing(catalog_cmds: Any) -> None:
    missing = catalog_cmds.add_parser(
        "missing",
        help="list titles requested without a drmResourceId (from a running gateway)",
        description="Fetches GET /admin/missing from a running gateway's internal port and "
        "prints its list, most requested first. The list lives in that replica's memory "
        "(traffic it served since it started, bounded by missing.max_titles), so this asks "
        "the replica: give each replica's internal URL to see them all. Exit 0: listed; "
        "1: the gateway refused the token or did not answer; 2: usage (no token, bad URL "
        "or limit).",
    )
    missing.add_argument(
        "--url", required=True, help="the replica's internal URL, e.g. http://10.0.3.7:9090"
    )
    missing.add_argument(
        "--token-env",
        required=True,
        metavar="NAME",
        help="environment variable holding the admin token (never given on the command line)",
    )
    missing.add_argument(
        "--format",
        choices=("table", "json", "csv"),
        default="table",
        help="table (default), or the endpoint's JSON or CSV as it sends it",
    )
    missing.add_argument(
        "--limit", type=_positive, default=100, help="list at most this many (default 100)"
    )
    missing.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the gateway"
    )
    missing.set_defaults(func=cmd_catalog_missing)


def _add_catalog_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="SQLite catalog file")
    parser.add_argument(
        "--config",
        type=Path,
        help="take the catalog file from this config, and check against its providers",
    )


_LAYERS_HELP = (
    "config file; give more to layer them (each merged over the ones before: mappings key by "
    "key, anything else replaced), e.g. a shared base then an environment's differences"
)


# Development tools, not the gateway: name -> (help, "module:function" adding the command).
# A module is imported only when its command is chosen, so `serve` and the other commands
# load no emulator or demo code.
DEV_COMMANDS = {
    "demo": ("both emulators, a sample catalog and the gateway", "proxy.dev.demo:register"),
    "emulate": ("run an emulated DRM license/key provider", "proxy.dev.emulator.cli:register"),
}


def _add_dev_commands(commands: Any, chosen: str | None) -> None:
    """The chosen dev command in full; the others by name and help only (for `--help`)."""
    for name, (help_text, target) in DEV_COMMANDS.items():
        if name != chosen:
            commands.add_parser(name, help=help_text)
            continue
        module, _, function = target.partition(":")
        getattr(importlib.import_module(module), function)(commands)


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command word of a command line (the top level takes no option but --help)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `drm-gateway` parser; of the dev commands only `command`'s arguments are loaded."""
    parser = argparse.ArgumentParser(prog="drm-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--config",
        type=Path,
        required=True,
        action="append",
        help=_LAYERS_HELP,
    )
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="processes sharing both ports (SO_REUSEPORT), e.g. one per core (default 1)",
    )
    serve.set_defaults(func=cmd_serve)

    config = commands.add_parser("config", help="configuration tools")
    config_cmds = config.add_subparsers(dest="config_command", required=True)
    check = config_cmds.add_parser("check", help="validate a config file without serving")
    check.add_argument("file", type=Path, nargs="+", help=_LAYERS_HELP)
    check.set_defaults(func=cmd_config_check)

    catalog_cmds = _add_catalog_commands(commands)
    _add_catalog_missing(catalog_cmds)

    _add_rules_commands(commands)
    _add_token_commands(commands)
    add_backfill_command(commands)
    _add_dev_commands(commands, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments) names; its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
