"""The netlink edge against the real kernel: device names sysctl(8) spells
differently, and messages that do not come from the kernel."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import time
from ipaddress import IPv6Interface

import pytest

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


@pytest.mark.lab_setup(ipv6=True)
def test_a_barrier_is_reached_after_everything_announced_before_it(lab: Lab) -> None:
    # Kernel.barrier, on the real kernel: a burst of changes made by another
    # socket (as `ip` would) is announced on the event socket; the barrier
    # asked for after the burst must be reached only once events() has handed
    # on every announcement, and its answer must never be handed on itself.
    from wanbalanced.netlink import BARRIER_SEQ_FIRST, RTM_NEWNETCONF, Kernel

    count = 300
    ADDR6 = "2001:db8:254::1/128"
    added = {f"10.254.{i // 200}.{i % 200 + 1}" for i in range(count)}

    async def burst_then_barrier() -> tuple[bool, int, int, list[bool], float]:
        kernel = Kernel()
        await kernel.open()
        seen: set[str] = set()
        leaked = 0

        async def read() -> None:
            nonlocal leaked
            async for msg in kernel.events():
                header = msg["header"]
                if header.get("type") == RTM_NEWNETCONF and header.get("sequence_number", 0) >= BARRIER_SEQ_FIRST:
                    leaked += 1
                elif msg.get("event") == "RTM_NEWADDR":
                    seen.add(msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS"))

        reader = asyncio.create_task(read())
        try:
            await asyncio.sleep(0.1)  # the reader is waiting on the socket
            # Another program's writes; run blocking, so the burst queues up unread.
            batch([("addr", "add", f"{address}/32", "dev", "lo") for address in sorted(added)])
            reached = await kernel.barrier(10.0)
            at_barrier = len(seen & added)
            # The kernel announces an IPv6 address from a work queue, after it
            # has acknowledged the write and answered a barrier.
            await kernel.add_address(1, IPv6Interface(ADDR6), 0)
            reached6 = await kernel.barrier(10.0)
            seen6 = ADDR6.split("/")[0] in seen
            # With nothing announced, a barrier is one round trip.
            t0 = time.monotonic()
            idle = [await kernel.barrier(10.0) for _ in range(20)]
            per_barrier = (time.monotonic() - t0) / 20
            await asyncio.sleep(0.2)
            return reached and reached6 and seen6, at_barrier, leaked, idle, per_barrier
        finally:
            reader.cancel()
            kernel.close()

    try:
        reached, at_barrier, leaked, idle, per_barrier = asyncio.run(burst_then_barrier())
    finally:
        ip("addr", "flush", "dev", "lo", "to", "10.254.0.0/16")
        ip("addr", "del", ADDR6, "dev", "lo", check=False)
    print(f"barrier reached after {at_barrier} of {count} announcements; idle barrier {per_barrier * 1000:.2f} ms")
    assert reached
    assert at_barrier == count
    assert idle == [True] * 20
    assert leaked == 0
