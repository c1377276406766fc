"""The `speke:` config section: listener, packager credential, public base URL, limits; every
problem at once, secrets from env or files only and never in a repr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.speke import MirrorQueueSettings, PackagerCredential, SpekeSettings
from tests.conftest import ENV, gateway_raw_config

TOKEN = "packager-token-0123456789"
SECRETS = ENV | {"SPEKE_TOKEN": TOKEN, "K": "k" * 20, "K2": "short"}


def raw_config(speke: Any, *, key_api: bool = True, **sections: Any) -> dict[str, Any]:
    raw = gateway_raw_config(Path("catalog.db"), "http://127.0.0.1:1", "http://127.0.0.1:2")
    if key_api:
        raw["providers"]["legacy"]["key_api"] = {
            "base_url": "http://127.0.0.1:1",
            "token": {"env": "K"},
        }
    raw["speke"] = speke
    raw.update(sections)
    return raw


def parse(speke: Any, **kw: Any) -> SpekeSettings | None:
    return parse_config(raw_config(speke, **kw), base_dir=Path("/srv"), env=SECRETS).speke


def problems(speke: Any, **kw: Any) -> list[str]:
    with pytest.raises(ConfigError) as refused:
        parse_config(raw_config(speke, **kw), base_dir=Path("/srv"), env=SECRETS)
    return refused.value.problems


BEARER = {"credential": {"bearer": {"env": "SPEKE_TOKEN"}}, "public_base_url": "https://gw.x/"}


def test_a_minimal_section_serves_on_the_internal_port() -> None:
    settings = parse(BEARER)
    assert settings == SpekeSettings(PackagerCredential("bearer", TOKEN), "https://gw.x")
    assert settings.listener == "internal" and settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.mirror_queue == MirrorQueueSettings()
    assert TOKEN not in repr(settings)


def test_without_a_section_the_endpoint_is_off() -> None:
    raw = raw_config(None)
    del raw["speke"]
    assert parse_config(raw, base_dir=Path("/srv"), env=SECRETS).speke is None


def test_a_listener_of_its_own_and_basic_auth(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("file-password-0123456\n")
    settings = parse(
        {
            "listener": "own",
            "host": "0.0.0.0",
            "port": 8443,
            "credential": {"basic": {"username": "pkg", "password": {"file": str(password)}}},
            "public_base_url": "http://127.0.0.1:8080",
            "max_body_bytes": 1000,
            "mirror_queue": {"interval_seconds": 1, "batch": 5, "max_backoff_seconds": 60},
        }
    )
    assert settings is not None
    assert (settings.listener, settings.host, settings.port) == ("own", "0.0.0.0", 8443)
    assert settings.credential == PackagerCredential("basic", "file-password-0123456", "pkg")
    assert settings.mirror_queue == MirrorQueueSettings(1.0, 5, 60.0)
    assert "file-password" not in repr(settings)


def test_every_problem_of_the_section_at_once() -> None:
    found = problems(
        {
            "listener": "public",
            "port": 1,
            "credential": {"bearer": {"env": "UNSET"}, "basic": {}},
            "public_base_url": "ftp://x?y",
            "max_body_bytes": 0,
            "mirror_queue": {"batch": -1, "other": 1},
            "colour": "blue",
        }
    )
    assert sorted(found) == sorted(
        [
            "speke.colour: unknown field",
            "speke.listener: must be one of internal, own",
            "speke.port: is only for listener 'own'",
            "speke.credential: must name exactly one of 'bearer' or 'basic'",
            "speke.public_base_url: must be an http(s) URL such as https://drm.example.com "
            "(no query or fragment)",
            "speke.max_body_bytes: must be greater than 0",
            "speke.mirror_queue.other: unknown field",
            "speke.mirror_queue.batch: must be greater than 0",
        ]
    )


def test_it_needs_a_writable_catalog_and_a_key_api() -> None:
    http = {"backend": "http", "http": {"base_url": "http://127.0.0.1:3"}}
    assert sorted(problems(BEARER, key_api=False, catalog=http)) == [
        "speke: needs a catalog it can record key holders in (backend sqlite or redis), not 'http'",
        "speke: no provider has a key_api section to get keys from",
    ]


@pytest.mark.parametrize(
    ("credential", "problem"),
    [
        (None, "speke.credential: is missing, and has no default (bearer or basic)"),
        ({"bearer": {"env": "UNSET"}}, "speke.credential.bearer.env: environment variable UNSET"),
        ({"bearer": {"env": "K2"}}, "speke.credential.bearer: must be at least 16 characters"),
        ({"basic": {"password": {"env": "K"}}}, "speke.credential.basic.username: is missing"),
        ({"basic": {"username": "a:b", "password": {"env": "K"}}}, "without ':'"),
        ({"basic": {"username": "pkg"}}, "speke.credential.basic.password: is missing"),
    ],
)
def test_credential_problems(credential: Any, problem: str) -> None:
    section = {**BEARER, "credential": credential}
    if credential is None:
        del section["credential"]
    found = problems(section)
    assert any(p.startswith(problem) or problem in p for p in found), found


def test_the_public_base_url_is_required() -> None:
    assert problems({"credential": BEARER["credential"]}) == [
        "speke.public_base_url: is missing, and has no default"
    ]


def test_its_own_port_must_differ_from_the_gateways() -> None:
    raw_server = {"public": {"port": 8080}, "internal": {"port": 9090}}
    section = {**BEARER, "listener": "own", "host": "127.0.0.1", "port": 9090}
    assert problems(section, server=raw_server) == [
        "speke.port: 9090 is already server.internal's port"
    ]
