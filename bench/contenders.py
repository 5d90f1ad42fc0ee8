"""The contenders: each one a way to bundle the same lines (guest side).

A contender sets itself up on lines that ``bench.lines.Lines`` has just made
(nothing attached or enslaved yet), says when it is ready (every line in use),
names the observer events by which it takes a line out and puts it back, and
lists its user-space processes (for the cost measurements). ``teardown`` stops
what it started; the suite then tears the lines down.

| name | bundle | how a line is taken out |
|---|---|---|
| ``teql`` | TEQL by hand (the seed) | never: the kernel only skips a slave without carrier |
| ``teql-ifplugd`` | TEQL + ifplugd per slave, script ``tc qdisc del``/``replace`` | RTM_DELQDISC of teql0 |
| ``bare-pyroute2`` | TEQL + a dozen lines of asyncio/pyroute2 (the floor for a Python daemon) | RTM_DELQDISC of teql0 |
| ``bond-miimon`` | bonding balance-rr, miimon=100 | slave MII status down |
| ``bond-arp`` | bonding balance-rr, arp_interval=100 to 192.0.2.1 | slave MII status down |
| ``team-ethtool`` | team roundrobin (teamd), ethtool link watch | the team driver's port link down |
| ``team-arp`` | team roundrobin (teamd), arp_ping link watch, interval 100 ms | teamd clears the port's ``user_linkup`` |
| ``wb-carrier`` | TEQL + wanbalanced, carrier only | RTM_DELQDISC of teql0 |
| ``wb-probes`` | TEQL + wanbalanced, ICMP probes every 100 ms | RTM_DELQDISC of teql0 |
| ``wb-probes-fast`` | the same, timeout 50 ms, 2 rounds to fail or recover | RTM_DELQDISC of teql0 |

wanbalanced runs with its default flap damping, except in the latency suite,
which cuts the same lines again and again (damping would rightly hold them
down); every loss trial starts a fresh daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lab.daemon import Wanbalanced
from lab.topo import LOCAL_PREFIX, batch

from .events import Event
from .lines import Lines, attached, pids_of

WORK = Path("/tmp/bench")
IFPLUGD_SCRIPT = """#!/bin/sh
# ifplugd action script: $1 interface, $2 up or down
case "$2" in
    up) exec tc qdisc replace dev "$1" root teql0 ;;
    down) exec tc qdisc del dev "$1" root teql0 ;;
esac
exit 0
"""
# ifplugd polls the carrier: -t0 -T100000 polls every 100 ms (its default is
# 1 s); -u0 -d0 remove the delays before it runs the script (its defaults: 0 s
# up, 5 s down; Debian's /etc/default/ifplugd: 0 s and 10 s).
IFPLUGD_ARGS = ["-n", "-s", "-a", "-I", "-q", "-p", "-f", "-u0", "-d0", "-t0", "-T100000"]


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


def qdisc_event(e: Event, slave: str, *, add: bool) -> bool:
    """teql0 attached to (add) or deleted from (not add) ``slave``."""
    return e.ev == "qdisc" and e.get("if") == slave and e.get("kind") == "teql0" and e.get("add") is add


class Contender:
    name = ""
    label = ""
    family = "teql"  #: teql, bond or team: what the stream is routed through
    #: False for bare TEQL: nothing takes a line out (reaction latency n/a).
    reacts = True
    #: True if it can tell a dead line whose carrier stays up.
    detects_dead = False
    #: False if the kernel does all the work (no process to measure).
    userspace = False
    #: True if the kernel itself takes the line out, in the carrier event's
    #: own path (the team driver with the ethtool watch): nothing to wait for.
    in_kernel = False

    def __init__(self) -> None:
        self.lines: Lines | None = None

    def available(self) -> str | None:
        """None if it can run in this guest, else why not."""
        return None

    @property
    def master(self) -> str:
        return {"teql": "teql0", "bond": "bond0", "team": "team0"}[self.family]

    def setup(self, lines: Lines) -> None:
        self.lines = lines

    def ready(self) -> bool:
        """Every line carries traffic."""
        raise NotImplementedError

    def wait_ready(self, timeout: float = 20.0) -> None:
        if not _wait(self.ready, timeout):
            raise RuntimeError(f"{self.name}: lines not all in use after {timeout:g}s; {self.diagnose()}")

    def diagnose(self) -> str:
        """What to show when it is not ready."""
        return f"attached to teql0: {sorted(attached())}"

    def teardown(self) -> None:
        self.lines = None

    def takes_out(self, e: Event, slave: str) -> bool:
        return False

    def puts_back(self, e: Event, slave: str) -> bool:
        return False

    def pids(self) -> list[int]:
        """Its user-space processes (empty: the kernel does all the work)."""
        return []

    def description(self) -> str:
        return self.label


# -- TEQL -------------------------------------------------------------------------


class Teql(Contender):
    name = "teql"
    label = "TEQL alone"
    reacts = False

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        lines.neighbours(lines.slaves)
        self._by_hand(lines)

    @staticmethod
    def _by_hand(lines: Lines) -> None:
        batch([["qdisc", "replace", "dev", s, "root", "teql0"] for s in lines.slaves], tool="tc")
        batch([["addr", "add", LOCAL_PREFIX, "dev", "teql0", "noprefixroute"], ["link", "set", "teql0", "up"],
               ["route", "replace", "default", "dev", "teql0"]])

    def ready(self) -> bool:
        assert self.lines is not None
        return attached() >= set(self.lines.slaves)

    def takes_out(self, e: Event, slave: str) -> bool:
        return qdisc_event(e, slave, add=False)

    def puts_back(self, e: Event, slave: str) -> bool:
        return qdisc_event(e, slave, add=True)


class TeqlIfplugd(Teql):
    name = "teql-ifplugd"
    label = "TEQL + ifplugd (100 ms poll)"
    reacts = True
    userspace = True

    def __init__(self) -> None:
        super().__init__()
        self.procs: list[subprocess.Popen[bytes]] = []

    def available(self) -> str | None:
        return None if shutil.which("ifplugd") else "ifplugd not installed (Debian package ifplugd)"

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        WORK.mkdir(parents=True, exist_ok=True)
        script = WORK / "ifplugd.action"
        script.write_text(IFPLUGD_SCRIPT)
        script.chmod(0o755)
        self.procs = [subprocess.Popen(["ifplugd", *IFPLUGD_ARGS, "-i", s, "-r", str(script)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                      for s in lines.slaves]

    def ready(self) -> bool:
        assert self.lines is not None
        return super().ready() and all(p.poll() is None for p in self.procs)

    def teardown(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []
        super().teardown()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


BARE_LOOP = """
import asyncio, sys
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK
async def main():
    slaves = set(sys.argv[1:])
    async with AsyncIPRoute() as events, AsyncIPRoute() as requests:
        await events.bind(groups=RTMGRP_LINK)
        print("ready", flush=True)
        while True:
            async for msg in events.get():
                if msg["event"] == "RTM_NEWLINK" and msg.get_attr("IFLA_IFNAME") in slaves:
                    up = msg.get_attr("IFLA_CARRIER") == 1
                    try:
                        await requests.tc("add" if up else "del", "teql0", msg["index"], 0)
                    except Exception:
                        pass  # already so
asyncio.run(main())
"""


class BareLoop(Teql):
    """The floor for a Python daemon: asyncio + pyroute2 and nothing else.
    It listens for RTM_NEWLINK, deletes a slave's teql0 on carrier loss and
    adds it again when the carrier returns (else the latency suite could
    not cut the line again); no config, state, logging or checks."""

    name = "bare-pyroute2"
    label = "TEQL + a bare asyncio/pyroute2 loop (delete teql0 on carrier loss)"
    reacts = True
    userspace = True

    def __init__(self) -> None:
        super().__init__()
        self.proc: subprocess.Popen[str] | None = None

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        self.proc = subprocess.Popen([sys.executable, "-c", BARE_LOOP, *lines.slaves], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bare loop did not start")

    def ready(self) -> bool:
        return super().ready() and self.proc is not None and self.proc.poll() is None

    def teardown(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None
        super().teardown()

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None else []


# -- wanbalanced ----------------------------------------------------------------------


class Wb(Contender):
    name = "wb-carrier"
    label = "TEQL + wanbalanced, carrier only"
    probes = False
    userspace = True
    probe_settings = 'timeout = "100ms"\ndown_after = 3\nup_after = 3\n'

    def __init__(self, *, damping: bool = True) -> None:
        super().__init__()
        self.damping = damping
        self.daemon: Wanbalanced | None = None

    def config(self, slaves: list[str]) -> str:
        listed = ", ".join(f'"{s}"' for s in slaves)
        text = ('[daemon]\nmetrics_listen = ""\ncontrol_socket = ""\nlog_level = "info"\n'
                f'[equalizers.teql0]\nslaves = [{listed}]\naddress = "{LOCAL_PREFIX}"\n')
        for s in slaves:
            if self.probes:
                text += (f'[slaves.{s}.probe]\ntargets = ["192.0.2.1", "192.0.2.2"]\ninterval = "100ms"\n'
                         + self.probe_settings)
            if not self.damping:
                text += f"[slaves.{s}.damping]\nenabled = false\n"
        return text

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        lines.neighbours(lines.slaves)
        workdir = WORK / self.name
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.daemon = Wanbalanced(workdir, self.config(lines.slaves), log_level="info")
        self.daemon.start(wait_converged=True, timeout=60)

    def ready(self) -> bool:
        assert self.lines is not None
        return attached() >= set(self.lines.slaves)

    def teardown(self) -> None:
        if self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None:
            self.daemon.stop(signal.SIGTERM, timeout=10)
        self.daemon = None
        super().teardown()

    def takes_out(self, e: Event, slave: str) -> bool:
        return qdisc_event(e, slave, add=False)

    def puts_back(self, e: Event, slave: str) -> bool:
        return qdisc_event(e, slave, add=True)

    def pids(self) -> list[int]:
        return [self.daemon.proc.pid] if self.daemon is not None and self.daemon.proc is not None else []

    def log(self) -> str:
        return self.daemon.log() if self.daemon is not None else ""

    def diagnose(self) -> str:
        alive = self.daemon is not None and self.daemon.proc is not None and self.daemon.proc.poll() is None
        tail = " | ".join(self.log().strip().splitlines()[-12:])
        return f"{super().diagnose()}; daemon {'running' if alive else 'exited'}; log: {tail}"


class WbProbes(Wb):
    name = "wb-probes"
    label = "TEQL + wanbalanced, probes every 100 ms"
    probes = True
    detects_dead = True


class WbProbesFast(WbProbes):
    """The same probes judged sooner (timeout 50 ms, two rounds to fail or
    recover), to show what the settings buy."""

    name = "wb-probes-fast"
    label = "TEQL + wanbalanced, probes every 100 ms, timeout 50 ms, 2 rounds"
    probe_settings = 'timeout = "50ms"\ndown_after = 2\nup_after = 2\n'


# -- bonding ----------------------------------------------------------------------------


class Bond(Contender):
    name = "bond-miimon"
    label = "bonding balance-rr, miimon=100"
    family = "bond"
    options = ["miimon", "100"]

    def available(self) -> str | None:
        return None if os.path.isdir("/sys/module/bonding") else "bonding module not loaded"

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        cmds = [["link", "add", "bond0", "type", "bond", "mode", "balance-rr", *self.options]]
        cmds += [["link", "set", s, "down"] for s in lines.slaves]
        cmds += [["link", "set", s, "master", "bond0"] for s in lines.slaves]
        cmds += [["link", "set", "bond0", "up"], ["addr", "add", LOCAL_PREFIX, "dev", "bond0", "noprefixroute"],
                 ["route", "replace", "default", "dev", "bond0"]]
        batch(cmds)
        lines.neighbours(["bond0"])

    def ready(self) -> bool:
        assert self.lines is not None
        try:
            return all(Path(f"/sys/class/net/{s}/bonding_slave/mii_status").read_text().strip() == "up"
                       for s in self.lines.slaves)
        except OSError:
            return False

    def teardown(self) -> None:
        batch([["link", "del", "bond0"]], check=False)
        super().teardown()

    # 2 is BOND_LINK_DOWN: the bond no longer sends on it; 0 is BOND_LINK_UP.
    def takes_out(self, e: Event, slave: str) -> bool:
        return e.ev == "bond" and e.get("if") == slave and e.get("mii") == 2

    def puts_back(self, e: Event, slave: str) -> bool:
        return e.ev == "bond" and e.get("if") == slave and e.get("mii") == 0


class BondArp(Bond):
    name = "bond-arp"
    label = "bonding balance-rr, arp_interval=100"
    options = ["arp_interval", "100", "arp_ip_target", "192.0.2.1"]
    detects_dead = True


# -- team ---------------------------------------------------------------------------------


class Team(Contender):
    name = "team-ethtool"
    label = "team roundrobin (teamd), ethtool watch"
    family = "team"
    in_kernel = True
    userspace = True
    watch: dict[str, object] = {"name": "ethtool"}

    def available(self) -> str | None:
        if not shutil.which("teamd"):
            return "teamd not installed (Debian package libteam-utils)"
        if not os.path.isdir("/sys/module/team_mode_roundrobin"):
            return "team modules not loaded"
        return None

    def setup(self, lines: Lines) -> None:
        super().setup(lines)
        # teamd wants /run/teamd for its pid file and control socket; it
        # needs no D-Bus (off unless -D).
        os.makedirs("/run/teamd", exist_ok=True)
        batch([["link", "set", s, "down"] for s in lines.slaves])
        config = {"device": "team0", "runner": {"name": "roundrobin"}, "link_watch": self.watch,
                  "ports": {s: {} for s in lines.slaves}}
        proc = subprocess.run(["teamd", "-d", "-r", "-c", json.dumps(config)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"teamd failed ({proc.returncode}): {proc.stderr.strip()}")
        batch([["link", "set", "team0", "up"], ["addr", "add", LOCAL_PREFIX, "dev", "team0", "noprefixroute"],
               ["route", "replace", "default", "dev", "team0"]])
        lines.neighbours(["team0"])

    def ready(self) -> bool:
        assert self.lines is not None
        proc = subprocess.run(["teamdctl", "team0", "state", "dump"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return False
        ports = json.loads(proc.stdout).get("ports", {})
        return all(ports.get(s, {}).get("link", {}).get("up") is True for s in self.lines.slaves)

    def teardown(self) -> None:
        subprocess.run(["teamd", "-k", "-t", "team0"], capture_output=True, check=False)
        _wait(lambda: not os.path.exists("/sys/class/net/team0"), 5)
        batch([["link", "del", "team0"]], check=False)
        super().teardown()

    def _index(self, slave: str) -> int:
        assert self.lines is not None
        return self.lines.ifindex(slave)

    def takes_out(self, e: Event, slave: str) -> bool:
        return e.ev == "team_port" and e.get("index") == self._index(slave) and e.get("linkup") is False

    def puts_back(self, e: Event, slave: str) -> bool:
        return e.ev == "team_port" and e.get("index") == self._index(slave) and e.get("linkup") is True

    def pids(self) -> list[int]:
        return pids_of("teamd")


class TeamArp(Team):
    name = "team-arp"
    label = "team roundrobin (teamd), arp_ping every 100 ms"
    in_kernel = False
    watch = {"name": "arp_ping", "interval": 100, "missed_max": 3,
             "source_host": "10.0.0.0", "target_host": "192.0.2.1"}
    detects_dead = True

    # With a periodic watch teamd owns the port's link (user_linkup_enabled):
    # clearing user_linkup is what stops the driver sending on it.
    def takes_out(self, e: Event, slave: str) -> bool:
        return (e.ev == "team" and e.get("opt") == "user_linkup" and e.get("index") == self._index(slave)
                and e.get("on") is False)

    def puts_back(self, e: Event, slave: str) -> bool:
        return (e.ev == "team" and e.get("opt") == "user_linkup" and e.get("index") == self._index(slave)
                and e.get("on") is True)


ALL: list[type[Contender]] = [Teql, TeqlIfplugd, BareLoop, Bond, BondArp, Team, TeamArp, Wb, WbProbes, WbProbesFast]
#: What a run measures unless WB_BENCH_CONTENDERS says otherwise.
DEFAULT = [c.name for c in ALL]


def by_name(names: list[str] | None = None) -> list[Contender]:
    chosen = [cls() for cls in ALL]
    if names:
        known = {c.name for c in chosen}
        unknown = set(names) - known
        if unknown:
            raise ValueError(f"unknown contenders {sorted(unknown)}; known: {sorted(known)}")
        chosen = [c for c in chosen if c.name in names]
    return chosen
