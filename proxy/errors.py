"""The gateway's one exception tree, mapped once to JSON error bodies by a middleware.

    GatewayError                      500 internal_error
    ├── BadRequest                    400 bad_request
    │   ├── InvalidId                 400 invalid_id
    │   ├── AssetMismatch             400 asset_mismatch
    │   └── BadSpc                    400 bad_spc
    ├── Unauthorized                  401 unauthorized
    │   ├── PackagerUnauthorized      401 unauthorized          (+ WWW-Authenticate)
    │   └── AdminUnauthorized         401 unauthorized          (+ WWW-Authenticate)
    ├── NotEntitled                   403 not_entitled
    ├── CorsRefused                   403 cors_refused
    ├── NotFound                      404 not_found
    │   └── UnknownAsset              404 unknown_asset
    ├── FleetUnavailable              409 fleet_unavailable     (scope=fleet without Redis)
    ├── BodyTooLarge                  413 body_too_large
    ├── UriTooLong                    414 uri_too_long
    ├── UnsupportedMediaType          415 unsupported_media_type
    ├── Unprocessable                 422 unprocessable         (SPEKE: a document we refuse)
    │   ├── InvalidCpix               422 invalid_cpix          (the SPEKE spec's message)
    │   ├── UnknownContent            422 unknown_content       (no asset for CPIX@contentId)
    │   ├── ContentIdConflict         422 content_id_conflict   (the asset has another one)
    │   └── KeyConflict               422 key_conflict          (a provider has another key)
    ├── RateLimited                   429 rate_limited
    ├── HeadersTooLarge               431 headers_too_large
    ├── InternalError                 500 internal_error
    │   └── MissingResourceId         500 internal_error
    ├── UpstreamError                 502 upstream_error
    │   ├── UpstreamUnavailable       502 upstream_unavailable  (connect failure, reset, 5xx)
    │   ├── UpstreamBadResponse       502 upstream_bad_response (garbled or error-in-200)
    │   ├── UpstreamAuthFailed        502 upstream_auth_failed  (provider refused our credentials)
    │   ├── UpstreamRejected          4xx upstream_rejected     (provider said 4xx)
    │   ├── UpstreamOverloaded        503 upstream_overloaded   (429, or 503 + Retry-After)
    │   ├── UpstreamPoolExhausted     503 upstream_pool_exhausted (no connection slot in time)
    │   ├── CircuitOpen               503 circuit_open          (the provider's breaker is open)
    │   └── KeyProviderFailed         502 key_provider_failed   (503 if worth a retry)
    │       ├── KeySourceFailed       502 key_source_failed     (SPEKE: the key source)
    │       └── KeyMirrorFailed       502 key_mirror_failed     (SPEKE: a mirror write)
    ├── NoProvider                    503 no_provider
    ├── NoKeyPolicy                   503 no_key_policy         (the rules file has no keys:)
    ├── RulesUnavailable              503 rules_unavailable     (no valid rules file loaded yet)
    ├── CatalogUnavailable            503 catalog_unavailable
    └── UpstreamTimeout               504 upstream_timeout

Messages are shown to players: they never hold tokens, keys, bodies or upstream URLs.
`detail` says which refusal of its kind an error is (why a token was refused, which rate
limit): a bounded value for a metric label and the access line, "-" where there is none.
`provider_error` is the provider's own error code behind an upstream error (bounded per
provider kind), for the same metric and line; never the provider's message.
`retry_after` (seconds), where set, goes to the player as a `Retry-After` header.
`before_answer` marks an upstream failure that came before any byte of an answer (connect
error, reset before the response, per-try timeout): the only kind worth a retry.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway turns into a JSON response."""

    status: int = 500
    code: str = "internal_error"
    message: str = "The gateway could not handle this request."
    detail: str = "-"
    provider_error: str = "-"
    retry_after: int | None = None

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


class PackagerUnauthorized(Unauthorized):
    """A SPEKE request without the packager credential; `challenge` is the WWW-Authenticate
    value the answer carries."""

    message = "A valid packager credential is required."

    def __init__(self, challenge: str, message: str | None = None, *, detail: str) -> None:
        super().__init__(message, detail=detail)
        self.challenges: tuple[str, ...] = (challenge,)


class AdminUnauthorized(Unauthorized):
    """An admin route without a valid admin token; the answer offers Basic and Bearer, one
    WWW-Authenticate line each: Chromium reads only a line's first challenge, and Basic is
    the one a browser (the console page) can answer."""

    message = "A valid admin token is required."
    detail = "admin_token"
    challenges: tuple[str, ...] = (
        'Basic realm="drm-gateway admin"',
        'Bearer realm="drm-gateway admin"',
    )


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


class FleetUnavailable(GatewayError):
    """An admin call asked for `scope=fleet`, but no Redis links this gateway to others."""

    status = 409
    code = "fleet_unavailable"
    message = "No Redis configured: this gateway acts on one replica only."


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


class Unprocessable(GatewayError):
    """A SPEKE request the gateway understood and refuses (the packager must change it)."""

    status = 422
    code = "unprocessable"
    message = "The request cannot be processed."


class InvalidCpix(Unprocessable):
    """A CPIX document or SPEKE header the spec refuses; the message is the spec's."""

    code = "invalid_cpix"


class UnknownContent(Unprocessable):
    code = "unknown_content"
    message = (
        "No catalog asset has this CPIX@contentId as its drmResourceId; "
        "name the asset with ?asset=<asset id>."
    )


class ContentIdConflict(Unprocessable):
    code = "content_id_conflict"
    message = "The asset already has another drmResourceId than this CPIX@contentId."


class KeyConflict(Unprocessable):
    code = "key_conflict"
    message = "A key provider already holds a different key for a key id of this document."


class Overloaded(GatewayError):
    """Too many player requests in flight, and the bounded queue in front is full or its wait
    ran out (proxy/server/admission.py): refused before any work."""

    status = 503
    code = "overloaded"
    message = "The gateway is overloaded; retry later."
    retry_after = 1


class RateLimited(GatewayError):
    status = 429
    code = "rate_limited"
    message = "Too many requests; retry later."
    retry_after: int

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
    before_answer: bool = False


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


class UpstreamOverloaded(UpstreamError):
    """The provider asked us to slow down: a 429, or a 503 with Retry-After. The player gets
    503 with a Retry-After (the provider's, clamped by the transport; 1 s when it gave
    none), never the provider's body; the circuit breaker counts it as a failure."""

    status = 503
    code = "upstream_overloaded"
    message = "The DRM provider is overloaded; retry later."

    def __init__(self, retry_after: int | None = None) -> None:
        super().__init__()
        self.retry_after = retry_after if retry_after is not None and retry_after > 0 else 1


class UpstreamPoolExhausted(UpstreamError):
    """No connection to the provider came free within the pool-slot wait: the gateway's own
    connection limit, not an answer of the provider (so no circuit-breaker verdict)."""

    status = 503
    code = "upstream_pool_exhausted"
    message = "The gateway has no free connection to the DRM provider; retry later."
    retry_after = 1


class CircuitOpen(UpstreamError):
    """The provider's circuit breaker is open (or its half-open probes are all in flight):
    the request was not sent. `retry_after` is when the breaker will let a probe through."""

    status = 503
    code = "circuit_open"
    message = "The DRM provider is temporarily unavailable; retry later."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)


class KeyProviderFailed(UpstreamError):
    """A provider's key API failed; 503 when a retry may succeed, else 502."""

    code = "key_provider_failed"
    message = "A key provider did not answer correctly."

    def __init__(self, provider: str, *, retryable: bool, provider_error: str = "-") -> None:
        super().__init__(detail=provider)
        self.status = 503 if retryable else 502
        self.provider_error = provider_error


class KeySourceFailed(KeyProviderFailed):
    code = "key_source_failed"
    message = "The key source provider did not deliver the keys; retry later."


class KeyMirrorFailed(KeyProviderFailed):
    code = "key_mirror_failed"
    message = "The keys could not be written to every provider the rules name; retry later."


class NoProvider(GatewayError):
    status = 503
    code = "no_provider"
    message = "No DRM provider can serve this asset."


class RulesUnavailable(GatewayError):
    """No routing rules are active: the rules file has not validated since start-up."""

    status = 503
    code = "rules_unavailable"
    message = "The gateway has no routing rules yet; retry on another replica."


class NoKeyPolicy(GatewayError):
    """A SPEKE request while the active rules file has no `keys:` section."""

    status = 503
    code = "no_key_policy"
    message = "The routing rules have no keys section: no key source is configured."


class CatalogUnavailable(GatewayError):
    status = 503
    code = "catalog_unavailable"
    message = "The asset catalog is unavailable."


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"
    message = "The DRM provider did not answer in time."
    before_answer: bool = False
