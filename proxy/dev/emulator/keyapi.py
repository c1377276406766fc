"""The key API of the legacy and incoming emulators: CPIX key generation, key export, ingest.

Served only when ``EmulatorSettings.key_api_token`` is set (else these paths answer 404), each
call behind ``Authorization: Bearer <key_api_token>`` (constant-time compare; 401
``missing_key_api_token`` / ``invalid_key_api_token``). The fault modes apply as on the license
routes (before auth). Errors are the emulator's ``{"errorCode", "message"}``; no key is ever
logged or put in an error body, and no request body is echoed in one.

- ``POST /v2/cpix`` (``Content-Type: application/xml``, else 415): a CPIX 2.3 document whose
  ``CPIX@contentId`` is the resource id. A ``ContentKey`` without ``Data`` gets the stored key
  of its ``@kid``, or a new random one that is stored; one carrying
  ``Data/pskc:Secret/pskc:PlainValue`` is stored as given (409 ``key_conflict`` if that kid
  already has another key; nothing of the document is stored then). 200: the same document
  with every ``ContentKey`` carrying its key, ``application/xml``. 400 ``bad_cpix`` on a
  malformed document (DTDs and entities refused).
- ``GET /v2/keys/{resource}?kid=<32 hex>&kid=...``: 200 ``{"resource_id", "keys": [{"kid",
  "key"}]}`` (kid 32 lowercase hex, key standard base64): every stored key of the resource,
  then each asked kid not among them with its derived key. 404 ``unknown_resource`` when the
  resource has neither stored keys nor a derivation, 404 ``unknown_key`` for an asked kid it
  cannot answer, 400 ``invalid_key_id``.
- ``PUT /v2/keys/{resource}`` ``{"keys": [{"kid": hex, "key": base64}]}``: stores the keys,
  idempotently. 200 ``{"resource_id", "stored", "already_present"}``; 409 ``key_conflict``
  naming the kid when it already has a different key (nothing of the request is stored); 400
  ``bad_ingest`` / ``invalid_key_id`` / ``invalid_key``.

Bodies are bounded (``MAX_BODY``: 413) and resource ids to ``MAX_RESOURCE_ID`` characters.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from proxy.dev.emulator.app import SEEN, STATE, EmulatorState, error_response, key_lookup
from proxy.dev.emulator.cpix import MAX_RESOURCE_ID, fill_cpix, parse_cpix
from proxy.dev.emulator.errors import EmulatorError
from proxy.dev.emulator.keys import normalize_key_id
from proxy.dev.emulator.keystore import KeyConflict, StoreOutcome, decode_key, encode_key
from proxy.dev.emulator.settings import EmulatorSettings

MAX_BODY = 1024 * 1024
MAX_EXPORT_KIDS = 1000
_XML_TYPES = ("application/xml", "text/xml")
_NO_STORE = {"Cache-Control": "no-store"}


def add_key_api_routes(app: web.Application, settings: EmulatorSettings) -> None:
    """Add the key API's routes when the settings give it a token (none without)."""
    if settings.key_api_token is None:
        return
    app.router.add_post("/v2/cpix", handle_cpix, name="cpix")
    app.router.add_get("/v2/keys/{resource}", handle_export, name="key_export", allow_head=False)
    app.router.add_put("/v2/keys/{resource}", handle_ingest, name="key_ingest")


def _authorize(request: web.Request) -> EmulatorState:
    """The emulator state, once the bearer token is checked (401 otherwise)."""
    state = request.app[STATE]
    expected = (state.settings.key_api_token or "").encode("utf-8", "surrogateescape")
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise EmulatorError(401, "missing_key_api_token", "The key API bearer token is missing.")
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), expected):
        raise EmulatorError(401, "invalid_key_api_token", "The key API token is not valid.")
    return state


async def _body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise EmulatorError(413, "body_too_large", f"The body is larger than {MAX_BODY} bytes.")
    body = await request.read()
    if len(body) > MAX_BODY:
        raise EmulatorError(413, "body_too_large", f"The body is larger than {MAX_BODY} bytes.")
    return body


def _resource(request: web.Request) -> str:
    resource = request.match_info["resource"]
    if not resource.strip() or len(resource) > MAX_RESOURCE_ID:
        message = f"The resource id must be 1 to {MAX_RESOURCE_ID} characters."
        raise EmulatorError(400, "invalid_resource_id", message)
    return resource


def _conflict(state: EmulatorState, conflict: KeyConflict) -> web.Response:
    state.stats.count_key_api("conflicts")
    message = f"Key id {conflict.kid} already has a different key for this resource."
    return error_response(409, "key_conflict", message)


def _count_stored(state: EmulatorState, outcome: StoreOutcome) -> None:
    state.stats.count_key_api("generated", len(outcome.generated))
    state.stats.count_key_api("ingested", len(outcome.stored))
    state.stats.count_key_api("already_present", outcome.already_present)


async def handle_cpix(request: web.Request) -> web.Response:
    """``POST /v2/cpix``: fill every ContentKey of a CPIX document (see the module doc)."""
    state = _authorize(request)
    if request.content_type not in _XML_TYPES:
        message = "The CPIX document must be sent as application/xml."
        raise EmulatorError(415, "unsupported_media_type", message)
    document = parse_cpix(await _body(request))
    resource = document.content_id
    request[SEEN] = (None, resource)
    given = [(key.kid, key.key) for key in document.content_keys if key.key is not None]
    wanted = [key.kid for key in document.content_keys if key.key is None]
    try:
        outcome = await state.keys.put(resource, given, wanted, generate=True)
    except KeyConflict as conflict:
        return _conflict(state, conflict)
    _count_stored(state, outcome)
    answer = fill_cpix(document, outcome.keys)
    return web.Response(body=answer, content_type="application/xml", headers=_NO_STORE)


async def handle_export(request: web.Request) -> web.Response:
    """``GET /v2/keys/{resource}?kid=...``: the stored keys, plus each asked kid's key."""
    state = _authorize(request)
    resource = _resource(request)
    asked = request.query.getall("kid", [])
    if len(asked) > MAX_EXPORT_KIDS:
        message = f"At most {MAX_EXPORT_KIDS} kid parameters are accepted."
        raise EmulatorError(400, "too_many_key_ids", message)
    kids = [normalize_key_id(kid) for kid in asked]
    key_for = key_lookup(state, resource)
    keys = state.keys.keys_of(resource)
    for kid in kids:
        if kid not in keys:
            keys[kid] = key_for(kid)
    state.stats.count_key_api("exported", len(keys))
    data = {
        "resource_id": resource,
        "keys": [{"kid": kid, "key": encode_key(key)} for kid, key in keys.items()],
    }
    body = json.dumps(data).encode()
    return web.Response(body=body, content_type="application/json", headers=_NO_STORE)


async def handle_ingest(request: web.Request) -> web.Response:
    """``PUT /v2/keys/{resource}``: store the keys given, idempotently."""
    state = _authorize(request)
    resource = _resource(request)
    given = _parse_ingest(await _body(request))
    try:
        outcome = await state.keys.put(resource, given)
    except KeyConflict as conflict:
        return _conflict(state, conflict)
    _count_stored(state, outcome)
    data = {
        "resource_id": resource,
        "stored": len(outcome.stored),
        "already_present": outcome.already_present,
    }
    return web.Response(body=json.dumps(data).encode(), content_type="application/json")


def _parse_ingest(body: bytes) -> list[tuple[str, bytes]]:
    bad = EmulatorError(
        400, "bad_ingest", 'The body must be {"keys": [{"kid": "<hex>", "key": "<base64>"}]}.'
    )
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise bad from None
    if not isinstance(data, dict) or set(data) != {"keys"} or not isinstance(data["keys"], list):
        raise bad
    if not data["keys"]:
        raise EmulatorError(400, "bad_ingest", "The keys list is empty.")
    given: list[tuple[str, bytes]] = []
    for entry in data["keys"]:
        if not isinstance(entry, dict) or set(entry) != {"kid", "key"}:
            raise bad
        if not isinstance(entry["kid"], str):
            raise bad
        kid = normalize_key_id(entry["kid"])
        try:
            key = decode_key(entry["key"])
        except ValueError:
            message = f"The key of key id {kid} is not 16 bytes of standard base64."
            raise EmulatorError(400, "invalid_key", message) from None
        given.append((kid, key))
    return given
