"""A small SPEKE v2.0 client, as a packager runs one: a CPIX 2.3 request for the keys of a
title, sent with the packager credential; the answer's keys and HLS key URIs read back.

Two documents: HLS AES-128 with key rotation (one ContentKey per ContentKeyPeriod, each tied
to its period by a KeyPeriodFilter, all in one request), and DASH (one CENC key).
"""

from __future__ import annotations

import base64
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"
NS = {"cpix": CPIX_NS, "pskc": PSKC_NS}
WIDEVINE = "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"
AES128_HLS = "3ea8778f-7742-4bf9-b18b-e834b2acbd47"
SPEKE_VERSION = "2.0"
_URI = re.compile(r'^#EXT-X-KEY:METHOD=AES-128,URI="([^"]+)"')


@dataclass(frozen=True, slots=True)
class SpekeKey:
    """One key of the answer: its id (32 hex), the key, and the media playlist's key URI
    (HLS AES-128 only)."""

    kid: str
    key: bytes = field(repr=False)
    hls_uri: str | None


def _uuid(kid: str) -> str:
    return str(uuid.UUID(hex=kid))


def _document(content_id: str, keys: str, systems: str, rules: str, periods: str = "") -> bytes:
    period_list = f"<cpix:ContentKeyPeriodList>{periods}</cpix:ContentKeyPeriodList>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cpix:CPIX contentId="{content_id}" version="2.3" '
        f'xmlns:cpix="{CPIX_NS}" xmlns:pskc="{PSKC_NS}">'
        f"<cpix:ContentKeyList>{keys}</cpix:ContentKeyList>"
        f"<cpix:DRMSystemList>{systems}</cpix:DRMSystemList>"
        f"{period_list if periods else ''}"
        f"<cpix:ContentKeyUsageRuleList>{rules}</cpix:ContentKeyUsageRuleList>"
        "</cpix:CPIX>"
    ).encode()


def hls_rotation_request(content_id: str, kids: Sequence[str]) -> bytes:
    """HLS AES-128 keys for len(kids) key periods: period i is encrypted with kids[i]."""
    keys = systems = rules = periods = ""
    for index, kid in enumerate(kids):
        k = _uuid(kid)
        keys += f'<cpix:ContentKey kid="{k}" commonEncryptionScheme="cbcs"/>'
        systems += (
            f'<cpix:DRMSystem kid="{k}" systemId="{AES128_HLS}">'
            '<cpix:HLSSignalingData playlist="media"/>'
            '<cpix:HLSSignalingData playlist="master"/></cpix:DRMSystem>'
        )
        periods += f'<cpix:ContentKeyPeriod id="period-{index}" index="{index}"/>'
        rules += (
            f'<cpix:ContentKeyUsageRule kid="{k}" intendedTrackType="ALL">'
            f'<cpix:KeyPeriodFilter periodId="period-{index}"/></cpix:ContentKeyUsageRule>'
        )
    return _document(content_id, keys, systems, rules, periods)


def dash_request(content_id: str, kid: str) -> bytes:
    """One CENC key for every track of a DASH presentation (Widevine signalling asked too)."""
    k = _uuid(kid)
    return _document(
        content_id,
        f'<cpix:ContentKey kid="{k}" commonEncryptionScheme="cenc"/>',
        f'<cpix:DRMSystem kid="{k}" systemId="{WIDEVINE}"><cpix:PSSH/></cpix:DRMSystem>',
        f'<cpix:ContentKeyUsageRule kid="{k}" intendedTrackType="ALL"/>',
    )


async def request_keys(
    session: aiohttp.ClientSession, url: str, *, token: str, asset: str, body: bytes
) -> dict[str, SpekeKey]:
    """POST the document as a packager does; the keys of the answer by key id."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/xml",
        "X-Speke-Version": SPEKE_VERSION,
    }
    async with session.post(url, data=body, headers=headers, params={"asset": asset}) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer[:500]
        assert resp.headers.get("X-Speke-Version") == SPEKE_VERSION
        assert resp.headers.get("X-Speke-User-Agent")
    return parse_answer(answer)


def parse_answer(document: bytes) -> dict[str, SpekeKey]:
    """Every ContentKey of a CPIX answer, with its AES-128 media playlist key URI if any."""
    root = ET.fromstring(document)
    uris: dict[str, str] = {}
    for system in root.iterfind("cpix:DRMSystemList/cpix:DRMSystem", NS):
        if system.get("systemId") != AES128_HLS:
            continue
        media = system.find("cpix:HLSSignalingData[@playlist='media']", NS)
        assert media is not None and media.text, "no media HLSSignalingData"
        line = base64.b64decode(media.text).decode()
        found = _URI.match(line)
        assert found, line
        uris[system.get("kid", "").replace("-", "")] = found.group(1)
    keys = {}
    for element in root.iterfind("cpix:ContentKeyList/cpix:ContentKey", NS):
        value = element.find("cpix:Data/pskc:Secret/pskc:PlainValue", NS)
        assert value is not None and value.text
        kid = element.get("kid", "").replace("-", "")
        keys[kid] = SpekeKey(kid, base64.b64decode(value.text), uris.get(kid))
    return keys
