"""FairPlay bodies as each emulated provider speaks them, decoded the plain way.

Legacy takes ``spc=<percent-encoded base64>[&assetId=...]`` (form) and answers
``<ckc>BASE64</ckc>``; incoming takes and answers raw binary. This is written independently of
the gateway's codecs on purpose. Pure: no aiohttp here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from urllib.parse import parse_qs

from proxy.dev.emulator.errors import EmulatorError

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
BINARY_CONTENT_TYPE = "application/octet-stream"
CKC_TAG_CONTENT_TYPE = "text/plain"
_BINARY_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")


def synthetic_license(provider_name: str, drm: str, challenge: bytes) -> bytes:
    """A fake license that proves which provider answered and which challenge bytes it got."""
    digest = hashlib.sha256(challenge).hexdigest()
    return (
        b"EMULATED-LICENSE\n"
        + provider_name.encode()
        + b"\n"
        + drm.encode()
        + b"\n"
        + (digest.encode())
    )


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header value, lowercase, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_form_spc(body: bytes, content_type: str | None) -> bytes:
    """The SPC of a legacy ``form`` request; 400 for any other format or a malformed form."""
    if media_type(content_type) != FORM_CONTENT_TYPE:
        raise _bad_spc("This provider accepts only form-encoded FairPlay requests.")
    try:
        fields = parse_qs(body.decode("ascii"), strict_parsing=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        raise _bad_spc("The FairPlay form is malformed.") from None
    values = fields.get("spc", [])
    if len(values) != 1:
        raise _bad_spc("The FairPlay form needs exactly one 'spc' field.")
    try:
        spc = base64.b64decode(values[0], validate=True)
    except (binascii.Error, ValueError):
        raise _bad_spc("The 'spc' field is not base64.") from None
    if not spc:
        raise _bad_spc("The SPC is empty.")
    return spc


def check_binary_spc(body: bytes, content_type: str | None) -> bytes:
    """The SPC of an incoming ``binary`` request; 400 unless octet-stream with an SPC header."""
    if media_type(content_type) != BINARY_CONTENT_TYPE:
        raise _bad_spc("This provider accepts only binary FairPlay requests.")
    if not body.startswith(_BINARY_SPC_PREFIXES):
        raise _bad_spc("The body is not a binary SPC.")
    return body


def encode_ckc_tag(ckc: bytes) -> bytes:
    """The legacy answer: ``<ckc>BASE64</ckc>``."""
    return b"<ckc>" + base64.b64encode(ckc) + b"</ckc>"


def _bad_spc(message: str) -> EmulatorError:
    return EmulatorError(400, "bad_spc", message)
