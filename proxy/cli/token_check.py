"""Provider credentials for `drm-gateway token sign/verify`, for every provider kind.

`sign` builds what the gateway would send one provider for one asset: each credential value
exactly as sent, built by the kind's own adapter code. `verify` decodes a credential with the
config's keys and gives every reason the provider would refuse it, with what it holds. Pure:
the CLI loads the config and the catalog entry and prints what comes back.

Nothing returned holds a secret: keys are used, never shown; a decrypted DoveRunner policy has
its key material masked; EZDRM's only credential, the account id, is never printed.
`explain_token` and `public_verification_keys` are the JWT side of the generic kind.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import jwt
from cryptography.hazmat.primitives import serialization

from proxy.catalog.base import CatalogEntry
from proxy.config.providers import ProviderSettings
from proxy.errors import MissingResourceId
from proxy.upstream import axinom, doverunner, drmtoday, ezdrm, verimatrix, widevine_cloud
from proxy.upstream.signer import (
    HMAC_MIN_BYTES,
    TokenContext,
    TokenSettings,
    TokenSigner,
    join_names,
    load_private_key,
    raise_if_invalid,
)

PLACEHOLDER_CHALLENGE = b"drm-gateway token sign: placeholder Widevine challenge"
SESSION_ID = "cli"  # DRMtoday's sessionId, where the gateway sends its request id
NOT_CHECKED = "no --asset given: the asset the credential is for was not checked"
_BAD_FORMAT = (
    "The token is not a well-formed JWT (expected header.payload.signature, "
    "each base64url-encoded JSON)."
)
_O = TypeVar("_O")


class CannotSign(Exception):
    """No credential can be built for this asset: it lacks what the kind needs."""


class NotApplicable(Exception):
    """The provider has nothing to sign or verify here: a usage or config problem."""


@dataclass(frozen=True, slots=True)
class SignRequest:
    """What to sign for: the asset's catalog entry, the DRM system, the player's user and, for
    widevine-cloud, the challenge the envelope wraps (None: a placeholder)."""

    entry: CatalogEntry
    drm: str
    user_id: str | None = None
    challenge: bytes | None = None


@dataclass(frozen=True, slots=True)
class Credential:
    """One value the gateway sends upstream, exactly as sent, and where it goes."""

    where: str
    value: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Signed:
    """The credentials of one upstream request (none: nothing is signed), and notes."""

    credentials: tuple[Credential, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """A credential as `sign` prints it and the asset it should be for (None: unchecked);
    `resource_claim` is where a generic JWT holds the drmResourceId."""

    credential: str
    entry: CatalogEntry | None = None
    now: float = field(default_factory=time.time)
    resource_claim: str = "drmResourceId"


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why the provider would refuse a credential (none: it would accept it), what was
    checked, and what the credential holds, decoded and safe to print (None: undecodable)."""

    problems: tuple[str, ...]
    checked: str
    label: str
    decoded: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KindTools:
    """One provider kind's sign and verify."""

    sign: Callable[[ProviderSettings, SignRequest], Signed]
    verify: Callable[[ProviderSettings, VerifyRequest], Verdict]


def sign(settings: ProviderSettings, request: SignRequest) -> Signed:
    """What the gateway would send the provider for `request`; CannotSign or NotApplicable."""
    if settings.endpoint(request.drm) is None:
        raise NotApplicable(
            f"provider {settings.name!r} serves no {request.drm} (its config has no URL for it)"
        )
    if request.challenge is not None and settings.kind != widevine_cloud.KIND_NAME:
        raise NotApplicable(
            f"--challenge is for kind {widevine_cloud.KIND_NAME}; "
            f"provider {settings.name!r} is kind {settings.kind}"
        )
    return _tools(settings).sign(settings, request)


def verify(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    """Whether the provider would accept `request.credential`, and why not; NotApplicable."""
    return _tools(settings).verify(
        settings, replace(request, credential=request.credential.strip())
    )


def format_verdict(verdict: Verdict) -> str:
    """The verdict as `token verify` prints it: the outcome, notes, the decoded credential."""
    if verdict.problems:
        lines = [f"refused: {len(verdict.problems)} problem(s)"]
        lines += [f"- {problem}" for problem in verdict.problems]
    else:
        lines = [f"ok: {verdict.checked} are valid"]
    lines += [f"note: {note}" for note in verdict.notes]
    if verdict.decoded is not None:
        lines += [f"{verdict.label}:", json.dumps(verdict.decoded, indent=2, default=str)]
    return "\n".join(lines)


def _tools(settings: ProviderSettings) -> KindTools:
    tools = TOOLS.get(settings.kind)
    if tools is None:
        raise NotApplicable(f"provider kind {settings.kind!r} has no token tools")
    return tools


def _options(settings: ProviderSettings, kind: type[_O]) -> _O:
    if not isinstance(settings.options, kind):
        raise NotApplicable(
            f"provider {settings.name!r} was read without its {settings.kind} section"
        )
    return settings.options


def _resource_id(entry: CatalogEntry, provider: str) -> str:
    if not entry.drm_resource_id:
        raise CannotSign(
            f"Asset {entry.asset_id!r} has no drmResourceId; no {provider} credential was built."
        )
    return entry.drm_resource_id


def _expected_resource(entry: CatalogEntry | None) -> tuple[str | None, list[str], tuple[str, ...]]:
    """The drmResourceId a credential must name, problems, notes."""
    if entry is None:
        return None, [], (NOT_CHECKED,)
    if not entry.drm_resource_id:
        return (
            None,
            [f"Asset {entry.asset_id!r} has no drmResourceId for a credential to name."],
            (),
        )
    return entry.drm_resource_id, [], ()


def _unverified_jwt(token: str) -> dict[str, Any] | None:
    """A JWT's header and claims, unverified (for display and claim checks)."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, RecursionError):
        return None
    return {"header": header, "claims": claims}


def _sentence(error: Exception) -> str:
    text = str(error)
    return text[:1].upper() + text[1:] + "."


# --- generic: a JWT from a claims template, or a static header, or nothing --------------------


def _sign_generic(settings: ProviderSettings, request: SignRequest) -> Signed:
    auth = settings.auth
    if auth.token is None:
        sends = f"the static header {auth.header} (a secret, not shown)" if auth.header else None
        note = f"nothing is signed: provider {settings.name!r} sends {sends or 'no credential'}"
        return Signed((), (note,))
    signer = TokenSigner(auth.token)
    where = f"header {signer.header}" if signer.header else f"query parameter {signer.query_param}"
    return Signed((Credential(where, _sign_jwt(signer, request)),))


def _sign_jwt(signer: TokenSigner, request: SignRequest) -> str:
    context = TokenContext(
        drm_resource_id=request.entry.drm_resource_id,
        asset_id=request.entry.asset_id,
        drm=request.drm,
        user_id=request.user_id,
        request_id="cli",
    )
    try:
        return signer.sign(context)
    except MissingResourceId as exc:
        raise CannotSign(exc.message) from None


def _verify_generic(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    if settings.auth.token is None:
        raise NotApplicable(
            f"provider {settings.name!r} signs no tokens (auth type {settings.auth.type})"
        )
    return _jwt_verdict(request, settings.auth.token, request.resource_claim)


def _jwt_verdict(
    request: VerifyRequest,
    settings: TokenSettings,
    resource_claim: str,
    extra: Callable[[Mapping[str, Any]], list[str]] = lambda _: [],
) -> Verdict:
    """`explain_token`'s verdict, plus the kind's `extra` claim checks."""
    expected, problems, notes = _expected_resource(request.entry)
    problems += explain_token(
        request.credential,
        settings,
        expected_resource_id=expected,
        resource_claim=resource_claim,
        clock=lambda: request.now,
    )
    decoded = _unverified_jwt(request.credential)
    if decoded is not None:
        problems += extra(decoded["claims"])
    return Verdict(tuple(problems), "signature, lifetime and claims", "token", decoded, notes)


# --- verimatrix: a JWT per request, sub = the drmResourceId ------------------------------------


def _sign_verimatrix(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, verimatrix.VerimatrixOptions)
    token = _sign_jwt(TokenSigner(options.token_settings()), request)
    value = ("Bearer " if options.scheme == "bearer" else "") + token
    name = verimatrix.AUTHORIZATION
    if options.token_in == "query":
        return Signed((Credential(f"query parameter {name}", quote(value, safe="")),))
    return Signed((Credential(f"header {name}", value),))


def _verify_verimatrix(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    options = _options(settings, verimatrix.VerimatrixOptions)
    # As sent: percent-encoded in the query, after "Bearer " with that scheme.
    token = unquote(request.credential) if "%" in request.credential else request.credential
    token = token.removeprefix("Bearer ").strip()
    return _jwt_verdict(
        replace(request, credential=token),
        options.token_settings(),
        "sub",
        partial(_verimatrix_problems, options),
    )


def _verimatrix_problems(
    options: verimatrix.VerimatrixOptions, claims: Mapping[str, Any]
) -> list[str]:
    problems = []
    if claims.get("aud") != options.audience:
        problems.append(
            f"The aud claim is {_show(claims.get('aud'))}, expected {options.audience!r}."
        )
    if claims.get("ver") != options.version:
        problems.append(f"The ver claim is {_show(claims.get('ver'))}, expected {options.version}.")
    iat, exp = claims.get("iat"), claims.get("exp")
    if isinstance(iat, int | float) and isinstance(exp, int | float):
        if exp - iat > verimatrix.MAX_LIFETIME_SECONDS:
            problems.append(
                f"The token lives {int(exp - iat)} s; Verimatrix accepts at most "
                f"{verimatrix.MAX_LIFETIME_SECONDS} s."
            )
    return problems


# --- doverunner: base64 JSON custom data, policy AES-encrypted, SHA-256 hash ------------------


def _sign_doverunner(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, doverunner.DoveRunnerOptions)
    cid = _resource_id(request.entry, "DoveRunner")
    if request.drm == doverunner.CLEARKEY:
        note = (
            "nothing is signed: ClearKey requests go token-less to their own URL, naming "
            f"siteId={options.site_id} and cid={cid} in the query"
        )
        return Signed((), (note,))
    user = request.user_id or doverunner.NO_USER
    token = doverunner.LicenseTokenBuilder(options).build(request.drm, user_id=user, cid=cid)
    note = f"accepted for {doverunner.TOKEN_LIFETIME_SECONDS} s from its timestamp"
    return Signed((Credential(f"header {options.header}", token),), (note,))


def _verify_doverunner(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    options = _options(settings, doverunner.DoveRunnerOptions)
    checked, label = "hash, policy, timestamp, site and content id", "custom data"
    try:
        document = doverunner.decode_token(request.credential)
    except ValueError:
        return Verdict(("The custom data is not base64 of a JSON object.",), checked, label)
    fields = (*doverunner.HASHED_FIELDS, "hash")
    missing = [name for name in fields if not isinstance(document.get(name), str)]
    if missing:
        problem = f"The custom data lacks {', '.join(missing)} (each a string)."
        return Verdict((problem,), checked, label, document)
    problems = _doverunner_problems(document, options, request.now)
    decoded = dict(document)
    try:
        policy = doverunner.decrypt_policy(document["policy"], options.site_key)
        decoded["policy"] = doverunner.mask_key_material(policy)
    except ValueError:
        problems.append("The policy does not decrypt with the configured site key.")
    expected, resource_problems, notes = _expected_resource(request.entry)
    problems += resource_problems
    if expected is not None and document["cid"] != expected:
        problems.append(
            f"The cid is {_show(document['cid'])} but the requested resource is {expected!r}."
        )
    return Verdict(tuple(problems), checked, label, decoded, notes)


def _doverunner_problems(
    document: Mapping[str, str], options: doverunner.DoveRunnerOptions, now: float
) -> list[str]:
    problems = []
    if document["drm_type"] not in doverunner.DRM_TYPES.values():
        problems.append(
            f"The drm_type {_show(document['drm_type'])} is not Widevine, PlayReady or FairPlay "
            "(case-sensitive)."
        )
    if document["site_id"] != options.site_id:
        problems.append(
            f"The site_id {_show(document['site_id'])} is not the configured {options.site_id!r}."
        )
    expected = doverunner.token_hash(options.access_key, document)
    if not hmac.compare_digest(document["hash"].encode(), expected.encode()):
        problems.append(
            "The hash does not match the token's fields and the configured access key "
            "(DoveRunner answers 7019)."
        )
    return problems + _doverunner_age(document["timestamp"], now)


def _doverunner_age(timestamp: str, now: float) -> list[str]:
    limit = doverunner.TOKEN_LIFETIME_SECONDS
    try:
        age = now - doverunner.parse_timestamp(timestamp)
    except ValueError:
        return [f"The timestamp {_show(timestamp)} is not UTC yyyy-mm-ddThh:mm:ssZ."]
    if age > limit:
        return [f"The timestamp is {int(age)} s old; DoveRunner accepts {limit} s (7011)."]
    if -age > limit:
        return [f"The timestamp is {int(-age)} s in the future; DoveRunner accepts {limit} s."]
    return []


# --- axinom: an HS256 entitlement message listing the asset's key ids ---------------------------


def _sign_axinom(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, axinom.AxinomOptions)
    if not request.entry.key_ids:
        raise CannotSign(
            f"Asset {request.entry.asset_id!r} has no key ids in the catalog; "
            "Axinom's entitlement message lists them."
        )
    message = axinom.EntitlementSigner(options).sign(request.entry.key_ids)
    return Signed((Credential(f"header {axinom.MESSAGE_HEADER}", message),))


def _verify_axinom(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    options = _options(settings, axinom.AxinomOptions)
    checked, label = "signature, expiry, communication key id and key ids", "message"
    decoded = _unverified_jwt(request.credential)
    if decoded is None:
        return Verdict((_BAD_FORMAT,), checked, label)
    problems = []
    try:
        axinom.verify_message(request.credential, options.com_key)
    except ValueError as exc:
        problems.append(_sentence(exc))
    claims = decoded["claims"]
    problems += _axinom_problems(claims, options, request.now)
    key_problems, notes = _axinom_key_problems(claims, request.entry)
    return Verdict(tuple(problems + key_problems), checked, label, decoded, notes)


def _axinom_problems(
    claims: Mapping[str, Any], options: axinom.AxinomOptions, now: float
) -> list[str]:
    problems = []
    if claims.get("version") != 1:
        problems.append(f"The version is {_show(claims.get('version'))}, expected 1.")
    com_key_id = claims.get("com_key_id")
    if not isinstance(com_key_id, str) or com_key_id.lower() != options.com_key_id:
        problems.append(
            f"The com_key_id {_show(com_key_id)} is not the configured {options.com_key_id!r}."
        )
    message = claims.get("message")
    if not isinstance(message, dict) or (message.get("type"), message.get("version")) != (
        "entitlement_message",
        2,
    ):
        problems.append("The message is not an entitlement_message of version 2.")
    expiry = claims.get("expiration_date")
    return problems + ([] if expiry is None else _axinom_expiry(expiry, now))


def _axinom_expiry(expiry: Any, now: float) -> list[str]:
    try:
        moment = datetime.fromisoformat(str(expiry))
    except ValueError:
        return [f"The expiration_date {_show(expiry)} is not ISO-8601."]
    if moment.tzinfo is None:
        return [f"The expiration_date {_show(expiry)} has no UTC offset."]
    if now >= moment.timestamp():
        return [f"The message expired {int(now - moment.timestamp())} s ago."]
    return []


def _axinom_key_problems(
    claims: Mapping[str, Any], entry: CatalogEntry | None
) -> tuple[list[str], tuple[str, ...]]:
    try:
        entitled = set(axinom.entitled_key_ids(claims))
    except ValueError as exc:
        return [_sentence(exc)], ()
    if entry is None:
        return [], (NOT_CHECKED,)
    if not entry.key_ids:
        return [f"Asset {entry.asset_id!r} has no key ids in the catalog to check against."], ()
    problems = []
    missing, extra = set(entry.key_ids) - entitled, entitled - set(entry.key_ids)
    if missing:
        problems.append(
            f"The message does not entitle key ids of asset {entry.asset_id!r}: "
            f"{join_names(missing)}."
        )
    if extra:
        problems.append(
            f"The message entitles key ids asset {entry.asset_id!r} does not have: "
            f"{join_names(extra)}."
        )
    return problems, ()


# --- drmtoday: an upfront token (JWT) and/or custom data -----------------------------------------


def _sign_drmtoday(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, drmtoday.DrmTodayOptions)
    auth = drmtoday.DrmTodayAuth(options)
    headers = auth.headers(_resource_id(request.entry, "DRMtoday"), request.user_id, SESSION_ID)
    note = f"sessionId is {SESSION_ID!r} here; the gateway sends its request id"
    return Signed(tuple(Credential(f"header {n}", v) for n, v in headers.items()), (note,))


def _verify_drmtoday(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    options = _options(settings, drmtoday.DrmTodayOptions)
    if request.credential.count(".") == 2:
        return _verify_upfront_token(settings.name, options, request)
    return _verify_custom_data(options, request)


def _verify_upfront_token(
    name: str, options: drmtoday.DrmTodayOptions, request: VerifyRequest
) -> Verdict:
    if options.token is None:
        raise NotApplicable(
            f"provider {name!r} sends no upfront token (auth {options.auth}): "
            "it has no secret to check one with"
        )
    checked, label = "signature, lifetime, merchant and asset", "token"
    decoded = _unverified_jwt(request.credential)
    if decoded is None:
        return Verdict((_BAD_FORMAT,), checked, label)
    problems = []
    try:
        drmtoday.verify_token(request.credential, options.token)
    except ValueError as exc:
        problems.append(_sentence(exc))
    try:
        claims = drmtoday.unpack_claims(decoded["claims"])
    except ValueError as exc:
        return Verdict((*problems, _sentence(exc)), checked, label, decoded)
    decoded["claims"] = claims
    problems += _time_problems(claims, request.now, 0)
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        problems.append("The token has no jti claim, so replays cannot be detected.")
    opt = claims["optData"]
    merchant = opt.get("merchant") if isinstance(opt, dict) else None
    if merchant != options.merchant:
        problems.append(f"The optData merchant is {_show(merchant)}, not {options.merchant!r}.")
    asset_problems, notes = _crt_problems(claims["crt"], request.entry)
    return Verdict(tuple(problems + asset_problems), checked, label, decoded, notes)


def _crt_problems(crt: Any, entry: CatalogEntry | None) -> tuple[list[str], tuple[str, ...]]:
    entries = crt if isinstance(crt, list) else []
    asset_ids = [e.get("assetId") for e in entries if isinstance(e, dict) and "assetId" in e]
    if not asset_ids:
        return ["The crt names no assetId."], ()
    expected, problems, notes = _expected_resource(entry)
    if expected is not None and expected not in asset_ids:
        problems.append(
            f"The crt names assetId {_show(asset_ids)} but the requested resource is {expected!r}."
        )
    return problems, notes


def _verify_custom_data(options: drmtoday.DrmTodayOptions, request: VerifyRequest) -> Verdict:
    checked, label = "merchant and fields", "custom data"
    notes = ["custom data carries no signature"]
    try:
        document = drmtoday.decode_custom_data(request.credential)
    except ValueError:
        return Verdict(("The custom data is not base64 of a JSON object.",), checked, label)
    problems = [
        f"The custom data has no {name} string."
        for name in ("userId", "sessionId", "merchant")
        if not isinstance(document.get(name), str)
    ]
    if isinstance(document.get("merchant"), str) and document["merchant"] != options.merchant:
        problems.append(f"The merchant is {_show(document['merchant'])}, not {options.merchant!r}.")
    if not options.sends_custom_data:
        notes.append(f"this provider's auth is {options.auth!r}: the gateway sends no custom data")
    if request.entry is not None:
        notes.append("custom data names no asset: the asset was not checked")
    return Verdict(tuple(problems), checked, label, document, tuple(notes))


# --- widevine-cloud: the signed GetLicense envelope ----------------------------------------------


def _sign_widevine_cloud(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, widevine_cloud.WidevineCloudOptions)
    challenge = PLACEHOLDER_CHALLENGE if request.challenge is None else request.challenge
    body = widevine_cloud.envelope(options, challenge, _resource_id(request.entry, "Widevine"))
    notes = ("wraps a placeholder challenge: give --challenge FILE for a real one",)
    where = f"POST body ({widevine_cloud.JSON_CONTENT_TYPE})"
    return Signed((Credential(where, body.decode()),), notes if request.challenge is None else ())


def _verify_widevine_cloud(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    options = _options(settings, widevine_cloud.WidevineCloudOptions)
    checked, label = "signature, signer, provider and content id", "license request"
    try:
        envelope = widevine_cloud.read_envelope(request.credential.encode())
    except ValueError as exc:
        return Verdict((f"The body is {exc} (a GetLicense envelope).",), checked, label)
    problems = []
    if not widevine_cloud.signature_matches(envelope, options):
        problems.append(
            "The signature does not match the configured signing key and IV "
            f"(signature_padding {options.signature_padding})."
        )
    for where, value in (
        ("signer", envelope.signer),
        ("provider", envelope.message.get("provider")),
    ):
        if value != options.provider:
            problems.append(f"The {where} is {_show(value)}, not {options.provider!r}.")
    message = dict(envelope.message)
    payload = _b64_bytes(message.get("payload"))
    message["payload"] = None if payload is None else _digest(payload)
    content = _b64_bytes(message.get("content_id"))
    message["content_id"] = content.decode("utf-8", "replace") if content is not None else None
    if payload is None or content is None:
        problems.append("The payload or content_id is not base64.")
    expected, resource_problems, notes = _expected_resource(request.entry)
    problems += resource_problems
    if expected is not None and content is not None and message["content_id"] != expected:
        problems.append(
            f"The content_id is {_show(message['content_id'])} but the requested resource is "
            f"{expected!r}."
        )
    decoded = {"signer": envelope.signer, "request": message}
    return Verdict(tuple(problems), checked, label, decoded, notes)


def _b64_bytes(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _digest(data: bytes) -> dict[str, Any]:
    """A challenge, summarized: its length and SHA-256 (to compare with a file)."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


# --- ezdrm: no per-request credential ----------------------------------------------------------


def _sign_ezdrm(settings: ProviderSettings, request: SignRequest) -> Signed:
    options = _options(settings, ezdrm.EzdrmOptions)
    notes = [
        "nothing is signed: EZDRM takes no per-request token; every request names the "
        "account in the query (pX=<account id>, a secret, not shown)"
    ]
    if options.custom_data_from_user:
        custom = ezdrm.build_query(options, request.user_id).partition("&")[2]
        notes.append(f"the query also holds {custom}" if custom else "no CustomData: no --user")
    elif options.custom_data is not None:
        notes.append("the query also holds a fixed CustomData from the config (not shown)")
    return Signed((), tuple(notes))


def _verify_ezdrm(settings: ProviderSettings, request: VerifyRequest) -> Verdict:
    raise NotApplicable(
        "EZDRM takes no per-request token, so there is nothing to verify (the account id "
        "it gets in the query is a secret, never shown)"
    )


TOOLS: Mapping[str, KindTools] = {
    "generic": KindTools(_sign_generic, _verify_generic),
    "doverunner": KindTools(_sign_doverunner, _verify_doverunner),
    "axinom": KindTools(_sign_axinom, _verify_axinom),
    "drmtoday": KindTools(_sign_drmtoday, _verify_drmtoday),
    "ezdrm": KindTools(_sign_ezdrm, _verify_ezdrm),
    "verimatrix": KindTools(_sign_verimatrix, _verify_verimatrix),
    widevine_cloud.KIND_NAME: KindTools(_sign_widevine_cloud, _verify_widevine_cloud),
}


# --- the generic kind's JWTs --------------------------------------------------------------------


def public_verification_keys(s: TokenSettings) -> dict[str, bytes]:
    """kid -> what a verifier needs: the HMAC secret itself, or the public key as PEM."""
    raise_if_invalid(s)
    if s.algorithm in HMAC_MIN_BYTES:
        return {k.kid: k.material for k in s.keys}
    return {
        k.kid: load_private_key(s.algorithm, k.material)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in s.keys
    }


def explain_token(
    token: str,
    s: TokenSettings,
    *,
    expected_resource_id: str | None = None,
    resource_claim: str = "drmResourceId",
    clock: Callable[[], float] = time.time,
    leeway_seconds: int = 0,
) -> list[str]:
    """Every reason `token` would be refused under `s`, as sentences; [] when it is valid.

    `resource_claim` is a dotted path into the claims (list items by index: `a.keys.0.id`).
    """
    raise_if_invalid(s)
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return [_BAD_FORMAT]
    problems = _header_problems(header, s)
    if not problems:
        problems += _signature_problems(token, str(header["kid"]), s)
    now = clock()
    problems += _time_problems(claims, now, leeway_seconds)
    problems += _identity_problems(claims, s, expected_resource_id, resource_claim)
    return problems


def _header_problems(header: dict[str, Any], s: TokenSettings) -> list[str]:
    problems: list[str] = []
    if header.get("alg") != s.algorithm:
        problems.append(
            f"The token is signed with alg {_show(header.get('alg'))} "
            f"but the provider is configured for {s.algorithm}."
        )
    kid = header.get("kid")
    kids = {k.kid for k in s.keys}
    if kid is None:
        problems.append("The token header has no kid, so no key can be chosen to verify it.")
    elif not isinstance(kid, str) or kid not in kids:
        problems.append(
            f"The token's kid {_show(kid)} is not a configured key ({join_names(kids)})."
        )
    return problems


def _signature_problems(token: str, kid: str, s: TokenSettings) -> list[str]:
    material = next(k.material for k in s.keys if k.kid == kid)
    key = load_private_key(s.algorithm, material)
    verify_key = key if isinstance(key, bytes) else key.public_key()
    try:
        jwt.PyJWS().decode(token, verify_key, algorithms=[s.algorithm])
    except jwt.InvalidSignatureError:
        return [f"The signature does not match the key with kid {kid!r}."]
    except jwt.PyJWTError:
        return [_BAD_FORMAT]
    return []


def _time_problems(claims: dict[str, Any], now: float, leeway: int) -> list[str]:
    times: dict[str, float] = {}
    problems: list[str] = []
    for name in ("iat", "exp", "nbf"):
        value = claims.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            times[name] = value
        elif value is not None:
            problems.append(f"The token's {name} claim is not a number.")
        elif name != "nbf":  # nbf is optional; iat and exp are always required
            problems.append(f"The token has no {name} claim.")
    if problems:
        return problems
    if now >= times["exp"] + leeway:
        problems.append(f"The token expired {int(now - times['exp'])} s ago.")
    if now + leeway < times.get("nbf", now):
        problems.append(f"The token is not valid yet (nbf is {int(times['nbf'] - now)} s ahead).")
    if now + leeway < times["iat"]:
        problems.append(f"The token's iat is {int(times['iat'] - now)} s in the future.")
    return problems


def _identity_problems(
    claims: dict[str, Any], s: TokenSettings, expected: str | None, path: str
) -> list[str]:
    problems: list[str] = []
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        problems.append("The token has no jti claim, so replays cannot be detected.")
    if s.issuer is not None and claims.get("iss") != s.issuer:
        problems.append(f"The iss claim is {_show(claims.get('iss'))}, expected {s.issuer!r}.")
    if expected is not None:
        actual = _lookup(claims, path)
        if actual is _MISSING:
            problems.append(f"The token has no {path!r} claim.")
        elif actual != expected:
            problems.append(
                f"The {path!r} claim is {_show(actual)} "
                f"but the requested resource is {_show(expected)}."
            )
    return problems


_MISSING = object()


def _lookup(claims: Any, path: str) -> Any:
    node = claims
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _show(value: Any) -> str:
    """A short repr of a claim value for a message (values come from untrusted tokens)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
