"""``drm-gateway emulate legacy|incoming``: run one emulated provider until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from proxy.dev.emulator.app import start_emulator
from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.emulator.settings import (
    DEFAULT_PORTS,
    DEFAULT_TOKEN_HEADER,
    DEMO_KEY_API_TOKENS,
    DEMO_LEGACY_API_KEY,
    DEMO_SEED,
    JWT_ALGORITHMS,
    KINDS,
    PROVIDER_KINDS,
    EmulatorSettings,
    Faults,
    load_resource_ids,
)

_EPILOG = """\
--jwt-key takes kid=base64:SECRET (an HMAC secret, base64) or kid=FILE; a FILE holding a PEM
key is an RS256/ES256 public key (a private key PEM is accepted, only its public half is used),
any other FILE is an HMAC secret, used byte for byte. Without --jwt-key an incoming emulator
accepts any non-empty token. Without --resource-ids every resource id is known.

legacy and incoming also serve a key API (POST /v2/cpix, GET|PUT /v2/keys/RESOURCE) behind
"Authorization: Bearer TOKEN": --key-api-token (env EMULATOR_KEY_API_TOKEN; default the demo's
token of the kind), --no-key-api to switch it off. Keys it creates or receives take precedence
over derived ones; --key-store FILE keeps them across restarts (append-only JSON lines, 0600).
"""


def register(subparsers: Any) -> None:
    """Add the ``emulate`` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "emulate",
        help="run an emulated DRM license/key provider",
        description="Run an emulated DRM license/key provider on loopback.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", choices=KINDS, help="which provider to emulate")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, help="port (default 8081 legacy, 8082 incoming)")
    parser.add_argument("--resource-ids", metavar="FILE", help="known resource ids, one a line")
    parser.add_argument("--name", help="provider name in synthetic licenses (default: kind)")
    parser.add_argument("--seed", help="key derivation seed (env EMULATOR_SEED)")
    parser.add_argument("--api-key", help="legacy API key (env LEGACY_API_KEY)")
    parser.add_argument("--token-header", default=DEFAULT_TOKEN_HEADER, help="token header name")
    parser.add_argument(
        "--jwt-key", action="append", default=[], metavar="KID=FILE|base64:...", help="JWT key"
    )
    parser.add_argument(
        "--jwt-algorithm", action="append", choices=JWT_ALGORITHMS, help="allowed JWT algorithm"
    )
    parser.add_argument("--resource-claim", default="drmResourceId", help="dotted claim path")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before answers")
    parser.add_argument("--error-rate", type=float, default=0.0, help="share answered 500")
    parser.add_argument("--reset-rate", type=float, default=0.0, help="share of reset sockets")
    parser.add_argument(
        "--error-json-rate", type=float, default=0.0, help="share answered 200 with error JSON"
    )
    parser.add_argument("--fault-seed", type=int, help="seed of the fault RNG")
    parser.add_argument(
        "--key-api-token",
        metavar="TOKEN",
        help="bearer token of the key API (env EMULATOR_KEY_API_TOKEN; default: the demo's)",
    )
    parser.add_argument("--no-key-api", action="store_true", help="serve no key API")
    parser.add_argument(
        "--key-store", metavar="FILE", type=Path, help="persist stored keys in FILE (JSON lines)"
    )
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a provider kind's setting or secret (default: the demo's; see the kind's module)",
    )
    parser.set_defaults(func=run_emulate)


def run_emulate(args: argparse.Namespace) -> int:
    """Build the settings from ``args`` and serve until SIGINT/SIGTERM; the exit code."""
    try:
        settings = settings_from_args(args)
    except (OSError, ValueError) as exc:
        print(f"drm-gateway emulate: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else DEFAULT_PORTS.get(settings.kind, 8082)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_serve(settings, args.host, port))
    except (OSError, ValueError) as exc:  # the port is taken, or a kind refused its secrets
        print(f"drm-gateway emulate: {exc}", file=sys.stderr)
        return 1
    return 0


def settings_from_args(args: argparse.Namespace) -> EmulatorSettings:
    """The EmulatorSettings an ``emulate`` command line describes (ValueError/OSError if bad)."""
    seed = args.seed or os.environ.get("EMULATOR_SEED") or DEMO_SEED.decode()
    api_key = args.api_key or os.environ.get("LEGACY_API_KEY") or DEMO_LEGACY_API_KEY
    faults = Faults(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        reset_rate=args.reset_rate,
        error_json_rate=args.error_json_rate,
        seed=args.fault_seed,
    )
    jwt_keys = dict(parse_jwt_key(spec) for spec in args.jwt_key)
    return EmulatorSettings(
        kind=args.kind,
        name=args.name or args.kind,
        seed=seed.encode(),
        api_key=api_key if args.kind == "legacy" else None,
        token_header=args.token_header,
        resources=load_resource_ids(args.resource_ids) if args.resource_ids else None,
        jwt_keys=jwt_keys or None,
        jwt_algorithms=tuple(args.jwt_algorithm or JWT_ALGORITHMS),
        resource_id_claim=args.resource_claim,
        faults=faults,
        secrets=kind_secrets(args.kind, args.secret),
        key_api_token=key_api_token(args),
        key_store_path=args.key_store,
    )


def key_api_token(args: argparse.Namespace) -> str | None:
    """The key API token an ``emulate`` command line asks for (None: no key API)."""
    explicit = args.key_api_token or os.environ.get("EMULATOR_KEY_API_TOKEN")
    if args.kind not in DEMO_KEY_API_TOKENS:  # a provider kind: no key API of this kind
        if args.key_api_token or args.no_key_api or args.key_store is not None:
            raise ValueError("the key API and --key-store apply to legacy and incoming only")
        return None
    if args.no_key_api:
        if args.key_api_token:
            raise ValueError("--key-api-token and --no-key-api contradict each other")
        return None
    return explicit or DEMO_KEY_API_TOKENS[args.kind]


def kind_secrets(kind: str, specs: list[str]) -> dict[str, str]:
    """A provider kind's demo secrets, overridden by ``NAME=VALUE`` specs (none for legacy
    and incoming)."""
    if kind not in PROVIDER_KINDS:
        if specs:
            raise ValueError(f"--secret applies to the provider kinds only, not {kind}")
        return {}
    secrets = dict(demo_secrets(kind))
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or name not in secrets:
            known = ", ".join(sorted(secrets))
            raise ValueError(f"--secret {name!r}: expected NAME=VALUE with NAME one of {known}")
        secrets[name] = value
    return secrets


def parse_jwt_key(spec: str) -> tuple[str, bytes | str]:
    """``kid=base64:SECRET`` or ``kid=FILE`` -> (kid, HMAC bytes or PEM text)."""
    kid, sep, source = spec.partition("=")
    if not sep or not kid or not source:
        raise ValueError(f"--jwt-key {spec.split('=', 1)[0]!r}: expected KID=FILE or KID=base64:")
    if source.startswith("base64:"):
        try:
            return kid, base64.b64decode(source.removeprefix("base64:"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"--jwt-key {kid!r}: the secret is not valid base64") from None
    data = Path(source).read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return kid, data.decode("ascii")
    return kid, data


async def _serve(settings: EmulatorSettings, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    emulator = await start_emulator(settings, host, port, access_log=True)
    try:
        print(
            f"emulated {settings.kind} provider {settings.name!r} on {emulator.url}",
            file=sys.stderr,
            flush=True,
        )
        if settings.key_api_token is not None:
            store = settings.key_store_path or "memory only"
            print(
                f"key API on {emulator.url}/v2/cpix and {emulator.url}/v2/keys/RESOURCE "
                f"(Authorization: Bearer ...); key store: {store}",
                file=sys.stderr,
                flush=True,
            )
        await stop.wait()
    finally:
        await emulator.stop()
