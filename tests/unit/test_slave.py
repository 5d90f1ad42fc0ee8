"""The slave state machine: the table and illegal events."""

from __future__ import annotations

import pytest

from wanbalanced.slave import TRANSITIONS, WANTS_ATTACHED, Event, IllegalTransition, SlaveMachine, State


def test_every_state_is_reachable_and_left() -> None:
    reached = {new for new in TRANSITIONS.values()} | {State.ABSENT}
    left = {old for old, _ in TRANSITIONS}
    assert reached == set(State)
    assert left == set(State)


def test_every_non_absent_state_handles_vanishing() -> None:
    # An interface can be deleted in any state (pppd exits); none may crash.
    for state in State:
        if state is not State.ABSENT:
            assert TRANSITIONS[(state, Event.VANISHED)] is State.ABSENT


def test_every_state_with_carrier_handles_losing_it() -> None:
    for state in (State.UP_DELAY, State.PROBING, State.UP, State.FAILED, State.REFUSED):
        assert (state, Event.CARRIER_LOST) in TRANSITIONS


def test_only_up_and_down_delay_want_the_equalizer() -> None:
    assert WANTS_ATTACHED == {State.UP, State.DOWN_DELAY}


def test_handle_sets_deadline_reason_and_since() -> None:
    m = SlaveMachine("wan1", now=100.0)
    m.handle(Event.CARRIER_LOST, 100.0, "appeared without carrier")
    t = m.handle(Event.CARRIER_BACK, 101.0, "carrier returned", deadline=103.0)
    assert (t.old, t.new, t.event) == (State.DOWN, State.UP_DELAY, Event.CARRIER_BACK)
    assert (m.deadline, m.since, m.reason) == (103.0, 101.0, "carrier returned")
    m.handle(Event.TIMER, 103.0, "carrier up for 2s")
    assert m.deadline is None and m.wants_attached


def test_illegal_event_raises_with_names() -> None:
    m = SlaveMachine("wan0", 0.0)
    with pytest.raises(IllegalTransition, match="wan0: event timer is not allowed in state absent"):
        m.handle(Event.TIMER, 0.0, "x")
    assert m.state is State.ABSENT


def test_refused_slave_retries_to_up() -> None:
    m = SlaveMachine("wan0", 0.0)
    m.handle(Event.ADOPTED, 0.0, "found")
    m.handle(Event.REFUSED, 1.0, "mtu")
    m.refused_on = ("ctx",)
    assert not m.wants_attached
    m.handle(Event.RETRY, 2.0, "changed")
    assert m.state is State.UP and m.refused_on is None
