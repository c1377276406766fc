"""SPEKE v2 / CPIX: parsing, the answer's every field, key rotation, 422 refusals, hostile XML."""

from __future__ import annotations

import base64
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.domain import KeyId
from proxy.keys import (
    AES128_HLS,
    FAIRPLAY,
    MAX_CONTENT_KEYS,
    PLAYREADY,
    WIDEVINE,
    CpixError,
    CpixRequest,
    KeyPeriod,
    parse_request,
    render_response,
)
from proxy.keys.cpix import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_ELEMENTS
from tests.keys.cpix_docs import (
    AUDIO,
    AUDIO_KID,
    HLS_BOTH,
    IV_B64,
    KEYS,
    LA_URL,
    NS,
    VIDEO,
    VIDEO_KID,
    b64_text,
    child_text,
    content_key,
    cpix,
    drm_element,
    drm_system,
    guid_le,
    parse_pssh,
    period,
    read_playready_header,
    read_protobuf,
    signaling,
    two_key_request,
    usage_rule,
)

IRDETO = "80a6be7e-1448-4c37-9e70-d5aebe04c8d2"


def answer(body: bytes, speke_version: str = "2.0") -> tuple[CpixRequest, ET.Element]:
    request = parse_request(body, speke_version)
    keys = {kid: KEYS.get(kid, bytes(16)) for kid in request.kids}
    return request, ET.fromstring(render_response(request, keys, signaling()))


def refused(body: bytes, speke_version: str | None = "2.0") -> str:
    with pytest.raises(CpixError) as caught:
        parse_request(body, speke_version)
    return caught.value.message


# --- the happy path: 2 keys, 4 DRM systems -----------------------------------------------------


def test_parse_two_key_request() -> None:
    request = parse_request(two_key_request(), "2.0")
    assert (request.speke_version, request.version, request.content_id) == ("2.0", "2.3", "movie-1")
    assert request.kids == (VIDEO, AUDIO)
    assert request.system_ids == {WIDEVINE, PLAYREADY, FAIRPLAY, AES128_HLS}
    assert request.scheme == "cbcs"
    assert request.content_keys[1].explicit_iv == base64.b64decode(IV_B64)
    assert request.content_keys[0].explicit_iv is None
    widevine = next(s for s in request.drm_systems if s.system_id == WIDEVINE)
    assert widevine.requested == {
        "PSSH",
        "ContentProtectionData",
        "HLSSignalingData/media",
        "HLSSignalingData/master",
    }
    assert [(r.kid, r.intended_track_type) for r in request.usage_rules] == [
        (VIDEO, "VIDEO"),
        (AUDIO, "AUDIO"),
    ]
    assert request.usage_rules[0].video_filter == {}
    assert request.usage_rules[1].audio_filter == {} and request.usage_rules[1].video_filter is None
    assert request.periods == () and request.packager_keys == {}


def test_answer_carries_each_key_first_in_its_content_key() -> None:
    _, root = answer(two_key_request())
    elements = root.findall("cpix:ContentKeyList/cpix:ContentKey", NS)
    assert [e.get("kid") for e in elements] == [VIDEO_KID, AUDIO_KID]
    for element, kid in zip(elements, (VIDEO, AUDIO), strict=True):
        assert element[0].tag == f"{{{NS['cpix']}}}Data"
        value = child_text(element, "cpix:Data/pskc:Secret/pskc:PlainValue")
        assert base64.b64decode(value) == KEYS[kid]
        assert element.get("commonEncryptionScheme") == "cbcs"
    assert elements[1].get("explicitIV") == IV_B64
    assert (root.get("contentId"), root.get("version")) == ("movie-1", "2.3")


def test_answer_keeps_the_kids_as_the_packager_wrote_them() -> None:
    upper = VIDEO_KID.upper()
    body = cpix(
        [content_key(upper)],
        [drm_system(upper, WIDEVINE)],
        [usage_rule(upper, "VIDEO")],
    )
    request, root = answer(body)
    assert request.kids == (VIDEO,)
    assert root.find("cpix:ContentKeyList/cpix:ContentKey", NS).get("kid") == upper  # type: ignore[union-attr]
    assert drm_element(root, upper, WIDEVINE).get("kid") == upper


@pytest.mark.parametrize(("kid", "key_id"), [(VIDEO_KID, VIDEO), (AUDIO_KID, AUDIO)])
def test_widevine_pssh_box(kid: str, key_id: str) -> None:
    _, root = answer(two_key_request())
    box = base64.b64decode(child_text(drm_element(root, kid, WIDEVINE), "cpix:PSSH"))
    parsed = parse_pssh(box)
    assert (parsed.version, parsed.system_id, parsed.kids) == (0, WIDEVINE, ())
    assert read_protobuf(parsed.data) == [
        (2, bytes.fromhex(key_id)),
        (4, b"movie-1"),
        (9, int.from_bytes(b"cbcs", "big")),
    ]


def test_widevine_content_protection_data_is_a_standalone_cenc_pssh() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, VIDEO_KID, WIDEVINE)
    element = ET.fromstring(b64_text(system, "cpix:ContentProtectionData"))
    assert element.tag == f"{{{NS['cenc']}}}pssh"
    assert element.text == child_text(system, "cpix:PSSH")


def test_widevine_hls_lines_hold_the_pssh_box() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, VIDEO_KID, WIDEVINE)
    box = child_text(system, "cpix:PSSH")
    attributes = (
        f'METHOD=SAMPLE-AES,URI="data:text/plain;base64,{box}",KEYID=0x{VIDEO},'
        'KEYFORMAT="urn:uuid:edef8ba9-79d6-4ace-a3c8-27dcd51d21ed",KEYFORMATVERSIONS="1"'
    )
    media = b64_text(system, "cpix:HLSSignalingData[@playlist='media']")
    master = b64_text(system, "cpix:HLSSignalingData[@playlist='master']")
    assert media == "#EXT-X-KEY:" + attributes
    assert master == "#EXT-X-SESSION-KEY:" + attributes


def test_playready_pssh_holds_a_v4_3_header_with_le_guid_kid_and_la_url() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, AUDIO_KID, PLAYREADY)
    parsed = parse_pssh(base64.b64decode(child_text(system, "cpix:PSSH")))
    assert (parsed.version, parsed.system_id) == (0, PLAYREADY)
    header = read_playready_header(parsed.data)
    assert header.tag == f"{{{NS['pr']}}}WRMHEADER"
    assert header.get("version") == "4.3.0.0"
    kids = header.findall("pr:DATA/pr:PROTECTINFO/pr:KIDS/pr:KID", NS)
    assert len(kids) == 1
    assert kids[0].get("ALGID") == "AESCBC"
    assert base64.b64decode(kids[0].get("VALUE", "")) == guid_le(AUDIO)
    assert child_text(header, "pr:DATA/pr:LA_URL") == LA_URL


def test_playready_content_protection_data_and_smooth_streaming_header() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, VIDEO_KID, PLAYREADY)
    box = child_text(system, "cpix:PSSH")
    pro = parse_pssh(base64.b64decode(box)).data
    fragment = b64_text(system, "cpix:ContentProtectionData")
    wrapped = ET.fromstring(f"<root>{fragment}</root>")  # standalone: each declares its namespace
    assert [(e.tag, e.text) for e in wrapped] == [
        (f"{{{NS['cenc']}}}pssh", box),
        (f"{{{NS['mspr']}}}pro", base64.b64encode(pro).decode()),
    ]
    smooth = child_text(system, "cpix:SmoothStreamingProtectionHeaderData")
    assert base64.b64decode(smooth) == pro


def test_playready_hls_lines_hold_the_header_object() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, VIDEO_KID, PLAYREADY)
    pro = parse_pssh(base64.b64decode(child_text(system, "cpix:PSSH"))).data
    media = b64_text(system, "cpix:HLSSignalingData[@playlist='media']")
    assert media == (
        "#EXT-X-KEY:METHOD=SAMPLE-AES,"
        f'URI="data:text/plain;charset=UTF-16;base64,{base64.b64encode(pro).decode()}",'
        'KEYFORMAT="com.microsoft.playready",KEYFORMATVERSIONS="1"'
    )


def test_fairplay_hls_lines() -> None:
    _, root = answer(two_key_request())
    system = drm_element(root, VIDEO_KID, FAIRPLAY)
    tail = (
        f'METHOD=SAMPLE-AES,URI="skd://movie-1/{VIDEO}",'
        'KEYFORMAT="com.apple.streamingkeydelivery",KEYFORMATVERSIONS="1"'
    )
    assert b64_text(system, "cpix:HLSSignalingData[@playlist='media']") == "#EXT-X-KEY:" + tail
    assert b64_text(system, "cpix:HLSSignalingData[@playlist='master']") == (
        "#EXT-X-SESSION-KEY:" + tail
    )
    assert system.find("cpix:PSSH", NS) is None


def test_aes128_hls_lines_point_at_the_gateway_with_the_explicit_iv() -> None:
    _, root = answer(two_key_request())
    audio = drm_element(root, AUDIO_KID, AES128_HLS)
    iv = base64.b64decode(IV_B64).hex()
    uri = f"https://gw.example/v1/keys/movie-1/{AUDIO}"
    assert b64_text(audio, "cpix:HLSSignalingData[@playlist='media']") == (
        f'#EXT-X-KEY:METHOD=AES-128,URI="{uri}",IV=0x{iv}'
    )
    assert b64_text(audio, "cpix:HLSSignalingData[@playlist='master']") == (
        f'#EXT-X-SESSION-KEY:METHOD=AES-128,URI="{uri}",IV=0x{iv}'
    )
    video = drm_element(root, VIDEO_KID, AES128_HLS)
    assert b64_text(video, "cpix:HLSSignalingData[@playlist='media']") == (
        f'#EXT-X-KEY:METHOD=AES-128,URI="https://gw.example/v1/keys/movie-1/{VIDEO}"'
    )


def test_cenc_scheme_signals_ctr_everywhere() -> None:
    request, root = answer(two_key_request(scheme="cenc"))
    assert request.scheme == "cenc" and FAIRPLAY not in request.system_ids
    box = parse_pssh(
        base64.b64decode(child_text(drm_element(root, VIDEO_KID, WIDEVINE), "cpix:PSSH"))
    )
    assert (9, int.from_bytes(b"cenc", "big")) in read_protobuf(box.data)
    playready = drm_element(root, VIDEO_KID, PLAYREADY)
    pro = parse_pssh(base64.b64decode(child_text(playready, "cpix:PSSH"))).data
    kid = read_playready_header(pro).find("pr:DATA/pr:PROTECTINFO/pr:KIDS/pr:KID", NS)
    assert kid is not None and kid.get("ALGID") == "AESCTR"
    media = b64_text(playready, "cpix:HLSSignalingData[@playlist='media']")
    assert media.startswith("#EXT-X-KEY:METHOD=SAMPLE-AES-CTR,")


def test_no_la_url_leaves_it_out_of_the_header() -> None:
    request = parse_request(two_key_request(), "2.0")
    plain = signaling()
    no_la = type(plain)(plain.aes128_key_uri, plain.fairplay_uri, lambda: None)
    root = ET.fromstring(render_response(request, KEYS, no_la))
    box = child_text(drm_element(root, VIDEO_KID, PLAYREADY), "cpix:PSSH")
    header = read_playready_header(parse_pssh(base64.b64decode(box)).data)
    assert header.find("pr:DATA/pr:LA_URL", NS) is None


def test_hls_playlist_defaults_to_media_and_accepts_multivariant() -> None:
    children = '<cpix:HLSSignalingData/><cpix:HLSSignalingData playlist="multiVariant"/>'
    body = cpix(
        [content_key(VIDEO_KID)],
        [drm_system(VIDEO_KID, AES128_HLS, children)],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    _, root = answer(body)
    lines = [
        base64.b64decode(e.text or "").decode()
        for e in drm_element(root, VIDEO_KID, AES128_HLS).findall("cpix:HLSSignalingData", NS)
    ]
    assert [line.split(":")[0] for line in lines] == ["#EXT-X-KEY", "#EXT-X-SESSION-KEY"]


# --- what the answer keeps ---------------------------------------------------------------------


def test_answer_keeps_every_element_and_attribute_of_the_request() -> None:
    extension = '<x:Note xmlns:x="urn:example:ext" level="2">kept</x:Note>'
    body = cpix(
        [content_key(VIDEO_KID, extra=' dependsOnKey="x"')],
        [drm_system(VIDEO_KID, WIDEVINE, "<cpix:PSSH/>" + extension)],
        [usage_rule(VIDEO_KID, "VIDEO", extra=' minPixels="0" maxPixels="921600"')],
        root_attrs='contentId="movie-1" version="2.3" name="show"',
        extra="<cpix:UpdateHistoryItemList/>",
    )
    request_root = ET.fromstring(body)
    _, root = answer(body)
    assert root.get("name") == "show"
    assert root.find("cpix:UpdateHistoryItemList", NS) is not None
    note = drm_element(root, VIDEO_KID, WIDEVINE).find("{urn:example:ext}Note")
    assert note is not None and (note.get("level"), note.text) == ("2", "kept")
    video_filter = root.find(
        "cpix:ContentKeyUsageRuleList/cpix:ContentKeyUsageRule/cpix:VideoFilter", NS
    )
    assert video_filter is not None and video_filter.attrib == {
        "minPixels": "0",
        "maxPixels": "921600",
    }
    before = {e.tag for e in request_root.iter()}
    after = {e.tag for e in root.iter()}
    assert before <= after
    assert after - before == {
        f"{{{NS['cpix']}}}Data",
        f"{{{NS['pskc']}}}Secret",
        f"{{{NS['pskc']}}}PlainValue",
    }


def test_unknown_drm_system_asking_nothing_is_kept_unchanged() -> None:
    body = cpix(
        [content_key(VIDEO_KID)],
        [drm_system(VIDEO_KID, WIDEVINE), drm_system(VIDEO_KID, IRDETO, "")],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    request, root = answer(body)
    assert IRDETO in request.system_ids
    assert len(drm_element(root, VIDEO_KID, IRDETO)) == 0


def test_round_trip_through_our_own_parser() -> None:
    request = parse_request(two_key_request(), "2.0")
    first = render_response(request, KEYS, signaling())
    again = parse_request(first, "2.0")
    assert (again.kids, again.system_ids, again.scheme) == (
        request.kids,
        request.system_ids,
        "cbcs",
    )
    assert again.drm_systems == request.drm_systems
    assert again.usage_rules == request.usage_rules
    assert again.packager_keys == KEYS
    assert render_response(again, KEYS, signaling()) == first


def test_render_leaves_the_request_unchanged() -> None:
    request = parse_request(two_key_request(), "2.0")
    before = ET.tostring(request.tree)
    assert render_response(request, KEYS, signaling()) == render_response(
        request, KEYS, signaling()
    )
    assert ET.tostring(request.tree) == before


def test_packager_keys_are_taken_out_of_the_tree_and_out_of_repr() -> None:
    secret = bytes(range(200, 216))
    data = (
        "><cpix:Data><pskc:Secret><pskc:PlainValue>"
        f"{base64.b64encode(secret).decode()}</pskc:PlainValue></pskc:Secret></cpix:Data"
        "></cpix:ContentKey"
    )
    key = content_key(VIDEO_KID).replace("/>", data + ">")
    request = parse_request(
        cpix([key], [drm_system(VIDEO_KID, WIDEVINE)], [usage_rule(VIDEO_KID, "VIDEO")]), "2.0"
    )
    assert request.packager_keys == {VIDEO: secret}
    assert request.tree.find(".//pskc:PlainValue", NS) is None
    for text in (repr(request), str(request)):
        assert base64.b64encode(secret).decode() not in text
        assert secret.hex() not in text and repr(secret) not in text
    root = ET.fromstring(render_response(request, KEYS, signaling()))
    values = root.findall(".//pskc:PlainValue", NS)
    assert [base64.b64decode(v.text or "") for v in values] == [KEYS[VIDEO]]


def test_missing_or_short_key_is_a_caller_error_naming_only_the_kid() -> None:
    request = parse_request(two_key_request(), "2.0")
    with pytest.raises(ValueError, match=AUDIO):
        render_response(request, {VIDEO: KEYS[VIDEO]}, signaling())
    short = {VIDEO: KEYS[VIDEO], AUDIO: b"\x07" * 15}
    with pytest.raises(ValueError) as caught:
        render_response(request, short, signaling())
    assert "\\x07" not in str(caught.value) and "07" * 15 not in str(caught.value)


def test_signaling_uris_cannot_break_the_playlist_line() -> None:
    request = parse_request(two_key_request(), "2.0")
    plain = signaling()
    quote = type(plain)(lambda kid: 'https://x/"', plain.fairplay_uri, plain.playready_la_url)
    with pytest.raises(ValueError):
        render_response(request, KEYS, quote)
    not_skd = type(plain)(plain.aes128_key_uri, lambda kid: "https://x", plain.playready_la_url)
    with pytest.raises(ValueError):
        render_response(request, KEYS, not_skd)


# --- key rotation ------------------------------------------------------------------------------

P1, P2 = "keyPeriod_1", "keyPeriod_2"
V1, A1, V2, A2 = (str(uuid.UUID(int=n)) for n in (11, 12, 21, 22))


def rotation_request(times: bool) -> bytes:
    starts = ("2024-05-01T10:00:00Z", "2024-05-01T10:05:00Z", "2024-05-01T10:10:00Z")
    periods = [
        period(P1, 100, *((starts[0], starts[1]) if times else (None, None))),
        period(P2, 101, *((starts[1], starts[2]) if times else (None, None))),
    ]
    kids = [(V1, "VIDEO", P1), (A1, "AUDIO", P1), (V2, "VIDEO", P2), (A2, "AUDIO", P2)]
    return cpix(
        [content_key(kid) for kid, _, _ in kids],
        [drm_system(kid, system) for kid, _, _ in kids for system in (WIDEVINE, AES128_HLS)],
        [usage_rule(kid, track, [p]) for kid, track, p in kids],
        periods,
        root_attrs=f'contentId="live-1" version="{"2.4" if times else "2.3"}"',
    )


def test_rotation_with_start_and_end_in_speke_2_1() -> None:
    request, root = answer(rotation_request(times=True), "2.1")
    assert request.periods == (
        KeyPeriod(
            P1,
            100,
            datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
            datetime(2024, 5, 1, 10, 5, tzinfo=UTC),
        ),
        KeyPeriod(
            P2,
            101,
            datetime(2024, 5, 1, 10, 5, tzinfo=UTC),
            datetime(2024, 5, 1, 10, 10, tzinfo=UTC),
        ),
    )
    by_kid = {rule.kid: rule.period_ids for rule in request.usage_rules}
    assert by_kid[KeyId(uuid.UUID(V2).hex)] == (P2,)
    assert by_kid[KeyId(uuid.UUID(A1).hex)] == (P1,)
    assert len(root.findall("cpix:ContentKeyPeriodList/cpix:ContentKeyPeriod", NS)) == 2
    filters = root.findall(".//cpix:KeyPeriodFilter", NS)
    assert [f.get("periodId") for f in filters] == [P1, P1, P2, P2]
    assert parse_request(ET.tostring(root), "2.1").periods == request.periods


def test_rotation_by_index_in_speke_2_0() -> None:
    keys = {KeyId(uuid.UUID(k).hex): bytes(16) for k in (V1, A1, V2, A2)}
    request = parse_request(rotation_request(times=False), "2.0")
    assert [(p.id, p.index, p.start, p.end) for p in request.periods] == [
        (P1, 100, None, None),
        (P2, 101, None, None),
    ]
    root = ET.fromstring(render_response(request, keys, signaling()))
    assert len(root.findall(".//pskc:PlainValue", NS)) == 4


def test_period_times_without_zone_are_utc() -> None:
    body = rotation_request(times=True).replace(b":00Z", b":00")
    assert parse_request(body, "2.1").periods[0].start == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            b'end="2024-05-01T10:05:00Z"',
            b'end="2024-05-01T09:00:00Z"',
            "Invalid ContentKeyPeriod: @end is not after @start",
        ),
        (
            b'start="2024-05-01T10:00:00Z"',
            b'start="yesterday"',
            "Invalid ContentKeyPeriod@start: expected an xs:dateTime",
        ),
        (b'index="100"', b'index="-1"', "Invalid ContentKeyPeriod@index"),
        (b'index="100"', b'index="\xc2\xb2"', "Invalid ContentKeyPeriod@index"),
        (b'id="keyPeriod_2"', b'id="keyPeriod_1"', "Duplicate ContentKeyPeriod@id"),
        (
            b'<cpix:KeyPeriodFilter periodId="keyPeriod_2"/>',
            b'<cpix:KeyPeriodFilter periodId="nope"/>',
            f"KeyPeriodFilter@periodId for KID {V2} matches no period",
        ),
        (
            b'<cpix:KeyPeriodFilter periodId="keyPeriod_2"/>',
            b"<cpix:KeyPeriodFilter/>",
            f"Missing KeyPeriodFilter@periodId for KID {V2}",
        ),
        (
            b"<cpix:ContentKeyPeriod ",
            b"<cpix:Other ",
            "Missing ContentKeyPeriodList.ContentKeyPeriod",
        ),
    ],
)
def test_rotation_refusals(old: bytes, new: bytes, message: str) -> None:
    body = rotation_request(times=True)
    assert old in body
    assert refused(body.replace(old, new), "2.1") == message


# --- 422: the spec's messages ------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "1.0", "2.2", "2", "v2.0"])
def test_unsupported_speke_version(header: str | None) -> None:
    assert refused(two_key_request(), header) == "Unsupported SPEKE version"


def test_speke_version_is_checked_before_the_document() -> None:
    assert refused(b"not xml at all", "1.0") == "Unsupported SPEKE version"


ROOT = b'contentId="movie-1" version="2.3"'


@pytest.mark.parametrize(
    ("root_attrs", "header", "message"),
    [
        (b'version="2.3"', "2.0", "Missing CPIX@contentId"),
        (b'contentId="  " version="2.3"', "2.0", "Missing CPIX@contentId"),
        (b'contentId="movie-1"', "2.0", "Missing CPIX@version"),
        (b'contentId="movie-1" version="2.0"', "2.0", "Unsupported CPIX@version"),
        (b'contentId="movie-1" version="2.4"', "2.0", "Unsupported CPIX@version"),
        (b'contentId="movie-1" version="2.3"', "2.1", "Unsupported CPIX@version"),
    ],
)
def test_cpix_root_attributes(root_attrs: bytes, header: str, message: str) -> None:
    assert refused(two_key_request().replace(ROOT, root_attrs), header) == message


def test_speke_2_1_pairs_with_cpix_2_4() -> None:
    assert parse_request(two_key_request(version="2.4"), "2.1").version == "2.4"


def test_missing_common_encryption_scheme_names_the_kid() -> None:
    body = two_key_request().replace(
        f'kid="{AUDIO_KID}" commonEncryptionScheme="cbcs"'.encode(), f'kid="{AUDIO_KID}"'.encode()
    )
    assert refused(body) == f"Missing ContentKey@commonEncryptionScheme for KID {AUDIO_KID}"


def test_mixed_encryption_schemes() -> None:
    body = cpix(
        [content_key(VIDEO_KID, "cenc"), content_key(AUDIO_KID, "cbcs")],
        [drm_system(VIDEO_KID, WIDEVINE)],
        [usage_rule(VIDEO_KID, "VIDEO"), usage_rule(AUDIO_KID, "AUDIO")],
    )
    assert refused(body) == "Non compliant ContentKey@commonEncryptionScheme combination"


@pytest.mark.parametrize(
    ("scheme", "header"), [("abcd", "2.0"), ("CBCS", "2.0"), ("SAMPLE-AES", "2.0"), ("NONE", "2.1")]
)
def test_unsupported_scheme(scheme: str, header: str) -> None:
    version = "2.4" if header == "2.1" else "2.3"
    message = refused(two_key_request(scheme, version), header)
    assert message == f"Unsupported ContentKey@commonEncryptionScheme for KID {VIDEO_KID}"


@pytest.mark.parametrize("scheme", ["SAMPLE-AES", "SAMPLE-AES-CTR", "AES-128"])
def test_speke_2_1_accepts_hls_methods(scheme: str) -> None:
    request, root = answer(two_key_request(scheme, "2.4"), "2.1")
    assert request.scheme == scheme
    assert root.find(".//cpix:PSSH", NS) is not None


def test_fairplay_needs_cbcs() -> None:
    body = cpix(
        [content_key(VIDEO_KID, "cenc")],
        [drm_system(VIDEO_KID, FAIRPLAY)],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    assert (
        refused(body)
        == f"FairPlay needs ContentKey@commonEncryptionScheme cbcs for KID {VIDEO_KID}"
    )


def one_key(key: str = "", system: str = "", rule: str = "") -> bytes:
    return cpix(
        [key or content_key(VIDEO_KID)],
        [system or drm_system(VIDEO_KID, WIDEVINE)],
        [rule or usage_rule(VIDEO_KID, "VIDEO")],
    )


OTHER_KID = "11111111-2222-3333-4444-555555555555"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (one_key(key=content_key("not-a-uuid")), "Invalid ContentKey@kid: expected a UUID"),
        (
            one_key(key=content_key(VIDEO_KID.replace("-", ""))),
            "Invalid ContentKey@kid: expected a UUID",
        ),
        (one_key(key='<cpix:ContentKey commonEncryptionScheme="cbcs"/>'), "Missing ContentKey@kid"),
        (
            one_key(key=content_key(VIDEO_KID, extra=' explicitIV="AAAA"')),
            f"Invalid ContentKey@explicitIV for KID {VIDEO_KID}",
        ),
        (
            one_key(system=drm_system(OTHER_KID, WIDEVINE)),
            f"DRMSystem@kid {OTHER_KID} matches no ContentKey",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, "widevine")),
            "Invalid DRMSystem@systemId: expected a UUID",
        ),
        (
            one_key(system=f'<cpix:DRMSystem kid="{VIDEO_KID}"/>'),
            "Missing DRMSystem@systemId",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, IRDETO, "<cpix:PSSH/>")),
            f"Unsupported DRMSystem@systemId {IRDETO}",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, FAIRPLAY, "<cpix:PSSH/>" + HLS_BOTH)),
            f"Unsupported DRMSystem.PSSH for systemId {FAIRPLAY}",
        ),
        (
            one_key(
                system=drm_system(
                    VIDEO_KID, WIDEVINE, "<cpix:SmoothStreamingProtectionHeaderData/>"
                )
            ),
            f"Unsupported DRMSystem.SmoothStreamingProtectionHeaderData for systemId {WIDEVINE}",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, AES128_HLS, "<cpix:URIExtXKey/>")),
            "Unsupported DRMSystem child element",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, WIDEVINE, "<cpix:PSSH/><cpix:PSSH/>")),
            "Duplicate DRMSystem.PSSH",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, WIDEVINE, HLS_BOTH.replace("master", "media"))),
            "Duplicate DRMSystem.HLSSignalingData",
        ),
        (
            one_key(
                system=drm_system(VIDEO_KID, WIDEVINE, '<cpix:HLSSignalingData playlist="x"/>')
            ),
            "Invalid HLSSignalingData@playlist: expected media or master",
        ),
        (
            one_key(system=drm_system(VIDEO_KID, WIDEVINE) * 2),
            f"Duplicate DRMSystem for KID {VIDEO_KID} and systemId {WIDEVINE}",
        ),
        (
            one_key(rule=usage_rule(OTHER_KID, "VIDEO") + usage_rule(VIDEO_KID, "VIDEO")),
            f"ContentKeyUsageRule@kid {OTHER_KID} matches no ContentKey",
        ),
        (
            one_key(rule=usage_rule(VIDEO_KID, "VIDEO").replace(' intendedTrackType="VIDEO"', "")),
            f"Missing ContentKeyUsageRule@intendedTrackType for KID {VIDEO_KID}",
        ),
    ],
)
def test_document_refusals(body: bytes, message: str) -> None:
    assert refused(body) == message


def test_duplicate_kids() -> None:
    body = cpix(
        [content_key(VIDEO_KID), content_key(VIDEO_KID.upper())],
        [drm_system(VIDEO_KID, WIDEVINE)],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    assert refused(body) == f"Duplicate ContentKey@kid {VIDEO_KID.upper()}"


def test_every_key_needs_a_usage_rule() -> None:
    body = cpix(
        [content_key(VIDEO_KID), content_key(AUDIO_KID)],
        [drm_system(VIDEO_KID, WIDEVINE)],
        [usage_rule(VIDEO_KID, "VIDEO")],
    )
    assert refused(body) == f"Missing ContentKeyUsageRule for KID {AUDIO_KID}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ContentKeyList", "Missing CPIX.ContentKeyList"),
        ("DRMSystemList", "Missing CPIX.DRMSystemList"),
        ("ContentKeyUsageRuleList", "Missing CPIX.ContentKeyUsageRuleList"),
    ],
)
def test_mandatory_lists(name: str, message: str) -> None:
    root = ET.fromstring(two_key_request())
    element = root.find(f"cpix:{name}", NS)
    assert element is not None
    root.remove(element)
    assert refused(ET.tostring(root)) == message
    element.clear()
    root.append(element)
    assert refused(ET.tostring(root)).startswith(f"Missing {name}.")


def test_duplicate_list() -> None:
    body = two_key_request().replace(b"</cpix:CPIX>", b"<cpix:DRMSystemList/></cpix:CPIX>")
    assert refused(body) == "Duplicate CPIX.DRMSystemList"


def test_content_key_encryption_is_not_supported() -> None:
    body = two_key_request().replace(
        b"<cpix:ContentKeyList>", b"<cpix:DeliveryDataList/><cpix:ContentKeyList>"
    )
    assert refused(body) == "Unsupported CPIX.DeliveryDataList: content key encryption"
    encrypted = content_key(VIDEO_KID).replace(
        "/>",
        "><cpix:Data><pskc:Secret><pskc:EncryptedValue/></pskc:Secret></cpix:Data></cpix:ContentKey>",
    )
    message = f"Unsupported ContentKey.Data for KID {VIDEO_KID}: expected a plain key"
    assert refused(one_key(key=encrypted)) == message


# --- hostile and broken XML --------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&lol9;" version="2.3"/>"""


def external_entity(system_id: str) -> bytes:
    return (
        f'<?xml version="1.0"?><!DOCTYPE cpix:CPIX [<!ENTITY xxe SYSTEM "{system_id}">]>'
        '<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix" contentId="&xxe;" version="2.3"/>'
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        external_entity("file:///etc/passwd"),
        external_entity("http://127.0.0.1:9/evil.dtd"),
        b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>',
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]><x/>',
        b"<!DOCTYPE x><x/>",
    ],
    ids=[
        "billion-laughs",
        "file-entity",
        "http-entity",
        "external-dtd",
        "parameter-entity",
        "doctype",
    ],
)
def test_dtds_and_entities_are_refused_fast(body: bytes) -> None:
    started = time.perf_counter()
    assert refused(body) == "DTDs and entities are not allowed in a CPIX document"
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml",
        b"<cpix:CPIX",
        b"\xff\xfe\x00garbage",
        b"<a></b>",
        b'<?xml version="1.0" encoding="klingon"?><a/>',
    ],
)
def test_not_xml(body: bytes) -> None:
    assert refused(body) == "Malformed CPIX document: not well-formed XML"


def test_malformed_document_is_not_echoed() -> None:
    message = refused(b"<cpix:CPIX secret-token-42 <<")
    assert "secret-token-42" not in message


@pytest.mark.parametrize(
    "body",
    [
        b'<CPIX contentId="a" version="2.3"/>',
        b'<cpix:CPIX xmlns:cpix="urn:dashif:org:cpix:other" contentId="a" version="2.3"/>',
        b'<cpix:Document xmlns:cpix="urn:dashif:org:cpix"/>',
    ],
)
def test_wrong_root_or_namespace(body: bytes) -> None:
    assert (
        refused(body)
        == "Not a CPIX document: the root must be CPIX in namespace urn:dashif:org:cpix"
    )


def many_keys(count: int) -> bytes:
    kids = [str(uuid.UUID(int=n + 1)) for n in range(count)]
    return cpix(
        [content_key(kid) for kid in kids],
        [drm_system(kids[0], WIDEVINE)],
        [usage_rule(kid, "VIDEO") for kid in kids],
    )


def test_ten_thousand_keys_are_accepted() -> None:
    started = time.perf_counter()
    request = parse_request(many_keys(MAX_CONTENT_KEYS), "2.0")
    assert len(request.kids) == MAX_CONTENT_KEYS
    assert time.perf_counter() - started < 5


def test_huge_lists_are_refused() -> None:
    message = refused(many_keys(MAX_CONTENT_KEYS + 1))
    assert message == f"Too many ContentKey elements (at most {MAX_CONTENT_KEYS})"
    flood = two_key_request().replace(b"</cpix:CPIX>", b"<x/>" * MAX_ELEMENTS + b"</cpix:CPIX>")
    assert refused(flood) == f"Too many elements in the CPIX document (at most {MAX_ELEMENTS})"


def test_deep_nesting_and_size_are_refused() -> None:
    deep = b"<a>" * (MAX_DEPTH + 1) + b"</a>" * (MAX_DEPTH + 1)
    assert refused(deep) == f"CPIX document nested too deeply (at most {MAX_DEPTH} levels)"
    big = two_key_request() + b" " * MAX_DOCUMENT_BYTES
    assert refused(big) == f"CPIX document too large (at most {MAX_DOCUMENT_BYTES} bytes)"


# --- fuzzing: only CpixError, and whatever parses renders and parses back ----------------------

VALID = [two_key_request(), rotation_request(times=False)]


def check_any(body: bytes) -> None:
    try:
        request = parse_request(body, "2.0")
    except CpixError as error:
        assert error.message and len(error.message) < 200
        return
    keys = {kid: bytes(16) for kid in request.kids}
    parse_request(render_response(request, keys, signaling()), "2.0")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    check_any(body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["delete", "insert", "replace"]))
        if action == "delete":
            del body[at : at + draw(st.integers(1, 40))]
        elif action == "insert":
            body[at:at] = draw(
                st.sampled_from(
                    [b"<", b">", b'"', b"&", b"/>", b"\x00", b"\xff", b"cbc1", b' x="1"']
                )
            )
        elif at < len(body):
            body[at] = draw(st.integers(0, 255))
    return bytes(body)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_documents(body: bytes) -> None:
    check_any(body)


@st.composite
def pruned(draw: st.DrawFn) -> bytes:
    """A valid document with random elements or attributes removed or rewritten."""
    root = ET.fromstring(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 3))):
        elements = list(root.iter())
        parents = {child: parent for parent in elements for child in parent}
        element = draw(st.sampled_from(elements))
        action = draw(st.sampled_from(["remove", "drop-attribute", "set-attribute"]))
        if action == "remove" and element in parents:
            parents[element].remove(element)
        elif element.attrib:
            name = draw(st.sampled_from(sorted(element.attrib)))
            if action == "drop-attribute":
                del element.attrib[name]
            else:
                element.set(
                    name, draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=40))
                )
    return ET.tostring(root)


@settings(max_examples=400, deadline=None)
@given(pruned())
def test_fuzz_pruned_documents(body: bytes) -> None:
    check_any(body)
