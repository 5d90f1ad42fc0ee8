"""The slave's life: the table, illegal events, and what the book makes of
observations (delays, probes, flap damping, refusals), driven through the core."""

from __future__ import annotations

import errno

import pytest
from kernelstate import config, converged, master, slave, snapshot

from wanbalanced.actions import Attach
from wanbalanced.core import Core
from wanbalanced.observed import IFF_POINTOPOINT
from wanbalanced.slave import (
    TRANSITIONS,
    WANTS_ATTACHED,
    Event,
    IllegalTransition,
    SlaveMachine,
    State,
    diagnose_refusal,
)


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


def commands(core: Core, snap: object) -> list[str]:
    return [a.command() for a in core.plan(snap).actions]  # type: ignore[arg-type]


def test_adoption_skips_up_delay() -> None:
    # A working slave found attached is never detached to wait out up_delay.
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
[slaves.wan0]
up_delay = "5s"
""")
    snap = converged()
    core = Core(cfg, 0.0)
    core.observe(snap, 0.0)
    assert core.machines["wan0"].state is State.UP
    assert core.plan(snap).converged


def test_admin_down_counts_as_down() -> None:
    core = Core(config(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", up=False), slave(11, "wan1", teql="teql0"),
                    address=True, default_route=True)
    t = core.observe(snap, 0.0)
    assert core.machines["wan0"].state is State.DOWN
    assert any("administratively down" in x.reason for x in t)
    assert core.plan(snap).converged


def test_down_delay_defers_detach() -> None:
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
[slaves.wan0]
down_delay = "1s"
""")
    core = Core(cfg, 0.0)
    core.observe(converged(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0", carrier=False), slave(11, "wan1", teql="teql0"),
                    default_route=True)
    core.observe(snap, 10.0)
    assert core.plan(snap).converged
    assert core.next_deadline() == 11.0
    core.observe(snap, 11.0)
    assert commands(core, snap) == ["tc qdisc del dev wan0 root teql0"]


def test_refusal_is_diagnosed_and_retried_only_after_a_change() -> None:
    core = Core(config(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0"), slave(11, "wan1", mtu=1400),
                    address=True, default_route=True)
    core.observe(snap, 0.0)
    # teql0's MTU is lowered first; the kernel refuses the attach all the same
    # (someone raised teql0's MTU again in between).
    lower, attach = core.plan(snap).actions[:2]
    assert lower.command() == "ip link set teql0 mtu 1400"
    assert isinstance(attach, Attach) and attach.slave == "wan1"
    t, message = core.refused(attach, errno.EINVAL, snap, 1.0)
    assert t is not None and t.new is State.REFUSED
    assert message == "wan1: teql0 refused the slave (EINVAL): its MTU 1400 is below teql0's 1500; " \
                      "retried when either changes"
    core.observe(snap, 2.0)
    plan = core.plan(snap)
    # Refused, it holds nothing: teql0 keeps its MTU.
    assert plan.converged and [f.key for f in plan.faults] == ["refused:wan1"]
    snap.put_link(slave(11, "wan1", mtu=1500))
    core.observe(snap, 3.0)
    assert commands(core, snap) == ["tc qdisc add dev wan1 root teql0"]


def test_flag_mismatch_is_diagnosed() -> None:
    m = master(up=True, flags=IFF_POINTOPOINT)
    s = slave(11, "wan1")
    assert "teql0 is POINTOPOINT and wan1 is not" in diagnose_refusal("teql0", s, m, errno.EINVAL)


PROBED = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
rp_filter = 0
[slaves.wan0.probe]
targets = ["192.0.2.1"]
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3
[slaves.wan0.damping]
half_life = "10s"
"""


def rounds(core: Core, name: str, *oks: bool) -> bool:
    flipped = False
    for ok in oks:
        flipped |= core.probe_round(name, ok)
    return flipped


def test_probed_slave_waits_for_up_after_good_rounds() -> None:
    core = Core(config(PROBED), 0.0)
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    t = core.observe(snap, 0.0)
    assert core.machines["wan0"].state is State.PROBING
    assert [x.event.value for x in t if x.slave == "wan0"] == ["carrier_back", "await_probes"]
    assert core.probe_settings("wan0", snap) is not None and core.probe_settings("wan1", snap) is None
    assert commands(core, snap)[:2] == ["tc qdisc add dev wan1 root teql0", "ip link set teql0 up"]
    assert not rounds(core, "wan0", True, True)
    assert rounds(core, "wan0", True)
    core.observe(snap, 0.3)
    assert core.machines["wan0"].state is State.UP
    assert "tc qdisc add dev wan0 root teql0" in commands(core, snap)


def test_dead_line_with_carrier_is_detached_and_comes_back() -> None:
    core = Core(config(PROBED), 0.0)
    snap = converged()
    core.observe(snap, 0.0)  # adopted: trusted until probes fail
    assert core.machines["wan0"].state is State.UP
    assert not rounds(core, "wan0", False, False, True, False, False)
    core.observe(snap, 0.5)
    assert core.plan(snap).converged, "no three failures in a row yet"
    assert rounds(core, "wan0", False)
    t = core.observe(snap, 0.6)
    assert [(x.new, x.reason) for x in t] == [(State.FAILED, "3 failed probe rounds in a row (far side dead?)")]
    assert commands(core, snap) == ["tc qdisc del dev wan0 root teql0"]
    snap.put_qdisc(10, None)
    assert core.probe_settings("wan0", snap) is not None, "a failed line is still probed"
    assert rounds(core, "wan0", True, True, True)
    core.observe(snap, 1.0)
    assert commands(core, snap) == ["tc qdisc add dev wan0 root teql0"]


def test_flapping_slave_is_held_down_then_reused() -> None:
    core = Core(config(PROBED), 0.0)
    snap = converged()
    core.observe(snap, 0.0)
    now = 0.0
    m = core.machines["wan0"]
    for i in range(3):  # three carrier flaps within a few seconds
        assert m.state is State.UP
        now += 1.0
        snap.put_link(slave(10, "wan0", teql="teql0", carrier=False))
        core.observe(snap, now)
        now += 1.0
        snap.put_link(slave(10, "wan0", teql="teql0"))
        core.observe(snap, now)
        if i < 2:
            rounds(core, "wan0", True, True, True)  # proves itself, rejoins
            core.observe(snap, now)
    assert m.state is State.HELD_DOWN and m.reason.startswith("flapping: penalty ")
    assert m.deadline is not None and core.next_deadline() == m.deadline
    assert core.probe_settings("wan0", snap) is not None, "probes go on while held down"
    rounds(core, "wan0", True, True, True)
    core.observe(snap, m.deadline - 0.1)
    assert m.state is State.HELD_DOWN, "healthy but still held"
    held_until = m.deadline
    t = core.observe(snap, held_until + 0.01)
    assert [x.new for x in t] == [State.DOWN, State.UP_DELAY, State.PROBING]
    rounds(core, "wan0", True, True, True)
    core.observe(snap, held_until + 0.5)
    assert m.state is State.UP
