"""pssh boxes, Widevine and PlayReady data, schemes and HLS key lines: goldens and round trips."""

from __future__ import annotations

import base64
import struct
import uuid
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.domain import KeyId
from proxy.keys import PLAYREADY, WIDEVINE, hls
from proxy.keys.pssh import (
    build_pssh,
    cenc_scheme,
    is_cbc,
    playready_header_object,
    widevine_pssh_data,
    wrm_header,
)
from tests.keys.cpix_docs import NS, guid_le, parse_pssh, read_playready_header, read_protobuf

KID = KeyId("0123456789abcdef0123456789abcdef")

# A Widevine 'pssh' box published in Unified Streaming's CPIX signalling docs:
# provider "widevine_test" (field 3), content_id "test content" (field 4).
GOLDEN_WIDEVINE_BOX = base64.b64decode(
    "AAAAPXBzc2gAAAAA7e+LqXnWSs6jyCfc1R0h7QAAAB0aDXdpZGV2aW5lX3Rlc3QiDHRlc3QgY29udGVudA=="
)


def test_build_pssh_matches_a_published_box() -> None:
    data = b"\x1a\x0dwidevine_test\x22\x0ctest content"
    assert build_pssh(WIDEVINE, data) == GOLDEN_WIDEVINE_BOX
    parsed = parse_pssh(GOLDEN_WIDEVINE_BOX)
    assert (parsed.version, parsed.system_id, parsed.kids, parsed.data) == (0, WIDEVINE, (), data)


def test_parse_pssh_version_1_lists_its_kids() -> None:
    body = b"pssh" + b"\x01\x00\x00\x00" + uuid.UUID(PLAYREADY).bytes
    body += struct.pack(">I", 1) + bytes.fromhex(KID) + struct.pack(">I", 3) + b"abc"
    parsed = parse_pssh(struct.pack(">I", 4 + len(body)) + body)
    assert (parsed.version, parsed.system_id, parsed.kids, parsed.data) == (
        1,
        PLAYREADY,
        (KID,),
        b"abc",
    )


@pytest.mark.parametrize(
    "box",
    [
        b"",
        GOLDEN_WIDEVINE_BOX[:-1],
        GOLDEN_WIDEVINE_BOX + b"x",
        GOLDEN_WIDEVINE_BOX.replace(b"pssh", b"moov"),
        GOLDEN_WIDEVINE_BOX[:8] + b"\x02" + GOLDEN_WIDEVINE_BOX[9:],
    ],
)
def test_parse_pssh_refuses_what_is_not_one(box: bytes) -> None:
    with pytest.raises(ValueError):
        parse_pssh(box)


def test_widevine_pssh_data_golden() -> None:
    data = widevine_pssh_data([KID], b"movie-1", "cbcs")
    # key_ids (2), content_id (4), protection_scheme (9) = 'cbcs' as a big-endian uint32 varint
    expected = b"\x12\x10" + bytes.fromhex(KID) + b"\x22\x07movie-1" + b"\x48\xf3\xc6\x89\x9b\x06"
    assert data == expected
    assert read_protobuf(data)[2] == (9, 0x63626373)


def test_widevine_pssh_data_without_a_cenc_scheme() -> None:
    assert read_protobuf(widevine_pssh_data([KID], b"c", "AES-128")) == [
        (2, bytes.fromhex(KID)),
        (4, b"c"),
    ]


@given(st.lists(st.binary(min_size=16, max_size=16), max_size=5), st.binary(max_size=300))
def test_widevine_pssh_data_round_trips(kids: list[bytes], content_id: bytes) -> None:
    data = widevine_pssh_data([KeyId(k.hex()) for k in kids], content_id, "cenc")
    assert read_protobuf(data) == [
        *((2, k) for k in kids),
        (4, content_id),
        (9, int.from_bytes(b"cenc", "big")),
    ]


def test_playready_header_object_framing_and_header() -> None:
    pro = playready_header_object([KID], "cenc", "https://la.example/?a=1&b=2")
    header = read_playready_header(pro)
    assert header.get("version") == "4.3.0.0"
    kid = header.find("pr:DATA/pr:PROTECTINFO/pr:KIDS/pr:KID", NS)
    assert kid is not None and kid.get("ALGID") == "AESCTR"
    assert base64.b64decode(kid.get("VALUE", "")) == guid_le(KID)
    assert guid_le(KID).hex() == "67452301ab89efcd0123456789abcdef"
    la_url = header.find("pr:DATA/pr:LA_URL", NS)
    assert la_url is not None and la_url.text == "https://la.example/?a=1&b=2"


def test_wrm_header_escapes_the_la_url_and_lists_every_kid() -> None:
    other = KeyId("f" * 32)
    text = wrm_header([KID, other], "cbcs", "https://x/<y>&z")
    assert "&lt;y&gt;&amp;z" in text
    header = ET.fromstring(text)
    kids = header.findall("pr:DATA/pr:PROTECTINFO/pr:KIDS/pr:KID", NS)
    assert [k.get("ALGID") for k in kids] == ["AESCBC", "AESCBC"]
    assert [base64.b64decode(k.get("VALUE", "")) for k in kids] == [guid_le(KID), guid_le(other)]


@pytest.mark.parametrize(
    ("scheme", "cbc", "cenc"),
    [
        ("cenc", False, "cenc"),
        ("cens", False, "cens"),
        ("cbc1", True, "cbc1"),
        ("cbcs", True, "cbcs"),
        ("SAMPLE-AES", True, "cbcs"),
        ("SAMPLE-AES-CTR", False, "cenc"),
        ("AES-128", True, None),
    ],
)
def test_schemes(scheme: str, cbc: bool, cenc: str | None) -> None:
    assert (is_cbc(scheme), cenc_scheme(scheme)) == (cbc, cenc)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70000])
def test_varint_lengths_at_their_boundaries(size: int) -> None:
    content_id = b"c" * size
    assert read_protobuf(widevine_pssh_data([], content_id, "AES-128")) == [(4, content_id)]


def test_hls_lines() -> None:
    iv = bytes(range(16))
    assert (
        hls.aes128_line("media", "https://gw/k/1", None)
        == '#EXT-X-KEY:METHOD=AES-128,URI="https://gw/k/1"'
    )
    assert hls.aes128_line("master", "https://gw/k/1", iv) == (
        '#EXT-X-SESSION-KEY:METHOD=AES-128,URI="https://gw/k/1",IV=0x000102030405060708090a0b0c0d0e0f'
    )
    assert hls.fairplay_line("media", "skd://a", None) == (
        '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="skd://a",'
        'KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"'
    )


@pytest.mark.parametrize("uri", ['https://x/"', "https://x/\n#EXT-X-ENDLIST", "https://x/\r"])
def test_hls_uris_cannot_escape_their_quotes(uri: str) -> None:
    with pytest.raises(ValueError):
        hls.aes128_line("media", uri, None)
    with pytest.raises(ValueError):
        hls.fairplay_line("media", "skd://" + uri, None)


def test_fairplay_uri_must_be_skd() -> None:
    with pytest.raises(ValueError, match="skd://"):
        hls.fairplay_line("media", "https://x", None)
