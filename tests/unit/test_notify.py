"""sd_notify over a real AF_UNIX datagram socket whose reader may stall."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from guards import fail_if_blocked

from wanbalanced.notify import Notifier, notify_address


@pytest.fixture(autouse=True)
def never_hang() -> Iterator[None]:
    """A blocking send would hang the test: make it fail instead."""
    with fail_if_blocked("the notifier", 20):
        yield


def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool = False) -> socket.socket:
    """systemd's end, which reads only when the test says so."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if abstract:
        name = f"wanbalanced-test-{os.getpid()}-{tmp_path.name}"
        sock.bind(b"\0" + name.encode())
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    else:
        sock.bind(str(tmp_path / "notify"))
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            got.append(sock.recv(65536).decode())
        except BlockingIOError:
            return got


def stall(n: Notifier) -> int:
    """Send until systemd's queue is full; returns how many went."""
    for i in range(100_000):
        n.status(f"filler {i}")
        if n.pending:
            return i
    raise AssertionError("the receiver's queue never filled")


def test_a_full_queue_does_not_block_and_the_latest_status_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = receiver(tmp_path, monkeypatch)
    n = Notifier()
    sent = stall(n)
    for i in range(50):
        n.status(f"teql0: {i}/2 slaves attached")  # returns at once, each time
    assert n.pending == ("STATUS=teql0: 49/2 slaves attached",), "only the latest status is kept"
    got = drain(sock)
    assert len(got) == sent and got[-1] == f"STATUS=filler {sent - 1}"
    n.status("teql0: 2/2 slaves attached")  # the next send flushes what waited, in order
    assert drain(sock) == ["STATUS=teql0: 2/2 slaves attached"]
    assert n.pending == ()


def test_state_changes_wait_in_order_and_a_late_ping_is_dropped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = receiver(tmp_path, monkeypatch)
    n = Notifier()
    stall(n)
    n.reloading()
    n.status("between")
    n.ready("teql0: 2/2 slaves attached")
    n.status("after")
    n.ping()
    heads = [m.split("\n")[0] for m in n.pending]
    assert heads == ["RELOADING=1", "READY=1", "STATUS=after"], heads
    assert "WATCHDOG=1" not in n.pending
    drain(sock)
    n.flush()
    got = drain(sock)
    assert [m.split("\n")[0] for m in got] == ["RELOADING=1", "READY=1", "STATUS=after"]


def test_the_loop_delivers_once_systemd_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = receiver(tmp_path, monkeypatch)

    async def scenario() -> list[str]:
        n = Notifier()
        stall(n)
        n.status("teql0: 1/2 slaves attached")
        assert n.pending
        loop = asyncio.get_running_loop()
        drain(sock)  # systemd catches up; nobody calls the notifier again
        got = await loop.sock_recv(sock, 65536)
        while n.pending:
            await asyncio.sleep(0)
        n.close()
        return [got.decode()]

    assert asyncio.run(scenario()) == ["STATUS=teql0: 1/2 slaves attached"]


def test_abstract_socket_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = receiver(tmp_path, monkeypatch, abstract=True)
    n = Notifier()
    n.ready("teql0: 2/2 slaves attached")
    assert drain(sock) == ["READY=1\nSTATUS=teql0: 2/2 slaves attached"]


def test_notify_addresses() -> None:
    assert notify_address("/run/systemd/notify") == "/run/systemd/notify"
    assert notify_address("@abc") == b"\0abc"
    assert notify_address("") is None and notify_address("vsock:2:1") is None


def test_systemd_gone_drops_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody"))
    n = Notifier()
    n.ready("x")  # must not raise
    assert n.pending == () and n.dropped == 1
