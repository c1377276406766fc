"""Config loading: every problem at once, with key paths; secrets from env or files only."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.catalog import KNOWN_BACKENDS
from proxy.config import (
    ConfigError,
    UrlTemplate,
    load_config,
    load_rules_view,
    merge_layer,
    parse_config,
)
from tests.conftest import ENV, gateway_raw_config

DEMO = Path(__file__).resolve().parents[2] / "proxy" / "dev" / "demo_data" / "gateway.yaml"


def base() -> dict[str, Any]:
    return gateway_raw_config(Path("catalog.db"), "http://127.0.0.1:1", "http://127.0.0.1:2")


def problems_of(raw: dict[str, Any], env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, base_dir=Path("/srv"), env=env)
    return info.value.problems


def test_valid_config_builds_frozen_dataclasses() -> None:
    config = parse_config(base(), base_dir=Path("/srv"), env=ENV)
    assert config.routing.default_provider == "legacy"
    assert config.providers["incoming"].needs_drm_resource_id
    assert config.providers["legacy"].auth.value == ENV["LEGACY_API_KEY"]
    assert config.catalog.path == Path("/srv/catalog.db")
    assert ENV["LEGACY_API_KEY"] not in repr(config)  # secrets stay out of reprs
    # Frozen (slotted dataclasses on 3.11 raise TypeError from their __setattr__).
    with pytest.raises((AttributeError, TypeError)):
        config.routing = config.routing  # type: ignore[misc]


def test_every_problem_is_reported_at_once() -> None:
    raw = base()
    raw["server"]["public"]["port"] = 70000
    raw["server"]["max_body_bytes"] = -1
    raw["log"] = {"level": "loud"}
    raw["providers"]["incoming"]["license_urls"]["widevine"] = "ftp:///nohost/{drm_resource_id}"
    raw["providers"]["legacy"]["license_urls"]["playready"] = "/x/{asset}"
    raw["providers"]["legacy"]["timeouts"]["total_seconds"] = "soon"
    raw["providers"]["legacy"]["colour"] = "blue"
    raw["catalog"]["backend"] = "mongo"
    problems = problems_of(raw)
    assert "server.public.port: must be between 0 and 65535" in problems
    assert "server.max_body_bytes: must be greater than 0" in problems
    assert "log.level: must be one of debug, info, warning, error" in problems
    assert any(
        p.startswith("providers.incoming.license_urls.widevine: not a URL") for p in problems
    )
    assert any(
        p.startswith("providers.legacy.license_urls.playready: unknown placeholder {asset}")
        for p in problems
    )
    assert "providers.legacy.timeouts.total_seconds: must be a number" in problems
    assert "providers.legacy.colour: unknown field" in problems
    known = ", ".join(KNOWN_BACKENDS)
    assert f"catalog.backend: unknown catalog backend 'mongo' (known: {known})" in problems
    assert len(problems) == 8


def test_missing_secret_and_required_fields() -> None:
    raw = base()
    del raw["routing"]
    problems = problems_of(raw, env={"LEGACY_API_KEY": "x"})
    assert "routing.default_provider: is missing, and has no default" in problems
    assert (
        "providers.incoming.auth.keys[0].secret.env: environment variable INCOMING_JWT_KEY "
        "is not set" in problems
    )


def test_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "legacy.key").write_text("from-a-file\n")
    raw = base()
    raw["providers"]["legacy"]["auth"]["secret"] = {"file": "legacy.key"}
    config = parse_config(raw, base_dir=tmp_path, env=ENV)
    assert config.providers["legacy"].auth.value == "from-a-file"
    raw["providers"]["legacy"]["auth"]["secret"] = {"file": "absent.key"}
    with pytest.raises(ConfigError, match=r"providers.legacy.auth.secret.file: cannot read"):
        parse_config(raw, base_dir=tmp_path, env=ENV)


def test_secret_values_in_yaml_are_refused() -> None:
    raw = base()
    raw["providers"]["legacy"]["auth"]["secret"] = {"value": "inline-secret"}
    problems = problems_of(raw)
    assert "providers.legacy.auth.secret.value: unknown field" in problems
    assert not any("inline-secret" in p for p in problems)


def test_routing_guards_in_config() -> None:
    raw = base()
    raw["routing"]["default_provider"] = "incoming"
    assert problems_of(raw) == [
        "routing.default_provider: 'incoming' needs a drmResourceId, so assets without one "
        "would have nowhere to go"
    ]
    raw["routing"]["default_provider"] = "nobody"
    assert problems_of(raw) == [
        "routing.default_provider: unknown provider 'nobody' (known: incoming, legacy)"
    ]


def test_resource_id_placeholder_needs_the_flag() -> None:
    raw = base()
    raw["providers"]["incoming"]["needs_drm_resource_id"] = False
    problems = problems_of(raw)
    assert (
        "providers.incoming.key_url: uses {drm_resource_id} but needs_drm_resource_id is false"
        in problems
    )


def test_url_templates_must_be_printable_ascii() -> None:
    raw = base()
    raw["providers"]["legacy"]["license_urls"]["widevine"] = "/licence/é/{asset_id}"
    assert any(
        p.startswith("providers.legacy.license_urls.widevine: not a URL") for p in problems_of(raw)
    )


def test_key_url_needs_key_id() -> None:
    raw = base()
    raw["providers"]["legacy"]["key_url"] = "/keys/{asset_id}"
    assert "providers.legacy.key_url: must contain the {key_id} placeholder" in problems_of(raw)


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  public: {port: 1\nlog: [\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        load_config(path)


def test_overrides_apply_dotted_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(base())))
    config = load_config(path, overrides={"server.public.port": 1234})
    assert config.server.public.port == 1234


def test_layers_merge_mappings_key_by_key_and_replace_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base()))
    layer = tmp_path / "staging.yaml"
    layer.write_text(
        "log: {level: debug}\n"
        "providers: {legacy: {base_url: 'https://staging.example'}}\n"
        "cors: {allowed_origins: ['https://staging-player.example']}\n"
    )
    config = load_config(path, layers=[layer])
    assert config.log.level == "debug" and config.log.format == "json"  # format kept
    legacy = config.providers["legacy"]
    assert (
        legacy.license_urls["widevine"].template
        == "https://staging.example/license/widevine/{asset_id}"
    )
    assert legacy.auth.header == "X-Api-Key"  # the rest of the provider comes from the base
    assert config.cors is not None
    assert config.cors.allowed_origins == frozenset({"https://staging-player.example"})
    assert merge_layer({"a": [1, 2], "b": {"c": 1}}, {"a": [3], "b": {"d": 2}}) == {
        "a": [3],
        "b": {"c": 1, "d": 2},
    }
    layer.write_text("- not a mapping\n")
    with pytest.raises(ConfigError, match=r"staging\.yaml: must be a mapping of config sections"):
        load_config(path, layers=[layer])


def test_demo_config_is_valid(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ADMIN_TOKEN", "a-demo-admin-token-for-tests")
    monkeypatch.setenv("PLAYER_JWT_SECRET", "a-player-secret-of-32-bytes-or-more")
    for name in ("LEGACY_KEY_API_TOKEN", "INCOMING_KEY_API_TOKEN", "SPEKE_PACKAGER_TOKEN"):
        monkeypatch.setenv(name, f"a-{name.lower()}-for-tests")
    cert = tmp_path / "cert.der"  # the demo generates its own at start
    cert.write_bytes(b"0\x82der")
    config = load_config(DEMO, overrides={"fairplay.certificate_file": str(cert)})
    assert set(config.providers) == {"legacy", "incoming"}
    assert config.routing.rules_file is not None and config.routing.rules_file.is_file()
    assert config.providers["incoming"].auth.token is not None
    assert config.admin_token == "a-demo-admin-token-for-tests"
    assert config.speke is not None and config.speke.listener == "internal"


@pytest.mark.parametrize(
    "hostile",
    ["../admin", "%2e%2e", "a?b=c", "a#frag", "user@evil.example", "a\r\nX-Evil: 1", "café", "a/b"],
)
def test_url_template_encodes_every_value(hostile: str) -> None:
    template = UrlTemplate.parse("https://drm.example.com/license/{asset_id}?kid={key_id}")
    url = template.render({"asset_id": hostile, "key_id": "k"})
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    assert parts.hostname == "drm.example.com"
    assert parts.path.startswith("/license/") and parts.path.count("/") == 2
    assert unquote(parts.path.removeprefix("/license/")) == hostile
    assert parts.query == "kid=k" and parts.fragment == ""


def test_trusted_proxies_are_parsed_once_into_networks() -> None:
    raw = base()
    assert parse_config(raw, base_dir=Path("/srv"), env=ENV).server.trusted_proxies == ()
    raw["server"]["trusted_proxies"] = ["10.244.0.0/16", "fd00:10:244::/56", "127.0.0.1"]
    config = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert config.server.trusted_proxies == (
        ipaddress.ip_network("10.244.0.0/16"),
        ipaddress.ip_network("fd00:10:244::/56"),
        ipaddress.ip_network("127.0.0.1/32"),
    )


def test_trusted_proxies_problems_name_each_entry() -> None:
    raw = base()
    raw["server"]["trusted_proxies"] = ["10.0.0.0/8", "10.0.0.1/8", "ingress", 7, "fd00::/200"]
    assert problems_of(raw) == [
        "server.trusted_proxies[1]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)",
        "server.trusted_proxies[2]: 'ingress' is not an IPv4 or IPv6 address or CIDR",
        "server.trusted_proxies[3]: must be a string (a CIDR such as 10.0.0.0/8)",
        "server.trusted_proxies[4]: 'fd00::/200' is not an IPv4 or IPv6 address or CIDR",
    ]
    raw["server"]["trusted_proxies"] = "10.0.0.0/8"
    assert problems_of(raw) == ["server.trusted_proxies: must be a list"]


def test_player_token_lifetime_is_bounded_by_default() -> None:
    raw = base()
    config = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert config.player_auth.max_lifetime_seconds == 86_400
    raw["player_auth"]["max_lifetime_seconds"] = 3600
    assert parse_config(raw, base_dir=Path("/srv"), env=ENV).player_auth.max_lifetime_seconds == (
        3600.0
    )
    raw["player_auth"]["max_lifetime_seconds"] = None  # explicit: any lifetime
    config = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert config.player_auth.max_lifetime_seconds is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (0, "player_auth.max_lifetime_seconds: must be greater than 0"),
        (-60, "player_auth.max_lifetime_seconds: must be greater than 0"),
        ("a day", "player_auth.max_lifetime_seconds: must be a number"),
    ],
)
def test_player_token_lifetime_problems(value: Any, problem: str) -> None:
    raw = base()
    raw["player_auth"]["max_lifetime_seconds"] = value
    assert problems_of(raw) == [problem]


def test_rules_view_reads_provider_traits_without_any_secret(tmp_path: Path) -> None:
    raw = base()
    raw["providers"]["incoming"]["auth"]["keys"] = [{"kid": "k1", "private_key_file": "no.pem"}]
    raw["routing"] = {"rules_file": "/not/mounted/routing.yaml"}  # not read without routing
    raw["player_auth"]["hmac_secret"] = {"env": "UNSET_SECRET"}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    view = load_rules_view(path)  # the environment holds none of the test secrets
    assert {name: t.needs_drm_resource_id for name, t in view.providers.items()} == {
        "legacy": False,
        "incoming": True,
    }
    assert view.routing is None and view.catalog is None
    with pytest.raises(ConfigError) as info:
        load_rules_view(path, routing=True)
    assert info.value.problems == ["routing.rules_file: /not/mounted/routing.yaml does not exist"]
    raw["providers"]["legacy"]["license_urls"]["widevine"] = "not a url"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"providers\.legacy\.license_urls\.widevine: not a URL"):
        load_rules_view(path)


def test_provider_errors_are_codes_and_only_for_generic_providers() -> None:
    raw = base()
    raw["providers"]["legacy"]["provider_errors"] = ["EMULATED_FAULT", "has space", 7]
    found = problems_of(raw)
    assert "providers.legacy.provider_errors: 'has space' is not an error code" in found
    assert "providers.legacy.provider_errors: 7 is not an error code" in found
    good = base()
    good["providers"]["legacy"]["provider_errors"] = ["EMULATED_FAULT"]
    config = parse_config(good, base_dir=Path("/srv"), env=ENV)
    assert config.providers["legacy"].provider_errors == {"EMULATED_FAULT"}


def test_a_kind_knows_its_own_error_codes_and_serves_only_its_drm_systems() -> None:
    from proxy.dev.kinds import kind_env, provider_section

    raw = base()
    section = provider_section("widevine-cloud", "http://127.0.0.1:2")
    section["provider_errors"] = ["X"]
    section["license_urls"]["fairplay"] = "/fairplay"
    section["key_url"] = "/keys/{key_id}"
    section["needs_drm_resource_id"] = False
    raw["providers"]["incoming"] = section
    found = problems_of(raw, {**ENV, **kind_env("widevine-cloud")})
    assert found == [
        "providers.incoming.needs_drm_resource_id: is true for kind 'widevine-cloud' "
        "(its protocol decides)",
        "providers.incoming.license_urls.fairplay: kind 'widevine-cloud' does not serve fairplay",
        "providers.incoming.key_url: kind 'widevine-cloud' does not serve HLS AES-128 keys",
        "providers.incoming.provider_errors: kind 'widevine-cloud' knows its provider's codes",
    ]


def test_catalog_caps_found_and_known_missing_assets_apart() -> None:
    raw = base()
    raw["catalog"]["max_entries"] = 2000
    config = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert config.catalog.max_negative_entries is None  # the cache takes a tenth: 200
    raw["catalog"]["max_negative_entries"] = 50
    assert parse_config(raw, base_dir=Path("/srv"), env=ENV).catalog.max_negative_entries == 50
    raw["catalog"]["max_negative_entries"] = 0
    assert problems_of(raw) == ["catalog.max_negative_entries: must be greater than 0"]


def test_the_provider_header_is_off_by_default_and_exposed_to_browsers_when_on() -> None:
    raw = base()
    raw["cors"] = {"allowed_origins": ["https://player.example.com"]}
    off = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert off.server.provider_header is False
    assert off.cors is not None and off.cors.expose_headers == ("X-Request-Id",)
    raw["server"]["provider_header"] = True
    on = parse_config(raw, base_dir=Path("/srv"), env=ENV)
    assert on.server.provider_header is True
    assert on.cors is not None
    assert on.cors.expose_headers == ("X-Request-Id", "X-Drm-Gateway-Provider")
    raw["server"]["provider_header"] = "yes"
    assert "server.provider_header: must be true or false" in problems_of(raw)
