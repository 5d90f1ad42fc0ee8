"""What the daemon knows, as one immutable value, and the control socket.

The event loop builds a `Status` after every reconcile and publishes it by
replacing one reference; the metrics thread and `wanbalanced status` only read
that value, never netlink.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .observed import RTN_NAMES, RTN_UNICAST, LinkStats, Snapshot
from .slave import State

if TYPE_CHECKING:  # not at run time: `wanbalanced status` needs neither asyncio nor the core
    import asyncio

    from .config import Config
    from .core import Core, Fault


@dataclass(frozen=True)
class SlaveStatus:
    equalizer: str
    slave: str
    state: str
    exists: bool
    carrier: bool
    attached: bool
    up: bool
    since: float  # unix time of the last state change
    reason: str
    attaches: int
    detaches: int
    stats: LinkStats | None
    flap_penalty: float
    held_down_until: float  # unix time; 0 when not held down
    routes: int = 0  # of its configured [[slaves.X.routes]], those in the kernel
    routes_configured: int = 0


@dataclass(frozen=True)
class ProbeStatus:
    slave: str
    target: str
    sent: int
    lost: int


@dataclass(frozen=True)
class EqualizerStatus:
    equalizer: str
    exists: bool
    up: bool
    attached: int
    configured: int
    default_route: bool
    mtu: int  # as in the kernel; 0 when the device does not exist
    mtu_reason: str  # why the daemon wants it so
    mtu_changes: int
    reopens: int
    # "unreachable" or "blackhole" while that route stands in for the default
    # route (all_down); "" otherwise.
    stand_in: str = ""


@dataclass(frozen=True)
class Status:
    version: str
    pid: int
    slaves: tuple[SlaveStatus, ...]
    equalizers: tuple[EqualizerStatus, ...]
    probes: tuple[ProbeStatus, ...]
    faults: tuple[Fault, ...]
    reload_successful: bool
    reload_success_time: float
    resyncs: int
    drift: dict[str, int]  # repairs by kind

    def summary(self) -> str:
        """One line, e.g. "teql0: 2/2 slaves attached"."""
        return "; ".join(f"{e.equalizer}: {e.attached}/{e.configured} slaves attached" for e in self.equalizers)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [{"kind": f.kind, "device": f.device, "message": f.message} for f in self.faults]
        return data


def build(
    config: Config, core: Core, snap: Snapshot, *, version: str, done: dict[tuple[str, str], int],
    faults: tuple[Fault, ...], reload_successful: bool,
    reload_success_time: float, resyncs: int, mono_now: float, wall_now: float,
    probes: dict[tuple[str, str], tuple[int, int]] | None = None, drift: dict[str, int] | None = None,
) -> Status:
    """Assemble the status from the core's machines and the snapshot."""
    from .lineroutes import installed  # here: `wanbalanced status` alone does not need the core
    slaves = []
    equalizers = []
    for eq_name, eq in config.equalizers.items():
        master = snap.link(eq_name)
        attached = 0
        for name in eq.slaves:
            book = core.slaves[name]
            m = book.machine
            link = snap.link(name)
            reuse = book.damping.reuse_at() if m.state is State.HELD_DOWN else None
            is_attached = link is not None and link.attached_to(eq_name)
            attached += is_attached
            slaves.append(SlaveStatus(
                equalizer=eq_name, slave=name, state=m.state.value, exists=link is not None,
                carrier=link is not None and link.has_carrier, attached=is_attached,
                up=m.wants_attached, since=wall_now - (mono_now - m.since), reason=m.reason,
                attaches=done.get(("attach", name), 0), detaches=done.get(("detach", name), 0),
                stats=link.stats if link is not None else None,
                flap_penalty=book.damping.value(mono_now),
                held_down_until=wall_now + (reuse - mono_now) if reuse is not None else 0.0,
                routes=installed(config, name, snap), routes_configured=len(config.slave(name).routes),
            ))
        route = master is not None and bool(snap.our_default_routes(master.index, eq.route_metric, eq.route_table))
        want, why = core.mtu_target(eq_name, snap).want(master.mtu if master is not None else 0)
        stand_in = [RTN_NAMES[r.type] for r in snap.default_routes(eq.route_table)
                    if r.ours and r.priority == eq.route_metric and r.type != RTN_UNICAST]
        equalizers.append(EqualizerStatus(
            equalizer=eq_name, exists=master is not None, up=master is not None and master.admin_up,
            attached=attached, configured=len(eq.slaves), default_route=route,
            mtu=master.mtu if master is not None else 0,
            mtu_reason=f"{want}: {why}" if want is not None else why,
            mtu_changes=done.get(("mtu", eq_name), 0), reopens=done.get(("reopen", eq_name), 0),
            stand_in=stand_in[0] if stand_in and eq.default_route else "",
        ))
    probe_rows = tuple(ProbeStatus(slave, target, sent, lost)
                       for (slave, target), (sent, lost) in sorted((probes or {}).items()))
    return Status(
        version=version, pid=os.getpid(), slaves=tuple(slaves), equalizers=tuple(equalizers),
        probes=probe_rows, faults=faults,
        reload_successful=reload_successful, reload_success_time=reload_success_time, resyncs=resyncs,
        drift=dict(drift or {}),
    )


STATES = tuple(s.value for s in State)


# -- the control socket -----------------------------------------------------------


class ControlError(Exception):
    """No daemon answers, or it answered nonsense."""


class NoDaemon(ControlError):
    """Nothing listens on the control socket (absent, or a stale file)."""


class AlreadyRunning(Exception):
    """Another daemon answers on the control socket."""


#: The answer before the first status is published (the daemon is starting).
STARTING = "starting"


#: Longest request line: the only command is "status".
MAX_REQUEST = 1024
#: Clients served at once; more are told so and closed.
MAX_CLIENTS = 16
#: How long a client may take to send its request, and to take the answer.
IO_TIMEOUT = 5.0


async def serve(path: str, current: Any, *, max_clients: int = MAX_CLIENTS,
                io_timeout: float = IO_TIMEOUT) -> asyncio.AbstractServer:
    """Answer `status` on a unix socket with `current()` as JSON, or with
    `{"state": "starting"}` while `current()` is still None.

    Refuses to take the socket over from a daemon that still listens on it:
    two daemons would fight over the same equalizer. No client can hold a
    handler longer than two `io_timeout`s, nor make it buffer more than one
    answer, and at most `max_clients` are served at once.
    """
    import asyncio

    p = Path(path)
    if p.exists() or p.is_symlink():
        try:
            await asyncio.wait_for(asyncio.to_thread(query, path, 1.0), 2.0)
        except NoDaemon:
            p.unlink()  # a stale socket: its daemon is gone
        except (ControlError, asyncio.TimeoutError) as e:
            # It accepted the connection: someone is there, whatever it said.
            raise AlreadyRunning(f"another wanbalanced listens on {path} ({e or 'no answer in time'})") from None
        else:
            raise AlreadyRunning(f"another wanbalanced answers on {path}")
    p.parent.mkdir(parents=True, exist_ok=True)
    clients = 0

    def reply(writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer).encode() + b"\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal clients
        clients += 1
        try:
            if clients > max_clients:
                reply(writer, {"error": f"too many clients (at most {max_clients} at once); try again"})
            else:
                try:
                    line = await asyncio.wait_for(reader.readline(), io_timeout)
                except ValueError:  # longer than the reader's limit
                    line = None
                if line is None:
                    reply(writer, {"error": f"request longer than {MAX_REQUEST} bytes"})
                elif line.strip() == b"status":
                    now = current()
                    reply(writer, now.to_json() if now is not None else {"state": STARTING, "pid": os.getpid()})
                else:
                    reply(writer, {"error": f"unknown command {line.strip()[:64]!r}"})
            # A client that does not read must not hold the handler (and the
            # answer in memory) forever.
            await asyncio.wait_for(writer.drain(), io_timeout)
            writer.close()
        except (asyncio.TimeoutError, ConnectionError):
            writer.transport.abort()  # close() would wait for the unread answer to go
        finally:
            clients -= 1

    old = os.umask(0o077)  # root only: the status names interfaces and reasons
    try:
        return await asyncio.start_unix_server(handle, path, limit=MAX_REQUEST)
    finally:
        os.umask(old)


def starting(answer: dict[str, Any]) -> bool:
    """True for the answer of a daemon that has not published a status yet."""
    return answer.get("state") == STARTING


def query(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon on `path` for its status (blocking; used by the CLI).

    Raises NoDaemon when nothing listens there, ControlError when something
    does but its answer is unusable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(path)
            except FileNotFoundError:
                raise NoDaemon(f"no daemon: {path} does not exist (is wanbalanced running?)") from None
            except ConnectionRefusedError:
                raise NoDaemon(f"no daemon answers on {path} (is wanbalanced running?)") from None
            s.sendall(b"status\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        raise ControlError(f"cannot ask the daemon on {path}: {e}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ControlError(f"the daemon on {path} sent an unreadable answer")
    if "error" in answer:
        raise ControlError(str(answer["error"]))
    return answer
