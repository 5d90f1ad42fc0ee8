"""The pure core: observed state + config -> transitions and actions."""

from __future__ import annotations

from ipaddress import IPv4Interface, IPv4Network

from kernelstate import config, converged, master, slave, snapshot

from wanbalanced.actions import (
    AddAddress,
    Attach,
    DeleteConnectedRoute,
    DeleteDefaultRoute,
    Detach,
    LinkUp,
    ReplaceDefaultRoute,
    SetRpFilter,
)
from wanbalanced.core import Core
from wanbalanced.observed import Address, Qdisc, Route
from wanbalanced.slave import State


def commands(core: Core, snap: object) -> list[str]:
    return [a.command() for a in core.plan(snap).actions]  # type: ignore[arg-type]


def test_fresh_kernel_plans_the_seed_steps_in_order() -> None:
    snap = snapshot(master(), slave(10, "wan0", rp_filter=1), slave(11, "wan1", rp_filter=2))
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    assert commands(core, snap) == [
        "sysctl -w net.ipv4.conf.wan0.rp_filter=0",
        "sysctl -w net.ipv4.conf.wan1.rp_filter=0",
        "tc qdisc add dev wan0 root teql0",
        "tc qdisc add dev wan1 root teql0",
        "ip link set teql0 up",
        "ip addr replace 10.0.0.0/31 dev teql0 noprefixroute",
        "ip route replace default dev teql0 proto 119",
    ]


def test_converged_kernel_needs_nothing_and_slaves_are_adopted() -> None:
    snap = converged()
    core = Core(config(), 0.0)
    transitions = core.observe(snap, 0.0)
    assert {t.slave: t.new for t in transitions} == {"wan0": State.UP, "wan1": State.UP}
    plan = core.plan(snap)
    assert plan.converged and not plan.faults


def test_carrier_loss_detaches_and_last_one_withdraws_route() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    snap = snapshot(
        master(up=True), slave(10, "wan0", teql="teql0", carrier=False), slave(11, "wan1", teql="teql0", carrier=False),
        address=True, default_route=True,
    )
    core.observe(snap, 1.0)
    assert [type(a) for a in core.plan(snap).actions] == [Detach, Detach, DeleteDefaultRoute]
    assert commands(core, snap)[-1] == "ip route del default dev teql0"


def test_one_carrier_loss_keeps_route() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0", carrier=False), slave(11, "wan1", teql="teql0"),
                    address=True, default_route=True)
    core.observe(snap, 1.0)
    assert commands(core, snap) == ["tc qdisc del dev wan0 root teql0"]


def test_recreated_interface_is_reslaved_and_sysctl_reapplied() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    # pppd redial: wan1 deleted and created again with a new ifindex and the
    # kernel's default rp_filter, no qdisc.
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0"), slave(42, "wan1", rp_filter=2),
                    address=True, default_route=True)
    transitions = core.observe(snap, 5.0)
    assert [t.event.value for t in transitions] == ["vanished", "carrier_back", "timer"]
    assert commands(core, snap) == ["sysctl -w net.ipv4.conf.wan1.rp_filter=0", "tc qdisc add dev wan1 root teql0"]
    attach = core.plan(snap).actions[1]
    assert isinstance(attach, Attach) and attach.index == 42


def test_renamed_slave_is_detached_by_ifindex() -> None:
    # `ip link set wan0 down; ip link set wan0 name old0`, seen in one batch:
    # the kernel keeps old0 attached; bringing it up would put it back in the
    # round robin, unmanaged.
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    snap = snapshot(master(up=True), slave(10, "old0", teql="teql0", up=False), slave(11, "wan1", teql="teql0"),
                    address=True, default_route=True)
    core.observe(snap, 1.0)
    assert core.machines["wan0"].state is State.ABSENT
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == ["tc qdisc del dev old0 root teql0"]
    detach = plan.actions[0]
    assert isinstance(detach, Detach) and detach.index == 10 and "renamed from wan0" in detach.reason
    # Once detached it is forgotten: attaching old0 by hand later is the operator's business.
    snap.put_qdisc(10, None)
    core.observe(snap, 2.0)
    assert core.plan(snap).converged and not core.orphans
    snap.put_qdisc(10, Qdisc("teql0", 0))
    core.observe(snap, 3.0)
    assert core.plan(snap).converged


def test_slave_renamed_during_down_delay_is_detached() -> None:
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
[slaves.wan0]
down_delay = "10s"
""")
    core = Core(cfg, 0.0)
    core.observe(converged(), 0.0)
    down = snapshot(master(up=True), slave(10, "wan0", teql="teql0", up=False), slave(11, "wan1", teql="teql0"),
                    default_route=True)
    core.observe(down, 1.0)
    assert core.plan(down).converged  # waiting out the delay
    renamed = snapshot(master(up=True), slave(10, "old0", teql="teql0", up=False), slave(11, "wan1", teql="teql0"),
                       default_route=True)
    core.observe(renamed, 2.0)
    assert commands(core, renamed) == ["tc qdisc del dev old0 root teql0"]


def test_slave_renamed_back_is_an_ordinary_slave_again() -> None:
    core = Core(config(), 0.0)
    core.observe(converged(), 0.0)
    renamed = snapshot(master(up=True), slave(10, "old0", teql="teql0", up=False), slave(11, "wan1", teql="teql0"),
                       address=True, default_route=True)
    core.observe(renamed, 1.0)
    assert core.orphans
    back = snapshot(master(up=True), slave(10, "wan0", teql="teql0"), slave(11, "wan1", teql="teql0"),
                    address=True, default_route=True)
    core.observe(back, 2.0)
    assert not core.orphans
    assert core.machines["wan0"].state is State.UP
    assert core.plan(back).converged


def test_renamed_unattached_device_is_left_alone() -> None:
    core = Core(config(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0"), slave(11, "wan1", teql="teql0"),
                    address=True, default_route=True)
    core.observe(snap, 0.0)
    renamed = snapshot(master(up=True), slave(10, "old0"), slave(11, "wan1", teql="teql0"),
                       address=True, default_route=True)
    core.observe(renamed, 1.0)
    assert not core.orphans and core.plan(renamed).converged


def test_missing_slave_is_attached_when_it_appears() -> None:
    core = Core(config(), 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0"), address=True, default_route=True)
    core.observe(snap, 0.0)
    assert core.machines["wan1"].state is State.ABSENT
    assert core.plan(snap).converged
    snap.put_link(slave(11, "wan1"))
    core.observe(snap, 1.0)
    assert commands(core, snap) == ["tc qdisc add dev wan1 root teql0"]


def test_explicit_other_root_qdisc_is_replaced() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    from wanbalanced.observed import Qdisc
    snap.put_qdisc(10, Qdisc("htb", 0x10000))
    core.observe(snap, 0.0)
    assert commands(core, snap) == ["tc qdisc replace dev wan0 root teql0"]


def test_no_default_route_without_attached_slave_and_master_up_follows_attach() -> None:
    core = Core(config(), 0.0)
    snap = snapshot(master(), slave(10, "wan0", carrier=False), slave(11, "wan1", carrier=False), address=True)
    core.observe(snap, 0.0)
    assert core.plan(snap).converged  # teql0 cannot go up with no slaves (EUNATCH)


def test_connected_route_removed_and_expected_after_up() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.put_route(Route(254, IPv4Network("10.0.0.0/31"), 0, 2, proto=2, scope=253))
    core.observe(snap, 0.0)
    assert commands(core, snap) == ["ip route del 10.0.0.0/31 dev teql0 proto kernel scope link"]
    # An adopted address without noprefixroute on a down master: the route
    # will appear as it comes up, so the plan deletes it right after.
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    snap.put_address(Address(2, IPv4Interface("10.0.0.0/31"), 0))
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    kinds = [type(a) for a in core.plan(snap).actions]
    assert kinds == [Attach, Attach, LinkUp, DeleteConnectedRoute, ReplaceDefaultRoute]


def test_route_clash_is_a_fault_not_a_replace() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.routes.clear()
    snap.put_route(Route(254, IPv4Network("0.0.0.0/0"), 0, 99, gateway="192.0.2.1"))
    core.observe(snap, 0.0)
    plan = core.plan(snap)
    assert plan.converged
    assert [f.key for f in plan.faults] == ["route_clash:teql0"]
    assert "route_metric" in plan.faults[0].message


def test_metric_and_table_are_used() -> None:
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0"]
route_metric = 10
route_table = 100
""")
    core = Core(cfg, 0.0)
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0"))
    snap.put_route(Route(254, IPv4Network("0.0.0.0/0"), 0, 99, gateway="192.0.2.1"))  # other table: no clash
    core.observe(snap, 0.0)
    assert commands(core, snap) == ["ip route replace default dev teql0 metric 10 table 100 proto 119"]


def test_missing_module_and_too_few_equalizers_are_faults() -> None:
    cfg = config("""
[equalizers.teql1]
slaves = ["wan0"]
""")
    core = Core(cfg, 0.0)
    snap = snapshot(slave(10, "wan0"))
    core.observe(snap, 0.0)
    plan = core.plan(snap)
    assert plan.converged
    assert "sch_teql is not loaded" in plan.faults[0].message
    assert "max_equalizers=2" in plan.faults[0].message
    snap.put_link(master())
    plan = core.plan(snap)
    assert "teql1 does not exist: sch_teql was loaded with max_equalizers=1" in plan.faults[0].message


def test_rp_filter_all_warns_and_unmanaged_is_left_alone() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.all_rp_filter = 1
    core.observe(snap, 0.0)
    assert any("net.ipv4.conf.all.rp_filter=0" in f.message for f in core.plan(snap).faults)
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
rp_filter = "unmanaged"
""")
    core = Core(cfg, 0.0)
    snap = converged()
    snap.put_link(slave(10, "wan0", teql="teql0", rp_filter=1))
    core.observe(snap, 0.0)
    assert not any(isinstance(a, SetRpFilter) for a in core.plan(snap).actions)


def test_plan_ignores_delays_when_asked() -> None:
    cfg = config("""
[equalizers.teql0]
slaves = ["wan0"]
[slaves.wan0]
up_delay = "30s"
""")
    snap = snapshot(master(), slave(10, "wan0"))
    daemon_core = Core(cfg, 0.0)
    daemon_core.observe(snap, 0.0)
    assert commands(daemon_core, snap) == []
    plan_core = Core(cfg, 0.0, honour_delays=False)
    plan_core.observe(snap, 0.0)
    assert commands(plan_core, snap)[:2] == ["tc qdisc add dev wan0 root teql0", "ip link set teql0 up"]
    assert isinstance(plan_core.plan(snap).actions[-1], ReplaceDefaultRoute)
    assert not any(isinstance(a, AddAddress) for a in plan_core.plan(snap).actions)


def test_reconfigure_keeps_unchanged_slaves_and_detaches_removed_ones() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.put_link(slave(12, "wan2"))
    core.observe(snap, 0.0)
    wan0 = core.machines["wan0"]
    cleanup = core.reconfigure(config("""
[equalizers.teql0]
slaves = ["wan0", "wan2"]
address = "10.0.0.0/31"
rp_filter = 0
[slaves.wan0]
down_delay = "3s"
"""), snap, 5.0)
    assert [a.command() for a in cleanup] == ["tc qdisc del dev wan1 root teql0"]
    assert core.machines["wan0"] is wan0 and wan0.state is State.UP and core.slaves["wan0"].down_delay == 3.0
    assert "wan1" not in core.machines
    core.observe(snap, 5.0)
    # wan0 untouched, wan2 joins; wan1 (already detached by the clean-up) is left alone.
    assert commands(core, snap) == ["tc qdisc add dev wan2 root teql0"]


def test_reconfigure_withdraws_old_route_and_address() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    core.observe(snap, 0.0)
    cleanup = core.reconfigure(config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.9.0/31"
route_metric = 50
"""), snap, 1.0)
    assert [a.command() for a in cleanup] == [
        "ip addr del 10.0.0.0/31 dev teql0",
        "ip route del default dev teql0",
    ]
    assert core.machines["wan0"].state is State.UP


def test_reconfigure_moving_a_slave_between_equalizers_detaches_it() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.put_link(master(3, "teql1"))
    core.observe(snap, 0.0)
    cleanup = core.reconfigure(config("""
[equalizers.teql0]
slaves = ["wan0"]
address = "10.0.0.0/31"
[equalizers.teql1]
slaves = ["wan1"]
default_route = false
"""), snap, 1.0)
    assert [a.command() for a in cleanup] == ["tc qdisc del dev wan1 root teql0"]
    assert core.machines["wan1"].state is State.ABSENT  # a fresh start under teql1


def settled_core() -> tuple[Core, object]:
    core = Core(config(), 0.0)
    snap = converged()
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    core.settle(snap)
    return core, snap


def test_kernel_changes_behind_our_back_are_drift() -> None:
    core, snap = settled_core()
    from wanbalanced.observed import Qdisc
    snap.put_qdisc(10, Qdisc("noqueue", 0))         # tc qdisc del dev wan0 root
    snap.routes.clear()                              # ip route del default dev teql0
    snap.set_rp_filter(11, 1)                        # sysctl -w ...wan1.rp_filter=1
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert {a.key: a.drift for a in plan.actions} == {
        ("rp_filter", "wan1"): "rp_filter of wan1 was changed to 1",
        ("qdisc", "wan0"): "teql0 was removed from wan0 (root qdisc now noqueue)",
        ("route", "teql0"): "the default route via teql0 was deleted",
    }
    # Logged as the drift; the reason the plan gave is kept beside it.
    assert plan.actions[0].why == "drift: rp_filter of wan1 was changed to 1"
    assert plan.actions[0].reason == "rp_filter is 1"
    assert plan.drift == {("rp_filter", "wan1"), ("qdisc", "wan0"), ("route", "teql0")}


def test_state_changes_and_recreated_devices_are_not_drift() -> None:
    core, snap = settled_core()
    snap.put_link(slave(10, "wan0", teql="teql0", carrier=False))
    snap.drop_link(11)
    snap.put_link(slave(42, "wan1", rp_filter=2))   # pppd redial: new ifindex
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [a.command() for a in plan.actions] == [
        "sysctl -w net.ipv4.conf.wan1.rp_filter=0",
        "tc qdisc del dev wan0 root teql0",
        "tc qdisc add dev wan1 root teql0",
    ]
    assert not plan.drift and all(a.drift is None and a.why == a.reason for a in plan.actions)


def test_drift_on_a_rightly_detached_slave_is_left_alone() -> None:
    core = Core(config(), 0.0)
    snap = converged()
    snap.put_link(slave(10, "wan0", carrier=False))  # down, detached
    core.observe(snap, 0.0)
    assert core.plan(snap).converged
    core.settle(snap)
    from wanbalanced.observed import Qdisc
    snap.put_qdisc(10, Qdisc("teql0", 0x80010000))   # someone attaches it by hand
    snap.set_rp_filter(10, 1)
    core.observe(snap, 1.0)
    assert core.plan(snap).converged


def test_reload_forgets_what_was_settled() -> None:
    core, snap = settled_core()
    core.reconfigure(config(CONFIG_METRIC), snap, 1.0)
    assert core.settled is None


CONFIG_METRIC = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
route_metric = 7
"""


def test_every_planned_action_has_a_wanted_value() -> None:
    # desired() comes from the same planners as the actions: a planner that
    # acts on a property must also say what it wants of it, or drift of that
    # property would go unrecognised.
    snap = snapshot(master(), slave(10, "wan0", rp_filter=1), slave(11, "wan1", rp_filter=2))
    snap.put_address(Address(2, IPv4Interface("10.0.0.0/31"), 0))
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    actions = core.plan(snap).actions
    assert {a.kind for a in actions} == {"rp_filter", "qdisc", "link", "connected_route", "route"}
    wants = core.desired(snap)
    assert all(a.key in wants for a in actions)
    assert wants[("link", "teql0")] == (2, True) and wants[("connected_route", "teql0")] == (2, False)
