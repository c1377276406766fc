"""The gateway's one exception tree, mapped once to JSON error bodies by a middleware.

    GatewayError                      500 internal_error
    ├── BadRequest                    400 bad_request
    │   ├── InvalidId                 400 invalid_id
    │   ├── AssetMismatch             400 asset_mismatch
    │   └── BadSpc                    400 bad_spc
    ├── Unauthorized                  401 unauthorized
    ├── NotEntitled                   403 not_entitled
    ├── CorsRefused                   403 cors_refused
    ├── NotFound                      404 not_found
    │   └── UnknownAsset              404 unknown_asset
    ├── BodyTooLarge                  413 body_too_large
    ├── UriTooLong                    414 uri_too_long
    ├── UnsupportedMediaType          415 unsupported_media_type
    ├── RateLimited                   429 rate_limited
    ├── HeadersTooLarge               431 headers_too_large
    ├── InternalError                 500 internal_error
    │   └── MissingResourceId         500 internal_error
    ├── UpstreamError                 502 upstream_error
    │   ├── UpstreamUnavailable       502 upstream_unavailable  (connect failure, reset, 5xx)
    │   ├── UpstreamBadResponse       502 upstream_bad_response (garbled or error-in-200)
    │   ├── UpstreamAuthFailed        502 upstream_auth_failed  (provider refused our credentials)
    │   └── UpstreamRejected          4xx upstream_rejected     (provider said 4xx)
    ├── NoProvider                    503 no_provider
    ├── RulesUnavailable              503 rules_unavailable     (no valid rules file loaded yet)
    ├── CatalogUnavailable            503 catalog_unavailable
    └── UpstreamTimeout               504 upstream_timeout

Messages are shown to players: they never hold tokens, keys, bodies or upstream URLs.
`detail` says which refusal of its kind an error is (why a token was refused, which rate
limit): a bounded value for a metric label and the access line, "-" where there is none.
`provider_error` is the provider's own error code behind an upstream error (bounded per
provider kind), for the same metric and line; never the provider's message.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway turns into a JSON response."""

    status: int = 500
    code: str = "internal_error"
    message: str = "The gateway could not handle this request."
    detail: str = "-"
    provider_error: str = "-"

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        if message is not None:
            self.message = message
        if detail is not None:
            self.detail = detail
        super().__init__(self.message)


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"
    message = "The request is malformed."


class InvalidId(BadRequest):
    code = "invalid_id"
    message = "An id in the path is not valid."


class AssetMismatch(BadRequest):
    """A FairPlay body's assetId names another asset than the (entitled) one in the path."""

    code = "asset_mismatch"
    message = "The assetId in the FairPlay body does not match the asset in the path."


class BadSpc(BadRequest):
    code = "bad_spc"
    message = "The FairPlay SPC body is not valid."


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"
    message = "A valid token is required."


class NotEntitled(GatewayError):
    status = 403
    code = "not_entitled"
    message = "The player is not entitled to this asset."


class CorsRefused(GatewayError):
    status = 403
    code = "cors_refused"
    message = "This origin, method or header is not allowed."


class NotFound(GatewayError):
    status = 404
    code = "not_found"
    message = "Not found."


class UnknownAsset(NotFound):
    code = "unknown_asset"
    message = "The asset is not in the catalog."


class BodyTooLarge(GatewayError):
    status = 413
    code = "body_too_large"
    message = "The request body is too large."


class UriTooLong(GatewayError):
    status = 414
    code = "uri_too_long"
    message = "The request target is too long."


class UnsupportedMediaType(GatewayError):
    status = 415
    code = "unsupported_media_type"
    message = "The request content type is not supported."


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"
    message = "Too many requests; retry later."

    def __init__(
        self, retry_after: int, message: str | None = None, *, detail: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.retry_after = retry_after


class HeadersTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"
    message = "The request header fields are too large."


class InternalError(GatewayError):
    """A bug or misconfiguration on our side; logged with detail, shown without."""


class MissingResourceId(InternalError):
    message = "The gateway could not build the provider request."


class UpstreamError(GatewayError):
    status = 502
    code = "upstream_error"
    message = "The DRM provider did not answer correctly."


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"
    message = "The DRM provider is unavailable."


class UpstreamBadResponse(UpstreamError):
    code = "upstream_bad_response"
    message = "The DRM provider sent an invalid response."


class UpstreamAuthFailed(UpstreamError):
    """The provider answered 401: our credentials or token, not the player's, were refused."""

    code = "upstream_auth_failed"
    message = "The DRM provider refused the gateway's credentials."


class UpstreamRejected(UpstreamError):
    """The provider answered 4xx; the player gets the same status, never the provider's body."""

    code = "upstream_rejected"
    message = "The DRM provider rejected the request."

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        self.status = status if 400 <= status < 500 else 502


class NoProvider(GatewayError):
    status = 503
    code = "no_provider"
    message = "No DRM provider can serve this asset."


class RulesUnavailable(GatewayError):
    """No routing rules are active: the rules file has not validated since start-up."""

    status = 503
    code = "rules_unavailable"
    message = "The gateway has no routing rules yet; retry on another replica."


class CatalogUnavailable(GatewayError):
    status = 503
    code = "catalog_unavailable"
    message = "The asset catalog is unavailable."


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    message = "The DRM provider did not answer in time."
