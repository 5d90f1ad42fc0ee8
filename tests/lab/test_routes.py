"""Per-line routes, route ownership and all_down on the real kernel.

A slave's `[[slaves.X.routes]]` are in the kernel while it is attached and go
in the same reaction as its detach; routes of others are never touched; a
restarted daemon adopts its own without a kernel write; with no slave left the
default route goes (`withdraw`) or an unreachable/blackhole one takes its
place. Timings are printed (run with -s).
"""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
import time

import pytest

from lab.daemon import CONFIG_2, Wanbalanced, scrape
from lab.topo import FAR_ADDR, FAR_ADDR6, FAR_LL6, LOCAL_ADDR6, Lab, ip, ip_json

PROTO = "119"  # observed.RTPROT_WANBALANCED; `ip` shows the number without an rt_protos entry

ROUTES = CONFIG_2 + """
[[slaves.wan0.routes]]
to = "198.51.100.0/24"
table = 100
metric = 10
[[slaves.wan0.routes]]
to = "203.0.113.7/32"
[[slaves.wan1.routes]]
to = "203.0.113.8/32"
"""

PROBED = ROUTES + """
[slaves.wan0.probe]
targets = ["192.0.2.1"]
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3
"""


def ours(dev: str | None = None) -> set[tuple[str, str, int, int]]:
    """(destination, device, table, metric) of every route with our protocol."""
    found = ip_json("-4", "route", "show", "table", "all", "proto", PROTO)
    return {(r["dst"], r.get("dev", ""), _table(r.get("table", "main")), int(r.get("metric", 0)))
            for r in found if (dev is None or r.get("dev") == dev) and r["dst"] != "default"}


def _table(name: str) -> int:
    return 254 if name == "main" else int(name)


WAN0 = {("198.51.100.0/24", "wan0", 100, 10), ("203.0.113.7", "wan0", 254, 0)}
WAN1 = {("203.0.113.8", "wan1", 254, 0)}


def wait_routes(lab: Lab, dev: str, want: set[tuple[str, str, int, int]], start: float, what: str) -> float:
    lab.wait_until(lambda: ours(dev) == want, 5, what=what)
    took = time.monotonic() - start
    print(f"{what}: {took * 1000:.0f} ms")
    return took


def test_line_routes_follow_carrier(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(ROUTES)
    wb.start()
    assert ours() == WAN0 | WAN1
    assert lab.default_route()["protocol"] == PROTO
    start = time.monotonic()
    lab.far_down(0)
    wait_routes(lab, "wan0", set(), start, "carrier cut -> wan0's routes withdrawn")
    log = wb.log()
    detach = log.index("tc qdisc del dev wan0 root teql0")
    for cmd in ("ip route del 198.51.100.0/24 dev wan0 metric 10 table 100 proto 119",
                "ip route del 203.0.113.7/32 dev wan0 proto 119"):
        assert log.index(cmd) > detach, f"{cmd} after the detach"
    assert ours("wan1") == WAN1, "the other line keeps its routes"
    start = time.monotonic()
    lab.far_up(0)
    wait_routes(lab, "wan0", WAN0, start, "carrier back -> wan0's routes restored")
    assert lab.attached("wan0")
    wb.wait_log(r"ip route add 203.0.113.7/32 dev wan0 proto 119 \(wan0 attached")


def test_line_routes_follow_probes_on_a_dead_line(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(PROBED)
    wb.start()
    lab.wait_until(lambda: ours("wan0") == WAN0, 5, what="routes in")
    start = time.monotonic()
    lab.netem(0, 100)  # carrier stays up: only the probes can tell
    wait_routes(lab, "wan0", set(), start, "far end dead -> wan0's routes withdrawn")
    assert lab.link("wan0") is not None and "LOWER_UP" in lab.link("wan0")["flags"], "carrier still up"
    assert not lab.attached("wan0")
    start = time.monotonic()
    lab.netem_clear(0)
    wait_routes(lab, "wan0", WAN0, start, "far end back -> wan0's routes restored")


def test_line_routes_of_a_deleted_and_recreated_slave(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(ROUTES)
    wb.start()
    lab.delete_slave(0)
    lab.wait_until(lambda: ours("wan0") == set(), 3, what="routes gone with the device")
    lab.recreate_slave(0)
    lab.wait_until(lambda: ours("wan0") == WAN0 and lab.attached("wan0"), 5, what="routes back on the new wan0")


def test_renamed_slave_loses_its_routes(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(ROUTES)
    wb.start()
    # Renaming needs the device down, which flushes its IPv4 routes; up again
    # under the new name, it must neither be attached nor get them back.
    ip("link", "set", "wan0", "down")
    ip("link", "set", "wan0", "name", "old0")
    ip("link", "set", "old0", "up")
    lab.wait_until(lambda: not lab.attached("old0"), 3, what="old0 detached")
    time.sleep(0.3)
    assert ours("old0") == set() and ours("wan0") == set()
    ip("link", "del", "old0")


def test_routes_of_others_are_left_alone(lab: Lab, wb: Wanbalanced) -> None:
    # The operator's: the same prefix in the same table with another metric,
    # and one with the very destination, table and metric of ours (wan1's).
    ip("route", "add", "198.51.100.0/24", "dev", "wan0", "table", "100", "metric", "50")
    ip("route", "add", "203.0.113.8/32", "dev", "wan1")
    theirs = boot_routes()
    assert len(theirs) == 2
    wb.write_config(ROUTES)
    wb.start()
    assert ours("wan0") == WAN0
    assert ours("wan1") == set(), "not added over the operator's route"
    wb.wait_log(r"ERROR wan1: ip route add 203.0.113.8/32 dev wan1 proto 119 failed: .*exists")
    # A fault while the kernel refuses ours, until the operator's route goes.
    lab.wait_until(lambda: 'wanbalanced_faults{kind="write_failed"} 1.0' in scrape(), 5, what="write_failed fault")
    ip("route", "del", "203.0.113.8/32", "dev", "wan1", "proto", "boot")
    theirs = boot_routes()
    lab.wait_until(lambda: ours("wan1") == WAN1, 10, what="ours added at the next retry")
    lab.wait_until(lambda: 'wanbalanced_faults{kind="write_failed"} 0.0' in scrape(), 5, what="fault resolved")
    wb.wait_log(r"INFO wan1: resolved: wan1: ip route add 203.0.113.8/32 dev wan1 proto 119: .*exists")
    lab.far_down(0)
    lab.far_down(1)
    lab.wait_until(lambda: ours() == set(), 5, what="our routes withdrawn")
    assert boot_routes() == theirs, "theirs untouched"


def boot_routes() -> list[dict[str, object]]:
    """Routes made by hand (proto boot), without their flags (linkdown comes and goes with the carrier)."""
    return [{k: v for k, v in r.items() if k != "flags"} for r in ip_json("route", "show", "table", "all", "proto", "boot")]


def _route_events(seconds: float, action: object) -> str:
    """What `ip monitor route` saw while `action()` ran and `seconds` after,
    but the kernel's own routes."""
    mon = subprocess.Popen(["ip", "monitor", "route"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)  # subscribed
        action()  # type: ignore[operator]
        time.sleep(seconds)
    finally:
        mon.send_signal(signal.SIGTERM)
        out, _ = mon.communicate(timeout=5)
    # The kernel's own (IPv6 autoconf of the lines' link-local addresses, on
    # its own schedule) say nothing of what the daemon wrote.
    return "".join(line for line in out.splitlines(keepends=True) if " proto kernel " not in line)


def test_restart_adopts_routes_without_a_kernel_write(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(ROUTES)
    wb.start()
    before = ip_json("route", "show", "table", "all", "proto", PROTO)
    assert len(before) == 4  # three per-line routes and the default route

    def restart() -> None:
        assert wb.stop()[0] == 0
        wb.start()

    events = _route_events(1.0, restart)
    assert events == "", f"the restart changed routes:\n{events}"
    assert ip_json("route", "show", "table", "all", "proto", PROTO) == before
    writes = [line for line in wb.log().splitlines() if ": ip " in line or ": tc " in line or ": sysctl " in line]
    assert writes == [], writes


def test_restart_adopts_an_older_versions_default_route_once(lab: Lab, wb: Wanbalanced) -> None:
    # What wanbalanced made before the protocol number (pyroute2's "static"),
    # and what the seed makes by hand ("boot"), become ours with one replace.
    lab.teql_by_hand(default_route=False)
    ip("route", "replace", "default", "dev", "teql0", "proto", "static")
    wb.start()
    wb.wait_log(r"ip route replace default dev teql0 proto 119 \(adopting the route \(proto 4\)")
    assert lab.default_route()["protocol"] == PROTO
    wb.stop()
    events = _route_events(1.0, wb.start)
    assert events == ""


def connect_errno() -> int:
    """The errno a UDP connect() to router B gets now (0: a route exists)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((FAR_ADDR, 9))
        except OSError as e:
            return e.errno or -1
    return 0


@pytest.mark.parametrize("all_down, error", [
    ("withdraw", errno.ENETUNREACH),  # no backup route here: nothing matches
    ("unreachable", errno.EHOSTUNREACH),  # ping: "connect: No route to host", at once
    ("blackhole", errno.EINVAL),  # the kernel's answer for a blackhole route
])
def test_all_down(lab: Lab, wb: Wanbalanced, all_down: str, error: int) -> None:
    wb.write_config(CONFIG_2.replace("rp_filter = 0\n", f'rp_filter = 0\nall_down = "{all_down}"\nroute_metric = 7\n'))
    wb.start()
    assert connect_errno() == 0 and lab.ping(3, interval=0.05) == 3
    start = time.monotonic()
    lab.far_down(0)
    lab.far_down(1)
    lab.wait_until(lambda: connect_errno() == error, 5, what=f"all_down {all_down}: errno {error}")
    print(f"all_down {all_down}: both carriers cut -> errno {errno.errorcode[error]} in "
          f"{(time.monotonic() - start) * 1000:.0f} ms")
    defaults = ip_json("route", "show", "default", "table", "main")
    if all_down == "withdraw":
        assert defaults == []
    else:
        assert [(r.get("type"), r.get("metric"), r.get("protocol")) for r in defaults] == [(all_down, 7, PROTO)]
    assert lab.ping(1, interval=0.05) == 0
    lab.far_up(1)
    lab.wait_until(lambda: connect_errno() == 0, 5, what="default route back")
    defaults = ip_json("route", "show", "default", "table", "main")
    assert [(r.get("dev"), r.get("metric")) for r in defaults] == [("teql0", 7)]
    assert lab.ping(3, interval=0.05) == 3


# -- IPv6 ---------------------------------------------------------------------------

CONFIG_V6 = CONFIG_2.replace('address = "10.0.0.0/31"\n', f'address = "10.0.0.0/31"\naddress6 = "{LOCAL_ADDR6}/128"\n')


def default6() -> list[dict[str, object]]:
    return ip_json("-6", "route", "show", "default", "table", "main")


def connect6_errno() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        try:
            s.connect((FAR_ADDR6, 9))
        except OSError as e:
            return e.errno or -1
    return 0


@pytest.mark.lab_setup(ipv6=True)
def test_ipv6_default_route_through_teql0(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(CONFIG_V6)
    wb.start()
    v6 = [(a["local"], a["prefixlen"]) for a in lab.address_info("teql0") if a.get("family") == "inet6"]
    assert v6 == [(LOCAL_ADDR6, 128)], "no link-local: the kernel makes none on a device of type void"
    assert [(r.get("dev"), r.get("metric"), r.get("protocol")) for r in default6()] == [("teql0", 1024, PROTO)]
    wb.wait_log(r"ip -6 route replace default dev teql0 metric 1024 proto 119")
    tx = [lab.tx_packets(s) for s in lab.slaves]
    assert lab.ping(20, interval=0.02, dst=FAR_ADDR6, src=LOCAL_ADDR6) == 20
    grown = [lab.tx_packets(s) - before for s, before in zip(lab.slaves, tx)]
    assert min(grown) >= 5, f"IPv6 round-robin over both lines, got {grown}"
    lab.far_down(0)
    lab.wait_until(lambda: not lab.attached("wan0"), 3, what="wan0 detached")
    assert lab.ping(10, interval=0.02, dst=FAR_ADDR6, src=LOCAL_ADDR6) == 10, "over wan1 alone"


@pytest.mark.lab_setup(ipv6=True)
@pytest.mark.parametrize("all_down, error", [
    ("withdraw", errno.ENETUNREACH),
    ("unreachable", errno.EHOSTUNREACH),
    ("blackhole", errno.EINVAL),
])
def test_ipv6_all_down(lab: Lab, wb: Wanbalanced, all_down: str, error: int) -> None:
    wb.write_config(CONFIG_V6.replace("rp_filter = 0\n", f'rp_filter = 0\nall_down = "{all_down}"\n'))
    wb.start()
    assert connect6_errno() == 0
    lab.far_down(0)
    lab.far_down(1)
    lab.wait_until(lambda: connect6_errno() == error, 5, what=f"IPv6 all_down {all_down}: errno {error}")
    kinds = [(r.get("type", "unicast"), r.get("metric"), r.get("protocol")) for r in default6()]
    assert kinds == ([] if all_down == "withdraw" else [(all_down, 1024, PROTO)])
    lab.far_up(0)
    lab.wait_until(lambda: connect6_errno() == 0, 5, what="IPv6 default route back")
    assert [r.get("dev") for r in default6()] == ["teql0"]
    assert lab.ping(3, interval=0.05, dst=FAR_ADDR6, src=LOCAL_ADDR6) == 3


def test_line_routes_follow_a_hold_down(lab: Lab, wb: Wanbalanced) -> None:
    # Two flaps reach this suppress level; held down, the line keeps its
    # carrier but neither its place in teql0 nor its routes.
    wb.write_config(ROUTES + """
[slaves.wan0.damping]
suppress = 1500
reuse = 800
half_life = "4s"
max_suppress = "6s"
""")
    wb.start()
    wb.flap_until_held_down(lab, 0, max_flaps=5)
    wb.wait_log(r"WARNING wan0: down -> held_down")
    time.sleep(0.5)
    assert "LOWER_UP" in lab.link("wan0")["flags"] and not lab.attached("wan0")
    assert ours("wan0") == set(), "held down: its routes are out"
    lab.wait_until(lambda: lab.attached("wan0") and ours("wan0") == WAN0, 30, what="released with its routes")


@pytest.mark.lab_setup(ipv6=True)
def test_ipv6_line_routes(lab: Lab, wb: Wanbalanced) -> None:
    wb.write_config(CONFIG_V6 + """
[[slaves.wan1.routes]]
to = "2001:db8:ff:1::/64"
[[slaves.wan1.routes]]
to = "2001:db8:ff:2::/64"
via = "fe80::1"
table = 100
""")
    wb.start()

    def ours6() -> set[tuple[str, str | None, str]]:
        return {(r["dst"], r.get("gateway"), str(r.get("table", "main")))
                for r in ip_json("-6", "route", "show", "table", "all", "proto", PROTO) if r["dst"] != "default"}

    want = {("2001:db8:ff:1::/64", None, "main"), ("2001:db8:ff:2::/64", "fe80::1", "100")}
    assert ours6() == want
    lab.far_down(1)
    lab.wait_until(lambda: ours6() == set(), 3, what="IPv6 routes withdrawn with wan1")
    lab.far_up(1)
    lab.wait_until(lambda: ours6() == want, 3, what="IPv6 routes back with wan1")
    wb.stop()
    assert _route_events(1.0, wb.start) == "", "restart: adopted as they are"


@pytest.mark.lab_setup(ipv6=True)
def test_ipv6_probe_detaches_a_dead_line(lab: Lab, wb: Wanbalanced) -> None:
    # ICMPv6 echo to the far end's link-local address, through wan0 alone.
    wb.write_config(CONFIG_V6 + f"""
[slaves.wan0.probe]
targets = ["{FAR_LL6}"]
interval = "100ms"
timeout = "100ms"
down_after = 3
up_after = 3
""")
    wb.start()
    lab.wait_until(lambda: lab.attached("wan0"), 5, what="wan0 attached")
    time.sleep(1.0)
    assert lab.attached("wan0"), "ICMPv6 probes answered: the line stays"
    start = time.monotonic()
    lab.netem(0, 100)  # carrier up, far end drops everything
    lab.wait_until(lambda: not lab.attached("wan0"), 5, what="dead line detached by ICMPv6 probes")
    print(f"IPv6 far end dead -> wan0 detached: {(time.monotonic() - start) * 1000:.0f} ms")
    assert "LOWER_UP" in lab.link("wan0")["flags"]
    wb.wait_log(r"wan0: up -> failed \(")
    start = time.monotonic()
    lab.netem_clear(0)
    lab.wait_until(lambda: lab.attached("wan0"), 5, what="re-attached once ICMPv6 echoes return")
    print(f"IPv6 far end back -> wan0 attached: {(time.monotonic() - start) * 1000:.0f} ms")
    assert lab.ping(5, interval=0.05, dst=FAR_ADDR6, src=LOCAL_ADDR6) == 5


@pytest.mark.lab_setup(ipv6=True)
def test_ipv6_echo_to_a_global_target_needs_a_route_through_the_slave(lab: Lab, wb: Wanbalanced) -> None:
    # Unlike IPv4, IPv6 makes no on-link guess for a socket bound to a device
    # with no route out of it: the echo cannot leave (documented in caveats.md).
    from wanbalanced.probe import build_echo6, open_socket
    sock = open_socket("wan0", 0x4242, family=socket.AF_INET6)
    try:
        try:
            sock.sendto(build_echo6(0x4242, 1, b"x" * 8), (FAR_ADDR6, 0))
            got = 0
        except OSError as e:
            got = e.errno or -1
        print(f"sendto {FAR_ADDR6} bound to wan0, no route through it: {errno.errorcode.get(got, got)}")
        assert got == errno.ENETUNREACH
        ip("-6", "route", "add", f"{FAR_ADDR6}/128", "via", FAR_LL6, "dev", "wan0", "metric", "2000")
        sock.sendto(build_echo6(0x4242, 2, b"x" * 8), (FAR_ADDR6, 0))  # with one, it leaves
    finally:
        sock.close()


def test_policy_rules_follow_the_line_and_others_are_left_alone(lab: Lab, wb: Wanbalanced) -> None:
    ip("rule", "add", "from", "198.51.100.7", "table", "100", "priority", "1001")  # the operator's
    theirs = [r for r in ip_json("rule", "show") if str(r.get("protocol")) != PROTO]
    assert any(r["priority"] == 1001 for r in theirs)
    wb.write_config(ROUTES + """
[[slaves.wan0.rules]]
from = "198.51.100.7/32"
table = 100
priority = 1000
[[slaves.wan0.routes]]
to = "default"
table = 100
""")
    wb.start()

    def rules(proto: str) -> list[tuple[int, str, str]]:
        # Filtered here: `ip rule show proto N` does not filter with every iproute2.
        return [(r["priority"], r["src"], r["table"]) for r in ip_json("rule", "show")
                if str(r.get("protocol")) == proto]

    assert rules(PROTO) == [(1000, "198.51.100.7", "100")]
    ip("addr", "add", "198.51.100.7/32", "dev", "wan0", "noprefixroute")  # the line's own address
    got = ip_json("-4", "route", "get", "192.0.2.99", "from", "198.51.100.7")
    assert got and got[0].get("dev") == "wan0", "traffic from the line's address leaves by the line"
    lab.far_down(0)
    lab.wait_until(lambda: rules(PROTO) == [], 3, what="rule withdrawn with wan0")
    assert [r for r in ip_json("rule", "show") if str(r.get("protocol")) != PROTO] == theirs, "theirs stay"
    lab.far_up(0)
    lab.wait_until(lambda: rules(PROTO) == [(1000, "198.51.100.7", "100")], 3, what="rule back with wan0")
    wb.stop()
    mon = subprocess.Popen(["ip", "monitor", "rule"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    wb.start()
    time.sleep(1.0)
    mon.send_signal(signal.SIGTERM)
    assert mon.communicate(timeout=5)[0] == "", "restart: the rule is adopted as it is"
    ip("rule", "del", "priority", "1001")
