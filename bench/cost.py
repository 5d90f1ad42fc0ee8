"""What running a contender costs (guest side).

* **idle**: CPU and resident memory of the contender's user-space processes
  on converged, quiet lines, at 2 and 64 slaves: CPU over consecutive windows
  (median and spread), RSS at the end.
* **startup**: time from launching ``wanbalanced run`` to its ``READY=1``
  (sd_notify, on a socket of ours), from a kernel where nothing is set up
  (``cold``: it attaches every slave first) and from a converged one
  (``warm``: a restart).
* **storm**: the carrier events per second wanbalanced absorbs before its
  reaction latency degrades. Lines 2..N-1 flap (B's far ends toggled by a paced
  generator inside ``rb``) while lines 0 and 1 are cut and restored as in the
  latency suite; per storm rate: the reaction latencies, the daemon's CPU, and
  whether it lost events (a resync) or fell behind.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from lab.daemon import WANBALANCED
from lab.topo import NS, batch

from .contenders import BARE_LOOP, WORK, Contender, Wb, by_name
from .events import Observer, reaction
from .lines import Lines
from .stats import summary

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (and their reaped children), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state is fields[0]; utime, stime, cutime, cstime are 14..17 of stat
        total += sum(int(x) for x in fields[11:15])
    return total / TICK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def _spin(counter: Any) -> None:
    """Count forever at the lowest priority: the CPU nobody else wants."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    n = 0
    while True:
        for _ in range(2000):
            n += 1
        counter.value = n


class Spinner:
    """A SCHED_IDLE busy loop; its rate says how much CPU the rest left it."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.counter = ctx.RawValue("Q", 0)
        self.proc = ctx.Process(target=_spin, args=(self.counter,), daemon=True)
        self.proc.start()

    def rate(self, seconds: float) -> float:
        before, t0 = int(self.counter.value), time.monotonic()
        time.sleep(seconds)
        return (int(self.counter.value) - before) / (time.monotonic() - t0)

    def close(self) -> None:
        self.proc.kill()
        self.proc.join(5)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def idle_one(c: Contender, lines: Lines, n: int, seconds: float, window: float = 1.0) -> dict[str, Any]:
    """CPU and RSS of ``c`` on ``n`` quiet lines.

    The CPU share is measured with a SCHED_IDLE spinner, in pairs of windows:
    one with the contender's processes stopped (SIGSTOP), one with them
    running; the share is 1 - (spinner rate while running) / (rate while
    stopped). This counts the kernel work the contender causes too, and does
    not depend on the guest's CPU accounting, which samples 10 ms ticks and
    misses a process whose timers always fire just after a tick. The tick
    accounting (utime + stime) is recorded beside it."""
    lines.setup(n, up=c.family == "teql", teql=c.family == "teql")
    c.setup(lines)
    spinner: Spinner | None = None
    try:
        c.wait_ready()
        time.sleep(1.0)
        pids = c.pids()
        spinner = Spinner()
        shares: list[float] = []
        ticks_before, t0 = cpu_seconds(pids), time.monotonic()
        stopped_s = 0.0
        for _ in range(max(1, int(seconds / (2 * window)))):
            _signal(pids, signal.SIGSTOP)
            try:
                idle_rate = spinner.rate(window)
            finally:
                _signal(pids, signal.SIGCONT)
            stopped_s += window
            busy_rate = spinner.rate(window)
            shares.append(100.0 * max(0.0, 1.0 - busy_rate / idle_rate) if idle_rate else math.nan)
        running_s = time.monotonic() - t0 - stopped_s
        ticks = 100.0 * (cpu_seconds(pids) - ticks_before) / running_s
        return {"processes": len(pids), "window_s": window, "cpu_pct_windows": shares,
                "cpu_pct": summary(shares), "cpu_pct_ticks": ticks, "rss_kib": rss_kib(pids)}
    finally:
        if spinner is not None:
            spinner.close()
        c.teardown()
        lines.teardown()


# -- startup ---------------------------------------------------------------------------


def _unconfigure(slaves: list[str]) -> None:
    """Undo what the daemon set up: a kernel it must converge from scratch."""
    batch([["qdisc", "del", "dev", s, "root"] for s in slaves], tool="tc", check=False)
    batch([["route", "flush", "dev", "teql0"], ["addr", "flush", "dev", "teql0"], ["link", "set", "teql0", "down"]],
          check=False)


def _time_to_ready(config: str, timeout: float = 60.0, *, then: Callable[[], None] | None = None) -> float:
    """Seconds from launching the daemon to its READY=1; `then` runs while it is still up."""
    sock_path = str(WORK / "notify.sock")
    if os.path.exists(sock_path):
        os.unlink(sock_path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(timeout)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path)
    log = open(WORK / "startup.log", "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(WANBALANCED), "run", "--config", config], env=env, stdout=log, stderr=log)
    log.close()
    try:
        while True:
            data = sock.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                took = time.monotonic() - t0
                if then is not None:
                    then()
                return took
    finally:
        proc.terminate()
        proc.wait(10)
        sock.close()


def _bare_loop_seconds(slaves: list[str]) -> float:
    """Seconds from launching the bare asyncio + pyroute2 loop (the reaction's
    reference) to its "ready", once subscribed: the floor of a Python daemon's start."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BARE_LOOP, *slaves], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bare loop did not start")
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(10)


def _command_seconds(argv: list[str], runs: int) -> list[float]:
    """Wall time of `argv`, `runs` times (its exit status is not judged: `status` of a
    daemon that is starting exits 4)."""
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=60)
        times.append(time.monotonic() - t0)
    return times


def _operated(config: str) -> str:
    """`config` as an operator runs it: the metrics endpoint and the control socket on."""
    return (config.replace('metrics_listen = ""', 'metrics_listen = "127.0.0.1:9783"')
            .replace('control_socket = ""', f'control_socket = "{WORK / "control.sock"}"'))


def startup_one(variant: str, lines: Lines, n: int, runs: int) -> dict[str, Any]:
    """Seconds from launch to READY=1, ``runs`` times cold and warm."""
    c = by_name([variant])[0]
    assert isinstance(c, Wb)
    lines.setup(n)
    lines.neighbours(lines.slaves)
    WORK.mkdir(parents=True, exist_ok=True)
    config = WORK / "startup.toml"
    config.write_text(c.config(lines.slaves))
    operated = WORK / "startup-operated.toml"
    operated.write_text(_operated(c.config(lines.slaves)))
    cold: list[float] = []
    warm: list[float] = []
    with_endpoint: list[float] = []
    bare: list[float] = []
    cli: dict[str, list[float]] = {}

    def commands() -> None:
        # Beside the running daemon; a bare interpreter is the reference.
        cli["python"] = _command_seconds([sys.executable, "-c", "pass"], 2 * runs + 1)
        cli["status"] = _command_seconds([str(WANBALANCED), "status", "--config", str(operated)], 2 * runs + 1)
        cli["check-config"] = _command_seconds([str(WANBALANCED), "check-config", "--config", str(operated)],
                                               2 * runs + 1)
    try:
        for i in range(runs):
            _unconfigure(lines.slaves)
            cold.append(_time_to_ready(str(config)))
            warm.append(_time_to_ready(str(config)))
            with_endpoint.append(_time_to_ready(str(operated), then=commands if i == 0 else None))
            bare.append(_bare_loop_seconds(lines.slaves))
    finally:
        lines.teardown()
    return {"cold_s": cold, "warm_s": warm, "cold": summary(cold), "warm": summary(warm),
            "warm_operated_s": with_endpoint, "warm_operated": summary(with_endpoint),
            "bare_loop_s": bare, "bare_loop": summary(bare),
            "cli_s": cli, "cli": {name: summary(v) for name, v in cli.items()}}


# -- event storm ----------------------------------------------------------------------


STORM = """
import sys, time
from pyroute2 import IPRoute
rate, seconds, first, last = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with IPRoute() as ipr:
    index = [ipr.link_lookup(ifname=f"wan{i}p")[0] for i in range(first, last + 1)]
    up = [True] * len(index)
    print("ready", flush=True)
    start = time.monotonic()
    k = 0
    while True:
        due = start + k / rate
        now = time.monotonic()
        if due - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        j = k % len(index)
        up[j] = not up[j]
        ipr.link("set", index=index[j], state="up" if up[j] else "down")
        k += 1
    took = time.monotonic() - start
    for j in range(len(index)):
        if not up[j]:
            ipr.link("set", index=index[j], state="up")
print(k, took, flush=True)
"""


def storm(obs: Observer, lines: Lines, rates: list[float], n: int, seconds: float,
          rng: random.Random, log: Any = print) -> dict[str, Any]:
    """wanbalanced (carrier only, damping off: every flap is a write) under a
    storm of carrier changes on lines 2..n-1."""
    c = Wb(damping=False)
    lines.setup(n)
    c.setup(lines)
    out: dict[str, Any] = {"slaves": n, "seconds": seconds, "steps": []}
    try:
        c.wait_ready()
        assert c.daemon is not None and c.daemon.proc is not None
        pid = c.daemon.proc.pid
        obs.only(["wan0", "wan1"])
        for rate in rates:
            gen = None
            if rate > 0:
                gen = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", STORM, str(rate),
                                        str(seconds), "2", str(n - 1)], stdout=subprocess.PIPE, text=True)
                assert gen.stdout is not None
                if gen.stdout.readline().strip() != "ready":
                    raise RuntimeError("storm generator did not start")
            cpu0, t0 = cpu_seconds([pid]), time.monotonic()
            out_ms: list[float] = []
            back_ms: list[float] = []
            missed = 0
            k = 0
            while time.monotonic() - t0 < seconds - 0.5:
                i = k % 2
                slave = f"wan{i}"
                k += 1
                taken = reaction(obs, lambda: lines.carrier_down(i), slave, False,
                                 lambda e: c.takes_out(e, slave), 5)
                time.sleep(rng.uniform(0.02, 0.1))
                back = reaction(obs, lambda: lines.carrier_up(i), slave, True,
                                lambda e: c.puts_back(e, slave), 5)
                if taken is not None and back is not None:
                    out_ms.append(taken)
                    back_ms.append(back)
                else:
                    missed += 1
                time.sleep(rng.uniform(0.02, 0.1))
            achieved = 0.0
            if gen is not None:
                count, took = gen.communicate(timeout=seconds + 60)[0].split()
                achieved = int(count) / float(took)
            cpu = 100.0 * (cpu_seconds([pid]) - cpu0) / (time.monotonic() - t0)
            # After the storm: how long until every line is attached again.
            settle0 = time.monotonic()
            settled = None
            while time.monotonic() - settle0 < 30:
                if c.ready():
                    settled = time.monotonic() - settle0
                    break
                time.sleep(0.05)
            step: dict[str, Any] = {"rate": rate, "achieved": achieved, "daemon_cpu_pct": cpu, "out_ms": out_ms,
                    "back_ms": back_ms, "missed": missed, "out": summary(out_ms), "back": summary(back_ms),
                    "settle_s": settled}
            out["steps"].append(step)
            log(f"storm {achieved:6.0f}/s (asked {rate:g}): out p50 {step['out']['p50']:6.1f} "
                f"p90 {step['out']['p90']:6.1f} ms, back p50 {step['back']['p50']:6.1f} ms, CPU {cpu:4.0f}%, "
                f"missed {missed}, settled in {settled}")
            obs.trim()
        daemon_log = c.log()
        out["resyncs"] = daemon_log.count("netlink events lost")
    finally:
        obs.only(None)
        c.teardown()
        lines.teardown()
    return out
