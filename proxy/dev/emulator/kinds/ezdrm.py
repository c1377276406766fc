"""EZDRM, emulated from its public integration documentation and player samples.

Routes (all POST, the real service's paths; each DRM system has its own host at EZDRM, here
they share one port):

- ``/widevine-php/widevine-foreignkey.php?pX=<account>`` -- Widevine: the CDM's challenge as
  the raw body, the license as the raw answer;
- ``/cency/preauth.aspx?pX=<account>`` -- PlayReady: the SOAP challenge raw in, raw out;
- ``/api/licenses/{content_id}?pX=<account>`` -- FairPlay: the raw SPC with
  ``Content-Type: application/octet-stream`` in, the binary CKC out; the content id (the
  asset id of the ``skd://`` URI) is the last path segment.

Every route takes the account id ``pX`` and an optional ``CustomData=<base64>``; there is no
auth header. For Widevine and PlayReady the content is named by the key id inside the
challenge, which the synthetic challenges of the tests do not carry: those routes check the
account and a non-empty challenge only. FairPlay looks its content id up in the key store.

Sources: Bitmovin's "Playing protected content with EZDRM"
(developer.bitmovin.com/playback/docs/playing-protected-content-with-ezdrm: the Widevine and
PlayReady URLs with ``pX=EZDRM_ACCOUNT_ID``, ``&CustomData=BASE64_ENCODED_CUSTOM_DATA``);
players' EZDRM samples (``widevine-dash.ezdrm.com/widevine-php/widevine-foreignkey.php?pX=``,
``playready.ezdrm.com/cency/preauth.aspx?pX=``, six hex digits: the end of the DRM profile
id); Shaka Player's ``ezdrmFairPlayRequest`` (the SPC sent as is with
``application/octet-stream``) and Better Player's EZDRM FairPlay loader
(``fps.ezdrm.com/api/licenses/<asset id>``, the answer handed to AVFoundation unchanged,
i.e. a binary CKC).

Not emulated: ClearKey and HLS AES-128 keys. No public EZDRM document found says its
license service delivers either, so this emulator has no such route.

Failures: EZDRM publishes no error format. Its Widevine/FairPlay endpoints answer a request
they cannot serve with HTTP 500 (as players report), so a wrong or missing account, a bad
``CustomData``, an empty or malformed challenge and an unknown FairPlay content id are
answered 500 with a short ``text/plain`` body; PlayReady answers errors 500 with a SOAP
fault, as every PlayReady license server does.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from proxy.dev.emulator.app import CHALLENGE, SEEN, STATE, VERIFIED
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.fairplay import synthetic_license
from proxy.dev.emulator.keys import derivation_id_for
from proxy.dev.emulator.settings import EmulatorSettings

DEMO_SECRETS = {"account_id": "A1B2C3"}

WIDEVINE_PATH = "/widevine-php/widevine-foreignkey.php"
PLAYREADY_PATH = "/cency/preauth.aspx"
FAIRPLAY_PATH = "/api/licenses/{content_id}"

_ACCOUNT = "pX"
_CUSTOM_DATA = "CustomData"
_BINARY = "application/octet-stream"
# A raw SPC starts with its version, 1 or 2, as a 32-bit big-endian integer.
_SPC_PREFIXES = (b"\x00\x00\x00\x01", b"\x00\x00\x00\x02")
_SOAP_FAULT = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>'
    "<soap:Fault><faultcode>soap:Server</faultcode><faultstring>{}</faultstring>"
    "</soap:Fault></soap:Body></soap:Envelope>"
)

Handler = Callable[[web.Request], Awaitable[web.Response]]


class _Refused(Exception):
    """A request EZDRM would not serve; answered 500 in the DRM system's error format."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def add_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """Register EZDRM's three license paths."""
    del settings  # read per request from the app state (tests may swap secrets)
    app.router.add_post(WIDEVINE_PATH, _refusing(_widevine, _text_error), name="license:widevine")
    app.router.add_post(
        PLAYREADY_PATH, _refusing(_playready, _soap_error), name="license:playready"
    )
    app.router.add_post(FAIRPLAY_PATH, _refusing(_fairplay, _text_error), name="license:fairplay")


def _refusing(handler: Handler, answer: Callable[[str], web.Response]) -> Handler:
    """Wrap a handler so that a refusal becomes EZDRM's error answer, not the JSON one."""

    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Refused as refused:
            return answer(refused.message)

    return wrapped


def _text_error(message: str) -> web.Response:
    return web.Response(status=500, text=message, content_type="text/plain")


def _soap_error(message: str) -> web.Response:
    body = _SOAP_FAULT.format(message)
    return web.Response(status=500, text=body, content_type="text/xml", charset="utf-8")


async def _widevine(request: web.Request) -> web.Response:
    challenge = await _challenge(request, "widevine")
    return _synthetic(request, "widevine", challenge, _BINARY)


async def _playready(request: web.Request) -> web.Response:
    challenge = await _challenge(request, "playready")
    # The real service answers a SOAP document; the synthetic body keeps its media type.
    return _synthetic(request, "playready", challenge, "text/xml")


async def _fairplay(request: web.Request) -> web.Response:
    content_id = request.match_info["content_id"]
    request[SEEN] = ("fairplay", content_id)
    _verify_query(request, content_id=content_id)
    _known_content(request, content_id)
    spc = await request.read()
    if _media_type(request.headers.get("Content-Type")) != _BINARY:
        raise _Refused("The SPC must be sent as application/octet-stream.")
    if not spc.startswith(_SPC_PREFIXES):
        raise _Refused("The body is not a binary SPC.")
    request[CHALLENGE] = spc
    return _synthetic(request, "fairplay", spc, _BINARY)


async def _challenge(request: web.Request, drm: str) -> bytes:
    """The raw challenge of a Widevine or PlayReady request whose account checks out."""
    request[SEEN] = (drm, None)
    _verify_query(request, content_id=None)
    challenge = await request.read()
    if not challenge:
        raise _Refused("The license challenge is empty.")
    request[CHALLENGE] = challenge
    return challenge


def _synthetic(request: web.Request, drm: str, challenge: bytes, media: str) -> web.Response:
    name = request.app[STATE].settings.name
    return web.Response(body=synthetic_license(name, drm, challenge), content_type=media)


def _verify_query(request: web.Request, *, content_id: str | None) -> None:
    """Check ``pX`` (exactly one, the configured account) and an optional ``CustomData``;
    record what was verified."""
    accounts = request.query.getall(_ACCOUNT, [])
    if len(accounts) != 1 or not _same(accounts[0], _account(request)):
        raise _Refused("Unknown or missing account (pX).")
    verified: dict[str, Any] = {"account": accounts[0], "content_id": content_id}
    verified["custom_data"] = _custom_data(request)
    request[VERIFIED] = verified


def _account(request: web.Request) -> str:
    secrets = request.app[STATE].settings.secrets
    return secrets.get("account_id", DEMO_SECRETS["account_id"])


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _custom_data(request: web.Request) -> bool:
    """Whether the request carried ``CustomData``; refused unless it is valid base64."""
    values = request.query.getall(_CUSTOM_DATA, [])
    if not values:
        return False
    # An unencoded `+` in a query string reads as a space: base64 holds no spaces.
    text = values[0].replace(" ", "+")
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(values) != 1 or not decoded:
        raise _Refused("CustomData must be one non-empty base64 value.")
    return True


def _known_content(request: web.Request, content_id: str) -> None:
    try:
        derivation_id_for(request.app[STATE].settings.resources, content_id)
    except EmulatorError:
        raise _Refused("Unknown asset.") from None


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()
