"""FairPlay codecs: golden vectors, format detection, malformed bodies and round-trip properties."""

from __future__ import annotations

import base64

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proxy.errors import BadSpc, UpstreamBadResponse
from proxy.upstream.fairplay import (
    DEFAULT_CLIENT_RESPONSE,
    MIN_SPC_BYTES,
    REQUEST_FORMATS,
    RESPONSE_FORMATS,
    FairPlayFormats,
    RequestFormat,
    ResponseFormat,
    SpcRequest,
    detect_request_format,
    encode_ckc,
    encode_spc,
    is_json_error,
    parse_ckc_response,
    parse_spc_request,
)

MAX = 64 * 1024
OCTET = "application/octet-stream"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
TEXT = "text/plain"

# --- golden vectors ----------------------------------------------------------------------------

SPC_RANGE = b"\x00\x00\x00\x01" + bytes(range(60))
# Chosen so that its base64 is full of `+` and `/` and ends with `==`.
SPC_SIGNS = b"\x00\x00\x00\x02\x00\x00" + b"\xfb\xef\xbe" * 4 + b"\xff" * 6 + b"\xfa"
SPC_MIN = b"\x00\x00\x00\x01" + b"\xf8" * 12
CKC = b"\x00\x00\x00\x01" + bytes(range(200, 220)) + b"\xfe\xff"

B64_RANGE = (
    b"AAAAAQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ow=="
)
B64_SIGNS = b"AAAAAgAA++++++++++++++++////////+g=="
B64_MIN = b"AAAAAfj4+Pj4+Pj4+Pj4+A=="

GOLDEN_SPC: list[tuple[bytes, str | None, RequestFormat, bytes, str]] = [
    (SPC_RANGE, None, "binary", SPC_RANGE, OCTET),
    (SPC_RANGE, None, "base64", B64_RANGE, TEXT),
    (
        SPC_RANGE,
        None,
        "form",
        b"spc=AAAAAQABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3"
        b"ODk6Ow%3D%3D",
        FORM,
    ),
    (SPC_RANGE, None, "json", b'{"spc":"' + B64_RANGE + b'"}', JSON),
    (SPC_SIGNS, "movie 1+a/b", "binary", SPC_SIGNS, OCTET),
    (SPC_SIGNS, "movie 1+a/b", "base64", B64_SIGNS, TEXT),
    (
        SPC_SIGNS,
        "movie 1+a/b",
        "form",
        b"spc=AAAAAgAA%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B%2B"
        b"%2F%2F%2F%2F%2F%2F%2F%2F%2Bg%3D%3D&assetId=movie%201%2Ba%2Fb",
        FORM,
    ),
    (
        SPC_SIGNS,
        "movie 1+a/b",
        "json",
        b'{"spc":"' + B64_SIGNS + b'","assetId":"movie 1+a/b"}',
        JSON,
    ),
    (SPC_MIN, None, "binary", SPC_MIN, OCTET),
    (SPC_MIN, None, "base64", B64_MIN, TEXT),
    (SPC_MIN, None, "form", b"spc=AAAAAfj4%2BPj4%2BPj4%2BPj4%2BA%3D%3D", FORM),
    (SPC_MIN, None, "json", b'{"spc":"AAAAAfj4+Pj4+Pj4+Pj4+A=="}', JSON),
]

GOLDEN_CKC: list[tuple[ResponseFormat, bytes, str]] = [
    ("binary", CKC, OCTET),
    ("base64", b"AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8=", TEXT),
    ("ckc_tag", b"<ckc>AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8=</ckc>", TEXT),
    ("json", b'{"ckc":"AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8="}', JSON),
]


@pytest.mark.parametrize(("spc", "asset_id", "fmt", "body", "content_type"), GOLDEN_SPC)
def test_encode_spc_golden(
    spc: bytes, asset_id: str | None, fmt: RequestFormat, body: bytes, content_type: str
) -> None:
    assert encode_spc(spc, fmt, asset_id=asset_id) == (body, content_type)


@pytest.mark.parametrize(("spc", "asset_id", "fmt", "body", "content_type"), GOLDEN_SPC)
@pytest.mark.parametrize("sent_type", ["declared", None, OCTET])
def test_parse_spc_golden(
    spc: bytes,
    asset_id: str | None,
    fmt: RequestFormat,
    body: bytes,
    content_type: str,
    sent_type: str | None,
) -> None:
    header = content_type if sent_type == "declared" else sent_type
    expected_id = asset_id if fmt in ("form", "json") else None
    assert parse_spc_request(body, header, max_spc_bytes=MAX) == SpcRequest(spc, fmt, expected_id)


@pytest.mark.parametrize(("fmt", "body", "content_type"), GOLDEN_CKC)
def test_ckc_golden(fmt: ResponseFormat, body: bytes, content_type: str) -> None:
    assert encode_ckc(CKC, fmt) == (body, content_type)
    assert parse_ckc_response(body, fmt) == CKC


def test_default_client_response_and_format_lists() -> None:
    assert dict(DEFAULT_CLIENT_RESPONSE) == {
        "binary": "binary",
        "form": "ckc_tag",
        "base64": "base64",
        "json": "json",
    }
    assert set(REQUEST_FORMATS) == set(DEFAULT_CLIENT_RESPONSE)
    assert set(DEFAULT_CLIENT_RESPONSE.values()) <= set(RESPONSE_FORMATS)


def test_fairplay_formats_refuses_unknown_values() -> None:
    assert FairPlayFormats("form", "ckc_tag").request == "form"
    with pytest.raises(ValueError, match="request format 'xml'"):
        FairPlayFormats("xml", "binary")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="response format 'form'"):
        FairPlayFormats("form", "form")  # type: ignore[arg-type]


# --- detection ---------------------------------------------------------------------------------

FORM_BODY = b"spc=" + B64_MIN.replace(b"+", b"%2B").replace(b"=", b"%3D")
JSON_BODY = b'{"spc":"' + B64_MIN + b'"}'


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        (OCTET, SPC_RANGE, "binary"),
        (OCTET, B64_RANGE, "base64"),  # bare base64 sent as octet-stream
        (OCTET, FORM_BODY, "form"),
        (OCTET, JSON_BODY, "json"),
        (None, SPC_RANGE, "binary"),
        (None, b"\x00\x00\x00\x02rest", "binary"),
        (None, B64_RANGE, "base64"),
        (None, b"\r\n" + B64_RANGE, "base64"),
        (None, FORM_BODY, "form"),
        (None, b"assetId=x&" + FORM_BODY, "form"),
        (None, b'  {"spc": "x"}', "json"),
        (None, b"unrecognisable", "binary"),
        ("", B64_MIN, "base64"),
        ("*/*", SPC_MIN, "binary"),
        ("application/binary", B64_MIN, "base64"),
        (TEXT, B64_RANGE, "base64"),
        (TEXT, b"unrecognisable", "base64"),
        (TEXT, SPC_RANGE, "binary"),
        (TEXT, FORM_BODY, "form"),
        ("Text/Plain; charset=utf-8", B64_MIN, "base64"),
        (FORM, FORM_BODY, "form"),
        (FORM, SPC_RANGE, "form"),  # declared form: content type decides, parse will refuse
        ("application/x-www-form-urlencoded; charset=UTF-8", FORM_BODY, "form"),
        (JSON, JSON_BODY, "json"),
        ("application/json; charset=utf-8", B64_MIN, "json"),
        ("application/vnd.fps+json", JSON_BODY, "json"),
        ("application/xml", SPC_MIN, "binary"),
    ],
)
def test_detect_request_format(content_type: str | None, body: bytes, expected: str) -> None:
    assert detect_request_format(body, content_type) == expected


# --- lenient but exact request parsing ---------------------------------------------------------


def parse(body: bytes, content_type: str | None = None, **kwargs: int) -> SpcRequest:
    return parse_spc_request(body, content_type, max_spc_bytes=kwargs.get("max_spc_bytes", MAX))


def test_form_with_literal_plus_keeps_plus() -> None:
    # parse_qs would turn each `+` into a space and corrupt the SPC.
    assert parse(b"spc=" + B64_MIN, FORM).spc == SPC_MIN
    assert parse(b"spc=" + B64_SIGNS + b"&assetId=a%2Bb+c", FORM) == SpcRequest(
        SPC_SIGNS, "form", "a+b c"
    )


def test_form_space_in_spc_is_a_mangled_plus() -> None:
    assert parse(b"spc=" + B64_MIN.replace(b"+", b"%20"), FORM).spc == SPC_MIN
    assert parse(b"spc=" + B64_MIN.replace(b"+", b" "), FORM).spc == SPC_MIN


def test_form_field_order_blank_fields_and_trailing_newline() -> None:
    body = b"assetId=m1&&spc=" + B64_RANGE.replace(b"=", b"%3D") + b"&extra=1\r\n"
    assert parse(body, FORM) == SpcRequest(SPC_RANGE, "form", "m1")


@pytest.mark.parametrize("fmt", ["base64", "form", "json"])
@pytest.mark.parametrize(
    "text",
    [
        base64.urlsafe_b64encode(SPC_SIGNS),
        base64.urlsafe_b64encode(SPC_SIGNS).rstrip(b"="),
        B64_SIGNS.rstrip(b"="),
        B64_SIGNS[:12] + b"\n" + B64_SIGNS[12:24] + b"\r\n" + B64_SIGNS[24:] + b"\n",
    ],
    ids=["urlsafe", "urlsafe-unpadded", "unpadded", "line-wrapped"],
)
def test_base64_variants_accepted(fmt: str, text: bytes) -> None:
    if fmt == "base64":
        body, content_type = text, TEXT
    elif fmt == "form":
        body, content_type = b"spc=" + text.replace(b"\n", b"%0A").replace(b"\r", b"%0D"), FORM
    else:
        body = b'{"spc":"' + text.replace(b"\n", b"\\n").replace(b"\r", b"\\r") + b'"}'
        content_type = JSON
    assert parse(body, content_type).spc == SPC_SIGNS


def test_size_limits() -> None:
    assert parse(SPC_MIN, OCTET).spc == SPC_MIN  # exactly MIN_SPC_BYTES
    with pytest.raises(BadSpc, match="15 bytes, at least 16"):
        parse(SPC_MIN[:-1], OCTET)
    with pytest.raises(BadSpc, match="15 bytes, at least 16"):
        parse(base64.b64encode(SPC_MIN[:-1]), TEXT)
    assert parse(SPC_RANGE, OCTET, max_spc_bytes=len(SPC_RANGE)).spc == SPC_RANGE
    with pytest.raises(BadSpc, match="64 bytes, at most 63"):
        parse(B64_RANGE, OCTET, max_spc_bytes=len(SPC_RANGE) - 1)
    with pytest.raises(BadSpc, match="0 bytes"):
        parse(b"", None)
    assert MIN_SPC_BYTES == 16


# --- refused requests --------------------------------------------------------------------------

B64_OF_B64 = base64.b64encode(B64_RANGE)
B64_OF_FORM = base64.b64encode(FORM_BODY)
B64_OF_JSON = base64.b64encode(JSON_BODY)


def pct(text: bytes) -> bytes:
    return b"".join(b"%%%02X" % byte for byte in text)


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        # double wrapping
        (FORM, b"spc=" + pct(FORM_BODY), "spc value is itself form-encoded"),
        (FORM, b"spc=spc=" + B64_MIN, "spc value is itself form-encoded"),
        (FORM, b"spc=" + pct(JSON_BODY), "spc value is itself JSON"),
        (FORM, b"spc=" + B64_OF_B64, "spc is base64 of base64"),
        (FORM, b"spc=" + pct(pct(B64_MIN)), "percent-encoded twice"),
        (FORM, b"spc=" + B64_OF_FORM, "base64 of a form body"),
        (TEXT, B64_OF_B64, "spc is base64 of base64"),
        (OCTET, B64_OF_B64, "spc is base64 of base64"),
        (None, B64_OF_B64, "spc is base64 of base64"),
        (TEXT, B64_OF_FORM, "base64 of a form body"),
        (TEXT, B64_OF_JSON, "base64 of a JSON body"),
        (JSON, b'{"spc":"' + B64_OF_B64 + b'"}', "spc is base64 of base64"),
        (JSON, b'{"spc":"spc=' + B64_MIN + b'"}', "spc value is itself form-encoded"),
        (JSON, b'{"spc":"{\\"spc\\":1}"}', "spc value is itself JSON"),
        # garbage
        (TEXT, b"AAAAA!!!garbage!!!", "base64 body is not valid base64"),
        (TEXT, B64_RANGE + b"A", "base64 body is not valid base64"),  # length % 4 == 1
        (TEXT, b"AAAA==AAAAAAAAAAAAAAAAAAAAAA", "base64 body is not valid base64"),
        (FORM, b"spc=@@@@", "spc value is not valid base64"),
        (FORM, b"spc=%ZZ" + B64_MIN, "spc value is not valid base64"),
        (FORM, b"assetId=x", "form body has no spc field"),
        (FORM, SPC_RANGE, "form body has no spc field"),
        (FORM, FORM_BODY + b"&" + FORM_BODY, "more than one spc field"),
        (FORM, FORM_BODY + b"&assetId=%FF", "assetId is not UTF-8"),
        (JSON, b'{"spc": ', "not valid JSON"),
        (JSON, b"[" * 100_000, "not valid JSON"),
        (JSON, b'["' + B64_MIN + b'"]', "not an object"),
        (JSON, b'{"assetId":"x"}', "JSON body has no spc field"),
        (JSON, b'{"spc":12}', "spc field that is not a string"),
        (JSON, b'{"spc":"' + B64_MIN + b'","assetId":7}', "assetId is not a valid string"),
        (JSON, b'{"spc":"' + B64_MIN + b'","assetId":"\\ud800"}', "assetId is not a valid"),
        (JSON, b'{"spc":"\\u00e9' + B64_MIN + b'"}', "spc value is not valid base64"),
    ],
)
def test_bad_spc(content_type: str | None, body: bytes, message: str) -> None:
    with pytest.raises(BadSpc, match=message) as caught:
        parse(body, content_type)
    assert caught.value.status == 400 and caught.value.code == "bad_spc"


def test_bad_spc_messages_never_echo_the_body() -> None:
    secret = base64.b64encode(b"SECRET-SPC-CONTENT-" * 4)
    for body, content_type in [
        (secret + b"!", TEXT),
        (b"spc=" + secret + b"!", FORM),
        (b'{"spc":"' + secret + b'!"}', JSON),
        (b"x=" + secret, FORM),
    ]:
        with pytest.raises(BadSpc) as caught:
            parse(body, content_type)
        assert secret[:16].decode() not in str(caught.value)


# --- responses ---------------------------------------------------------------------------------

JSON_ERRORS = [
    b'{"errorCode": 1, "message": "no key"}',
    b'{"error": "invalid_spc"}',
    b'{"ErrorCode": 42}',
    b'{"errors": [{"code": 1}]}',
    b'{"status": "FAILED", "ckc": ""}',
    b'{"message": "internal error"}',
    b' \n{"errorCode": 0, "message": "ok?"}\n',
    b'{"error": "expired", "ckc": "AAAA"}',
]
NOT_JSON_ERRORS = [
    b"",
    CKC,
    b"{",
    b"[1, 2]",
    b'{"ckc": "AAAA"}',
    b'{"ckc": "AAAA", "error": null, "errorCode": 0}',
    b'{"status": "ok", "ckc": "AAAA"}',
    b"{}",
    b'{"provider": "legacy", "drm": "fairplay"}',
    b'"error"',
    b"<ckc>AAAA</ckc>",
    b"{" + b"[" * 100_000 + b"}",
]


@pytest.mark.parametrize("body", JSON_ERRORS)
def test_is_json_error_true(body: bytes) -> None:
    assert is_json_error(body)


@pytest.mark.parametrize("body", NOT_JSON_ERRORS)
def test_is_json_error_false(body: bytes) -> None:
    assert not is_json_error(body)


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
@pytest.mark.parametrize("body", JSON_ERRORS[:3])
def test_json_error_in_200_is_bad_response(fmt: ResponseFormat, body: bytes) -> None:
    with pytest.raises(UpstreamBadResponse, match="200 with a JSON error") as caught:
        parse_ckc_response(body, fmt)
    assert caught.value.status == 502 and caught.value.code == "upstream_bad_response"
    assert b"no key" not in str(caught.value).encode()


@pytest.mark.parametrize(
    ("fmt", "body"),
    [
        ("base64", b"  AAAAAcjJysvMzc7P\r\n0NHS09TV1tfY2drb/v8=\n"),
        ("base64", b"AAAAAcjJysvMzc7P0NHS09TV1tfY2drb_v8"),
        ("ckc_tag", b"\n <ckc>\n AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8= \n</ckc>\r\n"),
        ("ckc_tag", b"<CKC>AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8=</CKC>"),
        ("json", b'{ "ckc" : "AAAAAcjJysvMzc7P0NHS09TV1tfY2drb/v8=", "ttl": 60 }'),
    ],
)
def test_ckc_tolerated_variants(fmt: ResponseFormat, body: bytes) -> None:
    assert parse_ckc_response(body, fmt) == CKC


@pytest.mark.parametrize(
    ("fmt", "body", "problem"),
    [
        ("binary", b"", "empty"),
        ("base64", b" \r\n", "empty"),
        ("ckc_tag", b"", "empty"),
        ("json", b"", "empty"),
        ("base64", b"not base64 at all!", "not valid base64"),
        ("ckc_tag", b"<ckc>garbage!!</ckc>", "not valid base64"),
        ("ckc_tag", b"<ckc></ckc>", "CKC is empty"),
        ("ckc_tag", b"<ckc>AAAA", "not a single <ckc> element"),
        ("ckc_tag", b"AAAAAcjJysvMzc7P", "not a single <ckc> element"),
        ("ckc_tag", b"<html><ckc>AAAA</ckc></html>", "not a single <ckc> element"),
        ("json", b'{"ckc": 5}', "no ckc string"),
        ("json", b'{"ttl": 5}', "no ckc string"),
        ("json", b"[]", "no ckc string"),
        ("json", b"{not json", "not valid JSON"),
        ("json", b'{"ckc": "@@"}', "not valid base64"),
        ("json", b'{"ckc": "\\u00e9AAA"}', "not valid base64"),
        ("json", b'{"ckc": ""}', "CKC is empty"),
        ("binary", b"<ckc>AAAAAcjJysvMzc7P</ckc>", "holds a <ckc> element"),
        ("base64", base64.b64encode(b"<ckc>AAAA</ckc>"), "holds a <ckc> element"),
    ],
)
def test_bad_ckc(fmt: ResponseFormat, body: bytes, problem: str) -> None:
    with pytest.raises(UpstreamBadResponse, match=problem):
        parse_ckc_response(body, fmt)


# --- properties --------------------------------------------------------------------------------

PROPERTY = settings(max_examples=150, deadline=None)
SPCS = st.builds(
    bytes.__add__,
    st.sampled_from([b"\x00\x00\x00\x01", b"\x00\x00\x00\x02"]),
    st.binary(min_size=MIN_SPC_BYTES - 4, max_size=4096),
)
ASSET_IDS = st.none() | st.text(max_size=40)
SNIFFED_TYPES = st.sampled_from([None, "", OCTET, TEXT, "*/*", "application/binary"])


@PROPERTY
@given(spc=SPCS, asset_id=ASSET_IDS, fmt=st.sampled_from(REQUEST_FORMATS))
def test_spc_round_trip(spc: bytes, asset_id: str | None, fmt: RequestFormat) -> None:
    body, content_type = encode_spc(spc, fmt, asset_id=asset_id)
    expected = SpcRequest(spc, fmt, asset_id if fmt in ("form", "json") else None)
    assert parse(body, content_type) == expected
    # Idempotence: re-encoding the parsed request gives the very same body.
    assert encode_spc(spc, fmt, asset_id=expected.asset_id) == (body, content_type)


@PROPERTY
@given(spc=SPCS, asset_id=ASSET_IDS, fmt=st.sampled_from(REQUEST_FORMATS), header=SNIFFED_TYPES)
def test_spc_round_trip_sniffed(
    spc: bytes, asset_id: str | None, fmt: RequestFormat, header: str | None
) -> None:
    body, _ = encode_spc(spc, fmt, asset_id=asset_id)
    assert detect_request_format(body, header) == fmt
    assert parse(body, header).spc == spc


@PROPERTY
@given(spc=SPCS, urlsafe=st.booleans(), padded=st.booleans(), header=SNIFFED_TYPES)
def test_unencoded_and_urlsafe_variants(
    spc: bytes, urlsafe: bool, padded: bool, header: str | None
) -> None:
    text = base64.urlsafe_b64encode(spc) if urlsafe else base64.b64encode(spc)
    text = text if padded else text.rstrip(b"=")
    assert parse(text, header) == SpcRequest(spc, "base64", None)
    assert parse(b"spc=" + text, FORM) == SpcRequest(spc, "form", None)
    assert parse(b'{"spc":"' + text + b'"}', header) == SpcRequest(spc, "json", None)


@PROPERTY
@given(spc=SPCS, fmt=st.sampled_from(REQUEST_FORMATS))
def test_wrapping_twice_is_refused(spc: bytes, fmt: RequestFormat) -> None:
    inner, _ = encode_spc(spc, fmt)
    assume(fmt != "binary")  # encoding an encoded body: the outer layer sees text, not an SPC
    with pytest.raises(BadSpc, match="base64 of"):
        parse(base64.b64encode(inner), TEXT)
    with pytest.raises(BadSpc):
        parse(encode_spc(inner, "form")[0], FORM)
    with pytest.raises(BadSpc):
        parse(encode_spc(inner, "json")[0], JSON)


@PROPERTY
@given(ckc=st.binary(min_size=1, max_size=4096), fmt=st.sampled_from(RESPONSE_FORMATS))
def test_ckc_round_trip(ckc: bytes, fmt: ResponseFormat) -> None:
    assume(not is_json_error(ckc) and not ckc.lstrip().lower().startswith(b"<ckc>"))
    assume(fmt != "binary" or ckc.strip())
    body, _ = encode_ckc(ckc, fmt)
    assert parse_ckc_response(body, fmt) == ckc
    assert encode_ckc(parse_ckc_response(body, fmt), fmt)[0] == body


@PROPERTY
@given(
    body=st.binary(max_size=512)
    | st.builds(bytes.__add__, st.sampled_from([b"spc=", b"{"]), st.binary(max_size=64)),
    header=st.sampled_from([None, OCTET, TEXT, FORM, JSON]),
)
def test_arbitrary_request_bodies_only_raise_bad_spc(body: bytes, header: str | None) -> None:
    try:
        request = parse(body, header)
    except BadSpc:
        return
    assert MIN_SPC_BYTES <= len(request.spc) <= MAX


@PROPERTY
@given(body=st.binary(max_size=512), fmt=st.sampled_from(RESPONSE_FORMATS))
def test_arbitrary_response_bodies_only_raise_bad_response(
    body: bytes, fmt: ResponseFormat
) -> None:
    try:
        ckc = parse_ckc_response(body, fmt)
    except UpstreamBadResponse:
        return
    assert ckc
