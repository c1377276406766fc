"""The player's address behind trusted proxies (pure; no web).

Behind an ingress every connection comes from the ingress, so the peer address says nothing
about the player. Each proxy appends the address it was connected from to X-Forwarded-For;
only the entries appended by proxies we trust are facts, the rest is whatever the player
wrote. So the walk goes right to left from the peer: while the hop is trusted, its claim
(the entry before it) is believed; the first untrusted hop is the client. A peer that is not
trusted is the client itself and its X-Forwarded-For is ignored, so a player can never pick
the address its rate-limit bucket is keyed on.

An entry that is not an IP address (a trusted proxy would never write one) stops the walk at
the last trusted hop: that proxy is taken as the client, which is safe (never an address the
player chose), only coarser.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

UNKNOWN = "unknown"  # no peer address (e.g. a Unix socket)
_MAX_PEERS = 4096  # peers remembered: an ingress has a few; direct players are many
_V4_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:a.b.c.d


def parse_network(text: str) -> Network:
    """A CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address; ValueError saying what is wrong.

    Host bits set (`10.0.0.1/8`) are refused rather than silently widened or narrowed.
    """
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        pass
    try:
        wider = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address or CIDR") from None
    raise ValueError(f"{text!r} has host bits set (did you mean {wider}?)")


def _int_ranges(networks: Iterable[Network], version: int) -> tuple[tuple[int, int], ...]:
    """(network, netmask) as integers for the networks of one IP version."""
    return tuple((int(n.network_address), int(n.netmask)) for n in networks if n.version == version)


def _parse(text: str) -> tuple[str, bytes] | None:
    """(canonical text, packed bytes) of an IP address; None when `text` is not one.

    inet_pton rather than ipaddress: a tenth of the cost, and this runs per request.
    """
    text = text.strip()
    try:
        if ":" not in text:
            return text, inet_pton(AF_INET, text)  # strict dotted quad: already canonical
        packed = inet_pton(AF_INET6, text)
    except OSError:
        return None
    if packed[:12] == _V4_MAPPED:  # a dual-stack socket's IPv4 peer: match it as IPv4
        packed = packed[12:]
        return inet_ntop(AF_INET, packed), packed
    return inet_ntop(AF_INET6, packed), packed


class TrustedProxies:
    """Resolves the client address and the X-Forwarded-For chain to pass upstream."""

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        networks = tuple(networks)
        # Keyed by packed address length (4 or 16 bytes), as integers: a membership test is
        # one AND per range instead of ipaddress's object comparisons.
        self._ranges = {4: _int_ranges(networks, 4), 16: _int_ranges(networks, 6)}
        self._any = bool(networks)
        # peer -> its canonical form if trusted, else None: peers repeat on every request.
        self._peers: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        return self._any

    def _trusts(self, packed: bytes) -> bool:
        value = int.from_bytes(packed, "big")
        for network, mask in self._ranges[len(packed)]:  # a loop: any() costs 3x here
            if value & mask == network:
                return True
        return False

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> tuple[str, str]:
        """(client address, X-Forwarded-For to send upstream) for a connection from `peer`
        carrying these X-Forwarded-For header values.

        The chain sent upstream is the client, the trusted hops, then the peer: entries the
        player wrote before its own address are dropped.
        """
        peer = peer or UNKNOWN
        if not self._any:  # the common direct case costs nothing
            return peer, peer
        trusted_peer = self._trusted_peer(peer)
        if trusted_peer is None:
            return peer, peer
        chain = [trusted_peer]
        # Repeated headers are one comma-separated list, in order.
        entries = ",".join(forwarded_for).split(",") if forwarded_for else ()
        for entry in reversed(entries):
            claimed = _parse(entry)
            if claimed is None:
                break
            chain.append(claimed[0])
            if not self._trusts(claimed[1]):
                break
        return chain[-1], ", ".join(reversed(chain))

    def _trusted_peer(self, peer: str) -> str | None:
        try:
            return self._peers[peer]
        except KeyError:
            pass
        hop = _parse(peer)
        verdict = hop[0] if hop is not None and self._trusts(hop[1]) else None
        if len(self._peers) >= _MAX_PEERS:
            self._peers.clear()
        self._peers[peer] = verdict
        return verdict
