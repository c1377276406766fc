"""The upstream HTTP client's errors (timeouts are the builtin TimeoutError):

    HttpClientError          the upstream could not be reached or broke the exchange
    ├── ConnectError         refused, unreachable, DNS, TLS verification refused
    ├── ConnectionClosed     closed or reset before the answer was complete
    ├── BadResponse          the answer is not valid HTTP/1.x
    ├── ResponseTooLarge     the answer's body exceeds max_response_bytes
    └── InvalidRequest       the request cannot be sent safely (also a ValueError)

They are the client's own, not the gateway's: proxy.upstream.provider maps them once into
proxy.errors. Messages name what broke, never a body, header value or URL.
"""

from __future__ import annotations


class HttpClientError(Exception):
    """The upstream could not be reached or broke the exchange (timeouts are TimeoutError)."""


class ConnectError(HttpClientError):
    """Connecting failed: refused, unreachable, DNS, or TLS verification refused."""


class ConnectionClosed(HttpClientError):
    """The connection closed or was reset before the answer was complete."""


class BadResponse(HttpClientError):
    """The answer is not valid HTTP/1.x."""


class ResponseTooLarge(HttpClientError):
    """The answer's body exceeds the client's max_response_bytes."""


class InvalidRequest(HttpClientError, ValueError):
    """The URL, method or a header cannot be sent safely (e.g. a CR or LF in a value)."""
