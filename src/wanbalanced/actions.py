"""Actions: the kernel changes the core asks for.

Each action is a small frozen value that carries everything about itself, so
that adding one means writing one class (and the planner that emits it):

- `execute(ops)` performs it through `KernelOps`, the few typed kernel writes
  the netlink edge implements (pyroute2 stays in `netlink.py`);
- `expect(snap)` applies its known effect to the snapshot before the kernel's
  event arrives;
- `command()` renders the equivalent iproute2/sysctl command line, which is
  what `wanbalanced plan` prints and what the daemon logs before every write;
- `drifted(snap)` says in words what someone else changed, when the action
  repairs drift.

`reason` (why, for the log) and `drift` are not part of an action's identity:
the same change asked for with other words is the same action, so its retry
back-off carries over.
"""

from __future__ import annotations

import abc
import dataclasses
import errno as errnos
from dataclasses import dataclass, field
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface
from typing import ClassVar, Protocol

from .defaults import is_teql_name
from .observed import (
    DEFAULT_DST,
    IFA_F_NODAD,
    IFA_F_NOPREFIXROUTE,
    IFF_UP,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_MAIN,
    RTN_NAMES,
    RTN_UNICAST,
    RTPROT_KERNEL,
    RTPROT_WANBALANCED,
    TEQL_DERIVED_FLAGS,
    Address,
    IPNetwork,
    Link,
    Qdisc,
    Route,
    Rule,
    Snapshot,
)

#: Seconds to wait before retrying a write that raced a device's rename.
RENAME_SETTLE = 0.05


def _table(table: int) -> str:
    return "" if table == RT_TABLE_MAIN else f" table {table}"


def _metric(metric: int) -> str:
    return "" if metric == 0 else f" metric {metric}"


#: How a rendered command names wanbalanced's protocol: the number, which
#: `ip` takes with or without packaging/rt_protos.d/wanbalanced.conf.
PROTO = f" proto {RTPROT_WANBALANCED}"


def _dst(dst: IPNetwork) -> str:
    return "default" if dst.prefixlen == 0 else dst.with_prefixlen


def _ip_route(dst: IPNetwork) -> str:
    """`ip route`, or `ip -6 route` where the destination does not tell
    (iproute2 reads "default" as IPv4)."""
    return "ip -6 route" if dst.version == 6 and dst.prefixlen == 0 else "ip route"


def sysctl_ifname(name: str) -> str:
    """The device name in a sysctl(8) key: '.' separates the key's parts, so a
    '.' inside a device name is written '/' (eth0.100 -> eth0/100). For the
    rendered command only; the file under /proc/sys keeps the real name."""
    return name.replace(".", "/")


class KernelOps(Protocol):
    """The kernel writes actions are made of; `netlink.Kernel` implements them.

    Each raises the kernel's refusal as it comes (the edge turns it into a
    KernelError with the errno)."""

    async def add_root_qdisc(self, index: int, kind: str, replace: bool) -> None:
        """Make `kind` the device's root qdisc; succeeds if it already is."""

    async def delete_root_qdisc(self, index: int, kind: str) -> None:
        """Delete the root qdisc, only if it is of `kind`."""

    async def set_link_up(self, index: int) -> None: ...

    async def set_link_down(self, index: int) -> None: ...

    async def set_mtu(self, index: int, mtu: int) -> None: ...

    async def add_address(self, index: int, address: IPv4Interface | IPv6Interface, flags: int) -> None: ...

    async def delete_address(self, index: int, address: IPv4Interface | IPv6Interface) -> None: ...

    async def put_route(self, route: Route, replace: bool) -> None:
        """Add `route` with wanbalanced's protocol number. Without `replace` the
        kernel refuses (EEXIST) when a route of the same destination, table and
        metric exists, so that another's route is never overwritten."""

    async def delete_own_route(self, route: Route) -> None:
        """Delete `route`, matching wanbalanced's protocol number: a route
        someone else made is never hit (ESRCH instead)."""

    async def delete_route(self, dst: IPNetwork, index: int, table: int, *, metric: int | None = None,
                           proto: int | None = None, scope: int | None = None) -> None:
        """Delete a route; the keywords left None match any value."""

    async def set_rp_filter(self, name: str, value: int) -> None: ...

    async def add_rule(self, rule: Rule) -> None:
        """Add a policy rule with wanbalanced's protocol number."""

    async def delete_rule(self, rule: Rule) -> None:
        """Delete a policy rule, matching wanbalanced's protocol number."""


@dataclass(frozen=True)
class Action(abc.ABC):
    """Base of all actions. `reason` says why, for the log; `drift`, when set,
    says what someone else changed that this action puts back."""

    reason: str = field(compare=False)
    drift: str | None = field(default=None, compare=False, kw_only=True)

    #: What the action sets, for drift accounting: ("qdisc", "wan0"), ...
    kind: ClassVar[str] = ""
    #: The EVENT field of its log record.
    event: ClassVar[str] = "converge"

    @property
    @abc.abstractmethod
    def device(self) -> str:
        """The device the action changes, by its current name."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.device)

    @property
    def why(self) -> str:
        """The reason as logged: a drift repair says what drifted."""
        return f"drift: {self.drift}" if self.drift is not None else self.reason

    def as_drift(self, snap: Snapshot) -> Action:
        """The same action, marked as repairing drift."""
        return dataclasses.replace(self, drift=self.drifted(snap))

    @abc.abstractmethod
    async def execute(self, ops: KernelOps) -> None:
        """Perform the action."""

    @abc.abstractmethod
    def expect(self, snap: Snapshot) -> None:
        """Apply the known effect of a successful write to the snapshot."""

    @abc.abstractmethod
    def command(self) -> str:
        """The equivalent ip/tc/sysctl command line."""

    def drifted(self, snap: Snapshot) -> str:
        """What someone else changed, in words."""
        return f"{self.kind} of {self.device} changed"

    def retry_soon(self, errno: int) -> float | None:
        """Seconds after which a first failure with `errno` is worth one quiet
        retry, when the kernel is known to catch up by itself; None: a real error."""
        return None


@dataclass(frozen=True)
class Attach(Action):
    """Make the equalizer the slave's root qdisc.

    `replace` is needed when another explicit qdisc is root: `tc qdisc add`
    only displaces the kernel's default qdisc (handle 0).
    """
    kind = "qdisc"
    event = "attach"

    equalizer: str
    slave: str
    index: int
    replace: bool = False

    @property
    def device(self) -> str:
        return self.slave

    async def execute(self, ops: KernelOps) -> None:
        await ops.add_root_qdisc(self.index, self.equalizer, self.replace)

    def expect(self, snap: Snapshot) -> None:
        snap.put_qdisc(self.index, Qdisc(self.equalizer, 0))

    def command(self) -> str:
        verb = "replace" if self.replace else "add"
        return f"tc qdisc {verb} dev {self.slave} root {self.equalizer}"

    def drifted(self, snap: Snapshot) -> str:
        link = snap.link(self.slave)
        now = link.qdisc.kind if link is not None and link.qdisc is not None else "the default qdisc"
        return f"{self.equalizer} was removed from {self.slave} (root qdisc now {now})"


@dataclass(frozen=True)
class Detach(Action):
    """Remove the equalizer from the slave. Naming the kind makes it safe: the
    kernel refuses (EINVAL) if the root qdisc has meanwhile become another one."""
    kind = "qdisc"
    event = "detach"

    equalizer: str
    slave: str
    index: int

    @property
    def device(self) -> str:
        return self.slave

    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_root_qdisc(self.index, self.equalizer)

    def expect(self, snap: Snapshot) -> None:
        snap.put_qdisc(self.index, None)

    def command(self) -> str:
        return f"tc qdisc del dev {self.slave} root {self.equalizer}"

    def drifted(self, snap: Snapshot) -> str:
        return f"{self.equalizer} was put back on {self.slave} by hand"


@dataclass(frozen=True)
class OnDevice(Action):
    """An action on one device, named and indexed as the kernel knows it."""

    name: str
    index: int

    @property
    def device(self) -> str:
        return self.name

    def _change_link(self, snap: Snapshot, change: Callable[[Link], Link]) -> None:
        """Apply `change` to the device in the snapshot, if it is there."""
        link = snap.links.get(self.index)
        if link is not None:
            snap.put_link(change(link))


def _opened(snap: Snapshot, link: Link) -> Link:
    """A teql device as opening it leaves it (teql_master_open): the smallest
    MTU of its slaves, and BROADCAST and POINTOPOINT only if they all have it."""
    slaves = [l for l in snap.links.values() if l.attached_to(link.name)]
    if not is_teql_name(link.name) or not slaves:
        return link
    shared = TEQL_DERIVED_FLAGS
    for slave in slaves:
        shared &= slave.flags
    return dataclasses.replace(link, mtu=min(l.mtu for l in slaves),
                               flags=(link.flags & ~TEQL_DERIVED_FLAGS) | shared)


@dataclass(frozen=True)
class LinkUp(OnDevice):
    kind = "link"

    async def execute(self, ops: KernelOps) -> None:
        await ops.set_link_up(self.index)

    def expect(self, snap: Snapshot) -> None:
        self._change_link(snap, lambda link: _opened(snap, dataclasses.replace(link, flags=link.flags | IFF_UP)))

    def command(self) -> str:
        return f"ip link set {self.name} up"

    def drifted(self, snap: Snapshot) -> str:
        return f"{self.name} was set down"


@dataclass(frozen=True)
class LinkDown(OnDevice):
    """Set the equalizer down to reopen it: a teql device takes the flags its
    slaves share only when it is opened (teql_master_open). The kernel flushes
    the IPv4 routes through it, and its IPv6 addresses (keep_addr_on_down is 0
    by default), so the plan adds ours again after the LinkUp."""
    kind = "link"
    event = "reopen"

    async def execute(self, ops: KernelOps) -> None:
        await ops.set_link_down(self.index)

    def expect(self, snap: Snapshot) -> None:
        # put_link drops the routes through a device that goes down, as the kernel does.
        self._change_link(snap, lambda link: dataclasses.replace(link, flags=link.flags & ~IFF_UP))
        for address in snap.addresses_of(self.index):
            if address.interface.version == 6:
                snap.drop_address(address)

    def command(self) -> str:
        return f"ip link set {self.name} down"


@dataclass(frozen=True)
class SetMtu(OnDevice):
    """Set the equalizer's MTU: lowered before a smaller slave joins (the
    kernel refuses a slave below the MTU of a running teql device), raised
    when the small one has gone for good (never above a slave's: the kernel
    refuses that too, teql_master_mtu)."""
    kind = "mtu"
    event = "mtu"

    mtu: int

    async def execute(self, ops: KernelOps) -> None:
        await ops.set_mtu(self.index, self.mtu)

    def expect(self, snap: Snapshot) -> None:
        self._change_link(snap, lambda link: dataclasses.replace(link, mtu=self.mtu))

    def command(self) -> str:
        return f"ip link set {self.name} mtu {self.mtu}"

    def drifted(self, snap: Snapshot) -> str:
        link = snap.links.get(self.index)
        return f"the MTU of {self.name} was changed to {link.mtu if link is not None else '?'}"


@dataclass(frozen=True)
class AddAddress(OnDevice):
    """Add the equalizer's local address with noprefixroute, so the kernel never
    creates the connected route the seed deletes by hand. An IPv6 one also
    with nodad: a NOARP device does no duplicate address detection anyway, and
    the flag says so (the address is never "tentative")."""
    kind = "address"

    address: IPv4Interface | IPv6Interface

    @property
    def flags(self) -> int:
        return IFA_F_NOPREFIXROUTE | (IFA_F_NODAD if self.address.version == 6 else 0)

    async def execute(self, ops: KernelOps) -> None:
        await ops.add_address(self.index, self.address, self.flags)

    def expect(self, snap: Snapshot) -> None:
        snap.put_address(Address(self.index, self.address, self.flags))

    def command(self) -> str:
        nodad = " nodad" if self.address.version == 6 else ""
        return f"ip addr replace {self.address.with_prefixlen} dev {self.name} noprefixroute{nodad}"

    def drifted(self, snap: Snapshot) -> str:
        return f"the address of {self.name} was removed"


@dataclass(frozen=True)
class DeleteAddress(OnDevice):
    """Remove an address wanbalanced added and the configuration no longer has."""
    kind = "address"

    address: IPv4Interface | IPv6Interface

    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_address(self.index, self.address)

    def expect(self, snap: Snapshot) -> None:
        snap.drop_address(Address(self.index, self.address))

    def command(self) -> str:
        return f"ip addr del {self.address.with_prefixlen} dev {self.name}"


@dataclass(frozen=True)
class DeleteConnectedRoute(OnDevice):
    kind = "connected_route"
    dst: IPv4Network
    table: int = RT_TABLE_MAIN

    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_route(self.dst, self.index, self.table, proto=RTPROT_KERNEL, scope=RT_SCOPE_LINK)

    def expect(self, snap: Snapshot) -> None:
        snap.routes = {r for r in snap.routes if not (r.oif == self.index and r.dst == self.dst)}

    def command(self) -> str:
        return (
            f"ip route del {self.dst.with_prefixlen} dev {self.name}"
            f" proto kernel scope link{_table(self.table)}"
        )

    def drifted(self, snap: Snapshot) -> str:
        return f"the connected route on {self.name} came back"


@dataclass(frozen=True)
class _DefaultRoute(OnDevice):
    """The equalizer's default route. `type` is unicast (through the
    equalizer), or the unreachable or blackhole route that stands in for it
    while no slave is attached (`all_down`); all have the same metric and
    table, so one replaces the other in a single write."""
    kind = "route"
    metric: int
    table: int
    type: int = RTN_UNICAST
    dst: IPNetwork = DEFAULT_DST

    def _route(self) -> str:
        where = f"dev {self.name}" if self.type == RTN_UNICAST else ""
        kind = "" if self.type == RTN_UNICAST else f"{RTN_NAMES[self.type]} "
        return f"{kind}{_dst(self.dst)} {where}".rstrip() + f"{_metric(self.metric)}{_table(self.table)}"

    def _as_route(self) -> Route:
        oif = self.index if self.type == RTN_UNICAST else None
        return Route(self.table, self.dst, self.metric, oif, proto=RTPROT_WANBALANCED, type=self.type)


@dataclass(frozen=True)
class ReplaceDefaultRoute(_DefaultRoute):
    async def execute(self, ops: KernelOps) -> None:
        await ops.put_route(self._as_route(), replace=True)

    def expect(self, snap: Snapshot) -> None:
        snap.put_route(self._as_route(), replace=True)

    def command(self) -> str:
        return f"{_ip_route(self.dst)} replace {self._route()}{PROTO}"

    def drifted(self, snap: Snapshot) -> str:
        if self.type != RTN_UNICAST:
            return f"the {RTN_NAMES[self.type]} default route of {self.name} was deleted"
        return f"the default route via {self.name} was deleted"


@dataclass(frozen=True)
class DeleteDefaultRoute(_DefaultRoute):
    """Withdraw the default route. A unicast one is matched by device and
    metric, whatever its protocol: the equalizer's route may predate the
    protocol number (made by hand, or by an older version)."""

    async def execute(self, ops: KernelOps) -> None:
        if self.type == RTN_UNICAST:
            await ops.delete_route(self.dst, self.index, self.table, metric=self.metric)
        else:
            await ops.delete_own_route(self._as_route())

    def expect(self, snap: Snapshot) -> None:
        snap.drop_route(self._as_route())

    def command(self) -> str:
        return f"{_ip_route(self.dst)} del {self._route()}"


@dataclass(frozen=True)
class _LineRoute(OnDevice):
    """A configured route through one slave ([[slaves.<name>.routes]])."""
    kind = "line_route"
    dst: IPNetwork
    gateway: str | None
    metric: int
    table: int
    # As iproute2 does: a route with no gateway reaches a neighbour on the
    # link (None: so chosen); a delete must match the scope it was made with.
    scope: int | None = field(default=None, kw_only=True)

    def as_route(self) -> Route:
        """The route as the kernel holds it."""
        scope = self.scope
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if self.gateway is not None or self.dst.version == 6 else RT_SCOPE_LINK
        return Route(self.table, self.dst, self.metric, self.index, self.gateway, RTPROT_WANBALANCED, scope)

    def _route(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        return f"{_dst(self.dst)}{via} dev {self.name}{_metric(self.metric)}{_table(self.table)}"


@dataclass(frozen=True)
class AddLineRoute(_LineRoute):
    async def execute(self, ops: KernelOps) -> None:
        await ops.put_route(self.as_route(), replace=False)

    def expect(self, snap: Snapshot) -> None:
        snap.put_route(self.as_route())

    def command(self) -> str:
        return f"{_ip_route(self.dst)} add {self._route()}{PROTO}"

    def drifted(self, snap: Snapshot) -> str:
        return f"the route to {_dst(self.dst)} via {self.name} was deleted"


@dataclass(frozen=True)
class DeleteLineRoute(_LineRoute):
    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_own_route(self.as_route())

    def expect(self, snap: Snapshot) -> None:
        snap.drop_route(self.as_route())

    def command(self) -> str:
        return f"{_ip_route(self.dst)} del {self._route()}{PROTO}"


@dataclass(frozen=True)
class _LineRule(OnDevice):
    """A slave's policy rule ([[slaves.<name>.rules]]); the device is the
    slave whose attach it follows (a rule itself has none)."""
    kind = "line_rule"
    rule: Rule

    def _rule(self) -> str:
        family = "-6 " if self.rule.src.version == 6 else ""
        return (f"{family}rule {{}} from {self.rule.src.with_prefixlen} table {self.rule.table}"
                f" priority {self.rule.priority}{PROTO}")


@dataclass(frozen=True)
class AddLineRule(_LineRule):
    async def execute(self, ops: KernelOps) -> None:
        await ops.add_rule(self.rule)

    def expect(self, snap: Snapshot) -> None:
        snap.rules.add(self.rule)

    def command(self) -> str:
        return "ip " + self._rule().format("add")

    def drifted(self, snap: Snapshot) -> str:
        return f"the rule from {self.rule.src} of {self.name} was deleted"


@dataclass(frozen=True)
class DeleteLineRule(_LineRule):
    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_rule(self.rule)

    def expect(self, snap: Snapshot) -> None:
        snap.rules.discard(self.rule)

    def command(self) -> str:
        return "ip " + self._rule().format("del")


@dataclass(frozen=True)
class SetRpFilter(OnDevice):
    kind = "rp_filter"
    value: int

    async def execute(self, ops: KernelOps) -> None:
        await ops.set_rp_filter(self.name, self.value)

    def expect(self, snap: Snapshot) -> None:
        snap.set_rp_filter(self.index, self.value)

    def command(self) -> str:
        return f"sysctl -w net.ipv4.conf.{sysctl_ifname(self.name)}.rp_filter={self.value}"

    def drifted(self, snap: Snapshot) -> str:
        link = snap.link(self.name)
        return f"rp_filter of {self.name} was changed to {link.rp_filter if link is not None else '?'}"

    def retry_soon(self, errno: int) -> float | None:
        # pppd creates pppN and renames it wanN; the kernel announces the new
        # name before it has moved the device's sysctl directory (seen in the
        # lab once in four redials), so the file is briefly missing.
        return RENAME_SETTLE if errno == errnos.ENOENT else None


def _kinds(classes: list[type[Action]]) -> list[str]:
    return [k for c in classes for k in [c.kind, *_kinds(c.__subclasses__())] if k]


#: Every property an action sets, in the order the classes are defined: the
#: `kind` label of the drift metrics.
DRIFT_KINDS: tuple[str, ...] = tuple(dict.fromkeys(_kinds(Action.__subclasses__())))
