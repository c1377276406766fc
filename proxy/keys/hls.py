"""HLS key tags for CPIX `HLSSignalingData`: `#EXT-X-KEY` (media) or `#EXT-X-SESSION-KEY` (master).

    aes128_line(playlist, uri, iv)                METHOD=AES-128, the key URI from the caller
    fairplay_line(playlist, uri, iv)              METHOD=SAMPLE-AES, skd:// URI, Apple key format
    widevine_line(playlist, pssh, kid, scheme)    data: URI holding the Widevine 'pssh' box
    playready_line(playlist, pro, scheme)         data: URI holding the PlayReady Header Object

`playlist` is "media" or "master". URIs must not hold a quote or a line break (ValueError):
they go inside a quoted attribute of a single playlist line.
"""

from __future__ import annotations

import base64
from typing import Final, Literal

from proxy.domain import KeyId
from proxy.keys.pssh import is_cbc

Playlist = Literal["media", "master"]

FAIRPLAY_KEYFORMAT: Final = "com.apple.streamingkeydelivery"
PLAYREADY_KEYFORMAT: Final = "com.microsoft.playready"
WIDEVINE_KEYFORMAT: Final = "urn:uuid:edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"


def aes128_line(playlist: Playlist, uri: str, iv: bytes | None) -> str:
    """The AES-128 key tag pointing at `uri` (the gateway's key endpoint), with IV if given."""
    return _tag(playlist, [("METHOD", "AES-128"), ("URI", _quoted(uri)), *_iv(iv)])


def fairplay_line(playlist: Playlist, uri: str, iv: bytes | None) -> str:
    """The FairPlay key tag for an skd:// `uri`."""
    if not uri.startswith("skd://"):
        raise ValueError("a FairPlay key URI must start with skd://")
    attributes = [("METHOD", "SAMPLE-AES"), ("URI", _quoted(uri)), *_iv(iv)]
    attributes += [("KEYFORMAT", _quoted(FAIRPLAY_KEYFORMAT)), ("KEYFORMATVERSIONS", '"1"')]
    return _tag(playlist, attributes)


def widevine_line(playlist: Playlist, pssh: bytes, kid: KeyId, scheme: str) -> str:
    """The Widevine key tag: the 'pssh' box as a data: URI, plus KEYID."""
    return _tag(
        playlist,
        [
            ("METHOD", _sample_aes(scheme)),
            ("URI", _quoted("data:text/plain;base64," + _b64(pssh))),
            ("KEYID", "0x" + kid),
            ("KEYFORMAT", _quoted(WIDEVINE_KEYFORMAT)),
            ("KEYFORMATVERSIONS", '"1"'),
        ],
    )


def playready_line(playlist: Playlist, pro: bytes, scheme: str) -> str:
    """The PlayReady key tag: the PlayReady Header Object as a UTF-16 data: URI."""
    return _tag(
        playlist,
        [
            ("METHOD", _sample_aes(scheme)),
            ("URI", _quoted("data:text/plain;charset=UTF-16;base64," + _b64(pro))),
            ("KEYFORMAT", _quoted(PLAYREADY_KEYFORMAT)),
            ("KEYFORMATVERSIONS", '"1"'),
        ],
    )


def _tag(playlist: Playlist, attributes: list[tuple[str, str]]) -> str:
    name = "#EXT-X-SESSION-KEY" if playlist == "master" else "#EXT-X-KEY"
    return name + ":" + ",".join(f"{key}={value}" for key, value in attributes)


def _quoted(value: str) -> str:
    if any(char in value for char in '"\r\n'):
        raise ValueError("an HLS attribute value cannot hold a quote or a line break")
    return f'"{value}"'


def _iv(iv: bytes | None) -> list[tuple[str, str]]:
    return [] if iv is None else [("IV", "0x" + iv.hex())]


def _sample_aes(scheme: str) -> str:
    return "SAMPLE-AES" if is_cbc(scheme) else "SAMPLE-AES-CTR"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
