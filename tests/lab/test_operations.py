"""Operations on the real kernel: status CLI, metrics scrape, SIGHUP reload."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import time

import pytest

from lab.daemon import CONFIG_2, REPO, WANBALANCED, Wanbalanced, scrape
from lab.topo import FAR_ADDR, LOCAL_ADDR, Lab

PROMTOOL = REPO / ".lab/tools/usr/bin/promtool"


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_status_cli_shows_every_slave(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    lab.far_down(1)
    lab.wait_until(lambda: not lab.attached("wan1"), 3)
    # Published once the loop's pass is over, a moment after the kernel changed.
    lab.wait_until(lambda: "teql0: 1/2 slaves attached" in wb.run("status").stdout, 3, what="the detach published")
    out = wb.run("status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:7] == ["EQUALIZER", "SLAVE", "STATE", "CARRIER", "ATTACHED", "SINCE", "DETACHES"]
    assert re.match(r"teql0\s+wan0\s+up\s+yes\s+yes\s+\S+ \S+ \(\d+s ago\)\s+0\s+appeared with carrier", lines[1])
    assert re.match(r"teql0\s+wan1\s+down\s+no\s+no\s+.*\s+1\s+carrier lost", lines[2])
    assert "teql0: 1/2 slaves attached, default route via it" in out.stdout
    data = json.loads(wb.run("status", "--json").stdout)
    assert [(s["slave"], s["state"], s["detaches"]) for s in data["slaves"]] == [("wan0", "up", 0), ("wan1", "down", 1)]
    wb.stop()
    gone = wb.run("status")
    assert gone.returncode == 3 and "is wanbalanced running?" in gone.stderr


def test_metrics_follow_the_kernel_and_pass_promtool(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(CONFIG_2.replace("[daemon]\n", '[daemon]\nstats_interval = "200ms"\n'))
    wb.start()
    assert lab.ping(10, interval=0.02) == 10
    # Link counters come from a periodic link dump: the kernel sends no event.
    lab.wait_until(lambda: (sample(scrape(), "wanbalanced_slave_transmit_packets_total",
                                   equalizer="teql0", slave="wan1") or 0) >= 5, 3, what="tx counter refreshed")
    text = scrape()
    assert sample(text, "wanbalanced_slave_attached", equalizer="teql0", slave="wan0") == 1
    assert sample(text, "wanbalanced_equalizer_default_route", equalizer="teql0") == 1
    lab.far_down(0)
    lab.wait_until(lambda: not lab.attached("wan0"), 3)
    # The metrics are the status the loop publishes once its pass is over,
    # a moment after the kernel changed: a scrape in between sees the last one.
    lab.wait_until(lambda: sample(scrape(), "wanbalanced_slave_attached", equalizer="teql0", slave="wan0") == 0, 3,
                   what="the detach published")
    text = scrape()
    assert sample(text, "wanbalanced_slave_carrier", equalizer="teql0", slave="wan0") == 0
    assert sample(text, "wanbalanced_slave_state", equalizer="teql0", slave="wan0", state="down") == 1
    assert sample(text, "wanbalanced_slave_detaches_total", equalizer="teql0", slave="wan0") == 1
    assert sample(text, "wanbalanced_equalizer_attached_slaves", equalizer="teql0") == 1
    detach_count = sample(text, "wanbalanced_failover_seconds_count", action="detach")
    assert detach_count == 1, "the detach was measured from its carrier event"
    result = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.lab_setup(n_slaves=3)
def test_sighup_reload_adds_removes_and_leaves_others_untouched(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    assert lab.attached("wan0") and lab.attached("wan1") and not lab.attached("wan2")
    pinger = subprocess.Popen(
        ["ping", "-n", "-q", "-c", "200", "-i", "0.01", "-W", "1", "-I", LOCAL_ADDR, FAR_ADDR],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(0.3)
    mark = len(wb.log())
    wb.write_config(CONFIG_2.replace('slaves = ["wan0", "wan1"]', 'slaves = ["wan0", "wan2"]'))
    wb.send(signal.SIGHUP)
    wb.wait_log(r"INFO reloaded .*config.toml: slaves added \['wan2'\], removed \['wan1'\]")
    lab.wait_until(lambda: lab.attached("wan2") and not lab.attached("wan1"), 3)
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    after = wb.log()[mark:]
    assert "wan0" not in after, f"an unchanged slave was touched:\n{after}"
    assert "tc qdisc del dev wan1 root teql0 (removed from the configuration" in after
    # A removed slave is left alone from then on.
    mark = len(wb.log())
    lab.far_down(1)
    lab.far_up(1)
    time.sleep(0.5)
    assert not lab.attached("wan1")
    assert "wan1" not in wb.log()[mark:]


def test_bad_reload_keeps_running_config(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    wb.write_config(CONFIG_2.replace('slaves = ["wan0", "wan1"]', 'slaves = ["wan0", "wan0"]') + "\nbogus = 1\n")
    wb.send(signal.SIGHUP)
    line = wb.wait_log(r"ERROR reload failed, keeping the running configuration: .*")
    assert "equalizers.teql0.slaves[1]" in line.group(0) and "bogus" in line.group(0)
    assert sample(scrape(), "wanbalanced_config_last_reload_successful") == 0
    assert wb.proc is not None and wb.proc.poll() is None
    assert lab.attached("wan0") and lab.attached("wan1")
    # The old config still rules: a fault is still handled.
    lab.far_down(1)
    lab.wait_until(lambda: not lab.attached("wan1"), 3)
    wb.write_config(CONFIG_2)
    wb.send(signal.SIGHUP)
    wb.wait_log(r"INFO reloaded ")
    assert sample(scrape(), "wanbalanced_config_last_reload_successful") == 1


def test_second_daemon_refuses_to_start(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    second = subprocess.run([str(WANBALANCED), "run", "--config", str(wb.config_path)],
                            capture_output=True, text=True, timeout=10)
    assert second.returncode == 1
    assert "another wanbalanced answers on /run/wanbalanced/control.sock" in second.stderr
    assert wb.proc is not None and wb.proc.poll() is None


def daemon_fds(wb: Wanbalanced) -> int:
    assert wb.proc is not None
    return len(os.listdir(f"/proc/{wb.proc.pid}/fd"))


def detach_ms(wb: Wanbalanced, slave: str) -> float:
    m = wb.wait_log(rf"WARNING {slave}: tc qdisc del dev {slave} root teql0 \(carrier lost.*; ([\d.]+) ms after the event")
    return float(m.group(1))


def test_idle_metrics_connections_neither_exhaust_descriptors_nor_delay_a_failover(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    scrape()
    base = daemon_fds(wb)
    # The usual failover, for comparison: wan1's carrier lost, nothing else going on.
    lab.far_down(1)
    lab.wait_until(lambda: not lab.attached("wan1"), 3, what="wan1 detached")
    usual = detach_ms(wb, "wan1")
    lab.far_up(1)
    lab.wait_until(lambda: lab.attached("wan1"), 3, what="wan1 back")

    # 1,000 connections opened and held, never sending a byte (this process
    # needs the descriptors; the daemon keeps the limit it started with).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    held: list[socket.socket] = []
    peak = base
    try:
        for i in range(1000):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", 9783))  # past the listen backlog it just waits in SYN_SENT
            held.append(s)
            if i % 50 == 0:
                peak = max(peak, daemon_fds(wb))
        time.sleep(0.5)
        peak = max(peak, daemon_fds(wb))
        text = scrape()  # a normal scrape gets through while they are held
        assert sample(text, "wanbalanced_slave_attached", equalizer="teql0", slave="wan0") == 1
        lab.far_down(0)
        lab.wait_until(lambda: not lab.attached("wan0"), 3, what="wan0 detached")
        took = detach_ms(wb, "wan0")
        peak = max(peak, daemon_fds(wb))
        print(f"detach: {usual:.1f} ms alone, {took:.1f} ms with 1000 connections held; "
              f"daemon fds {base} before, at most {peak} meanwhile")
        assert peak <= base + 8 + 1, f"the daemon's descriptors grew from {base} to {peak}"
        assert took < max(20.0, 5 * usual), f"detach took {took:.1f} ms (alone: {usual:.1f} ms)"
        assert sample(scrape(), "wanbalanced_slave_attached", equalizer="teql0", slave="wan0") == 0
        assert lab.attached("wan1") and lab.ping(5, interval=0.02) == 5
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert wb.proc is not None and wb.proc.poll() is None
