"""The ClearKey license request check: the W3C format accepted, anything else named, refused."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import BadRequest
from proxy.upstream.clearkey import ClearKeyRequest, parse_clearkey_request

KID = bytes.fromhex("00112233445566778899aabbccddeeff")
KID_B64 = base64.urlsafe_b64encode(KID).rstrip(b"=").decode()  # ABEiM0RVZneImaq7zN3u_w


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_the_w3c_example_shape_is_accepted() -> None:
    parsed = parse_clearkey_request(b'{"kids":["%s"],"type":"temporary"}' % KID_B64.encode())
    assert parsed == ClearKeyRequest((KID,), "temporary")


def test_type_defaults_to_temporary_and_persistent_license_is_accepted() -> None:
    assert parse_clearkey_request(body(kids=[KID_B64])).session_type == "temporary"
    two = parse_clearkey_request(body(kids=[KID_B64, "_" * 21 + "w"], type="persistent-license"))
    assert two.session_type == "persistent-license"
    assert two.kids == (KID, b"\xff" * 16)


@given(st.lists(st.binary(min_size=16, max_size=16), min_size=1, max_size=8))
def test_any_16_byte_key_ids_round_trip(kids: list[bytes]) -> None:
    encoded = [base64.urlsafe_b64encode(k).rstrip(b"=").decode() for k in kids]
    assert parse_clearkey_request(body(kids=encoded)).kids == tuple(kids)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"notjson", "the body is not UTF-8 JSON"),
        (b"\xff\xfe{}", "the body is not UTF-8 JSON"),
        (b"[" * 100_000, "the body is not UTF-8 JSON"),
        (b'["kids"]', "the body is JSON but not an object"),
        (b'"kids"', "the body is JSON but not an object"),
        (b"{}", '"kids" must be a non-empty list'),
        (body(kids=[]), '"kids" must be a non-empty list'),
        (body(kids=KID_B64), '"kids" must be a non-empty list'),
        (body(kids=[KID_B64 + "=="]), "kids[0] must be a 16-byte key id in base64url"),
        (body(kids=[KID_B64, KID.hex()]), "kids[1] must be a 16-byte key id"),
        (body(kids=[base64.b64encode(b"\xfb" * 16).decode()]), "kids[0]"),  # `+`, `/`: not url
        (body(kids=[KID_B64[:-2]]), "kids[0]"),  # 15 bytes
        (body(kids=["A"]), "kids[0]"),  # not a whole byte
        (body(kids=[7]), "kids[0]"),
        (body(kids=[KID_B64], type="forever"), '"type" must be one of temporary'),
        (body(kids=[KID_B64], type=None), '"type" must be one of temporary, persistent-license'),
    ],
)
def test_malformed_requests_name_the_problem(raw: bytes, problem: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_clearkey_request(raw)
    assert info.value.code == "bad_request" and info.value.status == 400
    assert info.value.message.startswith("Invalid ClearKey license request: ")
    assert problem in info.value.message
    assert KID_B64 not in info.value.message and "forever" not in info.value.message
