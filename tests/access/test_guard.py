"""The player guard's order of checks: the cheapest refusal first, each with its own error."""

from __future__ import annotations

import pytest

from proxy.access.guard import PlayerGuard
from proxy.access.player_tokens import PlayerAuthSettings
from proxy.config.security import RateLimit, RateLimits
from proxy.domain import AssetId
from proxy.errors import InvalidId, NotEntitled, RateLimited, Unauthorized
from tests.conftest import PLAYER_SECRET, player_token

AUTH = PlayerAuthSettings(
    algorithms=("HS256",),
    hmac_secret=PLAYER_SECRET.encode(),
    issuer="test-idp",
    audience="drm-gateway",
)
ASSET = AssetId("both-1")


def guard(*, per_ip: RateLimit | None = None, per_user: RateLimit | None = None) -> PlayerGuard:
    return PlayerGuard(AUTH, RateLimits(per_user=per_user, per_ip=per_ip))


def test_an_entitled_player_is_admitted() -> None:
    player = guard().admit(ip="192.0.2.1", token=player_token(["both-1"]), asset_id=ASSET)
    assert player.user_id == "user-1"


def test_the_ip_limit_refuses_before_any_token_is_checked() -> None:
    g = guard(per_ip=RateLimit(rate_per_second=0.001, burst=1))
    g.admit(ip="192.0.2.1", token=player_token(), asset_id=ASSET)
    with pytest.raises(RateLimited) as refused:
        g.admit(ip="192.0.2.1", token="not-a-jwt", asset_id=None)  # neither is looked at
    assert refused.value.detail == "ip" and refused.value.retry_after >= 1
    g.admit(ip="192.0.2.2", token=player_token(), asset_id=ASSET)  # another address: own bucket


def test_an_invalid_asset_id_is_refused_after_the_token() -> None:
    with pytest.raises(Unauthorized):
        guard().admit(ip="192.0.2.1", token=None, asset_id=None)
    with pytest.raises(InvalidId):
        guard().admit(ip="192.0.2.1", token=player_token(), asset_id=None)


def test_entitlement_is_checked_against_the_path_asset() -> None:
    with pytest.raises(NotEntitled):
        guard().admit(ip="192.0.2.1", token=player_token(["both-2"]), asset_id=ASSET)


def test_the_user_limit_counts_only_admitted_players() -> None:
    g = guard(per_user=RateLimit(rate_per_second=0.001, burst=1))
    for _ in range(3):  # refusals do not spend the user's bucket
        with pytest.raises(NotEntitled):
            g.admit(ip="192.0.2.1", token=player_token(["x"]), asset_id=ASSET)
    g.admit(ip="192.0.2.1", token=player_token(), asset_id=ASSET)
    with pytest.raises(RateLimited) as refused:
        g.admit(ip="192.0.2.9", token=player_token(), asset_id=ASSET)
    assert refused.value.detail == "user"
