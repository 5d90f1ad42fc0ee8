"""The pure core, the planner: configuration + observed kernel state -> actions.

`Core.observe` hands what the kernel shows to each slave's book (`slave.py`,
which owns the slave's whole life) and notes devices renamed away from the
configuration; `Core.plan` compares what the states and the configuration want
with what the kernel holds and lists the actions that close the gap, in a safe
order, plus the faults an operator must fix. Nothing here does I/O or reads a
clock.
"""

from __future__ import annotations

import dataclasses
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
from .config import Config, EqualizerConfig, ProbeConfig
from .observed import (
    IFA_F_NOPREFIXROUTE,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTPROT_KERNEL,
    Link,
    Snapshot,
)
from .slave import SlaveBook, SlaveMachine, State, Transition, next_deadline


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
    # Keys of the actions that repair drift: the kernel changed something the
    # daemon had converged, while what it wants there stayed the same.
    drift: frozenset[tuple[str, str]] = frozenset()

    @property
    def converged(self) -> bool:
        return not self.actions


class Core:
    """Desired state for every configured equalizer and slave."""

    def __init__(self, config: Config, now: float, honour_delays: bool = True) -> None:
        self.config = config
        self.honour_delays = honour_delays
        # What was wanted when the kernel last matched it (see settle()).
        self.settled: dict[tuple[str, str], object] | None = None
        self.slaves: dict[str, SlaveBook] = {}
        # Devices that left the configuration under our feet (renamed, e.g.
        # wan0 -> old0) while still attached: ifindex -> (equalizer, old name).
        # The kernel keeps the qdisc across a rename, so they are detached.
        self.orphans: dict[int, tuple[str, str]] = {}
        for eq in config.equalizers.values():
            for name in eq.slaves:
                self.slaves[name] = SlaveBook(SlaveMachine(name, now), config.slave(name), honour_delays)

    @property
    def machines(self) -> dict[str, SlaveMachine]:
        return {name: book.machine for name, book in self.slaves.items()}

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
        books: dict[str, SlaveBook] = {}
        for eq_name, eq in new.equalizers.items():
            for name in eq.slaves:
                book = self.slaves.get(name)
                if book is None or old.equalizer_of(name) != eq_name:
                    book = SlaveBook(SlaveMachine(name, now), new.slave(name), self.honour_delays)
                else:
                    book.configure(new.slave(name))
                books[name] = book
        for name in self.slaves:
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
        self.slaves = books
        self.config = new
        self.settled = None  # what is wanted changed on purpose: nothing is drift
        return cleanup

    # -- observing ------------------------------------------------------------

    def observe(self, snap: Snapshot, now: float) -> list[Transition]:
        """Feed the current snapshot to every slave machine; return what changed."""
        out: list[Transition] = []
        for eq_name, eq in self.config.equalizers.items():
            for name in eq.slaves:
                link = snap.link(name)
                self._note_rename(eq_name, name, link, snap)
                out.extend(self.slaves[name].observe(eq_name, link, snap, now))
        self._prune_orphans(snap)
        return out

    def _prune_orphans(self, snap: Snapshot) -> None:
        """Forget a renamed device once it is detached, deleted, or configured
        again under its new name (then it is an ordinary slave)."""
        for index, (eq_name, _old) in list(self.orphans.items()):
            link = snap.links.get(index)
            if link is None or not link.attached_to(eq_name) or self.config.equalizer_of(link.name) is not None:
                del self.orphans[index]

    def _note_rename(self, eq_name: str, name: str, link: Link | None, snap: Snapshot) -> None:
        """A slave's device under another name, still attached, becomes an orphan."""
        old_index = self.slaves[name].index
        if old_index is not None and (link is None or link.index != old_index):
            moved = snap.links.get(old_index)
            if moved is not None and moved.name != name and moved.attached_to(eq_name):
                # Renamed: the same device under a name we do not manage.
                self.orphans[old_index] = (eq_name, name)

    def probe_round(self, name: str, ok: bool) -> bool:
        """Count one probe round of a slave; True when its verdict flipped (the
        caller should then reconcile)."""
        book = self.slaves.get(name)
        return book is not None and book.probe_round(ok)

    def probe_settings(self, name: str, snap: Snapshot) -> ProbeConfig | None:
        """The probes that should run on a slave now (see SlaveBook.probe_settings)."""
        return self.slaves[name].probe_settings(snap.link(name))

    def refused(self, action: Attach, error: int, snap: Snapshot, now: float) -> tuple[Transition | None, str]:
        """Record that the kernel refused an attach (see SlaveBook.refused)."""
        return self.slaves[action.slave].refused(action.equalizer, error, snap, now)

    def next_deadline(self) -> float | None:
        return next_deadline(self.slaves.values())

    # -- planning ---------------------------------------------------------------

    def plan(self, snap: Snapshot) -> Plan:
        """The actions that bring the kernel to the desired state, in order:
        sysctls, then slaves, then the equalizer device, address and routes."""
        actions: list[Action] = []
        faults: list[Fault] = []
        for eq_name, eq in self.config.equalizers.items():
            self._plan_equalizer(eq_name, eq, snap, actions, faults)
        if self.settled is None:
            return Plan(tuple(actions), tuple(faults))
        desired = self.desired(snap)
        kept: list[Action] = []
        drift = set()
        for a in actions:
            if a.key not in self.settled or self.settled[a.key] != desired.get(a.key):
                kept.append(a)
                continue
            book = self.slaves.get(a.device)
            if book is not None and not book.machine.wants_attached:
                continue  # a rightly detached slave is left alone, whatever is done to it
            drift.add(a.key)
            kept.append(dataclasses.replace(a, reason=f"drift: {_drift(a, snap)}"))
        return Plan(tuple(kept), tuple(faults), frozenset(drift))

    def desired(self, snap: Snapshot) -> dict[tuple[str, str], object]:
        """What is wanted of each property the daemon manages, given the slaves'
        states (values include ifindexes: a recreated device is not drift)."""
        want: dict[tuple[str, str], object] = {}
        for eq_name, eq in self.config.equalizers.items():
            wanted = False
            for name in eq.slaves:
                link = snap.link(name)
                if link is None:
                    continue
                attached = self.slaves[name].machine.wants_attached
                wanted |= attached
                want[("qdisc", name)] = (link.index, attached)
                if eq.rp_filter is not None:
                    want[("rp_filter", name)] = (link.index, eq.rp_filter)
            master = snap.link(eq_name)
            if master is None:
                continue
            want[("link", eq_name)] = (master.index, wanted)
            if eq.address is not None:
                want[("address", eq_name)] = (master.index, str(eq.address))
                want[("connected_route", eq_name)] = (master.index, False)
            if eq.default_route:
                want[("route", eq_name)] = (master.index, wanted, eq.route_metric, eq.route_table)
        return want

    def settle(self, snap: Snapshot) -> None:
        """The kernel matches the plan: remember what was wanted, so that a later
        change of the kernel alone is recognised as drift."""
        self.settled = self.desired(snap)

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
            m = self.slaves[name].machine
            if m.wants_attached and not link.attached_to(eq_name):
                replace = link.qdisc is not None and link.qdisc.handle != 0
                actions.append(Attach(m.reason, eq_name, name, link.index, replace))
                attached.add(name)
            elif not m.wants_attached and link.attached_to(eq_name):
                actions.append(Detach(m.reason, eq_name, name, link.index))
                attached.discard(name)
            if m.state is State.REFUSED:
                faults.append(Fault("refused", name, m.reason))
        for index, (orphan_eq, old) in sorted(self.orphans.items()):
            link = snap.links.get(index)
            if orphan_eq == eq_name and link is not None and link.attached_to(eq_name):
                # Detach is keyed by ifindex: the action names the device as it is now.
                actions.append(Detach(f"renamed from {old}, which left the configuration", eq_name, link.name,
                                      index))

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


def _drift(action: Action, snap: Snapshot) -> str:
    """What someone else changed, in words."""
    link = snap.link(action.device)
    if isinstance(action, Attach):
        now = link.qdisc.kind if link is not None and link.qdisc is not None else "the default qdisc"
        return f"{action.equalizer} was removed from {action.slave} (root qdisc now {now})"
    if isinstance(action, Detach):
        return f"{action.equalizer} was put back on {action.slave} by hand"
    if isinstance(action, SetRpFilter):
        return f"rp_filter of {action.name} was changed to {link.rp_filter if link is not None else '?'}"
    if isinstance(action, LinkUp):
        return f"{action.name} was set down"
    if isinstance(action, AddAddress):
        return f"the address of {action.name} was removed"
    if isinstance(action, DeleteConnectedRoute):
        return f"the connected route on {action.name} came back"
    if isinstance(action, ReplaceDefaultRoute):
        return f"the default route via {action.name} was deleted"
    return f"{action.kind} of {action.device} changed"


def _rp_reason(link: Link) -> str:
    if link.rp_filter is None:
        return "rp_filter unknown"
    return f"rp_filter is {link.rp_filter}"
