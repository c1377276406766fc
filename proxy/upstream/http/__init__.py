"""The lean HTTP/1.1 client for the hot path: connection pool, connection, errors.

No cookies, no decompression, no redirects followed, response size capped, TLS verified.
Knows nothing of DRM: bytes and headers in, status, headers and bytes out.
"""
