"""Which network addresses a catalog-chosen URL may reach: hosts parsed as readers parse them.

A remote STAC catalog decides which URLs terracube's workers open, so a host is judged
by the address a reader would connect to, not by its spelling. `host_address` reads a
host the way curl, GDAL and the C library do: glibc's `inet_aton` forms (`0x7f000001`,
`0177.0.0.1`, `127.1`, `2130706433`) and IPv6 with an IPv4 address inside (mapped,
compatible, 6to4, NAT64). `refusal` names why an address is not a public one:
loopback, unspecified, private (RFC 1918, unique-local), link-local, carrier-grade NAT,
multicast, reserved or documentation ranges, and the cloud metadata services.
`resolve_checked` resolves a name and judges every address it answers, so a name
pointing at an internal address (`127.0.0.1.nip.io`, a rebinding domain) is refused too.

An explicit allowance (`internal_hosts`: host names, addresses or CIDR networks) lets a
user read from their own network, and the tests from their loopback servers.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
"""AWS/GCP/Azure/OpenStack (169.254.169.254), ECS task metadata, AWS IPv6, Alibaba."""
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
CGNAT = ipaddress.ip_network("100.64.0.0/10")
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
"""RFC 1918 and IPv6 unique-local: the networks behind a cluster's workers."""
NAT64 = ipaddress.ip_network("64:ff9b::/96")
_INET_ATON_CHARS = frozenset(string.hexdigits + "xX.")

Resolver = Callable[[str, int], Sequence[str]]
"""host, port -> the addresses (as text) a connection could use."""


class UnsafeHostError(ValueError):
    """A host (or what it resolves to) that the policy does not let a reader reach."""


def host_address(host: str) -> IPAddress | None:
    """The address a literal host denotes, as readers parse it; None for a name."""
    text = host.strip("[]").lower().rstrip(".")
    try:
        return _plain(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text and set(text) <= _INET_ATON_CHARS and any(c.isdigit() for c in text):
        try:  # the C library's parser: the one curl and GDAL's resolver calls use
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _plain(ip: IPAddress) -> IPAddress:
    """An IPv6 address that carries an IPv4 one, as that IPv4 address."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        return ipaddress.IPv4Address(int(ip))
    return ip


def refusal(ip: IPAddress) -> str | None:
    """Why a reader must not connect to `ip` by default; None for a public address."""
    ip = _plain(ip)
    if ip in METADATA_ADDRESSES:
        return "it is a cloud metadata service"
    if ip.is_loopback:
        return "it is this machine (loopback)"
    if ip.is_unspecified:
        return "it is the unspecified address (this machine)"
    if ip.is_link_local:
        return "it is a link-local address"
    if ip.is_multicast:
        return "it is a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "it is carrier-grade NAT space (100.64.0.0/10)"
    if any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version):
        return "it is a private network address (RFC 1918 / unique-local)"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "it is a reserved, non-public address"
    return None


def name_refusal(host: str) -> str | None:
    """Why a host *name* is refused without resolving it (None: resolve and judge)."""
    name = host.lower().rstrip(".")
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return "it names this machine (loopback)"
    if name in METADATA_NAMES:
        return "it names a cloud metadata service"
    return None


@dataclass(frozen=True)
class InternalAllowance:
    """Internal hosts a user allows anyway: names, `.suffix` names, addresses, CIDRs."""

    entries: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for entry in self.entries:
            if "/" in entry:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise ValueError(
                        f"allowed host {entry!r} is neither a host nor a CIDR network"
                    ) from None

    def allows(self, host: str, ip: IPAddress | None) -> bool:
        name = host.lower().rstrip(".").strip("[]")
        for entry in self.entries:
            if "/" in entry:
                if ip is not None and ip in ipaddress.ip_network(entry, strict=False):
                    return True
            elif (
                name == entry
                or (entry.startswith(".") and name.endswith(entry))
                or (ip is not None and host_address(entry) == ip)
            ):
                return True
        return False


NEVER = ("metadata", "link-local")
"""Refusals no allowance lifts: a metadata service hands out the machine's credentials."""


def _allowed(reason: str, allowance: InternalAllowance, host: str, ip: IPAddress | None) -> bool:
    return not any(word in reason for word in NEVER) and allowance.allows(host, ip)


def judge(host: str, allowance: InternalAllowance) -> str | None:
    """Why `host` as written may not be reached (None: it may, or it is a name to resolve)."""
    ip = host_address(host)
    reason = refusal(ip) if ip is not None else name_refusal(host)
    if reason is None or _allowed(reason, allowance, host, ip):
        return None
    return reason


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def resolve_checked(
    host: str,
    port: int,
    allowance: InternalAllowance,
    resolver: Resolver = system_resolver,
) -> list[IPAddress]:
    """Every address `host` resolves to, each judged; raises UnsafeHostError naming the
    first refused one (any refused answer refuses the host: a rebinding name answers a
    public and an internal address in turn)."""
    reason = judge(host, allowance)
    if reason is not None:
        raise UnsafeHostError(f"host {host!r}: {reason}")
    literal = host_address(host)
    if literal is not None:
        return [literal]
    try:
        answers = list(resolver(host, port))
    except OSError as exc:
        raise UnsafeHostError(f"host {host!r} cannot be resolved ({exc})") from None
    addresses = [ip for ip in (host_address(a) for a in answers) if ip is not None]
    if not addresses:
        raise UnsafeHostError(f"host {host!r} resolves to no address")
    for ip in addresses:
        why = refusal(ip)
        if why is not None and not _allowed(why, allowance, host, ip):
            raise UnsafeHostError(f"host {host!r} resolves to {ip}: {why}")
    return addresses


def allowance_of(entries: Iterable[str] | None) -> InternalAllowance:
    return InternalAllowance(frozenset(e.strip().lower() for e in entries or () if e.strip()))
