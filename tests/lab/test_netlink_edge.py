"""The netlink edge against the real kernel: device names sysctl(8) spells
differently, and messages that do not come from the kernel."""

from __future__ import annotations

import os
import subprocess

import pytest

from lab.daemon import Wanbalanced
from lab.topo import NS, Lab, batch, ip, rp_filter, run, set_rp_filter

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
    root = f"/usr/lib/uml/modules/{os.uname().release}/kernel/net"
    # insmod does not resolve dependencies: load them first, in order.
    for module, rel in (("llc", "llc/llc.ko"), ("stp", "802/stp.ko"), ("garp", "802/garp.ko"),
                        ("mrp", "802/mrp.ko"), ("8021q", "8021q/8021q.ko")):
        if os.path.isdir(f"/sys/module/{module}"):
            continue
        if not os.path.isfile(f"{root}/{rel}"):
            pytest.skip(f"no {module} module in the guest ({root}/{rel})")
        run("insmod", f"{root}/{rel}")


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
