"""The slave state machine: the table, delays, and illegal events."""

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


def test_only_up_and_down_delay_want_the_equalizer() -> None:
    assert WANTS_ATTACHED == {State.UP, State.DOWN_DELAY}


def test_up_delay_holds_until_deadline() -> None:
    m = SlaveMachine("wan1", up_delay=2.0, down_delay=0.0, now=100.0)
    m.handle(Event.CARRIER_LOST, 100.0, "appeared without carrier")
    m.handle(Event.CARRIER_BACK, 101.0, "carrier returned")
    assert m.state is State.UP_DELAY and m.deadline == 103.0
    assert m.expire(102.999) is None
    t = m.expire(103.0)
    assert t is not None and t.new is State.UP and t.event is Event.TIMER
    assert m.deadline is None and m.wants_attached


def test_carrier_loss_during_up_delay_cancels_it() -> None:
    m = SlaveMachine("wan1", up_delay=2.0, down_delay=0.0, now=0.0)
    m.handle(Event.CARRIER_BACK, 0.0, "appeared with carrier")
    m.handle(Event.CARRIER_LOST, 1.0, "carrier lost")
    assert m.state is State.DOWN and m.deadline is None
    assert m.expire(10.0) is None


def test_down_delay_keeps_slave_attached_and_carrier_return_cancels() -> None:
    m = SlaveMachine("wan0", up_delay=0.0, down_delay=0.5, now=0.0)
    m.handle(Event.ADOPTED, 0.0, "found attached")
    m.handle(Event.CARRIER_LOST, 1.0, "carrier lost")
    assert m.state is State.DOWN_DELAY and m.wants_attached
    m.handle(Event.CARRIER_BACK, 1.2, "carrier returned")
    assert m.state is State.UP and m.deadline is None


def test_illegal_event_raises_with_names() -> None:
    m = SlaveMachine("wan0", 0.0, 0.0, 0.0)
    with pytest.raises(IllegalTransition, match="wan0: event timer is not allowed in state absent"):
        m.handle(Event.TIMER, 0.0, "x")
    assert m.state is State.ABSENT


def test_refused_slave_retries_to_up() -> None:
    m = SlaveMachine("wan0", 0.0, 0.0, 0.0)
    m.handle(Event.CARRIER_BACK, 0.0, "appeared")
    m.expire(0.0)
    m.handle(Event.REFUSED, 1.0, "mtu")
    m.refused_on = ("ctx",)
    assert not m.wants_attached
    m.handle(Event.RETRY, 2.0, "changed")
    assert m.state is State.UP and m.refused_on is None
