"""The pure core: configuration + observed kernel state -> actions.

`Core.observe` turns what the kernel shows into slave events and runs them
through each slave's state machine; `Core.plan` compares what the states and
the configuration want with what the kernel holds and lists the actions that
close the gap, in a safe order, plus the faults an operator must fix. Nothing
here does I/O or reads a clock.
"""

from __future__ import annotations

import errno as errnos
import os
from dataclasses import dataclass

from .actions import (
    Action,
    AddAddress,
    Attach,
    DeleteAddress,
    DeleteConnectedRoute,
    DeleteDefaultRoute,
    Detach,
    LinkUp,
    ReplaceDefaultRoute,
    SetRpFilter,
)
from .config import Config, EqualizerConfig
from .observed import (
    IFA_F_NOPREFIXROUTE,
    IFF_BROADCAST,
    IFF_MULTICAST,
    IFF_POINTOPOINT,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTPROT_KERNEL,
    Link,
    Snapshot,
)
from .slave import Event, SlaveMachine, State, Transition

_FLAGS = IFF_BROADCAST | IFF_POINTOPOINT | IFF_MULTICAST


@dataclass(frozen=True)
class Fault:
    """Something wrong that wanbalanced cannot fix; `message` names the fix.

    `key` is stable while the fault lasts, so it is logged once, not per event.
    """

    kind: str  # refused, missing_equalizer, module_not_loaded, route_clash, rp_filter_all
    device: str
    message: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.device}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    faults: tuple[Fault, ...]

    @property
    def converged(self) -> bool:
        return not self.actions


class Core:
    """Desired state for every configured equalizer and slave."""

    def __init__(self, config: Config, now: float, honour_delays: bool = True) -> None:
        self.config = config
        self.machines: dict[str, SlaveMachine] = {}
        self._index: dict[str, int | None] = {}
        for eq in config.equalizers.values():
            for name in eq.slaves:
                settings = config.slave(name)
                up, down = (settings.up_delay, settings.down_delay) if honour_delays else (0.0, 0.0)
                self.machines[name] = SlaveMachine(name, up, down, now)
                self._index[name] = None

    def reconfigure(self, new: Config, snap: Snapshot, now: float) -> list[Action]:
        """Switch to a new, already validated configuration.

        Slaves kept under the same equalizer keep their machine (state, timers),
        so they are not touched. Returns the one-off clean-up the plan cannot
        derive from the new configuration alone: detach removed slaves (then
        leave them alone), and withdraw the address and default route that the
        old settings made and the new ones no longer want.
        """
        old = self.config
        cleanup: list[Action] = []
        machines: dict[str, SlaveMachine] = {}
        for eq_name, eq in new.equalizers.items():
            for name in eq.slaves:
                settings = new.slave(name)
                m = self.machines.get(name)
                if m is None or old.equalizer_of(name) != eq_name:
                    m = SlaveMachine(name, settings.up_delay, settings.down_delay, now)
                    self._index[name] = None
                m.up_delay, m.down_delay = settings.up_delay, settings.down_delay
                machines[name] = m
        for name in self.machines:
            old_eq = old.equalizer_of(name)
            link = snap.link(name)
            if old_eq is not None and new.equalizer_of(name) != old_eq and link is not None and link.attached_to(old_eq):
                cleanup.append(Detach("removed from the configuration", old_eq, name, link.index))
        for eq_name, before in old.equalizers.items():
            master = snap.link(eq_name)
            if master is None:
                continue
            after = new.equalizers.get(eq_name)
            if before.address is not None and (after is None or after.address != before.address):
                if any(a.interface == before.address for a in snap.addresses_of(master.index)):
                    cleanup.append(DeleteAddress("address changed in the configuration", eq_name, master.index,
                                                 before.address))
            route = (before.default_route, before.route_metric, before.route_table)
            if before.default_route and (after is None or (after.default_route, after.route_metric,
                                                             after.route_table) != route):
                if any(r.oif == master.index and r.priority == before.route_metric and r.gateway is None
                       for r in snap.default_routes(before.route_table)):
                    cleanup.append(DeleteDefaultRoute("default route changed in the configuration", eq_name,
                                                      master.index, before.route_metric, before.route_table))
        self._index = {n: self._index.get(n) for n in machines}
        self.machines = machines
        self.config = new
        return cleanup

    # -- observing ------------------------------------------------------------

    def observe(self, snap: Snapshot, now: float) -> list[Transition]:
        """Feed the current snapshot to every slave machine; return what changed."""
        out: list[Transition] = []
        for eq_name, eq in self.config.equalizers.items():
            for name in eq.slaves:
                out.extend(self._observe_slave(eq_name, name, snap, now))
        return out

    def _observe_slave(self, eq_name: str, name: str, snap: Snapshot, now: float) -> list[Transition]:
        m = self.machines[name]
        link = snap.link(name)
        out: list[Transition] = []
        if link is None:
            if m.state is not State.ABSENT:
                out.append(m.handle(Event.VANISHED, now, "interface deleted"))
            self._index[name] = None
            return out
        old_index = self._index[name]
        self._index[name] = link.index
        if m.state is not State.ABSENT and old_index is not None and old_index != link.index:
            # Deleted and created again under the same name (pppd redial) while
            # we were not looking: the new device has no qdisc and fresh sysctls.
            out.append(m.handle(Event.VANISHED, now, f"interface recreated (ifindex {old_index} -> {link.index})"))
        if m.state is State.ABSENT:
            if link.attached_to(eq_name):
                out.append(m.handle(Event.ADOPTED, now, f"found attached to {eq_name}"))
                if not link.has_carrier:
                    out.append(m.handle(Event.CARRIER_LOST, now, "found attached " + _why_down(link)))
            elif link.has_carrier:
                out.append(m.handle(Event.CARRIER_BACK, now, "appeared with carrier"))
            else:
                out.append(m.handle(Event.CARRIER_LOST, now, f"appeared {_why_down(link)}"))
        elif link.has_carrier and m.state in (State.DOWN, State.DOWN_DELAY):
            out.append(m.handle(Event.CARRIER_BACK, now, "carrier returned"))
        elif not link.has_carrier and m.state in (State.UP_DELAY, State.UP, State.REFUSED):
            out.append(m.handle(Event.CARRIER_LOST, now, _why_down(link, "carrier lost")))
        elif m.state is State.REFUSED and m.refused_on != _refusal_context(eq_name, link, snap):
            out.append(m.handle(Event.RETRY, now, "the slave or its equalizer changed since the refusal"))
        expired = m.expire(now)
        if expired is not None:
            out.append(expired)
        return out

    def refused(self, action: Attach, error: int, snap: Snapshot, now: float) -> tuple[Transition | None, str]:
        """Record that the kernel refused an attach; return the transition and
        a one-line diagnosis naming the cause and the fix."""
        m = self.machines[action.slave]
        link = snap.link(action.slave)
        master = snap.link(action.equalizer)
        message = diagnose_refusal(action.equalizer, link, master, error)
        transition = None
        if m.state is State.UP and link is not None:
            transition = m.handle(Event.REFUSED, now, message)
            m.refused_on = _refusal_context(action.equalizer, link, snap)
        return transition, message

    def next_deadline(self) -> float | None:
        deadlines = [m.deadline for m in self.machines.values() if m.deadline is not None]
        return min(deadlines, default=None)

    # -- planning ---------------------------------------------------------------

    def plan(self, snap: Snapshot) -> Plan:
        """The actions that bring the kernel to the desired state, in order:
        sysctls, then slaves, then the equalizer device, address and routes."""
        actions: list[Action] = []
        faults: list[Fault] = []
        for eq_name, eq in self.config.equalizers.items():
            self._plan_equalizer(eq_name, eq, snap, actions, faults)
        return Plan(tuple(actions), tuple(faults))

    def _plan_equalizer(
        self, eq_name: str, eq: EqualizerConfig, snap: Snapshot, actions: list[Action], faults: list[Fault]
    ) -> None:
        slaves = {name: snap.link(name) for name in eq.slaves}
        if eq.rp_filter is not None:
            for name, link in slaves.items():
                if link is None:
                    continue
                if link.rp_filter != eq.rp_filter:
                    actions.append(SetRpFilter(_rp_reason(link), link.name, link.index, eq.rp_filter))
                if snap.all_rp_filter is not None and snap.all_rp_filter > eq.rp_filter:
                    faults.append(Fault(
                        "rp_filter_all", name,
                        f"{name}: effective rp_filter is max(all={snap.all_rp_filter}, {name}={eq.rp_filter})"
                        f"={snap.all_rp_filter}; set net.ipv4.conf.all.rp_filter={eq.rp_filter}"
                        " (wanbalanced does not change 'all', which affects every interface)",
                    ))

        master = snap.link(eq_name)
        if master is None:
            faults.append(self._missing_equalizer(eq_name, snap))
            return

        attached = {n for n, l in slaves.items() if l is not None and l.attached_to(eq_name)}
        for name, link in slaves.items():
            if link is None:
                continue
            m = self.machines[name]
            if m.wants_attached and not link.attached_to(eq_name):
                replace = link.qdisc is not None and link.qdisc.handle != 0
                actions.append(Attach(m.reason, eq_name, name, link.index, replace))
                attached.add(name)
            elif not m.wants_attached and link.attached_to(eq_name):
                actions.append(Detach(m.reason, eq_name, name, link.index))
                attached.discard(name)
            if m.state is State.REFUSED:
                faults.append(Fault("refused", name, m.reason))

        master_up = master.admin_up
        going_up = False
        if attached and not master_up:
            # The kernel refuses to open a teql device with no slaves (EUNATCH),
            # so this must follow the attaches.
            actions.append(LinkUp(f"{len(attached)} slave(s) attached", eq_name, master.index))
            master_up = going_up = True

        if eq.address is not None:
            mine = [a for a in snap.addresses_of(master.index) if a.interface == eq.address]
            if not mine:
                actions.append(AddAddress("configured address missing", eq_name, master.index, eq.address))
            connected = [
                r for r in snap.routes_via(master.index)
                if r.dst == eq.address.network and r.proto == RTPROT_KERNEL and r.scope == RT_SCOPE_LINK
            ]
            # An adopted address without noprefixroute gets its connected route
            # back each time the device comes up.
            expect_connected = (
                going_up and bool(mine) and not mine[0].flags & IFA_F_NOPREFIXROUTE
                and eq.address.network.prefixlen < 32
            )
            if connected or expect_connected:
                table = connected[0].table if connected else RT_TABLE_MAIN
                actions.append(DeleteConnectedRoute(
                    "the seed's local address is arbitrary: no connected route",
                    eq_name, master.index, eq.address.network, table,
                ))

        if eq.default_route:
            defaults = snap.default_routes(eq.route_table)
            ours = [r for r in defaults if r.oif == master.index and r.priority == eq.route_metric and r.gateway is None]
            want = bool(attached) and master_up
            if want and not ours:
                clash = [r for r in defaults if r.priority == eq.route_metric]
                if clash:
                    faults.append(Fault(
                        "route_clash", eq_name,
                        f"{eq_name}: another default route has metric {eq.route_metric} in table "
                        f"{eq.route_table}; wanbalanced will not replace it: give it a higher metric "
                        f"or set equalizers.{eq_name}.route_metric",
                    ))
                else:
                    actions.append(ReplaceDefaultRoute(
                        f"{len(attached)} slave(s) attached", eq_name, master.index, eq.route_metric, eq.route_table,
                    ))
            elif not want and ours:
                actions.append(DeleteDefaultRoute(
                    "no slave attached", eq_name, master.index, eq.route_metric, eq.route_table,
                ))

    def _missing_equalizer(self, eq_name: str, snap: Snapshot) -> Fault:
        need = max(int(n[4:]) for n in self.config.equalizers) + 1
        have = snap.teql_devices()
        if not have:
            return Fault(
                "module_not_loaded", eq_name,
                f"{eq_name}: no teql device exists, sch_teql is not loaded: "
                f"run `modprobe sch_teql max_equalizers={need}`",
            )
        return Fault(
            "missing_equalizer", eq_name,
            f"{eq_name} does not exist: sch_teql was loaded with max_equalizers={len(have)}; "
            f"set `options sch_teql max_equalizers={need}` in /etc/modprobe.d/wanbalanced.conf "
            "and reload the module (rmmod sch_teql && modprobe sch_teql)",
        )


def _why_down(link: Link, no_carrier: str = "without carrier") -> str:
    return no_carrier if link.admin_up else "administratively down"


def _rp_reason(link: Link) -> str:
    if link.rp_filter is None:
        return "rp_filter unknown"
    return f"rp_filter is {link.rp_filter}"


def _refusal_context(eq_name: str, link: Link, snap: Snapshot) -> object:
    """What the kernel's verdict on an attach depends on (sch_teql.c,
    teql_qdisc_init): the slave's and the master's MTU and flags, whether the
    master is up, and whether it already has slaves."""
    master = snap.link(eq_name)
    others = sum(1 for l in snap.links.values() if l.attached_to(eq_name) and l.index != link.index)
    mstate = None if master is None else (master.mtu, master.flags & _FLAGS, master.admin_up)
    return (link.mtu, link.flags & _FLAGS, mstate, others)


def diagnose_refusal(eq_name: str, link: Link | None, master: Link | None, error: int) -> str:
    """Explain a refused `tc qdisc add dev SLAVE root teqlN` in one line."""
    slave = link.name if link is not None else "slave"
    if error == errnos.ENOENT and master is None:
        return f"{slave}: {eq_name} does not exist (is sch_teql loaded with enough max_equalizers?)"
    if error == errnos.ENOENT:
        return f"{slave}: the kernel does not know the qdisc {eq_name}: load sch_teql (modprobe sch_teql)"
    if error == errnos.EINVAL and link is not None and master is not None:
        if link.mtu < master.mtu:
            return (
                f"{slave}: {eq_name} refused the slave (EINVAL): its MTU {link.mtu} is below {eq_name}'s "
                f"{master.mtu}; fix: ip link set {slave} mtu {master.mtu} (or lower every slave's MTU)"
            )
        for flag, label in ((IFF_POINTOPOINT, "POINTOPOINT"), (IFF_BROADCAST, "BROADCAST"), (IFF_MULTICAST, "MULTICAST")):
            if master.flags & flag and not link.flags & flag:
                return (
                    f"{slave}: {eq_name} refused the slave (EINVAL): {eq_name} is {label} and {slave} is not; "
                    f"teql bundles only like links while it is up: fix the link type, or detach every slave "
                    f"and set {eq_name} down so it takes the new mix of flags"
                )
        return (
            f"{slave}: {eq_name} refused the slave (EINVAL): its link-layer header is longer than "
            f"{eq_name} supports; this interface type cannot be a teql slave"
        )
    return f"{slave}: attaching to {eq_name} failed: {os.strerror(error)} (errno {error})"
