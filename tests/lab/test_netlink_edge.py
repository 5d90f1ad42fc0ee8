"""The netlink edge against the real kernel: device names sysctl(8) spells
differently, and messages that do not come from the kernel."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time

from lab.daemon import Wanbalanced
from lab.topo import NS, Lab, batch, ip, load_module, rp_filter, set_rp_filter

VLAN = "wan0.100"
VLAN_FAR = "wan0p.100"

CONFIG_VLAN = f"""
[daemon]
metrics_listen = "127.0.0.1:9783"

[equalizers.teql0]
slaves = ["{VLAN}", "wan1"]
address = "10.0.0.0/31"
rp_filter = 0
"""


def _load_8021q() -> None:
    # With llc, stp, garp and mrp first (modules.dep), like modprobe.
    load_module("kernel/net/8021q/8021q.ko")


def _make_vlan_line() -> None:
    """A real VLAN 100 over line 0, both ends; the far end in line 0's VRF."""
    _load_8021q()
    ip("link", "add", "link", "wan0", "name", VLAN, "type", "vlan", "id", "100")
    batch([["link", "add", "link", "wan0p", "name", VLAN_FAR, "type", "vlan", "id", "100"],
           ["link", "set", VLAN_FAR, "master", "vrf0"],
           ["link", "set", VLAN_FAR, "up"],
           ["route", "replace", "10.0.0.0/31", "dev", VLAN_FAR, "table", "100"]], ns=NS)
    ip("link", "set", VLAN, "up")


def test_rp_filter_of_a_vlan_slave_is_set_in_the_kernels_file(lab: Lab, wb: Wanbalanced) -> None:
    # New devices get the 'default' sysctls: the VLAN starts with rp_filter 2.
    set_rp_filter("default", 2)
    _make_vlan_line()
    # The kernel's file has the dot; sysctl(8)'s key form eth0/100 is no path.
    assert os.path.isfile(f"/proc/sys/net/ipv4/conf/{VLAN}/rp_filter")
    assert rp_filter(VLAN) == 2
    wb.write_config(CONFIG_VLAN)
    wb.start()
    lab.wait_until(lambda: rp_filter(VLAN) == 0 and lab.attached(VLAN), 3,
                   what=f"{VLAN} attached with rp_filter 0")
    wb.wait_log(r"sysctl -w net\.ipv4\.conf\.wan0/100\.rp_filter=0 \(rp_filter is 2")
    # Drift on the VLAN is seen (RTM_NEWNETCONF) and repaired, once.
    set_rp_filter(VLAN, 1)
    lab.wait_until(lambda: rp_filter(VLAN) == 0, 3, what=f"{VLAN} rp_filter repaired")
    wb.wait_log(r"rp_filter of wan0\.100 was changed to 1")
    log = wb.log()
    assert "ERROR" not in log and "No such file" not in log, log
    assert log.count("sysctl -w net.ipv4.conf.wan0/100.rp_filter=0") == 2, log
    # Traffic flows over the VLAN (the equalizer's round robin uses both).
    tx = lab.tx_packets(VLAN)
    assert lab.ping(10, interval=0.02) == 10
    assert lab.tx_packets(VLAN) - tx >= 3
    subprocess.run(["ip", "link", "del", VLAN], check=False)


# -- messages that do not come from the kernel ---------------------------------

RTMGRP_LINK = 1
RTM_NEWLINK = 16


def truncated_newlink() -> bytes:
    """An RTM_NEWLINK whose ifinfomsg is cut short: pyroute2's decoder raises
    struct.error on it."""
    body = struct.pack("=BxHiII", 0, 1, 3, 0, 0)[:8]
    return struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 0, 0, 0) + body


def netlink_ports(pid: int) -> list[int]:
    """The port ids of the rtnetlink sockets of process `pid` (/proc/net/netlink)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    ports = []
    with open("/proc/net/netlink") as f:
        next(f)
        for line in f:
            cols = line.split()
            if int(cols[1]) == socket.NETLINK_ROUTE and int(cols[-1]) in inodes:
                ports.append(int(cols[2]))
    return ports


def test_foreign_malformed_messages_do_not_stop_event_handling(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    assert wb.proc is not None
    ports = netlink_ports(wb.proc.pid)
    assert len(ports) >= 2, f"the daemon's event and request sockets: {ports}"
    # Another process with CAP_NET_ADMIN (root here): to the link group, which
    # every rtnetlink listener receives, and unicast to each of the daemon's
    # sockets. The kernel passes both on, stamped with the sender's port id.
    sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        sender.bind((0, 0))
        sender.sendto(truncated_newlink(), (0, RTMGRP_LINK))
        for port in ports:
            sender.sendto(truncated_newlink(), (port, 0))
            sender.sendto(b"\x01\x02", (port, 0))
    finally:
        sender.close()
    started = time.monotonic()
    lab.far_down(0)
    lab.wait_until(lambda: not lab.attached("wan0"), 3, what="wan0 detached")
    took = time.monotonic() - started
    wb.wait_log(r"not from the kernel: dropped")
    m = wb.wait_log(r"WARNING wan0: tc qdisc del dev wan0 root teql0 \(carrier lost.*?; (\d+\.\d+) ms after the event")
    assert took < 1.0 and float(m.group(1)) < 100, (took, m.group(0))
    assert wb.proc.poll() is None, "the daemon is still running"
    log = wb.log()
    assert "CRITICAL" not in log and "Traceback" not in log, log
