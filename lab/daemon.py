"""Guest side: run the real `wanbalanced run` as a child process and read its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.topo import Lab

REPO = Path(__file__).resolve().parent.parent
WANBALANCED = Path(sys.executable).parent / "wanbalanced"

#: Where CONFIG_2's daemon serves its metrics.
METRICS_URL = "http://127.0.0.1:9783/metrics"


def scrape(url: str = METRICS_URL) -> str:
    """The daemon's metrics page, as Prometheus would get it."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


CONFIG_2 = """
[daemon]
metrics_listen = "127.0.0.1:9783"

[equalizers.teql0]
slaves = ["wan0", "wan1"]
address = "10.0.0.0/31"
default_route = true
rp_filter = 0
"""


class Wanbalanced:
    """The daemon under test, with its config file and its log."""

    def __init__(self, workdir: Path, config: str = CONFIG_2, log_level: str = "debug") -> None:
        self.workdir = workdir
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "wanbalanced.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(config)

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    def start(self, wait_converged: bool = True, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [str(WANBALANCED), "run", "--config", str(self.config_path), "--log-level", self.log_level],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        log.close()
        if wait_converged:
            self.wait_log(r"INFO converged: ", timeout)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run another subcommand (plan, check-config) against the same config."""
        return subprocess.run(
            [str(WANBALANCED), *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=30,
        )

    def log(self) -> str:
        """The log written by the current run."""
        return self.log_path.read_bytes()[self._offset:].decode(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 5.0, count: int = 1) -> re.Match[str]:
        """Wait until `pattern` has matched `count` times in this run's log."""
        deadline = time.monotonic() + timeout
        while True:
            matches = list(re.finditer(pattern, self.log(), re.MULTILINE))
            if len(matches) >= count:
                return matches[count - 1]
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"wanbalanced exited ({self.proc.returncode}) before /{pattern}/:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no /{pattern}/ (x{count}) in {timeout}s; log:\n{self.log()}")
            time.sleep(0.02)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """Stop the daemon; returns its exit status and how long it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def flap_until_held_down(self, lab: Lab, i: int, max_flaps: int) -> None:
        """Cut and restore line i's far end until the daemon holds its slave down
        (at most `max_flaps` times): how many flaps reach the suppress level
        depends on how fast the guest runs, not only on the damping settings."""
        mark = len(self.log())
        slave = lab.slave(i)
        for _ in range(max_flaps):
            lab.far_down(i)
            lab.wait_until(lambda: not lab.attached(slave), 3)
            lab.far_up(i)
            if "held_down" in self.log()[mark:]:
                return
            lab.wait_until(lambda: lab.attached(slave), 3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
