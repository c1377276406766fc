"""The W3C ClearKey license request, checked at the gateway (pure: bytes in, dataclass out).

EME section 9.1.3 "License Request Format": a UTF-8 JSON object whose `kids` member is a
non-empty list of key ids, each base64url without padding, and whose optional `type` is a
MediaKeySessionType ("temporary" or "persistent-license"; "temporary" when absent). A player
that sends anything else gets a 400 naming the problem, before any provider is asked, instead
of the provider's opaque refusal. The body is only checked here: it is still forwarded
byte-exact. Messages describe what was found, never the body itself.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from proxy.errors import BadRequest

SESSION_TYPES = ("temporary", "persistent-license")
KEY_ID_BYTES = 16  # CENC key ids; 22 base64url characters
_B64URL_NO_PADDING = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class ClearKeyRequest:
    """A player's ClearKey license request, decoded: the key ids asked for and the session type."""

    kids: tuple[bytes, ...]
    session_type: str


def parse_clearkey_request(body: bytes) -> ClearKeyRequest:
    """Decode a ClearKey license request body; raise BadRequest saying what is wrong."""
    request = _json_object(body)
    raw_kids = request.get("kids")
    if not isinstance(raw_kids, list) or not raw_kids:
        raise _bad('"kids" must be a non-empty list of base64url key ids')
    kids = tuple(_key_id(raw, index) for index, raw in enumerate(raw_kids))
    session_type = request.get("type", "temporary")
    if session_type not in SESSION_TYPES:
        raise _bad(f'"type" must be one of {", ".join(SESSION_TYPES)} when present')
    return ClearKeyRequest(kids, session_type)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        request = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("the body is not UTF-8 JSON") from None
    if not isinstance(request, dict):
        raise _bad("the body is JSON but not an object")
    return request


def _key_id(raw: object, index: int) -> bytes:
    """One `kids` entry as bytes: base64url, no padding, exactly 16 bytes once decoded."""
    if isinstance(raw, str) and _B64URL_NO_PADDING.fullmatch(raw):
        try:
            kid = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        except binascii.Error:
            kid = b""
        if len(kid) == KEY_ID_BYTES:
            return kid
    raise _bad(f"kids[{index}] must be a {KEY_ID_BYTES}-byte key id in base64url without padding")


def _bad(problem: str) -> BadRequest:
    return BadRequest(f"Invalid ClearKey license request: {problem}.")
