"""The life of one slave: states, events, the one table of transitions, and
everything that decides which event happens when.

A slave is wanted in its equalizer only in the states of `WANTS_ATTACHED`.
`SlaveBook.observe` turns what the kernel shows of the slave (carrier, its
ifindex, a refusal's context) and what the core keeps about it (delays, probe
verdict, flap penalty) into events, and runs them through the table. Nothing
here does I/O or reads a clock: time is injected (`now`, seconds on a
monotonic clock).
"""

from __future__ import annotations

import enum
import errno as errnos
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .health import Damping, Verdict
from .observed import IFF_BROADCAST, IFF_MULTICAST, IFF_POINTOPOINT, TEQL_FLAGS, Link, Snapshot

if TYPE_CHECKING:  # only types: `status` (which names the states) needs no models
    from .config import ProbeConfig, SlaveConfig


class State(enum.Enum):
    ABSENT = "absent"          # no such interface
    DOWN = "down"              # exists, no carrier (or administratively down)
    UP_DELAY = "up_delay"      # carrier back, waiting up_delay before re-slaving
    PROBING = "probing"        # carrier stable, waiting for up_after good probe rounds
    UP = "up"                  # healthy: wanted in the equalizer
    DOWN_DELAY = "down_delay"  # carrier lost, still attached until down_delay ends
    FAILED = "failed"          # carrier up but probes fail: the far side is dead
    HELD_DOWN = "held_down"    # flapping: kept out until its penalty decays
    REFUSED = "refused"        # the kernel refused to attach it; waits for a change


class Event(enum.Enum):
    ADOPTED = "adopted"            # found already attached and working at start
    CARRIER_BACK = "carrier_back"  # has carrier (also: appeared with carrier)
    CARRIER_LOST = "carrier_lost"  # lost carrier (also: appeared without)
    VANISHED = "vanished"          # the interface was deleted
    TIMER = "timer"                # the pending delay ran out (and probes pass, if any)
    AWAIT_PROBES = "await_probes"  # up_delay ran out, but probes have not passed yet
    PROBE_OK = "probe_ok"          # up_after good probe rounds in a row
    PROBE_FAILED = "probe_failed"  # down_after failed probe rounds in a row
    SUPPRESSED = "suppressed"      # the flap penalty crossed its suppress threshold
    REUSE = "reuse"                # the flap penalty decayed below its reuse threshold
    REFUSED = "refused"            # the kernel refused the attach
    RETRY = "retry"                # what made the kernel refuse has changed


S, E = State, Event

#: The only legal transitions. Anything else is a bug and raises.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.ABSENT, E.ADOPTED): S.UP,
    (S.ABSENT, E.CARRIER_BACK): S.UP_DELAY,
    (S.ABSENT, E.CARRIER_LOST): S.DOWN,
    (S.DOWN, E.CARRIER_BACK): S.UP_DELAY,
    (S.DOWN, E.VANISHED): S.ABSENT,
    (S.DOWN, E.SUPPRESSED): S.HELD_DOWN,
    (S.UP_DELAY, E.TIMER): S.UP,
    (S.UP_DELAY, E.AWAIT_PROBES): S.PROBING,
    (S.UP_DELAY, E.CARRIER_LOST): S.DOWN,
    (S.UP_DELAY, E.VANISHED): S.ABSENT,
    (S.UP_DELAY, E.SUPPRESSED): S.HELD_DOWN,
    (S.PROBING, E.PROBE_OK): S.UP,
    (S.PROBING, E.CARRIER_LOST): S.DOWN,
    (S.PROBING, E.VANISHED): S.ABSENT,
    (S.PROBING, E.SUPPRESSED): S.HELD_DOWN,
    (S.UP, E.CARRIER_LOST): S.DOWN_DELAY,
    (S.UP, E.PROBE_FAILED): S.FAILED,
    (S.UP, E.VANISHED): S.ABSENT,
    (S.UP, E.REFUSED): S.REFUSED,
    (S.DOWN_DELAY, E.TIMER): S.DOWN,
    (S.DOWN_DELAY, E.CARRIER_BACK): S.UP,
    (S.DOWN_DELAY, E.VANISHED): S.ABSENT,
    (S.FAILED, E.PROBE_OK): S.UP,
    (S.FAILED, E.CARRIER_LOST): S.DOWN,
    (S.FAILED, E.VANISHED): S.ABSENT,
    (S.FAILED, E.SUPPRESSED): S.HELD_DOWN,
    (S.HELD_DOWN, E.REUSE): S.DOWN,
    (S.HELD_DOWN, E.VANISHED): S.ABSENT,
    (S.REFUSED, E.RETRY): S.UP,
    (S.REFUSED, E.CARRIER_LOST): S.DOWN,
    (S.REFUSED, E.VANISHED): S.ABSENT,
}

#: States in which the slave belongs in its equalizer.
WANTS_ATTACHED = frozenset({S.UP, S.DOWN_DELAY})


class IllegalTransition(RuntimeError):
    """An event arrived that the table does not allow in the current state."""


@dataclass(frozen=True)
class Transition:
    """A state change, as logged and counted."""

    slave: str
    old: State
    new: State
    event: Event
    reason: str


class SlaveMachine:
    """One slave's state, its pending deadline and why it is where it is.

    Deadlines are set by the core (delays, hold-downs); `handle` only applies
    the table.
    """

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.state = State.ABSENT
        self.since = now
        self.deadline: float | None = None
        self.reason = "not seen yet"
        # What the kernel refused, to retry only once something changed.
        self.refused_on: object = None

    @property
    def wants_attached(self) -> bool:
        return self.state in WANTS_ATTACHED

    def handle(self, event: Event, now: float, reason: str, deadline: float | None = None) -> Transition:
        """Apply one event; raise IllegalTransition if the table forbids it."""
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(
                f"{self.name}: event {event.value} is not allowed in state {self.state.value}"
            ) from None
        old = self.state
        self.state, self.since, self.reason, self.deadline = new, now, reason, deadline
        if new is not State.REFUSED:
            self.refused_on = None
        return Transition(self.name, old, new, event, reason)


_FLAGS = TEQL_FLAGS


class SlaveBook:
    """Everything the core keeps about one slave: its machine, its settings,
    its probe verdict, its flap penalty and the ifindex it was last seen with."""

    def __init__(self, machine: SlaveMachine, settings: SlaveConfig, honour_delays: bool) -> None:
        self.machine = machine
        self.honour_delays = honour_delays
        self.verdict: Verdict | None = None
        # The ifindex last observed: a new one under the same name is a new device.
        self.index: int | None = None
        # The equalizer's floor (equalizers.<name>.min_mtu), set by the core.
        self.min_mtu: int | None = None
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

    # -- observing ------------------------------------------------------------

    def observe(self, eq_name: str, link: Link | None, snap: Snapshot, now: float) -> list[Transition]:
        """Run what the kernel shows of this slave through its machine; return
        what changed. `link` is the device now named like the slave."""
        out: list[Transition] = []
        old_index, self.index = self.index, link.index if link is not None else None
        if (link is not None and self.machine.state is not State.ABSENT
                and old_index is not None and old_index != link.index):
            # Deleted and created again under the same name (pppd redial) while
            # we were not looking: the new device has no qdisc and fresh sysctls.
            out.append(self.apply(Event.VANISHED, f"interface recreated (ifindex {old_index} -> {link.index})",
                                  now))
        # Several steps may follow at once (appeared -> up_delay -> up with a
        # zero delay); the table bounds them, this only guards against a loop.
        for _ in range(len(State) + 2):
            step = self.next_event(eq_name, link, snap, now)
            if step is None:
                break
            out.append(self.apply(*step, now=now))
        return out

    def next_event(self, eq_name: str, link: Link | None, snap: Snapshot, now: float) -> tuple[Event, str] | None:
        """The one event the observed conditions imply now, if any."""
        m = self.machine
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
            if not self.damping.check(now):
                return Event.REUSE, f"flap penalty decayed below {self.settings.damping.reuse:g}"
            return None
        if st in (State.DOWN, State.UP_DELAY, State.PROBING, State.FAILED) and self.damping.check(now):
            return Event.SUPPRESSED, self.hold_reason(now)
        if carrier and st in (State.DOWN, State.DOWN_DELAY):
            return Event.CARRIER_BACK, "carrier returned"
        if not carrier and st in (State.UP_DELAY, State.PROBING, State.UP, State.FAILED, State.REFUSED):
            return Event.CARRIER_LOST, _why_down(link, "carrier lost")
        if self.min_mtu is not None and link.mtu < self.min_mtu:
            if st is State.UP:
                return Event.REFUSED, (
                    f"{m.name}: its MTU {link.mtu} is below equalizers.{eq_name}.min_mtu ({self.min_mtu}): "
                    f"not attached, so that {eq_name}'s MTU stays at least {self.min_mtu}; it joins once its "
                    f"MTU is {self.min_mtu} or more (or lower min_mtu)")
            if st is State.REFUSED:
                return None  # until its MTU reaches the floor
        expired = m.deadline is not None and now >= m.deadline
        if st is State.UP_DELAY and expired:
            why = f"carrier up for {self.up_delay:g}s" if self.up_delay else m.reason
            if self.healthy:
                return Event.TIMER, why
            return Event.AWAIT_PROBES, f"{why}; waiting for {self.settings.probe.up_after if self.settings.probe else 0}" \
                                       " good probe rounds"
        if st is State.DOWN_DELAY and expired:
            return Event.TIMER, f"carrier down for {self.down_delay:g}s" if self.down_delay else m.reason
        if st in (State.PROBING, State.FAILED) and self.healthy:
            return Event.PROBE_OK, self.probe_reason(good=True)
        if st is State.UP and not self.healthy:
            return Event.PROBE_FAILED, self.probe_reason(good=False)
        if st is State.REFUSED and m.refused_on != refusal_context(eq_name, link, snap):
            return Event.RETRY, "the slave or its equalizer changed since the refusal"
        return None

    def apply(self, event: Event, reason: str, now: float) -> Transition:
        """Run one event through the table, then keep the books: deadlines,
        the probe verdict and the flap penalty."""
        m = self.machine
        new = TRANSITIONS.get((m.state, event))  # handle() refuses an illegal one
        deadline = None
        if new is State.UP_DELAY:
            deadline = now + self.up_delay
        elif new is State.DOWN_DELAY:
            deadline = now + self.down_delay
        t = m.handle(event, now, reason, deadline)
        if t.new in (State.UP_DELAY, State.DOWN, State.ABSENT):
            self.unproven()  # a line coming back must prove itself again
        elif event is Event.ADOPTED:
            self.proven()  # found working: keep it unless probes fail
        if t.old in WANTS_ATTACHED and t.new in (State.DOWN, State.FAILED, State.ABSENT):
            self.damping.flap(now)
        if t.new is State.HELD_DOWN:
            m.deadline = self.damping.reuse_at()
        return t

    # -- probes and refusals ------------------------------------------------------

    def probe_round(self, ok: bool) -> bool:
        """Count one probe round; True when the verdict flipped."""
        return self.verdict is not None and self.verdict.record(ok)

    def probe_settings(self, link: Link | None) -> ProbeConfig | None:
        """The probes that should run now: while the slave exists with carrier
        and may still be, or become, attached."""
        if self.settings.probe is None or link is None or not link.has_carrier:
            return None
        if self.machine.state in (State.ABSENT, State.DOWN, State.REFUSED):
            return None
        return self.settings.probe

    def refused(self, eq_name: str, error: int, snap: Snapshot, now: float) -> tuple[Transition | None, str]:
        """Record that the kernel refused to attach the slave to `eq_name`;
        return the transition and a one-line diagnosis naming the cause and the fix."""
        m = self.machine
        link = snap.link(m.name)
        message = diagnose_refusal(eq_name, link, snap.link(eq_name), error)
        transition = None
        if m.state is State.UP and link is not None:
            transition = m.handle(Event.REFUSED, now, message)
            m.refused_on = refusal_context(eq_name, link, snap)
        return transition, message


def next_deadline(books: Iterable[SlaveBook]) -> float | None:
    """The earliest pending deadline (a delay or a hold-down) of the slaves."""
    deadlines = [b.machine.deadline for b in books if b.machine.deadline is not None]
    return min(deadlines, default=None)


def _why_down(link: Link, no_carrier: str = "without carrier") -> str:
    return no_carrier if link.admin_up else "administratively down"


def refusal_context(eq_name: str, link: Link, snap: Snapshot) -> object:
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
            # wanbalanced lowers the master's MTU first: this is a race with a change of either.
            return (
                f"{slave}: {eq_name} refused the slave (EINVAL): its MTU {link.mtu} is below {eq_name}'s "
                f"{master.mtu}; retried when either changes"
            )
        for flag, label in ((IFF_POINTOPOINT, "POINTOPOINT"), (IFF_BROADCAST, "BROADCAST"), (IFF_MULTICAST, "MULTICAST")):
            if master.flags & flag and not link.flags & flag:
                return (
                    f"{slave}: {eq_name} refused the slave (EINVAL): {eq_name} is {label} and {slave} is not; "
                    f"a running teql device takes only like links: set equalizers.{eq_name}.mixed = \"reopen\" "
                    f"to let wanbalanced set {eq_name} down and up around the attach (a short gap in traffic)"
                )
        return (
            f"{slave}: {eq_name} refused the slave (EINVAL): its link-layer header is longer than "
            f"{eq_name} supports; this interface type cannot be a teql slave"
        )
    return f"{slave}: attaching to {eq_name} failed: {os.strerror(error)} (errno {error})"
