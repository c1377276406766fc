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
    RulesView,
    ServerSettings,
    load_config,
    load_rules_view,
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
    "RulesView",
    "ServerSettings",
    "UrlTemplate",
    "load_config",
    "load_rules_view",
    "merge_layer",
    "parse_config",
]
