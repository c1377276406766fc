"""The emulated provider's stored keys: <resource id, key id, 16-byte key> triplets.

The legacy and incoming emulators derive keys from a seed (``keys.derive_key``) for the
resources their ``resources`` setting knows; this store holds the keys they *created* (CPIX
key generation) or *received* (CPIX with keys, key ingest), which take precedence. The
resource id is the one this provider's URLs name (``/license/{drm}/{resource}``), not the
derivation id.

With a file the store is an append-only JSON-lines file, one triplet a line::

    {"resource_id": "res-1", "kid": "<32 lowercase hex>", "key": "<standard base64>"}

Each accepted write is appended and fsync'd before it is answered (and before the triplet is
served), so an acknowledged key survives a crash. At start the file is read back: a last line
without its newline is what an interrupted write leaves, so it is ignored with a warning and cut
off (it was never acknowledged); anything else malformed, or two lines giving one key id two
keys, is a startup error naming the line (never a key). The file is created ``0600`` and locked
(``flock``) while an emulator has it open, so two emulators cannot interleave their writes.
Without a file the store lives in memory only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.dev.emulator.errors import EmulatorError

KEY_SIZE = 16
_KID_HEX = re.compile(r"[0-9a-f]{32}")
_FIELDS = {"resource_id", "kid", "key"}

log = logging.getLogger(__name__)


class KeyConflict(Exception):
    """A key id already holds a different key (or was given two keys in one request)."""

    def __init__(self, resource: str, kid: str) -> None:
        super().__init__(f"key id {kid} of resource {resource!r} already has a different key")
        self.resource = resource
        self.kid = kid


@dataclass(frozen=True)
class StoreOutcome:
    """What one ``KeyStore.put`` did.

    ``keys``: every key id given or asked, with the key it now has; ``stored``: the given key
    ids newly stored; ``already_present``: given key ids the store already had with that very
    key; ``generated``: asked key ids that got a new random key.
    """

    keys: dict[str, bytes]
    stored: tuple[str, ...]
    already_present: int
    generated: tuple[str, ...]


def encode_key(key: bytes) -> str:
    """A key as standard base64 (with padding)."""
    return base64.b64encode(key).decode("ascii")


def decode_key(text: object) -> bytes:
    """A standard-base64 16-byte key; ValueError (naming no value) on anything else."""
    if not isinstance(text, str):
        raise ValueError("the key must be a base64 string")
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ValueError("the key is not standard base64") from None
    if len(key) != KEY_SIZE:
        raise ValueError(f"the key must be {KEY_SIZE} bytes")
    return key


class KeyStore:
    """Triplets in memory, mirrored to an append-only JSON-lines file when one is given.

    Reads are plain dict look-ups. Writes go through ``put``, serialized by a lock so that a
    check, the durable append and the memory update happen as one step.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._keys: dict[str, dict[str, bytes]] = {}
        self._count = 0
        self._lock = asyncio.Lock()
        self._fd: int | None = None
        self._size = 0
        if path is not None:
            self._open(path)

    # -- reading -------------------------------------------------------------------------------

    def get(self, resource: str, kid: str) -> bytes | None:
        """The stored key of ``kid`` (lowercase hex) for ``resource``, or None."""
        return self._keys.get(resource, {}).get(kid)

    def keys_of(self, resource: str) -> dict[str, bytes]:
        """Every stored key of ``resource`` by key id, oldest first (a copy)."""
        return dict(self._keys.get(resource, {}))

    def has_resource(self, resource: str) -> bool:
        """True when at least one key of ``resource`` is stored."""
        return resource in self._keys

    @property
    def resource_count(self) -> int:
        """How many resources have stored keys."""
        return len(self._keys)

    def __len__(self) -> int:
        return self._count

    # -- writing -------------------------------------------------------------------------------

    async def put(
        self,
        resource: str,
        given: Sequence[tuple[str, bytes]] = (),
        wanted: Iterable[str] = (),
        *,
        generate: bool = False,
    ) -> StoreOutcome:
        """Store the ``given`` (kid, key) pairs and resolve the ``wanted`` key ids, atomically.

        A given kid that already has a different key (stored, or given twice) raises
        KeyConflict and nothing of the request is stored. A wanted kid gets its stored (or
        just given) key, else, with ``generate``, a new random key that is stored; without
        ``generate`` an unknown wanted kid is left out of ``keys``. Key ids are lowercase hex.
        """
        async with self._lock:
            current = self._keys.get(resource, {})
            keys: dict[str, bytes] = {}
            for kid, key in given:
                if keys.setdefault(kid, key) != key:
                    raise KeyConflict(resource, kid)
            new: dict[str, bytes] = {}
            already = 0
            for kid, key in keys.items():
                known = current.get(kid)
                if known is None:
                    new[kid] = key
                elif known != key:
                    raise KeyConflict(resource, kid)
                else:
                    already += 1
            stored = tuple(new)
            generated: list[str] = []
            for kid in wanted:
                if kid in keys:
                    continue
                key_or_none = current.get(kid)
                if key_or_none is None and generate:
                    key_or_none = new[kid] = os.urandom(KEY_SIZE)
                    generated.append(kid)
                if key_or_none is not None:
                    keys[kid] = key_or_none
            if new:
                await self._append(resource, new)
                self._keys.setdefault(resource, {}).update(new)
                self._count += len(new)
            return StoreOutcome(keys, stored, already, tuple(generated))

    async def _append(self, resource: str, new: dict[str, bytes]) -> None:
        if self._fd is None:
            return
        data = b"".join(_line(resource, kid, key) for kid, key in new.items())
        try:
            await asyncio.to_thread(self._write_durably, self._fd, data)
        except OSError as exc:
            # No key here: the error names the file and the OS reason only.
            log.error("key store %s: write failed: %s", self.path, exc.strerror or exc)
            raise EmulatorError(
                500, "key_store_failed", "The key store could not be written."
            ) from None
        self._size += len(data)

    def _write_durably(self, fd: int, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Cut a partial write off, so the next append starts on a fresh line.
            try:
                os.ftruncate(fd, self._size)
            except OSError:
                pass
            raise

    def close(self) -> None:
        """Close the file (and release its lock); reading keeps working. Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- loading -------------------------------------------------------------------------------

    def _open(self, path: Path) -> None:
        existed = path.exists()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise ValueError(
                        f"key store {path}: the file is in use by another emulator"
                    ) from None
                raise
            size, torn = self._load(path, _read_all(fd))
            if torn:
                # Cut the torn line off so the next append does not glue onto it.
                os.ftruncate(fd, size)
                os.fsync(fd)
            self._size = size
            if not existed:
                _fsync_directory(path.parent)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _load(self, path: Path, data: bytes) -> tuple[int, bool]:
        """Read the file's triplets; (the size of its complete lines, whether a torn last
        line follows them)."""
        complete, newline, torn = data.rpartition(b"\n")
        if torn:
            log.warning(
                "key store %s: ignoring a torn last line (%d bytes) left by an interrupted write",
                path,
                len(torn),
            )
        first_line: dict[tuple[str, str], int] = {}
        lines = complete.split(b"\n") if complete else []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                resource, kid, key = _parse_line(raw)
            except ValueError as exc:
                raise ValueError(f"key store {path}: line {number}: {exc}") from None
            known = self._keys.get(resource, {}).get(kid)
            if known is None:
                self._keys.setdefault(resource, {})[kid] = key
                self._count += 1
                first_line[(resource, kid)] = number
            elif known != key:
                first = first_line[(resource, kid)]
                raise ValueError(
                    f"key store {path}: line {number}: key id {kid} of resource {resource!r} "
                    f"has a different key than on line {first}"
                )
        return len(complete) + len(newline), bool(torn)


def _line(resource: str, kid: str, key: bytes) -> bytes:
    record = {"resource_id": resource, "kid": kid, "key": encode_key(key)}
    return json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"


def _parse_line(raw: bytes) -> tuple[str, str, bytes]:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("not a JSON object") from None
    if not isinstance(record, dict) or set(record) != _FIELDS:
        raise ValueError("expected an object with exactly resource_id, kid and key")
    resource, kid = record["resource_id"], record["kid"]
    if not isinstance(resource, str) or not resource:
        raise ValueError("resource_id must be a non-empty string")
    if not isinstance(kid, str) or not _KID_HEX.fullmatch(kid):
        raise ValueError("kid must be 32 lowercase hex characters")
    return resource, kid, decode_key(record["key"])


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
