"""Direct endpoints: the operator's opt-in for datacenter nodes whose Triton
the marketplace dials itself (every other node is reached through its relay
link and registers no endpoint).

A direct endpoint is admitted only when the registry setting
``direct_endpoints`` is on, and then only at a public address: loopback,
private, link-local, multicast, reserved, unspecified, shared (CGNAT) and
cloud-metadata addresses are refused unless inside one of the operator's
``direct_allow_cidrs``. The host is resolved ONCE, here, through a resolver
seam (tests inject theirs); every address it resolves to must pass, and the
first is pinned: the stored endpoint is ``ip:port``, so a later DNS change
cannot move the node to an address nobody checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from idlegrid.common.errors import FailedPrecondition, InvalidArgument
from idlegrid.registry.settings import RegistrySettings

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host → the addresses it resolves to (strings); raises OSError when it does not.
Resolver = Callable[[str], Awaitable[list[str]]]
ADDRESSES_MAX = 16  # addresses of one host that are checked

# Cloud instance-metadata services, refused even where a CIDR would allow them.
METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "169.254.169.253", "100.100.100.200", "fd00:ec2::254",
    "fd00:ec2::23"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT


async def system_resolver(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def split(endpoint: str) -> tuple[str, int]:
    """(host, port) of an endpoint validate.endpoint() accepted."""
    host, _, port = endpoint.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def refusal(ip: IpAddress, allowed: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str | None:
    """Why ``ip`` may not be a direct endpoint, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA:
        return "a cloud metadata address"
    if any(ip in net for net in allowed):
        return None
    for what, bad in (("an unspecified", ip.is_unspecified), ("a loopback", ip.is_loopback),
                      ("a link-local", ip.is_link_local), ("a multicast", ip.is_multicast),
                      ("a private", ip.is_private), ("a reserved", ip.is_reserved),
                      ("a shared (CGNAT)", ip in _SHARED), ("a non-global", not ip.is_global)):
        if bad:
            return f"{what} address"
    return None


def pin(ip: IpAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


async def admit(endpoint: str, settings: RegistrySettings, resolver: Resolver) -> str:
    """The pinned ``ip:port`` for a direct ``endpoint``; FailedPrecondition
    when direct endpoints are off or the address is refused."""
    if not settings.direct_endpoints:
        raise FailedPrecondition("direct endpoints are disabled on this marketplace: register without an "
                                 "endpoint and link the node through a relay (idlegrid node start --relay)")
    host, port = split(endpoint)
    addresses = await _addresses(host, settings, resolver)
    allowed = tuple(ipaddress.ip_network(c, strict=False) for c in settings.direct_allow_cidrs)
    for ip in addresses:
        why = refusal(ip, allowed)
        if why is not None:
            raise FailedPrecondition(f"endpoint {endpoint!r} is {why} ({ip}): a direct endpoint must be public "
                                     "(or inside an operator-allowed network)")
    return pin(addresses[0], port)


async def _addresses(host: str, settings: RegistrySettings, resolver: Resolver) -> list[IpAddress]:
    """The host's addresses: itself when it is an IP literal, else what it
    resolves to (each once, at most ADDRESSES_MAX)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        async with asyncio.timeout(settings.resolve_timeout_ms / 1000):
            resolved = await resolver(host)
    except (OSError, TimeoutError) as e:
        raise InvalidArgument(f"endpoint host {host!r} does not resolve: {e or 'timed out'}") from None
    addresses: list[IpAddress] = []
    for a in resolved[:ADDRESSES_MAX]:
        ip = ipaddress.ip_address(a.split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise InvalidArgument(f"endpoint host {host!r} resolves to no address")
    return addresses
