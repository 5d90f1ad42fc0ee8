"""The pure core, the planner: configuration + observed kernel state -> actions.

`Core.observe` hands what the kernel shows to each slave's book (`slave.py`,
which owns the slave's whole life) and notes devices renamed away from the
configuration; `Core.plan` compares what the states and the configuration want
with what the kernel holds and lists the actions that close the gap, in a safe
order, plus the faults an operator must fix. Nothing here does I/O or reads a
clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from .actions import (
    Action,
    AddAddress,
    Attach,
    DeleteAddress,
    DeleteConnectedRoute,
    DeleteDefaultRoute,
    Detach,
    LinkDown,
    LinkUp,
    ReplaceDefaultRoute,
    SetMtu,
    SetRpFilter,
)
from .lineroutes import plan_line_routes, plan_line_rules, plan_stray_routes, plan_stray_rules
from .config import IPV6_DEFAULT_METRIC, Config, EqualizerConfig, ProbeConfig
from .defaults import teql_number
from .observed import (
    DEFAULT_DST,
    DEFAULT_DST6,
    IFA_F_NOPREFIXROUTE,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTN_UNREACHABLE,
    RTPROT_KERNEL,
    TEQL_FLAGS,
    IPNetwork,
    Link,
    Route,
    Rule,
    Snapshot,
    flag_names,
)
from .slave import SlaveBook, SlaveMachine, State, Transition, next_deadline


#: What can be wrong that only the operator can fix (the metrics' `kind` label).
#: `write_failed` is the loop's: a kernel write that failed and is retried with back-off.
FaultKind = Literal["refused", "missing_equalizer", "module_not_loaded", "route_clash", "rp_filter_all",
                    "write_failed"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class Fault:
    """Something wrong that wanbalanced cannot fix; `message` names the fix.

    `key` is stable while the fault lasts, so it is logged once, not per event.
    """

    kind: FaultKind
    device: str
    message: str
    # Already logged where it arose (a failed write, with its retry delay):
    # its appearance is not logged again, its resolution is.
    logged: bool = field(default=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.device}"


@dataclass
class _Equalizer:
    """One equalizer during a planning pass; the planners fill in, in turn,
    what the later ones depend on."""

    name: str
    config: EqualizerConfig
    snap: Snapshot
    slaves: dict[str, Link | None]
    master: Link | None
    wanted: bool = False  # some existing slave wants to be attached
    attached: set[str] = field(default_factory=set)  # once the planned actions are done
    master_up: bool = False
    going_up: bool = False  # the plan sets the master up
    reopening: bool = False  # the plan sets the master down and up again (mixed flags)


@dataclass
class _Pass:
    """What one planning pass produces: actions, faults, and what is wanted of
    each managed property (values include ifindexes: a recreated device is
    not drift)."""

    actions: list[Action] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    wants: dict[tuple[str, str], object] = field(default_factory=dict)
    # Devices the pass changes on purpose although what is wanted of them did
    # not change (a reopen re-adds the route it flushes): never drift.
    deliberate: set[str] = field(default_factory=set)
    # Routes with wanbalanced's protocol that some planner wants kept; the
    # others are withdrawn (plan_stray_routes).
    kept_routes: set[Route] = field(default_factory=set)
    kept_rules: set[Rule] = field(default_factory=set)


@dataclass(frozen=True)
class MtuHold:
    """A slave keeps its equalizer's MTU down to `mtu` while it is attached and
    for `mtu_hold` after it left (`gone_since`), so that a PPP redial, which
    deletes and creates the interface within seconds, does not make the MTU
    flap. The key's second part is the equalizer itself for the MTU found at
    start, when the daemon cannot know which slave set it."""

    mtu: int
    gone_since: float | None = None


@dataclass
class MtuTarget:
    """The equalizer's MTU as its slaves allow: `limit`, that of its smallest
    attached slave (capped by the configured `mtu`), which it must not exceed;
    and `held`, below it, the MTU of a slave that left less than `mtu_hold`
    ago. A hold keeps the MTU from rising; it never lowers it."""

    limit: int | None
    why: str
    held: int | None = None
    held_why: str = ""

    def want(self, current: int) -> tuple[int | None, str]:
        """The MTU wanted of a device whose MTU is `current`, and why."""
        if self.limit is None:
            return None, self.why
        if current >= self.limit:
            return self.limit, self.why
        if self.held is None:
            return self.limit, self.why
        if self.held <= current:
            return current, self.held_why
        return self.held, self.held_why


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
        # (equalizer, slave) -> what holds the equalizer's MTU down; see MtuHold.
        self.mtu_holds: dict[tuple[str, str], MtuHold] = {}
        self._mtu_seen: set[str] = set()  # equalizers whose start-up MTU is noted
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
            for key in ("address", "address6"):
                old_address = getattr(before, key)
                if old_address is not None and (after is None or getattr(after, key) != old_address):
                    if any(a.interface == old_address for a in snap.addresses_of(master.index)):
                        cleanup.append(DeleteAddress("address changed in the configuration", eq_name, master.index,
                                                     old_address))
            route = (before.default_route, before.route_metric, before.route_table)
            changed = after is None or (after.default_route, after.route_metric, after.route_table) != route
            for dst, metric, gone in ((DEFAULT_DST, before.route_metric, changed),
                                      (DEFAULT_DST6, before.route_metric or IPV6_DEFAULT_METRIC,
                                       changed or after is None or after.address6 is None)):
                if before.default_route and gone and snap.our_default_routes(
                        master.index, metric, before.route_table, dst.version):
                    cleanup.append(DeleteDefaultRoute("default route changed in the configuration", eq_name,
                                                      master.index, metric, before.route_table, dst=dst))
        self.slaves = books
        # A slave removed from the configuration is gone for good at once.
        self.mtu_holds = {(e, n): h for (e, n), h in self.mtu_holds.items()
                          if e in new.equalizers and (n == e or new.equalizer_of(n) == e)}
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
                self.slaves[name].min_mtu = eq.min_mtu
                out.extend(self.slaves[name].observe(eq_name, link, snap, now))
            self._note_mtu_holds(eq_name, eq, snap, now)
        self._prune_orphans(snap)
        return out

    def _note_mtu_holds(self, eq_name: str, eq: EqualizerConfig, snap: Snapshot, now: float) -> None:
        """Refresh the hold of every slave that is wanted now; start the clock of
        one that left; forget the holds whose time is up."""
        master = snap.link(eq_name)
        if master is not None and eq_name not in self._mtu_seen:
            self._mtu_seen.add(eq_name)
            # At start, an MTU that no attached slave explains is kept until the
            # hold is up: the slave that set it may be redialling right now.
            if not any(l.attached_to(eq_name) and l.mtu <= master.mtu for l in snap.links.values()):
                self.mtu_holds[(eq_name, eq_name)] = MtuHold(master.mtu, now)
        for name in eq.slaves:
            link, key = snap.link(name), (eq_name, name)
            hold = self.mtu_holds.get(key)
            if link is not None and self.slaves[name].machine.wants_attached:
                self.mtu_holds[key] = MtuHold(link.mtu)
            elif hold is not None and hold.gone_since is None:
                self.mtu_holds[key] = MtuHold(hold.mtu, now)
        for key, hold in list(self.mtu_holds.items()):
            if key[0] == eq_name and hold.gone_since is not None and now >= hold.gone_since + eq.mtu_hold:
                del self.mtu_holds[key]

    def mtu_target(self, eq_name: str, snap: Snapshot, attached: set[str] | None = None) -> MtuTarget:
        """What the equalizer's MTU may be (`attached`: the slaves attached once
        the plan is done; None: as in the kernel); see MtuTarget."""
        eq = self.config.equalizers[eq_name]
        sizes: dict[str, int] = {}
        for link in snap.links.values():
            if attached is None or self.config.equalizer_of(link.name) != eq_name:
                if link.attached_to(eq_name) and link.index not in self.orphans:
                    sizes[link.name] = link.mtu  # also slaves attached by someone else: the kernel counts them
            elif link.name in attached:
                sizes[link.name] = link.mtu
        if not sizes:
            return MtuTarget(None, "no slave attached")
        name = min(sizes, key=lambda n: (sizes[n], n))
        target = MtuTarget(sizes[name], f"the MTU of {name}, its smallest slave")
        if eq.mtu is not None and eq.mtu < sizes[name]:
            target = MtuTarget(eq.mtu, f"equalizers.{eq_name}.mtu")
        for (e, who), hold in sorted(self.mtu_holds.items(), key=lambda kv: kv[1].mtu, reverse=True):
            if e == eq_name and who not in sizes and hold.mtu < min(sizes[name], eq.mtu or sizes[name]):
                target.held = hold.mtu
                target.held_why = (f"kept for {eq.mtu_hold:g}s after start (the MTU found)" if who == eq_name else
                                   f"kept for {who} (MTU {hold.mtu}) until it has been gone {eq.mtu_hold:g}s")
        return target

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
        """The earliest time something changes without an event: a slave's
        delay or hold-down, or an MTU hold running out."""
        deadlines = [next_deadline(self.slaves.values())]
        for (eq_name, _), hold in self.mtu_holds.items():
            if hold.gone_since is not None and eq_name in self.config.equalizers:
                deadlines.append(hold.gone_since + self.config.equalizers[eq_name].mtu_hold)
        return min((d for d in deadlines if d is not None), default=None)

    # -- planning ---------------------------------------------------------------

    def plan(self, snap: Snapshot) -> Plan:
        """The actions that bring the kernel to the desired state, in order:
        sysctls, then slaves, then the equalizer device, address and routes."""
        out = self._pass(snap)
        if self.settled is None:
            return Plan(tuple(out.actions), tuple(out.faults))
        kept: list[Action] = []
        drift = set()
        for a in out.actions:
            if (a.key not in self.settled or self.settled[a.key] != out.wants.get(a.key)
                    or a.device in out.deliberate):
                kept.append(a)
                continue
            book = self.slaves.get(a.device)
            if book is not None and not book.machine.wants_attached:
                continue  # a rightly detached slave is left alone, whatever is done to it
            drift.add(a.key)
            kept.append(a.as_drift(snap))
        return Plan(tuple(kept), tuple(out.faults), frozenset(drift))

    def desired(self, snap: Snapshot) -> dict[tuple[str, str], object]:
        """What is wanted of each property the daemon manages, given the slaves'
        states (values include ifindexes: a recreated device is not drift)."""
        return self._pass(snap).wants

    def settle(self, snap: Snapshot) -> None:
        """The kernel matches the plan: remember what was wanted, so that a later
        change of the kernel alone is recognised as drift."""
        self.settled = self.desired(snap)

    def _pass(self, snap: Snapshot) -> _Pass:
        """Run every planner over every equalizer, in the order the kernel needs."""
        out = _Pass()
        for eq_name, config in self.config.equalizers.items():
            eq = _Equalizer(eq_name, config, snap, {name: snap.link(name) for name in config.slaves},
                            snap.link(eq_name))
            self._plan_rp_filter(eq, out)
            self._plan_reopen(eq, out)
            self._plan_qdiscs(eq, out)  # also wanted without a master: see _plan_qdiscs
            if eq.master is None:
                out.faults.append(self._missing_equalizer(eq_name, snap))
                continue
            self._plan_link(eq, eq.master, out)
            self._plan_mtu(eq, eq.master, out)
            self._plan_address(eq, eq.master, out)
            self._plan_connected_route(eq, eq.master, out)
            self._plan_default_route(eq, eq.master, out)
            plan_line_routes(self.config, eq.name, eq.attached, snap, out.actions, out.wants, out.kept_routes)
            plan_line_rules(self.config, eq.name, eq.attached, snap, out.actions, out.wants, out.kept_rules)
        plan_stray_routes(snap, out.kept_routes, out.actions)
        plan_stray_rules(self.config, snap, out.kept_rules, out.actions)
        return out

    # -- one planner per managed property ------------------------------------------
    # Each says what it wants of its property (`out.wants`, for drift) and
    # appends the actions that get the kernel there.

    def _plan_rp_filter(self, eq: _Equalizer, out: _Pass) -> None:
        rp_filter = eq.config.rp_filter
        if rp_filter is None:
            return
        snap = eq.snap
        for name, link in eq.slaves.items():
            if link is None:
                continue
            out.wants[("rp_filter", name)] = (link.index, rp_filter)
            if link.rp_filter != rp_filter:
                out.actions.append(SetRpFilter(_rp_reason(link), link.name, link.index, rp_filter))
            if snap.all_rp_filter is not None and snap.all_rp_filter > rp_filter:
                out.faults.append(Fault(
                    "rp_filter_all", name,
                    f"{name}: effective rp_filter is max(all={snap.all_rp_filter}, {name}={rp_filter})"
                    f"={snap.all_rp_filter}; set net.ipv4.conf.all.rp_filter={rp_filter}"
                    " (wanbalanced does not change 'all', which affects every interface)",
                ))

    def _plan_qdiscs(self, eq: _Equalizer, out: _Pass) -> None:
        """Attach the slaves that are wanted, detach the others and the orphans;
        leaves `eq.attached` as it will be once the actions are done. What is
        wanted is recorded even while the master is missing, as it always was."""
        for name, link in eq.slaves.items():
            if link is not None:
                wanted = self.slaves[name].machine.wants_attached
                out.wants[("qdisc", name)] = (link.index, wanted)
                eq.wanted |= wanted
        if eq.master is None:
            return
        eq.attached = {n for n, l in eq.slaves.items() if l is not None and l.attached_to(eq.name)}
        for name, link in eq.slaves.items():
            if link is None:
                continue
            m = self.slaves[name].machine
            if m.wants_attached and not link.attached_to(eq.name):
                replace = link.qdisc is not None and link.qdisc.handle != 0
                out.actions.append(Attach(m.reason, eq.name, name, link.index, replace))
                eq.attached.add(name)
            elif not m.wants_attached and link.attached_to(eq.name):
                out.actions.append(Detach(m.reason, eq.name, name, link.index))
                eq.attached.discard(name)
            if m.state is State.REFUSED:
                out.faults.append(Fault("refused", name, m.reason))
        self._plan_orphans(eq, out)

    def _plan_orphans(self, eq: _Equalizer, out: _Pass) -> None:
        """Detach the devices renamed away from the configuration while attached."""
        for index, (orphan_eq, old) in sorted(self.orphans.items()):
            link = eq.snap.links.get(index)
            if orphan_eq == eq.name and link is not None and link.attached_to(eq.name):
                # Detach is keyed by ifindex: the action names the device as it is now.
                out.actions.append(Detach(f"renamed from {old}, which left the configuration", eq.name,
                                          link.name, index))

    def _plan_link(self, eq: _Equalizer, master: Link, out: _Pass) -> None:
        out.wants[("link", eq.name)] = (master.index, eq.wanted)
        eq.master_up = master.admin_up and not eq.reopening
        if eq.attached and not eq.master_up:
            # The kernel refuses to open a teql device with no slaves (EUNATCH),
            # so this must follow the attaches.
            out.actions.append(LinkUp(f"{len(eq.attached)} slave(s) attached", eq.name, master.index))
            eq.master_up = eq.going_up = True

    def _plan_reopen(self, eq: _Equalizer, out: _Pass) -> None:
        """A running teql device refuses a slave that lacks one of its flags
        (POINTOPOINT, BROADCAST, MULTICAST): a PPP line beside Ethernet ones.
        With `mixed = "reopen"` the device is set down for the attach and up
        again, and so takes the flags its slaves share (NBMA for such a mix)."""
        master = eq.master
        if master is None or not master.admin_up or eq.config.mixed != "reopen":
            return
        staying = [n for n, l in eq.slaves.items()
                   if l is not None and l.attached_to(eq.name) and self.slaves[n].machine.wants_attached]
        if not staying:
            return  # a first slave gives the device its own flags
        for name, link in eq.slaves.items():
            if link is None or link.attached_to(eq.name) or not self.slaves[name].machine.wants_attached:
                continue
            missing = master.flags & TEQL_FLAGS & ~link.flags
            if missing:
                out.actions.append(LinkDown(
                    f"{name} is not {flag_names(missing)} like {eq.name} ({', '.join(staying)}): reopening "
                    f"{eq.name} so that it takes the flags its slaves share", eq.name, master.index))
                eq.reopening = True
                out.deliberate.add(eq.name)
                return

    def _plan_mtu(self, eq: _Equalizer, master: Link, out: _Pass) -> None:
        """Keep the equalizer's MTU at what its slaves allow (see MtuTarget). A
        lowering goes just before the first attach the kernel would refuse for
        its MTU; any other change goes last, after the detaches a raise needs."""
        target = self.mtu_target(eq.name, eq.snap, eq.attached)
        out.wants[("mtu", eq.name)] = (master.index, target.limit, target.held)
        if target.limit is None:
            return
        # Follow the kernel through the plan: sch_teql.c, teql_qdisc_init and teql_master_open.
        count = sum(1 for l in eq.snap.links.values() if l.attached_to(eq.name))
        mtu, up, i = master.mtu, master.admin_up, 0
        while i < len(out.actions):
            a = out.actions[i]
            if isinstance(a, LinkDown) and a.name == eq.name:
                up = False
            elif isinstance(a, LinkUp) and a.name == eq.name:
                up, mtu = True, min(l.mtu for n in eq.attached if (l := eq.slaves[n]) is not None)
            elif isinstance(a, Detach) and a.equalizer == eq.name:
                count -= 1
            elif isinstance(a, Attach) and a.equalizer == eq.name and (link := eq.slaves.get(a.slave)) is not None:
                if count == 0:
                    mtu = link.mtu  # the first slave gives its own
                elif not up:
                    mtu = min(mtu, link.mtu)
                elif link.mtu < mtu:
                    out.actions.insert(i, SetMtu(f"{a.slave} joins with MTU {link.mtu}: {target.limit}, {target.why}",
                                                 eq.name, master.index, target.limit))
                    mtu, i = target.limit, i + 1
                count += 1
            i += 1
        want, why = target.want(mtu)
        if want is not None and want != mtu:
            verb = "lowered" if want < mtu else "raised"
            out.actions.append(SetMtu(f"{verb} to {want}: {why}", eq.name, master.index, want))

    def _plan_address(self, eq: _Equalizer, master: Link, out: _Pass) -> None:
        wanted = [a for a in (eq.config.address, eq.config.address6) if a is not None]
        if not wanted:
            return
        out.wants[("address", eq.name)] = (master.index, *map(str, wanted))
        # Setting the device down flushes its IPv6 addresses (keep_addr_on_down
        # 0, the default): a reopen adds ours again in the same pass. Where the
        # sysctl keeps them, that add only re-asserts one (it is a replace).
        have = {a.interface for a in eq.snap.addresses_of(master.index)
                if not (eq.reopening and a.interface.version == 6)}
        for address in wanted:
            if address not in have:
                out.actions.append(AddAddress("configured address missing", eq.name, master.index, address))

    def _plan_connected_route(self, eq: _Equalizer, master: Link, out: _Pass) -> None:
        address = eq.config.address
        if address is None:
            return
        out.wants[("connected_route", eq.name)] = (master.index, False)
        mine = [a for a in eq.snap.addresses_of(master.index) if a.interface == address]
        connected = [
            r for r in eq.snap.routes_via(master.index)
            if r.dst == address.network and r.proto == RTPROT_KERNEL and r.scope == RT_SCOPE_LINK
        ]
        # An adopted address without noprefixroute gets its connected route
        # back each time the device comes up.
        expect_connected = (
            eq.going_up and bool(mine) and not mine[0].flags & IFA_F_NOPREFIXROUTE
            and address.network.prefixlen < 32
        )
        if connected or expect_connected:
            table = connected[0].table if connected else RT_TABLE_MAIN
            out.actions.append(DeleteConnectedRoute(
                "the seed's local address is arbitrary: no connected route",
                eq.name, master.index, address.network, table,
            ))

    def _plan_default_route(self, eq: _Equalizer, master: Link, out: _Pass) -> None:
        """The default route through the equalizer while a slave is attached;
        with none, no route (`all_down = "withdraw"`: a backup route takes
        over) or an unreachable or blackhole one of the same metric and table,
        which a single replace swaps with the equalizer's. The same for IPv6
        (::/0) when the equalizer has an `address6`."""
        cfg = eq.config
        if not cfg.default_route:
            return
        out.wants[("route", eq.name)] = (master.index, eq.wanted, cfg.route_metric, cfg.route_table, cfg.all_down,
                                         cfg.address6 is not None)
        self._plan_default_route_of(eq, master, out, DEFAULT_DST, cfg.route_metric)
        if cfg.address6 is not None:
            # The kernel stores an IPv6 route's metric 0 as 1024.
            self._plan_default_route_of(eq, master, out, DEFAULT_DST6, cfg.route_metric or IPV6_DEFAULT_METRIC)

    def _plan_default_route_of(self, eq: _Equalizer, master: Link, out: _Pass, dst: IPNetwork, metric: int) -> None:
        cfg = eq.config
        version = dst.version
        defaults = [r for r in eq.snap.default_routes(cfg.route_table, version) if r.priority == metric]
        ours = eq.snap.our_default_routes(master.index, metric, cfg.route_table, version)
        stand_in = _ALL_DOWN_TYPES[cfg.all_down]
        standing = [r for r in defaults if r.ours and r.type != RTN_UNICAST]
        want = bool(eq.attached) and eq.master_up
        kind = RTN_UNICAST if want else stand_in
        # Whatever stands at the route's place goes with the replace below.
        out.kept_routes.update(ours + standing if kind is not None else [])
        if eq.reopening:  # setting the device down flushes the routes through it: add ours again
            defaults, ours = [r for r in defaults if r.oif != master.index], []
        if kind is None:
            if ours:
                out.actions.append(DeleteDefaultRoute(
                    "no slave attached", eq.name, master.index, metric, cfg.route_table, dst=dst,
                ))
            return  # a stand-in left by other settings is a stray: withdrawn
        have = ours if kind == RTN_UNICAST else [r for r in standing if r.type == kind]
        if have and all(r.ours for r in have):
            return
        # Another equalizer's route at the same place is someone else's too.
        theirs = [r for r in defaults if r not in ours and r not in standing]
        if theirs:
            out.faults.append(Fault(
                "route_clash", eq.name,
                f"{eq.name}: another {'IPv6 ' if version == 6 else ''}default route has metric {metric} in table "
                f"{cfg.route_table}; wanbalanced will not replace it: give it a higher metric "
                f"or set equalizers.{eq.name}.route_metric",
            ))
            return
        why = f"{len(eq.attached)} slave(s) attached" if want else f"no slave attached (all_down = {cfg.all_down})"
        if have:
            # Made by hand or by a version before the protocol number: one
            # replace makes it ours, then restarts write nothing.
            why = f"adopting the route (proto {have[0].proto}) as wanbalanced's"
        out.actions.append(ReplaceDefaultRoute(why, eq.name, master.index, metric, cfg.route_table, kind, dst))

    def _missing_equalizer(self, eq_name: str, snap: Snapshot) -> Fault:
        need = max(teql_number(n) or 0 for n in self.config.equalizers) + 1
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


#: The route that stands in for the equalizer's default route while no slave
#: is attached, by `all_down`; None: none.
_ALL_DOWN_TYPES: dict[str, int | None] = {"withdraw": None, "unreachable": RTN_UNREACHABLE,
                                          "blackhole": RTN_BLACKHOLE}


def _rp_reason(link: Link) -> str:
    if link.rp_filter is None:
        return "rp_filter unknown"
    return f"rp_filter is {link.rp_filter}"
