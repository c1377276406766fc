"""The `generic` provider kind: URL templates, auth (none, a static header, or a JWT signed per
request from a claims template) and the FairPlay body formats named in the config.

Expresses a provider that takes the player's challenge as the request body, as EZDRM and the
emulated legacy and incoming providers do.
"""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.domain import AES_KEY_BYTES
from proxy.errors import UpstreamBadResponse
from proxy.observability import metrics
from proxy.upstream.base import (
    Call,
    FairPlayCall,
    KeyCall,
    LicenseCall,
    ProviderAnswer,
    ProviderKind,
    url_values,
)
from proxy.upstream.fairplay import encode_spc, parse_ckc_response
from proxy.upstream.http.client import Address
from proxy.upstream.signer import TokenContext, TokenSigner
from proxy.upstream.transport import ProviderTransport, forward_headers, with_query


class GenericProvider:
    """A provider configured entirely by URL templates, an auth section and FairPlay formats."""

    def __init__(self, settings: ProviderSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.transport = ProviderTransport(settings)
        auth = settings.auth
        self._static = {auth.header: auth.value} if auth.header and auth.value else {}
        self.signer = TokenSigner(auth.token) if auth.token is not None else None
        self._tokens_signed = metrics.TOKENS_SIGNED.labels(self.name)

    def endpoint(self, drm: str) -> UrlTemplate | None:
        return self.settings.endpoint(drm)

    async def open(self) -> None:
        await self.transport.open()

    async def close(self) -> None:
        await self.transport.close()

    async def license(self, call: LicenseCall, endpoint: UrlTemplate) -> ProviderAnswer:
        return await self._post(call, endpoint, call.challenge, call.content_type)

    async def fairplay(self, call: FairPlayCall, endpoint: UrlTemplate) -> ProviderAnswer:
        wanted = self.settings.fairplay
        metrics.labelled(metrics.FAIRPLAY_TRANSCODES, call.spc.fmt, wanted.request).inc()
        # The gateway checked a body assetId names this asset; without one, the path's goes.
        asset_id = call.spc.asset_id or call.entry.asset_id
        body, content_type = encode_spc(call.spc.spc, wanted.request, asset_id=asset_id)
        answer = await self._post(call, endpoint, body, content_type)
        try:
            ckc = parse_ckc_response(answer.body, wanted.response)
        except UpstreamBadResponse:
            self.transport.bad_response("bad_ckc")
            raise
        return ProviderAnswer(ckc, "application/octet-stream", answer.headers)

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
        token = self.signer.sign(
            TokenContext(
                drm_resource_id=call.entry.drm_resource_id,
                asset_id=call.entry.asset_id,
                drm=call.drm,
                user_id=call.client.user_id,
                request_id=call.request_id,
            )
        )
        self._tokens_signed.inc()
        if self.signer.query_param:
            return {}, f"{self.signer.query_param}={token}"
        assert self.signer.header is not None
        return {self.signer.header: token}, ""


KIND = ProviderKind(client=GenericProvider)
