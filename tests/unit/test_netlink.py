"""The netlink edge's pure parts: canned pyroute2 messages -> snapshot updates."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from messages import link_msg, qdisc_msg, route_msg

from wanbalanced.actions import Attach, DeleteDefaultRoute, Detach, LinkUp, ReplaceDefaultRoute, SetRpFilter
from wanbalanced.netlink import (BARRIER_SEQ_FIRST, RTM_NEWNETCONF, Kernel, apply_event, parse_link, read_rp_filter,
                                 write_rp_filter)
from wanbalanced.observed import Qdisc, Snapshot


def test_link_events_track_carrier_and_deletion() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 3, "wan0"))
    link = snap.link("wan0")
    assert link is not None and link.has_carrier and link.mtu == 1500
    apply_event(snap, link_msg("RTM_NEWLINK", 3, "wan0", carrier=False))
    assert snap.link("wan0") is not None and not snap.link("wan0").has_carrier  # type: ignore[union-attr]
    apply_event(snap, link_msg("RTM_DELLINK", 3, "wan0"))
    assert snap.link("wan0") is None


def test_carrier_without_admin_up_is_no_carrier() -> None:
    assert not parse_link(link_msg("RTM_NEWLINK", 3, "wan0", up=False, carrier=True)).has_carrier


def test_root_qdisc_events_and_non_root_ignored() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 3, "wan0"))
    apply_event(snap, qdisc_msg("RTM_NEWQDISC", 3, "teql0"))
    assert snap.links[3].attached_to("teql0")
    assert not apply_event(snap, qdisc_msg("RTM_NEWQDISC", 3, "sfq", parent=0x10001))
    assert snap.links[3].attached_to("teql0")
    # A delete of another kind (a stale event) must not forget teql0.
    apply_event(snap, qdisc_msg("RTM_DELQDISC", 3, "noqueue", handle=0))
    assert snap.links[3].attached_to("teql0")
    apply_event(snap, qdisc_msg("RTM_DELQDISC", 3, "teql0"))
    assert snap.links[3].qdisc is None


def test_link_update_keeps_qdisc_and_down_flushes_routes() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0"))
    apply_event(snap, qdisc_msg("RTM_NEWQDISC", 2, "noqueue", handle=0))
    apply_event(snap, route_msg("RTM_NEWROUTE", 2))
    assert snap.default_routes(254)
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0", carrier=False))
    assert snap.links[2].qdisc == Qdisc("noqueue", 0)
    assert snap.default_routes(254), "carrier loss does not remove routes"
    # The kernel flushes routes of a downed device without telling anyone.
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0", up=False))
    assert not snap.default_routes(254)


def test_routes_filtered_and_replaced() -> None:
    snap = Snapshot()
    apply_event(snap, link_msg("RTM_NEWLINK", 2, "teql0"))
    apply_event(snap, link_msg("RTM_NEWLINK", 5, "eth0"))
    apply_event(snap, route_msg("RTM_NEWROUTE", 5, dst="198.51.100.0", dst_len=24))
    assert not snap.routes, "a plain route via eth0 is of no interest"
    apply_event(snap, route_msg("RTM_NEWROUTE", 2, dst="10.0.0.0", dst_len=31))
    assert snap.routes_via(2)[0].dst == IPv4Network("10.0.0.0/31")
    apply_event(snap, route_msg("RTM_NEWROUTE", 5, prio=0))
    apply_event(snap, route_msg("RTM_NEWROUTE", 2, prio=0, flags=0x100))  # replace
    assert [r.oif for r in snap.default_routes(254)] == [2]
    apply_event(snap, route_msg("RTM_DELROUTE", 2))
    assert not snap.default_routes(254)


def test_each_action_is_one_pyroute2_call() -> None:
    import asyncio
    import errno

    from pyroute2.netlink.exceptions import NetlinkError

    from ipaddress import IPv4Network, IPv6Network
    from socket import AF_INET, AF_INET6

    from wanbalanced.actions import AddAddress, AddLineRoute, DeleteAddress, DeleteConnectedRoute, DeleteLineRoute
    from wanbalanced.observed import RTN_BLACKHOLE, RTN_UNREACHABLE
    from wanbalanced.netlink import Kernel, KernelError

    calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []

    class Requests:
        """Records what Kernel asks of pyroute2's AsyncIPRoute."""

        def __getattr__(self, method: str) -> object:
            async def call(*args: object, **kw: object) -> None:
                calls.append((method, args, kw))
                if args[:2] == ("add", "teql1"):
                    raise NetlinkError(errno.EEXIST, "File exists")
                if args[:2] == ("add", "teql2"):
                    raise NetlinkError(errno.EINVAL, "Invalid argument")
            return call

    kernel = Kernel()
    kernel._requests = Requests()  # type: ignore[assignment]
    addr = IPv4Interface("10.0.0.0/31")
    for action in (
        Attach("r", "teql0", "wan0", 3), Attach("r", "teql0", "wan0", 3, replace=True), Detach("r", "teql0", "wan0", 3),
        LinkUp("r", "teql0", 2), AddAddress("r", "teql0", 2, addr), DeleteAddress("r", "teql0", 2, addr),
        DeleteConnectedRoute("r", "teql0", 2, addr.network, 100), ReplaceDefaultRoute("r", "teql0", 2, 5, 254),
        DeleteDefaultRoute("r", "teql0", 2, 5, 254), Attach("r", "teql1", "wan0", 3),
        AddLineRoute("r", "wan0", 3, IPv4Network("198.51.100.0/24"), "10.1.0.1", 10, 100),
        DeleteLineRoute("r", "wan0", 3, IPv4Network("198.51.100.0/24"), None, 0, 254),
        ReplaceDefaultRoute("r", "teql0", 2, 5, 254, RTN_UNREACHABLE),
        DeleteDefaultRoute("r", "teql0", 2, 1024, 254, RTN_BLACKHOLE, IPv6Network("::/0")),
    ):
        asyncio.run(kernel.execute(action))
    assert calls == [
        ("tc", ("add", "teql0", 3, 0), {}),
        ("tc", ("replace", "teql0", 3, 0), {}),
        ("tc", ("del", "teql0", 3, 0), {}),
        ("link", ("set",), {"index": 2, "state": "up"}),
        ("addr", ("replace",), {"index": 2, "address": "10.0.0.0", "prefixlen": 31, "flags": 0x200}),
        ("addr", ("del",), {"index": 2, "address": "10.0.0.0", "prefixlen": 31}),
        ("route", ("del",), {"dst": "10.0.0.0/31", "oif": 2, "table": 100, "family": AF_INET, "proto": 2,
                             "scope": 253}),
        ("route", ("replace",), {"dst": "0.0.0.0/0", "family": AF_INET, "oif": 2, "priority": 5, "table": 254,
                                 "proto": 119, "scope": 0, "type": 1}),
        ("route", ("del",), {"dst": "0.0.0.0/0", "family": AF_INET, "oif": 2, "table": 254, "priority": 5}),
        ("tc", ("add", "teql1", 3, 0), {}),  # EEXIST: attached meanwhile, which is the goal
        # Added, not replaced: another's route to the same place is refused, not overwritten.
        ("route", ("add",), {"dst": "198.51.100.0/24", "family": AF_INET, "oif": 3, "priority": 10, "table": 100,
                             "gateway": "10.1.0.1", "proto": 119, "scope": 0, "type": 1}),
        # Deleted by protocol, type and scope: only the route wanbalanced made matches.
        ("route", ("del",), {"dst": "198.51.100.0/24", "family": AF_INET, "oif": 3, "priority": 0, "table": 254,
                             "proto": 119, "type": 1, "scope": 253}),
        ("route", ("replace",), {"dst": "0.0.0.0/0", "family": AF_INET, "priority": 5, "table": 254,
                                 "proto": 119, "scope": 0, "type": 7}),
        ("route", ("del",), {"dst": "::/0", "family": AF_INET6, "priority": 1024, "table": 254,
                             "proto": 119, "type": 6, "scope": 0}),
    ]
    try:
        asyncio.run(kernel.execute(Attach("r", "teql2", "wan0", 3)))
    except KernelError as e:
        assert e.errno == errno.EINVAL and e.action == Attach("r", "teql2", "wan0", 3)
    else:
        raise AssertionError("the refusal was swallowed")


def test_rp_filter_roundtrip_and_dotted_names(tmp_path: Path) -> None:
    # The kernel's directory for VLAN eth0.100 is conf/eth0.100/, dot and all;
    # the '/' form is only sysctl(8)'s key syntax.
    (tmp_path / "eth0.100").mkdir()
    (tmp_path / "eth0.100/rp_filter").write_text("2\n")
    assert read_rp_filter("eth0.100", str(tmp_path)) == 2
    write_rp_filter("eth0.100", 0, str(tmp_path))
    assert (tmp_path / "eth0.100/rp_filter").read_text() == "0\n"
    assert read_rp_filter("eth0.100", str(tmp_path)) == 0
    assert not (tmp_path / "eth0").exists(), "nothing written under the sysctl(8) key form"
    assert read_rp_filter("nosuch", str(tmp_path)) is None


def test_rp_filter_command_keeps_the_sysctl_key_form() -> None:
    # For the log and `plan`: sysctl(8) needs the '/' form in a dotted key.
    assert SetRpFilter("r", "eth0.100", 7, 0).command() == "sysctl -w net.ipv4.conf.eth0/100.rp_filter=0"


def test_interrupted_dumps_are_retried() -> None:
    import asyncio
    from collections.abc import AsyncIterator

    from wanbalanced.netlink import NLM_F_DUMP_INTR, Kernel

    calls = []

    async def start() -> AsyncIterator[object]:
        calls.append(1)
        flags = NLM_F_DUMP_INTR if len(calls) < 3 else 0

        async def gen() -> AsyncIterator[object]:
            m = link_msg("RTM_NEWLINK", 3, "wan0")
            m["header"] = {"flags": flags}
            yield m
        return gen()

    kernel = Kernel()
    msgs = asyncio.run(kernel._collect("link", start))  # type: ignore[arg-type]
    assert len(calls) == 3 and len(msgs) == 1  # two interrupted dumps, then a clean one


def test_link_events_leave_counters_to_the_periodic_dump() -> None:
    # Decoding IFLA_STATS64 for every link event was a fifth of the daemon's
    # time in an event storm; the counters are for the metrics, refreshed by
    # the periodic link dump.
    snap = Snapshot()
    dumped = parse_link(link_msg("RTM_NEWLINK", 5, "wan0", stats={"tx_packets": 10, "rx_bytes": 700}))
    assert dumped.stats is not None and (dumped.stats.tx_packets, dumped.stats.rx_bytes) == (10, 700)
    snap.put_link(dumped)
    assert apply_event(snap, link_msg("RTM_NEWLINK", 5, "wan0", carrier=False, stats={"tx_packets": 99}))
    link = snap.links[5]
    assert not link.has_carrier and link.stats == dumped.stats


class _Socket:
    """Stands in for pyroute2's event socket: hands out `batches`, one
    datagram per get(), then raises `then`."""

    def __init__(self, batches: list[list[Any]], then: Exception) -> None:
        self.batches = batches
        self.then = then

    async def get(self) -> AsyncIterator[Any]:
        if not self.batches:
            raise self.then
        for msg in self.batches.pop(0):
            yield msg


def _netconf_answer(seq: int) -> dict[str, Any]:
    return {"header": {"type": RTM_NEWNETCONF, "sequence_number": seq}, "event": "RTM_NEWNETCONF"}


def test_the_edge_takes_a_barriers_answer_out_where_it_stands_and_fails_it_on_lost_events() -> None:
    async def scenario() -> tuple[list[Any], bool, bool, bool]:
        kernel = Kernel()
        loop = asyncio.get_running_loop()
        reached: asyncio.Future[bool] = loop.create_future()
        lost: asyncio.Future[bool] = loop.create_future()
        kernel._barriers = {BARRIER_SEQ_FIRST + 1: reached, BARRIER_SEQ_FIRST + 2: lost}
        kernel._events = _Socket([[link_msg("RTM_NEWLINK", 10, "wan0")], [_netconf_answer(BARRIER_SEQ_FIRST + 1)],
                                  [link_msg("RTM_NEWLINK", 11, "wan1")]],
                                 OSError(errno.ENOBUFS, "No buffer space available"))
        events = kernel.events()
        handed = [await anext(events)]
        early = reached.done()  # wan0 came before the answer
        handed.append(await anext(events))  # the answer is taken out on the way to wan1
        with pytest.raises(OSError):
            await anext(events)
        return handed, early, reached.result(), lost.result()

    handed, early, reached, lost = asyncio.run(scenario())
    assert [m.get_attr("IFLA_IFNAME") for m in handed] == ["wan0", "wan1"]
    assert not early and reached is True
    assert lost is False  # events lost: its answer may never come, the loop is not kept waiting
