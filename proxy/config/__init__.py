"""Configuration: the YAML file loaded into frozen dataclasses, every problem reported at once.

Owns the config model, its parsing, defaults and validation. Imports only `proxy.domain`,
`proxy.errors` and the pure modules whose settings it builds; nothing here opens a socket.
"""

from __future__ import annotations

from proxy.config.load import (
    Config,
    FairPlaySettings,
    Listener,
    LogSettings,
    RoutingSettings,
    ServerSettings,
    load_config,
    merge_layer,
    parse_config,
)
from proxy.config.providers import ProviderAuth, ProviderSettings, UrlTemplate
from proxy.config.reader import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "FairPlaySettings",
    "Listener",
    "LogSettings",
    "ProviderAuth",
    "ProviderSettings",
    "RoutingSettings",
    "ServerSettings",
    "UrlTemplate",
    "load_config",
    "merge_layer",
    "parse_config",
]
