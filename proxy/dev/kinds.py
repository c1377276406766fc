"""The provider kinds run against their emulators by the demo and the tests.

Each kind's provider section ships as package data (`demo_data/providers/<kind>.yaml`, the
URL paths the emulator serves); its secrets come from the environment variables named here,
which the demo fills with the emulator's demo secrets. Dev tooling only: `serve` never
imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from proxy.dev.emulator.kinds import demo_secrets
from proxy.dev.emulator.settings import PROVIDER_KINDS

PROVIDER_SECTIONS = Path(__file__).resolve().parent / "demo_data" / "providers"
# Per kind: environment variable -> the emulator's demo secret it holds.
KIND_ENV: Mapping[str, Mapping[str, str]] = {
    "doverunner": {"DOVERUNNER_SITE_KEY": "site_key", "DOVERUNNER_ACCESS_KEY": "access_key"},
    "axinom": {"AXINOM_COMMUNICATION_KEY": "com_key"},
    "drmtoday": {"DRMTODAY_TOKEN_SECRET": "token_secret"},
    "ezdrm": {"EZDRM_ACCOUNT_ID": "account_id"},
    "verimatrix": {"VERIMATRIX_SIGNING_SECRET": "signing_secret"},
    "widevine-cloud": {"WIDEVINE_SIGNING_KEY": "signing_key", "WIDEVINE_SIGNING_IV": "signing_iv"},
}
assert set(KIND_ENV) == set(PROVIDER_KINDS), "every emulated kind names its environment"


def provider_section(kind: str, base_url: str) -> dict[str, Any]:
    """The config section of a `kind` provider served by its emulator at `base_url`."""
    section: dict[str, Any] = yaml.safe_load((PROVIDER_SECTIONS / f"{kind}.yaml").read_text())
    section["base_url"] = base_url
    return section


def kind_env(kind: str) -> dict[str, str]:
    """The environment a `kind` provider's section reads: the emulator's demo secrets."""
    if kind not in KIND_ENV:  # the demo's own generic providers read no kind secrets
        return {}
    secrets = demo_secrets(kind)
    return {name: secrets[secret] for name, secret in KIND_ENV[kind].items()}
