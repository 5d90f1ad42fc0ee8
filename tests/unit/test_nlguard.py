"""The screen in front of the netlink sockets, on raw bytes."""

from __future__ import annotations

import socket
import struct
from typing import Any

from wanbalanced.nlguard import Counts, Guard, GuardedMarshal, route_wanted
from wanbalanced.observed import RTPROT_WANBALANCED

RTM_NEWLINK, RTM_NEWROUTE = 16, 24


def nlmsg(mtype: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def route(dst_len: int, oif: int | None, *, table: int = 254, rtype: int = 1, family: int = socket.AF_INET,
          table_attr: int | None = None, proto: int = 3) -> bytes:
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, proto, 0, rtype, 0)
    if dst_len:
        body += struct.pack("=HH4s", 8, 1, bytes([198, 51, 100, 0]))
    if oif is not None:
        body += struct.pack("=HHi", 8, 4, oif)
    if table_attr is not None:
        body += struct.pack("=HHI", 8, 15, table_attr)
    return nlmsg(RTM_NEWROUTE, body)


def wanted(data: bytes, teql: set[int]) -> bool:
    return route_wanted(data, 0, len(data), teql)


def test_route_screen_keeps_what_the_snapshot_keeps() -> None:
    teql = {2}
    assert wanted(route(0, 5), teql), "a default route anywhere (route clash)"
    assert wanted(route(24, 2), teql), "a route out of teql0"
    assert not wanted(route(24, 5), teql), "an unrelated route is never decoded"
    assert not wanted(route(24, 2, table=255), teql), "the local table"
    assert not wanted(route(24, 2, table=252, table_attr=255), teql), "RTA_TABLE wins over rtm_table"
    assert wanted(route(0, 5, table=252, table_attr=1000), teql)
    assert not wanted(route(0, 2, rtype=2), teql), "not unicast"
    assert wanted(route(0, 2, family=socket.AF_INET6), teql), "IPv6 default routes too"
    assert not wanted(route(0, 2, family=socket.AF_BRIDGE), teql), "neither IPv4 nor IPv6"
    assert wanted(route(24, 5, proto=RTPROT_WANBALANCED), teql), "ours, through any device"
    assert wanted(route(0, None, rtype=7, proto=RTPROT_WANBALANCED), teql), "our unreachable stand-in"
    assert not wanted(route(0, None, rtype=7), teql), "another's unreachable route"
    assert not wanted(route(24, 5, table=255, proto=RTPROT_WANBALANCED), teql), "never the local table"
    assert not wanted(route(24, None), teql), "multipath, not a default"
    assert wanted(route(24, 2)[:20], teql), "too short to tell: the decoder judges"


def test_marshal_drops_what_does_not_decode_and_tracks_teql() -> None:
    counts, teql = Counts(), set[int]()
    m = GuardedMarshal(counts, teql)
    truncated = nlmsg(RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 3, 0, 0)[:8])
    assert list(m.parse(truncated)) == [] and counts.malformed == 1
    ifname = b"teql0\0\0\0"
    link = nlmsg(RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 7, 0, 0) + struct.pack("=HH", 4 + 6, 3) + ifname)
    assert [msg["index"] for msg in m.parse(link)] == [7] and teql == {7}
    assert list(m.parse(route(24, 5))) == [] and counts.routes_skipped == 1
    assert [msg["dst_len"] for msg in m.parse(route(24, 7))] == [24]


def test_guard_passes_only_the_kernels_datagrams() -> None:
    got: list[Any] = []
    counts = Counts()
    g = Guard(lambda data, addr: got.append((data, addr)), counts, "event")
    msg = route(0, 2)
    g(msg, (4242, 1))      # multicast by another process
    g(msg, (-77, 0))       # unicast from another socket
    g(b"\x01\x02", (0, 0))  # the kernel, but no header
    assert got == [] and counts.foreign == 2 and counts.malformed == 1
    g(msg, (0, 1))
    g(msg, None)           # pyroute2's own error marker
    assert len(got) == 2
