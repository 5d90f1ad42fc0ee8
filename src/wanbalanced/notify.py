"""sd_notify: readiness, status, reload and the watchdog.

Without NOTIFY_SOCKET (not under systemd) every call is a no-op. The daemon
loop pings the watchdog itself (see daemon.Daemon.watchdog_ok), so a hung
loop or a dead event reader stops the pings and systemd restarts the daemon.
"""

from __future__ import annotations

import os
import time

try:
    from systemd import daemon as _sd
except ImportError:  # pragma: no cover - systemd-python is a dependency
    _sd = None


class Notifier:
    def __init__(self) -> None:
        self.enabled = _sd is not None and bool(os.environ.get("NOTIFY_SOCKET"))
        self._status = ""

    def _send(self, *lines: str) -> None:
        if self.enabled and _sd is not None:
            _sd.notify("\n".join(lines))

    def ready(self, status: str) -> None:
        self._status = status
        self._send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self._send(f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd order this reload against the next READY=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping; equalizers left as they are")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, if systemd wants pings from this process."""
        if not self.enabled:
            return None
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    def ping(self) -> None:
        self._send("WATCHDOG=1")
