"""The pure core: configuration + observed kernel state -> actions.

`Core.observe` turns what the kernel shows into slave events and runs them
through each slave's state machine; `Core.plan` compares what the states and
the configuration want with what the kernel holds and lists the actions that
close the gap, in a safe order, plus the faults an operator must fix. Nothing
here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
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
from .config import Config, EqualizerConfig, ProbeConfig, SlaveConfig
from .health import Damping, Verdict
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
from .slave import TRANSITIONS, WANTS_ATTACHED, Event, SlaveMachine, State, Transition

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
    # Keys of the actions that repair drift: the kernel changed something the
    # daemon had converged, while what it wants there stayed the same.
    drift: frozenset[tuple[str, str]] = frozenset()

    @property
    def converged(self) -> bool:
        return not self.actions


class SlaveBook:
    """Everything the core keeps about one slave: its machine, its settings,
    its probe verdict and its flap penalty."""

    def __init__(self, machine: SlaveMachine, settings: SlaveConfig, honour_delays: bool) -> None:
        self.machine = machine
        self.honour_delays = honour_delays
        self.verdict: Verdict | None = None
        self.configure(settings)

    def configure(self, settings: SlaveConfig) -> None:
        """(Re)apply settings; the state, verdict and penalty carry over."""
        self.settings = settings
        self.up_delay = settings.up_delay if self.honour_delays else 0.0
        self.down_delay = settings.down_delay if self.honour_delays else 0.0
        probe = settings.probe
        if probe is None:
            self.verdict = None
        elif self.verdict is None:
            self.verdict = Verdict(probe.down_after, probe.up_after, good=False)
        else:
            self.verdict.down_after, self.verdict.up_after = probe.down_after, probe.up_after
        old = getattr(self, "damping", None)
        self.damping = Damping(settings.damping)
        if old is not None:
            self.damping.penalty, self.damping.at, self.damping.suppressed = old.penalty, old.at, old.suppressed

    @property
    def healthy(self) -> bool:
        """The probe verdict; a slave without probes is judged by carrier alone."""
        return self.verdict is None or self.verdict.good or not self.honour_delays

    def unproven(self) -> None:
        if self.verdict is not None:
            self.verdict.reset(good=False)

    def proven(self) -> None:
        if self.verdict is not None:
            self.verdict.reset(good=True)

    def probe_reason(self, good: bool) -> str:
        probe = self.settings.probe
        if probe is None:
            return "no probes"
        if good:
            return f"{probe.up_after} good probe rounds in a row"
        return f"{probe.down_after} failed probe rounds in a row (far side dead?)"

    def hold_reason(self, now: float) -> str:
        reuse = self.damping.reuse_at()
        hold = f"held down for {reuse - now:.0f}s" if reuse is not None else "held down"
        return (f"flapping: penalty {self.damping.value(now):.0f} reached {self.settings.damping.suppress:g}; "
                + hold)


class Core:
    """Desired state for every configured equalizer and slave."""

    def __init__(self, config: Config, now: float, honour_delays: bool = True) -> None:
        self.config = config
        self.honour_delays = honour_delays
        # What was wanted when the kernel last matched it (see settle()).
        self.settled: dict[tuple[str, str], object] | None = None
        self.slaves: dict[str, SlaveBook] = {}
        self._index: dict[str, int | None] = {}
        # Devices that left the configuration under our feet (renamed, e.g.
        # wan0 -> old0) while still attached: ifindex -> (equalizer, old name).
        # The kernel keeps the qdisc across a rename, so they are detached.
        self.orphans: dict[int, tuple[str, str]] = {}
        for eq in config.equalizers.values():
            for name in eq.slaves:
                self.slaves[name] = SlaveBook(SlaveMachine(name, now), config.slave(name), honour_delays)
                self._index[name] = None

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
                    self._index[name] = None
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
        self._index = {n: self._index.get(n) for n in books}
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
                out.extend(self._observe_slave(eq_name, name, snap, now))
        self._prune_orphans(snap)
        return out

    def _prune_orphans(self, snap: Snapshot) -> None:
        """Forget a renamed device once it is detached, deleted, or configured
        again under its new name (then it is an ordinary slave)."""
        for index, (eq_name, _old) in list(self.orphans.items()):
            link = snap.links.get(index)
            if link is None or not link.attached_to(eq_name) or self.config.equalizer_of(link.name) is not None:
                del self.orphans[index]

    def _observe_slave(self, eq_name: str, name: str, snap: Snapshot, now: float) -> list[Transition]:
        book = self.slaves[name]
        link = snap.link(name)
        out: list[Transition] = []
        old_index, self._index[name] = self._index[name], link.index if link is not None else None
        if old_index is not None and (link is None or link.index != old_index):
            moved = snap.links.get(old_index)
            if moved is not None and moved.name != name and moved.attached_to(eq_name):
                # Renamed: the same device under a name we do not manage.
                self.orphans[old_index] = (eq_name, name)
        if (link is not None and book.machine.state is not State.ABSENT
                and old_index is not None and old_index != link.index):
            # Deleted and created again under the same name (pppd redial) while
            # we were not looking: the new device has no qdisc and fresh sysctls.
            out.append(self._apply(book, Event.VANISHED,
                                   f"interface recreated (ifindex {old_index} -> {link.index})", now))
        # Several steps may follow at once (appeared -> up_delay -> up with a
        # zero delay); the table bounds them, this only guards against a loop.
        for _ in range(len(State) + 2):
            step = self._next_event(eq_name, book, link, snap, now)
            if step is None:
                break
            out.append(self._apply(book, *step, now=now))
        return out

    def _next_event(
        self, eq_name: str, book: SlaveBook, link: Link | None, snap: Snapshot, now: float
    ) -> tuple[Event, str] | None:
        """The one event the observed conditions imply now, if any."""
        m = book.machine
        st = m.state
        if link is None:
            return (Event.VANISHED, "interface deleted") if st is not State.ABSENT else None
        carrier = link.has_carrier
        if st is State.ABSENT:
            if link.attached_to(eq_name):
                return Event.ADOPTED, f"found attached to {eq_name}"
            if carrier:
                return Event.CARRIER_BACK, "appeared with carrier"
            return Event.CARRIER_LOST, f"appeared {_why_down(link)}"
        if st is State.HELD_DOWN:
            if not book.damping.check(now):
                return Event.REUSE, f"flap penalty decayed below {book.settings.damping.reuse:g}"
            return None
        if st in (State.DOWN, State.UP_DELAY, State.PROBING, State.FAILED) and book.damping.check(now):
            return Event.SUPPRESSED, book.hold_reason(now)
        if carrier and st in (State.DOWN, State.DOWN_DELAY):
            return Event.CARRIER_BACK, "carrier returned"
        if not carrier and st in (State.UP_DELAY, State.PROBING, State.UP, State.FAILED, State.REFUSED):
            return Event.CARRIER_LOST, _why_down(link, "carrier lost")
        expired = m.deadline is not None and now >= m.deadline
        if st is State.UP_DELAY and expired:
            why = f"carrier up for {book.up_delay:g}s" if book.up_delay else m.reason
            if book.healthy:
                return Event.TIMER, why
            return Event.AWAIT_PROBES, f"{why}; waiting for {book.settings.probe.up_after if book.settings.probe else 0}" \
                                       " good probe rounds"
        if st is State.DOWN_DELAY and expired:
            return Event.TIMER, f"carrier down for {book.down_delay:g}s" if book.down_delay else m.reason
        if st in (State.PROBING, State.FAILED) and book.healthy:
            return Event.PROBE_OK, book.probe_reason(good=True)
        if st is State.UP and not book.healthy:
            return Event.PROBE_FAILED, book.probe_reason(good=False)
        if st is State.REFUSED and m.refused_on != _refusal_context(eq_name, link, snap):
            return Event.RETRY, "the slave or its equalizer changed since the refusal"
        return None

    def _apply(self, book: SlaveBook, event: Event, reason: str, now: float) -> Transition:
        """Run one event through the table, then keep the books: deadlines,
        the probe verdict and the flap penalty."""
        m = book.machine
        new = TRANSITIONS.get((m.state, event))  # handle() refuses an illegal one
        deadline = None
        if new is State.UP_DELAY:
            deadline = now + book.up_delay
        elif new is State.DOWN_DELAY:
            deadline = now + book.down_delay
        t = m.handle(event, now, reason, deadline)
        if t.new in (State.UP_DELAY, State.DOWN, State.ABSENT):
            book.unproven()  # a line coming back must prove itself again
        elif event is Event.ADOPTED:
            book.proven()  # found working: keep it unless probes fail
        if t.old in WANTS_ATTACHED and t.new in (State.DOWN, State.FAILED, State.ABSENT):
            book.damping.flap(now)
        if t.new is State.HELD_DOWN:
            m.deadline = book.damping.reuse_at()
        return t

    def probe_round(self, name: str, ok: bool) -> bool:
        """Count one probe round of a slave; True when its verdict flipped (the
        caller should then reconcile)."""
        book = self.slaves.get(name)
        return book is not None and book.verdict is not None and book.verdict.record(ok)

    def probe_settings(self, name: str, snap: Snapshot) -> ProbeConfig | None:
        """The probes that should run on a slave now: while it exists with
        carrier and may still be, or become, attached."""
        book = self.slaves[name]
        link = snap.link(name)
        if book.settings.probe is None or link is None or not link.has_carrier:
            return None
        if book.machine.state in (State.ABSENT, State.DOWN, State.REFUSED):
            return None
        return book.settings.probe

    def refused(self, action: Attach, error: int, snap: Snapshot, now: float) -> tuple[Transition | None, str]:
        """Record that the kernel refused an attach; return the transition and
        a one-line diagnosis naming the cause and the fix."""
        m = self.slaves[action.slave].machine
        link = snap.link(action.slave)
        master = snap.link(action.equalizer)
        message = diagnose_refusal(action.equalizer, link, master, error)
        transition = None
        if m.state is State.UP and link is not None:
            transition = m.handle(Event.REFUSED, now, message)
            m.refused_on = _refusal_context(action.equalizer, link, snap)
        return transition, message

    def next_deadline(self) -> float | None:
        deadlines = [b.machine.deadline for b in self.slaves.values() if b.machine.deadline is not None]
        return min(deadlines, default=None)

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
