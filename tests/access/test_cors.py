"""Tests for proxy.access.cors: policy validation, preflight allowed or denied, response headers."""

from __future__ import annotations

import pytest

from proxy.access.cors import PROVIDER_HEADER, CorsPolicy, merge_vary, validate_cors

APP = "https://player.example.com"


@pytest.fixture
def policy() -> CorsPolicy:
    return CorsPolicy(frozenset({APP, "http://localhost:3000"}), allow_credentials=True)


def test_valid_policies_have_no_problems() -> None:
    assert validate_cors(CorsPolicy(frozenset({APP, "http://[::1]:8080"}), True)) == []
    assert validate_cors(CorsPolicy(frozenset({"*"}), allow_credentials=False)) == []
    assert validate_cors(CorsPolicy(frozenset(), allow_credentials=False)) == []


def test_wildcard_with_credentials_is_refused() -> None:
    problems = validate_cors(CorsPolicy(frozenset({"*"}), allow_credentials=True))
    assert problems == ["allowed_origins: '*' cannot be used with allow_credentials"]


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://player.example.com/", "no trailing slash"),
        ("https://player.example.com/app", "no path"),
        ("player.example.com", "scheme://host"),
        ("ftp://player.example.com", "scheme://host"),
        ("https://user@player.example.com", "scheme://host"),
        ("https://Player.Example.com", "lowercase"),
        ("https://player.example.com:443", "default or invalid port"),
        ("http://player.example.com:99999", "default or invalid port"),
        ("null", "sandboxed"),
    ],
)
def test_bad_origins_are_refused(origin: str, expected: str) -> None:
    problems = validate_cors(CorsPolicy(frozenset({origin}), allow_credentials=False))
    assert len(problems) == 1 and expected in problems[0], problems


def test_bad_headers_and_max_age_are_refused() -> None:
    bad = CorsPolicy(frozenset(), False, max_age=-1, allowed_headers=("X Bad",))
    assert validate_cors(bad) == [
        "allowed_headers: 'X Bad' is not a header token",
        "max_age: must be 0..86400 seconds",
    ]


def test_allowed_preflight(policy: CorsPolicy) -> None:
    headers = policy.preflight_headers(APP, "POST", "authorization, content-type, X-Request-Id")
    assert headers == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": (
            "Authorization, Content-Type, X-Request-Id, X-Client-Platform, X-App-Version, "
            "SOAPAction"
        ),
        "Access-Control-Max-Age": "600",
        "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    }


def test_a_playready_license_request_from_a_browser_player_is_allowed(policy: CorsPolicy) -> None:
    """Shaka, dash.js and Video.js send the PlayReady key message's own headers."""
    asked = "authorization, content-type, soapaction"
    assert policy.preflight_headers(APP, "POST", asked) is not None


def test_preflight_without_requested_headers_is_allowed(policy: CorsPolicy) -> None:
    headers = policy.preflight_headers("http://localhost:3000", "GET", None)
    assert headers is not None
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


@pytest.mark.parametrize(
    ("origin", "method", "request_headers"),
    [
        ("https://evil.example.com", "POST", None),  # unknown origin
        ("https://player.example.com.evil.com", "POST", None),  # exact match only
        ("http://player.example.com", "POST", None),  # other scheme
        ("https://player.example.com:8443", "POST", None),  # other port
        (None, "POST", None),  # no origin
        ("null", "POST", None),
        (APP, "PUT", None),  # method not allowed
        (APP, None, None),  # not a preflight
        (APP, "POST", "Authorization, X-Evil"),  # header not allowed
    ],
)
def test_denied_preflight(
    policy: CorsPolicy, origin: str | None, method: str | None, request_headers: str | None
) -> None:
    assert policy.preflight_headers(origin, method, request_headers) is None


def test_response_headers_for_an_allowed_origin(policy: CorsPolicy) -> None:
    assert policy.response_headers(APP) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Request-Id",
        "Vary": "Origin",
    }


@pytest.mark.parametrize("origin", [None, "", "https://evil.example.com"])
def test_response_headers_for_other_origins_only_vary(
    policy: CorsPolicy, origin: str | None
) -> None:
    assert policy.response_headers(origin) == {"Vary": "Origin"}


def test_without_credentials_no_credentials_header() -> None:
    policy = CorsPolicy(frozenset({APP}), allow_credentials=False)
    assert "Access-Control-Allow-Credentials" not in policy.response_headers(APP)
    preflight = policy.preflight_headers(APP, "GET", None)
    assert preflight is not None and "Access-Control-Allow-Credentials" not in preflight


def test_wildcard_echoes_the_origin_never_a_star() -> None:
    policy = CorsPolicy(frozenset({"*"}), allow_credentials=False)
    assert policy.response_headers("https://any.example")["Access-Control-Allow-Origin"] == (
        "https://any.example"
    )
    assert policy.response_headers(None) == {"Vary": "Origin"}


@pytest.mark.parametrize(
    ("values", "merged"),
    [
        (["Origin"], "Origin"),
        (["Origin", "Origin"], "Origin"),
        (["Accept-Encoding", "Origin"], "Accept-Encoding, Origin"),
        (["origin, Accept-Encoding", "Origin"], "origin, Accept-Encoding"),
        (
            ["Origin, Access-Control-Request-Method, Access-Control-Request-Headers", "Origin"],
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
        ([" , Origin ,", "Origin"], "Origin"),
        (["*", "Origin"], "*"),
    ],
)
def test_merge_vary_lists_each_field_once(values: list[str], merged: str) -> None:
    assert merge_vary(values) == merged


def test_exposing_adds_a_header_once_whatever_its_case() -> None:
    policy = CorsPolicy(frozenset({APP}), allow_credentials=False)
    exposed = policy.exposing(PROVIDER_HEADER)
    assert exposed.response_headers(APP)["Access-Control-Expose-Headers"] == (
        f"X-Request-Id, {PROVIDER_HEADER}"
    )
    assert exposed.exposing(PROVIDER_HEADER.lower()) is exposed
    assert policy.expose_headers == ("X-Request-Id",)  # the original is unchanged
    assert "Access-Control-Expose-Headers" not in exposed.response_headers("https://x.example")
    assert validate_cors(exposed) == []
