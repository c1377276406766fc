"""Key exchange with packagers: SPEKE v2 / CPIX documents and the DRM signalling they carry.

Pure code (bytes and dataclasses, no I/O); the HTTP endpoint lives elsewhere.

    cpix.py   parse_request(body, speke_version) -> CpixRequest   (CpixError -> HTTP 422)
              render_response(request, keys, signaling) -> bytes
    pssh.py   'pssh' boxes, WidevinePsshData, PlayReady Header Objects
    hls.py    #EXT-X-KEY / #EXT-X-SESSION-KEY lines for HLSSignalingData
"""

from __future__ import annotations

from proxy.keys.cpix import (
    AES128_HLS,
    FAIRPLAY,
    MAX_CONTENT_KEYS,
    PLAYREADY,
    SPEKE_VERSIONS,
    WIDEVINE,
    ContentKeySpec,
    CpixError,
    CpixRequest,
    DrmSystemSpec,
    KeyPeriod,
    Signal,
    Signaling,
    UsageRule,
    parse_request,
    render_response,
)

__all__ = [
    "AES128_HLS",
    "FAIRPLAY",
    "MAX_CONTENT_KEYS",
    "PLAYREADY",
    "SPEKE_VERSIONS",
    "WIDEVINE",
    "ContentKeySpec",
    "CpixError",
    "CpixRequest",
    "DrmSystemSpec",
    "KeyPeriod",
    "Signal",
    "Signaling",
    "UsageRule",
    "parse_request",
    "render_response",
]
