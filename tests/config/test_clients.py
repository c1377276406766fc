"""`server.clients`: documented defaults, overrides, and every bad value with its key path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.config.clients import ClientSettings, ConnectionLimits
from tests.conftest import ENV, gateway_raw_config


def config_with(clients: Any) -> dict[str, Any]:
    raw = gateway_raw_config(Path("catalog.db"), "http://127.0.0.1:1", "http://127.0.0.1:2")
    raw["server"]["clients"] = clients
    return raw


def problems_of(clients: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(clients), base_dir=Path("/srv"), env=ENV)
    return info.value.problems


def test_defaults_when_the_section_is_absent() -> None:
    raw = gateway_raw_config(Path("catalog.db"), "http://127.0.0.1:1", "http://127.0.0.1:2")
    clients = parse_config(raw, base_dir=Path("/srv"), env=ENV).server.clients
    assert clients == ClientSettings()
    assert clients.first_request_timeout_seconds == 10
    assert clients.header_timeout_seconds == 10
    assert clients.body_timeout_seconds == 10
    assert clients.keepalive_timeout_seconds == 75
    assert clients.public == ConnectionLimits(10_000, 256, 1024)
    assert clients.internal == ConnectionLimits(256, 0, 128)


def test_every_field_can_be_set() -> None:
    raw = config_with(
        {
            "first_request_timeout_seconds": 1,
            "header_timeout_seconds": 2.5,
            "body_timeout_seconds": 3,
            "keepalive_timeout_seconds": 4,
            "public": {"max_connections": 100, "max_connections_per_client": 0, "backlog": 64},
            "internal": {"max_connections": 8},
        }
    )
    clients = parse_config(raw, base_dir=Path("/srv"), env=ENV).server.clients
    assert clients.first_request_timeout_seconds == 1.0
    assert clients.header_timeout_seconds == 2.5
    assert clients.body_timeout_seconds == 3.0
    assert clients.keepalive_timeout_seconds == 4.0
    assert clients.public == ConnectionLimits(100, 0, 64)
    assert clients.internal == ConnectionLimits(8, 0, 128)  # the rest from the defaults


@pytest.mark.parametrize(
    ("clients", "problem"),
    [
        ("fast", "server.clients: must be a mapping"),
        ({"idle_seconds": 3}, "server.clients.idle_seconds: unknown field"),
        ({"header_timeout_seconds": 0}, "server.clients.header_timeout_seconds: must be greater"),
        ({"body_timeout_seconds": -1}, "server.clients.body_timeout_seconds: must be greater"),
        ({"keepalive_timeout_seconds": "75"}, "server.clients.keepalive_timeout_seconds: must"),
        (
            {"first_request_timeout_seconds": True},
            "server.clients.first_request_timeout_seconds: must be a number",
        ),
        ({"public": []}, "server.clients.public: must be a mapping"),
        ({"public": {"max": 3}}, "server.clients.public.max: unknown field"),
        (
            {"public": {"max_connections": 0}},
            "server.clients.public.max_connections: must be greater than 0",
        ),
        (
            {"internal": {"max_connections": 1.5}},
            "server.clients.internal.max_connections: must be an integer",
        ),
        (
            {"public": {"max_connections_per_client": -1}},
            "server.clients.public.max_connections_per_client: must be 0 (no cap) or more",
        ),
        (
            {"public": {"max_connections": 10, "max_connections_per_client": 11}},
            "server.clients.public.max_connections_per_client: must be at most max_connections",
        ),
        ({"internal": {"backlog": 0}}, "server.clients.internal.backlog: must be greater than 0"),
        ({"public": {"backlog": 70_000}}, "server.clients.public.backlog: must be at most 65535"),
    ],
)
def test_bad_values_are_reported_with_their_key_path(clients: Any, problem: str) -> None:
    problems = problems_of(clients)
    assert any(p.startswith(problem) for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        {"header_timeout_seconds": 0, "public": {"backlog": 0}, "internal": {"x": 1}}
    )
    assert len(problems) == 3, problems


def test_the_in_flight_cap_and_its_queue() -> None:
    raw = config_with({"in_flight": {"max_requests": 8, "max_queued": 0, "queue_seconds": 0.5}})
    limits = parse_config(raw, base_dir=Path("/srv"), env=ENV).server.clients.in_flight
    assert (limits.max_requests, limits.max_queued, limits.queue_seconds) == (8, 0, 0.5)
    assert ClientSettings().in_flight.max_requests == 2048
    assert problems_of({"in_flight": {"max_requests": 0, "max_queued": -1, "wait": 1}}) == [
        "server.clients.in_flight.wait: unknown field",
        "server.clients.in_flight.max_queued: must be 0 (no queue) or more",
        "server.clients.in_flight.max_requests: must be greater than 0",
    ]
