"""The one netlink observer of the benchmarks (guest side, its own process).

It listens to rtnetlink (links and tc) and, if asked, to the team driver's
generic netlink events, and prints one JSON line per *change* it sees, stamped
with ``time.monotonic()`` the moment the message was read:

``{"t": 12.345, "ev": "carrier", "if": "wan1", "up": false}``
    a slave's carrier changed (RTM_NEWLINK, IFLA_CARRIER);
``{"t": ..., "ev": "qdisc", "if": "wan1", "kind": "teql0", "add": false}``
    a root qdisc was added or deleted (RTM_NEWQDISC / RTM_DELQDISC);
``{"t": ..., "ev": "bond", "if": "wan1", "mii": 2, "failures": 1}``
    a bond slave's MII status changed (IFLA_BOND_SLAVE_MII_STATUS, in the
    slave's RTM_NEWLINK: 0 up, 1 going down, 2 down, 3 going back);
``{"t": ..., "ev": "team", "index": 7, "opt": "user_linkup", "on": false}``
    a per-port team option changed (``enabled``, ``user_linkup``,
    ``user_linkup_enabled``; the team family's ``change_event`` group): with a
    periodic link watch (arp_ping) teamd owns the port's link and takes the
    port out by clearing ``user_linkup``;
``{"t": ..., "ev": "team_port", "index": 7, "linkup": false}``
    the team driver's own view of a port's link changed (same group): without
    a periodic watch it follows the carrier, in the kernel.

Every event of a trial passes through this one process, so the carrier event
and the change that answers it are timed by the same reader on the same clock.
It runs with real-time priority when it can, so that it reads each message as
it arrives rather than when the scheduler gets round to it.

Run as ``python -m bench.observe [--team]``; it prints ``ready`` once bound.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK, RTMGRP_TC
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

TC_H_ROOT = 0xFFFFFFFF
NETLINK_GENERIC = 16
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
CTRL_ATTR_MCAST_GROUPS = 7
CTRL_ATTR_MCAST_GRP_NAME = 1
CTRL_ATTR_MCAST_GRP_ID = 2
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NLA_TYPE_MASK = 0x3FFF
# include/uapi/linux/if_team.h
TEAM_ATTR_LIST_OPTION = 2
TEAM_ATTR_ITEM_OPTION = 1
TEAM_ATTR_OPTION_NAME = 1
TEAM_ATTR_OPTION_TYPE = 3
TEAM_ATTR_OPTION_DATA = 4
TEAM_ATTR_OPTION_PORT_IFINDEX = 6
TEAM_ATTR_LIST_PORT = 3
TEAM_ATTR_ITEM_PORT = 1
TEAM_ATTR_PORT_IFINDEX = 1
TEAM_ATTR_PORT_CHANGED = 2
TEAM_ATTR_PORT_LINKUP = 3
NLA_U32, NLA_FLAG = 3, 6
WATCHED_OPTIONS = ("enabled", "user_linkup", "user_linkup_enabled")


def nlattrs(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink attribute in ``data``."""
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, data[off + 4:off + length]
        off += (length + 3) & ~3


def genl_family(sock: socket.socket, name: str) -> tuple[int, dict[str, int]]:
    """The id and multicast groups of a generic netlink family."""
    attr_name = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(attr_name), CTRL_ATTR_FAMILY_NAME) + attr_name
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0) + attr
    sock.send(struct.pack("=IHHII", 16 + len(body), GENL_ID_CTRL, NLM_F_REQUEST, 1, 0) + body)
    data = sock.recv(65536)
    _length, kind = struct.unpack_from("=IH", data, 0)
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", data, 16)[0]
        raise OSError(code, f"generic netlink family {name!r}: {os.strerror(code)}")
    family = -1
    groups: dict[str, int] = {}
    for kind, payload in nlattrs(data[20:]):
        if kind == CTRL_ATTR_FAMILY_ID:
            family = struct.unpack_from("=H", payload)[0]
        elif kind == CTRL_ATTR_MCAST_GROUPS:
            for _index, group in nlattrs(payload):
                fields = dict(nlattrs(group))
                gname = fields[CTRL_ATTR_MCAST_GRP_NAME].rstrip(b"\0").decode()
                groups[gname] = struct.unpack_from("=I", fields[CTRL_ATTR_MCAST_GRP_ID])[0]
    return family, groups


def team_socket() -> tuple[socket.socket, int]:
    """A generic netlink socket subscribed to the team driver's changes."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.bind((0, 0))
    family, groups = genl_family(sock, "team")
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groups["change_event"])
    return sock, family


def parse_team(data: bytes, family: int) -> list[dict[str, Any]]:
    """The watched per-port options in a team change event (one datagram)."""
    out: list[dict[str, Any]] = []
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            break
        if kind == family:
            for attr, payload in nlattrs(data[off + 20:off + length]):
                if attr == TEAM_ATTR_LIST_PORT:
                    out += _team_ports(payload)
                if attr != TEAM_ATTR_LIST_OPTION:
                    continue
                for item_kind, item in nlattrs(payload):
                    if item_kind != TEAM_ATTR_ITEM_OPTION:
                        continue
                    fields = dict(nlattrs(item))
                    name = fields.get(TEAM_ATTR_OPTION_NAME, b"").rstrip(b"\0").decode()
                    port = fields.get(TEAM_ATTR_OPTION_PORT_IFINDEX)
                    if name not in WATCHED_OPTIONS or port is None:
                        continue
                    otype = fields.get(TEAM_ATTR_OPTION_TYPE, b"\0")[0]
                    value = fields.get(TEAM_ATTR_OPTION_DATA)
                    on = (value is not None) if otype == NLA_FLAG else bool(value and any(value))
                    out.append({"ev": "team", "index": struct.unpack_from("=I", port)[0],
                                "opt": name, "on": on})
        off += (length + 3) & ~3
    return out


def _team_ports(payload: bytes) -> list[dict[str, Any]]:
    """Ports whose state changed: the team driver's own view of their link
    (it follows the carrier unless teamd took over with ``user_linkup``)."""
    out: list[dict[str, Any]] = []
    for kind, item in nlattrs(payload):
        if kind != TEAM_ATTR_ITEM_PORT:
            continue
        fields = dict(nlattrs(item))
        if TEAM_ATTR_PORT_CHANGED in fields and TEAM_ATTR_PORT_IFINDEX in fields:
            out.append({"ev": "team_port", "index": struct.unpack_from("=I", fields[TEAM_ATTR_PORT_IFINDEX])[0],
                        "linkup": TEAM_ATTR_PORT_LINKUP in fields})
    return out


class Changes:
    """Turns rtnetlink messages into the change events printed."""

    def __init__(self) -> None:
        self.carrier: dict[str, bool] = {}
        self.mii: dict[str, int] = {}
        self.names: dict[int, str] = {}

    def link(self, msg: Any) -> list[dict[str, Any]]:
        name = str(msg.get_attr("IFLA_IFNAME"))
        self.names[int(msg["index"])] = name
        out: list[dict[str, Any]] = []
        if msg["event"] == "RTM_DELLINK":
            self.carrier.pop(name, None)
            self.mii.pop(name, None)
            return out
        carrier = msg.get_attr("IFLA_CARRIER")
        up = bool(carrier) if carrier is not None else bool(msg["flags"] & 0x10000)
        if self.carrier.get(name) != up:
            if name in self.carrier:
                out.append({"ev": "carrier", "if": name, "up": up})
            self.carrier[name] = up
        info = msg.get_attr("IFLA_LINKINFO")
        slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
        if slave is not None and info.get_attr("IFLA_INFO_SLAVE_KIND") == "bond":
            mii = slave.get_attr("IFLA_BOND_SLAVE_MII_STATUS")
            if mii is not None and self.mii.get(name) != mii:
                if name in self.mii:
                    out.append({"ev": "bond", "if": name, "mii": int(mii),
                                "failures": int(slave.get_attr("IFLA_BOND_SLAVE_LINK_FAILURE_COUNT") or 0)})
                self.mii[name] = int(mii)
        return out

    def qdisc(self, msg: Any) -> list[dict[str, Any]]:
        if msg["parent"] != TC_H_ROOT:
            return []
        name = self.names.get(int(msg["index"]), f"#{msg['index']}")
        return [{"ev": "qdisc", "if": name, "kind": str(msg.get_attr("TCA_KIND")),
                 "add": msg["event"] == "RTM_NEWQDISC"}]


def realtime() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
    except (OSError, AttributeError):
        os.nice(-10)


# The interface index sits at the same offset in ifinfomsg and tcmsg.
RTM_LINK_TYPES = (16, 17)  # RTM_NEWLINK, RTM_DELLINK
RTM_QDISC_TYPES = (36, 37)  # RTM_NEWQDISC, RTM_DELQDISC
INDEX_OFFSET = 16 + 4


def split(data: bytes, wanted: set[int] | None) -> Iterator[bytes]:
    """The link and qdisc messages of a datagram, only those about the
    ``wanted`` interface indexes if given (checked before any parsing)."""
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            return
        if kind in RTM_LINK_TYPES or kind in RTM_QDISC_TYPES:
            if wanted is None or struct.unpack_from("=i", data, off + INDEX_OFFSET)[0] in wanted:
                yield data[off:off + length]
        off += (length + 3) & ~3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.observe")
    parser.add_argument("--team", action="store_true", help="also watch the team driver")
    args = parser.parse_args(argv)
    realtime()
    out = sys.stdout
    # A plain socket read here, parsed by pyroute2: pyroute2's own reader may
    # buffer datagrams where select() cannot see them.
    rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    rtnl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rtnl.bind((0, RTMGRP_LINK | RTMGRP_TC))
    marshal = MarshalRtnl()
    changes = Changes()
    with IPRoute() as ipr:
        for msg in ipr.get_links():  # the starting point: no event for it
            msg["event"] = "RTM_NEWLINK"
            changes.link(msg)
    team: tuple[socket.socket, int] | None = team_socket() if args.team else None
    stdin = sys.stdin.fileno()
    fds: list[int] = [rtnl.fileno(), stdin]
    if team is not None:
        fds.append(team[0].fileno())
    wanted: set[int] | None = None
    print("ready", file=out, flush=True)
    pending = b""
    while True:
        readable, _, _ = select.select(fds, [], [])
        now = time.monotonic()
        events: list[dict[str, Any]] = []
        if rtnl.fileno() in readable:
            try:
                data = rtnl.recv(1 << 20)
            except OSError as err:  # ENOBUFS: events were lost
                events.append({"ev": "overrun", "error": str(err)})
                data = b""
            for raw in split(data, wanted):
                for msg in marshal.parse(raw):
                    event = msg.get("event")
                    if event in ("RTM_NEWLINK", "RTM_DELLINK"):
                        events += changes.link(msg)
                    elif event in ("RTM_NEWQDISC", "RTM_DELQDISC"):
                        events += changes.qdisc(msg)
        if team is not None and team[0].fileno() in readable:
            events += parse_team(team[0].recv(1 << 20), team[1])
        for e in events:
            e["t"] = now
            out.write(json.dumps(e) + "\n")
        if events:
            out.flush()
        if stdin in readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                return 0  # our parent closed the pipe: done
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                words = line.decode().split()
                if words[:1] == ["only"]:
                    by_name = {name: index for index, name in changes.names.items()}
                    wanted = {by_name[n] for n in words[1:] if n in by_name} if words[1:] else None


if __name__ == "__main__":
    sys.exit(main())
