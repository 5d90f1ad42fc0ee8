"""The daemon's edges on the real kernel: renamed slaves, start-up, signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.daemon import WANBALANCED, Wanbalanced
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


def _sighup_held(pid: int) -> bool:
    """SIGHUP blocked or ignored by the process, as /proc shows it."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    masks = dict(line.split(":\t", 1) for line in text.splitlines() if line.startswith(("SigBlk", "SigIgn")))
    return any(int(masks[k], 16) & 1 << (signal.SIGHUP - 1) for k in ("SigBlk", "SigIgn"))


@pytest.mark.parametrize("entry", ["script", "module"])
def test_early_sighup_neither_kills_nor_is_lost(lab: Lab, wb: Wanbalanced, entry: str) -> None:
    argv = [str(WANBALANCED)] if entry == "script" else [sys.executable, "-m", "wanbalanced"]
    log = open(wb.log_path, "ab")
    wb._offset = wb.log_path.stat().st_size
    started = time.monotonic()
    wb.proc = subprocess.Popen([*argv, "run", "--config", str(wb.config_path), "--log-level", "debug"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=wb.workdir)
    log.close()
    # As early as the process protects itself: the first moment it can survive.
    while not _sighup_held(wb.proc.pid):
        assert wb.proc.poll() is None, wb.log()
    held = time.monotonic() - started
    wb.send(signal.SIGHUP)
    print(f"\n{entry}: SIGHUP held {held * 1000:.0f} ms after the spawn")
    wb.wait_log(r"INFO converged: ", 15)
    # The request was kept pending, not dropped: it reloads once the loop runs.
    wb.wait_log(r"INFO reloaded .*config\.toml", 5)
    assert lab.attached("wan0") and lab.attached("wan1")
    code, _ = wb.stop()
    assert code == 0, wb.log()
