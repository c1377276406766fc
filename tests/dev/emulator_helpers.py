"""Helpers for tests/dev/test_emulator.py: keys, tokens and bodies built independently."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.dev.emulator import RunningEmulator
from proxy.dev.emulator.cli import register

SEED = b"emulator-test-seed"
API_KEY = "test-legacy-api-key"
HS_SECRET = b"h" * 32  # 32 bytes: long enough that pyjwt does not warn about HS256
HS_KID = "hs-1"
ES_KID = "es-1"
KEY_ID = "00112233445566778899aabbccddeeff"
BINARY_SPC = b"\x00\x00\x00\x01" + bytes(range(256)) * 3


def es256_key_pair() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A fresh P-256 private key and its public key as PEM text."""
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem.decode()


def make_token(
    key: Any,
    *,
    algorithm: str = "HS256",
    kid: str | None = HS_KID,
    resource: str = "res-1",
    claim_path: str = "drmResourceId",
    **overrides: Any,
) -> str:
    """A signed JWT with a fresh jti, a 60 s lifetime and the resource at ``claim_path``.

    ``overrides`` replace top-level claims; an override of None removes that claim.
    """
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + 60, "jti": uuid.uuid4().hex}
    target = claims
    *parents, leaf = claim_path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = resource
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def synthetic(provider: str, drm: str, challenge: bytes) -> bytes:
    """The synthetic license the brief specifies, rebuilt here from its definition."""
    digest = hashlib.sha256(challenge).hexdigest()
    return f"EMULATED-LICENSE\n{provider}\n{drm}\n{digest}".encode()


def form_spc(spc: bytes, asset_id: str | None = None) -> bytes:
    """A legacy FairPlay form body: ``spc=<percent-encoded base64>[&assetId=...]``."""
    body = "spc=" + quote(base64.b64encode(spc).decode(), safe="")
    if asset_id is not None:
        body += "&assetId=" + quote(asset_id, safe="")
    return body.encode()


def b64url(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """Decode base64url without padding."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, **headers: str
) -> tuple[int, str, bytes]:
    """POST ``body``; (status, content type, body)."""
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read()


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str, bytes]:
    """GET; (status, content type, body)."""
    async with http.get(url, headers=headers) as response:
        return response.status, response.content_type, await response.read()


def error_code(body: bytes) -> str:
    """The errorCode of a provider-style JSON error body (which must hold nothing else)."""
    data = json.loads(body)
    assert set(data) == {"errorCode", "message"}
    return str(data["errorCode"])


async def stats(http: aiohttp.ClientSession, emulator: RunningEmulator) -> dict[str, Any]:
    """The emulator's /_emulator/stats."""
    async with http.get(f"{emulator.url}/_emulator/stats") as response:
        assert response.status == 200
        data: dict[str, Any] = await response.json()
        return data


async def set_faults(
    http: aiohttp.ClientSession, emulator: RunningEmulator, **faults: Any
) -> tuple[int, Any]:
    """POST /_emulator/faults; (status, JSON answer)."""
    async with http.post(f"{emulator.url}/_emulator/faults", json=faults) as response:
        return response.status, await response.json()


async def key_status(
    http: aiohttp.ClientSession, emulator: RunningEmulator, token: str, resource: str = "res-1"
) -> tuple[int, str | None]:
    """Fetch a key with ``token``; (status, errorCode or None on success)."""
    status, _, body = await get(
        http, f"{emulator.url}/keys/{resource}/{KEY_ID}", **{"X-Drm-Token": token}
    )
    return status, (error_code(body) if status != 200 else None)


def emulate_help(kind: str) -> str:
    """`drm-gateway emulate KIND --help` run as a user would: its output (exit 0 asserted)."""
    done = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "emulate", kind, "--help"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def parse(*argv: str) -> argparse.Namespace:
    """Parse a command line with an argparse parser that only knows ``emulate``."""
    parser = argparse.ArgumentParser(prog="drm-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the key API (tests/dev/test_emulator_keys.py) -----------------------------------------------

LEGACY_KEY_API_TOKEN = "test-legacy-key-api-token"
INCOMING_KEY_API_TOKEN = "test-incoming-key-api-token"
CPIX_NS = "urn:dashif:org:cpix"
PSKC_NS = "urn:ietf:params:xml:ns:keyprov:pskc"


def bearer(token: str) -> dict[str, str]:
    """The key API's Authorization header."""
    return {"Authorization": f"Bearer {token}"}


def kid_uuid(kid_hex: str) -> str:
    """A 32-hex key id in CPIX's UUID form."""
    return str(uuid.UUID(hex=kid_hex))


def cpix_document(content_id: str | None, keys: dict[str, bytes | None]) -> bytes:
    """A SPEKE v2-style CPIX 2.3 request: one ContentKey per kid (hex), with Data when a key is
    given, plus a DRMSystemList and ContentKeyUsageRuleList the emulator must keep as they are."""
    content_keys = []
    for kid_hex, key in keys.items():
        data = (
            "<cpix:Data><pskc:Secret><pskc:PlainValue>"
            + base64.b64encode(key).decode()
            + "</pskc:PlainValue></pskc:Secret></cpix:Data>"
            if key is not None
            else ""
        )
        content_keys.append(
            f'<cpix:ContentKey kid="{kid_uuid(kid_hex)}" commonEncryptionScheme="cenc">'
            f"{data}</cpix:ContentKey>"
        )
    content_id_attr = f' contentId="{content_id}"' if content_id is not None else ""
    first = kid_uuid(next(iter(keys)))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<cpix:CPIX{content_id_attr} version="2.3" xmlns:cpix="{CPIX_NS}" '
        f'xmlns:pskc="{PSKC_NS}" xmlns:speke="urn:aws:amazon:com:speke">\n'
        f"  <cpix:ContentKeyList>{''.join(content_keys)}</cpix:ContentKeyList>\n"
        "  <cpix:DRMSystemList>"
        f'<cpix:DRMSystem kid="{first}" systemId="edef8ba9-79d6-4ace-a3c8-27dcd51d21ed">'
        "<cpix:PSSH/><cpix:ContentProtectionData/></cpix:DRMSystem></cpix:DRMSystemList>\n"
        "  <cpix:ContentKeyUsageRuleList>"
        f'<cpix:ContentKeyUsageRule kid="{first}" intendedTrackType="ALL"/>'
        "</cpix:ContentKeyUsageRuleList>\n"
        "</cpix:CPIX>\n"
    ).encode()


def cpix_keys(answer: bytes) -> dict[str, bytes]:
    """kid (32 hex) -> key of every ContentKey in a CPIX answer (each must carry a key)."""
    root = ET.fromstring(answer)  # the emulator's own answer: no untrusted XML here
    keys: dict[str, bytes] = {}
    for element in root.iter(f"{{{CPIX_NS}}}ContentKey"):
        value = element.find(f"{{{CPIX_NS}}}Data/{{{PSKC_NS}}}Secret/{{{PSKC_NS}}}PlainValue")
        assert value is not None and value.text
        keys[uuid.UUID(element.attrib["kid"]).hex] = base64.b64decode(value.text, validate=True)
    return keys


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """Any request; (status, content type, body)."""
    async with http.request(method, url, data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read()
