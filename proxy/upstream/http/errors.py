"""The upstream HTTP client's errors (timeouts are the builtin TimeoutError):

    HttpClientError          the upstream could not be reached or broke the exchange
    ├── ConnectError         refused, unreachable, DNS, TLS verification refused
    ├── ConnectionClosed     closed or reset before the answer was complete
    ├── PoolTimeout          no connection slot came free within the pool timeout
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
    """The connection closed or was reset before the answer was complete; `before_answer`:
    before any byte of it (so the request may be retried where that is safe)."""

    def __init__(self, message: str, *, before_answer: bool = False) -> None:
        super().__init__(message)
        self.before_answer = before_answer


class PoolTimeout(HttpClientError):
    """Every connection of the pool stayed busy for the whole pool timeout (a request given
    one; without it the wait counts within the total timeout, a TimeoutError)."""


class BadResponse(HttpClientError):
    """The answer is not valid HTTP/1.x."""


class ResponseTooLarge(HttpClientError):
    """The answer's body exceeds the client's max_response_bytes."""


class InvalidRequest(HttpClientError, ValueError):
    """The URL, method or a header cannot be sent safely (e.g. a CR or LF in a value)."""
