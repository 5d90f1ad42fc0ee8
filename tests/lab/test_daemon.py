"""The real daemon on the real sch_teql: convergence, faults, refusals.

Each test starts `wanbalanced run` inside the UML guest, injects faults with
iproute2, and asserts what the kernel then holds and that traffic flows.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from lab.daemon import Wanbalanced
from lab.tunline import TunLine
from lab.topo import FAR_ADDR, LOCAL_ADDR, Lab, ip, ip_json, reset_teql, run, set_rp_filter, unload_teql


def route_dev(dst: str = FAR_ADDR) -> str | None:
    """The device the kernel would send a packet to `dst` through."""
    got = ip_json("-4", "route", "get", dst)
    return got[0].get("dev") if got else None


def teql_up() -> bool:
    link = ip_json("link", "show", "dev", "teql0")
    return bool(link) and "UP" in link[0]["flags"]


def connected_route() -> bool:
    return any(r.get("dst") == "10.0.0.0/31" for r in ip_json("-4", "route", "show", "dev", "teql0"))


def test_startup_convergence(lab: Lab, wb: Wanbalanced) -> None:
    set_rp_filter("wan0", 1)
    set_rp_filter("wan1", 2)
    wb.start()
    assert lab.attached("wan0") and lab.attached("wan1")
    assert teql_up()
    assert lab.addresses("teql0") == ["10.0.0.0/31"]
    assert not connected_route()
    assert lab.default_route() is not None
    assert lab.rp_filter("wan0") == 0 and lab.rp_filter("wan1") == 0
    tx = [lab.tx_packets(s) for s in lab.slaves]
    assert lab.ping(20, interval=0.02) == 20
    grown = [lab.tx_packets(s) - before for s, before in zip(lab.slaves, tx)]
    assert min(grown) >= 5, f"round-robin over both lines, got {grown}"
    log = wb.log()
    for command in ("tc qdisc add dev wan0 root teql0", "ip link set teql0 up",
                    "ip addr replace 10.0.0.0/31 dev teql0 noprefixroute", "ip route replace default dev teql0",
                    "sysctl -w net.ipv4.conf.wan1.rp_filter=0"):
        assert command in log


def test_detach_on_carrier_loss_and_reslave_on_return(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    lab.far_down(0)
    lab.wait_until(lambda: not lab.attached("wan0"), 3, what="wan0 detached")
    assert lab.attached("wan1") and lab.default_route() is not None
    wb.wait_log(r"WARNING wan0: tc qdisc del dev wan0 root teql0 \(carrier lost")
    assert lab.ping(10, interval=0.02) == 10
    lab.far_up(0)
    lab.wait_until(lambda: lab.attached("wan0"), 3, what="wan0 re-slaved")
    wb.wait_log(r"NOTICE wan0: tc qdisc add dev wan0 root teql0 \(carrier returned")
    tx = lab.tx_packets("wan0")
    assert lab.ping(10, interval=0.02) == 10
    assert lab.tx_packets("wan0") - tx >= 3, "traffic flows over the returned line again"


def test_default_route_withdrawn_and_restored(lab: Lab, wb: Wanbalanced) -> None:
    # A backup default route with a higher metric, as an operator would have.
    ip("link", "add", "bk0", "type", "veth", "peer", "name", "bk0p")
    ip("addr", "add", "198.18.0.1/30", "dev", "bk0")
    ip("link", "set", "bk0", "up")
    ip("link", "set", "bk0p", "up")
    ip("route", "add", "default", "via", "198.18.0.2", "dev", "bk0", "metric", "100")
    try:
        wb.start()
        assert route_dev() == "teql0"
        lab.far_down(0)
        lab.far_down(1)
        lab.wait_until(lambda: lab.default_route() is None, 3, what="default route withdrawn")
        assert route_dev() == "bk0", "the backup route takes over"
        wb.wait_log(r"ip route del default dev teql0 \(no slave attached")
        assert teql_up(), "teql0 stays up with no slave; only the route goes"
        lab.far_up(1)
        lab.wait_until(lambda: lab.default_route() is not None, 3, what="default route restored")
        assert route_dev() == "teql0"
        assert lab.attached("wan1") and not lab.attached("wan0")
        assert lab.ping(5, interval=0.05) == 5
    finally:
        ip("link", "del", "bk0", check=False)


def test_recreated_interface_is_reslaved_with_rp_filter(lab: Lab, wb: Wanbalanced) -> None:
    # New devices get the 'default' sysctls: make them differ from the config.
    set_rp_filter("default", 2)
    wb.start()
    lab.delete_slave(1)
    wb.wait_log(r"WARNING wan1: \w+ -> absent \(interface deleted\)")
    assert "ERROR" not in wb.log(), "a deletion is not an error"
    assert lab.attached("wan0") and lab.default_route() is not None
    lab.recreate_slave(1)
    assert lab.link("wan1") is not None
    lab.wait_until(lambda: lab.attached("wan1") and lab.rp_filter("wan1") == 0, 3,
                   what="recreated wan1 attached with rp_filter 0")
    wb.wait_log(r"sysctl -w net.ipv4.conf.wan1.rp_filter=0 \(rp_filter is 2")
    tx = lab.tx_packets("wan1")
    assert lab.ping(10, interval=0.02) == 10
    assert lab.tx_packets("wan1") - tx >= 3


def test_slave_missing_at_start_is_attached_when_it_appears(lab: Lab, wb: Wanbalanced) -> None:
    lab.delete_slave(1)
    wb.start()
    assert lab.attached("wan0")
    assert not lab.link_exists("wan1")
    lab.recreate_slave(1)
    lab.wait_until(lambda: lab.attached("wan1"), 3, what="wan1 attached on appearance")


def test_adopts_existing_setup_without_traffic_gap(lab: Lab, wb: Wanbalanced) -> None:
    lab.teql_by_hand()  # the seed, typed by an operator
    pinger = subprocess.Popen(
        ["ping", "-n", "-q", "-c", "300", "-i", "0.01", "-W", "1", "-I", LOCAL_ADDR, FAR_ADDR],
        stdout=subprocess.PIPE, text=True,
    )
    time.sleep(0.3)
    wb.start()
    # Restart on top of itself, as `systemctl restart` would.
    code, took = wb.stop()
    assert code == 0 and took < 1.0, f"SIGTERM: exit {code} after {took:.2f}s"
    assert lab.attached("wan0") and lab.attached("wan1") and lab.default_route() is not None
    wb.start()
    out, _ = pinger.communicate(timeout=30)
    assert " 300 received" in out and " 0% packet loss" in out, out
    for verb in ("tc qdisc", "ip link set", "ip route replace", "ip addr replace"):
        assert verb not in wb.log(), f"adoption must not touch a working setup:\n{wb.log()}"
    assert "teql0: 2/2 slaves attached" in wb.log()
    assert wb.run("plan").returncode == 0


def test_sigint_exits_zero_and_keeps_data_plane(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    code, took = wb.stop(signal.SIGINT)
    assert code == 0 and took < 1.0
    assert lab.attached("wan0") and lab.attached("wan1") and lab.default_route() is not None


@pytest.mark.lab_setup(n_slaves=3)
def test_a_kernel_refusal_is_logged_once_and_others_go_on(lab: Lab, wb: Wanbalanced) -> None:
    # A smaller MTU is no longer refused (teql0 is lowered first: test_mtu.py);
    # a point-to-point line beside Ethernet ones is, with mixed = "refuse".
    lab.delete_slave(2)
    line = TunLine(2)
    wb.write_config("""
[equalizers.teql0]
slaves = ["wan0", "wan1", "wan2"]
address = "10.0.0.0/31"
mixed = "refuse"
""")
    wb.start()
    try:
        line.dial()
        found = wb.wait_log(r"ERROR wan2: teql0 refused the slave \(EINVAL\): teql0 is BROADCAST and wan2 is not.*")
        assert "SLAVE=wan2" in found.group(0)
        assert lab.attached("wan0") and lab.attached("wan1") and not lab.attached("wan2")
        assert lab.ping(5, interval=0.05) == 5
        # More events that change nothing the refusal depends on: no new line.
        for qlen in ("500", "1000"):
            ip("link", "set", "wan2", "txqueuelen", qlen)
        time.sleep(0.5)
        assert len([l for l in wb.log().splitlines() if "refused the slave" in l and l.startswith("ERROR")]) == 1
        # Once the Ethernet lines are gone, wan2 is the first slave and the kernel takes it.
        lab.far_down(0)
        lab.far_down(1)
        lab.wait_until(lambda: lab.attached("wan2"), 5, what="wan2 retried once it is alone")
        # The attach is the pass's first write; the route follows it a moment later.
        lab.wait_until(lambda: lab.ping(1, interval=0.05) == 1, 5, what="traffic through wan2")
        assert lab.ping(5, interval=0.05) == 5
    finally:
        line.hang_up()


def test_too_few_equalizers_is_reported_and_the_rest_works(lab: Lab, wb: Wanbalanced) -> None:
    reset_teql(1)
    wb.write_config("""
[equalizers.teql0]
slaves = ["wan0"]
address = "10.0.0.0/31"

[equalizers.teql1]
slaves = ["wan1"]
address = "10.0.1.0/31"
default_route = false
""")
    wb.start()
    wb.wait_log(r"ERROR teql1 does not exist: sch_teql was loaded with max_equalizers=1; "
                r"set `options sch_teql max_equalizers=2`")
    assert lab.attached("wan0") and not lab.attached("wan1")
    assert lab.ping(3, interval=0.05) == 3


def test_module_not_loaded_then_loaded(lab: Lab, wb: Wanbalanced) -> None:
    unload_teql()
    wb.start()
    wb.wait_log(r"ERROR teql0: no teql device exists, sch_teql is not loaded: run `modprobe sch_teql max_equalizers=1`")
    assert wb.proc is not None and wb.proc.poll() is None
    reset_teql(1)  # the operator loads it: teql0 appears, the daemon converges
    lab.wait_until(lambda: lab.attached("wan0") and lab.attached("wan1") and lab.default_route() is not None, 5,
                   what="converged once sch_teql is loaded")
    wb.wait_log(r"INFO teql0: resolved")
    assert lab.ping(5, interval=0.05) == 5


def test_up_delay_holds_a_returning_line(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(wb.config_path.read_text() + '\n[slaves.wan1]\nup_delay = "1s"\n')
    wb.start()
    lab.far_down(1)
    lab.wait_until(lambda: not lab.attached("wan1"), 3)
    lab.far_up(1)
    time.sleep(0.4)
    assert not lab.attached("wan1"), "re-slaved before up_delay ran out"
    lab.wait_until(lambda: lab.attached("wan1"), 3, what="wan1 re-slaved after up_delay")
    wb.wait_log(r"wan1: up_delay -> up \(carrier up for 1s\)")


def test_plan_prints_commands_and_changes_nothing(lab: Lab, wb: Wanbalanced) -> None:
    set_rp_filter("wan1", 1)
    before = run("tc", "qdisc", "show").stdout, ip("-4", "route", "show", "table", "all"), lab.rp_filter("wan1")
    result = wb.run("plan")
    assert result.returncode == 2, result
    assert result.stdout.splitlines() == [
        "sysctl -w net.ipv4.conf.wan1.rp_filter=0",
        "tc qdisc add dev wan0 root teql0",
        "tc qdisc add dev wan1 root teql0",
        "ip link set teql0 up",
        "ip addr replace 10.0.0.0/31 dev teql0 noprefixroute",
        "ip route replace default dev teql0 proto 119",
    ]
    after = run("tc", "qdisc", "show").stdout, ip("-4", "route", "show", "table", "all"), lab.rp_filter("wan1")
    assert before == after, "plan changed the kernel"
    wb.start()
    converged = wb.run("plan")
    assert (converged.returncode, converged.stdout) == (0, "")


@pytest.mark.lab_setup(n_slaves=4)
def test_four_slaves_each_fault_independent(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config("""
[equalizers.teql0]
slaves = ["wan0", "wan1", "wan2", "wan3"]
address = "10.0.0.0/31"
""")
    wb.start()
    assert all(lab.attached(s) for s in lab.slaves)
    lab.far_down(2)
    lab.delete_slave(3)
    lab.wait_until(lambda: not lab.attached("wan2"), 3)
    assert lab.attached("wan0") and lab.attached("wan1")
    assert lab.ping(8, interval=0.02) == 8
