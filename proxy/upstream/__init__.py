"""Talking to DRM providers: one client per provider kind, provider token signing, FairPlay
codecs.

`base.py` is the seam (`ProviderClient`, the calls, `ProviderKind`); `registry.py` names the
kinds, one module each (`generic`, `doverunner`, `axinom`, `drmtoday`, `ezdrm`, `verimatrix`,
`widevine_cloud`) on the shared `adapter.Adapter`; `transport.py` sends and maps answers to
errors; `http/` is the lean HTTP/1.1 client underneath. Codecs and the signer are pure (bytes
and dataclasses in and out); the kinds build the upstream request and interpret the answer.
May import `config`, `catalog`, `observability`, `errors`, `domain`; never `server` or `dev`.
"""
