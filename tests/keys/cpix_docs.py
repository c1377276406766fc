"""Builders for SPEKE v2 request documents and decoders for what the answer carries."""

from __future__ import annotations

import base64
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from proxy.domain import KeyId
from proxy.keys import AES128_HLS, FAIRPLAY, PLAYREADY, WIDEVINE, Signaling

NS = {
    "cpix": "urn:dashif:org:cpix",
    "pskc": "urn:ietf:params:xml:ns:keyprov:pskc",
    "cenc": "urn:mpeg:cenc:2013",
    "mspr": "urn:microsoft:playready",
    "pr": "http://schemas.microsoft.com/DRM/2007/03/PlayReadyHeader",
}
VIDEO_KID = "0f083e4e-b831-4a3d-917e-ce78076e54aa"
AUDIO_KID = "041fdd3a-7f5e-4848-a7cb-65e97758e9a0"
VIDEO = KeyId(VIDEO_KID.replace("-", ""))
AUDIO = KeyId(AUDIO_KID.replace("-", ""))
KEYS = {VIDEO: bytes(range(16)), AUDIO: bytes(range(100, 116))}
IV_B64 = "OFj2IjCsPJFfMAxmQxLGPw=="
LA_URL = "https://pr.example/rightsmanager.asmx?a=1&b=<2>"

HLS_BOTH = '<cpix:HLSSignalingData playlist="media"/><cpix:HLSSignalingData playlist="master"/>'
SIGNALS = {
    WIDEVINE: "<cpix:PSSH/><cpix:ContentProtectionData/>" + HLS_BOTH,
    PLAYREADY: "<cpix:PSSH/><cpix:ContentProtectionData/>"
    + HLS_BOTH
    + "<cpix:SmoothStreamingProtectionHeaderData/>",
    FAIRPLAY: HLS_BOTH,
    AES128_HLS: HLS_BOTH,
}


def content_key(kid: str, scheme: str | None = "cbcs", extra: str = "") -> str:
    scheme_attr = "" if scheme is None else f' commonEncryptionScheme="{scheme}"'
    return f'<cpix:ContentKey kid="{kid}"{scheme_attr}{extra}/>'


def drm_system(kid: str, system_id: str, children: str | None = None) -> str:
    body = SIGNALS.get(system_id, "") if children is None else children
    return f'<cpix:DRMSystem kid="{kid}" systemId="{system_id}">{body}</cpix:DRMSystem>'


def usage_rule(kid: str, track: str, periods: Sequence[str] = (), extra: str = "") -> str:
    filters = "".join(f'<cpix:KeyPeriodFilter periodId="{p}"/>' for p in periods)
    kind = "AudioFilter" if "AUDIO" in track else "VideoFilter"
    return (
        f'<cpix:ContentKeyUsageRule kid="{kid}" intendedTrackType="{track}">'
        f"{filters}<cpix:{kind}{extra}/></cpix:ContentKeyUsageRule>"
    )


def period(period_id: str, index: int, start: str | None = None, end: str | None = None) -> str:
    times = "" if start is None else f' start="{start}" end="{end}"'
    return f'<cpix:ContentKeyPeriod id="{period_id}" index="{index}"{times}/>'


def cpix(
    keys: Iterable[str],
    systems: Iterable[str],
    rules: Iterable[str],
    periods: Iterable[str] = (),
    root_attrs: str = 'contentId="movie-1" version="2.3"',
    extra: str = "",
) -> bytes:
    period_list = "".join(periods)
    period_block = f"<cpix:ContentKeyPeriodList>{period_list}</cpix:ContentKeyPeriodList>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cpix:CPIX {root_attrs} xmlns:cpix="{NS["cpix"]}" xmlns:pskc="{NS["pskc"]}">'
        f"<cpix:ContentKeyList>{''.join(keys)}</cpix:ContentKeyList>"
        f"<cpix:DRMSystemList>{''.join(systems)}</cpix:DRMSystemList>"
        f"{period_block if period_list else ''}"
        f"<cpix:ContentKeyUsageRuleList>{''.join(rules)}</cpix:ContentKeyUsageRuleList>"
        f"{extra}</cpix:CPIX>"
    ).encode()


def two_key_request(scheme: str = "cbcs", version: str = "2.3") -> bytes:
    """Video + audio keys; each DRM system asks for everything it can give."""
    ids = [WIDEVINE, PLAYREADY, FAIRPLAY, AES128_HLS]
    if scheme not in ("cbcs", "SAMPLE-AES"):  # FairPlay is cbcs only
        ids.remove(FAIRPLAY)
    return cpix(
        [content_key(VIDEO_KID, scheme), content_key(AUDIO_KID, scheme, f' explicitIV="{IV_B64}"')],
        [drm_system(kid, system_id) for kid in (VIDEO_KID, AUDIO_KID) for system_id in ids],
        [usage_rule(VIDEO_KID, "VIDEO"), usage_rule(AUDIO_KID, "AUDIO")],
        root_attrs=f'contentId="movie-1" version="{version}"',
    )


def signaling() -> Signaling:
    return Signaling(
        aes128_key_uri=lambda kid: f"https://gw.example/v1/keys/movie-1/{kid}",
        fairplay_uri=lambda kid: f"skd://movie-1/{kid}",
        playready_la_url=lambda: LA_URL,
    )


def drm_element(root: ET.Element, kid: str, system_id: str) -> ET.Element:
    for element in root.iterfind("cpix:DRMSystemList/cpix:DRMSystem", NS):
        if element.get("kid") == kid and element.get("systemId") == system_id:
            return element
    raise AssertionError(f"no DRMSystem {system_id} for {kid}")


def child_text(element: ET.Element, path: str) -> str:
    child = element.find(path, NS)
    assert child is not None and child.text, path
    return child.text


def b64_text(element: ET.Element, path: str) -> str:
    return base64.b64decode(child_text(element, path), validate=True).decode()


def read_protobuf(message: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a protobuf message with varint and bytes fields only."""
    fields: list[tuple[int, int | bytes]] = []
    offset = 0
    while offset < len(message):
        tag, offset = read_varint(message, offset)
        if tag & 7 == 0:
            value, offset = read_varint(message, offset)
            fields.append((tag >> 3, value))
        else:
            assert tag & 7 == 2, "unexpected wire type"
            size, offset = read_varint(message, offset)
            fields.append((tag >> 3, message[offset : offset + size]))
            offset += size
    return fields


def read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def read_playready_header(pro: bytes) -> ET.Element:
    """The WRMHEADER element of a PlayReady Header Object, checking its framing."""
    length, count = struct.unpack_from("<IH", pro)
    assert (length, count) == (len(pro), 1)
    record_type, record_length = struct.unpack_from("<HH", pro, 6)
    assert record_type == 1 and record_length == len(pro) - 10
    return ET.fromstring(pro[10:].decode("utf-16-le"))


def guid_le(kid_hex: str) -> bytes:
    """A KID's GUID bytes, first three fields little-endian (as PlayReady writes them)."""
    raw = bytes.fromhex(kid_hex)
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


@dataclass(frozen=True)
class Pssh:
    """A parsed 'pssh' box; `kids` is empty for version 0."""

    version: int
    system_id: str
    kids: tuple[KeyId, ...]
    data: bytes


def parse_pssh(box: bytes) -> Pssh:
    """The fields of a 'pssh' box (version 0 or 1), or ValueError."""
    if len(box) < 32:
        raise ValueError("pssh box too short")
    size, box_type, version, _flags, system_id = struct.unpack_from(">I4sB3s16s", box)
    if size != len(box) or box_type != b"pssh" or version > 1:
        raise ValueError("not a pssh box")
    offset, kids = 28, []
    if version == 1:
        (count,) = struct.unpack_from(">I", box, offset)
        kids = [KeyId(box[offset + 4 + 16 * n : offset + 20 + 16 * n].hex()) for n in range(count)]
        offset += 4 + 16 * count
    (data_size,) = struct.unpack_from(">I", box, offset)
    if len(box) - offset - 4 != data_size:
        raise ValueError("pssh data size mismatch")
    return Pssh(version, str(uuid.UUID(bytes=system_id)), tuple(kids), box[offset + 4 :])
