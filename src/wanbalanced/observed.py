"""The observed kernel state: a cache fed only by netlink dumps and events.

Everything here is plain data with no I/O, so the core can be tested without a
kernel. The netlink edge (`wanbalanced.netlink`) parses messages into these
types and applies them with the methods of `Snapshot`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from .defaults import is_teql_name, teql_number

# Interface flags from <linux/if.h>.
IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_POINTOPOINT = 0x10
IFF_NOARP = 0x80
IFF_MULTICAST = 0x1000
IFF_LOWER_UP = 0x10000

# The link flags sch_teql requires a slave to share with a running master
# (teql_qdisc_init); the master takes those all its slaves share when it is
# opened (teql_master_open).
TEQL_FLAGS = IFF_BROADCAST | IFF_POINTOPOINT | IFF_MULTICAST
# The flags the master takes from its slaves (FMASK in sch_teql.c): MULTICAST
# is not among them, so a teql device never has it unless set by hand.
TEQL_DERIVED_FLAGS = IFF_BROADCAST | IFF_POINTOPOINT


def flag_names(flags: int) -> str:
    """The TEQL_FLAGS among `flags`, as `ip link` names them."""
    names = [n for f, n in ((IFF_POINTOPOINT, "POINTOPOINT"), (IFF_BROADCAST, "BROADCAST"),
                            (IFF_MULTICAST, "MULTICAST")) if flags & f]
    return ",".join(names) or "none"


# Address flags: the kernel adds no prefix (connected) route for the address;
# an IPv6 address is usable at once, without duplicate address detection.
IFA_F_NOPREFIXROUTE = 0x200
IFA_F_NODAD = 0x02

RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTPROT_KERNEL = 2
RTPROT_BOOT = 3  # iproute2's default: routes added by hand
RTPROT_STATIC = 4  # pyroute2's default: the proto of the default routes older versions made
#: The rtnetlink protocol of every route wanbalanced makes: what says "ours".
#: Not among the numbers Linux's rtnetlink.h or iproute2's rt_protos assign
#: (packaging/rt_protos.d/wanbalanced.conf names it for `ip route`).
RTPROT_WANBALANCED = 119
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
RTN_UNREACHABLE = 7
#: The route types wanbalanced makes, by the name `ip route` gives them.
RTN_NAMES = {RTN_UNICAST: "unicast", RTN_BLACKHOLE: "blackhole", RTN_UNREACHABLE: "unreachable"}


@dataclass(frozen=True)
class Qdisc:
    """A device's root qdisc. `handle` 0 means the kernel's default one."""

    kind: str
    handle: int


@dataclass(frozen=True)
class LinkStats:
    """A device's 64-bit counters (IFLA_STATS64)."""

    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_errors: int = 0
    tx_errors: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class Link:
    """One network device as the kernel reports it."""

    index: int
    name: str
    flags: int
    carrier: bool
    mtu: int
    kind: str | None = None
    qdisc: Qdisc | None = None
    # IPv4 rp_filter of this device, read from /proc (None: not known).
    rp_filter: int | None = None
    stats: LinkStats | None = None

    @property
    def admin_up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def has_carrier(self) -> bool:
        """Usable for traffic: administratively up with the lower layer up.

        IFLA_CARRIER alone stays 1 on some drivers while the device is down, so
        both are required (as `ip link` shows LOWER_UP only on a running device).
        """
        return self.admin_up and self.carrier

    def attached_to(self, master: str) -> bool:
        """True when `master` (e.g. "teql0") is this device's root qdisc."""
        return self.qdisc is not None and self.qdisc.kind == master


@dataclass(frozen=True)
class Address:
    """An IPv4 or IPv6 address on a device."""

    index: int
    interface: IPv4Interface | IPv6Interface
    flags: int = 0


IPNetwork = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Route:
    """A unicast route (or one of wanbalanced's unreachable and blackhole
    ones); only the fields wanbalanced reasons about."""

    table: int
    dst: IPNetwork
    priority: int
    oif: int | None
    gateway: str | None = None
    proto: int = 0
    scope: int = 0
    tos: int = 0
    type: int = RTN_UNICAST

    @property
    def fib_key(self) -> tuple[int, IPNetwork, int, int]:
        """What the kernel's FIB considers the same route for `replace`."""
        return (self.table, self.dst, self.priority, self.tos)

    @property
    def ours(self) -> bool:
        """Made by wanbalanced (see RTPROT_WANBALANCED)."""
        return self.proto == RTPROT_WANBALANCED

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0


@dataclass(frozen=True)
class Rule:
    """A policy rule of wanbalanced's (FRA_PROTOCOL 119): from `src`, look up `table`."""

    src: IPNetwork
    table: int
    priority: int
    proto: int = RTPROT_WANBALANCED


DEFAULT_DST = IPv4Network("0.0.0.0/0")
DEFAULT_DST6 = IPv6Network("::/0")


@dataclass
class Snapshot:
    """The kernel as last seen: links, IPv4 addresses and the routes of interest.

    Routes are filtered to default routes and routes through teql devices, so a
    router holding a full BGP table does not cost memory here.
    """

    links: dict[int, Link] = field(default_factory=dict)
    addresses: set[Address] = field(default_factory=set)
    routes: set[Route] = field(default_factory=set)
    rules: set[Rule] = field(default_factory=set)  # ours only (FRA_PROTOCOL 119)
    # net.ipv4.conf.all.rp_filter: the effective value is max(all, device).
    all_rp_filter: int | None = None
    # name -> ifindex, kept by put_link and drop_link: the core looks devices
    # up by name many times per plan. `links` is written only through them.
    _by_name: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def link(self, name: str) -> Link | None:
        index = self._by_name.get(name)
        return self.links.get(index) if index is not None else None

    def teql_devices(self) -> list[str]:
        found = sorted((k, l.name) for l in self.links.values() if (k := teql_number(l.name)) is not None)
        return [name for _, name in found]

    def addresses_of(self, index: int) -> list[Address]:
        return [a for a in self.addresses if a.index == index]

    def routes_via(self, index: int) -> list[Route]:
        return [r for r in self.routes if r.oif == index]

    def default_routes(self, table: int, version: int = 4) -> list[Route]:
        """The default routes of one IP version in `table`."""
        return [r for r in self.routes if r.table == table and r.is_default and r.dst.version == version]

    def our_default_routes(self, index: int, metric: int, table: int, version: int = 4) -> list[Route]:
        """The default routes wanbalanced keeps: through the device, without a
        gateway, with that metric in that table. Any protocol: one made by
        hand (the seed's) or by an older wanbalanced (proto static) through
        the equalizer is adopted (see core._plan_default_route)."""
        return [r for r in self.default_routes(table, version)
                if r.oif == index and r.priority == metric and r.gateway is None and r.type == RTN_UNICAST]

    def our_routes(self) -> list[Route]:
        """Every route that carries wanbalanced's protocol number."""
        return [r for r in self.routes if r.ours]

    # -- updates, from events or from our own successful writes --------------

    def put_link(self, link: Link) -> None:
        old = self.links.get(link.index)
        if old is not None:
            if link.qdisc is None:
                link = dataclasses.replace(link, qdisc=old.qdisc)
            if link.rp_filter is None:
                link = dataclasses.replace(link, rp_filter=old.rp_filter)
            if link.stats is None:
                link = dataclasses.replace(link, stats=old.stats)
            if old.admin_up and not link.admin_up:
                # Kernel quirk: IPv4 routes through a device that goes down are
                # flushed without any RTM_DELROUTE notification.
                self.routes = {r for r in self.routes if r.oif != link.index}
        self.links[link.index] = link
        if old is not None and old.name != link.name:
            self._forget_name(old.name, link.index)  # renamed
        self._by_name[link.name] = link.index

    def drop_link(self, index: int) -> None:
        # Deleting a device destroys its qdiscs, addresses and routes, and the
        # kernel notifies none of the routes' removal.
        old = self.links.pop(index, None)
        if old is not None:
            self._forget_name(old.name, index)
        self.addresses = {a for a in self.addresses if a.index != index}
        self.routes = {r for r in self.routes if r.oif != index}

    def _forget_name(self, name: str, index: int) -> None:
        """The device `index` no longer has `name`; another one may (events can
        show two devices with one name for a moment, the old scan found either)."""
        if self._by_name.get(name) == index:
            del self._by_name[name]
            for link in self.links.values():
                if link.name == name:
                    self._by_name[name] = link.index
                    break

    def put_qdisc(self, index: int, qdisc: Qdisc | None) -> None:
        link = self.links.get(index)
        if link is not None:
            self.links[index] = dataclasses.replace(link, qdisc=qdisc)

    def set_rp_filter(self, index: int, value: int | None) -> None:
        link = self.links.get(index)
        if link is not None:
            self.links[index] = dataclasses.replace(link, rp_filter=value)

    def put_address(self, address: Address) -> None:
        self.addresses = {
            a for a in self.addresses
            if (a.index, a.interface) != (address.index, address.interface)
        }
        self.addresses.add(address)

    def drop_address(self, address: Address) -> None:
        self.addresses = {
            a for a in self.addresses
            if (a.index, a.interface) != (address.index, address.interface)
        }

    def wants_route(self, route: Route) -> bool:
        """Whether a route is of interest (and so kept in the cache)."""
        if route.table == RT_TABLE_LOCAL:
            return False
        if route.is_default or route.ours:
            return True
        link = self.links.get(route.oif) if route.oif is not None else None
        return link is not None and is_teql_name(link.name)

    def put_route(self, route: Route, replace: bool = False) -> None:
        if not self.wants_route(route):
            return
        if replace:
            self.routes = {r for r in self.routes if r.fib_key != route.fib_key}
        self.routes.add(route)

    def drop_route(self, route: Route) -> None:
        self.routes = {
            r for r in self.routes
            if (r.fib_key, r.oif, r.gateway, r.type) != (route.fib_key, route.oif, route.gateway, route.type)
        }
