"""Who may ask for a license or key: per-IP limit, player token, entitlement, per-user limit.

Checked in the order that makes refusals cheapest: a flood from one address is turned away
before any signature is checked, and an asset id is validated before it is compared.
"""

from __future__ import annotations

import math

from proxy.access.player_tokens import Player, PlayerAuthenticator, PlayerAuthSettings
from proxy.access.ratelimit import RateLimiter
from proxy.config.security import RateLimit, RateLimits
from proxy.domain import AssetId, require_asset_id
from proxy.errors import RateLimited
from proxy.observability import metrics


def _limiter(limit: RateLimit | None, max_keys: int) -> RateLimiter | None:
    return (
        None
        if limit is None
        else RateLimiter(limit.rate_per_second, limit.burst, max_keys=max_keys)
    )


class PlayerGuard:
    """Admits a player request or raises the gateway error that refuses it."""

    def __init__(self, auth: PlayerAuthSettings, limits: RateLimits) -> None:
        self.authenticator = PlayerAuthenticator(auth)
        self.auth_off = auth.mode == "none"
        self.token_query_param = auth.token_query_param
        self._per_ip = _limiter(limits.per_ip, limits.max_keys)
        self._per_user = _limiter(limits.per_user, limits.max_keys)

    def admit(self, *, ip: str, token: str | None, asset_id: AssetId | None) -> Player:
        """The admitted player; `asset_id` is None when the path's id was not valid."""
        self._check(self._per_ip, ip, "ip")
        player = self.authenticator.authenticate(token)
        self.authenticator.check_entitled(player, require_asset_id(asset_id))
        self._check(self._per_user, player.user_id, "user")
        return player

    @staticmethod
    def _check(limiter: RateLimiter | None, key: str, label: str) -> None:
        if limiter is None:
            return
        wait = limiter.check(key)
        if wait is not None:
            metrics.RATE_LIMITED.labels(label).inc()
            raise RateLimited(max(1, math.ceil(wait)), detail=label)
