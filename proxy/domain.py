"""The gateway's vocabulary: DRM systems, the ids players send, and shared protocol constants.

Ids are parsed here once, at the edge, into typed values (`AssetId`, `KeyId`); everything
downstream takes those types and never validates again.
"""

from __future__ import annotations

import re
from typing import Final, NewType

from proxy.errors import InvalidId

# The license DRM systems a player can ask for at /v1/license/{drm}/...
LICENSE_DRMS: Final[tuple[str, ...]] = ("widevine", "playready", "fairplay", "clearkey")
# The label used for HLS AES-128 key requests in logs, metrics, rules and provider endpoints.
KEY_DRM: Final = "aes128"
# Everything a routing rule, a metric or an endpoint lookup can name.
ALL_DRMS: Final[tuple[str, ...]] = (*LICENSE_DRMS, KEY_DRM)

AssetId = NewType("AssetId", str)
KeyId = NewType("KeyId", str)  # 32 lowercase hexadecimal characters

ASSET_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_KEY_ID_PATTERN: Final = re.compile(r"^[0-9a-fA-F]{32}$")

# RFC 9110 `token`: header names, methods.
HTTP_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# The smallest RSA modulus accepted for signing or verifying a JWT (NIST SP 800-131A).
RSA_MIN_BITS: Final = 2048
AES_KEY_BYTES: Final = 16


def asset_id_or_none(text: str) -> AssetId | None:
    """The asset id if `text` is a valid one, else None (to refuse later, at the right step)."""
    return AssetId(text) if ASSET_ID_PATTERN.match(text) else None


def require_asset_id(asset_id: AssetId | None) -> AssetId:
    """The asset id, or InvalidId when the path held none that is valid."""
    if asset_id is None:
        raise InvalidId("The asset id is not valid: expected 1-128 of [A-Za-z0-9._:-].")
    return asset_id


def parse_asset_id(text: str) -> AssetId:
    """The asset id from a path or query, or InvalidId."""
    return require_asset_id(asset_id_or_none(text))


def parse_key_id(text: str) -> KeyId:
    """A key id (32 hex characters, any case) as lowercase hex, or InvalidId."""
    if not _KEY_ID_PATTERN.match(text):
        raise InvalidId("The key id is not valid: expected 32 hexadecimal characters.")
    return KeyId(text.lower())
