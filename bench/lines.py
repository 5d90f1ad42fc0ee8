"""The emulated lines every contender runs on (guest side).

The lab's two routers (``lab/topo.py``): router A with ``wan0..wanN-1``, router
B (netns ``rb``) with each far end ``wanNp`` in its own VRF holding
``192.0.2.1`` and ``192.0.2.2``. The benchmarks add three things, the same for
every contender:

* **One MAC address on every far end.** bonding and team send every frame
  with the one neighbour entry of their master device, whichever line it
  leaves on; the far ends must all accept it (TEQL resolves per slave and does
  not care).
* **Permanent neighbour entries** for B's addresses on router A (on each
  slave for TEQL, on the master for bonding and team), so that no contender
  pays an ARP resolution after a line returns, as on the point-to-point lines
  TEQL is built for. The contenders' own ARP probes (bonding's arp_interval,
  teamd's arp_ping) are not affected: they send and read ARP themselves.
* **``udp_l3mdev_accept=1``** on B, so one UDP socket in B's default VRF
  counts the stream whichever line it arrives on.

Faults: ``carrier_down``/``carrier_up`` set B's far end down or up (A's
``wanN`` loses its carrier); ``kill``/``revive`` make a line dead with its
carrier up: netem with 100 % loss on B's side in both directions (on the far
end's egress, and on its ingress through an ifb device), and back to 0 %.

Each fault is a netlink request or two, made from this process at real-time
priority, so that no contender sees half of it: bringing a far end up also
restores B's return route over it (the kernel drops that route with the
link), and a contender that probed the line between the two requests would
find it broken. It also takes a millisecond rather than the 30 ms of starting
``ip``, during which the other processes would not run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute

from lab.topo import FAR_ADDR, FAR_ADDR2, LOCAL_PREFIX, NS, VRF_TABLE_BASE, Lab, batch, reset_teql, run

FAR_MAC = "02:00:00:00:0b:01"
NEIGHBOURS = (FAR_ADDR, FAR_ADDR2)


class Lines:
    """N lines between router A and router B, with fault injection."""

    def __init__(self) -> None:
        self.lab = Lab()
        self.n = 0
        self.dead_capable = False
        self._rb: Any = None  # an IPRoute in router B
        self._index: dict[str, int] = {}  # router B's devices

    @property
    def slaves(self) -> list[str]:
        return [f"wan{i}" for i in range(self.n)]

    def setup(self, n: int, *, up: bool = True, dead_faults: bool = False, teql: bool = True) -> None:
        """Router B and ``n`` lines (A's ends up if ``up``), nothing attached,
        and a clean teql0 if ``teql`` (sch_teql reloaded). ``dead_faults``
        prepares ``kill``/``revive``."""
        self.teardown()
        if teql:
            reset_teql(1)
        self.lab.setup(n, up=up)
        self.n = n
        run("sysctl", "-q", "-w", "net.ipv4.udp_l3mdev_accept=1", ns=NS)
        cmds = [["link", "set", f"wan{i}p", "address", FAR_MAC] for i in range(n)]
        if dead_faults:
            for i in range(n):
                cmds += [["link", "add", f"ifb{i}", "type", "ifb"], ["link", "set", f"ifb{i}", "up"]]
        batch(cmds, ns=NS)
        if dead_faults:
            tc: list[list[str]] = []
            for i in range(n):
                tc += [
                    ["qdisc", "add", "dev", f"wan{i}p", "root", "handle", "1:", "netem", "loss", "0%"],
                    ["qdisc", "add", "dev", f"ifb{i}", "root", "handle", "1:", "netem", "loss", "0%"],
                    ["qdisc", "add", "dev", f"wan{i}p", "handle", "ffff:", "ingress"],
                    ["filter", "add", "dev", f"wan{i}p", "parent", "ffff:", "matchall",
                     "action", "mirred", "egress", "redirect", "dev", f"ifb{i}"],
                ]
            batch(tc, tool="tc", ns=NS)
        self.dead_capable = dead_faults
        self._rb = IPRoute(netns=NS)
        self._index = {str(m.get_attr("IFLA_IFNAME")): int(m["index"]) for m in self._rb.get_links()}

    def neighbours(self, devices: Iterable[str]) -> None:
        """Permanent entries for B's addresses on router A's ``devices``."""
        batch([["neigh", "replace", addr, "lladdr", FAR_MAC, "dev", dev, "nud", "permanent"]
               for dev in devices for addr in NEIGHBOURS])

    def teardown(self) -> None:
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        self.lab.teardown()  # deletes rb, and with it the ifb devices
        self.n = 0
        self.dead_capable = False

    # faults -------------------------------------------------------------

    def carrier_down(self, i: int) -> None:
        with _realtime():
            self._rb.link("set", index=self._index[f"wan{i}p"], state="down")

    def carrier_up(self, i: int) -> None:
        far = self._index[f"wan{i}p"]
        with _realtime():
            self._rb.link("set", index=far, state="up")
            self._rb.route("replace", dst=LOCAL_PREFIX, oif=far, table=VRF_TABLE_BASE + i)

    def _loss(self, lines: Sequence[int], pct: int) -> None:
        assert self.dead_capable, "setup(dead_faults=True) first"
        devices = [self._index[dev] for i in lines for dev in (f"wan{i}p", f"ifb{i}")]
        with _realtime():
            for index in devices:
                self._rb.tc("replace", "netem", index, handle=0x10000, loss=pct)

    def kill(self, i: int) -> None:
        """Line i dead, carrier up: B drops everything it sends or receives on it."""
        self._loss([i], 100)

    def revive(self, i: int) -> None:
        self._loss([i], 0)

    @staticmethod
    def operstate(name: str) -> str:
        """Router A's RFC 2863 state of ``name``: linkwatch sets it when it has
        processed a carrier change."""
        try:
            with open(f"/sys/class/net/{name}/operstate") as f:
                return f.read().strip()
        except OSError:
            return "absent"

    def ifindex(self, name: str) -> int:
        with open(f"/sys/class/net/{name}/ifindex") as f:
            return int(f.read())

    def far_ifindexes(self) -> dict[int, str]:
        """Router B's far ends by interface index (for the receiver's per-line counts)."""
        out = run("ip", "-n", NS, "-o", "link", "show").stdout
        found: dict[int, str] = {}
        for line in out.splitlines():
            index, _, rest = line.partition(":")
            name = rest.strip().split(":")[0].split("@")[0]
            if name.startswith("wan"):
                found[int(index)] = name
        return found


@contextmanager
def _realtime() -> Iterator[None]:
    """Run the block at real-time priority: its requests take effect back to
    back, before any contender (or the kernel's linkwatch worker, which
    announces carrier changes) gets the CPU."""
    try:
        policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(60))
    except OSError:
        yield
        return
    try:
        yield
    finally:
        os.sched_setscheduler(0, policy, param)


def attached(master: str = "teql0") -> set[str]:
    """Router A's interfaces whose root qdisc is ``master`` (one ``tc`` run)."""
    out = run("tc", "-j", "qdisc", "show").stdout
    return {str(q.get("dev")) for q in json.loads(out or "[]")
            if isinstance(q, dict) and q.get("root") and q.get("kind") == master}


def pids_of(name: str) -> list[int]:
    """Processes whose command name is ``name`` (from /proc)."""
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                continue
    return found
