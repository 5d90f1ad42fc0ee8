"""Canned pyroute2 messages, as the kernel would send them."""

from __future__ import annotations

import socket
from typing import Any

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from wanbalanced.netlink import TC_H_ROOT
from wanbalanced.observed import IFF_LOWER_UP, IFF_UP


def link_msg(event: str, index: int, name: str, *, up: bool = True, carrier: bool = True, mtu: int = 1500,
             stats: dict[str, int] | None = None) -> Any:
    m = ifinfmsg()
    m["index"], m["flags"], m["event"] = index, (IFF_UP if up else 0) | (IFF_LOWER_UP if carrier else 0), event
    m["attrs"] = [("IFLA_IFNAME", name), ("IFLA_CARRIER", int(carrier)), ("IFLA_MTU", mtu)]
    if stats is not None:
        m["attrs"].append(("IFLA_STATS64", stats))
    return m


def qdisc_msg(event: str, index: int, kind: str, parent: int = TC_H_ROOT, handle: int = 0x80010000) -> Any:
    m = tcmsg()
    m["index"], m["parent"], m["handle"], m["event"] = index, parent, handle, event
    m["attrs"] = [("TCA_KIND", kind)]
    return m


def route_msg(event: str, oif: int, *, dst: str | None = None, dst_len: int = 0, prio: int = 0,
              flags: int = 0, table: int = 254) -> Any:
    m = rtmsg()
    m["family"], m["dst_len"], m["table"], m["type"], m["event"] = socket.AF_INET, dst_len, table, 1, event
    m["proto"], m["scope"], m["tos"] = 3, 0, 0
    m["header"] = {"flags": flags}
    m["attrs"] = [("RTA_OIF", oif), ("RTA_PRIORITY", prio)] + ([("RTA_DST", dst)] if dst else [])
    return m


def addr_msg(event: str, index: int, address: str, prefixlen: int, flags: int = 0) -> Any:
    m = ifaddrmsg()
    m["family"] = socket.AF_INET6 if ":" in address else socket.AF_INET
    m["index"], m["prefixlen"], m["flags"], m["event"] = index, prefixlen, flags & 0xFF, event
    m["attrs"] = [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)]
    return m
