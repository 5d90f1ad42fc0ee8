"""Builders of observed kernel states for the core's unit tests."""

from __future__ import annotations

from ipaddress import IPv4Interface

from wanbalanced.config import Config, parse_config
from wanbalanced.observed import (
    DEFAULT_DST,
    IFA_F_NOPREFIXROUTE,
    IFF_BROADCAST,
    IFF_LOWER_UP,
    IFF_MULTICAST,
    IFF_NOARP,
    IFF_UP,
    RTPROT_WANBALANCED,
    Address,
    Link,
    Qdisc,
    Route,
    Snapshot,
)

ETHER = IFF_BROADCAST | IFF_MULTICAST

CONFIG = """
[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
rp_filter = 0
"""


def config(text: str = CONFIG) -> Config:
    return parse_config(text)


def slave(index: int, name: str, *, carrier: bool = True, up: bool = True, teql: str | None = None,
          mtu: int = 1500, rp_filter: int | None = 0, flags: int = ETHER) -> Link:
    f = flags | (IFF_UP if up else 0) | (IFF_LOWER_UP if carrier and up else 0)
    return Link(index, name, f, carrier, mtu, "veth", Qdisc(teql, 0x80010000) if teql else Qdisc("noqueue", 0),
                rp_filter)


def master(index: int = 2, name: str = "teql0", *, up: bool = False, mtu: int = 1500, flags: int = 0) -> Link:
    return Link(index, name, IFF_NOARP | flags | (IFF_UP if up else 0), False, mtu, None, Qdisc("noqueue", 0), None)


def snapshot(*links: Link, address: bool = False, default_route: bool = False, all_rp_filter: int = 0) -> Snapshot:
    snap = Snapshot(all_rp_filter=all_rp_filter)
    for link in links:
        snap.put_link(link)
    teql = snap.link("teql0")
    if address and teql is not None:
        snap.put_address(Address(teql.index, IPv4Interface("10.0.0.0/31"), IFA_F_NOPREFIXROUTE))
    if default_route and teql is not None:
        snap.put_route(Route(254, DEFAULT_DST, 0, teql.index, proto=RTPROT_WANBALANCED))
    return snap


def converged(**kw: object) -> Snapshot:
    """The seed's setup, complete: both slaves attached, teql0 up, route in place."""
    return snapshot(
        master(up=True),
        slave(10, "wan0", teql="teql0"),
        slave(11, "wan1", teql="teql0"),
        address=True, default_route=True,
    )
