"""The key side of the migration: packagers' SPEKE v2 / CPIX requests, which provider makes
and holds each title's keys, and copying keys between providers.

Pure (bytes and dataclasses, no I/O):
    cpix.py      parse_request(body, speke_version) -> CpixRequest   (CpixError -> HTTP 422)
                 render_response(request, keys, signaling) -> bytes
    pssh.py      'pssh' boxes, WidevinePsshData, PlayReady Header Objects
    hls.py       #EXT-X-KEY / #EXT-X-SESSION-KEY lines for HLSSignalingData
    policy.py    the rules file's `keys:` section: source and mirrors per title
With I/O:
    speke.py     the SPEKE flow (the aiohttp handler is proxy/server/speke.py)
    client.py    a provider's key API: generate, export, ingest
    transfer.py  one title's keys from a provider to another, verified
    mirrors.py   draining the durable mirror retry queue
    backfill.py  `drm-gateway backfill`
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
