"""The client address behind trusted proxies: right-most untrusted X-Forwarded-For entry,
the peer when the peer is not trusted, IPv4 and IPv6, malformed entries never trusted."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.access.client_address import TrustedProxies, parse_network

NETWORKS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
K8S = TrustedProxies(NETWORKS)


@pytest.mark.parametrize(
    ("peer", "xff", "client", "upstream"),
    [
        # The peer is trusted: its entry is believed, the player's own text before it is not.
        ("10.0.0.9", ["203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.9"),
        ("10.0.0.9", ["1.1.1.1, 203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.9"),
        # Several trusted hops, as one header or repeated headers: right to left.
        (
            "10.0.0.9",
            ["1.1.1.1, 203.0.113.7, 10.0.0.5"],
            "203.0.113.7",
            "203.0.113.7, 10.0.0.5, 10.0.0.9",
        ),
        (
            "10.0.0.9",
            ["1.1.1.1, 203.0.113.7", "10.0.0.5"],
            "203.0.113.7",
            "203.0.113.7, 10.0.0.5, 10.0.0.9",
        ),
        # A player that spoofs a trusted address is still found right of it.
        ("10.0.0.9", ["10.0.0.1, 203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.9"),
        # Every hop trusted: the left-most one is the client.
        ("10.0.0.9", ["10.1.2.3, 10.0.0.5"], "10.1.2.3", "10.1.2.3, 10.0.0.5, 10.0.0.9"),
        # A trusted peer without the header is the client.
        ("10.0.0.9", [], "10.0.0.9", "10.0.0.9"),
        # An untrusted peer is the client, whatever it writes.
        ("203.0.113.7", ["198.51.100.1"], "203.0.113.7", "203.0.113.7"),
        ("203.0.113.7", ["10.0.0.5"], "203.0.113.7", "203.0.113.7"),
        # IPv6, in canonical form whatever the spelling.
        ("fd00::1", ["2001:DB8:0:0::7"], "2001:db8::7", "2001:db8::7, fd00::1"),
        ("fd00::1", ["2001:db8::7, fd12::5"], "2001:db8::7", "2001:db8::7, fd12::5, fd00::1"),
        ("2001:db8::9", ["fd00::5"], "2001:db8::9", "2001:db8::9"),
        # Mixed families, and an IPv4 peer seen through a dual-stack socket.
        ("fd00::1", ["203.0.113.7, 10.0.0.5"], "203.0.113.7", "203.0.113.7, 10.0.0.5, fd00::1"),
        ("::ffff:10.0.0.9", ["203.0.113.7"], "203.0.113.7", "203.0.113.7, 10.0.0.9"),
    ],
)
def test_client_is_the_right_most_untrusted_entry(
    peer: str, xff: list[str], client: str, upstream: str
) -> None:
    assert K8S.resolve(peer, xff) == (client, upstream)


@pytest.mark.parametrize(
    ("xff", "client", "upstream"),
    [
        (["garbage"], "10.0.0.9", "10.0.0.9"),
        ([""], "10.0.0.9", "10.0.0.9"),
        (["203.0.113.7:443"], "10.0.0.9", "10.0.0.9"),  # ports are not part of XFF
        (["[2001:db8::7]"], "10.0.0.9", "10.0.0.9"),
        (["203.0.113.7,, 10.0.0.5"], "10.0.0.5", "10.0.0.5, 10.0.0.9"),
        (["203.0.113.7, unknown, 10.0.0.5"], "10.0.0.5", "10.0.0.5, 10.0.0.9"),
        (["x" * 5000], "10.0.0.9", "10.0.0.9"),
    ],
)
def test_malformed_entry_stops_at_the_last_trusted_hop(
    xff: list[str], client: str, upstream: str
) -> None:
    assert K8S.resolve("10.0.0.9", xff) == (client, upstream)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    direct = TrustedProxies()
    assert not direct
    assert direct.resolve("127.0.0.1", ["203.0.113.7"]) == ("127.0.0.1", "127.0.0.1")
    assert direct.resolve(None, ["203.0.113.7"]) == ("unknown", "unknown")
    assert K8S.resolve(None, ["203.0.113.7"]) == ("unknown", "unknown")


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        (" 192.168.1.0/24 ", "192.168.1.0/24"),
        ("127.0.0.1", "127.0.0.1/32"),
        ("fd00::/8", "fd00::/8"),
        ("::1", "::1/128"),
    ],
)
def test_parse_network(text: str, network: str) -> None:
    assert parse_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("10.0.0.1/8", "'10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
        ("fd00::1/8", "'fd00::1/8' has host bits set (did you mean fd00::/8?)"),
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IPv4 or IPv6 address or CIDR"),
        ("ingress", "'ingress' is not an IPv4 or IPv6 address or CIDR"),
        ("", "'' is not an IPv4 or IPv6 address or CIDR"),
    ],
)
def test_parse_network_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(text)
    assert str(info.value) == problem


_ENTRY = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.5", "fd00::5", "", " ", "unknown", "1.2.3.4:80"]),
    st.text(max_size=20),
)


@given(peer=st.ip_addresses().map(str), entries=st.lists(_ENTRY, max_size=6))
def test_resolution_never_fails_and_never_invents_an_address(peer: str, entries: list[str]) -> None:
    xff = [", ".join(entries)] if entries else []
    client, upstream = K8S.resolve(peer, xff)
    hop = ipaddress.ip_address(peer)
    hop = getattr(hop, "ipv4_mapped", None) or hop
    if not any(hop in network for network in NETWORKS):
        assert (client, upstream) == (peer, peer)  # a player cannot choose its bucket
    assert upstream.split(", ")[0] == client
    # Always an address in canonical form, never the player's raw text.
    assert str(ipaddress.ip_address(client)) == client


def test_many_distinct_peers_are_remembered_within_a_bound() -> None:
    proxies = TrustedProxies(NETWORKS)
    for i in range(10_000):
        assert proxies.resolve(f"203.0.{i // 256}.{i % 256}", ["10.0.0.1"])[0].startswith("203.")
    assert proxies.resolve("10.0.0.9", ["203.0.113.7"])[0] == "203.0.113.7"
    assert len(proxies._peers) <= 4096
