"""endpoint.py: the metrics HTTP server's cap, timeouts and answers, and the
rate-limited exposition. Real sockets on 127.0.0.1, real threads."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from wanbalanced.endpoint import Exposition, MetricsServer


def wait_for(predicate: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll until `predicate` holds; the limit only keeps a broken build from hanging."""
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


class Status:
    """Stands for a published Status: only its identity matters here."""


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    Gauge("wanbalanced_test", "A test gauge", registry=reg).set(42)
    return reg


# -- the exposition's cache --------------------------------------------------------


def test_exposition_renders_at_most_once_per_interval_but_never_serves_an_older_status() -> None:
    clock, published = Clock(), [Status()]
    ex = Exposition(registry(), lambda: published[0], min_interval=0.5, clock=clock)
    assert ex.delay() == 0 and b"wanbalanced_test 42.0" in ex.get() and ex.renders == 1
    ex.get()
    clock.now += 0.2
    assert ex.delay() == 0 and ex.get() and ex.renders == 1, "same status, young render: shared"
    published[0] = Status()  # the loop published a new status
    assert ex.delay() == pytest.approx(0.3), "a render 0.2 s old: wait out the rest of the interval"
    clock.now += 0.3
    assert ex.delay() == 0
    ex.get()
    assert ex.renders == 2, "the new status is rendered"
    clock.now += 0.5
    ex.get()
    assert ex.renders == 3, "same status, but old enough: rendered again (RTTs move between statuses)"


# -- the server --------------------------------------------------------------------


@pytest.fixture
def make_server() -> Iterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def make(exposition: Exposition | None = None, **kw: float) -> MetricsServer:
        ex = exposition or Exposition(registry(), Status)
        server = MetricsServer(ex, **kw)  # type: ignore[arg-type]
        server.start("127.0.0.1", 0)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def connect(server: MetricsServer) -> socket.socket:
    assert server.address is not None
    s = socket.create_connection(server.address, timeout=10)
    return s


def ask(server: MetricsServer, request: bytes) -> bytes:
    with connect(server) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return data


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


def test_get_answers_the_exposition_and_head_only_its_headers(make_server: Callable[..., MetricsServer]) -> None:
    reg = registry()
    server = make_server(Exposition(reg, Status))
    answer = ask(server, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert f"Content-Type: {CONTENT_TYPE_LATEST}".encode() in head
    assert f"Content-Length: {len(body)}".encode() in head and b"Connection: close" in head
    assert body == generate_latest(reg)
    head_only = ask(server, b"HEAD / HTTP/1.0\r\n\r\n")
    assert head_only.startswith(b"HTTP/1.1 200 OK") and head_only.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", b"405"),
    (b"hello\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", b"431"),
    (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 2000 + b"\r\n", b"431"),
])
def test_bad_requests_get_a_clear_status(make_server: Callable[..., MetricsServer], request_bytes: bytes,
                                         status: bytes) -> None:
    server = make_server()
    assert ask(server, request_bytes).split(b" ")[1] == status
    assert ask(server, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200"), "the server goes on"


def test_idle_connections_are_capped_and_a_scrape_still_gets_through(
        make_server: Callable[..., MetricsServer]) -> None:
    server = make_server(max_connections=3)
    fds_before = len(os.listdir("/proc/self/fd"))
    idle: list[socket.socket] = []
    server_side = 0  # descriptors of this process beyond the client ends: the server's
    for _ in range(400):
        idle.append(connect(server))
        server_side = max(server_side, len(os.listdir("/proc/self/fd")) - fds_before - len(idle))
    # Each new connection past the cap closed the oldest idle one.
    wait_for(lambda: all(closed_by_server(s) for s in idle[:-3]), "the 397 oldest closed")
    assert server.open_connections == 3
    assert not any(closed_by_server(s) for s in idle[-3:]), "the 3 newest are still held"
    server_side = max(server_side, len(os.listdir("/proc/self/fd")) - fds_before - len(idle))
    assert server_side <= 3 + 1, f"the server held {server_side} descriptors at once (cap 3, +1 being accepted)"
    assert ask(server, b"GET /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 200 OK")
    assert server.open_connections <= 3
    for s in idle:
        s.close()


class Stalled(Exposition):
    """An exposition whose answers are never ready: requests stay busy."""

    def delay(self) -> float:
        return 3600.0


def test_when_every_slot_is_busy_a_new_connection_is_closed(make_server: Callable[..., MetricsServer]) -> None:
    server = make_server(Stalled(registry(), Status), max_connections=2)
    busy = [connect(server) for _ in range(2)]
    for s in busy:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
    # Accepted is not enough: a connection whose request the server has not
    # read yet is the one a newcomer may evict.
    wait_for(lambda: server.busy_connections == 2, "two requests in progress")
    late = connect(server)
    wait_for(lambda: closed_by_server(late), "the connection past the cap closed")
    assert not any(closed_by_server(s) for s in busy), "requests being answered are not evicted"
    for s in [*busy, late]:
        s.close()


def test_a_request_dribbled_byte_by_byte_is_cut_at_the_request_timeout(
        make_server: Callable[..., MetricsServer]) -> None:
    server = make_server(request_timeout=0.3)
    s = connect(server)
    s.sendall(b"GET / HTTP/1.1\r\n")
    sent, gone = 0, False
    while sent < 200 and not gone:  # a byte every 20 ms, each well within any per-read timeout
        try:
            s.sendall(b"X")
        except (BrokenPipeError, ConnectionResetError):
            gone = True
            break
        sent += 1
        time.sleep(0.02)
        gone = closed_by_server(s)
    assert gone, "a slowloris client was kept past the request timeout"
    assert server.open_connections == 0
    s.close()


def test_an_idle_connection_is_closed_at_the_request_timeout(make_server: Callable[..., MetricsServer]) -> None:
    server = make_server(request_timeout=0.2)
    s = connect(server)
    assert s.recv(1) == b"", "closed without an answer"
    wait_for(lambda: server.open_connections == 0, "the server forgot it")
    s.close()


def test_a_failing_collector_gets_500_and_the_endpoint_lives_on(make_server: Callable[..., MetricsServer]) -> None:
    class Broken:
        def collect(self) -> Iterator[object]:
            raise RuntimeError("boom")

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Broken())  # type: ignore[arg-type]
    server = make_server(Exposition(reg, Status))
    assert ask(server, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")
    assert ask(server, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 500 ")


def test_close_stops_the_thread_and_frees_the_port(make_server: Callable[..., MetricsServer]) -> None:
    server = make_server()
    address = server.address
    assert address is not None
    server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)


def test_an_address_in_use_is_an_oserror_in_the_caller() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(Exposition(registry(), Status))
        with pytest.raises(OSError):
            server.start("127.0.0.1", taken.getsockname()[1])
