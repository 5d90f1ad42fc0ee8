"""The thin netlink edge: dumps, events and writes through pyroute2's asyncio API.

Parsing is done by pure functions (`parse_*`) that tests feed canned messages;
`Kernel` owns the two sockets. One socket is bound to the multicast groups and
only listens; the other only makes requests, because one socket shared for
both fails on concurrent dumps (EBUSY) and hands late error replies of
cancelled requests to the listener.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from ipaddress import IPv4Interface, IPv6Address, IPv6Interface, ip_interface, ip_network
from typing import Any, TypeVar

from . import _pyroute2  # noqa: F401 - first: pyroute2 without its package __init__

from pyroute2.iproute.linux import AsyncIPRoute
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import NetlinkRequest
from pyroute2.netlink.rtnl import (
    RTM_GETROUTE,
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV4_RULE,
    RTMGRP_IPV6_IFADDR,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_IPV6_RULE,
    RTMGRP_LINK,
    RTMGRP_TC,
)
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from .actions import Action
from .observed import (
    DEFAULT_DST,
    DEFAULT_DST6,
    IFF_LOWER_UP,
    RTN_NAMES,
    RTN_UNICAST,
    RTPROT_WANBALANCED,
    IPNetwork,
    Address,
    Link,
    LinkStats,
    Qdisc,
    Route,
    Rule,
    Snapshot,
)
from .defaults import DEFAULT_NETLINK_RCVBUF, is_teql_name
from .nlguard import Counts, GuardedMarshal, Skipped, dump_parser, guard

log = logging.getLogger(__name__)
T = TypeVar("T")

TC_H_ROOT = 0xFFFFFFFF
NLM_F_REPLACE = 0x100
RTNLGRP_IPV4_NETCONF = 24  # sysctl changes such as rp_filter, as events
RTM_NEWNETCONF, RTM_GETNETCONF = 80, 82
NETCONFA_IFINDEX_ALL = -1
# Sequence numbers of the event socket's own requests (Kernel.barrier). The
# kernel's notifications carry 0, or the number of the request that caused
# them, which only our request socket's pool (from 1) or other processes
# choose; and a netconf message is only ever a notification (0) or an answer.
BARRIER_SEQ_FIRST, BARRIER_SEQ_SPAN = 0x5742_0000, 0x1_0000
NLM_F_DUMP_INTR = 0x10
DUMP_RETRIES = 5
GROUPS = (RTMGRP_LINK | RTMGRP_TC | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
          | RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE
          | 1 << (RTNLGRP_IPV4_NETCONF - 1))
FAMILIES = (socket.AF_INET, socket.AF_INET6)
PROC_CONF = "/proc/sys/net/ipv4/conf"
# Room for an event storm: thousands of flaps queue here rather than overrun.
RCVBUF = DEFAULT_NETLINK_RCVBUF
SO_RCVBUFFORCE = 33

Msg = Any  # a pyroute2 nlmsg: dict-like with get_attr()


class netconfmsg(nlmsg):  # type: ignore[misc]  # noqa: N801 - named like pyroute2's
    """struct netconfmsg (pyroute2 has no parser for it): a family byte, then
    attributes. The kernel sends one when, e.g., an rp_filter sysctl changes."""

    fields = (("family", "B"), ("__pad", "3x"))
    nla_map = (
        ("NETCONFA_UNSPEC", "none"),
        ("NETCONFA_IFINDEX", "int32"),
        ("NETCONFA_FORWARDING", "int32"),
        ("NETCONFA_RP_FILTER", "int32"),
        ("NETCONFA_MC_FORWARDING", "int32"),
        ("NETCONFA_PROXY_NEIGH", "int32"),
        ("NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN", "int32"),
    )


class KernelError(Exception):
    """A kernel write failed; `errno` is the kernel's answer."""

    def __init__(self, action: Action, code: int, detail: str = "") -> None:
        self.action = action
        self.errno = code
        self.detail = detail
        super().__init__(f"{action.command()}: {detail or os.strerror(code)}")


# -- pure parsers -------------------------------------------------------------


def parse_stats(msg: Msg) -> LinkStats | None:
    st = msg.get_attr("IFLA_STATS64")
    if st is None:
        return None
    return LinkStats(*(int(st.get(k) or 0) for k in (
        "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "rx_errors", "tx_errors", "rx_dropped", "tx_dropped",
    )))


def parse_link(msg: Msg, *, stats: bool = True) -> Link:
    """A link from RTM_NEWLINK; `stats=False` skips the counters, which are
    costly to decode and only needed by the periodic dump."""
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    carrier = msg.get_attr("IFLA_CARRIER")
    flags = int(msg["flags"])
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        flags=flags,
        # Older kernels omit IFLA_CARRIER; IFF_LOWER_UP says the same.
        carrier=bool(carrier) if carrier is not None else bool(flags & IFF_LOWER_UP),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        kind=kind,
        stats=parse_stats(msg) if stats else None,
    )


def parse_root_qdisc(msg: Msg) -> tuple[int, Qdisc] | None:
    """(ifindex, qdisc) for a root qdisc message; None for any other qdisc."""
    if msg["parent"] != TC_H_ROOT:
        return None
    return int(msg["index"]), Qdisc(str(msg.get_attr("TCA_KIND")), int(msg["handle"]))


def parse_address(msg: Msg) -> Address | None:
    if msg["family"] not in (socket.AF_INET, socket.AF_INET6):
        return None
    local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if local is None:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    return Address(
        index=int(msg["index"]),
        interface=ip_interface(f"{local}/{msg['prefixlen']}"),
        flags=int(flags if flags is not None else msg["flags"]),
    )


def parse_route(msg: Msg) -> Route | None:
    """A unicast route, or an unreachable/blackhole one of wanbalanced's own;
    None for anything else."""
    family, proto, rtype = msg["family"], int(msg["proto"]), msg["type"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    if rtype != RTN_UNICAST and not (proto == RTPROT_WANBALANCED and rtype in RTN_NAMES):
        return None
    dst = msg.get_attr("RTA_DST")
    table = msg.get_attr("RTA_TABLE")
    default = DEFAULT_DST if family == socket.AF_INET else DEFAULT_DST6
    return Route(
        table=int(table if table is not None else msg["table"]),
        dst=ip_network(f"{dst}/{msg['dst_len']}") if dst else default,
        priority=int(msg.get_attr("RTA_PRIORITY") or 0),
        oif=msg.get_attr("RTA_OIF"),  # None for multipath routes
        gateway=msg.get_attr("RTA_GATEWAY"),
        proto=proto,
        scope=int(msg["scope"]),
        tos=int(msg["tos"]),
        type=int(rtype),
    )


def parse_rule(msg: Msg) -> Rule | None:
    """One of wanbalanced's policy rules (FRA_PROTOCOL 119); None for any other."""
    if msg["family"] not in (socket.AF_INET, socket.AF_INET6) or msg.get_attr("FRA_PROTOCOL") != RTPROT_WANBALANCED:
        return None
    src = msg.get_attr("FRA_SRC")
    table = msg.get_attr("FRA_TABLE")
    default = DEFAULT_DST if msg["family"] == socket.AF_INET else DEFAULT_DST6
    return Rule(src=ip_network(f"{src}/{msg['src_len']}") if src else default,
                table=int(table if table is not None else msg["table"]),
                priority=int(msg.get_attr("FRA_PRIORITY") or 0))


def apply_event(snap: Snapshot, msg: Msg) -> bool:
    """Update the snapshot from one event. Returns False for messages ignored."""
    event = msg.get("event")
    if event == "RTM_NEWLINK":
        link = parse_link(msg, stats=False)  # put_link keeps the counters of the last dump
        known = snap.links.get(link.index)
        snap.put_link(link)
        if known is None or known.name != link.name:
            snap.set_rp_filter(link.index, read_rp_filter(link.name))
    elif event == "RTM_DELLINK":
        snap.drop_link(int(msg["index"]))
    elif event in ("RTM_NEWQDISC", "RTM_DELQDISC"):
        parsed = parse_root_qdisc(msg)
        if parsed is None:
            return False
        index, qdisc = parsed
        if event == "RTM_NEWQDISC":
            snap.put_qdisc(index, qdisc)
        else:
            current = snap.links.get(index)
            # The default qdisc the kernel grafts back after a delete is not
            # announced; only forget the root if it is the one deleted.
            if current is not None and current.qdisc is not None and current.qdisc.kind == qdisc.kind:
                snap.put_qdisc(index, None)
    elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
        address = parse_address(msg)
        if address is None:
            return False
        if event == "RTM_NEWADDR":
            snap.put_address(address)
        else:
            snap.drop_address(address)
    elif event == "RTM_NEWNETCONF" or msg["header"].get("type") == RTM_NEWNETCONF:
        rp = msg.get_attr("NETCONFA_RP_FILTER")
        index = msg.get_attr("NETCONFA_IFINDEX")
        if rp is None or index is None:
            return False
        if index == NETCONFA_IFINDEX_ALL:
            snap.all_rp_filter = int(rp)
        else:
            snap.set_rp_filter(int(index), int(rp))
    elif event in ("RTM_NEWRULE", "RTM_DELRULE"):
        rule = parse_rule(msg)
        if rule is None:
            return False
        (snap.rules.add if event == "RTM_NEWRULE" else snap.rules.discard)(rule)
    elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
        route = parse_route(msg)
        if route is None:
            return False
        if event == "RTM_NEWROUTE":
            snap.put_route(route, replace=bool(msg["header"]["flags"] & NLM_F_REPLACE))
        else:
            snap.drop_route(route)
    else:
        return False
    return True


def expect(snap: Snapshot, action: Action) -> None:
    """Apply the known effect of a successful write before its event arrives,
    so the next plan does not ask for it again (each action knows its own)."""
    action.expect(snap)


def _family(dst: IPNetwork) -> int:
    return socket.AF_INET if dst.version == 4 else socket.AF_INET6


def _route_spec(route: Route) -> dict[str, Any]:
    """pyroute2's keywords for a route's identity (table, destination,
    metric, device). The family is explicit: pyroute2 cannot tell it from a
    default destination."""
    spec: dict[str, Any] = {"dst": route.dst.with_prefixlen, "family": _family(route.dst), "table": route.table,
                            "priority": route.priority}
    if route.oif is not None:
        spec["oif"] = route.oif
    return spec


# -- sysctl (there is no netlink write for it) -----------------------------------


def rp_filter_path(name: str, root: str = PROC_CONF) -> str:
    """The kernel's file for a device's rp_filter. The directory is the device
    name as it is, dots included (`conf/eth0.100/`): only sysctl(8)'s dotted
    key syntax writes such a dot as '/' (see actions.sysctl_ifname)."""
    return os.path.join(root, name, "rp_filter")


def read_rp_filter(name: str, root: str = PROC_CONF) -> int | None:
    try:
        with open(rp_filter_path(name, root)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def write_rp_filter(name: str, value: int, root: str = PROC_CONF) -> None:
    with open(rp_filter_path(name, root), "w") as f:
        f.write(f"{value}\n")


# -- the sockets -------------------------------------------------------------------


class Kernel:
    """Owns the netlink sockets: dump, listen, write."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        self._events: AsyncIPRoute | None = None
        self._requests: AsyncIPRoute | None = None
        self.rcvbuf = rcvbuf
        self.counts = Counts()  # dropped datagrams and messages, both sockets
        self.teql: set[int] = set()  # ifindexes of teqlN devices, for the route screen
        self.strict = False  # strict-checked dumps: the kernel filters route dumps
        self._barriers: dict[int, asyncio.Future[bool]] = {}  # sequence number -> its waiter
        self._barrier_count = 0
        # IPv6 addresses we added whose RTM_NEWADDR is still to come (see add_address).
        self._unannounced: dict[tuple[int, IPv6Address], asyncio.Future[None]] = {}

    async def open(self, listen: bool = True) -> None:
        """Open both sockets; bind the listener before any dump so that no change
        between the dump and the subscription is missed."""
        try:
            # NETLINK_GET_STRICT_CHK (Linux >= 4.20): the kernel honours the
            # filters of a route dump (table, output device) instead of
            # sending every route.
            self._requests = AsyncIPRoute(strict_check=True)
            self.strict = True
        except OSError as e:  # pragma: no cover - kernels before 4.20
            log.info("no strict netlink checking (%s): route dumps are filtered here, not in the kernel", e)
            self._requests = AsyncIPRoute()
        guard(self._requests, GuardedMarshal(self.counts, self.teql), "request")
        if listen:
            await self.resubscribe()

    async def resubscribe(self) -> None:
        if self._events is not None:
            self._events.close()
        self._fail_barriers()  # their answers went with the old socket
        self._unannounced.clear()  # the dump that follows a resubscription sees them
        self._events = AsyncIPRoute()
        try:
            # Past rmem_max; needs CAP_NET_ADMIN, which the daemon has anyway.
            self._events.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
        except OSError as e:  # pragma: no cover - best effort
            log.debug("could not raise the netlink receive buffer: %s", e)
        marshal = GuardedMarshal(self.counts, self.teql)
        marshal.msg_map[RTM_NEWNETCONF] = netconfmsg
        guard(self._events, marshal, "event")
        await self._events.bind(groups=GROUPS)

    def close(self) -> None:
        for sock in (self._events, self._requests):
            if sock is not None:
                sock.close()
        self._events = self._requests = None

    @property
    def _req(self) -> AsyncIPRoute:
        assert self._requests is not None, "Kernel.open() first"
        return self._requests

    async def _collect(self, what: str, start: Callable[[], Awaitable[AsyncIterator[Msg]]],
                       parse: Callable[[Msg], T | None] = lambda m: m) -> list[T]:
        """One dump, parsed message by message as it arrives (only what `parse`
        keeps is held), again if the kernel marks it inconsistent
        (NLM_F_DUMP_INTR: the table changed while it was read; pyroute2 does
        not check). A message that does not parse is logged and dropped."""
        kept: list[T] = []
        for _ in range(DUMP_RETRIES):
            kept, interrupted = [], False
            async for m in await start():
                interrupted |= bool(m["header"].get("flags", 0) & NLM_F_DUMP_INTR)
                if isinstance(m, Skipped):
                    continue
                try:
                    value = parse(m)
                except (ValueError, TypeError, KeyError) as e:
                    self.counts.malformed += 1
                    log.warning("%s dump: a message does not parse: %r; dropped", what, e)
                    continue
                if value is not None:
                    kept.append(value)
            if not interrupted:
                return kept
            log.info("the %s dump was interrupted by a change: dumping again", what)
        return kept  # still changing: the events that follow will correct it

    async def dump_links(self) -> list[Link]:
        """Every link, with fresh counters (the kernel sends no event for those)."""
        return await self._collect("link", lambda: self._req.link("dump"), parse_link)

    async def _route_dump(self, family: int, table: int = 0, oif: int | None = None,
                          proto: int = 0) -> AsyncIterator[Msg]:
        """Start a route dump of one family; with strict checking the kernel
        sends only the routes of `table` (0: all) out of `oif` (None: any)
        with protocol `proto` (0: any). Routes the snapshot would not keep
        come back as nlguard.Skipped, never decoded."""
        msg = rtmsg()
        msg["family"] = family
        if self.strict:
            msg["proto"] = proto
            msg["attrs"] = ([("RTA_TABLE", table)] if table else []) + ([("RTA_OIF", oif)] if oif else [])
        marshal = self._req.marshal
        assert isinstance(marshal, GuardedMarshal)
        request = NetlinkRequest(self._req, msg, msg_type=RTM_GETROUTE, msg_flags=NLM_F_DUMP | NLM_F_REQUEST,
                                 parser=dump_parser(marshal))
        await request.send()
        return request.response()  # type: ignore[no-any-return]

    async def dump_routes(self, route_tables: Collection[int] | None = None) -> list[Route]:
        """The routes the snapshot keeps, of both families: those out of a
        teqlN device (in any table), wanbalanced's own (by protocol, in any
        table) and the default routes of `route_tables` (None: of every
        table). With strict checking the kernel filters, so a full BGP table
        in another table costs nothing; in a dumped table each unrelated
        route costs a look at its raw bytes."""
        routes: list[Route] = []
        for family in FAMILIES:
            def dump(**kw: int) -> Callable[[], Awaitable[AsyncIterator[Msg]]]:
                return lambda: self._route_dump(family, **kw)
            if not self.strict or route_tables is None:
                routes += await self._collect("route", dump(), parse_route)
                continue
            for index in sorted(self.teql):
                routes += await self._collect("route", dump(oif=index), parse_route)
            routes += await self._collect("route", dump(proto=RTPROT_WANBALANCED), parse_route)
            for table in sorted(route_tables):
                try:
                    routes += await self._collect("route", dump(table=table), parse_route)
                except NetlinkError as e:
                    if e.code != errno.ENOENT:  # the table does not exist (yet): no route in it
                        raise
        return routes

    async def dump(self, route_tables: Collection[int] | None = None) -> Snapshot:
        """A full snapshot of what the daemon reasons about; see dump_routes
        for `route_tables`."""
        r = self._req
        snap = Snapshot()
        for link in await self._collect("link", lambda: r.link("dump"), parse_link):
            snap.put_link(dataclasses.replace(link, rp_filter=read_rp_filter(link.name)))
        self.teql.clear()
        self.teql.update(i for i, link in snap.links.items() if is_teql_name(link.name))
        for index, qdisc in await self._collect("qdisc", lambda: r.get_qdiscs(), parse_root_qdisc):
            snap.put_qdisc(index, qdisc)
        for family in FAMILIES:
            for address in await self._collect("address", lambda: r.addr("dump", family=family), parse_address):
                snap.put_address(address)
        for route in await self.dump_routes(route_tables):
            snap.put_route(route)
        for family in FAMILIES:
            snap.rules.update(await self._collect("rule", lambda: r.rule("dump", family=family), parse_rule))
        snap.all_rp_filter = read_rp_filter("all")
        return snap

    async def events(self) -> AsyncIterator[Msg]:
        """Every multicast message, forever. Raises OSError(ENOBUFS) on loss.

        The answers to `barrier` are taken out here, where everything the
        kernel queued before them has been handed on."""
        assert self._events is not None, "Kernel.open() first"
        while True:
            try:
                # pyroute2's get() ends after one datagram.
                async for msg in self._events.get():
                    header = msg["header"]
                    seq = header.get("sequence_number", 0)
                    if header.get("type") == RTM_NEWNETCONF and \
                            BARRIER_SEQ_FIRST <= seq < BARRIER_SEQ_FIRST + BARRIER_SEQ_SPAN:
                        self._reached(seq, True)
                        continue
                    if self._unannounced and msg.get("event") == "RTM_NEWADDR" and msg.get("family") == socket.AF_INET6:
                        self._announced(msg)
                    yield msg
            except NetlinkError as e:
                # Notifications are never errors: this answers a barrier (and
                # pyroute2 does not say which). It is not an event lost.
                log.warning("the kernel refused a barrier on the event socket: %s", e)
                self._fail_barriers()
            except OSError:
                # Events lost (ENOBUFS): the answers may be among them; the
                # loop resubscribes and dumps, rather than wait for them.
                self._fail_barriers()
                raise

    def _announced(self, msg: Msg) -> None:
        try:
            key = (int(msg.get("index")), IPv6Address(msg.get_attr("IFA_ADDRESS")))
        except (TypeError, ValueError):
            return  # not ours to judge: apply_event will
        waiter = self._unannounced.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_barriers(self) -> None:
        for seq in list(self._barriers):
            self._reached(seq, False)

    def _reached(self, seq: int, ok: bool) -> None:
        waiter = self._barriers.pop(seq, None)  # none: the barrier gave up waiting
        if waiter is not None and not waiter.done():
            waiter.set_result(ok)

    async def barrier(self, timeout: float) -> bool:
        """Return True once `events` has handed on every message the kernel had
        queued on the event socket when this was called; False if that was not
        seen within `timeout` seconds (or no socket listens).

        A request on the event socket itself: the kernel queues its answer
        behind what it has already queued there, in order. The request asks
        for the "all" IPv4 netconf, a few dozen bytes that cannot fail.

        The kernel announces an IPv6 address it adds later, from a work queue
        (DAD's, even with nodad), after it has acknowledged the write and
        answered a barrier: so this also waits for the RTM_NEWADDR of each
        IPv6 address added before it was called."""
        if self._events is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        unannounced = list(self._unannounced.values())
        self._barrier_count += 1
        seq = BARRIER_SEQ_FIRST + self._barrier_count % BARRIER_SEQ_SPAN
        waiter: asyncio.Future[bool] = loop.create_future()
        self._barriers[seq] = waiter
        request = netconfmsg()
        request["family"] = socket.AF_INET
        request["attrs"] = [("NETCONFA_IFINDEX", NETCONFA_IFINDEX_ALL)]
        request["header"]["type"] = RTM_GETNETCONF
        request["header"]["flags"] = NLM_F_REQUEST
        request["header"]["sequence_number"] = seq
        request.encode()
        try:
            self._events.send(request.data)
            async with asyncio.timeout_at(deadline):
                if not await waiter:
                    return False
                for announced in unannounced:
                    await announced
            return True
        except (OSError, TimeoutError) as e:
            log.debug("barrier on the event socket not reached: %r", e)
            return False
        finally:
            self._barriers.pop(seq, None)
            for key in [k for k, w in self._unannounced.items() if w in unannounced]:
                del self._unannounced[key]  # never announced: no longer waited for

    async def execute(self, action: Action) -> None:
        """Perform one action; raise KernelError with the kernel's errno."""
        try:
            await self._execute(action)
        except NetlinkError as e:
            raise KernelError(action, e.code, str(e.args[1]) if len(e.args) > 1 else "") from None
        except OSError as e:
            raise KernelError(action, e.errno or errno.EIO, e.strerror or "") from None

    async def _execute(self, a: Action) -> None:
        await a.execute(self)

    # -- the kernel writes actions are made of (actions.KernelOps) -------------------

    async def add_root_qdisc(self, index: int, kind: str, replace: bool) -> None:
        try:
            await self._req.tc("replace" if replace else "add", kind, index, 0)
        except NetlinkError as e:
            # Attached meanwhile (by us or the operator): that is the goal.
            if e.code != errno.EEXIST:
                raise

    async def delete_root_qdisc(self, index: int, kind: str) -> None:
        await self._req.tc("del", kind, index, 0)

    async def set_link_up(self, index: int) -> None:
        await self._req.link("set", index=index, state="up")

    async def set_link_down(self, index: int) -> None:
        await self._req.link("set", index=index, state="down")

    async def set_mtu(self, index: int, mtu: int) -> None:
        await self._req.link("set", index=index, mtu=mtu)

    async def add_address(self, index: int, address: IPv4Interface | IPv6Interface, flags: int) -> None:
        # A replace: an address the kernel kept (keep_addr_on_down) is no error.
        key = (index, address.ip) if isinstance(address, IPv6Interface) else None
        if key is not None and self._events is not None:
            # Before the write: the announcement may come before its answer is read.
            self._unannounced[key] = asyncio.get_running_loop().create_future()
        try:
            await self._req.addr("replace", index=index, address=str(address.ip),
                                 prefixlen=address.network.prefixlen, flags=flags)
        except BaseException:
            if key is not None:
                self._unannounced.pop(key, None)
            raise

    async def delete_address(self, index: int, address: IPv4Interface | IPv6Interface) -> None:
        await self._req.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)

    async def put_route(self, route: Route, replace: bool) -> None:
        spec = _route_spec(route)
        if route.gateway is not None:
            spec["gateway"] = route.gateway
        await self._req.route("replace" if replace else "add", proto=RTPROT_WANBALANCED, scope=route.scope,
                              type=route.type, **spec)

    async def delete_own_route(self, route: Route) -> None:
        spec = _route_spec(route)
        if route.gateway is not None:
            spec["gateway"] = route.gateway
        # The scope is matched too (rtm_scope 0 matches universe only), as are
        # the type and the protocol: only the route wanbalanced made goes.
        await self._req.route("del", proto=RTPROT_WANBALANCED, type=route.type, scope=route.scope, **spec)

    async def delete_route(self, dst: IPNetwork, index: int, table: int, *, metric: int | None = None,
                           proto: int | None = None, scope: int | None = None) -> None:
        match = {k: v for k, v in (("priority", metric), ("proto", proto), ("scope", scope)) if v is not None}
        await self._req.route("del", dst=dst.with_prefixlen, oif=index, table=table,
                              family=_family(dst), **match)

    async def set_rp_filter(self, name: str, value: int) -> None:
        write_rp_filter(name, value)  # a sysctl: no netlink write exists

    def _rule_spec(self, rule: Rule) -> dict[str, Any]:
        # The priority always: pyroute2 would put its own default (32000) in its place.
        spec: dict[str, Any] = {"family": _family(rule.src), "table": rule.table, "priority": rule.priority,
                                "protocol": RTPROT_WANBALANCED}
        if rule.src.prefixlen:
            spec.update(src=str(rule.src.network_address), src_len=rule.src.prefixlen)
        return spec

    async def add_rule(self, rule: Rule) -> None:
        await self._req.rule("add", **self._rule_spec(rule))

    async def delete_rule(self, rule: Rule) -> None:
        await self._req.rule("del", **self._rule_spec(rule))
