"""Packet loss through the bundle during a failure (guest side).

Each trial builds two lines afresh, sets the contender up on them, and sends a
paced UDP stream (``bench.traffic``) from router A to ``192.0.2.1`` through the
bundle's default route; router B counts the sequence numbers. Faults hit line
1 at fixed offsets on the stream's timeline, the same for every contender, and
every datagram of the stream counts: the window is the whole stream.

Scenarios:

``carrier``
    B's far end of line 1 goes down (A's ``wan1`` loses its carrier) for 1 s.
``dead``
    line 1 dead with its carrier up for 1 s: netem 100 % loss on B's side,
    both directions.
``flap``
    line 1 dead (carrier up) for 0.5 s, then alive for 0.5 s, five times.
``flap-carrier`` (not run by default)
    the same rhythm with the carrier going down and up.

Each stream starts 0.5 s before the first fault (so a broken setup shows as
loss before it) and ends 1 s after the last.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from lab.topo import FAR_ADDR, NS

from .contenders import Contender
from .lines import Lines

LINE = 1  #: the line that fails
LEAD = 0.1  #: seconds between telling the (started) sender and its first datagram


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    duration: float  #: seconds of stream
    faults: tuple[tuple[float, str], ...]  #: (offset in seconds, "down" | "up" | "kill" | "revive")


def _flap(down: str, up: str) -> tuple[tuple[float, str], ...]:
    out: list[tuple[float, str]] = []
    for k in range(5):
        out += [(0.5 + k, down), (1.0 + k, up)]
    return tuple(out)


SCENARIOS = {s.name: s for s in (
    Scenario("carrier", "carrier lost for 1 s", 2.5, ((0.5, "down"), (1.5, "up"))),
    Scenario("dead", "line dead, carrier up, for 1 s", 2.5, ((0.5, "kill"), (1.5, "revive"))),
    Scenario("flap", "dead 0.5 s / alive 0.5 s, 5 times (carrier up)", 5.5, _flap("kill", "revive")),
    Scenario("flap-carrier", "carrier down 0.5 s / up 0.5 s, 5 times", 5.5, _flap("down", "up")),
)}
DEFAULT_SCENARIOS = ("carrier", "dead", "flap")


def _inject(lines: Lines, action: str, sender: int) -> float:
    """Apply one fault to line LINE; returns how long the sender was held (s).

    A carrier loss holds the sender (SIGSTOP) until the kernel has processed
    it (the slave's operstate changes when linkwatch has run, a few ms later):
    in that window sch_teql would hand veth the datagrams for the line that
    just lost its peer, and veth's NET_XMIT_DROP makes sch_teql reuse a freed
    skb on the next slave, a use-after-free that crashes this guest kernel
    sooner or later (docs/benchmarks.md, "TEQL over veth"). The datagrams due
    meanwhile leave late, not lost, for every contender alike."""
    if action != "down":
        {"up": lines.carrier_up, "kill": lines.kill, "revive": lines.revive}[action](LINE)
        return 0.0
    os.kill(sender, signal.SIGSTOP)
    held = time.monotonic()
    try:
        lines.carrier_down(LINE)
        deadline = held + 0.5
        while lines.operstate(f"wan{LINE}") == "up" and time.monotonic() < deadline:
            time.sleep(0.0005)
    finally:
        os.kill(sender, signal.SIGCONT)
    return time.monotonic() - held


def trial(c: Contender, lines: Lines, s: Scenario, rate: float, number: int) -> dict[str, Any]:
    lines.setup(2, up=c.family == "teql", dead_faults=True, teql=c.family == "teql")
    c.setup(lines)
    procs: list[subprocess.Popen[str]] = []
    try:
        c.wait_ready()
        time.sleep(0.3)
        count = int(s.duration * rate)
        far = lines.far_ifindexes()
        receiver = subprocess.Popen(
            ["ip", "netns", "exec", NS, sys.executable, "-m", "bench.traffic", "receive", "--count", str(count),
             "--trial", str(number)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        sender = subprocess.Popen(
            [sys.executable, "-m", "bench.traffic", "send", "--dst", FAR_ADDR, "--rate", str(rate),
             "--count", str(count), "--trial", str(number)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs = [receiver, sender]
        for proc, what in ((receiver, "receiver"), (sender, "sender")):
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {what} did not start")
        start = time.monotonic() + LEAD
        for proc, instant in ((receiver, start + s.duration + 0.3), (sender, start)):
            assert proc.stdin is not None
            proc.stdin.write(f"{instant:.6f}\n")
            proc.stdin.flush()  # communicate() closes it
        faults: list[dict[str, Any]] = []
        for offset, action in s.faults:
            left = start + offset - time.monotonic()
            if left > 0:
                time.sleep(left)
            t0 = time.monotonic()
            held = _inject(lines, action, sender.pid)
            faults.append({"action": action, "at_ms": (t0 - start) * 1e3,
                           "took_ms": (time.monotonic() - t0) * 1e3, "sender_held_ms": held * 1e3})
        sent = json.loads(sender.communicate(timeout=s.duration + 30)[0])
        got = json.loads(receiver.communicate(timeout=s.duration + 30)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        c.teardown()
        lines.teardown()
    missing: list[list[int]] = got["missing"]
    lost = count - int(got["received"])
    first_fault = int(s.faults[0][0] * rate)  # the first datagram due at or after the first fault
    timeline = [0] * math.ceil(s.duration * 10)  # lost datagrams per 100 ms of the stream
    for a, b in missing:
        for k in range(a, b + 1):
            timeline[min(int(k / rate * 10), len(timeline) - 1)] += 1
    lost_ms = [(k / rate - s.faults[0][0]) * 1e3 for a, b in missing for k in (a, b)]
    return {
        "trial": number, "sent": count, "lost": lost,
        "lost_before_fault": sum(max(0, min(b, first_fault - 1) - a + 1) for a, b in missing),
        "first_lost_ms": min(lost_ms) if lost_ms else None, "last_lost_ms": max(lost_ms) if lost_ms else None,
        "lost_per_100ms": timeline,
        "send_errors": sent["errors"], "late_max_ms": sent["late_max_ms"], "duplicates": got["duplicates"],
        "per_line": {far.get(int(k), k): v for k, v in got["per_ifindex"].items()},
        "faults": faults,
    }
