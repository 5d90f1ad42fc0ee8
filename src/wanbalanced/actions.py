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
from ipaddress import IPv4Interface, IPv4Network
from collections.abc import Callable
from typing import ClassVar, Protocol

from .observed import (
    DEFAULT_DST,
    IFA_F_NOPREFIXROUTE,
    IFF_UP,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTPROT_KERNEL,
    TEQL_DERIVED_FLAGS,
    Address,
    Link,
    Qdisc,
    Route,
    Snapshot,
    is_teql_name,
)

#: Seconds to wait before retrying a write that raced a device's rename.
RENAME_SETTLE = 0.05


def _table(table: int) -> str:
    return "" if table == RT_TABLE_MAIN else f" table {table}"


def _metric(metric: int) -> str:
    return "" if metric == 0 else f" metric {metric}"


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

    async def add_address(self, index: int, address: IPv4Interface, flags: int) -> None: ...

    async def delete_address(self, index: int, address: IPv4Interface) -> None: ...

    async def replace_route(self, dst: IPv4Network, index: int, metric: int, table: int) -> None: ...

    async def delete_route(self, dst: IPv4Network, index: int, table: int, *, metric: int | None = None,
                           proto: int | None = None, scope: int | None = None) -> None:
        """Delete a route; the keywords left None match any value."""

    async def set_rp_filter(self, name: str, value: int) -> None: ...


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
    the IPv4 routes through it, so the plan adds ours again after the LinkUp."""
    kind = "link"
    event = "reopen"

    async def execute(self, ops: KernelOps) -> None:
        await ops.set_link_down(self.index)

    def expect(self, snap: Snapshot) -> None:
        # put_link drops the routes through a device that goes down, as the kernel does.
        self._change_link(snap, lambda link: dataclasses.replace(link, flags=link.flags & ~IFF_UP))

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
    creates the connected route the seed deletes by hand."""
    kind = "address"

    address: IPv4Interface

    async def execute(self, ops: KernelOps) -> None:
        await ops.add_address(self.index, self.address, IFA_F_NOPREFIXROUTE)

    def expect(self, snap: Snapshot) -> None:
        snap.put_address(Address(self.index, self.address, IFA_F_NOPREFIXROUTE))

    def command(self) -> str:
        return f"ip addr add {self.address.with_prefixlen} dev {self.name} noprefixroute"

    def drifted(self, snap: Snapshot) -> str:
        return f"the address of {self.name} was removed"


@dataclass(frozen=True)
class DeleteAddress(OnDevice):
    """Remove an address wanbalanced added and the configuration no longer has."""
    kind = "address"

    address: IPv4Interface

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
    kind = "route"
    metric: int
    table: int

    def _route(self) -> str:
        return f"default dev {self.name}{_metric(self.metric)}{_table(self.table)}"

    def _as_route(self) -> Route:
        return Route(self.table, DEFAULT_DST, self.metric, self.index)


@dataclass(frozen=True)
class ReplaceDefaultRoute(_DefaultRoute):
    async def execute(self, ops: KernelOps) -> None:
        await ops.replace_route(DEFAULT_DST, self.index, self.metric, self.table)

    def expect(self, snap: Snapshot) -> None:
        snap.put_route(self._as_route(), replace=True)

    def command(self) -> str:
        return f"ip route replace {self._route()}"

    def drifted(self, snap: Snapshot) -> str:
        return f"the default route via {self.name} was deleted"


@dataclass(frozen=True)
class DeleteDefaultRoute(_DefaultRoute):
    async def execute(self, ops: KernelOps) -> None:
        await ops.delete_route(DEFAULT_DST, self.index, self.table, metric=self.metric)

    def expect(self, snap: Snapshot) -> None:
        snap.drop_route(self._as_route())

    def command(self) -> str:
        return f"ip route del {self._route()}"


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
