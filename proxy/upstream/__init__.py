"""Talking to DRM providers: provider clients, provider token signing, FairPlay codecs.

`http/` is the lean HTTP/1.1 client underneath. Codecs and the signer are pure (bytes and
dataclasses in and out); provider clients build the upstream request and interpret the answer.
"""
