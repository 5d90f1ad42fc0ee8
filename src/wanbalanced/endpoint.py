"""The Prometheus endpoint: a small HTTP server in one thread of its own.

prometheus-client's `start_http_server` spends a thread and a file descriptor
on every connection, with no timeout and no cap: idle connections pile up
until the daemon runs out of descriptors, and then its probe sockets and the
netlink resubscribe fail. Here one thread runs its own asyncio loop (never the
daemon's) with:

- at most `max_connections` connections; a new one past the cap closes the
  oldest that has not sent its request yet (so held-open idle connections
  cannot lock a scraper out), or, if all are busy answering, itself;
- `request_timeout` for the whole request head (a client sending a byte at a
  time gets no more) and `send_timeout` for taking the whole answer;
- one answer per connection (`Connection: close`), no input beyond the request
  line: any path answers the metrics, only GET and HEAD are allowed.

The exposition is `generate_latest` of the registry, rendered in this thread
from the Status the event loop last published (see metrics.py), never on the
event loop. Rendering 64 slaves takes tens of milliseconds of Python, which
competes with the event loop for the GIL, so renders are rate-limited
(`Exposition`): concurrent or rapid scrapes share one render.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8  # Prometheus (or an HA pair) and an operator's curl need 1-3
REQUEST_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0
MAX_REQUEST = 8192  # bytes of request head; a scraper sends about 200
MIN_RENDER_INTERVAL = 0.5
BACKLOG = 64  # waiting connections cost the kernel memory, not the daemon descriptors


class Exposition:
    """The registry's exposition, rendered at most every `min_interval`.

    An answer always reflects the Status published when its request arrived
    or a newer one: a cached render is reused only while the published Status
    is the one it was rendered from and it is younger than `min_interval`
    (probe RTTs change between publications). When the Status changed but the
    last render is that recent, `delay()` says how long to wait first. So
    renders cost at most 1/min_interval per second, whatever the clients do.
    Used from the endpoint's thread only.
    """

    def __init__(self, registry: CollectorRegistry, current: Callable[[], object],
                 min_interval: float = MIN_RENDER_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.current = current
        self.min_interval = min_interval
        self.clock = clock
        self.renders = 0
        self._body = b""
        self._source: object = None
        self._at: float | None = None

    def _age(self) -> float | None:
        return None if self._at is None else self.clock() - self._at

    def delay(self) -> float:
        """Seconds to wait before get() may render again (0: go ahead)."""
        age = self._age()
        if age is None or age >= self.min_interval or self.current() is self._source:
            return 0.0
        return self.min_interval - age

    def get(self) -> bytes:
        age = self._age()
        source = self.current()
        if age is not None and age < self.min_interval and source is self._source:
            return self._body
        # The collector may read a Status newer than `source`: the next
        # request then renders again, never the reverse.
        self._body, self._source, self._at = generate_latest(self.registry), source, self.clock()
        self.renders += 1
        return self._body


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    task: asyncio.Task[None] | None = None
    busy: bool = False  # its request arrived: being answered, not evicted
    writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    def drop(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # unregisters the socket from the loop at once
        # ...but closes it only on a later loop iteration: close it now, so the
        # descriptor is free before the next accept.
        self.sock.close()
        if self.task is not None:
            self.task.cancel()


class MetricsServer:
    """Serves an `Exposition` over HTTP; `start()` binds (in the caller's
    thread, so a bad address raises OSError there), `close()` stops it."""

    def __init__(self, exposition: Exposition, *, max_connections: int = MAX_CONNECTIONS,
                 request_timeout: float = REQUEST_TIMEOUT, send_timeout: float = SEND_TIMEOUT) -> None:
        self.exposition = exposition
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.address: tuple[str, int] | None = None  # what it is bound to, once started
        self._conns: dict[_Conn, None] = {}  # in the order they came
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    @property
    def busy_connections(self) -> int:
        """Connections whose request was read and is being answered."""
        return sum(1 for c in list(self._conns) if c.busy)

    def start(self, host: str, port: int) -> None:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self._thread = threading.Thread(target=self._run, name="wanbalanced-metrics", daemon=True)
        self._thread.start()
        self._ready.wait(5.0)

    def close(self) -> None:
        """Stop serving and free the port; idempotent."""
        loop, self._loop = self._loop, None
        if loop is not None and self._stop is not None:
            loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- the endpoint's thread ------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        assert self._sock is not None
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        accept = asyncio.create_task(self._accept(self._sock))
        await self._stop.wait()
        accept.cancel()
        for conn in list(self._conns):
            conn.drop()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as e:  # EMFILE and the like: the daemon's problem, not a reason to spin
                log.warning("metrics endpoint: accept failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            # One accept at a time, and the cap applied before the next: at
            # most max_connections + 1 descriptors are ever spent here.
            if len(self._conns) >= self.max_connections:
                idle = next((c for c in self._conns if not c.busy), None)
                if idle is None:
                    sock.close()
                    continue
                self._forget(idle)
                idle.drop()
            conn = _Conn(sock)
            self._conns[conn] = None
            conn.task = asyncio.create_task(self._serve(conn))
            # sock_accept does not yield while connections are pending: let
            # the connections' tasks run between two accepts.
            await asyncio.sleep(0)

    def _forget(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)

    async def _serve(self, conn: _Conn) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn.sock, limit=MAX_REQUEST)
            conn.writer = writer
            try:
                async with asyncio.timeout(self.request_timeout):
                    status, method = await _read_request(reader)
                conn.busy = True
                if status == 200:
                    delay = self.exposition.delay()
                    if delay:
                        await asyncio.sleep(delay)
                    try:
                        body = self.exposition.get()
                    except Exception:  # noqa: BLE001 - a collector's bug must not end the endpoint
                        log.exception("metrics endpoint: rendering the exposition failed")
                        status = 500
                if status == 200:
                    head = _head(200, CONTENT_TYPE_LATEST, len(body))
                    writer.write(head if method == "HEAD" else head + body)
                else:
                    message = _REASONS[status].encode() + b"\n"
                    writer.write(_head(status, "text/plain; charset=utf-8", len(message)) + message)
                async with asyncio.timeout(self.send_timeout):
                    await writer.drain()
            finally:
                writer.transport.abort()
                conn.sock.close()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, OSError):
            pass  # a client that is too slow or goes away gets nothing more
        except asyncio.CancelledError:
            pass  # evicted, or the endpoint stops
        finally:
            self._forget(conn)
            conn.sock.close()


_REASONS = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}


def _head(status: int, content_type: str, length: int) -> bytes:
    return (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()


async def _read_request(reader: asyncio.StreamReader) -> tuple[int, str]:
    """Read the request head; return (status to answer, method). Only the
    request line matters; headers are read (to the empty line) and ignored."""
    total = 0
    lines: list[bytes] = []
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            return 431, ""
        total += len(line)
        if total > MAX_REQUEST:
            return 431, ""
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line)
    parts = lines[0].split() if lines else []
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return 400, ""
    method = parts[0].decode("ascii", "replace")
    return (200 if method in ("GET", "HEAD") else 405), method
