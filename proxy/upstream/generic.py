"""The `generic` provider kind: URL templates, auth (none, a static header, or a JWT signed per
request from a claims template) and the FairPlay body formats named in the config.

Expresses a provider that takes the player's challenge as the request body, as EZDRM and the
emulated legacy and incoming providers do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from multidict import CIMultiDict

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.domain import AES_KEY_BYTES
from proxy.errors import UpstreamBadResponse
from proxy.upstream.adapter import Adapter
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    KeyCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
    token_context,
    url_values,
)
from proxy.upstream.http.client import Address
from proxy.upstream.signer import TokenSigner
from proxy.upstream.transport import (
    ProviderFault,
    ProviderTransport,
    forward_headers,
    looks_like_json_error,
    with_query,
)


class GenericProvider(Adapter):
    """A provider configured entirely by URL templates, an auth section and FairPlay formats."""

    def __init__(self, settings: ProviderSettings) -> None:
        transport = ProviderTransport(
            settings, read_fault=read_json_fault, known_errors=settings.provider_errors
        )
        super().__init__(settings, transport)
        auth = settings.auth
        self._static = {auth.header: auth.value} if auth.header and auth.value else {}
        self.signer = TokenSigner(auth.token) if auth.token is not None else None

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._post(call, endpoint, call.challenge, call.content_type)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        # The gateway checked a body assetId names this asset; without one, the path's goes.
        asset_id = call.spc.asset_id or call.entry.asset_id
        body, content_type = self.spc_body(call, asset_id=asset_id)
        return self.ckc_answer(await self._post(call, endpoint, body, content_type))

    async def key(self, call: KeyCall, endpoint: UrlTemplate) -> bytes:
        url, headers = self._request(call, endpoint, None)
        answer = await self.transport.send("GET", url, drm=call.drm, headers=headers)
        if len(answer.body) != AES_KEY_BYTES:
            self.transport.bad_response("bad_key_length")
            raise UpstreamBadResponse()
        return answer.body

    async def _post(
        self, call: Call, endpoint: UrlTemplate, body: bytes, content_type: str | None
    ) -> ProviderAnswer:
        url, headers = self._request(call, endpoint, content_type)
        return await self.transport.send("POST", url, drm=call.drm, body=body, headers=headers)

    def _request(
        self, call: Call, endpoint: UrlTemplate, content_type: str | None
    ) -> tuple[Address, CIMultiDict[str]]:
        """The upstream URL and headers, with a signed token where the provider wants one."""
        auth_headers, query = self._credentials(call)
        url = with_query(endpoint.address(url_values(call)), query)
        headers = forward_headers(
            request_id=call.request_id,
            content_type=content_type,
            client=call.client,
            extra=auth_headers,
        )
        return url, headers

    def _credentials(self, call: Call) -> tuple[dict[str, str], str]:
        """Headers to add, and a query suffix, that authenticate this request upstream."""
        if self.signer is None:
            return self._static, ""
        token = self.signer.sign(token_context(call))
        self.tokens_signed.inc()
        if self.signer.query_param:
            return {}, f"{self.signer.query_param}={token}"
        assert self.signer.header is not None
        return {self.signer.header: token}, ""


def read_json_fault(status: int, headers: Mapping[str, str], body: bytes) -> ProviderFault | None:
    """The `errorCode` (or `error_code`) of a JSON error answer, as many providers send one;
    the status table decides the gateway error."""
    if body[:1] != b"{" or not looks_like_json_error(body):
        return None
    document = json.loads(body)
    code = document.get("errorCode", document.get("error_code"))
    return ProviderFault(str(code)) if isinstance(code, str | int) else None


KIND = ProviderKind(client=GenericProvider)
