"""The emulated key derivation: content keys derived from a seed, and W3C ClearKey licenses.

Keys are derived rather than stored so that emulators, tests and the demo agree on them:
``key = HMAC-SHA256(seed, f"{derivation_id}:{key_id_hex}")[:16]``. The legacy and incoming
emulators also keep keys they created or received (``keystore``), which take precedence; a
ClearKey answer takes its keys from a ``key_for`` function for that reason. Pure: no aiohttp here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from proxy.dev.emulator.errors import EmulatorError

_KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{32}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_CLEARKEY_TYPES = ("temporary", "persistent-license")


def derive_key(seed: bytes, derivation_id: str, key_id_hex: str) -> bytes:
    """The 16-byte AES-128 content key for a key id (hex, any case) of a derivation id."""
    message = f"{derivation_id}:{key_id_hex.lower()}".encode()
    return hmac.new(seed, message, hashlib.sha256).digest()[:16]


def derivation_id_for(resources: Mapping[str, str] | None, resource: str) -> str:
    """The id keys of ``resource`` derive from; raise 404 ``unknown_resource`` if unknown.

    ``resources`` None is the "accept all" store: every resource derives from itself.
    """
    if resources is None:
        return resource
    try:
        return resources[resource]
    except KeyError:
        raise EmulatorError(404, "unknown_resource", "This resource is not known.") from None


def normalize_key_id(key_id: str) -> str:
    """A key id as lowercase hex; raise 400 unless it is exactly 32 hex characters."""
    if not _KEY_ID_HEX.fullmatch(key_id):
        raise EmulatorError(400, "invalid_key_id", "The key id must be 32 hex characters.")
    return key_id.lower()


def b64url_encode(data: bytes) -> str:
    """Base64url without padding, as the W3C ClearKey format writes it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raise ValueError on anything else."""
    stripped = text.rstrip("=")
    if not _B64URL.fullmatch(stripped):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def clearkey_license(body: bytes, *, seed: bytes, derivation_id: str) -> bytes:
    """Answer a W3C ClearKey license request (``{"kids": [...], "type": ...}``) as JSON bytes,
    with the keys derived from ``seed`` and ``derivation_id``."""
    return clearkey_answer(body, lambda key_id: derive_key(seed, derivation_id, key_id))


def clearkey_answer(body: bytes, key_for: Callable[[str], bytes]) -> bytes:
    """Answer a W3C ClearKey license request with ``key_for(key id as lowercase hex)``."""
    kids, license_type = _parse_clearkey_request(body)
    keys = [
        {"kty": "oct", "kid": b64url_encode(kid), "k": b64url_encode(key_for(kid.hex()))}
        for kid in kids
    ]
    return json.dumps({"keys": keys, "type": license_type}, separators=(",", ":")).encode()


def _parse_clearkey_request(body: bytes) -> tuple[list[bytes], str]:
    bad = EmulatorError(400, "bad_clearkey_request", "The ClearKey request is malformed.")
    try:
        request: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(request, dict):
        raise bad
    raw_kids = request.get("kids")
    license_type = request.get("type", "temporary")
    if not isinstance(raw_kids, list) or not raw_kids or license_type not in _CLEARKEY_TYPES:
        raise bad
    kids: list[bytes] = []
    for raw in raw_kids:
        try:
            kid = b64url_decode(raw) if isinstance(raw, str) else b""
        except ValueError:
            raise bad from None
        if len(kid) != 16:
            raise bad
        kids.append(kid)
    return kids, str(license_type)
