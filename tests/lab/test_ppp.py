"""The real daemon on real PPP and PPPoE lines (pppd 2.4.9, lab/ppp.py).

The seed's wanN were point-to-point WAN links whose interface disappears on
a hang-up and comes back on a redial (wanpipe's DYN_INTR_CFG); pppd does the
same.  Each test dials real lines to router B, then hangs them up, redials,
or makes the far end stop answering while the link stays up, and asserts
what the kernel holds, that traffic flows and what the daemon says.

Timings are printed (run with -s).
"""

from __future__ import annotations

import errno
import re
import time
from pathlib import Path

import pytest

from wanbalanced.config import DEFAULT_CONTROL_SOCKET
from wanbalanced.status import query

from lab.daemon import CONFIG_2, Wanbalanced
from lab.topo import FAR_ADDR, Lab, ip, ip_json, set_rp_filter

PPP = pytest.mark.lab_setup(kinds="ppp")
PPPOE = pytest.mark.lab_setup(kinds="pppoe")


def teql() -> dict[str, object]:
    return ip_json("link", "show", "dev", "teql0")[0]


def status(wb: Wanbalanced) -> dict[str, dict[str, object]]:
    return {s["slave"]: s for s in query(DEFAULT_CONTROL_SOCKET)["slaves"]}


def traffic_over_both(lab: Lab, count: int = 20) -> list[int]:
    """Ping through teql0: every echo answered, each line carries some.

    Router B's end routes replies back only once its pppd has brought it up
    (lab/ppp-far.sh), which can be a little after router A's end is up and
    attached: wait for that first, it is the lab's far end, not the daemon."""
    for i in range(lab.n_slaves):
        lab.wait_line_up(i)
    tx = [lab.tx_packets(s) for s in lab.slaves]
    assert lab.ping(count, interval=0.02) == count
    grown = [lab.tx_packets(s) - before for s, before in zip(lab.slaves, tx)]
    assert min(grown) >= count // 4, f"round-robin over both lines, got {grown}"
    return grown


def both_attached(lab: Lab) -> bool:
    return lab.attached("wan0") and lab.attached("wan1")


def carrier_file(ifname: str) -> str:
    """/sys/class/net/IFNAME/carrier, or the errno name reading it raises."""
    try:
        return Path(f"/sys/class/net/{ifname}/carrier").read_text().strip()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))


@PPP
def test_ppp_slaves_attach_and_teql0_becomes_pointopoint(lab: Lab, wb: Wanbalanced) -> None:
    for s in lab.slaves:
        link = lab.link(s)
        assert link is not None and link["link_type"] == "ppp"
        assert {"POINTOPOINT", "NOARP", "UP", "LOWER_UP"} <= set(link["flags"])
    wb.start()
    assert both_attached(lab) and lab.default_route() is not None
    flags = set(teql()["flags"])
    assert {"POINTOPOINT", "NOARP", "UP"} <= flags and "BROADCAST" not in flags
    traffic_over_both(lab)
    assert "tc qdisc add dev wan0 root teql0" in wb.log()


@PPP
def test_ppp_hang_up_and_redial(lab: Lab, wb: Wanbalanced) -> None:
    # pppd's new interface gets the 'default' sysctls: make them differ.
    set_rp_filter("default", 2)
    wb.start()
    start = time.monotonic()
    old = lab.hang_up(0, redial=False)
    lab.wait_until(lambda: not lab.link_exists("wan0"), 5, what="wan0 deleted by pppd")
    gone = time.monotonic() - start
    wb.wait_log(r"WARNING wan0: \w+ -> absent \(interface deleted\)")
    # A hang-up is not an error.  (The redial's new interface may log one:
    # the rp_filter write can race pppd's rename, see docs/caveats.md.)
    errors = [line for line in wb.log().splitlines() if line.startswith("ERROR") and "rp_filter" not in line]
    assert not errors, errors
    assert lab.attached("wan1") and lab.default_route() is not None
    assert lab.ping(10, interval=0.02) == 10, "traffic goes on over wan1"
    # pppd dials again at once (holdoff 1): the new wan0 exists, not negotiated.
    lab.wait_until(lambda: lab.link_exists("wan0"), 5, what="wan0 recreated by the redial")
    assert status(wb)["wan0"]["state"] != "up"
    start = time.monotonic()
    lab.redial(0)
    lab.wait_until(lambda: lab.attached("wan0") and lab.rp_filter("wan0") == 0, 10,
                   what="redialled wan0 attached with rp_filter 0")
    back = time.monotonic() - start
    assert lab.ifindex("wan0") != old, "a redial makes a new interface"
    wb.wait_log(r"sysctl -w net.ipv4.conf.wan0.rp_filter=0 \(rp_filter is 2")
    assert status(wb)["wan0"]["state"] == "up"
    traffic_over_both(lab)
    print(f"\nPPP hang-up: wan0 deleted {gone * 1000:.0f} ms after the far pppd died; "
          f"redial to attached: {back * 1000:.0f} ms")


@PPP
def test_ppp_redial_by_itself_is_attached_again(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    old = lab.hang_up(1)  # the far end answers the next dial: pppd's holdoff is 1 s
    start = time.monotonic()
    lab.wait_until(lambda: lab.link_exists("wan1") and lab.ifindex("wan1") != old and lab.attached("wan1"),
                   15, what="wan1 redialled and attached")
    print(f"\nPPP hang-up to attached again, no one involved: {(time.monotonic() - start) * 1000:.0f} ms")
    wb.wait_log(r"wan1: \w+ -> absent \(interface deleted\)")
    traffic_over_both(lab)


@PPP
def test_ppp_carrier_during_negotiation(lab: Lab, wb: Wanbalanced) -> None:
    """A ppp device has no carrier of its own: pppd keeps it down until
    IPCP is up, and once up it shows LOWER_UP at once."""
    wb.start()

    def recreated(old: int) -> bool:
        # The new device: the old one is still there until pppd deletes it.
        link = lab.link("wan1")
        return link is not None and link["ifindex"] != old

    old = lab.hang_up(1, redial=False)
    lab.wait_until(lambda: recreated(old), 5, what="wan1 recreated, negotiating")
    time.sleep(1.5)  # LCP Configure-Requests go unanswered meanwhile
    link = lab.link("wan1")
    assert link is not None
    assert "UP" not in link["flags"] and "LOWER_UP" not in link["flags"], link["flags"]
    assert link["operstate"] == "DOWN"
    assert carrier_file("wan1") == "EINVAL"  # the kernel answers carrier only on a device that is up
    assert not lab.attached("wan1") and lab.attached("wan0")
    negotiating = status(wb)["wan1"]["state"]
    lab.redial(1)
    lab.wait_until(lambda: "UP" in (lab.link("wan1") or {}).get("flags", []), 10, what="wan1 up after IPCP")
    up = time.monotonic()
    link = lab.link("wan1")
    assert link is not None and "LOWER_UP" in link["flags"] and link["operstate"] == "UNKNOWN"
    assert carrier_file("wan1") == "1"
    lab.wait_until(lambda: lab.attached("wan1"), 3, what="wan1 attached once up")
    seen = time.monotonic() - up
    # The UP event carries LOWER_UP (no linkwatch delay: ppp never changes its carrier).
    reaction = re.findall(r"wan1: tc qdisc add dev wan1 root teql0 \(carrier returned; ([\d.]+) ms after the event",
                          wb.log())
    assert reaction, wb.log()
    print(f"\nwhile negotiating the daemon said {negotiating!r}; after IPCP the daemon attached wan1 "
          f"{reaction[-1]} ms after the event (the test saw it {seen * 1000:.0f} ms after its own `ip` saw UP)")

    # Set up by hand before IPCP, the device has LOWER_UP at once: the
    # daemon cannot tell it from a negotiated line (probes can).
    old = lab.hang_up(1, redial=False)
    lab.wait_until(lambda: recreated(old) and not lab.attached("wan1"), 5, what="wan1 recreated, not attached")
    ip("link", "set", "wan1", "up")
    link = lab.link("wan1")
    assert link is not None and "LOWER_UP" in link["flags"]
    lab.wait_until(lambda: lab.attached("wan1"), 3, what="a hand-upped, unnegotiated wan1 attached")


def ppp_probe_config(lab: Lab) -> str:
    """Each line probes its far end (10.1.N.2) and 192.0.2.1 beyond it; a
    round is good only if both answer."""
    text = CONFIG_2
    for i, slave in enumerate(lab.slaves):
        text += f"""
[slaves.{slave}.probe]
targets = ["{lab.peer_addr(i)}", "{FAR_ADDR}"]
min_targets = 2
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3

[slaves.{slave}.damping]
enabled = false
"""
    return text


@PPP
def test_probes_over_ppp_to_the_far_end_and_beyond(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(ppp_probe_config(lab))
    wb.start()
    lab.wait_until(lambda: both_attached(lab), 5, what="both proven and attached")
    timings = {}

    # The far end stops answering everything while pppd keeps the link.
    lab.netem(0, 100)
    start = time.monotonic()
    lab.wait_until(lambda: not lab.attached("wan0"), 3, 0.005, what="wan0 detached by its probes")
    timings["dead far end: detach"] = time.monotonic() - start
    assert "LOWER_UP" in lab.link("wan0")["flags"], "pppd kept the link"
    assert lab.attached("wan1") and lab.ping(10, interval=0.02) == 10
    lab.netem_clear(0)
    start = time.monotonic()
    lab.wait_until(lambda: lab.attached("wan0"), 3, 0.005, what="wan0 re-attached after repair")
    timings["dead far end: re-attach"] = time.monotonic() - start

    # Upstream of the far end dies: 10.1.0.2 answers, 192.0.2.1 does not.
    lab.run_b("ip", "addr", "del", f"{FAR_ADDR}/32", "dev", "vrf0")
    start = time.monotonic()
    lab.wait_until(lambda: not lab.attached("wan0"), 3, 0.005, what="wan0 detached, beyond target lost")
    timings["dead beyond: detach"] = time.monotonic() - start
    lab.run_b("ip", "addr", "add", f"{FAR_ADDR}/32", "dev", "vrf0")
    start = time.monotonic()
    lab.wait_until(lambda: lab.attached("wan0"), 3, 0.005, what="wan0 re-attached, beyond target back")
    timings["dead beyond: re-attach"] = time.monotonic() - start

    log = wb.log()
    assert log.count("wan0: up -> failed (3 failed probe rounds in a row") == 2
    assert "wan1: up -> failed" not in log
    assert status(wb)["wan0"]["detaches"] == 2 and status(wb)["wan1"]["detaches"] == 0
    traffic_over_both(lab)
    print("\n" + "; ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))


@PPPOE
def test_pppoe_attach_hang_up_redial(lab: Lab, wb: Wanbalanced) -> None:
    assert [lab.link(s)["mtu"] for s in lab.slaves] == [1492, 1492]
    wb.start()
    assert both_attached(lab)
    assert teql()["mtu"] == 1492, "teql0 takes its first slaves' MTU while it is down"
    assert "POINTOPOINT" in teql()["flags"]
    traffic_over_both(lab)
    start = time.monotonic()
    old = lab.hang_up(0, redial=False)
    lab.wait_until(lambda: not lab.link_exists("wan0"), 5, what="wan0 deleted by pppd")
    gone = time.monotonic() - start
    wb.wait_log(r"WARNING wan0: \w+ -> absent \(interface deleted\)")
    assert lab.attached("wan1") and lab.ping(10, interval=0.02) == 10
    start = time.monotonic()
    lab.redial(0)
    lab.wait_until(lambda: lab.attached("wan0"), 15, what="wan0 redialled and attached")
    back = time.monotonic() - start
    assert lab.ifindex("wan0") != old
    traffic_over_both(lab)
    print(f"\nPPPoE hang-up: wan0 deleted {gone * 1000:.0f} ms after the server's pppd died; "
          f"redial to attached: {back * 1000:.0f} ms")


@PPP
def test_ppp_redial_with_a_smaller_mtu_is_attached_again(lab: Lab, wb: Wanbalanced) -> None:
    wb.start()
    assert teql()["mtu"] == 1500
    lab.hang_up(0, redial=False)
    lab.wait_until(lambda: not lab.link_exists("wan0"), 5, what="wan0 deleted by pppd")
    lab.redial(0, mru=1400)  # the far end now accepts smaller packets
    lab.wait_line_up(0)
    assert lab.link("wan0")["mtu"] == 1400
    start = time.monotonic()
    lab.wait_until(lambda: lab.attached("wan0"), 5, what="wan0 attached again, without a person")
    print(f"\nredial at MTU 1400: attached {(time.monotonic() - start) * 1000:.0f} ms after the line came up")
    assert teql()["mtu"] == 1400, "teql0 lowered to fit its smallest slave"
    assert "mtu 1400" in ip("link", "show", "dev", "teql0")
    wb.wait_log(r"ip link set teql0 mtu 1400")
    assert "refused" not in wb.log()
    traffic_over_both(lab)


@pytest.mark.lab_setup(kinds=["ppp", "pppoe"])
def test_pppoe_line_joining_a_ppp_bundle_lowers_the_mtu(lab: Lab, wb: Wanbalanced) -> None:
    lab.hang_up(1, redial=False)  # the PPPoE line is down when the daemon starts
    lab.wait_until(lambda: not lab.attached("wan1") and not lab.line_up(1), 5)
    wb.start()
    assert lab.attached("wan0") and teql()["mtu"] == 1500
    lab.redial(1)
    lab.wait_line_up(1)
    assert lab.link("wan1")["mtu"] == 1492
    lab.wait_until(lambda: lab.attached("wan1"), 5, what="the PPPoE line attached, without a person")
    assert teql()["mtu"] == 1492
    wb.wait_log(r"ip link set teql0 mtu 1492")
    traffic_over_both(lab)


@pytest.mark.lab_setup(kinds=["veth", "ppp"])
def test_a_real_ppp_line_joins_an_ethernet_bundle_by_reopening_teql0(lab: Lab, wb: Wanbalanced) -> None:
    # The daemon starts with the veth line only: teql0 is opened BROADCAST,
    # and the kernel then refuses a POINTOPOINT slave. mixed = "reopen" (the
    # default) opens teql0 again around it.
    lab.hang_up(1, redial=False)
    lab.wait_until(lambda: not lab.attached("wan1") and not lab.line_up(1), 5)
    wb.start()
    assert lab.attached("wan0") and "BROADCAST" in teql()["flags"]  # type: ignore[operator]
    lab.redial(1)
    lab.wait_line_up(1)
    lab.wait_until(lambda: lab.attached("wan1"), 5, what="the PPP line attached beside the veth line")
    assert "POINTOPOINT" in lab.link("wan1")["flags"]  # type: ignore[index]
    assert not set(teql()["flags"]) & {"BROADCAST", "POINTOPOINT"}  # type: ignore[call-overload]
    wb.wait_log(r"ip link set teql0 down")
    assert lab.default_route() is not None, "the default route is back after the reopen"
    tx = [lab.tx_packets(s) for s in lab.slaves]
    assert lab.ping(30, interval=0.02) == 30
    sent = [lab.tx_packets(s) - before for s, before in zip(lab.slaves, tx)]
    assert min(sent) >= 10, f"each line carries traffic: {sent}"
    # A hang-up and redial of the PPP line needs no second reopen.
    lab.hang_up(1)
    lab.wait_line_up(1)
    lab.wait_until(lambda: lab.attached("wan1"), 5, what="the PPP line attached again")
    assert wb.log().count("ip link set teql0 down") == 1
    assert "refused" not in wb.log()
