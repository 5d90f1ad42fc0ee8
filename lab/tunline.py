"""Guest side: a point-to-point line without pppd, made of two tun devices.

``python -m lab.tunline wan2 wan2p rb`` opens tun ``wan2`` in router A's
namespace and tun ``wan2p`` in router B's, and copies every packet from one
to the other. The kernel makes a tun device POINTOPOINT, NOARP and
MULTICAST (tun_net_init), as it makes a ppp device (ppp_setup), with no
link-layer header: to teql it is a PPP line. It has carrier while this
process holds it, and it is deleted when the process exits: a hang-up.

`TunLine` sets one up in the `Lab` topology, in place of line i's veth pair.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys

from .topo import LOCAL_PREFIX, NS, VRF_TABLE_BASE, batch, link_exists, load_module, set_rp_filter, wait_until

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def open_tun(name: str) -> int:
    """A new tun device `name` in this process's network namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def enter_netns(ns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")


def relay(local: str, far: str, ns: str) -> None:
    a = open_tun(local)
    enter_netns(ns)
    b = open_tun(far)
    print("ready", flush=True)
    peer = {a: b, b: a}
    while True:
        ready, _, _ = select.select([a, b], [], [])
        for fd in ready:
            try:
                packet = os.read(fd, 65536)
                os.write(peer[fd], packet)
            except OSError:
                pass  # the other end is down: the packet is lost, as on a line


class TunLine:
    """Line i as a tun pair: wanI on router A, wanIp in B's vrfI."""

    def __init__(self, i: int, mtu: int = 1500) -> None:
        self.i, self.mtu = i, mtu
        self.local, self.far = f"wan{i}", f"wan{i}p"
        self.proc: subprocess.Popen[str] | None = None

    def dial(self, mtu: int | None = None) -> None:
        """Create both ends and bring them up (wanI last: the daemon sees
        it appear down, then come up with its MTU already set)."""
        if mtu is not None:
            self.mtu = mtu
        load_module("kernel/drivers/net/tun.ko")
        self.proc = subprocess.Popen([sys.executable, "-m", "lab.tunline", self.local, self.far, NS],
                                     stdout=subprocess.PIPE, text=True,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"tun line {self.local}: the relay did not start")
        batch([["link", "set", self.far, "mtu", str(self.mtu)], ["link", "set", self.far, "master", f"vrf{self.i}"],
               ["link", "set", self.far, "up"],
               ["route", "replace", LOCAL_PREFIX, "dev", self.far, "table", str(VRF_TABLE_BASE + self.i)]], ns=NS)
        set_rp_filter(self.local, 0)
        batch([["link", "set", self.local, "mtu", str(self.mtu)], ["link", "set", self.local, "up"]])

    def hang_up(self) -> None:
        """End the relay: both devices are deleted, as pppd's are."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)
        self.proc = None
        wait_until(lambda: not link_exists(self.local), 5, what=f"{self.local} deleted")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    relay(*sys.argv[1:4])
