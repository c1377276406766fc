"""Protection schemes, 'pssh' boxes and the DRM data they carry (Widevine, PlayReady).

    build_pssh(system_id, data)                 a version-0 'pssh' box (ISO/IEC 23001-7)
    widevine_pssh_data(kids, content_id, scheme)  a WidevinePsshData protobuf message
    playready_header_object(kids, scheme, la_url) a PlayReady Header Object (WRMHEADER 4.3.0.0)

A scheme is a `ContentKey@commonEncryptionScheme`: a CENC 4CC (cenc, cbc1, cens, cbcs) or,
from SPEKE 2.1 on, an HLS method (AES-128, SAMPLE-AES, SAMPLE-AES-CTR).
"""

from __future__ import annotations

import base64
import struct
import uuid
from collections.abc import Sequence
from typing import Final
from xml.sax.saxutils import escape

from proxy.domain import KeyId

CENC_SCHEMES: Final = ("cenc", "cbc1", "cens", "cbcs")
HLS_METHOD_SCHEMES: Final = ("AES-128", "SAMPLE-AES", "SAMPLE-AES-CTR")
# AES-CBC based schemes; the others are AES-CTR.
_CBC_SCHEMES: Final = frozenset({"cbc1", "cbcs", "AES-128", "SAMPLE-AES"})
# The CENC scheme an HLS method stands for in fMP4; AES-128 (whole segments) has none.
_HLS_TO_CENC: Final = {"SAMPLE-AES": "cbcs", "SAMPLE-AES-CTR": "cenc"}

PLAYREADY_HEADER_NS: Final = "http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader"
_PSSH_HEADER: Final = struct.Struct(">I4sB3s16s")  # size, "pssh", version, flags, system id
_PLAYREADY_RECORD_WRMHEADER: Final = 1


def is_cbc(scheme: str) -> bool:
    """True for AES-CBC schemes (cbc1, cbcs, AES-128, SAMPLE-AES)."""
    return scheme in _CBC_SCHEMES


def cenc_scheme(scheme: str) -> str | None:
    """The CENC 4CC a scheme encrypts fMP4 with, or None (AES-128 encrypts whole segments)."""
    return scheme if scheme in CENC_SCHEMES else _HLS_TO_CENC.get(scheme)


def build_pssh(system_id: str, data: bytes) -> bytes:
    """A version-0 'pssh' box for `system_id` (a UUID) carrying `data`."""
    body_size = _PSSH_HEADER.size + 4 + len(data)
    header = _PSSH_HEADER.pack(body_size, b"pssh", 0, bytes(3), uuid.UUID(system_id).bytes)
    return header + struct.pack(">I", len(data)) + data


def widevine_pssh_data(kids: Sequence[KeyId], content_id: bytes, scheme: str) -> bytes:
    """A WidevinePsshData message: key_ids (2), content_id (4), protection_scheme (9)."""
    message = b"".join(_bytes_field(2, bytes.fromhex(kid)) for kid in kids)
    message += _bytes_field(4, content_id)
    fourcc = cenc_scheme(scheme)
    if fourcc is not None:
        message += _varint(9 << 3) + _varint(int.from_bytes(fourcc.encode(), "big"))
    return message


def playready_header_object(kids: Sequence[KeyId], scheme: str, la_url: str | None) -> bytes:
    """A PlayReady Header Object: length, record count, one UTF-16LE WRMHEADER record."""
    record = wrm_header(kids, scheme, la_url).encode("utf-16-le")
    records = struct.pack("<HH", _PLAYREADY_RECORD_WRMHEADER, len(record)) + record
    return struct.pack("<IH", 6 + len(records), 1) + records


def wrm_header(kids: Sequence[KeyId], scheme: str, la_url: str | None) -> str:
    """A v4.3.0.0 WRMHEADER; KID values are base64 of the little-endian GUID bytes."""
    algid = "AESCBC" if is_cbc(scheme) else "AESCTR"
    kid_elements = "".join(
        f'<KID ALGID="{algid}" VALUE="{_b64(uuid.UUID(hex=kid).bytes_le)}"></KID>' for kid in kids
    )
    la = f"<LA_URL>{escape(la_url)}</LA_URL>" if la_url else ""
    return (
        f'<WRMHEADER xmlns="{PLAYREADY_HEADER_NS}" version="4.3.0.0"><DATA><PROTECTINFO>'
        f"<KIDS>{kid_elements}</KIDS></PROTECTINFO>{la}</DATA></WRMHEADER>"
    )


def _bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    """A protobuf base-128 varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
