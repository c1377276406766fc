"""The `ezdrm` provider kind: EZDRM's Widevine, PlayReady and FairPlay license services.

EZDRM takes the CDM's challenge as the body, unchanged, and names the account in the query:

- `pX=<account id>` on every license URL. EZDRM's player samples use
  `https://widevine-dash.ezdrm.com/widevine-php/widevine-foreignkey.php?pX=B03B45`,
  `https://playready.ezdrm.com/cency/preauth.aspx?pX=...` and, for FairPlay,
  `https://fps.ezdrm.com/api/licenses/<content id>` (ezdrm.com/html/drm-demos.asp, as quoted by
  public player code; Merapar, "AWS Elemental MediaPackage integration with EZDRM, part 2":
  "the pX value are the last 6 digits from your widevine profile ID"). Whoever knows it gets
  licenses on the account's bill, so here it is a credential: from a secret only, never
  logged (the transport logs no URL), never in a metric label.
- `CustomData=<base64>`, optional: EZDRM forwards it untouched to the customer's own
  authorisation backend (Merapar, same article). A fixed value from the config, or the
  player's user id; either is sent as standard base64 of its UTF-8 bytes, percent-encoded.
- FairPlay: the raw SPC as `application/octet-stream`, the CKC back as binary (Shaka Player's
  `ezdrmFairPlayRequest` only sets that content type and leaves the body raw:
  shaka-project/shaka-player lib/drm/fairplay.js, docs/tutorials/fairplay.md).
- PlayReady goes with the headers a PlayReady CDM puts in its key message (`text/xml;
  charset=utf-8` and the AcquireLicense SOAPAction, as ExoPlayer's HttpMediaDrmCallback
  sends them); Widevine as `application/octet-stream`.

EZDRM identifies content by the key id inside the challenge (FairPlay: by the URL), so the kind
needs neither a drmResourceId nor key ids; URL templates may still use `{asset_id}` or, with
`needs_drm_resource_id: true`, `{drm_resource_id}`. EZDRM's public material names no ClearKey
and no HLS AES-128 key service, so the kind serves neither.

EZDRM publishes no error format. Two answers are recognised (`read_fault`): a PlayReady SOAP
fault, whose `detail/Exception/StatusCode` is Microsoft's documented PlayReady server error
(learn.microsoft.com/playready/advanced/testservers/testing-server-exceptions), and an HTML
page where a license was expected (an error page from the service's web front end). Anything
else is judged by its status alone.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import ConfigReader
from proxy.errors import GatewayError, UpstreamRejected
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
)
from proxy.upstream.fairplay import BINARY_CONTENT_TYPE, FairPlayFormats
from proxy.upstream.transport import ProviderFault, ProviderTransport

FAIRPLAY = FairPlayFormats("binary", "binary")
# The pX EZDRM hands out is 6 hex digits; letters and digits only keep it one query value.
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
MAX_CUSTOM_DATA_CHARS = 1024  # before base64: a URL has to stay well under server limits
_OPTION_FIELDS = {"account_id", "custom_data", "custom_data_from_user"}

_CONTENT_TYPES: Mapping[str, str] = {
    "widevine": BINARY_CONTENT_TYPE,
    "playready": "text/xml; charset=utf-8",
}
_EXTRA_HEADERS: Mapping[str, Mapping[str, str]] = {
    "playready": {
        "SOAPAction": "http://schemas.microsoft.com/DRM/2007/03/protocols/AcquireLicense"
    },
}


@dataclass(frozen=True, slots=True)
class EzdrmOptions:
    """The provider's `ezdrm` section: the account id (pX) and how CustomData is made."""

    account_id: str = field(repr=False)
    custom_data: str | None = field(default=None, repr=False)
    custom_data_from_user: bool = False


def build_query(options: EzdrmOptions, user_id: str | None) -> str:
    """The query EZDRM reads: `pX=...`, then `CustomData=<base64>` when there is one."""
    query = "pX=" + quote(options.account_id, safe="")
    value = user_id if options.custom_data_from_user else options.custom_data
    if value:
        encoded = base64.b64encode(value.encode("utf-8")).decode("ascii")
        query += "&CustomData=" + quote(encoded, safe="")
    return query


# --- answers ----------------------------------------------------------------------------------


def _refused(_: int) -> GatewayError:
    return UpstreamRejected(403)


# Microsoft's PlayReady server exceptions (testing-server-exceptions); None: the status decides.
PLAYREADY_FAULTS: Mapping[str, Callable[[int], GatewayError] | None] = {
    "0x8004c065": _refused,  # DRM_E_DEVCERT_REVOKED: this device gets no license, ever
    "0x8004c600": None,  # DRM_E_SERVER_INTERNAL_ERROR
    "0x8004c601": None,  # DRM_E_SERVER_INVALID_MESSAGE
    "0x8004c602": _refused,  # DRM_E_SERVER_DEVICE_LIMIT_REACHED
    "0x8004c604": None,  # DRM_E_SERVER_SERVICE_SPECIFIC
    "0x8004c605": None,  # DRM_E_SERVER_DOMAIN_REQUIRED
    "0x8004c606": None,  # DRM_E_SERVER_RENEW_DOMAIN
}
SOAP_FAULT = "soap_fault"  # a SOAP fault without a StatusCode
HTML_PAGE = "html_page"
KNOWN_ERRORS = frozenset({*PLAYREADY_FAULTS, SOAP_FAULT, HTML_PAGE})

_SCANNED_BYTES = 16_384  # faults and error pages say what they are at the start
_SOAP_FAULT = re.compile(rb"<(?:[A-Za-z][\w.-]*:)?Fault[\s>]")
_STATUS_CODE = re.compile(rb"<StatusCode>\s*(0x[0-9A-Fa-f]{8})\s*</StatusCode>")
_HTML_START = re.compile(rb"\s*<(?:!doctype\s+html|html)[\s>]", re.IGNORECASE)


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """EZDRM's error code in an answer (any status), or None when it carries none."""
    head = body[:_SCANNED_BYTES]
    if _SOAP_FAULT.search(head):
        found = _STATUS_CODE.search(head)
        if found is None:
            return ProviderFault(SOAP_FAULT)
        code = found[1].decode("ascii").lower()
        return ProviderFault(code, PLAYREADY_FAULTS.get(code))
    if _HTML_START.match(head):
        return ProviderFault(HTML_PAGE)
    return None


# --- the client -------------------------------------------------------------------------------


class EzdrmProvider(Adapter):
    """One EZDRM account: raw bodies, the account and CustomData in the query."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(settings, read_fault=read_fault, known_errors=KNOWN_ERRORS)
        super().__init__(settings, transport)
        self.options = options_of(settings, EzdrmOptions)

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self.transport.post(
            call,
            endpoint,
            call.challenge,
            content_type=_CONTENT_TYPES.get(call.drm, call.content_type),
            headers=_EXTRA_HEADERS.get(call.drm),
            query=self._query(call),
        )

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        body, content_type = self.spc_body(call)  # the raw SPC
        answer = await self.transport.post(
            call, endpoint, body, content_type=content_type, query=self._query(call)
        )
        return self.ckc_answer(answer)

    def _query(self, call: Call) -> str:
        return build_query(self.options, call.client.user_id)


# --- the config section -----------------------------------------------------------------------


def parse_options(reader: ConfigReader, raw: Any, path: str) -> EzdrmOptions | None:
    """The `ezdrm` section, every problem reported; None when it has any."""
    before = len(reader.problems)
    if raw is None:
        reader.problem(path, "is missing: an ezdrm provider needs its account_id (pX)")
        return None
    section = reader.mapping(raw, path, _OPTION_FIELDS)
    account_id = _account_id(reader, section, path)
    custom_data = _custom_data(reader, section, path)
    from_user = reader.value(section, "custom_data_from_user", path, bool, False)
    if custom_data is not None and from_user:
        reader.problem(path, "give custom_data or custom_data_from_user, not both")
    if len(reader.problems) > before or account_id is None:
        return None
    return EzdrmOptions(account_id, custom_data, bool(from_user))


def _account_id(reader: ConfigReader, section: dict[str, Any], path: str) -> str | None:
    where = f"{path}.account_id"
    if "account_id" not in section:
        reader.problem(where, "is missing, and has no default")
        return None
    if not isinstance(section["account_id"], dict):
        reader.problem(where, "is a credential: give {env: NAME} or {file: PATH}, not the value")
        return None
    value = reader.secret(section["account_id"], where)
    if value is not None and not _ACCOUNT_ID.match(value):
        # The value itself is never repeated in a problem.
        reader.problem(where, "must be 1-64 letters and digits (EZDRM's pX: 6 hex digits)")
        return None
    return value


def _custom_data(reader: ConfigReader, section: dict[str, Any], path: str) -> str | None:
    """A fixed CustomData: plain text, or a secret reference when it is a shared secret."""
    raw = section.get("custom_data")
    if raw is None:
        return None
    where = f"{path}.custom_data"
    value: str | None
    if isinstance(raw, dict):
        value = reader.secret(raw, where)
    else:
        value = reader.value(section, "custom_data", path, str, None)
    if value is not None and not 0 < len(value) <= MAX_CUSTOM_DATA_CHARS:
        reader.problem(where, f"must be 1-{MAX_CUSTOM_DATA_CHARS} characters")
        return None
    return value


KIND = ProviderKind(
    client=EzdrmProvider,
    drms=frozenset({"widevine", "playready", "fairplay"}),
    needs_drm_resource_id=None,  # EZDRM needs none; {drm_resource_id} in a URL may still ask
    needs_key_ids=False,
    fairplay=FAIRPLAY,
    options=parse_options,
)
