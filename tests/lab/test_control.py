"""The daemon's edges on the real kernel: renamed slaves, start-up, signals."""

from __future__ import annotations

from lab.daemon import Wanbalanced
from lab.topo import Lab, batch, ip


def test_renamed_slave_is_detached_and_stays_out_when_brought_up(lab: Lab, wb: Wanbalanced) -> None:
    # The down_delay makes the rename land before any detach for the carrier
    # loss, whatever the timing of the events.
    wb.write_config(wb.config_path.read_text() + '\n[slaves.wan0]\ndown_delay = "30s"\n')
    wb.start()
    assert lab.attached("wan0")
    try:
        batch([["link", "set", "wan0", "down"], ["link", "set", "wan0", "name", "old0"]])
        lab.wait_until(lambda: not lab.attached("old0"), 3, what="renamed old0 detached")
        wb.wait_log(r"tc qdisc del dev old0 root teql0 \(renamed from wan0, which left the configuration")
        ip("link", "set", "old0", "up")
        # The up event is handled (the daemon logs it) and must not attach it.
        lab.wait_until(lambda: "UP" in (lab.link("old0") or {}).get("flags", []), 3, what="old0 up")
        assert not lab.attached("old0"), "old0 is back in the round robin"
        assert lab.attached("wan1") and lab.default_route() is not None
        assert lab.ping(5, interval=0.05) == 5
        assert wb.proc is not None and wb.proc.poll() is None
    finally:
        ip("link", "del", "old0", check=False)
