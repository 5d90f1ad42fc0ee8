"""The life of one slave: states, events and the one table of transitions.

A slave is wanted in its equalizer only in the states of `WANTS_ATTACHED`.
Time is injected (`now`, seconds on a monotonic clock), so the machine is
tested without sleeping.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class State(enum.Enum):
    ABSENT = "absent"          # no such interface
    DOWN = "down"              # exists, no carrier (or administratively down)
    UP_DELAY = "up_delay"      # carrier back, waiting up_delay before re-slaving
    UP = "up"                  # healthy: wanted in the equalizer
    DOWN_DELAY = "down_delay"  # carrier lost, still attached until down_delay ends
    REFUSED = "refused"        # the kernel refused to attach it; waits for a change


class Event(enum.Enum):
    ADOPTED = "adopted"            # found already attached and working at start
    CARRIER_BACK = "carrier_back"  # has carrier (also: appeared with carrier)
    CARRIER_LOST = "carrier_lost"  # lost carrier (also: appeared without)
    VANISHED = "vanished"          # the interface was deleted
    TIMER = "timer"                # the pending delay ran out
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
    (S.UP_DELAY, E.TIMER): S.UP,
    (S.UP_DELAY, E.CARRIER_LOST): S.DOWN,
    (S.UP_DELAY, E.VANISHED): S.ABSENT,
    (S.UP, E.CARRIER_LOST): S.DOWN_DELAY,
    (S.UP, E.VANISHED): S.ABSENT,
    (S.UP, E.REFUSED): S.REFUSED,
    (S.DOWN_DELAY, E.TIMER): S.DOWN,
    (S.DOWN_DELAY, E.CARRIER_BACK): S.UP,
    (S.DOWN_DELAY, E.VANISHED): S.ABSENT,
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
    """One slave's state, its pending deadline and why it is where it is."""

    def __init__(self, name: str, up_delay: float, down_delay: float, now: float) -> None:
        self.name = name
        self.up_delay = up_delay
        self.down_delay = down_delay
        self.state = State.ABSENT
        self.since = now
        self.deadline: float | None = None
        self.reason = "not seen yet"
        # What the kernel refused, to retry only once something changed.
        self.refused_on: object = None

    @property
    def wants_attached(self) -> bool:
        return self.state in WANTS_ATTACHED

    def handle(self, event: Event, now: float, reason: str) -> Transition:
        """Apply one event; raise IllegalTransition if the table forbids it."""
        try:
            new = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise IllegalTransition(
                f"{self.name}: event {event.value} is not allowed in state {self.state.value}"
            ) from None
        old = self.state
        self.state, self.since, self.reason = new, now, reason
        self.deadline = None
        if new is State.UP_DELAY:
            self.deadline = now + self.up_delay
        elif new is State.DOWN_DELAY:
            self.deadline = now + self.down_delay
        if new is not State.REFUSED:
            self.refused_on = None
        return Transition(self.name, old, new, event, reason)

    def expire(self, now: float) -> Transition | None:
        """Fire the pending delay if it has run out."""
        if self.deadline is None or now < self.deadline:
            return None
        delay = self.up_delay if self.state is State.UP_DELAY else self.down_delay
        verb = "up" if self.state is State.UP_DELAY else "down"
        # With no delay configured the cause is still the carrier change itself.
        reason = f"carrier {verb} for {delay:g}s" if delay else self.reason
        return self.handle(Event.TIMER, now, reason)
