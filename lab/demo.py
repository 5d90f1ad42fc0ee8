"""`make demo`: the daemon reacting to PPP hang-ups and redials, on the real sch_teql.

Runs inside the UML guest (see lab/uml.py). Builds router A and router B with
two real PPP lines (pppd at both ends, lab/ppp.py), starts `wanbalanced run`
with the repository's config.example.toml, then hangs lines up and lets them
redial (pppd deletes the interface and creates it again, the seed's case)
while showing the daemon's log and the kernel's state.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from lab.daemon import REPO, Wanbalanced
from lab.topo import Lab, default_route, ip_json, ping, reset_teql, root_qdisc, set_rp_filter

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def kernel_state(lab: Lab) -> None:
    parts = []
    for s in lab.slaves:
        link = lab.link(s)
        if link is None:
            parts.append(f"{s}: absent")
        else:
            up = "up" if "UP" in link["flags"] else "down (negotiating)"
            parts.append(f"{s}: #{link['ifindex']} {up} mtu {link['mtu']} qdisc {root_qdisc(s)}")
    route = default_route()
    teql = ip_json("link", "show", "dev", "teql0")
    up = "UP" if teql and "UP" in teql[0]["flags"] else "down"
    parts.append(f"teql0 {up} mtu {teql[0]['mtu']}" if teql else "teql0 absent")
    parts.append("default dev teql0" if route else "no default route via teql0")
    print(f"   {DIM}kernel:{RESET} " + " | ".join(parts), flush=True)


def traffic(lab: Lab) -> None:
    # Router B routes replies back over a line once its own pppd is up.
    for i in range(lab.n_slaves):
        if lab.attached(lab.slave(i)):
            lab.wait_line_up(i)
    got = ping(10, interval=0.02)
    print(f"   {DIM}traffic:{RESET} ping through teql0 to router B: {got}/10 replies", flush=True)


class LogTail(threading.Thread):
    """Echo the daemon's log lines as they are written."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.stopped = path, threading.Event()

    def run(self) -> None:
        while not self.path.exists():
            time.sleep(0.02)
        with open(self.path) as f:
            while not self.stopped.is_set():
                line = f.readline()
                if line:
                    print(f"   {DIM}wanbalanced:{RESET} {line.split(' [')[0].rstrip()}", flush=True)
                else:
                    time.sleep(0.02)


# The example's flap damping, with a half-life long enough that wan1's third
# hang-up holds it down however fast or slow the guest runs the story (and a
# max_suppress that lets the penalty get there: see docs/config.md).
DEMO_DAMPING = """
[slaves.wan1.damping]     # the demo: wan1's penalty barely decays while it runs
half_life = "15m"
max_suppress = "60m"
"""


def settle() -> None:
    time.sleep(0.5)


def main() -> int:
    reset_teql(2)
    lab = Lab()
    lab.teardown()
    # The seed's case: point-to-point WAN lines whose interface pppd deletes
    # on a hang-up and creates again on a redial (lab/ppp.py).
    lab.setup(2, kinds="ppp")
    workdir = Path(tempfile.mkdtemp(prefix="wanbalanced-demo-"))
    config = (REPO / "config.example.toml").read_text() + DEMO_DAMPING
    wb = Wanbalanced(workdir, config, log_level="info")
    tail = LogTail(wb.log_path)
    try:
        say("Router A: PPP lines wan0 and wan1 dialled (pppd, far ends in router B), teql0 exists, nothing is set up")
        set_rp_filter("wan1", 1)
        kernel_state(lab)
        say("wanbalanced plan --config config.example.toml  (prints the changes, makes none)")
        print("\n".join(f"   {line}" for line in wb.run("plan").stdout.splitlines()), flush=True)

        say("wanbalanced run: converge on the seed's setup")
        tail.start()
        wb.start()
        lab.wait_until(lambda: lab.attached("wan1"), 5)  # after its up_delay
        settle()
        kernel_state(lab)
        traffic(lab)

        say("Line wan0 hangs up: router B's pppd dies, pppd on A deletes wan0")
        lab.hang_up(0, redial=False)
        lab.wait_until(lambda: not lab.attached("wan0"), 5)
        settle()
        kernel_state(lab)
        traffic(lab)

        say("wan0 redials: pppd creates a new wan0 (new ifindex, no qdisc, the 'default' rp_filter 2)")
        set_rp_filter("default", 2)
        lab.redial(0)
        lab.wait_until(lambda: lab.attached("wan0"), 10)
        settle()
        kernel_state(lab)
        traffic(lab)

        say("wan1 hangs up and pppd redials by itself after its holdoff (1s); up_delay is 2s")
        lab.hang_up(1)
        lab.wait_until(lambda: not lab.attached("wan1"), 5)
        lab.wait_until(lambda: lab.attached("wan1"), 15)
        settle()
        kernel_state(lab)
        traffic(lab)

        say("wan1 redials to a far end that takes smaller packets (mru 1400): teql0's MTU follows it "
            "(and rises again once the small line has been gone for mtu_hold, 60 s)")
        lab.hang_up(1, redial=False)
        lab.wait_until(lambda: not lab.attached("wan1"), 5)
        lab.redial(1, mru=1400)
        lab.wait_until(lambda: lab.attached("wan1"), 15)
        settle()
        kernel_state(lab)
        traffic(lab)

        say("Both lines hang up: the default route via teql0 is withdrawn (a backup route could take over)")
        lab.hang_up(0, redial=False)
        lab.hang_up(1, redial=False)
        lab.wait_until(lambda: default_route() is None, 5)
        settle()
        kernel_state(lab)

        say("Both lines redial: wan0 is back at once; wan1 hung up for the third time in minutes, so flap damping "
            "holds it down until its penalty decays (the log says how long), its carrier up or not")
        lab.redial(0)
        lab.redial(1)
        lab.wait_until(lambda: default_route() is not None and lab.attached("wan0"), 15)
        lab.wait_until(lambda: "LOWER_UP" in (lab.link("wan1") or {}).get("flags", []), 15, what="wan1 redialled")
        time.sleep(3)  # past wan1's up_delay (2 s): not re-slaved all the same
        if lab.attached("wan1"):
            raise AssertionError("wan1 was re-slaved while held down by flap damping")
        kernel_state(lab)
        traffic(lab)

        say("systemctl stop / SIGTERM: the daemon exits, the equalizer keeps working")
        code, took = wb.stop()
        settle()
        print(f"   exit status {code} after {took * 1000:.0f} ms", flush=True)
        kernel_state(lab)
        traffic(lab)
        return 0
    finally:
        tail.stopped.set()
        wb.kill()
        lab.teardown()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
