"""CIDR allow-lists: real prefix matching for IPv4 and IPv6 (weakness W9 fixed)."""

from __future__ import annotations

import pytest

from plugit_core.networks import NetworkList, address_in_networks, parse_networks
from plugit_core.service import addressInNetwork


@pytest.mark.parametrize(
    ("address", "network", "inside"),
    [
        # The W9 counter-examples: the original got both wrong.
        pytest.param("10.0.16.1", "10.0.0.0/20", False, id="w9-10.0.16.1-outside-/20"),
        pytest.param("10.0.15.255", "10.0.0.0/20", True, id="w9-last-address-of-/20"),
        pytest.param("172.20.0.1", "172.16.0.0/12", True, id="w9-172.20.0.1-inside-/12"),
        pytest.param("172.32.0.1", "172.16.0.0/12", False, id="w9-172.32.0.1-outside-/12"),
        pytest.param("192.168.42.7", "192.168.42.0/24", True, id="octet-/24"),
        pytest.param("192.168.43.7", "192.168.42.0/24", False, id="octet-/24-outside"),
        pytest.param("192.168.1.130", "192.168.1.128/25", True, id="/25-inside"),
        pytest.param("192.168.1.127", "192.168.1.128/25", False, id="/25-outside"),
        pytest.param("8.8.8.8", "0.0.0.0/0", True, id="slash-0-matches-everything"),
        pytest.param("127.0.0.1", "127.0.0.1/32", True, id="/32-itself"),
        pytest.param("127.0.0.2", "127.0.0.1/32", False, id="/32-neighbour"),
        pytest.param("127.0.0.1", "127.0.0.1", True, id="bare-address-is-a-host"),
        pytest.param("127.0.0.2", "127.0.0.1", False, id="bare-address-neighbour"),
        pytest.param("10.1.2.3", "10.1.2.0/8", True, id="host-bits-set-accepted"),
        pytest.param("::1", "::1/128", True, id="ipv6-loopback"),
        pytest.param("::2", "::1/128", False, id="ipv6-loopback-neighbour"),
        pytest.param("2001:db8::1", "2001:db8::/32", True, id="ipv6-/32"),
        pytest.param("2001:db9::1", "2001:db8::/32", False, id="ipv6-/32-outside"),
        pytest.param("2001:db8:0:0:8000::1", "2001:db8::/65", False, id="ipv6-/65-outside"),
        pytest.param("2001:db8::7fff:0:0:1", "2001:db8::/65", True, id="ipv6-/65-inside"),
        pytest.param("fe80::1%eth0", "fe80::/10", True, id="ipv6-zone-index"),
        pytest.param("::ffff:10.0.0.1", "10.0.0.0/8", True, id="ipv4-mapped-ipv6"),
        pytest.param("[::1]:8080", "::1/128", True, id="ipv6-with-port"),
        pytest.param("10.0.0.1:8080", "10.0.0.0/8", True, id="ipv4-with-port"),
        pytest.param("10.0.0.1", "::/0", False, id="ipv4-not-in-ipv6-network"),
        pytest.param("::1", "0.0.0.0/0", False, id="ipv6-not-in-ipv4-network"),
        pytest.param("not-an-ip", "0.0.0.0/0", False, id="garbage-address"),
        pytest.param("", "0.0.0.0/0", False, id="empty-address"),
        pytest.param("999.1.1.1", "0.0.0.0/0", False, id="out-of-range-octet"),
        pytest.param("unknown", "0.0.0.0/0", False, id="forwarded-unknown"),
    ],
)
def test_membership(address: str, network: str, inside: bool) -> None:
    assert address_in_networks(address, parse_networks([network])) is inside
    assert (address in NetworkList([network])) is inside
    assert addressInNetwork(address, network) is inside


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param("10.0.0.0/33", id="prefix-too-long"),
        pytest.param("10.0.0/8", id="three-octets"),
        pytest.param("banana", id="word"),
        pytest.param("10.0.0.0/-1", id="negative-prefix"),
        pytest.param("::1/129", id="ipv6-prefix-too-long"),
        pytest.param("", id="empty-entry"),
    ],
)
def test_garbage_network_is_a_clear_error(entry: str) -> None:
    with pytest.raises(ValueError, match=r"PI_ALLOWED_NETWORKS: .* is not an IP network"):
        parse_networks([entry], setting="PI_ALLOWED_NETWORKS")


def test_comma_separated_string_and_whitespace() -> None:
    networks = parse_networks(" 10.0.0.0/8 , ::1/128,,")
    assert [str(n) for n in networks] == ["10.0.0.0/8", "::1/128"]


def test_empty_list_refuses_everyone() -> None:
    assert "127.0.0.1" not in NetworkList([])
    assert None not in NetworkList(["0.0.0.0/0"])
    assert 3 not in NetworkList(["0.0.0.0/0"])


def test_several_networks_any_matches() -> None:
    allowed = NetworkList(["192.168.0.0/16", "2001:db8::/32"])
    assert "192.168.5.5" in allowed
    assert "2001:db8::5" in allowed
    assert "10.0.0.1" not in allowed
    assert repr(allowed) == "NetworkList(['192.168.0.0/16', '2001:db8::/32'])"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("LOCALHOST", True, id="localhost-upper"),
        pytest.param("127.0.0.1", True, id="v4"),
        pytest.param("127.8.9.10", True, id="v4-range"),
        pytest.param("::1", True, id="v6"),
        pytest.param("[::1]", True, id="v6-brackets"),
        pytest.param("0.0.0.0", False, id="any"),
        pytest.param("10.0.0.1", False, id="private"),
        pytest.param("example.org", False, id="name"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="none"),
    ],
)
def test_is_loopback_host(host, loopback):
    from plugit_core.networks import is_loopback_host

    assert is_loopback_host(host) is loopback
