"""The life of one slave: states, events and the one table of transitions.

A slave is wanted in its equalizer only in the states of `WANTS_ATTACHED`.
Which event happens when is decided by the core from what it observes
(carrier, delays, probe verdict, flap penalty); this module only says which
events are legal where. Time is injected (`now`, seconds on a monotonic clock).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
