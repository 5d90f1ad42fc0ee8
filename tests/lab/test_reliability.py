"""Reliability on the real kernel: drift repair, crash and restart, event loss,
event storms."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from lab.daemon import CONFIG_2, Wanbalanced
from lab.topo import FAR_ADDR, LOCAL_ADDR, NS, Lab, ip, run, set_rp_filter, tc
from tests.lab.test_operations import sample, scrape


def no_damping(config: str, slaves: tuple[str, ...] = ("wan0", "wan1")) -> str:
    """Storms are flapping, and damping would rightly hold the lines down: these
    tests are about not losing track of events, so damping is off."""
    return config + "".join(f"\n[slaves.{s}.damping]\nenabled = false\n" for s in slaves)


def kernel_writes(log: str) -> list[str]:
    return [line for line in log.splitlines()
            if any(verb in line for verb in ("tc qdisc", "ip link set", "ip route", "ip addr", "sysctl -w"))]


def test_drift_is_repaired_logged_and_counted(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    tc("qdisc", "del", "dev", "wan0", "root")
    lab.wait_until(lambda: lab.attached("wan0"), 3, what="teql0 put back on wan0")
    wb.wait_log(r"WARNING wan0: tc qdisc add dev wan0 root teql0 \(drift: teql0 was removed from wan0 "
                r"\(root qdisc now the default qdisc\).*EVENT=drift")
    ip("route", "del", "default", "dev", "teql0")
    lab.wait_until(lambda: lab.default_route() is not None, 3, what="default route put back")
    wb.wait_log(r"ip route replace default dev teql0 proto 119 \(drift: the default route via teql0 was deleted")
    set_rp_filter("wan1", 1)  # arrives as an RTM_NEWNETCONF event
    lab.wait_until(lambda: lab.rp_filter("wan1") == 0, 3, what="rp_filter put back")
    wb.wait_log(r"sysctl -w net.ipv4.conf.wan1.rp_filter=0 \(drift: rp_filter of wan1 was changed to 1")
    ip("link", "set", "teql0", "down")  # also flushes its routes, silently
    lab.wait_until(lambda: lab.default_route() is not None, 3, what="teql0 up with its route again")
    wb.wait_log(r"ip link set teql0 up \(drift: teql0 was set down")
    assert lab.ping(5, interval=0.05) == 5
    text = scrape()
    counts = {k: sample(text, "wanbalanced_drift_repairs_total", kind=k) for k in ("qdisc", "route", "rp_filter",
                                                                                  "link")}
    assert counts == {"qdisc": 1, "route": 2, "rp_filter": 1, "link": 1}, counts


def test_drift_on_a_rightly_detached_slave_is_left_alone(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    lab.far_down(1)
    lab.wait_until(lambda: not lab.attached("wan1"), 3)
    time.sleep(0.3)
    mark = len(wb.log())
    set_rp_filter("wan1", 2)
    tc("qdisc", "replace", "dev", "wan1", "root", "pfifo")
    time.sleep(1.0)
    assert lab.rp_filter("wan1") == 2 and lab.root_qdisc("wan1") == "pfifo"
    assert kernel_writes(wb.log()[mark:]) == []
    lab.far_up(1)  # back in service: now it is ours again
    lab.wait_until(lambda: lab.attached("wan1") and lab.rp_filter("wan1") == 0, 3)


def test_sigkill_and_restart_keeps_traffic_and_adopts(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    pinger = subprocess.Popen(
        ["ping", "-n", "-q", "-c", "300", "-i", "0.01", "-W", "1", "-I", LOCAL_ADDR, FAR_ADDR],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(0.3)
    wb.kill()  # SIGKILL: no clean-up of any kind
    assert wb.proc is not None and wb.proc.returncode == -signal.SIGKILL
    assert lab.attached("wan0") and lab.attached("wan1") and lab.default_route() is not None
    wb.start()  # the stale control socket of the killed one is taken over
    first = wb.log()
    wb.stop()
    wb.start()  # startup is idempotent
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert kernel_writes(first) == [] and kernel_writes(wb.log()) == []
    assert wb.run("plan").returncode == 0


def test_event_loss_is_detected_and_resynced(lab: Lab, wb: Wanbalanced) -> None:
    # A receive buffer of 4 KiB overflows under a burst of link events that
    # the daemon does not read meanwhile (stopped, as by a busy scheduler: a
    # daemon that keeps up would never overflow it).
    wb.write_config(no_damping(CONFIG_2.replace("[daemon]\n", "[daemon]\nnetlink_rcvbuf = 4096\n")))
    wb.start()
    flaps = ["link set wan0p down", "link set wan0p up"] * 200 + ["link set wan0p down"]
    wb.send(signal.SIGSTOP)
    try:
        run("ip", "-n", NS, "-batch", "-", input="\n".join(flaps) + "\n")
    finally:
        wb.send(signal.SIGCONT)
    wb.wait_log(r"ERROR netlink events lost \(.*\): resubscribing and resyncing")
    try:
        lab.wait_until(lambda: not lab.attached("wan0") and lab.attached("wan1"), 5, what="converged after resync")
    except AssertionError as e:
        raise AssertionError(f"{e}\nwan0 {lab.root_qdisc('wan0')} {lab.link('wan0')}\n{wb.log()[-3000:]}") from None
    assert (sample(scrape(), "wanbalanced_netlink_resyncs_total") or 0) >= 1
    lab.far_up(0)
    lab.wait_until(lambda: lab.attached("wan0"), 5)
    assert wb.proc is not None and wb.proc.poll() is None


@pytest.mark.lab_setup(n_slaves=4)
def test_event_storm_of_thousands_of_flaps_ends_right(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(no_damping(CONFIG_2.replace('slaves = ["wan0", "wan1"]', 'slaves = ["wan0", "wan1", "wan2", "wan3"]'),
                               ("wan0", "wan1", "wan2", "wan3")))
    wb.start()
    flaps = []
    for _ in range(1000):
        for far in ("wan0p", "wan1p", "wan2p"):
            flaps += [f"link set {far} down", f"link set {far} up"]
    flaps += ["link set wan1p down"]  # the end state: wan1 down, the others up
    start = time.monotonic()
    run("ip", "-n", NS, "-batch", "-", input="\n".join(flaps) + "\n", timeout=300)
    storm = time.monotonic() - start
    for i in (0, 2):
        lab.far_up(i)  # restore router B's routes, flushed with the far end
    try:
        took = lab.wait_until(lambda: lab.attached("wan0") and not lab.attached("wan1") and lab.attached("wan2")
                              and lab.attached("wan3") and lab.default_route() is not None, 10,
                              what="right state after the storm")
    except AssertionError as e:
        state = {s: (lab.root_qdisc(s), "LOWER_UP" in (lab.link(s) or {}).get("flags", [])) for s in lab.slaves}
        raise AssertionError(f"{e}\n{state}\n{wb.log()[-3000:]}") from None
    print(f"\n{len(flaps)} carrier changes in {storm:.1f}s; converged {took:.2f}s after the storm")
    assert wb.proc is not None and wb.proc.poll() is None
    assert lab.ping(8, interval=0.02) == 8
