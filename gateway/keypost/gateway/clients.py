"""Which peers may talk to the gateway: `allowed_clients` read from text, a peer matched (pure).

The gateway has no TLS and no authentication, and it signs, decrypts and relays for whoever
connects; the peer's address is all it can go by. So the list is read strictly: addresses
and networks only (a host name would be resolved once, by someone else's DNS), and no list
that admits everyone, whichever way it is written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from keypost.core.netaddr import ip_address
from keypost.gateway.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What the gateway admits when allowed_clients is not set: the MTA beside it.
LOOPBACK_CLIENTS: tuple[Network, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"),
)

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
# "[::1]" and "[2001:db8::]/64", as Postfix's mynetworks writes IPv6
_BRACKETED = re.compile(r"\[([^\[\]]*)\](/\d+)?")


def _network(text: str) -> Network:
    where = f"allowed_clients: {text!r}"
    bracketed = _BRACKETED.fullmatch(text)
    bare = bracketed.group(1) + (bracketed.group(2) or "") if bracketed else text
    if "%" in bare:
        raise ConfigError(f"{where}: a zone id cannot be matched (peers are compared "
                          "without it); write the address without %...")
    try:
        network: Network = ipaddress.ip_network(bare)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ConfigError(f"{where} has host bits set; write the network's first "
                              "address (192.0.2.0/24) or the one address") from None
        raise ConfigError(f"{where} is no IP address or network (like 192.0.2.10, "
                          "2001:db8::/64; host names are not resolved)") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        # peers are read with IPv4-mapped addresses as IPv4 (netaddr.ip_address), so entries
        # are too: ::ffff:192.0.2.0/120 is 192.0.2.0/24
        mapped = network.network_address.ipv4_mapped
        assert mapped is not None
        network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    if network.num_addresses == 1 and network.network_address.is_unspecified:
        raise ConfigError(f"allowed_clients: {network.network_address} is no client address "
                          "(in listen it means any); list the MTA's addresses")
    return network


def _catch_all(networks: tuple[Network, ...]) -> str | None:
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    families: list[tuple[str, list[Network], list[Network]]] = [
        ("IPv4", list(v4), list(ipaddress.collapse_addresses(v4))),
        ("IPv6", list(v6), list(ipaddress.collapse_addresses(v6))),
    ]
    for name, given, collapsed in families:
        whole = [n for n in given if n.prefixlen == 0]
        if whole:
            return f"allowed_clients: {whole[0]} admits every {name} address"
        if any(n.prefixlen == 0 for n in collapsed):  # 0.0.0.0/1 + 128.0.0.0/1, say
            return f"allowed_clients: the entries together admit every {name} address"
    return None


def parse_allowed_clients(value: object) -> tuple[Network, ...]:
    """The networks a TOML `allowed_clients` list names, in its order. Raises ConfigError
    (one line, naming the entry) for anything but a non-empty list of addresses or
    networks, and for a list that admits every address of IPv4 or IPv6."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError("allowed_clients: expected a list of IP addresses or networks, "
                          'like ["192.0.2.10", "2001:db8::/64"]')
    if not value:
        raise ConfigError("allowed_clients: empty, so nobody could connect; list the MTA's "
                          "addresses, or remove the setting (loopback only)")
    networks = tuple(_network(v) for v in value)
    problem = _catch_all(networks)
    if problem:
        raise ConfigError(f"{problem}: the gateway has no TLS or authentication, so list "
                          "only the MTA's addresses")
    return networks


def admits(networks: Iterable[Network], peer_host: object) -> bool:
    """Whether a peer (the host of a socket's peername) is in `networks`. An IPv4-mapped
    peer (a dual-stack socket's IPv4 client) counts as its IPv4 address; a zone id is
    ignored; anything that is no IP address is refused."""
    address = ip_address(peer_host) if isinstance(peer_host, str) else None
    return address is not None and any(address in n for n in networks)


def describe_clients(networks: tuple[Network, ...]) -> str:
    """The list as check-config prints it: single addresses without /32 or /128."""
    text = ", ".join(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)
                     for n in networks)
    return text + (" (loopback only, the default)" if networks == LOOPBACK_CLIENTS else "")
