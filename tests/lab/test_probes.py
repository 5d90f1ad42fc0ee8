"""Health probes and flap damping on the real kernel.

Router B's netem makes a line dead or lossy while its carrier stays up: only
ICMP probes through the slave can tell. Timings are printed (run with -s) and
the 600 ms bound is the issue's requirement for interval 100ms, down_after 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from pyroute2 import IPRoute

from wanbalanced.config import DEFAULT_CONTROL_SOCKET
from wanbalanced.status import query

from lab.daemon import CONFIG_2, REPO, Wanbalanced
from lab.topo import FAR_ADDR, FAR_ADDR2, LOCAL_ADDR, NS, Lab

TC_H_ROOT = 0xFFFFFFFF


def probe_config(*targets: str, extra: str = "") -> str:
    listed = ", ".join(f'"{t}"' for t in targets)
    text = CONFIG_2
    for slave in ("wan0", "wan1"):
        text += f"""
[slaves.{slave}.probe]
targets = [{listed}]
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3
{extra.format(slave=slave)}"""
    return text


def root_kind(ipr: IPRoute, index: int) -> str | None:
    for q in ipr.get_qdiscs(index=index):
        if q["parent"] == TC_H_ROOT:
            return str(q.get_attr("TCA_KIND"))
    return None


def time_until(ifname: str, attached: bool, start: float, wb: Wanbalanced, limit: float = 5.0) -> float:
    """Seconds from `start` until IFNAME's root qdisc is (not) teql0, polled
    over netlink every 2 ms (an `ip`/`tc` process costs 30-70 ms here)."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        while True:
            if (root_kind(ipr, index) == "teql0") == attached:
                return time.monotonic() - start
            if time.monotonic() - start > limit:
                raise AssertionError(f"{ifname} not {'attached' if attached else 'detached'} after {limit}s:\n"
                                     + wb.log())
            time.sleep(0.002)


def status(wb: Wanbalanced) -> dict[str, dict[str, object]]:
    # Straight from the control socket, as `wanbalanced status --json` gets
    # it, without the seconds a CLI start can take in the guest (the state
    # asked about may last only 3 s).
    data = query(DEFAULT_CONTROL_SOCKET)
    return {s["slave"]: s for s in data["slaves"]}


def test_dead_line_with_carrier_up_is_detached_within_600ms(lab: Lab, wb: Wanbalanced) -> None:
    # Three failures in a few seconds are flapping, and damping would hold the
    # line down on the third: this test is about detection, so damping is off.
    wb.write_config(probe_config(FAR_ADDR, extra="[slaves.{slave}.damping]\nenabled = false\n"))
    wb.start()
    lab.wait_until(lambda: lab.attached("wan0") and lab.attached("wan1"), 5, what="both proven and attached")
    mark = len(wb.log())
    detach, reattach = [], []
    for _ in range(3):
        lab.netem(0, 100)  # B drops everything it sends on line 0: replies, ARP
        start = time.monotonic()
        detach.append(time_until("wan0", attached=False, start=start, wb=wb))
        assert lab.link("wan0") is not None and "LOWER_UP" in lab.link("wan0")["flags"], "carrier stayed up"
        assert lab.attached("wan1")
        assert lab.ping(10, interval=0.02) == 10, "traffic flows over the live line only"
        lab.netem_clear(0)
        start = time.monotonic()
        reattach.append(time_until("wan0", attached=True, start=start, wb=wb))
    print(f"\ndetach after netem 100%: {[f'{t * 1000:.0f} ms' for t in detach]}; "
          f"re-slave after clearing: {[f'{t * 1000:.0f} ms' for t in reattach]}")
    assert max(detach) < 0.6, f"detach took {max(detach):.3f}s"
    log = wb.log()[mark:]
    assert log.count("up -> failed (3 failed probe rounds in a row") == 3
    assert log.count("failed -> up (3 good probe rounds in a row)") == 3
    assert "wan1" not in log, f"the other slave was touched:\n{log}"
    st = status(wb)
    assert st["wan0"]["detaches"] == 3 and st["wan1"]["detaches"] == 0


def test_five_percent_loss_on_healthy_lines_causes_no_detach(lab: Lab, wb: Wanbalanced) -> None:
    seconds = float(os.environ.get("WB_LOSS_SECONDS", "60"))
    wb.write_config(probe_config(FAR_ADDR, FAR_ADDR2))
    wb.start()
    lab.wait_until(lambda: lab.attached("wan0") and lab.attached("wan1"), 5)
    mark = len(wb.log())
    lab.netem(0, 5)
    lab.netem(1, 5)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert lab.attached("wan0") and lab.attached("wan1"), wb.log()[mark:]
        time.sleep(1)
    lab.netem_clear(0)
    lab.netem_clear(1)
    st = status(wb)
    assert st["wan0"]["detaches"] == 0 and st["wan1"]["detaches"] == 0
    assert "failed" not in wb.log()[mark:]
    probes = json.loads(wb.run("status", "--json").stdout)["probes"]
    sent = sum(p["sent"] for p in probes)
    lost = sum(p["lost"] for p in probes)
    print(f"\n{seconds:g}s at 5% loss: {sent} echoes, {lost} lost ({lost / sent:.1%}), no detach")
    assert sent >= 4 * seconds * 10 * 0.9, "four probe streams at 10 rounds per second"
    assert lost > 0, "the loss was applied"


def test_flapping_line_is_held_down_then_returns(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(CONFIG_2 + """
[slaves.wan0.damping]
half_life = "4s"
max_suppress = "20s"
""")
    wb.start()
    mark = len(wb.log())
    # Three flaps reach the suppress level (2500) only if each takes under
    # 0.8 s with this half-life; in a slow guest a flap takes longer, so flap
    # until held (at 2.9 s a flap the penalty still gets there).
    wb.flap_until_held_down(lab, 0, max_flaps=10)
    line = wb.wait_log(r"WARNING wan0: down -> held_down \(flapping: penalty \d+ reached 2500; held down for \d+s\)")
    held = status(wb)["wan0"]
    assert held["state"] == "held_down" and held["held_down_until"] > time.time()
    time.sleep(1.0)
    assert "LOWER_UP" in lab.link("wan0")["flags"] and not lab.attached("wan0"), "held out despite carrier"
    took = lab.wait_until(lambda: lab.attached("wan0"), 30, what="re-slaved once the penalty decayed")
    wb.wait_log(r"wan0: held_down -> down \(flap penalty decayed below 800\)")
    print(f"\n{line.group(0)}; re-slaved {took + 1.0:.1f}s later")
    assert "wan1" not in wb.log()[mark:]
    assert lab.attached("wan1")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_counts(wb: Wanbalanced) -> dict[tuple[str, str], tuple[int, int]]:
    probes = json.loads(wb.run("status", "--json").stdout)["probes"]
    return {(p["slave"], p["target"]): (p["sent"], p["lost"]) for p in probes}


def test_flood_of_foreign_echo_replies_does_not_fail_an_alive_line(lab: Lab, wb: Wanbalanced) -> None:
    # Router B bursts foreign echo replies (identifiers not the daemon's) over
    # line 0 just before each round is sent, so the true replies queue behind
    # them. The socket's BPF filter drops them in the kernel: no round is lost
    # and the daemon spends no more CPU than when idle.
    seconds = float(os.environ.get("WB_FLOOD_SECONDS", "10"))
    burst = int(os.environ.get("WB_FLOOD_BURST", "250"))
    wb.write_config(probe_config(FAR_ADDR, extra="[slaves.{slave}.damping]\nenabled = false\n"))
    wb.start()
    lab.wait_until(lambda: lab.attached("wan0") and lab.attached("wan1"), 5, what="both proven and attached")
    assert wb.proc is not None
    pid = wb.proc.pid
    start = cpu_seconds(pid)
    time.sleep(seconds)
    idle = cpu_seconds(pid) - start
    mark, before = len(wb.log()), probe_counts(wb)
    start = cpu_seconds(pid)
    flood = subprocess.run(
        ["ip", "netns", "exec", NS, sys.executable, "-m", "lab.flood", "--dev", lab.far(0), "--src", FAR_ADDR,
         "--dst", LOCAL_ADDR, "--interval", "0.1", "--burst", str(burst), "--seconds", str(seconds)],
        cwd=REPO, capture_output=True, text=True, timeout=seconds + 30, check=True)
    flooded = cpu_seconds(pid) - start
    after = probe_counts(wb)
    sent = int(flood.stdout)
    rounds = after["wan0", FAR_ADDR][0] - before["wan0", FAR_ADDR][0]
    lost = after["wan0", FAR_ADDR][1] - before["wan0", FAR_ADDR][1]
    print(f"\nflood: {sent} foreign echo replies in {seconds:g}s ({sent / (seconds * 10):.0f} per round); "
          f"wan0: {rounds} rounds, {lost} lost; daemon CPU {idle * 1000:.0f} ms idle, "
          f"{flooded * 1000:.0f} ms flooded, {(flooded - idle) / max(sent, 1) * 1e6:.1f} us per foreign reply")
    assert sent >= 200 * seconds * 10 * 0.9, "200+ foreign replies per round"
    assert rounds >= seconds * 10 * 0.9
    assert lost == 0, wb.log()[mark:]
    # Unfiltered, each foreign reply cost the daemon about 40 us here (a wake-up,
    # a recv, a parse and a checksum): 1 s of CPU for the 10 s flood.
    assert flooded - idle < sent * 5e-6, f"{flooded - idle:.2f}s of CPU for {sent} foreign replies"
    log = wb.log()[mark:]
    assert "failed" not in log, log
    assert status(wb)["wan0"]["detaches"] == 0
