"""sd_notify: readiness, status, reload and the watchdog.

Without NOTIFY_SOCKET (not under systemd) every call is a no-op. The daemon
loop pings the watchdog itself (see daemon.Daemon.watchdog_ok), so a hung
loop or a dead event reader stops the pings and systemd restarts the daemon.

The datagrams are sent by our own small sender, not systemd-python's
`notify()`: that one (libsystemd's sd_notify) makes a blocking `sendmsg`,
which waits for as long as systemd has not read its queue (busy PID 1, a
storm of units), and it would wait on the event loop: no events handled, no
watchdog pings. Ours is a non-blocking socket of our own, connected to
$NOTIFY_SOCKET: a datagram that cannot go now waits in a short queue and
goes when the socket turns writable (the kernel reports that for a connected
unix datagram socket once the receiver has room) or with the next send.
Only state changes (READY, RELOADING, STOPPING) are kept in order; of plain
STATUS updates only the latest is kept; a watchdog ping that cannot go is
dropped, the next one is due in half the interval anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

#: Datagrams kept while systemd does not read; past this the oldest go.
MAX_PENDING = 16


def notify_address(value: str) -> str | bytes | None:
    """$NOTIFY_SOCKET as a socket address: a path, or an abstract name ("@...")."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:..., which this daemon does not need


class Notifier:
    """Sends sd_notify messages without ever blocking the caller."""

    def __init__(self) -> None:
        self._address = notify_address(os.environ.get("NOTIFY_SOCKET", ""))
        self.enabled = self._address is not None
        self._sock: socket.socket | None = None
        self._pending: list[str] = []
        self._writer: asyncio.AbstractEventLoop | None = None
        self._status = ""
        self.dropped = 0  # datagrams given up on (watchdog pings, old statuses, overflow)

    # -- the sender -----------------------------------------------------------

    def _socket(self) -> socket.socket | None:
        if self._sock is None and self._address is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(self._address)
            except OSError as e:
                sock.close()
                log.debug("sd_notify: cannot connect to %r: %s", self._address, e)
                return None
            self._sock = sock
        return self._sock

    def _send(self, *lines: str) -> None:
        if not self.enabled:
            return
        message = "\n".join(lines)
        if all(line.startswith("STATUS=") for line in lines):
            # A newer status makes an older one that still waits pointless.
            self._pending = [m for m in self._pending if not _status_only(m)]
        self._pending.append(message)
        if len(self._pending) > MAX_PENDING:
            self.dropped += len(self._pending) - MAX_PENDING
            del self._pending[:-MAX_PENDING]
        self.flush()
        if self._pending and message == "WATCHDOG=1" and self._pending[-1] == message:
            self._pending.pop()  # a late ping is no ping; the next one is due soon
            self.dropped += 1
        self._watch()

    def flush(self) -> None:
        """Send what waits, in order, as far as systemd takes it now."""
        reconnected = False
        while self._pending:
            sock = self._socket()
            if sock is None:
                self.dropped += len(self._pending)
                self._pending.clear()
                return
            try:
                sock.send(self._pending[0].encode())
            except BlockingIOError:
                return  # systemd has not read its queue: later
            except OSError as e:
                if not reconnected and e.errno in (errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET):
                    # systemd re-executed and bound the socket anew: reconnect once.
                    reconnected = True
                    self.close()
                    if self._socket() is not None:
                        continue
                log.debug("sd_notify: %r not sent: %s", self._pending[0], e)
                self.dropped += 1
            self._pending.pop(0)

    def _watch(self) -> None:
        """While something waits, have the loop flush when systemd has room."""
        sock = self._sock
        if self._writer is not None and self._writer.is_closed():
            self._writer = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._pending and sock is not None and loop is not None and self._writer is None:
            loop.add_writer(sock.fileno(), self._writable)
            self._writer = loop
        elif not self._pending and self._writer is not None and sock is not None:
            self._writer.remove_writer(sock.fileno())
            self._writer = None

    def _writable(self) -> None:
        self.flush()
        if not self._pending:
            self._watch()

    @property
    def pending(self) -> tuple[str, ...]:
        return tuple(self._pending)

    def close(self) -> None:
        if self._sock is not None:
            if self._writer is not None:
                with contextlib.suppress(Exception):
                    self._writer.remove_writer(self._sock.fileno())
                self._writer = None
            self._sock.close()
            self._sock = None

    # -- the messages ------------------------------------------------------------

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
        """One watchdog ping (the daemon loop decides when: daemon.Daemon.watchdog_ok)."""
        self._send("WATCHDOG=1")


def _status_only(message: str) -> bool:
    return all(line.startswith("STATUS=") for line in message.split("\n"))
