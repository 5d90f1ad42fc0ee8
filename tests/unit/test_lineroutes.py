"""Per-line routes, route ownership and all_down, planned by the pure core."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from kernelstate import config, converged, master, slave, snapshot

from wanbalanced.core import Core, Plan
from wanbalanced.observed import (
    DEFAULT_DST,
    RT_SCOPE_LINK,
    RTN_BLACKHOLE,
    RTN_UNREACHABLE,
    RTPROT_BOOT,
    RTPROT_STATIC,
    RTPROT_WANBALANCED,
    Route,
    Snapshot,
)

ROUTES = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
rp_filter = 0
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
table = 100
metric = 10
[[slaves.wan0.routes]]
to = "203.0.113.7/32"
[[slaves.wan1.routes]]
to = "2001:db8:1::/48"
"""

NET = IPv4Network("198.51.100.0/24")
HOST = IPv4Network("203.0.113.7/32")
NET6 = IPv6Network("2001:db8:1::/48")


def converge(core: Core, snap: Snapshot, now: float) -> list[str]:
    """Observe, plan and apply every action's known effect until nothing is left;
    returns the commands, in order."""
    done: list[str] = []
    for _ in range(8):
        core.observe(snap, now)
        plan = core.plan(snap)
        if plan.converged:
            core.settle(snap)
            return done
        for a in plan.actions:
            a.expect(snap)
            done.append(a.command())
    raise AssertionError(f"no convergence: {done}")


def ours(snap: Snapshot) -> set[tuple[str, int | None, int, int]]:
    return {(str(r.dst), r.oif, r.table, r.priority) for r in snap.our_routes() if r.oif != 2}


def test_routes_are_added_with_the_attach() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    core = Core(config(ROUTES), 0.0)
    done = converge(core, snap, 0.0)
    assert done[:2] == ["tc qdisc add dev wan0 root teql0", "tc qdisc add dev wan1 root teql0"]
    assert done[-3:] == [
        "ip route add 198.51.100.0/24 dev wan0 metric 10 table 100 proto 119",
        "ip route add 203.0.113.7/32 dev wan0 proto 119",
        "ip route add 2001:db8:1::/48 dev wan1 metric 1024 proto 119",
    ]
    assert ours(snap) == {(str(NET), 10, 100, 10), (str(HOST), 10, 254, 0), (str(NET6), 11, 254, 1024)}


def test_routes_go_in_the_same_plan_as_the_detach_and_come_back_with_the_attach() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    core = Core(config(ROUTES), 0.0)
    converge(core, snap, 0.0)
    snap.put_link(slave(10, "wan0", teql="teql0", carrier=False))  # IPv4 keeps routes on carrier loss
    core.observe(snap, 1.0)
    assert [a.command() for a in core.plan(snap).actions] == [
        "tc qdisc del dev wan0 root teql0",
        "ip route del 198.51.100.0/24 dev wan0 metric 10 table 100 proto 119",
        "ip route del 203.0.113.7/32 dev wan0 proto 119",
    ]
    converge(core, snap, 1.0)
    assert ours(snap) == {(str(NET6), 11, 254, 1024)}
    snap.put_link(slave(10, "wan0", teql=None))
    assert converge(core, snap, 2.0) == [
        "tc qdisc add dev wan0 root teql0",
        "ip route add 198.51.100.0/24 dev wan0 metric 10 table 100 proto 119",
        "ip route add 203.0.113.7/32 dev wan0 proto 119",
    ]


def test_restart_adopts_routes_without_a_write() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    converge(Core(config(ROUTES), 0.0), snap, 0.0)
    fresh = Core(config(ROUTES), 5.0)  # a restarted daemon, same kernel
    fresh.observe(snap, 5.0)
    assert fresh.plan(snap).converged


def test_routes_of_others_are_left_alone() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    # The operator's: the same prefix with another metric, and one out of wan0.
    theirs = {Route(100, NET, 50, 10, proto=RTPROT_BOOT, scope=RT_SCOPE_LINK),
              Route(254, IPv4Network("192.0.2.0/24"), 0, 10, "10.1.0.1", proto=RTPROT_STATIC)}
    snap.routes |= theirs
    core = Core(config(ROUTES), 0.0)
    converge(core, snap, 0.0)
    snap.put_link(slave(10, "wan0", teql="teql0", carrier=False))
    converge(core, snap, 1.0)
    assert theirs <= snap.routes
    assert not any(r.oif == 10 and r.ours for r in snap.routes)


def test_stray_routes_of_ours_are_withdrawn() -> None:
    # Ours by protocol: left by a configuration that no longer has them, or
    # through a device renamed away (old0).
    snap = converged()
    snap.put_link(slave(12, "old0"))
    snap.routes |= {Route(254, NET, 0, 10, proto=RTPROT_WANBALANCED, scope=RT_SCOPE_LINK),
                    Route(254, NET, 5, 12, proto=RTPROT_WANBALANCED, scope=RT_SCOPE_LINK)}
    core = Core(config(), 0.0)
    core.observe(snap, 0.0)
    assert [(a.command(), a.reason) for a in core.plan(snap).actions] == [
        ("ip route del 198.51.100.0/24 dev wan0 proto 119", "wan0 is not attached"),
        ("ip route del 198.51.100.0/24 dev old0 metric 5 proto 119", "old0 is not attached"),
    ]


def test_a_deleted_route_is_drift() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    core = Core(config(ROUTES), 0.0)
    converge(core, snap, 0.0)
    snap.routes = {r for r in snap.routes if r.dst != HOST}
    core.observe(snap, 1.0)
    plan = core.plan(snap)
    assert [(a.command(), a.drift) for a in plan.actions] == [
        ("ip route add 203.0.113.7/32 dev wan0 proto 119", "the route to 203.0.113.7/32 via wan0 was deleted")]
    assert plan.drift == {("line_route", "wan0")}


def plan_when_all_down(all_down: str, snap: Snapshot | None = None) -> tuple[Core, Snapshot, Plan]:
    cfg = config(f"""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
all_down = "{all_down}"
route_metric = 5
""")
    snap = snap or snapshot(master(up=True), slave(10, "wan0", teql="teql0"), slave(11, "wan1", teql="teql0"))
    core = Core(cfg, 0.0)
    converge(core, snap, 0.0)
    for index, name in ((10, "wan0"), (11, "wan1")):
        snap.put_link(slave(index, name, teql="teql0", carrier=False))
    core.observe(snap, 1.0)
    return core, snap, core.plan(snap)


def test_all_down_withdraw_deletes_the_route() -> None:
    _core, _snap, plan = plan_when_all_down("withdraw")
    assert [a.command() for a in plan.actions][-1] == "ip route del default dev teql0 metric 5"


def test_all_down_unreachable_and_blackhole_replace_it_in_one_write() -> None:
    for kind, rtype in (("unreachable", RTN_UNREACHABLE), ("blackhole", RTN_BLACKHOLE)):
        core, snap, plan = plan_when_all_down(kind)
        assert [a.command() for a in plan.actions][-1] == f"ip route replace {kind} default metric 5 proto 119"
        converge(core, snap, 1.0)
        assert snap.default_routes(254) == [Route(254, DEFAULT_DST, 5, None, proto=RTPROT_WANBALANCED, type=rtype)]
        # A restart keeps it as it is.
        fresh = Core(core.config, 2.0)
        fresh.observe(snap, 2.0)
        assert fresh.plan(snap).converged
        # A slave back: one replace puts the equalizer's route in its place.
        snap.put_link(slave(11, "wan1", teql="teql0"))
        assert converge(core, snap, 3.0) == ["ip route replace default dev teql0 metric 5 proto 119"]
        assert snap.default_routes(254) == [Route(254, DEFAULT_DST, 5, 2, proto=RTPROT_WANBALANCED)]


def test_a_stand_in_the_settings_no_longer_want_goes() -> None:
    core, snap, _plan = plan_when_all_down("unreachable")
    converge(core, snap, 1.0)
    core.reconfigure(config("""
[equalizers.teql0]
slaves = ["wan0", "wan1"]
route_metric = 5
"""), snap, 2.0)
    assert converge(core, snap, 2.0) == ["ip route del unreachable default metric 5"]
    assert not snap.default_routes(254)


def test_an_older_versions_default_route_is_adopted_once() -> None:
    for proto in (RTPROT_STATIC, RTPROT_BOOT):  # older wanbalanced; the seed by hand
        snap = converged()
        snap.routes = {Route(254, DEFAULT_DST, 0, 2, proto=proto)}
        core = Core(config(), 0.0)
        core.observe(snap, 0.0)
        plan = core.plan(snap)
        assert [(a.command(), a.reason) for a in plan.actions] == [
            ("ip route replace default dev teql0 proto 119", f"adopting the route (proto {proto}) as wanbalanced's")]
        converge(core, snap, 0.0)
        fresh = Core(config(), 1.0)
        fresh.observe(snap, 1.0)
        assert fresh.plan(snap).converged


def test_another_default_route_of_the_same_metric_is_a_clash_for_the_stand_in_too() -> None:
    snap = snapshot(master(up=True), slave(10, "wan0", teql="teql0", carrier=False),
                    slave(11, "wan1", teql="teql0", carrier=False))
    snap.put_route(Route(254, DEFAULT_DST, 5, 99, "198.18.0.2", proto=RTPROT_BOOT))
    core, _snap, plan = plan_when_all_down("unreachable", snap)
    assert [f.kind for f in plan.faults] == ["route_clash"]
    assert not any("unreachable" in a.command() for a in plan.actions)


V6 = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
address6 = "2001:db8:ff::a/128"
all_down = "unreachable"
"""


def test_ipv6_address_and_default_route_follow_the_same_rules() -> None:
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    core = Core(config(V6), 0.0)
    done = converge(core, snap, 0.0)
    assert done[-4:] == [
        "ip addr replace 10.0.0.0/31 dev teql0 noprefixroute",
        "ip addr replace 2001:db8:ff::a/128 dev teql0 noprefixroute nodad",
        "ip route replace default dev teql0 proto 119",
        "ip -6 route replace default dev teql0 metric 1024 proto 119",
    ]
    for index, name in ((10, "wan0"), (11, "wan1")):
        snap.put_link(slave(index, name, teql="teql0", carrier=False))
    assert converge(core, snap, 1.0)[-2:] == [
        "ip route replace unreachable default proto 119",
        "ip -6 route replace unreachable default metric 1024 proto 119",
    ]
    fresh = Core(config(V6), 2.0)
    fresh.observe(snap, 2.0)
    assert fresh.plan(snap).converged, "a restart adopts both stand-ins"
    core.reconfigure(config(V6.replace('address6 = "2001:db8:ff::a/128"\n', "")), snap, 3.0)
    assert converge(core, snap, 3.0) == ["ip -6 route del unreachable default metric 1024"]


RULES = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
[[slaves.wan0.rules]]
from = "198.51.100.7/32"
table = 100
priority = 1000
[[slaves.wan0.routes]]
to = "default"
table = 100
"""


def test_rules_follow_the_attach_and_strays_go() -> None:
    from wanbalanced.observed import Rule
    snap = snapshot(master(), slave(10, "wan0"), slave(11, "wan1"))
    stray = Rule(IPv6Network("2001:db8::/64"), 7, 900)  # ours by protocol, no longer configured
    snap.rules.add(stray)
    core = Core(config(RULES), 0.0)
    done = converge(core, snap, 0.0)
    assert "ip rule add from 198.51.100.7/32 table 100 priority 1000 proto 119" in done
    assert "ip -6 rule del from 2001:db8::/64 table 7 priority 900 proto 119" in done
    assert snap.rules == {Rule(IPv4Network("198.51.100.7/32"), 100, 1000)}
    fresh = Core(config(RULES), 1.0)
    fresh.observe(snap, 1.0)
    assert fresh.plan(snap).converged, "adopted on restart"
    snap.put_link(slave(10, "wan0", teql="teql0", carrier=False))
    core.observe(snap, 2.0)
    assert [a.command() for a in core.plan(snap).actions] == [
        "tc qdisc del dev wan0 root teql0",
        "ip route del default dev wan0 table 100 proto 119",
        "ip rule del from 198.51.100.7/32 table 100 priority 1000 proto 119",
    ]
