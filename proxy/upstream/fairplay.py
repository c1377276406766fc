"""FairPlay body codecs: SPC requests and CKC responses in every wire format we meet.

Pure: bytes in, bytes out. The gateway parses the player's request into SPC bytes, encodes them
in the provider's request format, parses the provider's answer into CKC bytes and encodes those
in the format the player expects. Parsing refuses an encoding nested in another one, so a body
is never wrapped twice. Error messages describe what was found, never the body itself.

Request formats: ``binary`` (the SPC bytes), ``form`` (``spc=<percent-encoded base64>`` with an
optional ``&assetId=``), ``base64`` (bare base64 text), ``json`` (``{"spc": "<base64>"}``).
Response formats: ``binary``, ``base64``, ``ckc_tag`` (``<ckc>base64</ckc>``), ``json``
(``{"ckc": "<base64>"}``).
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote, unquote_to_bytes

from proxy.errors import BadSpc, UpstreamBadResponse

RequestFormat = Literal["binary", "form", "base64", "json"]
ResponseFormat = Literal["binary", "base64", "ckc_tag", "json"]
REQUEST_FORMATS: tuple[RequestFormat, ...] = ("binary", "form", "base64", "json")
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("binary", "base64", "ckc_tag", "json")
DEFAULT_CLIENT_RESPONSE: Mapping[RequestFormat, ResponseFormat] = MappingProxyType(
    {"binary": "binary", "form": "ckc_tag", "base64": "base64", "json": "json"}
)
MIN_SPC_BYTES = 16

BINARY_CONTENT_TYPE = "application/octet-stream"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain"

# Content types that say nothing about the encoding: the body is sniffed.
_GENERIC_TYPES = frozenset(
    {"", BINARY_CONTENT_TYPE, TEXT_CONTENT_TYPE, "*/*", "application/binary"}
)
# A binary SPC (and CKC) starts with its version, 1 or 2, as a 32-bit big-endian integer.
_BINARY_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")

_WHITESPACE = b" \t\r\n\f\v"
_TO_STANDARD_B64 = bytes.maketrans(b"-_", b"+/")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
# The base64 of either prefix starts with `AAAAA` (url-safe alike).
_BASE64_SPC_START = re.compile(rb"\s*AAAAA")
# ... and base64 of that base64 starts with `QUFBQUF`: sniffed as base64 so that it is refused.
_BASE64_SNIFF = re.compile(rb"\s*(?:AAAAA|QUFBQUF)")
_JSON_START = re.compile(rb"\s*\{")
_JSON_OBJECT = re.compile(rb"\s*\{.*\}\s*", re.DOTALL)
# `spc=` as the first field or after other `name=value&` fields; base64 never holds `&`.
_FORM_START = re.compile(rb"\s*(?:[A-Za-z0-9_.\-]+=[^&]*&)*spc=", re.IGNORECASE)
_PERCENT_ESCAPE = re.compile(rb"%[0-9A-Fa-f]{2}")
_B64_ESCAPES = tuple(
    (escape, char)
    for code, char in ((b"2B", b"+"), (b"2F", b"/"), (b"3D", b"="))
    for escape in (b"%" + code, b"%" + code.lower())
)
_CKC_TAG_START = re.compile(rb"\s*<ckc>", re.IGNORECASE)

_ERROR_KEYS = frozenset(
    {"error", "errors", "errorcode", "error_code", "errormessage", "error_message", "fault"}
)
_ERROR_STATUSES = frozenset({"error", "fail", "failed", "failure"})


@dataclass(frozen=True, slots=True)
class FairPlayFormats:
    """One provider's FairPlay wire formats, from config."""

    request: RequestFormat
    response: ResponseFormat

    def __post_init__(self) -> None:
        if self.request not in REQUEST_FORMATS:
            raise ValueError(
                f"unknown FairPlay request format {self.request!r}; "
                f"expected one of {', '.join(REQUEST_FORMATS)}"
            )
        if self.response not in RESPONSE_FORMATS:
            raise ValueError(
                f"unknown FairPlay response format {self.response!r}; "
                f"expected one of {', '.join(RESPONSE_FORMATS)}"
            )


@dataclass(frozen=True, slots=True)
class SpcRequest:
    """A player's FairPlay request, decoded: the SPC bytes, its format and the optional assetId."""

    spc: bytes
    fmt: RequestFormat
    asset_id: str | None


# --- requests -------------------------------------------------------------------------------


def detect_request_format(body: bytes, content_type: str | None) -> RequestFormat:
    """The client's request format: from the content type, sniffed when that is generic."""
    media = _media_type(content_type)
    if media == FORM_CONTENT_TYPE:
        return "form"
    if media == JSON_CONTENT_TYPE or media.endswith("+json"):
        return "json"
    sniffed = _sniff(body)
    if sniffed is not None:
        return sniffed
    # Nothing recognisable: trust a text type to mean base64, anything else to mean binary.
    return "base64" if media == TEXT_CONTENT_TYPE else "binary"


def parse_spc_request(body: bytes, content_type: str | None, *, max_spc_bytes: int) -> SpcRequest:
    """Decode a player's FairPlay request body; raises BadSpc if it is malformed."""
    fmt = detect_request_format(body, content_type)
    asset_id: str | None = None
    if fmt == "binary":
        spc = body
    elif fmt == "base64":
        spc = _decode_spc_base64(body, what="base64 body")
    elif fmt == "form":
        spc, asset_id = _parse_form(body)
    else:
        spc, asset_id = _parse_json_request(body)
    _check_spc_size(spc, max_spc_bytes)
    return SpcRequest(spc=spc, fmt=fmt, asset_id=asset_id)


def encode_spc(spc: bytes, fmt: RequestFormat, *, asset_id: str | None = None) -> tuple[bytes, str]:
    """Encode SPC bytes in a provider's request format; returns (body, content type).

    ``asset_id`` goes into the ``form`` and ``json`` formats only; the others have no room for it.
    """
    if fmt == "binary":
        return spc, BINARY_CONTENT_TYPE
    encoded = _b64encode(spc)
    if fmt == "base64":
        return encoded, TEXT_CONTENT_TYPE
    if fmt == "form":
        body = b"spc=" + _percent_encode_b64(encoded)
        if asset_id is not None:
            body += b"&assetId=" + quote(asset_id, safe="").encode("ascii")
        return body, FORM_CONTENT_TYPE
    if fmt == "json":
        fields = {"spc": encoded.decode("ascii")}
        if asset_id is not None:
            fields["assetId"] = asset_id
        return _json_dumps(fields), JSON_CONTENT_TYPE
    raise ValueError(f"unknown FairPlay request format {fmt!r}")


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _sniff(body: bytes) -> RequestFormat | None:
    if body.startswith(_BINARY_SPC_PREFIXES):
        return "binary"
    if _BASE64_SNIFF.match(body):
        return "base64"
    if _JSON_START.match(body):
        return "json"
    if _FORM_START.match(body):
        return "form"
    return None


def _parse_form(body: bytes) -> tuple[bytes, str | None]:
    """Parse ``spc=...&assetId=...`` by hand: a literal ``+`` in the spc value stays a ``+``."""
    spc_values: list[bytes] = []
    asset_id: str | None = None
    for field in body.strip(_WHITESPACE).split(b"&"):
        name, _, value = field.partition(b"=")
        key = unquote_to_bytes(name.replace(b"+", b" ")).strip().lower()
        if key == b"spc":
            spc_values.append(value)
        elif key == b"assetid":
            asset_id = _form_text(value)
    if len(spc_values) != 1:
        problem = "has no spc field" if not spc_values else "has more than one spc field"
        raise BadSpc(f"Invalid FairPlay SPC: the form body {problem}.")
    return _decode_form_spc(spc_values[0]), asset_id


def _unquote_form_b64(raw: bytes) -> bytes:
    """Percent-decoding of a base64 value: the only escapes expected are +, / and =, so those
    are replaced directly (unquote_to_bytes cost ~19 us); anything else takes the full path."""
    value = raw
    for escape, char in _B64_ESCAPES:
        value = value.replace(escape, char)
    return value if b"%" not in value else unquote_to_bytes(raw)


def _decode_form_spc(raw: bytes) -> bytes:
    value = _unquote_form_b64(raw) if b"%" in raw else raw
    _reject_nested_text(value, what="spc value")
    if _PERCENT_ESCAPE.search(value):
        raise BadSpc("Invalid FairPlay SPC: spc value is percent-encoded twice.")
    # Base64 has no spaces: a space here is a `+` that some layer form-decoded.
    return _decode_spc_base64(value.replace(b" ", b"+"), what="spc value")


def _form_text(raw: bytes) -> str:
    try:
        return unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise BadSpc("Invalid FairPlay SPC: the form's assetId is not UTF-8.") from None


def _parse_json_request(body: bytes) -> tuple[bytes, str | None]:
    document = _json_loads(body)
    if not isinstance(document, dict):
        raise BadSpc("Invalid FairPlay SPC: the JSON body is not an object.")
    spc = document.get("spc")
    if not isinstance(spc, str):
        problem = "has no spc field" if spc is None else "has an spc field that is not a string"
        raise BadSpc(f"Invalid FairPlay SPC: the JSON body {problem}.")
    asset_id = document.get("assetId")
    if asset_id is not None and not _is_utf8_text(asset_id):
        raise BadSpc("Invalid FairPlay SPC: the JSON body's assetId is not a valid string.")
    if not spc.isascii():
        raise BadSpc("Invalid FairPlay SPC: spc value is not valid base64.")
    value = spc.encode("ascii")
    _reject_nested_text(value, what="spc value")
    return _decode_spc_base64(value, what="spc value"), asset_id


def _is_utf8_text(value: object) -> bool:
    """A JSON string that holds no lone surrogate, so it can be re-encoded."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_nested_text(value: bytes, *, what: str) -> None:
    """Refuse a form or JSON document where base64 text is expected."""
    if _FORM_START.match(value):
        raise BadSpc(f"Invalid FairPlay SPC: {what} is itself form-encoded.")
    if _JSON_START.match(value):
        raise BadSpc(f"Invalid FairPlay SPC: {what} is itself JSON.")


def _decode_spc_base64(text: bytes, *, what: str) -> bytes:
    spc = _b64decode(text)
    if spc is None:
        raise BadSpc(f"Invalid FairPlay SPC: {what} is not valid base64.")
    # A decoded SPC is binary; text that is itself an encoding means the player wrapped twice.
    if _BASE64_SPC_START.match(spc):
        raise BadSpc("Invalid FairPlay SPC: spc is base64 of base64.")
    if _FORM_START.match(spc):
        raise BadSpc("Invalid FairPlay SPC: spc is base64 of a form body.")
    if _JSON_START.match(spc):
        raise BadSpc("Invalid FairPlay SPC: spc is base64 of a JSON body.")
    return spc


def _check_spc_size(spc: bytes, max_spc_bytes: int) -> None:
    if len(spc) < MIN_SPC_BYTES:
        raise BadSpc(
            f"Invalid FairPlay SPC: it is {len(spc)} bytes, at least {MIN_SPC_BYTES} expected."
        )
    if len(spc) > max_spc_bytes:
        raise BadSpc(
            f"Invalid FairPlay SPC: it is {len(spc)} bytes, at most {max_spc_bytes} allowed."
        )


# --- responses ------------------------------------------------------------------------------


def parse_ckc_response(body: bytes, fmt: ResponseFormat) -> bytes:
    """Decode a provider's CKC answer; raises UpstreamBadResponse if it is empty or garbled."""
    if not body.strip(_WHITESPACE):
        raise _bad_ckc("the response body is empty")
    if is_json_error(body):
        raise _bad_ckc("the provider answered 200 with a JSON error")
    if fmt == "binary":
        ckc = body
    elif fmt == "base64":
        ckc = _decode_ckc_base64(body)
    elif fmt == "ckc_tag":
        inner = _ckc_tag_inner(body)
        if inner is None:
            raise _bad_ckc("the response is not a single <ckc> element")
        ckc = _decode_ckc_base64(inner)
    elif fmt == "json":
        ckc = _decode_ckc_base64(_json_ckc_field(body))
    else:
        raise ValueError(f"unknown FairPlay response format {fmt!r}")
    if _CKC_TAG_START.match(ckc):
        raise _bad_ckc("the CKC holds a <ckc> element; the provider's format is misconfigured")
    return ckc


def _ckc_tag_inner(body: bytes) -> bytes | None:
    """What `\\s*<ckc>(.*)</ckc>\\s*` would capture, by slicing: the lazy regex cost ~20 us."""
    stripped = body.strip(_WHITESPACE)
    if len(stripped) < 11 or stripped[:5].lower() != b"<ckc>" or stripped[-6:].lower() != b"</ckc>":
        return None
    return stripped[5:-6]


def encode_ckc(ckc: bytes, fmt: ResponseFormat) -> tuple[bytes, str]:
    """Encode CKC bytes in the format the player expects; returns (body, content type)."""
    if fmt == "binary":
        return ckc, BINARY_CONTENT_TYPE
    encoded = _b64encode(ckc)
    if fmt == "base64":
        return encoded, TEXT_CONTENT_TYPE
    if fmt == "ckc_tag":
        return b"<ckc>" + encoded + b"</ckc>", TEXT_CONTENT_TYPE
    if fmt == "json":
        return _json_dumps({"ckc": encoded.decode("ascii")}), JSON_CONTENT_TYPE
    raise ValueError(f"unknown FairPlay response format {fmt!r}")


def is_json_error(body: bytes) -> bool:
    """Whether a body is a JSON error object (``errorCode``, ``error``, ``message``...)."""
    if not _JSON_OBJECT.fullmatch(body):  # cheap check first: most CKCs are not JSON
        return False
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(document, dict):
        return False
    fields = {str(key).lower(): value for key, value in document.items()}
    if any(bool(fields[key]) for key in _ERROR_KEYS.intersection(fields)):
        return True
    status = fields.get("status")
    if isinstance(status, str) and status.lower() in _ERROR_STATUSES:
        return True
    # A bare message and no CKC is how several providers word an error.
    return "ckc" not in fields and ("message" in fields or bool(_ERROR_KEYS & fields.keys()))


def _json_ckc_field(body: bytes) -> bytes:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise _bad_ckc("the response is not valid JSON") from None
    ckc = document.get("ckc") if isinstance(document, dict) else None
    if not isinstance(ckc, str):
        raise _bad_ckc("the JSON response has no ckc string")
    if not ckc.isascii():
        raise _bad_ckc("the CKC is not valid base64")
    return ckc.encode("ascii")


def _decode_ckc_base64(text: bytes) -> bytes:
    ckc = _b64decode(text)
    if ckc is None:
        raise _bad_ckc("the CKC is not valid base64")
    if not ckc:
        raise _bad_ckc("the CKC is empty")
    return ckc


def _bad_ckc(problem: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(f"The DRM provider sent an invalid FairPlay response: {problem}.")


# --- shared helpers -------------------------------------------------------------------------


def _b64encode(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def _b64decode(text: bytes) -> bytes | None:
    """Standard or url-safe base64, whitespace and missing padding tolerated; None if invalid."""
    compact = text.translate(_TO_STANDARD_B64, _WHITESPACE)
    if not _BASE64_TEXT.fullmatch(compact):
        return None
    core = compact.rstrip(b"=")
    try:  # strict mode refuses a length of 4n+1, which no padding can fix
        return binascii.a2b_base64(core + b"=" * (-len(core) % 4), strict_mode=True)
    except binascii.Error:
        return None


def _percent_encode_b64(encoded: bytes) -> bytes:
    # The only base64 characters that are not form-safe.
    return encoded.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")


def _json_loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadSpc("Invalid FairPlay SPC: the body is not valid JSON.") from None


def _json_dumps(fields: Mapping[str, str]) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode("ascii")
