"""Guest-side helpers: a two-router topology around the real sch_teql.

Runs INSIDE the UML lab guest (see ``lab/uml.py``) as root.  It drives and
observes the network with iproute2 (``ip``, ``tc``) and ``ping``: the tests
use them as an observer independent of the daemon under test.

Topology::

    router A (the guest's root netns)          router B (netns "rb")
    teql0 10.0.0.0/31 (no connected route)
      +- wan0 (veth, no address) <========> wan0p -- vrf0 (table 100)
      +- wan1 (veth, no address) <========> wan1p -- vrf1 (table 101)
      ...                                            192.0.2.1/32 on every vrfN
    default dev teql0  (added by the daemon    10.0.0.0/31 dev wanNp table 100+N
    or by hand)

How traffic flows (measured in the guest, kernel 6.1):

* A sends to 192.0.2.1 via ``default dev teql0``.  teql0 is NOARP, but
  sch_teql resolves the next hop on the *slave* it picks round-robin
  (``__teql_resolve``): it looks up the route's neighbour (the destination
  itself, as the route has no gateway) in the slave's ARP table and ARPs for
  it there.  A's ARP request carries the packet's source 10.0.0.0 (a local
  address of A, on teql0).  So plain dynamic ARP works, no static neighbour
  entries are needed: B answers ARP for 192.0.2.1 on every far end.
* Each far end wanNp sits in its own VRF on B, and every VRF carries
  192.0.2.1 and a route back to 10.0.0.0/31 out of its own wanNp.  So a
  request that came in over line N is answered over line N: a line is a
  symmetric, independent path, and a fault injected on line N (netem loss on
  B's side, far end down) hits exactly the probes sent over line N.  (With a
  single routing table B would answer every request over one hash-chosen
  line, and netem on that line would break all of them.)
* B answers A's ARP for 10.0.0.0 on wanN: A's wanN has no address, but
  10.0.0.0 is local to A and ``arp_ignore`` is 0.
* rp_filter is 0 on both routers (``all``, ``default`` and each line), since
  replies to 10.0.0.0 arrive on wanN while A's route to 192.0.2.1 points to
  teql0.  A *recreated* wanN gets A's ``default`` value (see
  ``set_rp_filter``): re-applying its rp_filter is the daemon's job.
* IPv6 is loaded (vrf needs it) but disabled on both routers unless
  ``setup(ipv6=True)``, so that wanN's packet counters only count what the
  tests send (no DAD, router solicitations, MLD reports).

Lines are veth pairs unless ``setup(kinds=...)`` asks for real PPP or PPPoE
lines (lab/ppp.py): then pppd makes wanN and wanNp, with the same VRF layout.

A far end going down (``far_down``) drops the carrier of wanN; the kernel's
teql then skips wanN.  The VRF route on B dies with the far end, so
``far_up`` adds it back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lab import ppp

__all__ = [
    "FAR_ADDR",
    "FAR_ADDR2",
    "FAR_ADDR6",
    "FAR_LL6",
    "LOCAL_ADDR6",
    "LOCAL_ADDR",
    "LOCAL_PREFIX",
    "NS",
    "Lab",
    "addresses",
    "address_info",
    "attached",
    "batch",
    "default_route",
    "in_lab",
    "ip",
    "ip_json",
    "link",
    "link_exists",
    "ping",
    "reset_teql",
    "root_qdisc",
    "routes",
    "rp_filter",
    "run",
    "set_rp_filter",
    "tc",
    "teql_ko",
    "teql_loaded",
    "tx_packets",
    "rx_packets",
    "unload_teql",
    "wait_until",
]

JSON = dict[str, Any]

NS = "rb"  #: router B's network namespace
FAR_ADDR = "192.0.2.1"  #: router B's test address, reached through teql0
FAR_ADDR2 = "192.0.2.2"  #: a second address of router B, for probes with two targets
LOCAL_ADDR = "10.0.0.0"  #: router A's teql0 address (the seed's)
LOCAL_PREFIX = "10.0.0.0/31"
FAR_ADDR6 = "2001:db8:ff::b"  #: router B's IPv6 test address, on every far end (setup(ipv6=True))
LOCAL_ADDR6 = "2001:db8:ff::a"  #: router A's teql0 IPv6 address (the daemon's address6 in the tests)
#: The link-local address of every wanN (setup(ipv6=True)): router B routes
#: LOCAL_ADDR6 back through it, as A answers neighbour solicitations only for
#: addresses of the line itself (its teql0 address is not one; see caveats.md).
SLAVE_LL6 = "fe80::a"
FAR_LL6 = "fe80::b"  #: the link-local address of every far end wanNp: an IPv6 probe target
MASTER = "teql0"
VRF_TABLE_BASE = 100

_TEQL_REL = "kernel/net/sched/sch_teql.ko"


# --------------------------------------------------------------------------
# running commands


def run(
    *args: str,
    ns: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (in netns ``ns`` if given); raise on failure if check.

    Every process costs tens of milliseconds in the guest: batch when you
    can (``batch``)."""
    argv = list(args)
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.run(
        argv,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed ({proc.returncode}): {' '.join(argv)}\n"
            f"{proc.stderr.strip()}"
        )
    return proc


def ip(*args: str, ns: str | None = None, check: bool = True) -> str:
    """``ip [-n ns] ARGS...``; returns stdout."""
    pre = ["-n", ns] if ns is not None else []
    return run("ip", *pre, *args, check=check).stdout


def tc(*args: str, ns: str | None = None, check: bool = True) -> str:
    """``tc [-n ns] ARGS...``; returns stdout."""
    pre = ["-n", ns] if ns is not None else []
    return run("tc", *pre, *args, check=check).stdout


def batch(
    commands: Sequence[Sequence[str]],
    *,
    tool: str = "ip",
    ns: str | None = None,
    check: bool = True,
) -> str:
    """Run several ``ip`` (or ``tc``) commands in one process (``-batch``).

    With check, the first failing command raises; without, all are tried
    (``-force``) and failures are ignored.
    """
    if not commands:
        return ""
    pre = ["-n", ns] if ns is not None else []
    flags = ["-batch", "-"] if check else ["-force", "-batch", "-"]
    script = "".join(" ".join(cmd) + "\n" for cmd in commands)
    return run(tool, *pre, *flags, check=check, input=script).stdout


def _json_list(out: str) -> list[JSON]:
    out = out.strip()
    if not out:
        return []
    data = json.loads(out)
    if not isinstance(data, list):
        raise ValueError(f"expected a JSON list, got {out[:200]!r}")
    return [d for d in data if isinstance(d, dict)]


def ip_json(*args: str, ns: str | None = None) -> list[JSON]:
    """``ip -j ARGS...`` parsed; [] if the command fails (e.g. no device)."""
    pre = ["-n", ns] if ns is not None else []
    proc = run("ip", *pre, "-j", *args, check=False)
    if proc.returncode != 0:
        return []
    return _json_list(proc.stdout)


# --------------------------------------------------------------------------
# observers (router A unless ns is given)


def in_lab() -> bool:
    """True inside the UML lab guest (sch_teql loaded or WB_IN_LAB=1)."""
    return os.path.isdir("/sys/module/sch_teql") or os.environ.get("WB_IN_LAB") == "1"


def link(ifname: str, *, ns: str | None = None) -> JSON | None:
    """``ip -j -d link show dev IFNAME`` as a dict, or None if absent."""
    found = ip_json("-d", "link", "show", "dev", ifname, ns=ns)
    return found[0] if found else None


def link_exists(ifname: str, *, ns: str | None = None) -> bool:
    return link(ifname, ns=ns) is not None


def root_qdisc(ifname: str, *, ns: str | None = None) -> str | None:
    """Kind of IFNAME's root qdisc (e.g. "teql0", "noqueue"), None if the
    device does not exist or has no root qdisc."""
    pre = ["-n", ns] if ns is not None else []
    proc = run("tc", *pre, "-j", "qdisc", "show", "dev", ifname, check=False)
    if proc.returncode != 0:
        return None
    for q in _json_list(proc.stdout):
        if q.get("root"):
            kind = q.get("kind")
            return str(kind) if kind is not None else None
    return None


def attached(ifname: str, master: str = MASTER) -> bool:
    """True if IFNAME's root qdisc is the equalizer ``master``."""
    return root_qdisc(ifname) == master


def routes(
    dev: str, *, table: str = "main", ns: str | None = None
) -> list[JSON]:
    """IPv4 routes through DEV in TABLE (``ip -j route show dev DEV``)."""
    return ip_json("-4", "route", "show", "table", table, "dev", dev, ns=ns)


def default_route(
    dev: str = MASTER, *, table: str = "main", ns: str | None = None
) -> JSON | None:
    """The IPv4 default route through DEV in TABLE, or None."""
    for r in ip_json("-4", "route", "show", "table", table, "default", ns=ns):
        if r.get("dev") == dev:
            return r
    return None


def address_info(dev: str, *, ns: str | None = None) -> list[JSON]:
    """The ``addr_info`` entries of DEV (all families), [] if absent."""
    found = ip_json("addr", "show", "dev", dev, ns=ns)
    if not found:
        return []
    info = found[0].get("addr_info", [])
    return [a for a in info if isinstance(a, dict)]


def addresses(dev: str, *, ns: str | None = None) -> list[str]:
    """IPv4 addresses of DEV as "a.b.c.d/len" strings."""
    return [
        f"{a['local']}/{a['prefixlen']}"
        for a in address_info(dev, ns=ns)
        if a.get("family") == "inet"
    ]


def _sysctl_path(ifname: str, key: str, family: str = "ipv4") -> str:
    return f"/proc/sys/net/{family}/conf/{ifname}/{key}"


def rp_filter(ifname: str) -> int:
    """Router A's net.ipv4.conf.IFNAME.rp_filter (also "all", "default")."""
    with open(_sysctl_path(ifname, "rp_filter")) as f:
        return int(f.read().strip())


def set_rp_filter(ifname: str, value: int, *, ns: str | None = None) -> None:
    """Write net.ipv4.conf.IFNAME.rp_filter (IFNAME may be all/default)."""
    _write_sysctl(_sysctl_path(ifname, "rp_filter"), str(value), ns=ns)


def _write_sysctl(path: str, value: str, *, ns: str | None = None) -> None:
    if ns is None:
        with open(path, "w") as f:
            f.write(value)
    else:
        # /proc/sys/net shows the netns of the writing process.
        run("sh", "-c", f'echo {value} > "{path}"', ns=ns)


def _stat(ifname: str, counter: str) -> int:
    with open(f"/sys/class/net/{ifname}/statistics/{counter}") as f:
        return int(f.read().strip())


def tx_packets(ifname: str) -> int:
    """Router A's tx_packets counter of IFNAME (sysfs)."""
    return _stat(ifname, "tx_packets")


def rx_packets(ifname: str) -> int:
    """Router A's rx_packets counter of IFNAME (sysfs)."""
    return _stat(ifname, "rx_packets")


_RECEIVED = re.compile(r"(\d+) (?:packets )?received")


def ping(
    count: int,
    interval: float = 0.2,
    timeout: float = 1.0,
    *,
    dst: str = FAR_ADDR,
    src: str = LOCAL_ADDR,
) -> int:
    """Ping router B's test address from teql0's address; the number of
    replies.  Routing decides the path (so it takes A's default route
    through teql0).  ``timeout`` is how long to wait for the last reply;
    0 replies if the source address is missing or the route is."""
    if count < 1:
        raise ValueError("count must be >= 1")
    argv = [
        "ping", "-n", "-q",
        "-c", str(count),
        "-i", f"{interval:g}",
        "-W", f"{timeout:g}",
        "-I", src,
        dst,
    ]
    limit = count * interval + timeout + 10
    proc = run(*argv, check=False, timeout=limit)
    m = _RECEIVED.search(proc.stdout)
    return int(m.group(1)) if m else 0


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.02,
    *,
    what: str | None = None,
) -> float:
    """Poll PREDICATE until it is truthy; return the seconds it took.

    Raises AssertionError naming the predicate (or ``what``) and its last
    value on timeout.  An exception from the predicate counts as false
    and is reported if it is the last outcome.
    """
    start = time.monotonic()
    deadline = start + timeout
    last: object = None
    while True:
        try:
            last = predicate()
        except Exception as exc:  # noqa: BLE001 - reported below
            last = exc
        else:
            if last:
                return time.monotonic() - start
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {name}"
                f" (last result: {last!r})"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------
# the sch_teql module


def modules_dir() -> Path:
    """The running guest kernel's modules directory: the one the lab told it
    (``WB_MODULES_DIR``, see lab/kernel.py), else the packaged kernel's for
    this release. Never another release's: its modules would not load."""
    for root in (os.environ.get("WB_MODULES_DIR", ""), f"/usr/lib/uml/modules/{os.uname().release}"):
        if root and (Path(root) / "modules.dep").is_file():
            return Path(root)
    raise FileNotFoundError(f"no modules directory for kernel {os.uname().release} (WB_MODULES_DIR unset)")


def teql_ko() -> str:
    """Path of the running UML kernel's sch_teql.ko (like init.sh finds it)."""
    ko = modules_dir() / _TEQL_REL
    if not ko.is_file():
        raise FileNotFoundError(f"{ko} not found")
    return str(ko)


def _module_loaded(rel: str) -> bool:
    return os.path.isdir("/sys/module/" + Path(rel).name.removesuffix(".ko").replace("-", "_"))


def load_module(rel: str, *params: str) -> None:
    """insmod ``rel`` (e.g. ``kernel/net/8021q/8021q.ko``) of the running
    kernel, its dependencies first as modules.dep lists them (modprobe loads
    that list from its end); a loaded module is left as it is. Raises
    OSError with insmod's message."""
    root = modules_dir()
    deps: list[str] = []
    with open(root / "modules.dep") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == rel:
                deps = value.split()
                break
        else:
            raise OSError(f"{rel} is not a module of kernel {os.uname().release} ({root})")
    for one, args in [*((d, ()) for d in reversed(deps)), (rel, params)]:
        if _module_loaded(one):
            continue
        proc = run("insmod", str(root / one), *args, check=False)
        if proc.returncode != 0 and not _module_loaded(one):
            raise OSError(f"insmod {one}: {proc.stderr.strip()}")


def teql_loaded() -> bool:
    return os.path.isdir("/sys/module/sch_teql")


def _teql_links() -> list[str]:
    """Router A's devices whose root qdisc is an equalizer (teqlN)."""
    out = run("tc", "-j", "qdisc", "show", check=False).stdout
    names: list[str] = []
    for q in _json_list(out):
        if q.get("root") and re.fullmatch(r"teql\d+", str(q.get("kind", ""))):
            names.append(str(q.get("dev")))
    return names


def unload_teql(timeout: float = 5.0) -> None:
    """Detach every equalizer qdisc and rmmod sch_teql (its teqlN devices
    disappear).  The attached qdiscs hold references on the module, and
    they are freed after an RCU grace period, so rmmod is retried."""
    if not teql_loaded():
        return
    batch([["qdisc", "del", "dev", dev, "root"] for dev in _teql_links()],
          tool="tc", check=False)
    deadline = time.monotonic() + timeout
    while True:
        proc = run("rmmod", "sch_teql", check=False)
        if proc.returncode == 0 or not teql_loaded():
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"rmmod sch_teql failed: {proc.stderr.strip()}")
        time.sleep(0.05)


def _teql_devices() -> list[str]:
    return sorted(
        p.name for p in Path("/sys/class/net").iterdir()
        if re.fullmatch(r"teql\d+", p.name)
    )


def reset_teql(max_equalizers: int | None = None) -> None:
    """Reload sch_teql so the equalizers start clean: detach, rmmod, insmod.

    ``max_equalizers`` None means WB_MAX_EQUALIZERS from the environment
    (init.sh's setting), default 2.
    """
    if max_equalizers is None:
        max_equalizers = int(os.environ.get("WB_MAX_EQUALIZERS", "2"))
    unload_teql()
    run("insmod", teql_ko(), f"max_equalizers={max_equalizers}")


# --------------------------------------------------------------------------
# the topology


class Lab:
    """Router A (root netns: teql0, wanN) and router B (netns ``rb``).

    Observers are also available as module functions; they are exposed here
    as static methods for convenience (``lab.attached("wan0")``).
    """

    ns = NS
    far_addr = FAR_ADDR
    local_addr = LOCAL_ADDR
    local_prefix = LOCAL_PREFIX
    master = MASTER

    # observers
    link = staticmethod(link)
    link_exists = staticmethod(link_exists)
    root_qdisc = staticmethod(root_qdisc)
    attached = staticmethod(attached)
    routes = staticmethod(routes)
    default_route = staticmethod(default_route)
    addresses = staticmethod(addresses)
    address_info = staticmethod(address_info)
    rp_filter = staticmethod(rp_filter)
    set_rp_filter = staticmethod(set_rp_filter)
    tx_packets = staticmethod(tx_packets)
    rx_packets = staticmethod(rx_packets)
    ping = staticmethod(ping)
    wait_until = staticmethod(wait_until)
    reset_teql = staticmethod(reset_teql)
    unload_teql = staticmethod(unload_teql)

    def __init__(self) -> None:
        self.n_slaves = 0
        self.kinds: list[str] = []
        self.ipv6 = False

    # names ------------------------------------------------------------

    @staticmethod
    def slave(i: int) -> str:
        """Router A's end of line i: "wanI"."""
        return f"wan{i}"

    @staticmethod
    def far(i: int) -> str:
        """Router B's end of line i: "wanIp"."""
        return f"wan{i}p"

    @staticmethod
    def vrf(i: int) -> str:
        return f"vrf{i}"

    @property
    def slaves(self) -> list[str]:
        return [self.slave(i) for i in range(self.n_slaves)]

    def lines_of(self, kind: str) -> list[int]:
        """The lines of one kind ("veth", "ppp", "pppoe")."""
        return [i for i, k in enumerate(self.kinds) if k == kind]

    def peer_addr(self, i: int) -> str:
        """Router B's IPCP address on PPP or PPPoE line i (10.1.i.2, 10.2.i.2)."""
        return ppp.peer_addr(self.kinds[i], i)

    # setup / teardown -------------------------------------------------

    def setup(
        self,
        n_slaves: int = 2,
        *,
        up: bool = True,
        attach: bool = False,
        ipv6: bool = False,
        kinds: str | Sequence[str] = "veth",
    ) -> None:
        """Create router B and ``n_slaves`` lines.

        ``kinds``: each line's kind, "veth", "ppp" or "pppoe" (lab/ppp.py),
        one for all or one per line.
        ``up``: bring router A's ends wanN up (far ends are always up); on
        a PPP or PPPoE line, wait until it is up (IPCP done), or with
        ``up=False`` keep its far end from answering (``redial`` lets it).
        ``attach``: also ``tc qdisc add dev wanN root teql0`` (nothing
        else of the seed: no address, route or link state on teql0).
        """
        if n_slaves < 0:
            raise ValueError("n_slaves must be >= 0")
        if os.path.exists(f"/run/netns/{NS}"):
            raise RuntimeError(f"netns {NS} exists: teardown() first")
        self.kinds = [kinds] * n_slaves if isinstance(kinds, str) else list(kinds)
        if len(self.kinds) != n_slaves or not set(self.kinds) <= set(ppp.KINDS):
            raise ValueError(f"kinds must be one of {ppp.KINDS} or one per line, got {kinds!r}")
        ppp.prepare(self.kinds)
        self.n_slaves = n_slaves
        self.ipv6 = ipv6
        # Router A.  A new netns inherits init_net's IPv4 all/default
        # settings (net.core.devconf_inherit_init_net=0), so B and every
        # new line get rp_filter 0 from here; IPv6 ones are reset, though.
        v6 = "0" if ipv6 else "1"
        have_v6 = os.path.isdir("/proc/sys/net/ipv6")
        for key in ("all", "default"):
            set_rp_filter(key, 0)
            if have_v6:
                _write_sysctl(_sysctl_path(key, "disable_ipv6", "ipv6"), v6)
        ip("netns", "add", NS)
        # Router B: sysctls in one process, then the VRFs.
        writes = [f"echo 0 > {_sysctl_path(k, 'rp_filter')}"
                  for k in ("all", "default", "lo")]
        if have_v6:
            writes += [f"echo {v6} > {_sysctl_path(k, 'disable_ipv6', 'ipv6')}"
                       for k in ("all", "default")]
        run("sh", "-c", "; ".join(writes), ns=NS)
        b: list[list[str]] = [["link", "set", "lo", "up"]]
        for i in range(n_slaves):
            b += [
                ["link", "add", self.vrf(i), "type", "vrf",
                 "table", str(VRF_TABLE_BASE + i)],
                ["link", "set", self.vrf(i), "up"],
                ["addr", "add", f"{FAR_ADDR}/32", "dev", self.vrf(i)],
                ["addr", "add", f"{FAR_ADDR2}/32", "dev", self.vrf(i)],
            ]
        batch(b, ns=NS)
        self._make_lines(self.lines_of("veth"), up=up)
        for i in self.lines_of("veth"):
            set_rp_filter(self.slave(i), 0)
        dialled = [i for i in range(n_slaves) if self.kinds[i] != "veth"]
        for i in dialled:
            ppp.hold(i, not up)
            ppp.start_line(self.kinds[i], i, NS)
        if up:
            for i in dialled:
                self.wait_line_up(i)
        if attach:
            batch([["qdisc", "add", "dev", self.slave(i), "root", MASTER]
                   for i in range(n_slaves)], tool="tc")

    def _make_lines(self, lines: Sequence[int] | range, *, up: bool = True) -> None:
        """veth wanI <-> wanIp, far end in B's vrfI with its return route."""
        batch([["link", "add", self.slave(i), "type", "veth", "peer", "name",
                self.far(i), "netns", NS] for i in lines])
        b: list[list[str]] = []
        for i in lines:
            b += [
                ["link", "set", self.far(i), "master", self.vrf(i)],
                ["link", "set", self.far(i), "up"],
                *self._far_route_cmds(i),
            ]
        batch(b, ns=NS)
        if self.ipv6:
            # nodad: usable at once, so the first echo does not wait ~1 s.
            batch([["addr", "add", f"{SLAVE_LL6}/64", "dev", self.slave(i), "nodad"] for i in lines])
        if up:
            batch([["link", "set", self.slave(i), "up"] for i in lines])

    def _far_route_cmds(self, i: int) -> list[list[str]]:
        """Router B's way back over line i (lost with the far end's carrier)."""
        table = str(VRF_TABLE_BASE + i)
        cmds = [["route", "replace", LOCAL_PREFIX, "dev", self.far(i), "table", table]]
        if self.ipv6:
            cmds += [["addr", "replace", f"{FAR_ADDR6}/128", "dev", self.far(i), "nodad"],
                     ["addr", "replace", f"{FAR_LL6}/64", "dev", self.far(i), "nodad"],
                     ["route", "replace", f"{LOCAL_ADDR6}/128", "via", SLAVE_LL6, "dev", self.far(i),
                      "table", table]]
        return cmds

    def teardown(self) -> None:
        """Stop every pppd and pppoe-server of the lab, remove lines and
        router B; strip teql0's addresses and routes and bring it down.
        Safe to call more than once, and after an aborted test."""
        ppp.stop_all()
        cmds = [["link", "del", name] for name in self._wan_links()]
        if os.path.exists(f"/run/netns/{NS}"):
            cmds.append(["netns", "del", NS])
        for name in _teql_devices():
            cmds += [
                ["route", "flush", "table", "all", "dev", name],
                ["addr", "flush", "dev", name],
                ["link", "set", name, "down"],
            ]
        batch(cmds, check=False)
        self.n_slaves = 0
        self.ipv6 = False

    @staticmethod
    def _wan_links() -> list[str]:
        return sorted(
            p.name for p in Path("/sys/class/net").iterdir()
            if re.fullmatch(r"(wan|pe)\d+", p.name)
        )

    # the seed, by hand -----------------------------------------------

    def teql_by_hand(
        self,
        slaves: Sequence[str] | None = None,
        *,
        address: str = LOCAL_PREFIX,
        default_route: bool = True,
    ) -> None:
        """What the seed does, with tc/ip: attach the slaves, give teql0
        its address, bring it up, delete the connected route, add the
        default route."""
        for s in self.slaves if slaves is None else slaves:
            tc("qdisc", "replace", "dev", s, "root", MASTER)
        ip("addr", "add", address, "dev", MASTER)
        ip("link", "set", MASTER, "up")
        net = ipaddress.ip_interface(address).network
        ip("route", "del", str(net), "dev", MASTER, check=False)
        if default_route:
            ip("route", "replace", "default", "dev", MASTER)

    # fault injection --------------------------------------------------

    def far_down(self, i: int) -> None:
        """Down router B's end of line i: wanI loses its carrier."""
        ip("link", "set", self.far(i), "down", ns=NS)

    def far_up(self, i: int) -> None:
        """Bring router B's end of line i back (with its return route)."""
        batch([["link", "set", self.far(i), "up"], *self._far_route_cmds(i)],
              ns=NS)

    def delete_slave(self, i: int) -> None:
        """Delete wanI (and with it the far end): like pppd hanging up."""
        ip("link", "del", self.slave(i))

    def recreate_slave(self, i: int, *, up: bool = True) -> None:
        """Create wanI again with the same name, far end in B, up.  It has
        no qdisc and A's *default* sysctls (e.g. rp_filter)."""
        self._make_lines([i], up=up)

    def slave_down(self, i: int) -> None:
        """Admin-down router A's end wanI."""
        ip("link", "set", self.slave(i), "down")

    def slave_up(self, i: int) -> None:
        ip("link", "set", self.slave(i), "up")

    def netem(self, i: int, loss_pct: float, *, delay_ms: float = 0.0) -> None:
        """Lose (and delay) router B's packets on line i (replies and ARP
        answers): the line keeps its carrier but round trips over it fail."""
        args = ["qdisc", "replace", "dev", self.far(i), "root", "netem",
                "loss", f"{loss_pct:g}%"]
        if delay_ms:
            args += ["delay", f"{delay_ms:g}ms"]
        tc(*args, ns=NS)

    def netem_clear(self, i: int) -> None:
        tc("qdisc", "del", "dev", self.far(i), "root", ns=NS, check=False)

    def set_mtu(self, i: int, mtu: int, *, far: bool = True) -> None:
        """Set the MTU of wanI (and of its far end, unless far=False)."""
        if far:
            ip("link", "set", self.far(i), "mtu", str(mtu), ns=NS)
        ip("link", "set", self.slave(i), "mtu", str(mtu))

    # PPP and PPPoE lines (lab/ppp.py) ----------------------------------

    def hang_up(self, i: int, *, redial: bool = True, sig: int = signal.SIGKILL) -> int:
        """Kill router B's pppd on line i (SIGKILL: the line drops without an
        LCP Terminate).  Router A's pppd then deletes wanI and dials again
        after its holdoff (1 s); with ``redial=False`` the far end does not
        answer until ``redial(i)``.  Returns the ifindex wanI had."""
        index = self.ifindex(self.slave(i))
        ppp.hold(i, not redial)
        ppp.kill_far(i, sig)
        return index

    def redial(self, i: int, *, mru: int | None = None) -> None:
        """Let router B's end of line i answer the next dial, with ``mru``
        (wanI's MTU after the dial: its peer's MRU) if given."""
        ppp.write_far_opts(self.kinds[i], i, mru)
        ppp.hold(i, False)

    def line_up(self, i: int) -> bool:
        """PPP or PPPoE line i is up: wanI is up with its IPCP address, and
        router B's end routes 10.0.0.0/31 back over it."""
        dev = link(self.slave(i))
        if dev is None or "UP" not in dev.get("flags", []):
            return False
        if f"{ppp.near_addr(self.kinds[i], i)}/32" not in addresses(self.slave(i)):
            return False
        table = str(VRF_TABLE_BASE + i)
        return any(r.get("dst") == LOCAL_PREFIX for r in routes(self.far(i), table=table, ns=NS))

    def wait_line_up(self, i: int, timeout: float = 30.0) -> float:
        """Wait until PPP or PPPoE line i is up; the seconds it took.

        After ``redial(i)`` a dial that was under way while the far end was held
        may have to time out first (LCP: 10 requests 1 s apart; PPPoE
        discovery: its own retries), then pppd waits its holdoff (1 s): over
        10 s before the dial that succeeds, more in a slow guest (a PPPoE
        redial missed 15 s once on 6.1)."""
        return wait_until(lambda: self.line_up(i), timeout, 0.05, what=f"line {i} ({self.kinds[i]}) up")

    @staticmethod
    def ifindex(ifname: str) -> int:
        """Router A's ifindex of IFNAME (raises if absent)."""
        with open(f"/sys/class/net/{ifname}/ifindex") as f:
            return int(f.read())

    def run_b(self, *args: str, check: bool = True) -> str:
        """Run a command on router B; returns stdout."""
        return run(*args, ns=NS, check=check).stdout
