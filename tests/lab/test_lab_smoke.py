"""The lab harness itself: teql0 configured by hand, as the seed does."""

from __future__ import annotations

from lab.topo import Lab


def test_teql_by_hand_spreads_traffic_and_survives_far_end_down(lab: Lab) -> None:
    lab.teql_by_hand()  # tc qdisc add dev wanN root teql0; ip addr/link/route
    assert lab.attached("wan0") and lab.attached("wan1")
    route = lab.default_route("teql0")
    assert route is not None, "default route on teql0 missing"
    # `ip route show dev X` leaves out "dev"; the connected route must be gone.
    assert [r["dst"] for r in lab.routes("teql0")] == ["default"]

    before = {s: lab.tx_packets(s) for s in lab.slaves}
    assert lab.ping(20, interval=0.05) == 20
    grown = {s: lab.tx_packets(s) - before[s] for s in lab.slaves}
    # Round robin: each line carries about half of the 20 requests.
    assert all(n >= 8 for n in grown.values()), grown

    lab.far_down(0)
    lab.wait_until(lambda: not (lab.link("wan0") or {}).get("flags", []).count("LOWER_UP"),
                   timeout=2, what="wan0 losing its carrier")
    before = {s: lab.tx_packets(s) for s in lab.slaves}
    assert lab.ping(10, interval=0.05) == 10  # the kernel skips wan0
    assert lab.tx_packets("wan0") == before["wan0"]
    assert lab.tx_packets("wan1") - before["wan1"] >= 10

    lab.far_up(0)
    lab.wait_until(lambda: "LOWER_UP" in (lab.link("wan0") or {}).get("flags", []),
                   timeout=2, what="wan0 getting its carrier back")
    before = {s: lab.tx_packets(s) for s in lab.slaves}
    assert lab.ping(20, interval=0.05) == 20
    assert all(lab.tx_packets(s) - before[s] >= 8 for s in lab.slaves)
