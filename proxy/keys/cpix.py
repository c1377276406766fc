"""SPEKE v2 CPIX documents: parse a packager's request, render the key provider's answer.

Pure (bytes in, bytes out, no I/O). The HTTP layer does:

    request = parse_request(body, request.headers.get("X-Speke-Version"))  # CpixError -> 422
    keys = {kid: 16-byte key for kid in request.kids}                      # from the key source
    answer = render_response(request, keys, signaling)

API: `parse_request(body, speke_version) -> CpixRequest`, `render_response(request, keys,
signaling) -> bytes`, `CpixError(message)` (`.message`), the `CpixRequest` parts
(`ContentKeySpec`, `DrmSystemSpec`, `KeyPeriod`, `UsageRule`), `Signaling` (the caller's URLs),
the system ids `WIDEVINE`, `PLAYREADY`, `FAIRPLAY`, `AES128_HLS` and the `MAX_*` limits.

Checks, in this order (SPEKE v2.0/v2.1 "constraints" and "standard payload components" pages):
the X-Speke-Version header ("2.0" pairs with CPIX@version "2.3", "2.1" with "2.4"); size, depth
and element counts; well-formed XML without DTD or entities (defusedxml); the CPIX root in
urn:dashif:org:cpix; CPIX@version and @contentId; no DeliveryDataList (content key encryption is
not supported); the mandatory ContentKeyList, DRMSystemList and ContentKeyUsageRuleList; every
kid a UUID, unique per list and referencing a ContentKey; one commonEncryptionScheme for all keys
(cenc, cbc1, cens, cbcs; 2.1 adds the HLS methods); periods (id, index, start/end) and the
KeyPeriodFilter references.

DRM systems. Widevine, PlayReady, FairPlay and HLS AES-128 (`SYSTEMS`) get every signalling child
they can carry filled: PSSH, ContentProtectionData, HLSSignalingData (media and master),
SmoothStreamingProtectionHeaderData (PlayReady). The spec says every element the packager sent
must come back with a valid value, so a child a system cannot carry (FairPlay PSSH, ...) and any
signalling asked of an unknown system id are refused; an unknown system asking for nothing is
kept unchanged. Other-namespace children, filters, periods and unknown attributes are kept.

Keys. Keys a packager sends in ContentKey/Data (PlainValue) are moved out of the kept tree into
`CpixRequest.packager_keys` (never in repr); the answer always carries the keys given to
`render_response`. No message or repr holds a key; messages echo only validated ids.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final, Literal

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser

from proxy.domain import AES_KEY_BYTES, KeyId
from proxy.keys import hls, pssh

CPIX_NS: Final = "urn:dashif:org:cpix"
PSKC_NS: Final = "urn:ietf:params:xml:ns:keyprov:pskc"
CENC_NS: Final = "urn:mpeg:cenc:2013"
MSPR_NS: Final = "urn:microsoft:playready"

WIDEVINE: Final = "edef8ba9-79d6-4ace-a3c8-27dcd51d21ed"
PLAYREADY: Final = "9a04f079-9840-4286-ab92-e65be0885f95"
FAIRPLAY: Final = "94ce86fb-07ff-4f43-adb8-93d2fa968ca2"
AES128_HLS: Final = "3ea8778f-7742-4bf9-b18b-e834b2acbd47"

# X-Speke-Version -> the CPIX@version it goes with.
SPEKE_VERSIONS: Final = {"2.0": "2.3", "2.1": "2.4"}
MAX_DOCUMENT_BYTES: Final = 16 * 1024 * 1024
MAX_CONTENT_KEYS: Final = 10_000
MAX_ELEMENTS: Final = 30 * MAX_CONTENT_KEYS
MAX_DEPTH: Final = 32

Signal = Literal[
    "PSSH",
    "ContentProtectionData",
    "SmoothStreamingProtectionHeaderData",
    "HLSSignalingData/media",
    "HLSSignalingData/master",
]
_HLS: Final[tuple[Signal, Signal]] = ("HLSSignalingData/media", "HLSSignalingData/master")
# What each known DRM system can answer.
SYSTEMS: Final[Mapping[str, frozenset[Signal]]] = {
    WIDEVINE: frozenset[Signal]({"PSSH", "ContentProtectionData", *_HLS}),
    PLAYREADY: frozenset[Signal](
        {"PSSH", "ContentProtectionData", "SmoothStreamingProtectionHeaderData", *_HLS}
    ),
    FAIRPLAY: frozenset(_HLS),
    AES128_HLS: frozenset(_HLS),
}
_FAIRPLAY_SCHEMES: Final = ("cbcs", "SAMPLE-AES")
_SIGNALS: Final[Mapping[str, Signal]] = {
    "PSSH": "PSSH",
    "ContentProtectionData": "ContentProtectionData",
    "SmoothStreamingProtectionHeaderData": "SmoothStreamingProtectionHeaderData",
}
_PLAYLISTS: Final[Mapping[str | None, Signal]] = {
    None: "HLSSignalingData/media",  # CPIX: no @playlist means the media playlist
    "media": "HLSSignalingData/media",
    "master": "HLSSignalingData/master",
    "multiVariant": "HLSSignalingData/master",  # CPIX 2.4's name for it
}
_SIGNAL_TAGS: Final = frozenset(f"{{{CPIX_NS}}}{name}" for name in (*_SIGNALS, "HLSSignalingData"))
_CONTENT_KEY_TAG: Final = f"{{{CPIX_NS}}}ContentKey"
_INDEX: Final = re.compile(r"^[0-9]{1,19}$")
_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$")

ET.register_namespace("cpix", CPIX_NS)
ET.register_namespace("pskc", PSKC_NS)


class CpixError(Exception):
    """A document or header the spec refuses; `.message` is shown to the packager (HTTP 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ContentKeySpec:
    """A requested content key: its id as the packager wrote it, normalised, and its IV."""

    kid: KeyId
    kid_text: str
    scheme: str
    explicit_iv: bytes | None


@dataclass(frozen=True, slots=True)
class DrmSystemSpec:
    """A requested DRMSystem and the signalling children it asks for."""

    kid: KeyId
    system_id: str  # lowercase UUID
    requested: frozenset[Signal]


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """A ContentKeyPeriod; start/end (SPEKE 2.1, live) are aware datetimes, UTC if unzoned."""

    id: str | None
    index: int | None
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class UsageRule:
    """A ContentKeyUsageRule: which key protects which tracks in which periods."""

    kid: KeyId
    intended_track_type: str
    period_ids: tuple[str, ...]
    video_filter: Mapping[str, str] | None
    audio_filter: Mapping[str, str] | None


@dataclass(frozen=True, slots=True)
class CpixRequest:
    """A validated SPEKE v2 request; `tree` is the document to answer in (without any key)."""

    speke_version: str
    version: str
    content_id: str
    content_keys: tuple[ContentKeySpec, ...]
    scheme: str
    drm_systems: tuple[DrmSystemSpec, ...]
    periods: tuple[KeyPeriod, ...]
    usage_rules: tuple[UsageRule, ...]
    packager_keys: Mapping[KeyId, bytes] = field(repr=False)
    tree: ET.Element = field(repr=False, compare=False)

    @property
    def kids(self) -> tuple[KeyId, ...]:
        """The content key ids, in request order."""
        return tuple(key.kid for key in self.content_keys)

    @property
    def system_ids(self) -> frozenset[str]:
        """The DRM system ids the request names."""
        return frozenset(system.system_id for system in self.drm_systems)


@dataclass(frozen=True, slots=True)
class Signaling:
    """Where players get keys: the caller's URLs, so that this module stays pure."""

    aes128_key_uri: Callable[[KeyId], str]  # the gateway's https://.../v1/keys/{asset}/{kid}
    fairplay_uri: Callable[[KeyId], str]  # skd://...
    playready_la_url: Callable[[], str | None]


# --- parsing -------------------------------------------------------------------------------------


def parse_request(body: bytes, speke_version: str | None) -> CpixRequest:
    """The validated request, or CpixError with the spec's message."""
    speke = (speke_version or "").strip()
    if speke not in SPEKE_VERSIONS:
        raise CpixError("Unsupported SPEKE version")
    root = _parse_xml(body)
    version = _cpix_version(root, SPEKE_VERSIONS[speke])
    content_id = root.get("contentId") or ""
    if not content_id.strip():
        raise CpixError("Missing CPIX@contentId")
    if root.find(_q("DeliveryDataList")) is not None:
        raise CpixError("Unsupported CPIX.DeliveryDataList: content key encryption")
    keys, packager_keys = _content_keys(_items(root, "ContentKeyList", "ContentKey"), speke)
    kids = {key.kid for key in keys}
    scheme = _common_scheme(keys)
    systems = _drm_systems(_items(root, "DRMSystemList", "DRMSystem"), kids, scheme)
    periods = _periods(_items(root, "ContentKeyPeriodList", "ContentKeyPeriod", required=False))
    rule_elements = _items(root, "ContentKeyUsageRuleList", "ContentKeyUsageRule")
    rules = _usage_rules(rule_elements, keys, {p.id for p in periods if p.id is not None})
    return CpixRequest(
        speke, version, content_id, keys, scheme, systems, periods, rules, packager_keys, root
    )


class _BoundedTreeBuilder(ET.TreeBuilder):
    """Builds the tree, refusing while parsing a document too deep or with too many elements."""

    def __init__(self) -> None:
        super().__init__()
        self._elements = self._content_keys = self._depth = 0

    def start(self, tag: Any, attrs: dict[Any, Any], /) -> ET.Element:
        self._elements += 1
        self._depth += 1
        if tag == _CONTENT_KEY_TAG:
            self._content_keys += 1
            if self._content_keys > MAX_CONTENT_KEYS:
                raise CpixError(f"Too many ContentKey elements (at most {MAX_CONTENT_KEYS})")
        if self._elements > MAX_ELEMENTS:
            raise CpixError(f"Too many elements in the CPIX document (at most {MAX_ELEMENTS})")
        if self._depth > MAX_DEPTH:
            raise CpixError(f"CPIX document nested too deeply (at most {MAX_DEPTH} levels)")
        return super().start(tag, attrs)

    def end(self, tag: str, /) -> ET.Element:
        self._depth -= 1
        return super().end(tag)


def _parse_xml(body: bytes) -> ET.Element:
    """The CPIX root element; DTDs, entities and external references are refused."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise CpixError(f"CPIX document too large (at most {MAX_DOCUMENT_BYTES} bytes)")
    parser = DefusedXMLParser(
        target=_BoundedTreeBuilder(), forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(body)
        root = parser.close()
    except DefusedXmlException:
        raise CpixError("DTDs and entities are not allowed in a CPIX document") from None
    except (ET.ParseError, ValueError, LookupError):
        raise CpixError("Malformed CPIX document: not well-formed XML") from None
    if not isinstance(root, ET.Element) or root.tag != _q("CPIX"):
        raise CpixError(f"Not a CPIX document: the root must be CPIX in namespace {CPIX_NS}")
    return root


def _cpix_version(root: ET.Element, expected: str) -> str:
    version = (root.get("version") or "").strip()
    if not version:
        raise CpixError("Missing CPIX@version")
    if version != expected:
        raise CpixError("Unsupported CPIX@version")
    return version


def _items(root: ET.Element, list_name: str, item: str, required: bool = True) -> list[ET.Element]:
    """The items of a top-level list; a missing mandatory list or an empty list is refused."""
    lists = root.findall(_q(list_name))
    if len(lists) > 1:
        raise CpixError(f"Duplicate CPIX.{list_name}")
    if not lists:
        if required:
            raise CpixError(f"Missing CPIX.{list_name}")
        return []
    items = lists[0].findall(_q(item))
    if not items:
        raise CpixError(f"Missing {list_name}.{item}")
    return items


def _content_keys(
    elements: Sequence[ET.Element], speke: str
) -> tuple[tuple[ContentKeySpec, ...], dict[KeyId, bytes]]:
    keys: dict[KeyId, ContentKeySpec] = {}
    packager_keys: dict[KeyId, bytes] = {}
    for element in elements:
        key = _content_key(element, speke)
        if key.kid in keys:
            raise CpixError(f"Duplicate ContentKey@kid {key.kid_text}")
        secret = _take_secret(element, key.kid_text)
        if secret is not None:
            packager_keys[key.kid] = secret
        keys[key.kid] = key
    return tuple(keys.values()), packager_keys


def _content_key(element: ET.Element, speke: str) -> ContentKeySpec:
    kid_text, kid = _kid_attr(element, "ContentKey")
    scheme = (element.get("commonEncryptionScheme") or "").strip()
    if not scheme:
        raise CpixError(f"Missing ContentKey@commonEncryptionScheme for KID {kid_text}")
    allowed = pssh.CENC_SCHEMES + (pssh.HLS_METHOD_SCHEMES if speke != "2.0" else ())
    if scheme not in allowed:
        raise CpixError(f"Unsupported ContentKey@commonEncryptionScheme for KID {kid_text}")
    iv_text, explicit_iv = element.get("explicitIV"), None
    if iv_text is not None:
        explicit_iv = _b64_16(iv_text)
        if explicit_iv is None:
            raise CpixError(f"Invalid ContentKey@explicitIV for KID {kid_text}")
    return ContentKeySpec(kid, kid_text, scheme, explicit_iv)


def _take_secret(element: ET.Element, kid_text: str) -> bytes | None:
    """Removes ContentKey.Data from the tree; returns the plain key it held, if any."""
    data = element.findall(_q("Data"))
    if not data:
        return None
    value = data[0].find(f"{{{PSKC_NS}}}Secret/{{{PSKC_NS}}}PlainValue")
    secret = None if value is None or len(data) > 1 else _b64_16(value.text or "")
    if secret is None:
        raise CpixError(f"Unsupported ContentKey.Data for KID {kid_text}: expected a plain key")
    for child in data:
        element.remove(child)
    return secret


def _common_scheme(keys: Sequence[ContentKeySpec]) -> str:
    schemes = {key.scheme for key in keys}
    if len(schemes) > 1:
        raise CpixError("Non compliant ContentKey@commonEncryptionScheme combination")
    return schemes.pop()


def _drm_systems(
    elements: Sequence[ET.Element], kids: set[KeyId], scheme: str
) -> tuple[DrmSystemSpec, ...]:
    systems: dict[tuple[KeyId, str], DrmSystemSpec] = {}
    for element in elements:
        system = _drm_system(element, kids, scheme)
        if (system.kid, system.system_id) in systems:
            kid = uuid.UUID(hex=system.kid)
            raise CpixError(f"Duplicate DRMSystem for KID {kid} and systemId {system.system_id}")
        systems[system.kid, system.system_id] = system
    return tuple(systems.values())


def _drm_system(element: ET.Element, kids: set[KeyId], scheme: str) -> DrmSystemSpec:
    kid_text, kid = _kid_attr(element, "DRMSystem")
    if kid not in kids:
        raise CpixError(f"DRMSystem@kid {kid_text} matches no ContentKey")
    system_id = str(uuid.UUID(_uuid_attr(element, "DRMSystem", "systemId")))
    requested = _requested_signals(element)
    can_answer = SYSTEMS.get(system_id)
    if can_answer is None and requested:
        raise CpixError(f"Unsupported DRMSystem@systemId {system_id}")
    unanswerable = sorted(requested - (can_answer or frozenset()))
    if unanswerable:
        name = unanswerable[0].split("/")[0]
        raise CpixError(f"Unsupported DRMSystem.{name} for systemId {system_id}")
    if system_id == FAIRPLAY and scheme not in _FAIRPLAY_SCHEMES:
        raise CpixError(f"FairPlay needs ContentKey@commonEncryptionScheme cbcs for KID {kid_text}")
    return DrmSystemSpec(kid, system_id, requested)


def _requested_signals(element: ET.Element) -> frozenset[Signal]:
    """The signalling a DRMSystem asks for; CPIX children we cannot answer are refused."""
    signals: list[Signal] = []
    for child in element:
        if not isinstance(child.tag, str) or not child.tag.startswith(f"{{{CPIX_NS}}}"):
            continue  # other namespaces: extensions, kept as they are
        signal = _signal_of(child)
        if signal is None:
            raise CpixError("Unsupported DRMSystem child element")
        if signal in signals:
            raise CpixError(f"Duplicate DRMSystem.{signal.split('/')[0]}")
        signals.append(signal)
    return frozenset(signals)


def _signal_of(child: ET.Element) -> Signal | None:
    """The signal a CPIX DRMSystem child asks for, None if not one we know."""
    name = child.tag.partition("}")[2]
    if name != "HLSSignalingData":
        return _SIGNALS.get(name)
    playlist = _PLAYLISTS.get(child.get("playlist"))
    if playlist is None:
        raise CpixError("Invalid HLSSignalingData@playlist: expected media or master")
    return playlist


def _periods(elements: Sequence[ET.Element]) -> tuple[KeyPeriod, ...]:
    periods = tuple(_period(element) for element in elements)
    ids = [period.id for period in periods if period.id is not None]
    if len(ids) != len(set(ids)):
        raise CpixError("Duplicate ContentKeyPeriod@id")
    return periods


def _period(element: ET.Element) -> KeyPeriod:
    index_text, index = element.get("index"), None
    if index_text is not None:
        if not _INDEX.match(index_text.strip()):
            raise CpixError("Invalid ContentKeyPeriod@index")
        index = int(index_text)
    start, end = _datetime_attr(element, "start"), _datetime_attr(element, "end")
    if start is not None and end is not None and end <= start:
        raise CpixError("Invalid ContentKeyPeriod: @end is not after @start")
    return KeyPeriod(element.get("id"), index, start, end)


def _datetime_attr(element: ET.Element, name: str) -> datetime | None:
    text = element.get(name)
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CpixError(f"Invalid ContentKeyPeriod@{name}: expected an xs:dateTime") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _usage_rules(
    elements: Sequence[ET.Element], keys: Sequence[ContentKeySpec], period_ids: set[str]
) -> tuple[UsageRule, ...]:
    kids = {key.kid for key in keys}
    rules = tuple(_usage_rule(element, kids, period_ids) for element in elements)
    covered = {rule.kid for rule in rules}
    for key in keys:
        if key.kid not in covered:
            raise CpixError(f"Missing ContentKeyUsageRule for KID {key.kid_text}")
    return rules


def _usage_rule(element: ET.Element, kids: set[KeyId], period_ids: set[str]) -> UsageRule:
    kid_text, kid = _kid_attr(element, "ContentKeyUsageRule")
    if kid not in kids:
        raise CpixError(f"ContentKeyUsageRule@kid {kid_text} matches no ContentKey")
    track = (element.get("intendedTrackType") or "").strip()
    if not track:
        raise CpixError(f"Missing ContentKeyUsageRule@intendedTrackType for KID {kid_text}")
    period_filters: list[str] = []
    for period_filter in element.findall(_q("KeyPeriodFilter")):
        period_id = period_filter.get("periodId")
        if period_id is None:
            raise CpixError(f"Missing KeyPeriodFilter@periodId for KID {kid_text}")
        if period_id not in period_ids:
            raise CpixError(f"KeyPeriodFilter@periodId for KID {kid_text} matches no period")
        period_filters.append(period_id)
    video, audio = _attrs(element, "VideoFilter"), _attrs(element, "AudioFilter")
    return UsageRule(kid, track, tuple(period_filters), video, audio)


def _attrs(element: ET.Element, name: str) -> Mapping[str, str] | None:
    child = element.find(_q(name))
    return None if child is None else dict(child.attrib)


def _kid_attr(element: ET.Element, owner: str) -> tuple[str, KeyId]:
    """The @kid as written and as a KeyId (32 lowercase hex)."""
    text = _uuid_attr(element, owner, "kid")
    return text, KeyId(text.replace("-", "").lower())


def _uuid_attr(element: ET.Element, owner: str, name: str) -> str:
    text = element.get(name)
    if text is None:
        raise CpixError(f"Missing {owner}@{name}")
    if not _UUID.match(text.strip()):
        raise CpixError(f"Invalid {owner}@{name}: expected a UUID")
    return text.strip()


def _b64_16(text: str) -> bytes | None:
    """The 16 bytes a base64 text holds, or None."""
    try:
        value = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return value if len(value) == AES_KEY_BYTES else None


def _q(name: str) -> str:
    return f"{{{CPIX_NS}}}{name}"


# --- rendering -----------------------------------------------------------------------------------


def render_response(
    request: CpixRequest, keys: Mapping[KeyId, bytes], signaling: Signaling
) -> bytes:
    """The answer: the request's document with every content key and requested signal filled.

    `keys` maps each of `request.kids` to its 16-byte key (ValueError otherwise, naming the kid).
    """
    root = copy.deepcopy(request.tree)
    key_elements = root.findall(f"{_q('ContentKeyList')}/{_q('ContentKey')}")
    for element, spec in zip(key_elements, request.content_keys, strict=True):
        _fill_key(element, _key_for(keys, spec.kid))
    system_elements = root.findall(f"{_q('DRMSystemList')}/{_q('DRMSystem')}")
    ivs = {spec.kid: spec.explicit_iv for spec in request.content_keys}
    for element, system in zip(system_elements, request.drm_systems, strict=True):
        values = _signal_values(system, request, ivs[system.kid], signaling)
        for child in element:
            signal = _signal_of(child) if child.tag in _SIGNAL_TAGS else None
            if signal is not None:
                child.text = values[signal]
    answer: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return answer


def _key_for(keys: Mapping[KeyId, bytes], kid: KeyId) -> bytes:
    key = keys.get(kid)
    if key is None or len(key) != AES_KEY_BYTES:
        raise ValueError(f"no {AES_KEY_BYTES}-byte content key for KID {kid}")
    return key


def _fill_key(element: ET.Element, key: bytes) -> None:
    """Puts Data/Secret/PlainValue first in the ContentKey, as the CPIX schema orders it."""
    data = ET.Element(_q("Data"))
    secret = ET.SubElement(data, f"{{{PSKC_NS}}}Secret")
    ET.SubElement(secret, f"{{{PSKC_NS}}}PlainValue").text = _b64(key)
    element.insert(0, data)


def _signal_values(
    system: DrmSystemSpec, request: CpixRequest, iv: bytes | None, signaling: Signaling
) -> dict[Signal, str]:
    """Every signal the system can give, as the text its CPIX element holds (mostly base64)."""
    kid, scheme = system.kid, request.scheme
    if not system.requested:
        return {}
    if system.system_id == WIDEVINE:
        return _widevine_values(kid, request.content_id, scheme)
    if system.system_id == PLAYREADY:
        return _playready_values(kid, scheme, signaling.playready_la_url())
    if system.system_id == FAIRPLAY:
        return _hls_values(partial(hls.fairplay_line, uri=signaling.fairplay_uri(kid), iv=iv))
    return _hls_values(partial(hls.aes128_line, uri=signaling.aes128_key_uri(kid), iv=iv))


def _widevine_values(kid: KeyId, content_id: str, scheme: str) -> dict[Signal, str]:
    data = pssh.widevine_pssh_data([kid], content_id.encode(), scheme)
    box = pssh.build_pssh(WIDEVINE, data)
    return {
        "PSSH": _b64(box),
        "ContentProtectionData": _b64(_cenc_pssh(box).encode()),
        **_hls_values(partial(hls.widevine_line, pssh=box, kid=kid, scheme=scheme)),
    }


def _playready_values(kid: KeyId, scheme: str, la_url: str | None) -> dict[Signal, str]:
    pro = pssh.playready_header_object([kid], scheme, la_url)
    box = pssh.build_pssh(PLAYREADY, pro)
    return {
        "PSSH": _b64(box),
        "ContentProtectionData": _b64((_cenc_pssh(box) + _mspr_pro(pro)).encode()),
        "SmoothStreamingProtectionHeaderData": _b64(pro),  # ProtectionHeader's inner text
        **_hls_values(partial(hls.playready_line, pro=pro, scheme=scheme)),
    }


def _hls_values(line: Callable[[hls.Playlist], str]) -> dict[Signal, str]:
    return {
        "HLSSignalingData/media": _b64(line("media").encode()),
        "HLSSignalingData/master": _b64(line("master").encode()),
    }


def _cenc_pssh(box: bytes) -> str:
    """The DASH `cenc:pssh` element, standalone (it declares its own namespace)."""
    return f'<cenc:pssh xmlns:cenc="{CENC_NS}">{_b64(box)}</cenc:pssh>'


def _mspr_pro(pro: bytes) -> str:
    return f'<mspr:pro xmlns:mspr="{MSPR_NS}">{_b64(pro)}</mspr:pro>'


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
