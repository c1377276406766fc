"""What every provider kind's adapter shares, so that a kind's module holds only its protocol.

An `Adapter` holds the provider's settings and transport, looks up its endpoints, opens and
closes with the app, encodes the SPC in the kind's request format and reads the raw CKC out of
its answer. A kind subclasses it and says how a request is authenticated and how an answer is
read (`license`, `fairplay`).
"""

from __future__ import annotations

from typing import TypeVar

from proxy.config.providers import ProviderSettings, UrlTemplate
from proxy.errors import NoProvider, UpstreamBadResponse
from proxy.observability import metrics
from proxy.upstream.base import FairPlayCall, KeyCall, ProviderAnswer
from proxy.upstream.fairplay import encode_spc, parse_ckc_response
from proxy.upstream.transport import ProviderTransport

OptionsT = TypeVar("OptionsT")
CKC_CONTENT_TYPE = "application/octet-stream"


def options_of(settings: ProviderSettings, kind: type[OptionsT]) -> OptionsT:
    """The kind's parsed config section; TypeError for settings read without it (the rules
    tooling reads configs without secrets, and such settings never reach a client)."""
    options = settings.options
    if not isinstance(options, kind):
        raise TypeError(
            f"provider {settings.name!r} was configured without its {settings.kind} section"
        )
    return options


class Adapter:
    """The part of a provider client every kind shares (see the module docstring)."""

    def __init__(self, settings: ProviderSettings, transport: ProviderTransport) -> None:
        self.settings = settings
        self.name = settings.name
        self.transport = transport
        self.tokens_signed = metrics.labelled(metrics.TOKENS_SIGNED, self.name)

    def endpoint(self, drm: str) -> UrlTemplate | None:
        return self.settings.endpoint(drm)

    async def open(self) -> None:
        await self.transport.open()

    async def close(self) -> None:
        await self.transport.close()

    async def key(self, call: KeyCall, endpoint: UrlTemplate) -> bytes:
        """Kinds that serve no HLS keys: never called, the config refuses their key_url."""
        raise NoProvider("This provider serves no HLS AES-128 keys.")

    def spc_body(self, call: FairPlayCall, *, asset_id: str | None = None) -> tuple[bytes, str]:
        """The SPC in the provider's request format (counted as a transcode), and its type."""
        wanted = self.settings.fairplay.request
        metrics.labelled(metrics.FAIRPLAY_TRANSCODES, call.spc.fmt, wanted).inc()
        return encode_spc(call.spc.spc, wanted, asset_id=asset_id)

    def ckc_answer(self, answer: ProviderAnswer) -> ProviderAnswer:
        """The raw CKC out of the provider's answer format; a garbled one is counted."""
        try:
            ckc = parse_ckc_response(answer.body, self.settings.fairplay.response)
        except UpstreamBadResponse:
            self.transport.bad_response("bad_ckc")
            raise
        return ProviderAnswer(ckc, CKC_CONTENT_TYPE, answer.headers)
