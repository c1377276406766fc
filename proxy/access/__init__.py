"""Who may ask: player tokens (JWT, JWKS), entitlement, rate limits, CORS.

Pure of aiohttp: the server package hands it header values and gets a `Player` or a
`GatewayError`. Imports `proxy.config`, `proxy.domain`, `proxy.errors`, observability.
"""
