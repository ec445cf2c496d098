"""IP allow-lists: CIDR parsing and matching for IPv4 and IPv6 (stdlib :mod:`ipaddress`)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["Network", "NetworkList", "address_in_networks", "is_loopback_host", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(
    networks: Iterable[str] | str, *, setting: str = "networks"
) -> tuple[Network, ...]:
    """Parse CIDR strings (``10.0.0.0/8``, ``::1/128``; a bare address means one host).

    A comma-separated string is accepted too.  A malformed entry raises :class:`ValueError` naming
    ``setting`` and the entry, so a configuration error points at its source.
    """
    if isinstance(networks, str):
        networks = [part for part in (p.strip() for p in networks.split(",")) if part]
    parsed = []
    for entry in networks:
        try:
            parsed.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"{setting}: {entry!r} is not an IP network (expected a.b.c.d/n or an IPv6 prefix)"
            ) from None
    return tuple(parsed)


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[::1]:8080" or "[::1]"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "1.2.3.4:8080"
        value = value.split(":", 1)[0]
    value = value.split("%", 1)[0]  # zone index
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_in_networks(address: str | None, networks: Sequence[Network]) -> bool:
    """True when ``address`` lies in one of ``networks``; False for an empty or invalid address."""
    if not address:
        return False
    parsed = _address(address)
    if parsed is None:
        return False
    return any(parsed.version == net.version and parsed in net for net in networks)


def is_loopback_host(host: str | None) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``, ``[::1]``)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class NetworkList:
    """A parsed allow-list; ``"1.2.3.4" in NetworkList(["1.2.3.0/24"])`` is True."""

    __slots__ = ("networks",)

    def __init__(self, networks: Iterable[str] | str, *, setting: str = "networks") -> None:
        self.networks = parse_networks(networks, setting=setting)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address_in_networks(address, self.networks)

    def __repr__(self) -> str:
        return f"NetworkList({[str(n) for n in self.networks]!r})"
