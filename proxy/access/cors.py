"""CORS for browser players on the public port (pure; the handler turns the dicts into headers).

Origins match exactly (scheme, host and port as the browser sends them); `*` means any origin
and is refused together with credentials. The allowed origin is always echoed, never `*`,
with `Vary: Origin` so a shared cache never hands one origin's answer to another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from proxy.domain import HTTP_TOKEN

_ORIGIN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?$")
_DEFAULT_PORTS = {"http": "80", "https": "443"}
MAX_AGE_LIMIT = 86_400
# The answer header naming the provider that answered a license or key request, sent with
# `server.provider_header: true` (then exposed to allowed origins: a page on another origin
# reads no other header than the CORS-safelisted ones unless it is listed).
PROVIDER_HEADER = "X-Drm-Gateway-Provider"


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which browser origins may call the public API, and what they may send and read."""

    allowed_origins: frozenset[str]
    allow_credentials: bool
    max_age: int = 600
    # SOAPAction: browser players (Shaka, dash.js, Video.js) copy the headers of a PlayReady
    # key message onto its license request. The gateway reads none of them: the provider
    # gets the SOAPAction its own protocol wants.
    allowed_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-Request-Id",
        "X-Client-Platform",
        "X-App-Version",
        "SOAPAction",
    )
    expose_headers: tuple[str, ...] = ("X-Request-Id",)
    allowed_methods: tuple[str, ...] = ("GET", "POST")

    def allows(self, origin: str | None) -> bool:
        """Whether `origin` (the request's Origin header) may read responses."""
        if not origin:
            return False
        return origin in self.allowed_origins or "*" in self.allowed_origins

    def exposing(self, header: str) -> CorsPolicy:
        """This policy, letting allowed origins also read `header` (once, whatever its case)."""
        if header.lower() in {h.lower() for h in self.expose_headers}:
            return self
        return replace(self, expose_headers=(*self.expose_headers, header))

    def preflight_headers(
        self, origin: str | None, request_method: str | None, request_headers: str | None
    ) -> dict[str, str] | None:
        """Headers answering a preflight; None if not allowed (answer 403, call nothing).

        `request_method` and `request_headers` are the Access-Control-Request-Method and
        -Headers values; an OPTIONS without a request method is not a preflight (None).
        """
        if not self.allows(origin) or request_method not in self.allowed_methods:
            return None
        allowed = {h.lower() for h in self.allowed_headers}
        asked = [h.strip().lower() for h in (request_headers or "").split(",")]
        if any(h and h not in allowed for h in asked):
            return None
        headers = self._common(origin)
        headers["Access-Control-Allow-Methods"] = ", ".join(self.allowed_methods)
        headers["Access-Control-Allow-Headers"] = ", ".join(self.allowed_headers)
        headers["Access-Control-Max-Age"] = str(self.max_age)
        # The answer also depends on what was asked, not only on the origin.
        headers["Vary"] = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
        return headers

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for an actual response: CORS ones for an allowed origin, else only Vary."""
        if not self.allows(origin):
            return {"Vary": "Origin"}
        headers = self._common(origin)
        if self.expose_headers:
            headers["Access-Control-Expose-Headers"] = ", ".join(self.expose_headers)
        return headers

    def _common(self, origin: str | None) -> dict[str, str]:
        headers = {"Access-Control-Allow-Origin": origin or "", "Vary": "Origin"}
        if self.allow_credentials:
            headers["Access-Control-Allow-Credentials"] = "true"
        return headers


def merge_vary(values: Iterable[str]) -> str:
    """One Vary value from several: each field once (case-insensitive, first spelling kept)."""
    fields: dict[str, str] = {}
    for name in (part.strip() for value in values for part in value.split(",")):
        if name:
            fields.setdefault(name.lower(), name)
    # `*` already varies on everything; listing fields beside it says nothing more.
    return "*" if "*" in fields else ", ".join(fields.values())


def validate_cors(policy: CorsPolicy) -> list[str]:
    """Every problem with `policy`, each as "field: problem"; [] when usable."""
    problems: list[str] = []
    if "*" in policy.allowed_origins and policy.allow_credentials:
        problems.append("allowed_origins: '*' cannot be used with allow_credentials")
    for origin in sorted(policy.allowed_origins - {"*"}):
        problem = _origin_problem(origin)
        if problem:
            problems.append(f"allowed_origins: {origin!r} {problem}")
    for name, values in (
        ("allowed_headers", policy.allowed_headers),
        ("expose_headers", policy.expose_headers),
        ("allowed_methods", policy.allowed_methods),
    ):
        problems += [f"{name}: {v!r} is not a header token" for v in values if not _token(v)]
    if not 0 <= policy.max_age <= MAX_AGE_LIMIT:
        problems.append(f"max_age: must be 0..{MAX_AGE_LIMIT} seconds")
    return problems


def _origin_problem(origin: str) -> str | None:
    if origin == "null":
        return "is refused: any sandboxed page or file:// document sends 'null'"
    if origin != origin.lower():
        return "must be lowercase, as browsers send it"
    match = _ORIGIN.match(origin)
    if match is None:
        return "must be scheme://host[:port] (http or https, no path, no trailing slash)"
    scheme, _, port = match.groups()
    if port is not None and (port == _DEFAULT_PORTS[scheme] or not 0 < int(port) < 65536):
        return "has a default or invalid port; browsers omit default ports"
    return None


def _token(value: str) -> bool:
    return bool(HTTP_TOKEN.match(value))
