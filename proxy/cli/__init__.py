"""The `drm-gateway` command line: serve, config, catalog, rules, token and dev commands.

Each command imports what it runs only when it runs, so `serve` loads no dev tooling.
"""

from __future__ import annotations

from proxy.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
