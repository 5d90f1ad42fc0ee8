"""Guest side: real PPP and PPPoE lines for the lab topology (lab/topo.py).

Runs INSIDE the UML lab guest as root, with Debian's ``ppp`` (pppd 2.4.9
and its ``rp-pppoe.so`` plugin, in /usr/lib/pppd/2.4.9/) and ``pppoe``
(``pppoe-server``) packages.  A line of kind ``ppp`` or ``pppoe`` keeps the
topology's layout: router A's end is ``wanN`` (made by pppd, POINTOPOINT and
NOARP), router B's end ``wanNp`` sits in ``vrfN`` and routes 10.0.0.0/31
back over itself, so a request sent over line N is answered over line N::

    PPP (kind "ppp"): a pty pair, pppd at both ends
      A: pppd pty "ip netns exec rb sh lab/ppp-far.sh N" ... ifname wanN
         persist holdoff 1 maxfail 0            IPCP: wanN 10.1.N.1 peer 10.1.N.2
      B: pppd notty ... ifname wanNp            wanNp 10.1.N.2 peer 10.1.N.1, in vrfN

    PPPoE (kind "pppoe"): a veth pair peN <-> peNp, PPPoE sessions over it
      A: pppd plugin rp-pppoe.so nic-peN ... ifname wanN persist holdoff 1
         (kernel PPPoE: pppoe.ko, pppox.ko)     IPCP: wanN 10.2.N.1 peer 10.2.N.2
      B: pppoe-server -I peNp -L 10.2.N.2 -R 10.2.N.1 -N 1 (user-mode
         PPPoE: it runs pppd with pty "pppoe ..." through lab/ppp-far.sh)

What a line does, measured in the guest (kernels 6.1 and 7.2):

* pppd creates its unit as ``pppM`` (admin down, MTU 1500), renames it to
  ``wanN``, sets the MTU it negotiated (the peer's MRU: 1400 with the far
  end's ``mru 1400``, 1492 on PPPoE) and only at IPCP-up brings it up.  A
  ppp device never drops its carrier: it shows ``LOWER_UP`` as soon as it is
  up (operstate ``UNKNOWN``), and its sysfs ``carrier`` reads EINVAL while
  it is down.  So up means negotiated, unless someone sets it up by hand.
* When the far pppd dies the near one sees the hang-up, brings ``wanN``
  down and deletes it; after ``holdoff`` (1 s) it dials again: the pty
  command runs again (PPP), or PADI/PADR start a new session (PPPoE), and a
  new ``wanN`` with a new ifindex appears.
* The far end's options live in ``/run/lab-ppp/wanNp.opts``, read at each
  dial: ``redial(i, mru=1400)`` changes the MTU the next dial brings.
  ``/run/lab-ppp/wanN.hold`` keeps the far end from answering (the near
  pppd then keeps sending LCP Configure-Requests, and ``wanN`` exists,
  down).
* Router B's end routes 10.0.0.0/31 back only once its pppd has brought
  it up (``ppp-far.sh`` polls for that): for up to about 100 ms after
  router A's end is up, replies over a fresh line are lost.  ``Lab.line_up``
  includes that route.
* pppd's own logs: ``/run/lab-ppp/wanN.log`` (A) and ``wanNp.log`` (B).

Every pid of ours is kept in ``/run/lab-ppp/*.pid``: ``stop_all()`` kills
exactly those (and is safe after an aborted test, since the files outlive
the ``Lab`` object), then removes the directory.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

RUN = Path("/run/lab-ppp")
FAR_SCRIPT = Path(__file__).resolve().parent / "ppp-far.sh"
KINDS = ("veth", "ppp", "pppoe")

#: Kernel modules, in load order (dependencies are taken from modules.dep).
_MODULES = {
    "ppp": ("kernel/drivers/net/slip/slhc.ko", "kernel/drivers/net/ppp/ppp_generic.ko",
            "kernel/drivers/net/ppp/ppp_async.ko"),
    "pppoe": ("kernel/drivers/net/ppp/pppoe.ko",),
}

# Options for both ends.  /etc/ppp/options (read first by every pppd) says
# auth, crtscts, lock, modem and lcp-echo-interval 30: overridden here (the
# PPPoE plugin's channel has no tty options such as nolock).  No
# IPv6CP, no compression: the lines' packet counters count the tests' pings.
_COMMON = ["nodetach", "noauth", "noipv6", "novj", "noccp", "nobsdcomp", "nodeflate",
           "nopcomp", "noaccomp"]
_NEAR_PPP = [*_COMMON, "nolock", "local", "nocrtscts", "lcp-echo-interval", "0", "lcp-restart", "1",
             "persist", "holdoff", "1", "maxfail", "0"]
_NEAR_PPPOE = [*_COMMON, "noipdefault", "lcp-echo-interval", "1", "lcp-echo-failure", "3",
               "lcp-restart", "1", "persist", "holdoff", "1", "maxfail", "0"]


def near_addr(kind: str, i: int) -> str:
    """Router A's IPCP address on line i (10.1.i.1 on PPP, 10.2.i.1 on PPPoE)."""
    return f"10.{_net(kind)}.{i}.1"


def peer_addr(kind: str, i: int) -> str:
    """Router B's IPCP address on line i, the far end's: a probe target."""
    return f"10.{_net(kind)}.{i}.2"


def _net(kind: str) -> int:
    if kind not in ("ppp", "pppoe"):
        raise ValueError(f"not a PPP line kind: {kind!r}")
    return 1 if kind == "ppp" else 2


def eth(i: int) -> str:
    """Router A's Ethernet under PPPoE line i: "peI" (B's is "peIp")."""
    return f"pe{i}"


def prepare(kinds: Sequence[str]) -> None:
    """Load the kernel modules the kinds need and give pppd its pty master."""
    from lab.topo import load_module  # lab.topo imports this module

    needed = {k for k in kinds if k != "veth"}
    if not needed:
        return
    for kind in ("ppp", "pppoe"):
        if kind in needed or kind == "ppp":
            for rel in _MODULES[kind]:
                load_module(rel)
    # init.sh mounts devpts; devtmpfs may lack /dev/ptmx: use the instance's.
    if not os.path.ismount("/dev/pts"):
        os.makedirs("/dev/pts", exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "-o", "ptmxmode=666", "devpts", "/dev/pts"], check=True)
    if not os.path.exists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
    RUN.mkdir(exist_ok=True)


def write_far_opts(kind: str, i: int, mru: int | None = None) -> None:
    """Router B's pppd options for line i, read at its next dial."""
    words = [*_COMMON, "nolock", "lcp-echo-interval", "0", "ifname", f"wan{i}p",
             "logfile", str(RUN / f"wan{i}p.log")]
    if kind == "ppp":
        words += ["notty", "local", "nocrtscts", f"{peer_addr(kind, i)}:{near_addr(kind, i)}"]
    if mru is not None:
        words += ["mru", str(mru)]
    (RUN / f"wan{i}p.opts").write_text(" ".join(words) + "\n")


def hold(i: int, held: bool) -> None:
    """Keep router B's end of line i from answering a dial (or let it)."""
    flag = RUN / f"wan{i}.hold"
    if held:
        flag.touch()
    else:
        flag.unlink(missing_ok=True)


def start_line(kind: str, i: int, ns: str) -> None:
    """Start line i: router B's side (PPPoE: its server), then router A's pppd."""
    write_far_opts(kind, i)
    log = str(RUN / f"wan{i}.log")
    if kind == "ppp":
        argv = ["pppd", "pty", f"ip netns exec {ns} sh {FAR_SCRIPT} {i}", *_NEAR_PPP,
                f"{near_addr(kind, i)}:{peer_addr(kind, i)}", "ifname", f"wan{i}", "logfile", log]
    else:
        from lab.topo import batch

        batch([["link", "add", eth(i), "type", "veth", "peer", "name", f"{eth(i)}p", "netns", ns],
               ["link", "set", eth(i), "up"]])
        batch([["link", "set", f"{eth(i)}p", "up"]], ns=ns)
        stub = RUN / f"pppd-far{i}"
        # pppoe-server runs its pppd with stdin and stdout closed.
        stub.write_text(f'#!/bin/sh\nexec sh {FAR_SCRIPT} {i} "$@" </dev/null >/dev/null\n')
        stub.chmod(0o755)
        server = ["pppoe-server", "-I", f"{eth(i)}p", "-L", peer_addr(kind, i), "-R", near_addr(kind, i),
                  "-N", "1", "-O", "/dev/null", "-q", str(stub), "-X", str(RUN / f"{eth(i)}p.server.pid")]
        # pppoe-server forks into the background and writes its pid file.
        subprocess.run(["ip", "netns", "exec", ns, *server], check=True, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10)
        argv = ["pppd", "plugin", "rp-pppoe.so", f"nic-{eth(i)}", *_NEAR_PPPOE,
                "ifname", f"wan{i}", "logfile", log]
    with open(RUN / f"wan{i}.out", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    (RUN / f"wan{i}.pid").write_text(f"{proc.pid}\n")


def far_pid(i: int) -> int | None:
    """The pid of router B's pppd on line i, if it runs."""
    try:
        pid = int((RUN / f"wan{i}p.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def kill_far(i: int, sig: int = signal.SIGKILL) -> int:
    """Kill router B's pppd on line i (SIGKILL: the line drops, no LCP
    Terminate); returns its pid.  Raises if it does not run."""
    pid = far_pid(i)
    if pid is None:
        raise RuntimeError(f"no far pppd runs on line {i}")
    os.kill(pid, sig)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (a child of ours not reaped yet) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _pids(near_only: bool = False) -> list[int]:
    """Our live pids: router A's pppds (wanN.pid) or all (also wanNp.pid,
    peNp.server.pid)."""
    pids = []
    for path in RUN.glob("*.pid"):
        if near_only and not re.fullmatch(r"wan\d+\.pid", path.name):
            continue
        try:
            pids.append(int(path.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return [pid for pid in pids if _alive(pid)]


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in pids:
            _reap(pid)
        if not any(_alive(pid) for pid in pids):
            return
        time.sleep(0.02)


def stop_all(timeout: float = 2.0) -> None:
    """Stop every pppd and pppoe-server of ours (their pids from RUN) and
    remove RUN.  Router A's pppds get SIGTERM first: they hang up cleanly,
    which ends router B's pppds too; whatever is left then gets SIGKILL."""
    if not RUN.is_dir():
        return
    for attempt in range(3):
        near = _pids(near_only=True)
        for pid in near:
            os.kill(pid, signal.SIGTERM)
        _wait_gone(near, timeout)
        rest = _pids()
        for pid in rest:
            os.kill(pid, signal.SIGKILL)
        _wait_gone(rest, timeout)
        for path in RUN.iterdir():
            path.unlink(missing_ok=True)
        try:
            RUN.rmdir()
            return
        except OSError as e:
            # A pppd that was still starting (or a far one that pppd's hang-up
            # had not ended yet) wrote its pid file or log since: once more.
            if e.errno != errno.ENOTEMPTY or attempt == 2:
                raise

