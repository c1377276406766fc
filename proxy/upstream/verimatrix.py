"""The `verimatrix` provider kind: Verimatrix Multi-DRM (Streamkeeper / Core) license servers.

Each upstream request carries a fresh JWT signed with the operator's service access key. Where
each detail comes from (docs.verimatrix.com unless said otherwise):

- Token (/docs/authorization-overview): `alg` and `kid` in the JWT header are required; claims
  `iat`, `jti`, `iss` and `ver` (numeric) are required, `exp` and `nbf` recommended; a
  Multi-DRM token lives at most `iat` + 120 s (±5 s of clock skew), so `lifetime_seconds` is
  checked to be at most 120. The algorithm is left to the contract with Verimatrix: HS256 (a
  shared secret) and ES256 / RS256 (a private key file) are offered.
- License-server claims (/docs/drm-application-specific-token-authentication): `aud` must
  match the purpose the key was registered for; `sub` names the content and must equal the
  identifier used when the keys were requested, i.e. the asset's drmResourceId. The optional
  `subscriber`, `device` and policy claims are not sent. The value `urn:verimatrix:multidrm`
  for `aud` is not on those pages; it is what public integrations send (the default here).
- Transport: the docs say only that every request carries the token "in the header". The
  public Verimatrix player connectors (github.com/THEOplayer/samples-drm-integration,
  `verimatrixcoredrm`) set the `Authorization` header to the bare token, and their iOS
  connector passes it as `?Authorization=`; `token_in: query` and `scheme: bearer` cover both.
- FairPlay (/docs/drm-specific-integration): `{"spc": <base64>}` sent as application/json, the
  CKC answered as `{"ckc": <base64>}`, in the standard or the URL-safe alphabet.
- Errors (/docs/client-status-codes-authorization, -fairplay, -verimatrix-key-manager):
  `MDRM-NNN` codes beside the HTTP status. The body's layout is not documented, so the code is
  looked for as text; the codes that mean "our token or key is wrong" become
  UpstreamAuthFailed, the others take the status table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.config.reader import REQUIRED, ConfigReader
from proxy.errors import UpstreamAuthFailed
from proxy.upstream.adapter import Adapter, options_of
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
    token_context,
)
from proxy.upstream.fairplay import FairPlayFormats
from proxy.upstream.signer import (
    ALGORITHMS,
    Algorithm,
    SigningKey,
    TokenSettings,
    TokenSigner,
    decode_hmac_secret,
    validate_settings,
)
from proxy.upstream.transport import ProviderFault, ProviderTransport

DEFAULT_AUDIENCE = "urn:verimatrix:multidrm"
MAX_LIFETIME_SECONDS = 120  # Multi-DRM tokens: iat + 120 s at most (authorization overview)
AUTHORIZATION = "Authorization"
TokenIn = Literal["header", "query"]
Scheme = Literal["none", "bearer"]
_TOKEN_IN: tuple[TokenIn, ...] = ("header", "query")
_SCHEMES: tuple[Scheme, ...] = ("none", "bearer")
FAIRPLAY = FairPlayFormats("json", "json")

# Documented client status codes: authorization (500-513), Widevine's "no such content key"
# (717), FairPlay (1000-1015), PlayReady's "no such content key" (1110).
KNOWN_ERRORS = frozenset(f"MDRM-{n}" for n in (*range(500, 514), 717, *range(1000, 1016), 1110))
# The token is missing, malformed, expired, not yet valid, for another audience, or signed
# with a key Verimatrix cannot find or has disabled: the gateway's side is wrong, not the player.
AUTH_ERRORS = frozenset(
    f"MDRM-{n}" for n in (501, 502, 503, 504, 505, 506, 508, 509, 510, 511, 512, 513, 1001, 1002)
)
# The docs once write "MDRM 1110": a space is accepted too.
_MDRM_CODE = re.compile(rb"MDRM[-\s]?(\d{3,4})")
_SCANNED_BYTES = 4096


@dataclass(frozen=True, slots=True)
class VerimatrixOptions:
    """The `verimatrix` section of one provider: how its per-request token is built and sent."""

    key_id: str
    algorithm: Algorithm
    signing_key: bytes = field(repr=False)  # HMAC secret, or PEM private key bytes
    issuer: str
    audience: str = DEFAULT_AUDIENCE
    version: int = 1
    lifetime_seconds: int = 60
    token_in: TokenIn = "header"
    scheme: Scheme = "none"

    def token_settings(self) -> TokenSettings:
        """The signer's settings: `sub` is the drmResourceId, the rest constant."""
        claims: dict[str, Any] = {
            "aud": _literal(self.audience),
            "ver": self.version,
            "sub": "{drm_resource_id}",
        }
        return TokenSettings(
            algorithm=self.algorithm,
            keys=(SigningKey(self.key_id, self.signing_key),),
            active_kid=self.key_id,
            header=AUTHORIZATION,
            lifetime_seconds=self.lifetime_seconds,
            claims=claims,
            issuer=self.issuer,
        )


def _literal(text: str) -> str:
    """`text` as a claims-template constant (braces are template syntax)."""
    return text.replace("{", "{{").replace("}", "}}")


_FIELDS = {
    "key_id",
    "algorithm",
    "signing_secret",
    "private_key_file",
    "issuer",
    "audience",
    "version",
    "lifetime_seconds",
    "token_in",
    "scheme",
}


def parse_options(reader: ConfigReader, raw: Any, path: str) -> VerimatrixOptions | None:
    """The `verimatrix` section; every problem is reported to `reader`, None if any."""
    if raw is None:
        reader.problem(path, "is missing, and has no default")
        return None
    before = len(reader.problems)
    section = reader.mapping(raw, path, _FIELDS)
    key_id = _text(reader, section, "key_id", path, REQUIRED)
    issuer = _text(reader, section, "issuer", path, REQUIRED)
    audience = _text(reader, section, "audience", path, DEFAULT_AUDIENCE)
    algorithm = _choice(reader, section, "algorithm", path, ALGORITHMS, "HS256")
    token_in = _choice(reader, section, "token_in", path, _TOKEN_IN, "header")
    scheme = _choice(reader, section, "scheme", path, _SCHEMES, "none")
    version = reader.value(section, "version", path, int, 1)
    lifetime = reader.value(section, "lifetime_seconds", path, int, 60)
    if lifetime is not None and not 0 < lifetime <= MAX_LIFETIME_SECONDS:
        reader.problem(
            f"{path}.lifetime_seconds",
            f"must be between 1 and {MAX_LIFETIME_SECONDS} (Verimatrix refuses older tokens)",
        )
    material = _key_material(reader, section, path, algorithm) if algorithm else None
    if len(reader.problems) > before or material is None:
        return None
    options = VerimatrixOptions(
        key_id=key_id,
        algorithm=algorithm,
        signing_key=material,
        issuer=issuer,
        audience=audience,
        version=version,
        lifetime_seconds=lifetime,
        token_in=token_in,
        scheme=scheme,
    )
    problems = validate_settings(options.token_settings())
    for problem in problems:
        reader.problem(path, problem)
    return None if problems else options


def _text(reader: ConfigReader, section: dict[str, Any], key: str, path: str, default: Any) -> Any:
    value = reader.value(section, key, path, str, default)
    if not isinstance(value, str):
        return None  # missing or of the wrong type: already reported
    if not value.strip():
        reader.problem(f"{path}.{key}", "must not be empty")
    return value


def _choice(
    reader: ConfigReader,
    section: dict[str, Any],
    key: str,
    path: str,
    allowed: tuple[str, ...],
    default: str,
) -> Any:
    value = reader.value(section, key, path, str, default)
    if value is not None and value not in allowed:
        reader.problem(f"{path}.{key}", f"must be one of {', '.join(allowed)}")
        return None
    return value


def _key_material(
    reader: ConfigReader, section: dict[str, Any], path: str, algorithm: str
) -> bytes | None:
    """The HMAC secret (HS256) or the PEM private key (ES256, RS256); secrets via env/file."""
    hmac = algorithm.startswith("HS")
    wanted, other = ("signing_secret", "private_key_file")
    if not hmac:
        wanted, other = other, wanted
    if other in section:
        reader.problem(f"{path}.{other}", f"is not used with {algorithm} (give {wanted})")
    if wanted not in section:
        reader.problem(f"{path}.{wanted}", f"is missing ({algorithm} needs it)")
        return None
    if not hmac:
        return _read_pem(reader, section[wanted], f"{path}.{wanted}")
    value = reader.secret(section[wanted], f"{path}.{wanted}")
    try:
        return decode_hmac_secret(value) if value is not None else None
    except ValueError as exc:
        reader.problem(f"{path}.{wanted}", str(exc))
        return None


def _read_pem(reader: ConfigReader, raw: Any, path: str) -> bytes | None:
    pem_path = reader.path(raw, path)
    try:
        return pem_path.read_bytes() if pem_path is not None else None
    except OSError as exc:
        reader.problem(path, f"cannot read {pem_path} ({exc.strerror})")
        return None


def read_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """The MDRM code of a refusal (any status) or of a JSON error answered with a 2xx."""
    if 200 <= status < 300:
        text = _error_json_text(body)
        if text is None:
            return None
    else:
        text = body[:_SCANNED_BYTES]
    match = _MDRM_CODE.search(text)
    if match is None:
        return None
    code = "MDRM-" + match[1].decode("ascii")
    return ProviderFault(code, (lambda _: UpstreamAuthFailed()) if code in AUTH_ERRORS else None)


def _error_json_text(body: bytes) -> bytes | None:
    """A 2xx body's error text: a JSON object without a CKC (a license is never scanned)."""
    if not body[:1] == b"{" or len(body) > _SCANNED_BYTES:
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or "ckc" in document:
        return None
    return json.dumps(document).encode()


class VerimatrixProvider(Adapter):
    """A Verimatrix Multi-DRM license server, one signed JWT per request."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(settings, read_fault=read_fault, known_errors=KNOWN_ERRORS)
        super().__init__(settings, transport)
        options = options_of(settings, VerimatrixOptions)
        # Keys are parsed once here; signing per request costs what the generic JWT path does.
        self.signer = TokenSigner(options.token_settings())
        self._prefix = "Bearer " if options.scheme == "bearer" else ""
        self._in_query = options.token_in == "query"

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """Widevine and PlayReady: the challenge as the body, byte-exact."""
        return await self._post(call, endpoint, call.challenge, call.content_type)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        """`{"spc": ...}` in, the CKC out of `{"ckc": ...}`."""
        body, content_type = self.spc_body(call)
        return self.ckc_answer(await self._post(call, endpoint, body, content_type))

    async def _post(
        self, call: Call, endpoint: UrlTemplate, body: bytes, content_type: str | None
    ) -> ProviderAnswer:
        value = self._prefix + self._sign(call)
        if self._in_query:
            query = f"{AUTHORIZATION}={quote(value, safe='')}"
            return await self.transport.post(
                call, endpoint, body, content_type=content_type, query=query
            )
        return await self.transport.post(
            call, endpoint, body, content_type=content_type, headers={AUTHORIZATION: value}
        )

    def _sign(self, call: Call) -> str:
        token = self.signer.sign(token_context(call))
        self.tokens_signed.inc()
        return token


KIND = ProviderKind(
    client=VerimatrixProvider,
    drms=frozenset({"widevine", "playready", "fairplay"}),
    needs_drm_resource_id=True,
    fairplay=FAIRPLAY,
    options=parse_options,
)
