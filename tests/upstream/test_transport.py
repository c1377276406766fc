"""The provider status table: which answers reach the player and which error each one maps to."""

from __future__ import annotations

import pytest

from proxy.errors import (
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from proxy.upstream.transport import status_rule


@pytest.mark.parametrize(
    ("status", "body", "why", "error", "player_status"),
    [
        (200, b"", "empty_body", UpstreamBadResponse, 502),
        (200, b'{"errorCode": 7011}', "error_json_in_2xx", UpstreamBadResponse, 502),
        (204, b"", "empty_body", UpstreamBadResponse, 502),
        (302, b"moved", "redirect_not_followed", UpstreamBadResponse, 502),
        (401, b"", "auth_refused", UpstreamAuthFailed, 502),
        (403, b"no", "rejected", UpstreamRejected, 403),
        (404, b"", "rejected", UpstreamRejected, 404),
        (429, b"", "rejected", UpstreamRejected, 429),
        (500, b"", "server_error", UpstreamUnavailable, 502),
        (503, b"", "server_error", UpstreamUnavailable, 502),
        (101, b"", "server_error", UpstreamUnavailable, 502),
        (600, b"", "server_error", UpstreamUnavailable, 502),
    ],
)
def test_refused_answers_map_to_one_error_each(
    status: int, body: bytes, why: str, error: type, player_status: int
) -> None:
    rule = status_rule(status, body)
    assert rule is not None and rule.why == why
    raised = rule.error(status)
    assert type(raised) is error and raised.status == player_status


@pytest.mark.parametrize(
    "body", [b"\x08\x04license", b'{"ckc": "AAAA"}', b"<ckc>AAAA</ckc>", b"{not json"]
)
def test_a_2xx_with_a_body_that_is_not_an_error_passes(body: bytes) -> None:
    assert status_rule(200, body) is None
