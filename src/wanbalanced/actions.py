"""Actions: the kernel changes the core asks for.

Each action is a small frozen value. `command()` renders the equivalent
iproute2/sysctl command line, which is what `wanbalanced plan` prints and what
the daemon logs before every kernel write.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

from .observed import RT_TABLE_MAIN


def _table(table: int) -> str:
    return "" if table == RT_TABLE_MAIN else f" table {table}"


def _metric(metric: int) -> str:
    return "" if metric == 0 else f" metric {metric}"


def sysctl_ifname(name: str) -> str:
    """The device name in a sysctl(8) key: '.' separates the key's parts, so a
    '.' inside a device name is written '/' (eth0.100 -> eth0/100). For the
    rendered command only; the file under /proc/sys keeps the real name."""
    return name.replace(".", "/")


@dataclass(frozen=True)
class Action:
    """Base of all actions. `reason` says why, for the log."""

    reason: str

    #: What the action sets, for drift accounting: ("qdisc", "wan0"), ...
    kind = ""

    @property
    def device(self) -> str:
        raise NotImplementedError

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.device)

    def command(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Attach(Action):
    """Make the equalizer the slave's root qdisc.

    `replace` is needed when another explicit qdisc is root: `tc qdisc add`
    only displaces the kernel's default qdisc (handle 0).
    """
    kind = "qdisc"

    equalizer: str
    slave: str
    index: int
    replace: bool = False

    @property
    def device(self) -> str:
        return self.slave

    def command(self) -> str:
        verb = "replace" if self.replace else "add"
        return f"tc qdisc {verb} dev {self.slave} root {self.equalizer}"


@dataclass(frozen=True)
class Detach(Action):
    """Remove the equalizer from the slave. Naming the kind makes it safe: the
    kernel refuses (EINVAL) if the root qdisc has meanwhile become another one."""
    kind = "qdisc"

    equalizer: str
    slave: str
    index: int

    @property
    def device(self) -> str:
        return self.slave

    def command(self) -> str:
        return f"tc qdisc del dev {self.slave} root {self.equalizer}"


@dataclass(frozen=True)
class OnDevice(Action):
    """An action on one device, named and indexed as the kernel knows it."""

    name: str
    index: int

    @property
    def device(self) -> str:
        return self.name


@dataclass(frozen=True)
class LinkUp(OnDevice):
    kind = "link"
    def command(self) -> str:
        return f"ip link set {self.name} up"


@dataclass(frozen=True)
class AddAddress(OnDevice):
    """Add the equalizer's local address with noprefixroute, so the kernel never
    creates the connected route the seed deletes by hand."""
    kind = "address"

    address: IPv4Interface

    def command(self) -> str:
        return f"ip addr add {self.address.with_prefixlen} dev {self.name} noprefixroute"


@dataclass(frozen=True)
class DeleteAddress(OnDevice):
    """Remove an address wanbalanced added and the configuration no longer has."""
    kind = "address"

    address: IPv4Interface

    def command(self) -> str:
        return f"ip addr del {self.address.with_prefixlen} dev {self.name}"


@dataclass(frozen=True)
class DeleteConnectedRoute(OnDevice):
    kind = "connected_route"
    dst: IPv4Network
    table: int = RT_TABLE_MAIN

    def command(self) -> str:
        return (
            f"ip route del {self.dst.with_prefixlen} dev {self.name}"
            f" proto kernel scope link{_table(self.table)}"
        )


@dataclass(frozen=True)
class _DefaultRoute(OnDevice):
    kind = "route"
    metric: int
    table: int

    def _route(self) -> str:
        return f"default dev {self.name}{_metric(self.metric)}{_table(self.table)}"


@dataclass(frozen=True)
class ReplaceDefaultRoute(_DefaultRoute):
    def command(self) -> str:
        return f"ip route replace {self._route()}"


@dataclass(frozen=True)
class DeleteDefaultRoute(_DefaultRoute):
    def command(self) -> str:
        return f"ip route del {self._route()}"


@dataclass(frozen=True)
class SetRpFilter(OnDevice):
    kind = "rp_filter"
    value: int

    def command(self) -> str:
        return f"sysctl -w net.ipv4.conf.{sysctl_ifname(self.name)}.rp_filter={self.value}"
