"""What may reach the daemon through its netlink sockets, and how it is decoded.

* Only the kernel's messages. Any process with CAP_NET_ADMIN can send to a
  netlink socket: unicast to its port id, or to rtnetlink's multicast groups.
  The kernel stamps each datagram with the sender's port id, and its own is 0:
  a datagram from any other port is dropped before it is read (`Guard`).
* Decoded defensively: a message pyroute2 cannot decode (truncated, bad
  attribute lengths: `struct.error` and the like) is logged, counted and
  dropped, never raised into the reader (`GuardedMarshal`).
* Routes are screened on their raw bytes before decoding, which costs ~150 µs
  and ~4 KB a route in pyroute2: only the routes the snapshot keeps
  (`Snapshot.wants_route`: a default route outside the local table, a route
  out of a teqlN device, or one of wanbalanced's own) are decoded
  (`route_wanted`).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable, Collection
from typing import Any

from . import _pyroute2  # noqa: F401 - first: pyroute2 without its package __init__

from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_DELROUTE, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from .defaults import is_teql_name
from .observed import RT_TABLE_LOCAL, RTN_NAMES, RTN_UNICAST, RTPROT_WANBALANCED

log = logging.getLogger(__name__)

NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTA = struct.Struct("=HH")  # length, type
RTA_OIF, RTA_TABLE = 4, 15
NLM_F_DUMP_INTR = 0x10
_RT_ATTRS = NLMSG_HDR.size + RTMSG.size


def route_wanted(data: bytes, offset: int, length: int, teql: Collection[int]) -> bool:
    """Whether the route message at `offset` is one the snapshot keeps, read
    from its header and attributes without decoding it: IPv4 or IPv6, not in
    the local table, and a unicast default route, a unicast route out of an
    ifindex in `teql`, or any route with wanbalanced's protocol number.
    A message too short to tell is let through, for the decoder to judge."""
    end = offset + length
    if length < _RT_ATTRS or end > len(data):
        return True
    family, dst_len, _src, _tos, table, proto, _scope, rtype, _flags = RTMSG.unpack_from(data, offset + NLMSG_HDR.size)
    if family not in (socket.AF_INET, socket.AF_INET6):
        return False
    ours = proto == RTPROT_WANBALANCED and rtype in RTN_NAMES
    if rtype != RTN_UNICAST and not ours:
        return False
    oif = None
    cursor = offset + _RT_ATTRS
    while cursor + RTA.size <= end:
        rta_len, rta_type = RTA.unpack_from(data, cursor)
        if rta_len < RTA.size:
            return True  # malformed: the decoder will say so
        if rta_type == RTA_TABLE and rta_len >= 8:
            table = struct.unpack_from("=I", data, cursor + 4)[0]
        elif rta_type == RTA_OIF and rta_len >= 8:
            oif = struct.unpack_from("=i", data, cursor + 4)[0]
        cursor += (rta_len + 3) & ~3
    if table == RT_TABLE_LOCAL:
        return False
    return ours or dst_len == 0 or (oif is not None and oif in teql)


class Counts:
    """What the guard and the marshal dropped, for the log and the status."""

    def __init__(self) -> None:
        self.foreign = 0  # datagrams not sent by the kernel
        self.malformed = 0  # messages that would not decode
        self.routes_skipped = 0  # unrelated routes, never decoded


class GuardedMarshal(MarshalRtnl):  # type: ignore[misc]
    """pyroute2's rtnetlink decoder with the screening above. It also keeps
    the ifindexes of teqlN devices from the link messages it decodes, so that
    routes out of an equalizer created later are kept."""

    def __init__(self, counts: Counts, teql: set[int]) -> None:
        super().__init__()
        self.counts = counts
        self.teql = teql  # shared by the Kernel's sockets

    def parse_one_message(self, key: int, flags: int, sequence_number: int, data: bytes, offset: int,
                          length: int) -> Any:
        if key in (RTM_NEWROUTE, RTM_DELROUTE) and not route_wanted(data, offset, length, self.teql):
            self.counts.routes_skipped += 1
            return None
        try:
            msg = super().parse_one_message(key, flags, sequence_number, data, offset, length)
            if key in (RTM_NEWLINK, RTM_DELLINK):
                self._track(key, msg)
        except Exception as e:  # noqa: BLE001 - whatever the bytes were, they are dropped
            self.counts.malformed += 1
            head = bytes(data[offset:offset + min(length, 32)]).hex()
            log.warning("netlink message (type %d, %d bytes) does not decode: %r; dropped (starts %s)",
                        key, length, e, head)
            return None
        return msg

    def _track(self, key: int, msg: Any) -> None:
        index = int(msg["index"])
        if key == RTM_NEWLINK and is_teql_name(str(msg.get_attr("IFLA_IFNAME"))):
            self.teql.add(index)
        else:
            self.teql.discard(index)


class Skipped(dict[str, Any]):
    """Stands in, in a dump, for a route that was not decoded: pyroute2's
    reader ends a dump at a datagram that yields nothing, and reads its
    NLM_F_MULTI flag to know that more follows."""


def dump_parser(marshal: GuardedMarshal) -> Callable[[bytes, int, int], Any]:
    """A per-request parser for a route dump: unwanted routes become Skipped
    (with the header flags, so NLM_F_DUMP_INTR is still seen)."""
    def parse(data: bytes, offset: int, length: int) -> Any:
        _len, key, flags, seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if key == RTM_NEWROUTE and not route_wanted(data, offset, length, marshal.teql):
            marshal.counts.routes_skipped += 1
            return Skipped(header={"type": key, "flags": flags, "error": None})
        return marshal.parse_one_message(key, flags, seq, data, offset, length)
    return parse


class Guard:
    """Wraps a pyroute2 socket's `enqueue` (the datagram protocol's callback;
    set before the socket's first use) to drop datagrams not from the kernel."""

    def __init__(self, inner: Callable[[bytes, Any], Any], counts: Counts, what: str) -> None:
        self.inner = inner
        self.counts = counts
        self.what = what

    def __call__(self, data: bytes, addr: Any) -> Any:
        # addr is (port id, groups); None for the errors pyroute2 queues itself.
        if addr is not None and addr[0] != 0:
            self.counts.foreign += 1
            n = self.counts.foreign
            if n & (n - 1) == 0:  # 1, 2, 4, 8...: a flood cannot flood the log
                log.warning("netlink datagram on the %s socket from port %d, not from the kernel: dropped "
                            "(%d so far)", self.what, addr[0], n)
            return None
        if len(data) < NLMSG_HDR.size:
            self.counts.malformed += 1
            log.warning("netlink datagram of %d bytes on the %s socket: dropped", len(data), self.what)
            return None
        return self.inner(data, addr)


def guard(sock: Any, marshal: GuardedMarshal, what: str) -> None:
    """Put a Guard and a GuardedMarshal on a pyroute2 socket not yet used."""
    sock.set_marshal(marshal)
    sock.enqueue = Guard(sock.enqueue, marshal.counts, what)
