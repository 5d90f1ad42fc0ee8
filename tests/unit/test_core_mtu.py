"""The core's MTU planner and mixed bundles: teql0's MTU follows its slaves,
a small slave that left holds it for `mtu_hold`, `min_mtu` refuses, and a
slave of other link flags is taken by reopening teql0."""

from __future__ import annotations

import pytest
from kernelstate import config, converged, master, slave, snapshot

from wanbalanced.actions import LinkDown, SetMtu
from wanbalanced.config import ConfigError, parse_config
from wanbalanced.core import Core
from ipaddress import IPv6Interface

from wanbalanced.observed import (DEFAULT_DST6, IFA_F_NODAD, IFA_F_NOPREFIXROUTE, IFF_BROADCAST, IFF_MULTICAST, IFF_NOARP,
                                  IFF_POINTOPOINT, RTPROT_WANBALANCED, Address, Route, Snapshot)
from wanbalanced.slave import State

PPP = IFF_POINTOPOINT | IFF_NOARP | IFF_MULTICAST
ETHER = IFF_BROADCAST | IFF_MULTICAST


def cfg(**eq: object) -> str:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in eq.items())
    return f'[equalizers.teql0]\nslaves = ["wan0", "wan1"]\naddress = "10.0.0.0/31"\nrp_filter = 0\n{extra}'


def commands(core: Core, snap: Snapshot) -> list[str]:
    return [a.command() for a in core.plan(snap).actions]


def running(wan1_mtu: int = 1500, *, teql_mtu: int = 1500, wan1_attached: bool = True, index: int = 11,
            **kw: object) -> Snapshot:
    """teql0 up with wan0 attached; wan1 as given."""
    return snapshot(master(up=True, mtu=teql_mtu, flags=ETHER), slave(10, "wan0", teql="teql0"),
                    slave(index, "wan1", mtu=wan1_mtu, teql="teql0" if wan1_attached else None, **kw),  # type: ignore[arg-type]
                    address=True, default_route=True)


def test_a_smaller_slave_joins_after_teql0_is_lowered() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    snap = running(1400, wan1_attached=False)
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == ["ip link set teql0 mtu 1400", "tc qdisc add dev wan1 root teql0"]
    assert plan.actions[0].reason == "wan1 joins with MTU 1400: 1400, the MTU of wan1, its smallest slave"
    assert not plan.drift


def test_a_fresh_bundle_needs_no_mtu_write_the_kernel_takes_the_smallest() -> None:
    # teql0 down: each attach lowers its MTU, and opening it takes the smallest.
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1", mtu=1400))
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    assert not any(isinstance(a, SetMtu) for a in core.plan(snap).actions)


def test_after_the_last_slave_left_the_first_gives_its_mtu_then_teql0_is_lowered() -> None:
    # teql0 up with no slave: the first slave gives its MTU (teql_qdisc_init),
    # the next, smaller one would be refused without a lowering.
    snap = snapshot(master(up=True, mtu=1400), slave(10, "wan0"), slave(11, "wan1", mtu=1400), address=True)
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    assert commands(core, snap) == [
        "tc qdisc add dev wan0 root teql0", "ip link set teql0 mtu 1400", "tc qdisc add dev wan1 root teql0",
        "ip route replace default dev teql0 proto 119",
    ]


def test_the_mtu_rises_only_once_the_small_slave_is_gone_for_the_hold() -> None:
    core = Core(config(cfg(mtu_hold="30s")), 0.0)
    snap = running(1400, teql_mtu=1400)
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    # pppd hangs up: wan1 is deleted.
    gone = snapshot(master(up=True, mtu=1400, flags=ETHER), slave(10, "wan0", teql="teql0"), address=True,
                    default_route=True)
    core.observe(gone, 100.0)
    assert core.plan(gone).converged
    assert core.next_deadline() == 130.0
    core.observe(gone, 129.9)
    assert core.plan(gone).converged
    core.observe(gone, 130.0)
    plan = core.plan(gone)
    assert [a.command() for a in plan.actions] == ["ip link set teql0 mtu 1500"]
    assert plan.actions[0].reason == "raised to 1500: the MTU of wan0, its smallest slave"
    assert core.next_deadline() is None


def test_a_redial_within_the_hold_does_not_touch_the_mtu() -> None:
    core = Core(config(cfg(mtu_hold="30s")), 0.0)
    snap = running(1400, teql_mtu=1400)
    core.observe(snap, 0.0)
    gone = snapshot(master(up=True, mtu=1400, flags=ETHER), slave(10, "wan0", teql="teql0"), address=True,
                    default_route=True)
    core.observe(gone, 10.0)
    assert core.plan(gone).converged
    # Redialled: a new wan1 (new ifindex), same MTU, no qdisc.
    back = running(1400, teql_mtu=1400, wan1_attached=False)
    back.drop_link(11)
    back.put_link(slave(42, "wan1", mtu=1400))
    core.observe(back, 15.0)
    assert commands(core, back) == ["tc qdisc add dev wan1 root teql0"]
    assert core.next_deadline() is None  # attached again: its hold is fresh, no raise pending


def test_a_redial_with_a_smaller_mtu_lowers_again_at_once() -> None:
    core = Core(config(cfg(mtu_hold="30s")), 0.0)
    core.observe(running(1492, teql_mtu=1492), 0.0)
    back = running(1400, teql_mtu=1492, wan1_attached=False)
    core.observe(back, 5.0)
    assert commands(core, back) == ["ip link set teql0 mtu 1400", "tc qdisc add dev wan1 root teql0"]


def test_a_slave_removed_from_the_configuration_is_gone_for_good_at_once() -> None:
    core = Core(config(), 0.0)
    snap = running(1400, teql_mtu=1400)
    core.observe(snap, 0.0)
    cleanup = core.reconfigure(parse_config(cfg().replace('"wan0", "wan1"', '"wan0"')), snap, 1.0)
    assert [a.command() for a in cleanup] == ["tc qdisc del dev wan1 root teql0"]
    for action in cleanup:
        action.expect(snap)
    core.observe(snap, 1.0)
    assert commands(core, snap) == ["ip link set teql0 mtu 1500"]


def test_a_restarted_daemon_keeps_the_mtu_it_finds_for_the_hold() -> None:
    # teql0 at 1400 and every slave at 1500: a slave that set it may be
    # redialling while the daemon restarts.
    snap = running(1500, teql_mtu=1400)
    core = Core(config(cfg(mtu_hold="1m")), 0.0)
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    assert core.next_deadline() == 60.0
    core.observe(snap, 60.0)
    assert commands(core, snap) == ["ip link set teql0 mtu 1500"]


def test_a_restarted_daemon_writes_nothing_when_teql0_fits() -> None:
    snap = running(1400, teql_mtu=1400)
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    core.observe(snap, 3600.0)
    assert core.plan(snap).converged


def test_the_configured_mtu_caps_teql0() -> None:
    snap = running(1500)
    core = Core(config(cfg(mtu=1400)), 0.0)
    core.observe(snap, 0.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == ["ip link set teql0 mtu 1400"]
    assert plan.actions[0].reason == "lowered to 1400: equalizers.teql0.mtu"


def test_an_mtu_changed_by_hand_is_drift_and_put_back() -> None:
    snap = running(1500)
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    core.settle(snap)
    teql = snap.link("teql0")
    assert teql is not None
    snap.put_link(master(up=True, mtu=1300, flags=ETHER))
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == ["ip link set teql0 mtu 1500"]
    assert plan.drift == {("mtu", "teql0")} and plan.actions[0].drift == "the MTU of teql0 was changed to 1300"


def test_a_slave_below_min_mtu_is_refused_with_the_reason() -> None:
    core = Core(config(cfg(min_mtu=1450)), 0.0)
    snap = running(1400, wan1_attached=False)
    core.observe(snap, 0.0)
    plan = core.plan(snap)
    assert plan.converged  # neither lowered nor attached
    assert core.machines["wan1"].state is State.REFUSED
    assert [f.message for f in plan.faults] == [
        "wan1: its MTU 1400 is below equalizers.teql0.min_mtu (1450): not attached, so that teql0's MTU stays "
        "at least 1450; it joins once its MTU is 1450 or more (or lower min_mtu)"]
    core.observe(snap, 5.0)
    assert core.machines["wan1"].state is State.REFUSED  # no retry loop while below the floor
    snap.put_link(slave(11, "wan1", mtu=1492))
    core.observe(snap, 6.0)
    assert core.machines["wan1"].state is State.UP
    assert commands(core, snap) == ["ip link set teql0 mtu 1492", "tc qdisc add dev wan1 root teql0"]


def test_an_attached_slave_that_shrinks_below_min_mtu_is_detached() -> None:
    core = Core(config(cfg(min_mtu=1450)), 0.0)
    core.observe(running(1500), 0.0)
    snap = running(1400)
    core.observe(snap, 1.0)
    assert core.machines["wan1"].state is State.REFUSED
    assert commands(core, snap) == ["tc qdisc del dev wan1 root teql0"]


@pytest.mark.parametrize("extra, problem", [
    ("min_mtu = 67", "min_mtu: must be at least 68, not 67"),
    ("mtu = 65536", "mtu: must be at most 65535, not 65536"),
    ("mtu = 1400\nmin_mtu = 1492", "min_mtu (1492) is above mtu (1400)"),
    ('mixed = "nbma"', 'mixed: must be one of "reopen" or "refuse", not "nbma"'),
])
def test_check_config_validates_the_mtu_settings(extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(cfg() + extra + "\n")
    assert problem in str(e.value)


# -- mixed bundles -------------------------------------------------------------


def test_a_ppp_slave_beside_ethernet_ones_reopens_teql0_and_re_adds_the_route() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    core.settle(converged())
    snap = running(1492, wan1_attached=False, flags=PPP, index=42)  # pppd dialled in
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == [
        "ip link set teql0 down", "tc qdisc add dev wan1 root teql0", "ip link set teql0 up",
        "ip route replace default dev teql0 proto 119",
    ]
    assert isinstance(plan.actions[0], LinkDown)
    assert plan.actions[0].reason == ("wan1 is not BROADCAST like teql0 (wan0): reopening teql0 so that it takes "
                                      "the flags its slaves share")
    assert not plan.drift and not plan.faults  # done on purpose, not a repair
    # Opening teql0 takes the smallest MTU: no separate MTU write.
    assert not any(isinstance(a, SetMtu) for a in plan.actions)


def test_a_reopen_adds_back_in_the_same_pass_the_ipv6_address_the_kernel_flushes() -> None:
    # Setting teql0 down flushes its IPv6 addresses (keep_addr_on_down 0):
    # putting it back is part of the reopen, not a drift repair a pass later.
    core = Core(config(cfg(address6="2001:db8:ff::a/128")), 0.0)
    snap = snapshot(master(up=True, flags=ETHER), slave(10, "wan0", teql="teql0"), address=True, default_route=True)
    snap.put_address(Address(2, IPv6Interface("2001:db8:ff::a/128"), IFA_F_NOPREFIXROUTE | IFA_F_NODAD))
    snap.put_route(Route(254, DEFAULT_DST6, 1024, 2, proto=RTPROT_WANBALANCED))
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    core.settle(snap)
    snap.put_link(slave(42, "wan1", mtu=1492, flags=PPP))  # pppd dialled in
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == [
        "ip link set teql0 down", "tc qdisc add dev wan1 root teql0", "ip link set teql0 up",
        "ip addr replace 2001:db8:ff::a/128 dev teql0 noprefixroute nodad",
        "ip route replace default dev teql0 proto 119", "ip -6 route replace default dev teql0 metric 1024 proto 119",
    ]
    assert not plan.drift
    for action in plan.actions:
        action.expect(snap)
    assert sorted(str(a.interface) for a in snap.addresses_of(2)) == ["10.0.0.0/31", "2001:db8:ff::a/128"]
    core.observe(snap, 1.0)
    after = core.plan(snap)
    assert after.converged and not after.drift


def test_a_reopen_keeps_the_configured_mtu_cap() -> None:
    core = Core(config(cfg(mtu=1400)), 0.0)
    snap = running(1492, teql_mtu=1400, wan1_attached=False, flags=PPP)
    core.observe(snap, 0.0)
    assert commands(core, snap) == [
        "ip link set teql0 down", "tc qdisc add dev wan1 root teql0", "ip link set teql0 up",
        "ip link set teql0 mtu 1400", "ip route replace default dev teql0 proto 119",
    ]


def test_with_mixed_refuse_the_attach_is_left_to_the_kernel_to_refuse() -> None:
    core = Core(config(cfg(mixed="refuse")), 0.0)
    snap = running(1500, wan1_attached=False, flags=PPP)
    core.observe(snap, 0.0)
    assert commands(core, snap) == ["tc qdisc add dev wan1 root teql0"]


def test_a_slave_with_the_flags_of_teql0_needs_no_reopen() -> None:
    # teql0 NBMA (MULTICAST only, after a reopen): an Ethernet line and a PPP line both fit.
    core = Core(config(), 0.0)
    for flags in (ETHER, PPP):
        snap = snapshot(master(up=True, flags=IFF_MULTICAST), slave(10, "wan0", teql="teql0"),
                        slave(11, "wan1", flags=flags), address=True, default_route=True)
        core.observe(snap, 0.0)
        assert commands(core, snap) == ["tc qdisc add dev wan1 root teql0"]


def test_status_shows_teql0s_mtu_why_and_the_counts() -> None:
    from wanbalanced import status

    core = Core(config(cfg(mtu_hold="30s")), 0.0)
    core.observe(running(1400, teql_mtu=1400), 0.0)
    gone = snapshot(master(up=True, mtu=1400, flags=ETHER), slave(10, "wan0", teql="teql0"), address=True,
                    default_route=True)
    core.observe(gone, 10.0)
    st = status.build(core.config, core, gone, version="test", faults=(),
                      reload_successful=True, reload_success_time=0.0, resyncs=0, mono_now=10.0, wall_now=10.0,
                      done={("mtu", "teql0"): 2, ("reopen", "teql0"): 1})
    (eq,) = st.equalizers
    assert (eq.mtu, eq.mtu_changes, eq.reopens) == (1400, 2, 1)
    assert eq.mtu_reason == "1400: kept for wan1 (MTU 1400) until it has been gone 30s"
