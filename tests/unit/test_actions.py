"""Actions: identity, rendering, expected effects and the kernel writes each is made of."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Interface, IPv4Network, IPv6Network

from messages import link_msg

from wanbalanced.actions import (
    Action,
    AddAddress,
    AddLineRoute,
    Attach,
    DeleteAddress,
    DeleteConnectedRoute,
    DeleteDefaultRoute,
    DeleteLineRoute,
    Detach,
    LinkUp,
    ReplaceDefaultRoute,
    SetRpFilter,
)
from wanbalanced.netlink import apply_event
from wanbalanced.observed import DEFAULT_DST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTPROT_WANBALANCED, Route, Snapshot

ADDR = IPv4Interface("10.0.0.0/31")


class RecordingOps:
    """A KernelOps that records each write as (operation, arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[object, ...]]] = []

    def __getattr__(self, op: str) -> object:
        async def call(*args: object, **kw: object) -> None:
            self.calls.append((op, args + tuple(sorted(kw.items()))))
        return call


def test_reason_and_drift_are_not_part_of_identity() -> None:
    # The retry back-off is keyed by the action: other words for the same
    # change must find the same entry.
    a = LinkUp("2 slave(s) attached", "teql0", 2)
    b = LinkUp("1 slave(s) attached", "teql0", 2, drift="teql0 was set down")
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert ReplaceDefaultRoute("x", "teql0", 2, 0, 254) != DeleteDefaultRoute("x", "teql0", 2, 0, 254)
    assert LinkUp("x", "teql0", 2) != LinkUp("x", "teql0", 3)


def test_drift_is_a_field_and_logged_as_the_reason() -> None:
    snap = Snapshot()
    plain = LinkUp("1 slave(s) attached", "teql0", 2)
    repair = plain.as_drift(snap)
    assert (plain.why, repair.why) == ("1 slave(s) attached", "drift: teql0 was set down")
    assert repair.reason == plain.reason and repair.drift == "teql0 was set down"


def test_each_action_is_one_kernel_write() -> None:
    ops = RecordingOps()
    for action in (
        Attach("r", "teql0", "wan0", 3, replace=True), Detach("r", "teql0", "wan0", 3), LinkUp("r", "teql0", 2),
        AddAddress("r", "teql0", 2, ADDR), DeleteAddress("r", "teql0", 2, ADDR),
        DeleteConnectedRoute("r", "teql0", 2, ADDR.network), ReplaceDefaultRoute("r", "teql0", 2, 7, 100),
        DeleteDefaultRoute("r", "teql0", 2, 7, 100), SetRpFilter("r", "eth0.100", 4, 0),
    ):
        asyncio.run(action.execute(ops))  # type: ignore[arg-type]
    assert ops.calls == [
        ("add_root_qdisc", (3, "teql0", True)),
        ("delete_root_qdisc", (3, "teql0")),
        ("set_link_up", (2,)),
        ("add_address", (2, ADDR, 0x200)),  # noprefixroute
        ("delete_address", (2, ADDR)),
        ("delete_route", (ADDR.network, 2, 254, ("proto", 2), ("scope", 253))),
        ("put_route", (Route(100, DEFAULT_DST, 7, 2, proto=RTPROT_WANBALANCED), ("replace", True))),
        ("delete_route", (DEFAULT_DST, 2, 100, ("metric", 7))),
        ("set_rp_filter", ("eth0.100", 0)),
    ]


def test_expect_applies_known_effects() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0", up=False))
    apply_event(snap, link_msg("RTM_NEWLINK", 3, "wan0"))
    Attach("r", "teql0", "wan0", 3).expect(snap)
    assert snap.links[3].attached_to("teql0")
    LinkUp("r", "teql0", 2).expect(snap)
    assert snap.links[2].admin_up
    ReplaceDefaultRoute("r", "teql0", 2, 0, 254).expect(snap)
    assert snap.default_routes(254) == [Route(254, DEFAULT_DST, 0, 2, proto=RTPROT_WANBALANCED)]
    AddAddress("r", "teql0", 2, ADDR).expect(snap)
    assert [a.interface for a in snap.addresses_of(2)] == [ADDR]
    DeleteAddress("r", "teql0", 2, ADDR).expect(snap)
    snap.put_route(Route(254, IPv4Network("10.0.0.0/31"), 0, 2, proto=2, scope=253))
    DeleteConnectedRoute("r", "teql0", 2, ADDR.network).expect(snap)
    SetRpFilter("r", "wan0", 3, 2).expect(snap)
    assert snap.links[3].rp_filter == 2
    DeleteDefaultRoute("r", "teql0", 2, 0, 254).expect(snap)
    Detach("r", "teql0", "wan0", 3).expect(snap)
    assert not snap.addresses_of(2) and not snap.routes and not snap.links[3].attached_to("teql0")


def test_every_action_renders_its_command() -> None:
    assert [a.command() for a in (
        Attach("r", "teql0", "wan0", 3), DeleteConnectedRoute("r", "teql0", 2, ADDR.network, 100),
        ReplaceDefaultRoute("r", "teql0", 2, 7, 254), SetRpFilter("r", "eth0.100", 4, 0),
        ReplaceDefaultRoute("r", "teql0", 2, 7, 254, RTN_UNREACHABLE),
        DeleteDefaultRoute("r", "teql0", 2, 1024, 100, RTN_BLACKHOLE, IPv6Network("::/0")),
        ReplaceDefaultRoute("r", "teql0", 2, 1024, 254, dst=IPv6Network("::/0")),
        AddLineRoute("r", "wan0", 3, IPv4Network("198.51.100.0/24"), "10.1.0.1", 10, 100),
        DeleteLineRoute("r", "wan1", 4, IPv4Network("0.0.0.0/0"), None, 0, 254),
        AddLineRoute("r", "wan0", 3, IPv6Network("2001:db8::/32"), "fe80::1", 1024, 254),
    )] == [
        "tc qdisc add dev wan0 root teql0",
        "ip route del 10.0.0.0/31 dev teql0 proto kernel scope link table 100",
        "ip route replace default dev teql0 metric 7 proto 119",
        "sysctl -w net.ipv4.conf.eth0/100.rp_filter=0",
        "ip route replace unreachable default metric 7 proto 119",
        "ip -6 route del blackhole default metric 1024 table 100",
        "ip -6 route replace default dev teql0 metric 1024 proto 119",
        "ip route add 198.51.100.0/24 via 10.1.0.1 dev wan0 metric 10 table 100 proto 119",
        "ip route del default dev wan1 proto 119",
        "ip route add 2001:db8::/32 via fe80::1 dev wan0 metric 1024 proto 119",
    ]


def test_line_routes_expect_their_effect() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 3, "wan0"))
    add = AddLineRoute("r", "wan0", 3, IPv4Network("198.51.100.0/24"), None, 10, 100)
    add.expect(snap)
    assert snap.our_routes() == [Route(100, IPv4Network("198.51.100.0/24"), 10, 3, None, RTPROT_WANBALANCED, 253)]
    DeleteLineRoute("r", "wan0", 3, IPv4Network("198.51.100.0/24"), None, 10, 100).expect(snap)
    assert not snap.routes


def test_an_action_without_its_execution_cannot_exist() -> None:
    import pytest
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class SetMtu(Action):  # half written: no execute(), no expect()
        name: str

        @property
        def device(self) -> str:
            return self.name

        def command(self) -> str:
            return f"ip link set {self.name} mtu 1500"

    with pytest.raises(TypeError, match="abstract"):
        SetMtu("r", "wan0")  # type: ignore[abstract]


def test_drift_kinds_come_from_the_actions() -> None:
    from wanbalanced.actions import DRIFT_KINDS
    from wanbalanced.metrics import DRIFT_KINDS as EXPORTED

    # The metrics' kind labels, in a stable order; a new action's kind joins them.
    assert DRIFT_KINDS == ("qdisc", "link", "mtu", "address", "connected_route", "route", "line_route",
                           "line_rule", "rp_filter") == EXPORTED


def test_mtu_and_reopen_actions_write_render_and_expect() -> None:
    from wanbalanced.actions import LinkDown, SetMtu

    ops = RecordingOps()
    for action in (SetMtu("r", "teql0", 2, 1400), LinkDown("r", "teql0", 2)):
        asyncio.run(action.execute(ops))  # type: ignore[arg-type]
    assert ops.calls == [("set_mtu", (2, 1400)), ("set_link_down", (2,))]
    assert SetMtu("r", "teql0", 2, 1400).command() == "ip link set teql0 mtu 1400"
    assert LinkDown("r", "teql0", 2).command() == "ip link set teql0 down"
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0"))
    ReplaceDefaultRoute("r", "teql0", 2, 0, 254).expect(snap)
    SetMtu("r", "teql0", 2, 1400).expect(snap)
    assert snap.links[2].mtu == 1400
    LinkDown("r", "teql0", 2).expect(snap)
    # Down flushes the routes through it, as the kernel does (without telling).
    assert not snap.links[2].admin_up and not snap.routes
    assert SetMtu("r", "teql0", 2, 1500).drifted(snap) == "the MTU of teql0 was changed to 1400"


def test_opening_a_teql_device_takes_the_smallest_mtu_and_the_shared_flags() -> None:
    from kernelstate import master, slave, snapshot

    from wanbalanced.observed import IFF_BROADCAST, IFF_MULTICAST, IFF_NOARP, IFF_POINTOPOINT

    snap = snapshot(master(mtu=1500, flags=IFF_BROADCAST), slave(10, "wan0", teql="teql0"),
                    slave(11, "wan1", teql="teql0", mtu=1492, flags=IFF_POINTOPOINT | IFF_NOARP | IFF_MULTICAST))
    LinkUp("r", "teql0", 2).expect(snap)
    teql = snap.links[2]
    assert teql.admin_up and teql.mtu == 1492 and teql.flags & (IFF_BROADCAST | IFF_POINTOPOINT) == 0
    assert not teql.flags & IFF_MULTICAST  # FMASK: never taken from the slaves
